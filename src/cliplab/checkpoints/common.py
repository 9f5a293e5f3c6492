"""Pieces every checkpoint format shares: the error type, safe readers and building the model.

Every reader returns a :class:`Loaded`: weights already mapped to OpenAI's key layout (the layout of
:class:`cliplab.models.CLIP`), plus the architecture and preprocessing when the file records them.
Nothing here unpickles arbitrary Python objects: torch files are read with ``weights_only=True``
and safetensors files hold nothing but tensors and a string-to-string header. Writes go through
:mod:`cliplab.fileio` (temporary file or directory, then rename).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import CliplabError, first_line
from ..fileio import read_text
from ..models import CLIP, CLIPConfig, infer_config
from ..transforms import PreprocessConfig

# Integer entries in OpenAI's archives describing the model, not weights.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


class CheckpointError(CliplabError, ValueError):
    """A checkpoint could not be read or does not fit the model; the message names the file or key."""


@dataclass
class Loaded:
    """What a format reader found: OpenAI-layout weights and whatever configuration the file carries."""

    state_dict: dict[str, torch.Tensor]
    format: str
    config: CLIPConfig | None = None
    preprocess: PreprocessConfig | None = None
    extra: dict = field(default_factory=dict)


def is_torch_zip(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def is_torchscript_zip(path: Path) -> bool:
    """TorchScript archives carry compiled ``code/`` and ``constants.pkl``; ``torch.save`` zips do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torch_load(path: Path, *, mmap: bool = False) -> object:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the file."""
    if is_torchscript_zip(path):  # torch.load would only warn that it dispatches to torch.jit, then refuse
        raise CheckpointError(
            f"{path}: is a TorchScript archive where a torch.save-d state dict was expected; cliplab reads "
            "TorchScript only as OpenAI's .pt archives and never runs its code. If you trust the file, "
            "re-export its weights in a trusted environment (torch.save of its state_dict()) and load that."
        )
    zipped = is_torch_zip(path)
    if zipped:
        _refuse_zip_bomb(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle it: the file holds Python objects other than tensors and plain "
            f"containers, and cliplab never runs code from a checkpoint ({_pickle_reason(exc)}). If you trust "
            "the file, re-save only its tensors in a trusted environment (torch.save of the state dict alone, "
            "or safetensors) and load that file instead."
        ) from None
    except Exception as exc:  # corrupt data surfaces as RuntimeError, EOFError, IndexError, KeyError...
        raise CheckpointError(
            f"{path}: not a readable PyTorch file; it is truncated, corrupt or of another kind "
            f"({type(exc).__name__}: {first_line(exc)}). Re-download or re-save it."
        ) from None


def _refuse_zip_bomb(path: Path) -> None:
    """torch.save stores its entries uncompressed, so their sizes cannot add up to more than the file."""
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # torch.load names the problem
    size = path.stat().st_size
    if declared > size:
        raise CheckpointError(
            f"{path}: its zip entries declare {declared} bytes in a {size}-byte file; torch.save writes them "
            "uncompressed, so the file is corrupt or crafted (a zip bomb). Re-download or re-save it."
        )


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise CheckpointError(
            f"{path}: not a readable safetensors file; it is truncated or corrupt "
            f"({type(exc).__name__}: {first_line(exc)}). Re-download or re-save it."
        ) from None


def read_weights_file(path: Path, *, mmap: bool = False) -> object:
    """A safetensors file's tensors, or a torch file's contents (weights only)."""
    if safetensors_metadata(path) is not None:
        return read_safetensors(path)[0]
    return torch_load(path, mmap=mmap)


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata of a safetensors file, or None when the file is not one (cheap: header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            size = int.from_bytes(head, "little")
            if size < 2 or size > 100_000_000 or size + 8 > os.path.getsize(path):
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return header.get("__metadata__", {}) if isinstance(header, dict) else None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(read_text(path, "checkpoint config"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` when every key has it (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def unwrap_model(model: object) -> CLIP:
    """The ``CLIP`` inside ``DistributedDataParallel`` (``.module``) and/or ``torch.compile`` (``._orig_mod``)."""
    seen = 0
    while not isinstance(model, CLIP) and seen < 8:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model, seen = inner, seen + 1
    if not isinstance(model, CLIP):
        raise CheckpointError(
            f"expected a cliplab CLIP model (possibly wrapped by DistributedDataParallel or torch.compile), "
            f"got {type(model).__name__}"
        )
    return model


def default_preprocess(config: CLIPConfig) -> PreprocessConfig:
    """OpenAI's preprocessing (bicubic resize, centre crop, their mean/std) at the model's input size."""
    return PreprocessConfig(image_size=config.vision.image_size)


def resolve_config(
    loaded: Loaded, path: Path, config: CLIPConfig | None, quick_gelu: bool | None
) -> CLIPConfig:
    """Explicit config, else the file's, else inferred from the weights; ``quick_gelu`` overrides last."""
    cfg = config or loaded.config
    if cfg is None:
        try:
            cfg = infer_config(loaded.state_dict, quick_gelu=True if quick_gelu is None else quick_gelu)
        except (KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(
                f"{path} ({loaded.format} format): cannot infer the architecture from its weights ({exc}). "
                f"Some keys: {_sample(loaded.state_dict)}."
            ) from None
    if quick_gelu is not None and cfg.quick_gelu != quick_gelu:
        cfg = replace(cfg, quick_gelu=quick_gelu)
    return cfg


def build_model(state_dict: Mapping[str, torch.Tensor], config: CLIPConfig, path: Path, fmt: str) -> CLIP:
    """A float32 CPU ``CLIP`` holding ``state_dict``; any key or shape mismatch is a CheckpointError."""
    # Build on the meta device: random initialisation of a large model costs seconds and every
    # value is overwritten anyway. Strict key checking below guarantees nothing stays uninitialised.
    with torch.device("meta"):
        model = CLIP(config)
    expected = model.state_dict()
    sd = dict(state_dict)
    for key in expected:
        # OpenAI's and some open_clip ResNet files lack BatchNorm's step counter; it does not affect eval.
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.tensor(0, dtype=torch.long)
    check_keys(sd, expected, path, fmt, config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)
    return model.eval()


def check_keys(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: Path,
    fmt: str,
    config: CLIPConfig,
) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:4]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:4]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
    raise CheckpointError(
        f"{path} (detected format: {fmt}) does not fit the architecture {_describe(config)}: "
        + "; ".join(problems)
        + ". If the architecture was inferred wrongly (head counts are guessed as width // 64), pass "
        "config=<name or CLIPConfig>; otherwise the file is of an unsupported variant."
    )


def _describe(config: CLIPConfig) -> str:
    v, t = config.vision, config.text
    tower = (
        f"ViT {v.layers}x{v.width}/p{v.patch_size}"
        if v.kind == "vit"
        else f"ResNet{list(v.layers)}x{v.width}"
    )
    return f"({tower} @ {v.image_size}px, text {t.layers}x{t.width}, embed {config.embed_dim})"


def _sample(sd: Mapping[str, object], n: int = 6) -> list[str]:
    return sorted(sd)[:n]


def _pickle_reason(exc: BaseException) -> str:
    """The line of torch's long weights_only message that names the refused global."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln or "global" in ln]
    return (named or lines or [type(exc).__name__])[0]
