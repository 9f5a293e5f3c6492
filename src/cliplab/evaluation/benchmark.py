"""Benchmark suites: several evaluation tasks run against one or more models, results in one table.

A suite is a YAML file::

    device: cpu            # optional: device, batch_size, workers, cache (feature cache on/off)
    models:
      - {name: mine, path: runs/mine/final.safetensors}
    tasks:
      - {task: zeroshot, dataset: shapes, data: shapes/test, templates: imagenet}
      - {task: linear_probe, dataset: shapes, data: shapes/test, train: shapes/train}
      - {task: retrieval, dataset: flickr30k, data: dataset_flickr30k.json, images: flickr30k-images}

Relative paths are resolved against the suite file's folder. :func:`read_suite` validates the file
(an unknown key is an error naming it and its entry); :func:`run_suite` runs every (model, task)
pair, records a failing task's error and carries on, and writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CliplabError
from ..fileio import atomic_write_text

TOP_KEYS = {"models": list, "tasks": list, "device": str, "batch_size": int, "workers": int, "cache": bool}
MODEL_KEYS = {"name": str, "path": str}
COMMON_TASK_KEYS = {"task": str, "dataset": str, "data": str, "batch_size": int, "workers": int}
# Options of each task: key -> accepted types. Keys in PATH_KEYS are files resolved against the suite.
TASK_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "zeroshot": {"classnames": (str, list), "templates": (str, list)},
    "linear_probe": {
        "train": (str,),
        "val_fraction": (float,),
        "seed": (int,),
        "c_grid": (list,),
        "n_jobs": (int,),
    },
    "retrieval": {
        "images": (str,),
        "image_column": (str,),
        "caption_column": (str,),
        "split": (str, type(None)),
        "chunk_size": (int,),
    },
}
REQUIRED_OPTIONS = {"linear_probe": ("train",)}
PATH_KEYS = ("data", "train", "images", "classnames", "templates")


class SuiteError(CliplabError, ValueError):
    """The suite file is malformed; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str


@dataclass(frozen=True)
class TaskSpec:
    task: str
    dataset: str
    data: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    models: list[ModelSpec]
    tasks: list[TaskSpec]
    source: Path
    device: str = "cpu"
    batch_size: int = 64
    workers: int | None = None
    cache: bool = True


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int in Python; a YAML `true` is not a batch size.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types) or (float in types and isinstance(value, int))


def _check_keys(entry: Any, allowed: dict[str, tuple[type, ...]], where: str, source: Path) -> None:
    if not isinstance(entry, dict):
        raise SuiteError(f"{source}: {where} must be a mapping, got {type(entry).__name__}")
    for key, value in entry.items():
        if key not in allowed:
            raise SuiteError(
                f"{source}: {where}: unknown key {key!r}; allowed keys: {', '.join(sorted(allowed))}"
            )
        if not _type_ok(value, allowed[key]):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed[key])
            raise SuiteError(f"{source}: {where}: {key!r} must be {names}, got {value!r}")


def _require(entry: dict, keys: tuple[str, ...], where: str, source: Path) -> None:
    for key in keys:
        if key not in entry:
            raise SuiteError(f"{source}: {where}: missing required key {key!r}")


def _resolve(value: Any, base: Path) -> Any:
    # Only strings naming an existing relative file or folder are rewritten; "imagenet" as a template
    # set name stays a name, and a missing data path stays as written so the task's error names it.
    if isinstance(value, str) and not os.path.isabs(value) and (base / value).exists():
        return str(base / value)
    return value


def parse_suite(data: Any, source: str | os.PathLike = "<suite>") -> Suite:
    """Validate a parsed suite (the YAML's top-level mapping) and resolve its relative paths."""
    source = Path(source)
    base = source.parent
    _check_keys(data, {k: (t,) for k, t in TOP_KEYS.items()}, "top level", source)
    _require(data, ("models", "tasks"), "top level", source)
    if not data["models"] or not data["tasks"]:
        raise SuiteError(f"{source}: 'models' and 'tasks' must each list at least one entry")
    models = []
    for i, m in enumerate(data["models"]):
        _check_keys(m, {k: (t,) for k, t in MODEL_KEYS.items()}, f"models[{i}]", source)
        _require(m, ("name", "path"), f"models[{i}]", source)
        if m["name"] in {x.name for x in models}:
            raise SuiteError(
                f"{source}: models[{i}]: model name {m['name']!r} is used twice; names must be unique"
            )
        models.append(ModelSpec(m["name"], _resolve(m["path"], base)))
    tasks = [_parse_task(t, i, source) for i, t in enumerate(data["tasks"])]
    return Suite(
        models=models,
        tasks=tasks,
        source=source,
        device=data.get("device", "cpu"),
        batch_size=data.get("batch_size", 64),
        workers=data.get("workers"),
        cache=data.get("cache", True),
    )


def _parse_task(entry: Any, i: int, source: Path) -> TaskSpec:
    where = f"tasks[{i}]"
    if not isinstance(entry, dict):
        raise SuiteError(f"{source}: {where} must be a mapping, got {type(entry).__name__}")
    kind = entry.get("task")
    if kind not in TASK_OPTIONS:
        raise SuiteError(f"{source}: {where}: 'task' must be one of {', '.join(TASK_OPTIONS)}, got {kind!r}")
    allowed = {k: (t,) for k, t in COMMON_TASK_KEYS.items()} | TASK_OPTIONS[kind]
    _check_keys(entry, allowed, f"{where} ({kind})", source)
    _require(entry, ("dataset", "data", *REQUIRED_OPTIONS.get(kind, ())), where, source)
    if kind == "linear_probe" and "c_grid" in entry:
        grid = entry["c_grid"]
        if not grid or not all(_type_ok(c, (float,)) and c > 0 for c in grid):
            raise SuiteError(
                f"{source}: {where}: 'c_grid' must be a non-empty list of positive numbers, got {grid!r}"
            )
    options = {
        k: (_resolve(v, source.parent) if k in PATH_KEYS else v)
        for k, v in entry.items()
        if k not in ("task", "dataset", "data")
    }
    return TaskSpec(kind, entry["dataset"], _resolve(entry["data"], source.parent), options)


def read_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite YAML file."""
    import yaml

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise SuiteError(f"suite file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML: {e}") from None
    return parse_suite(data, path)


# --- running --------------------------------------------------------------------------------------


@dataclass
class TaskContext:
    """Settings shared by the tasks of one model: where to compute and where to cache features.

    ``cache_dir`` is handed to ``extract_image_features``, whose cache keys include the model's
    weights and the split's samples, so zero-shot and linear probe on one split share a file.
    """

    device: str
    batch_size: int
    workers: int | None
    cache_dir: Path | None
    progress: bool = False


def _task_context(task: TaskSpec, suite: Suite, cache_dir: Path | None, progress: bool) -> TaskContext:
    return TaskContext(
        device=suite.device,
        batch_size=task.options.get("batch_size", suite.batch_size),
        workers=task.options.get("workers", suite.workers),
        cache_dir=cache_dir,
        progress=progress,
    )


def _zeroshot(model, preprocess, task: TaskSpec, ctx: TaskContext) -> dict[str, Any]:
    from .zeroshot import evaluate_zero_shot_from_suite

    return evaluate_zero_shot_from_suite(model, preprocess, task, ctx)


def _linear_probe(model, preprocess, task: TaskSpec, ctx: TaskContext) -> dict[str, Any]:
    from .linear_probe import run_linear_probe

    o = task.options
    return run_linear_probe(
        model,
        preprocess,
        o["train"],
        task.data,
        batch_size=ctx.batch_size,
        workers=ctx.workers,
        device=ctx.device,
        cache_dir=ctx.cache_dir,
        val_fraction=o.get("val_fraction", 0.2),
        seed=o.get("seed", 0),
        c_grid=o.get("c_grid"),
        n_jobs=o.get("n_jobs", -1),
        progress=ctx.progress,
    )


def _retrieval(model, preprocess, task: TaskSpec, ctx: TaskContext) -> dict[str, Any]:
    from ..tokenizer import tokenize
    from .retrieval import run_retrieval

    o = task.options
    return run_retrieval(
        model,
        preprocess,
        tokenize,
        task.data,
        images_root=o.get("images"),
        batch_size=ctx.batch_size,
        workers=ctx.workers,
        device=ctx.device,
        cache_dir=ctx.cache_dir,
        chunk_size=o.get("chunk_size", 1024),
        image_column=o.get("image_column"),
        caption_column=o.get("caption_column"),
        split=o.get("split", "test"),
        progress=ctx.progress,
    )


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "zeroshot": _zeroshot,
    "linear_probe": _linear_probe,
    "retrieval": _retrieval,
}


def run_task(model, preprocess, task: TaskSpec, ctx: TaskContext) -> dict[str, Any]:
    """Run one task against one loaded model; returns its metrics."""
    return TASKS[task.task](model, preprocess, task, ctx)


def _default_loader(spec: ModelSpec, device: str):
    import cliplab

    return cliplab.load(spec.path, device=device)


def _error_text(exc: BaseException) -> str:
    # The last frame says where it broke without pasting the whole traceback into the table.
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(frame[0].filename).name}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike,
    *,
    load_model: Callable[[ModelSpec, str], tuple[Any, Any]] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every task against every model, writing ``results.json`` and ``results.md`` to ``out_dir``.

    Each model is loaded once (``load_model(spec, device)``, default :func:`cliplab.load`). A failing
    load or task is recorded with its error and the run goes on; the files are rewritten after every
    task, so an interrupted run keeps what it finished. Returns the result records.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SuiteError(
            f"--out {out} is a file; the benchmark writes a folder (results.md, results.json, cache/)"
        )
    out.mkdir(parents=True, exist_ok=True)
    load_model = load_model or _default_loader
    records: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(suite.models) * len(suite.tasks), desc="benchmark", unit="task", disable=not progress
    )
    for spec in suite.models:
        try:
            model, preprocess = load_model(spec, suite.device)
            load_error = None
        except Exception as exc:  # noqa: BLE001  (one broken checkpoint must not stop the others)
            model = preprocess = None
            load_error = f"loading {spec.path}: {_error_text(exc)}"
        cache_dir = _cache_dir(out, spec) if suite.cache else None
        for task in suite.tasks:
            bar.set_postfix_str(f"{spec.name} {task.task} {task.dataset}")
            ctx = _task_context(task, suite, cache_dir, progress)
            records.append(_run_one(model, preprocess, spec, task, ctx, load_error))
            write_results(records, suite, out)
            bar.update(1)
        del model, preprocess
    bar.close()
    return records


def _cache_dir(out: Path, spec: ModelSpec) -> Path:
    # Created up front and free of dots: extract_image_features takes a path with a suffix that is
    # not an existing folder for a single cache *file*.
    path = out / "cache" / re.sub(r"[^A-Za-z0-9_-]+", "_", spec.name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_one(
    model, preprocess, spec: ModelSpec, task: TaskSpec, ctx: TaskContext, load_error: str | None
) -> dict:
    record: dict[str, Any] = {"model": spec.name, "task": task.task, "dataset": task.dataset}
    start = time.perf_counter()
    if load_error is not None:
        record["error"] = load_error
    else:
        try:
            record["metrics"] = run_task(model, preprocess, task, ctx)
        except Exception as exc:  # noqa: BLE001  (recorded in the results; the suite goes on)
            record["error"] = _error_text(exc)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


# --- writing --------------------------------------------------------------------------------------


def write_results(records: list[dict[str, Any]], suite: Suite, out_dir: Path) -> None:
    """Write ``results.json`` (everything) and ``results.md`` (one table per task kind)."""
    payload = {
        "suite": str(suite.source),
        "models": [{"name": m.name, "path": m.path} for m in suite.models],
        "results": records,
    }
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(records))


def _scalar_keys(records: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        for k, v in r.get("metrics", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k)
    return list(keys)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_markdown(records: list[dict[str, Any]]) -> str:
    """A Markdown table per task kind: one row per (model, dataset), one column per scalar metric."""
    lines = ["# Benchmark results", ""]
    for kind in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == kind]
        keys = _scalar_keys(rows)
        lines += [f"## {kind}", ""]
        lines.append("| " + " | ".join(["model", "dataset", *keys, "seconds", "error"]) + " |")
        lines.append("|" + "---|" * (len(keys) + 4))
        for r in rows:
            metrics = r.get("metrics", {})
            error = r.get("error", "").replace("|", "\\|").replace("\n", " ")
            cells = [
                r["model"],
                r["dataset"],
                *(_cell(metrics.get(k)) for k in keys),
                _cell(r["seconds"]),
                error,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
