"""`make bench`: the side-by-side comparisons and scaling figures, then docs/PERFORMANCE.md.

    python benchmarks/run_all.py [NAME ...]     # the comparisons (default) or the named scripts
    python benchmarks/run_all.py --extra        # cliplab's internal benchmarks instead

Run it with the comparison environment's Python (``make bench`` builds ``.bench-venv``: open_clip,
transformers, CLIP_benchmark and cliplab on one torch). Each script runs in its own process, so one's
threads and caches don't colour the next; its printed report is kept as ``results/<name>.txt`` and
the comparisons write ``results/<name>.json``, from which ``performance.py`` writes
docs/PERFORMANCE.md. A failed script is reported and the others still run; the exit code is 1 then.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> extra arguments. Sizes keep the whole run near 30 minutes on 2 cores.
COMPARISONS: dict[str, list[str]] = {
    "compare_tokenizer": [],
    "compare_encode_text": [],
    "compare_encode_image": ["--rounds", "3"],
    "compare_preprocess": [],
    "compare_zeroshot": ["--rounds", "2"],
    "compare_train": [],
    "bench_scaling": [],
}

# cliplab against itself or against OpenAI's reference code (`make bench-extra`).
EXTRA: dict[str, list[str]] = {
    "bench_train": ["--steps", "10", "--json", "{json}"],
    "bench_eval": [],
    "bench_data": [],
    "bench_synthetic": ["--n", "1000"],
    "bench_retrieval": ["--n-images", "5000", "--n-texts", "25000", "--chunk-sizes", "1024", "4096"],
    "bench_search": ["--json", "{json}"],
}


def run(name: str, args: list[str]) -> bool:
    json_path = RESULTS / f"{name}.json"
    args = [a.replace("{json}", str(json_path)) for a in args]
    print(f"=== {name} {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args], capture_output=True, text=True)
    (RESULTS / f"{name}.txt").write_text(proc.stdout + ("\n" + proc.stderr if proc.returncode else ""))
    print(proc.stdout.strip()[-3000:])
    print(f"--- {name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s\n", flush=True)
    if proc.returncode:
        print(proc.stderr.strip()[-2000:], file=sys.stderr)
    return proc.returncode == 0


def main(argv: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    extra = "--extra" in argv
    names = [a for a in argv if a != "--extra"]
    table = {**COMPARISONS, **EXTRA}
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(table)}", file=sys.stderr)
        return 2
    chosen = names or list(EXTRA if extra else COMPARISONS)
    failed = [name for name in chosen if not run(name, table[name])]
    if not extra:
        import performance

        print(f"wrote {performance.main()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv[1:]))
