"""Prompt templates and class names: the shipped sets (package data) and the user's own files.

A *template* is a string with a ``{}`` (or ``{c}``) placeholder for the class name, such as
``"a photo of a {}."``, or a callable ``classname -> prompt``. The shipped sets live in
``cliplab/zeroshot/data/<name>.json`` with keys ``templates``, ``source`` and, where known,
``classnames``; ``data/NOTICE`` names where each came from and under which licence.

``imagenet1k`` holds the paper's 80 ImageNet templates and OpenAI's curated 1,000 class names. That
curated list repeats two names ("missile" for classes 657 and 744, "sunglasses" for 836 and 837):
it is kept as published, since results are only comparable with the exact list.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import UsageError
from ..fileio import read_text

DATA_DIR = Path(__file__).resolve().parent / "data"

Template = str | Callable[[str], str]
ClassPrompts = Mapping[str, Sequence[str]]

# Other common spellings of the shipped set names (keys are compared after `_normalise_name`).
ALIASES = {
    "imagenet": "imagenet1k",
    "imagenet_simple": "imagenet1k_simple",
    "flowers102": "flowers",
    "oxford_flowers": "flowers",
    "oxford_flowers102": "flowers",
    "oxford_pets": "pets",
    "oxfordpets": "pets",
    "oxford_iiit_pet": "pets",
    "stanford_cars": "cars",
    "stanfordcars": "cars",
    "aircraft": "fgvc_aircraft",
    "fgvcaircraft": "fgvc_aircraft",
    "patchcamelyon": "pcam",
    "patch_camelyon": "pcam",
    "clevr_counts": "clevr_count_all",
    "clevrcounts": "clevr_count_all",
    "clevr_count": "clevr_count_all",
    "kitti": "kitti_closest_vehicle_distance",
    "rendered_sst2": "renderedsst2",
    "sst2": "renderedsst2",
    "fer": "fer2013",
    "gtsrb43": "gtsrb",
    "resisc": "resisc45",
}


@dataclass(frozen=True)
class PromptSet:
    """A named list of templates and, when the set defines them, its class names in label order."""

    name: str
    templates: list[str]
    classnames: list[str] | None
    source: str


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def available_prompt_sets() -> list[str]:
    """Names of the shipped template / class-name sets (``imagenet1k``, ``cifar10``, ``eurosat``...)."""
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))


@cache
def _read_set(name: str) -> PromptSet:
    data = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return PromptSet(name, list(data["templates"]), data.get("classnames"), data["source"])


def load_prompt_set(name: str) -> PromptSet:
    """The shipped prompt set called ``name`` (case and punctuation ignored; common aliases accepted).

    Raises ``KeyError`` listing the available names when there is no such set.
    """
    key = _normalise_name(name)
    key = ALIASES.get(key, key)
    if key not in available_prompt_sets():
        raise KeyError(f"no shipped prompt set {name!r}; available: {', '.join(available_prompt_sets())}")
    s = _read_set(key)
    # Copies, so a caller editing the lists does not change the cached set.
    return PromptSet(
        s.name, list(s.templates), None if s.classnames is None else list(s.classnames), s.source
    )


def imagenet_classnames() -> list[str]:
    """OpenAI's curated 1,000 ImageNet class names, in label (WordNet id) order."""
    return load_prompt_set("imagenet1k").classnames  # type: ignore[return-value]


def imagenet_templates() -> list[str]:
    """The paper's 80 ImageNet prompt templates."""
    return load_prompt_set("imagenet1k").templates


def format_prompt(template: Template, classname: str) -> str:
    """Fill ``template`` with ``classname``: call it, or replace its ``{}`` / ``{c}`` placeholders.

    Plain replacement (not ``str.format``) so other braces in a template are left alone. A string
    template without a placeholder is an error: it would give every class the same prompt.
    """
    if callable(template):
        return str(template(classname))
    if "{}" not in template and "{c}" not in template:
        raise UsageError(f"template {template!r} has no '{{}}' or '{{c}}' placeholder for the class name")
    return template.replace("{c}", classname).replace("{}", classname)


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped; lines starting with '#' are comments."""
    lines = [ln.strip() for ln in read_text(path, "prompt file").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _read_json(path: Path):
    try:
        return json.loads(read_text(path, "prompt file"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _string_list(value, path: Path, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(
            f"{path}: expected a JSON list of strings for the {what}, got {type(value).__name__}"
        )
    return list(value)


def load_templates(spec: str | os.PathLike) -> list[str]:
    """Templates from a file or a shipped set name.

    ``spec`` is a text file (one template per line, ``#`` comments), a JSON file (a list of strings
    or an object with a ``templates`` list), or the name of a shipped set (``imagenet``, ``cifar10``;
    see :func:`available_prompt_sets`). Every template must contain ``{}`` or ``{c}``.
    """
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            templates = _string_list(
                data.get("templates") if isinstance(data, dict) else data, path, "templates"
            )
        else:
            templates = _read_lines(path)
        if not templates:
            raise UsageError(f"{path}: no templates found (expected one per line, or a JSON list)")
        for i, t in enumerate(templates):
            if "{}" not in t and "{c}" not in t:
                raise UsageError(f"{path}: template {i + 1} {t!r} has no '{{}}' or '{{c}}' placeholder")
        return templates
    try:
        return load_prompt_set(str(spec)).templates
    except KeyError:
        raise UsageError(
            f"--templates {spec!r} is neither an existing file nor a shipped prompt set; shipped sets: "
            f"{', '.join(available_prompt_sets())}"
        ) from None


def load_classnames(spec: str | os.PathLike) -> list[str] | dict[str, list[str]]:
    """Class names from a file or a shipped set name, in label order.

    Accepted files: text (one name per line), a JSON list of names, a JSON object with a
    ``classnames`` list, or a JSON object mapping each class name to its own list of prompts
    (returned as a dict, in file order, for :func:`build_zero_shot_classifier`).
    """
    path = Path(spec)
    if not path.is_file():
        try:
            names = load_prompt_set(str(spec)).classnames
        except KeyError:
            raise UsageError(
                f"class names {spec!r}: no such file and no shipped prompt set of that name"
            ) from None
        if names is None:
            raise UsageError(f"the shipped prompt set {spec!r} has templates but no class names; pass a file")
        return names
    if path.suffix.lower() != ".json":
        names = _read_lines(path)
    else:
        data = _read_json(path)
        if isinstance(data, dict) and "classnames" not in data:
            return _class_prompts(data, path)
        names = _string_list(data["classnames"] if isinstance(data, dict) else data, path, "class names")
    if not names:
        raise UsageError(f"{path}: no class names found")
    return names


def _class_prompts(data: dict, path: Path) -> dict[str, list[str]]:
    if not data:
        raise UsageError(f"{path}: the class -> prompts mapping is empty")
    for name, prompts in data.items():
        if isinstance(prompts, str) or not isinstance(prompts, list) or not prompts:
            raise UsageError(f"{path}: class {name!r} must map to a non-empty list of prompts")
        if not all(isinstance(p, str) for p in prompts):
            raise UsageError(f"{path}: class {name!r}: every prompt must be a string")
    return {name: list(prompts) for name, prompts in data.items()}
