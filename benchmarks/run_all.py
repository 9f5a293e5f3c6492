"""`make bench`: every side-by-side benchmark in one run, outputs under benchmarks/results/.

Each script runs in its own process (so one's threads and caches don't colour the next) and its
printed report is kept as ``results/<name>.txt``; scripts that take ``--json`` also write
``results/<name>.json``. Sizes are chosen so the whole run takes roughly 15-25 minutes on 2 cores.
The torchvision comparison of preprocessing needs a separate environment with torchvision and is not
run here (see benchmarks/check_transforms_torchvision.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> extra arguments (kept modest; every script's --help lists more)
BENCHMARKS: dict[str, list[str]] = {
    "bench_tokenizer": ["--n", "20000", "--json", "{json}"],
    "bench_model": ["--classes", "5", "--repeats", "2", "--json", "{json}"],
    "bench_train": ["--steps", "10", "--json", "{json}"],
    "bench_eval": [],
    "bench_data": [],
    "bench_synthetic": ["--n", "1000"],
    "bench_retrieval": ["--n-images", "5000", "--n-texts", "25000", "--chunk-sizes", "1024", "4096"],
    "bench_search": ["--json", "{json}"],
}


def main(names: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names or BENCHMARKS:
        json_path = RESULTS / f"{name}.json"
        args = [a.replace("{json}", str(json_path)) for a in BENCHMARKS[name]]
        print(f"=== {name} {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), *args], capture_output=True, text=True
        )
        (RESULTS / f"{name}.txt").write_text(proc.stdout + ("\n" + proc.stderr if proc.returncode else ""))
        print(proc.stdout.strip()[-3000:])
        print(f"--- {name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s\n", flush=True)
        if proc.returncode:
            failed.append(name)
            print(proc.stderr.strip()[-2000:], file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
