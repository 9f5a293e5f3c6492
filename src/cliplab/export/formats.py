"""Exports to transformers' and open_clip's directory layouts (ONNX is in ``onnx_graphs.py``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from ..checkpoints.card import CARD_FILE, model_card, write_card
from ..checkpoints.common import CheckpointError, default_preprocess, unwrap_model
from ..checkpoints.hf import to_hf_config, write_hf_model
from ..checkpoints.open_clip import HUB_CONFIG, HUB_WEIGHTS, to_model_cfg
from ..fileio import atomic_write_dir
from ..models import CLIP
from ..tokenizer import EOT_TOKEN, SOT_TOKEN, read_merges, vocabulary
from ..transforms import PreprocessConfig

# Pillow's resampling constants, which transformers' CLIPImageProcessor stores as "resample".
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"


def _prepare(model: CLIP, preprocess: PreprocessConfig | None) -> tuple[CLIP, PreprocessConfig]:
    """The bare model in float32 on the CPU (a copy when it is not already; the caller's is untouched)."""
    import torch

    model = unwrap_model(model)
    if model.dtype != torch.float32 or next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    return model, preprocess or default_preprocess(model.config)


def export_hf(
    model: CLIP,
    out_dir: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    source: str | None = None,
    run_dir: Path | None = None,
    extra: dict | None = None,
) -> Path:
    """A directory ``transformers.CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` load.

    Weights are float32 safetensors; the tokenizer files are CLIP's vocabulary and merges (the same
    ids as ``cliplab.tokenize`` on ordinary text; transformers' tokenizer does not run ftfy), padded
    with id 0 as cliplab pads. ResNet image towers raise: transformers has no such architecture.
    """
    model, preprocess = _prepare(model, preprocess)
    to_hf_config(model.config)  # refuses a ResNet before anything is written
    processor = _hf_preprocessor_config(preprocess)
    card = model_card(model, preprocess, "hf", extra=extra, run_dir=run_dir, source=source)
    out_dir = Path(out_dir)

    def write(tmp: Path) -> None:
        write_hf_model(model, tmp)
        _write_hf_tokenizer(tmp, model.config.text.context_length)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        write_card(tmp, card, existing=out_dir / CARD_FILE)

    return atomic_write_dir(out_dir, write)


def _hf_preprocessor_config(pre: PreprocessConfig) -> dict:
    n = pre.image_size
    if pre.resize_mode == "longest":
        raise CheckpointError(
            "this model's preprocessing pads the long side (resize_mode='longest'), which transformers' "
            "CLIPImageProcessor cannot express; export to open_clip or ONNX instead"
        )
    shortest = pre.resize_mode == "shortest"
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"shortest_edge": n} if shortest else {"height": n, "width": n},
        "resample": _PIL_RESAMPLE[pre.interpolation],
        "do_center_crop": shortest,
        "crop_size": {"height": n, "width": n},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_convert_rgb": True,
    }


def _write_hf_tokenizer(directory: Path, context_length: int) -> None:
    """CLIPTokenizer's files: vocab.json and merges.txt from cliplab's own BPE tables, plus its config."""
    merges = read_merges()
    tokens = vocabulary(merges)
    assert tokens[SOT_TOKEN] == _SOT and tokens[EOT_TOKEN] == _EOT, "CLIP's special tokens moved"
    (directory / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False)
    )
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    # Padding with <|endoftext|>, as OpenAI's own transformers release does. Naming "!" (id 0, the
    # padding of cliplab.tokenize) would make the tokenizer treat every "!" of a text as a special
    # token and give it id 0 instead of 256. Positions after the end-of-text token never change the
    # text features (causal mask, pooled at the first end-of-text), so the padding value does not matter.
    special = {"bos_token": _SOT, "eos_token": _EOT, "unk_token": _EOT, "pad_token": _EOT}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def export_open_clip(
    model: CLIP,
    out_dir: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    source: str | None = None,
    run_dir: Path | None = None,
    extra: dict | None = None,
) -> Path:
    """open_clip's hub layout: ``open_clip_config.json`` (model and preprocessing config) and
    ``open_clip_model.safetensors`` (open_clip's ``CLIP`` keys, which are OpenAI's: cliplab's own)."""
    from safetensors.torch import save_file

    model, preprocess = _prepare(model, preprocess)
    config = {
        "model_cfg": to_model_cfg(model.config),
        "preprocess_cfg": {
            "size": preprocess.image_size,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "interpolation": preprocess.interpolation,
            "resize_mode": preprocess.resize_mode,
        },
    }
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    card = model_card(model, preprocess, "open_clip", extra=extra, run_dir=run_dir, source=source)
    out_dir = Path(out_dir)

    def write(tmp: Path) -> None:
        (tmp / HUB_CONFIG).write_text(json.dumps(config, indent=2))
        save_file(weights, str(tmp / HUB_WEIGHTS[0]), {"format": "pt"})
        write_card(tmp, card, existing=out_dir / CARD_FILE)

    return atomic_write_dir(out_dir, write)


def _export_onnx(model: CLIP, out_dir: str | Path, **kwargs) -> Path:
    from .onnx_graphs import export_onnx

    return export_onnx(model, out_dir, **kwargs)


export_onnx = _export_onnx
EXPORTERS: dict[str, Callable[..., Path]] = {
    "hf": export_hf,
    "open_clip": export_open_clip,
    "onnx": _export_onnx,
}
