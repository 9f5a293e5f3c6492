"""Run configuration: one typed, validated object, read from YAML/JSON plus ``--key=value`` overrides.

Overrides use dotted keys for nested sections (``--data.workers=0``) and YAML syntax for values
(``--betas=[0.9,0.98]``). Unknown keys are errors that name the key and list the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DataConfig
from ..errors import CliplabError, UsageError
from ..fileio import atomic_write_text, read_text

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the paper's optimiser settings."""

    model: str = "tiny"  # named config (cliplab.list_configs()) or a JSON config file
    pretrained: str | None = None  # initialise from any checkpoint cliplab.load reads (fine-tuning)
    lock_image: bool = False  # LiT: freeze the image tower (and keep its BatchNorm statistics)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 128  # contrastive batch per optimizer step, per rank
    accum_steps: int = 1  # micro-batches per step; the contrastive batch stays whole
    steps: int | None = 1000  # optimizer steps in total; None -> epochs
    epochs: int | None = None
    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float | None = None  # max global gradient norm
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + GradScaler, GPU)
    grad_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (CPU)
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    log_every: int = 10
    eval_every: int = 250  # steps between zero-shot evaluations; 0 disables
    eval_per_class: int = 20  # images per class in each synthetic zero-shot task
    checkpoint_every: int = 250  # steps; a checkpoint is also written at the end and on Ctrl-C
    keep_last: int = 2
    max_nonfinite: int = 5  # consecutive NaN/inf losses tolerated (steps skipped) before stopping
    tensorboard: bool = True
    # zero-shot evaluation sets during training, as `cliplab eval zeroshot --data` takes them (image
    # folders with classnames/templates, manifests, shards, synthetic:<task>, transfer:<set>); None: the synthetic
    # tasks when training on the synthetic set, else no evaluation
    eval_data: list[str] | None = None
    # several processes (torchrun): seconds a collective may wait for a peer before the run stops
    dist_timeout: float = 1800.0
    sync_batchnorm: bool = False  # ResNet towers on several GPUs: batch statistics over all ranks
    compile: bool = False  # torch.compile the training forward

    def __post_init__(self) -> None:
        self.data = _data_config(self.data)
        _check_types(self)
        problems = []
        if self.steps is None and self.epochs is None:
            problems.append("set either steps or epochs")
        for name in (
            "batch_size",
            "accum_steps",
            "log_every",
            "keep_last",
            "max_nonfinite",
            "eval_per_class",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "epochs", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (or null), got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value}")
        if not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must both be in [0, 1), got {list(self.betas)}")
        if self.eps <= 0 or self.min_lr < 0 or self.weight_decay < 0:
            problems.append("eps must be > 0, min_lr and weight_decay >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 (or null), got {self.grad_clip}")
        if self.batch_size % self.accum_steps:
            problems.append(
                f"batch_size={self.batch_size} must be divisible by accum_steps={self.accum_steps}"
            )
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if not 0 < self.train_crop_scale[0] <= self.train_crop_scale[1] <= 1:
            problems.append("train_crop_scale must be (low, high) with 0 < low <= high <= 1")
        if not self.lr > 0 or self.min_lr > self.lr:
            problems.append(f"lr must be > 0 and >= min_lr, got lr={self.lr}, min_lr={self.min_lr}")
        if not self.dist_timeout > 0:
            problems.append(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.eval_data is not None and not all(self.eval_data):
            problems.append("eval_data entries must be non-empty paths, synthetic:<task> or transfer:<set>")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            problems.append("warmup_steps, eval_every and checkpoint_every must be >= 0")
        if problems:
            raise UsageError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, plain types only


def _data_config(value: Any) -> DataConfig:
    """The ``data`` section as a DataConfig; its own validation errors name the ``data.`` key."""
    if isinstance(value, DataConfig):
        return value
    if not isinstance(value, dict):
        raise UsageError(
            f"config key 'data' must be a section of data settings (e.g. data: {{source: manifest, path: "
            f"train.csv}}), got {value!r}"
        )
    try:
        return DataConfig(**_coerce(DataConfig, _known(value, DataConfig, "data")))
    except CliplabError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"config section 'data': {exc}") from None


def _check_types(cfg: TrainConfig) -> None:
    """Check (and lightly convert) every field against its annotation, naming the key on failure.

    Without this a wrong type surfaces later as an unrelated TypeError (``"abc" < 1``) or, worse,
    trains with a string where a number was meant.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name != "data":  # DataConfig validates itself
            setattr(cfg, f.name, _typed(f.name, getattr(cfg, f.name), hints[f.name]))


def _typed(key: str, value: Any, t: Any) -> Any:
    """``value`` as type ``t`` (int -> float, YAML 1.1 strings such as "1e-3" -> float, list -> tuple)."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _typed(key, value, arg)
                except ValueError:
                    pass
        raise _type_error(key, value, t)
    if typing.get_origin(t) is list:
        (arg,) = typing.get_args(t)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _type_error(key, value, t)
        return [_typed(key, v, arg) for v in items]
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _type_error(key, value, t)
        return tuple(_typed(key, v, a) for v, a in zip(value, args, strict=True))
    if t is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _type_error(key, value, t) from None
    if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if t in (int, str, bool) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
        return value
    raise _type_error(key, value, t)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(t: Any) -> str:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(t))
    if typing.get_origin(t) is tuple:
        return f"a list of {len(typing.get_args(t))} numbers, e.g. [0.9, 0.98]"
    if typing.get_origin(t) is list:
        return f"a list of {_describe(typing.get_args(t)[0])}s"
    return _TYPE_NAMES.get(t, getattr(t, "__name__", str(t)))


def _type_error(key: str, value: Any, t: Any) -> UsageError:
    return UsageError(f"config key {key!r}: expected {_describe(t)}, got {value!r} ({type(value).__name__})")


def _known(d: dict, cls: type, section: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        where = f"{section}." if section else ""
        raise UsageError(
            f"unknown config key(s) {[where + k for k in unknown]}; valid keys: {sorted(where + n for n in names)}"
        )
    return d


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UsageError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["--lr=1e-3", "data.workers=0"]`` -> nested dict with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise UsageError(f"override {item!r} must look like --key=value")
        key, raw = text.split("=", 1)
        _set_dotted(out, key.replace("-", "_"), yaml.safe_load(raw) if raw != "" else None)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(cls: type, d: dict) -> dict:
    """Light type coercion for YAML values (``1e-3`` parses as a string in YAML 1.1)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in d.items():
        t = hints.get(k)
        if isinstance(v, str) and t is not None and _allows(t, float) and not _allows(t, str):
            try:
                v = float(v)
            except ValueError as e:
                raise UsageError(f"config key {k!r}: expected a number, got {v!r}") from e
        out[k] = v
    return out


def _allows(t: Any, kind: type) -> bool:
    if t is kind:
        return True
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return any(_allows(a, kind) for a in typing.get_args(t))
    return False


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read a YAML/JSON config file (or start from defaults) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = read_text(path, "config file")
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UsageError(f"{where}: the config file is not valid YAML/JSON ({problem})") from None
        if not isinstance(raw, dict):
            raise UsageError(f"config file {path} must hold a mapping of settings, got {type(raw).__name__}")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    raw = _merge(raw, extra)
    try:
        _known(raw, TrainConfig, "")
        if "data" in raw:
            raw["data"] = _data_config(raw["data"])
        return TrainConfig(**_coerce(TrainConfig, raw))
    except UsageError as exc:
        if path is None:
            raise
        raise UsageError(f"{exc} (config file {path}, with the command line's overrides)") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
