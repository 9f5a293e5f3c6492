"""Zero-shot transfer: prompt templates and class names as data, and classifier construction."""

from .classifier import build_zero_shot_classifier, class_prompts, zero_shot_logits
from .prompts import (
    PromptSet,
    available_prompt_sets,
    format_prompt,
    imagenet_classnames,
    imagenet_templates,
    load_classnames,
    load_prompt_set,
    load_templates,
)

__all__ = [
    "PromptSet",
    "available_prompt_sets",
    "build_zero_shot_classifier",
    "class_prompts",
    "format_prompt",
    "imagenet_classnames",
    "imagenet_templates",
    "load_classnames",
    "load_prompt_set",
    "load_templates",
    "zero_shot_logits",
]
