"""Shared harness of the side-by-side comparisons (``benchmarks/compare_*.py``).

Every comparison script runs in the comparison environment that ``make bench`` builds
(``.bench-venv``: torch 2.14.1, torchvision, open_clip, transformers, CLIP_benchmark and cliplab
itself), so all implementations run on the same torch in one process. The rules it enforces:

* outputs are checked to agree before anything is timed (the script asserts it and records the
  measured difference);
* implementations are timed alternately, round after round (A B C A B C ...), so a slow patch of a
  shared machine hits them all alike; the median of the rounds is reported;
* speed is a ratio against the faster of the alternatives on the same run.

A script builds a :class:`Report`, adds rows and targets, and calls :meth:`Report.write`, which writes
``benchmarks/results/<name>.json`` (machine, versions, threads, date, rows, targets). ``performance.py``
turns those files into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, memory, torch, threads, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for name in ("open_clip", "transformers", "torchvision", "clip_benchmark", "PIL", "numpy", "tokenizers"):
        versions[name] = package_version(name)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def package_version(module: str) -> str | None:
    from importlib import metadata

    dist = {
        "open_clip": "open_clip_torch",
        "PIL": "pillow",
        "clip_benchmark": "clip_benchmark",
    }.get(module, module)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def alternate(
    candidates: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
) -> dict[str, dict]:
    """Time each candidate ``rounds`` times, interleaved; return {name: {median_s, min_s, times_s}}.

    ``warmup`` untimed calls of each come first (first-call allocation, lazy init, caches that
    belong to the steady state). A garbage collection runs before each timed call, outside the timing.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": [round(t, 6) for t in ts]}
        for name, ts in times.items()
    }


def time_once(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call (for cold measurements, which cannot be repeated in-process)."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Report:
    """One comparison's results: rows of measurements, targets, and free-form notes."""

    name: str  # file stem under results/, e.g. "compare_tokenizer"
    title: str  # section heading in PERFORMANCE.md
    description: str = ""  # what is compared, on what inputs, how
    rows: list[dict] = field(default_factory=list)  # one per measurement: {"case", "impl", ...}
    targets: list[dict] = field(default_factory=list)  # {"what", "target", "measured", "met"}
    agreement: list[dict] = field(default_factory=list)  # {"what", "measure", "value", "limit", "ok"}
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # PNG paths relative to the repository root

    def row(self, **values) -> None:
        self.rows.append(values)

    def agree(
        self,
        what: str,
        measure: str,
        value: float | bool,
        limit: float | None = None,
        *,
        at_least: bool = False,
    ) -> bool:
        """Record an output check: ``value <= limit`` (``>=`` with ``at_least``, e.g. a cosine), or
        ``value`` itself when there is no limit (a boolean such as "ids identical")."""
        if limit is None:
            ok = bool(value)
        else:
            ok = float(value) >= limit if at_least else float(value) <= limit
        self.agreement.append(
            {"what": what, "measure": measure, "value": value, "limit": limit, "at_least": at_least, "ok": ok}
        )
        return ok

    def target(self, what: str, target: float, measured: float, higher_is_better: bool = True) -> bool:
        met = measured >= target if higher_is_better else measured <= target
        self.targets.append(
            {
                "what": what,
                "target": target,
                "measured": round(float(measured), 4),
                "met": bool(met),
                "higher_is_better": higher_is_better,
            }
        )
        return met

    def write(self, path: Path | None = None) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = path or RESULTS / f"{self.name}.json"
        data = {"machine": machine(), **self.__dict__}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, path)
        return path

    def print(self) -> None:
        print(f"## {self.title}")
        for r in self.rows:
            print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()))
        for a in self.agreement:
            print(
                f"  agree: {a['what']}: {a['measure']} {_fmt(a['value'])} (limit {a['limit']}) ok={a['ok']}"
            )
        for t in self.targets:
            print(
                f"  target: {t['what']}: {_fmt(t['measured'])} vs {t['target']} -> {'met' if t['met'] else 'NOT met'}"
            )
        for n in self.notes:
            print(f"  note: {n}")


def ratio(baseline_s: float, ours_s: float) -> float:
    """Speed-up of ours over a baseline, from times (higher is faster)."""
    return baseline_s / ours_s


# Runs the measured command as its own child and reports that child's ru_maxrss; see peak_rss_mib_of.
_PEAK_WRAPPER = """
import os, resource, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
status = os.waitpid(pid, 0)[1]
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {peak}")
"""


def peak_rss_mib_of(
    cmd: list[str], env: dict | None = None, cwd: str | None = None
) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak resident MiB of it and its children).

    The peak is ``ru_maxrss`` (Linux reports KiB) of the biggest single process among ``cmd`` and
    the descendants it waited for: the main training process, not a sum over data-loader workers.

    ``cmd`` does not run as a child of this process: Linux starts a child's ``ru_maxrss`` from the
    address space that ``exec`` replaces, which for a ``fork``/``vfork`` child is this process's own,
    so a benchmark holding 6 GiB would see every child peak at >= 6 GiB. A tiny wrapper (a fresh
    ``python -S``, about 10 MiB) starts ``cmd`` instead and reports its children's ``ru_maxrss``;
    results under the wrapper's own size are therefore that size. The wall time includes the
    wrapper's start (some 20 ms).
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="peak_rss_") as tmp:
        out = Path(tmp) / "peak"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", _PEAK_WRAPPER, str(out), *cmd], env=env, cwd=cwd)
        wall = time.perf_counter() - t0
        if not out.exists():  # the wrapper failed before cmd ran (its traceback says why)
            raise OSError(f"could not run {cmd!r} (wrapper exit code {proc.returncode})")
        code, peak_kib = out.read_text().split()
    return int(code), wall, int(peak_kib) / 1024


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
