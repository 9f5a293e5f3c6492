"""Model cards: the README.md that ``cliplab.save`` and every export write beside the weights.

A card states the architecture, the preprocessing, how the model was trained (from the settings a
cliplab training run stores in the checkpoint, or from the run directory's ``config.yaml``), its
evaluation results (the run directory's ``summary.json``) when present, how to load it, and the
licence. A README.md the user wrote (one without cliplab's marker line) is never replaced.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

from ..models import CLIP, CLIPConfig
from ..transforms import PreprocessConfig

CARD_FILE = "README.md"
MARKER = "<!-- model card written by cliplab; edit freely (then cliplab will not overwrite it) -->"
# What each format's card tells a reader to run; {path} is the directory.
USAGE = {
    "cliplab": 'import cliplab\nmodel, preprocess = cliplab.load("{path}")',
    "hf": "from transformers import CLIPModel, CLIPProcessor\n"
    'model = CLIPModel.from_pretrained("{path}")\nprocessor = CLIPProcessor.from_pretrained("{path}")',
    "open_clip": "import open_clip\n"
    'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{path}")\n'
    'tokenizer = open_clip.get_tokenizer("local-dir:{path}")',
    "onnx": "from cliplab.onnx import Encoder   # numpy + onnxruntime + Pillow, no torch\n"
    'encoder = Encoder("{path}")\nimage_features = encoder.encode_images(["photo.jpg"])\n'
    'text_features = encoder.encode_texts(["a photo of a dog"])',
}
_LIBRARY = {"cliplab": "cliplab", "hf": "transformers", "open_clip": "open_clip", "onnx": "onnx"}


def find_run_dir(checkpoint: Path | None) -> Path | None:
    """The training run a checkpoint directory belongs to (``runs/x`` for ``runs/x/final``), if any."""
    if checkpoint is None:
        return None
    parent = Path(checkpoint).resolve().parent
    if (parent / "metrics.jsonl").is_file() and any(
        (parent / f).is_file() for f in ("summary.json", "config.yaml")
    ):
        return parent
    return None


def model_card(
    model: CLIP,
    preprocess: PreprocessConfig,
    fmt: str,
    *,
    extra: Mapping | None = None,
    run_dir: Path | None = None,
    source: str | None = None,
) -> str:
    """The card's Markdown for ``model`` written in format ``fmt`` (a key of :data:`USAGE`)."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "---",
        f"library_name: {_LIBRARY[fmt]}",
        "tags: [clip, cliplab, zero-shot-image-classification]",
        "---",
        MARKER,
        "",
        f"# CLIP model ({_tower(config)})",
        "",
        "A CLIP model (Radford et al., 2021): an image encoder and a text encoder whose features are "
        f"compared by cosine similarity. Written by cliplab{f' from {source}' if source else ''}.",
        "",
        "## Architecture",
        "",
        *_architecture(config, n_params),
        "",
        "## Preprocessing",
        "",
        f"Images: resize ({preprocess.resize_mode} side, {preprocess.interpolation}) and centre-crop to "
        f"{preprocess.image_size} x {preprocess.image_size}, RGB in [0, 1], normalised with mean "
        f"{list(preprocess.mean)} and std {list(preprocess.std)}. Texts: CLIP's byte-level BPE "
        f"(49,408 tokens), start and end tokens, padded to {config.text.context_length}.",
        "",
        *_training(extra, run_dir),
        *_evaluation(run_dir),
        "## Use",
        "",
        "```python",
        USAGE[fmt].format(path="PATH/TO/THIS/DIRECTORY"),
        "```",
        "",
        "## Licence",
        "",
        "The weights carry the licence of their source: OpenAI's released CLIP weights are MIT-licensed, "
        "open_clip's pretrained weights are described on their own model cards, and weights you trained "
        "are yours to license. cliplab, which wrote this directory, is MIT-licensed; CLIP's BPE "
        "vocabulary is OpenAI's (MIT).",
        "",
    ]
    return "\n".join(lines)


def write_card(directory: Path, text: str, existing: Path | None = None) -> None:
    """Write the card into ``directory`` (a temporary directory being filled) unless ``existing``
    (the final target's README.md) is one the user wrote, which is left alone with a warning."""
    if existing is not None and existing.is_file():
        try:
            ours = MARKER in existing.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            warnings.warn(
                f"{existing} was not written by cliplab; left as it is (no model card written)", stacklevel=3
            )
            return
    (directory / CARD_FILE).write_text(text, encoding="utf-8")


def _tower(config: CLIPConfig) -> str:
    v = config.vision
    if v.kind == "resnet":
        return f"ResNet {list(v.layers)} x {v.width}, {v.image_size} px"
    return f"ViT {v.layers} x {v.width}, patch {v.patch_size}, {v.image_size} px"


def _architecture(config: CLIPConfig, n_params: int) -> list[str]:
    v, t = config.vision, config.text
    image = (
        f"ModifiedResNet, stages {list(v.layers)}, stem width {v.width}, attention pool with {v.heads} heads"
        if v.kind == "resnet"
        else f"ViT, {v.layers} layers, width {v.width}, {v.heads} heads, patch {v.patch_size}, MLP ratio {v.mlp_ratio:g}"
    )
    return [
        "| | |",
        "|---|---|",
        f"| image encoder | {image}, input {v.image_size} x {v.image_size} |",
        f"| text encoder | causal transformer, {t.layers} layers, width {t.width}, {t.heads} heads, "
        f"context {t.context_length}, MLP ratio {t.mlp_ratio:g} |",
        f"| embedding | {config.embed_dim} |",
        f"| activation | {'QuickGELU' if config.quick_gelu else 'GELU'} |",
        f"| parameters | {n_params:,} |",
    ]


def _training(extra: Mapping | None, run_dir: Path | None) -> list[str]:
    settings = (extra or {}).get("train_config")
    if not isinstance(settings, Mapping) and run_dir is not None and (run_dir / "config.yaml").is_file():
        import yaml

        try:
            settings = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            settings = None
    if not isinstance(settings, Mapping):
        return []
    data = settings.get("data") if isinstance(settings.get("data"), Mapping) else {}
    data_text = data.get("path") or data.get("source") or "not recorded"
    if data.get("source") == "synthetic":
        data_text = f"cliplab's synthetic captioned images ({data.get('synthetic_size')} samples, seed {data.get('synthetic_seed')})"
    rows = [
        ("data", data_text),
        ("started from", settings.get("pretrained") or "random initialisation"),
        ("steps", settings.get("steps") or (extra or {}).get("step")),
        ("batch size (per process)", settings.get("batch_size")),
        ("learning rate, weight decay", f"{settings.get('lr')}, {settings.get('weight_decay')}"),
        ("warm-up steps", settings.get("warmup_steps")),
        ("precision", settings.get("precision")),
        ("seed", settings.get("seed")),
    ]
    out = ["## Training", "", "Trained with `cliplab train`:", "", "| setting | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return [*out, ""]


def _evaluation(run_dir: Path | None) -> list[str]:
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return []
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    results = summary.get("zeroshot") if isinstance(summary, Mapping) else None
    if not isinstance(results, Mapping) or not results:
        return []
    out = [
        "## Evaluation",
        "",
        "Zero-shot top-1 at the end of training:",
        "",
        "| task | top-1 | chance |",
        "|---|---|---|",
    ]
    for task, r in results.items():
        if isinstance(r, Mapping) and "top1" in r:
            chance = f"{100 * r['chance']:.1f}%" if isinstance(r.get("chance"), (int, float)) else ""
            out.append(f"| {task} | {100 * r['top1']:.1f}% | {chance} |")
    if isinstance(summary.get("final_loss"), (int, float)):
        out += ["", f"Final contrastive loss: {summary['final_loss']:.3f}."]
    return [*out, ""]
