"""Training throughput and peak memory: cliplab's trainer against open_clip's training script.

Two cases, each end to end from the same on-disk CSV manifest of JPEG files (absolute paths,
column ``filepath`` and ``caption``), which both trainers read:

* ``vit``: ViT-B/32 at batch 16,
* ``demo``: ``demo-rn32`` (a ModifiedResNet at 32 px, the demo's model until the demo moved to
  ``demo-rn32s``, whose full-resolution stem open_clip cannot express) at batch 128.

Each trainer runs as its own process (``python -m cliplab train --config ...`` and
``python -m open_clip_train.main ...`` through a small wrapper that first registers the model
config, which :func:`cliplab.checkpoints.open_clip.to_model_cfg` derives from cliplab's), with the
same model, batch, precision (fp32), data-loader workers, torch threads, optimiser (AdamW, the same
lr, weight decay, betas, eps and warm-up) and data; otherwise each runs with its own defaults
(cliplab's include ``data.reduced_decode``: JPEGs decoded at reduced scale when the random crop
allows it; the agreement check measures its pixel difference). Runs alternate: cliplab, open_clip, cliplab,
open_clip, ...; each number is the median over the rounds.

* samples/s is the steady state, read from each trainer's own per-step log (``log_every=1`` /
  ``--log-every-n-steps 1``): the wall time from the end of step ``warmup`` to the end of the last
  step, which excludes start-up (imports, model construction, first data-loader start) and the
  first ``warmup`` steps. cliplab logs cumulative samples/s since its loop started, so the time at
  step k is samples(k) / rate(k); open_clip logs each step's time (``Batch (t)``, from the end of
  one step to the end of the next, data wait included), which are summed.
* peak memory is the main training process's own peak resident set (``VmHWM``, printed by the
  process as it exits; :func:`report_peak_rss_at_exit` says why not ``ru_maxrss``). Data-loader
  workers are separate processes and not counted. It covers the whole run, including start-up and
  the final checkpoint that both write.

Before timing, one process holds both models with cliplab's initial weights (open_clip's ``CLIP``
keys are cliplab's) and checks that they have the same parameter count and give the same
contrastive loss on the same batch (each with its own loss function and tokenizer).

    python benchmarks/compare_train.py                 # both cases (vit 2 rounds, demo 3): ~7 min on 2 cores
    python benchmarks/compare_train.py --cases demo --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from compare import Report  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # cliplab config name

    @property
    def open_clip_name(self) -> str:  # the name the open_clip config is registered under
        return "cliplab-" + self.model.replace("/", "-")

    batch: int
    warmup: int  # steps excluded from the rate
    timed: int  # steps timed
    rounds: int  # alternating (cliplab, open_clip) rounds, unless --rounds says otherwise

    @property
    def steps(self) -> int:
        return self.warmup + self.timed


CASES = {
    # ~6 s (cliplab) and ~10 s (open_clip) a step on one core: 2 rounds of 5 steps, ~4 minutes.
    "vit": Case("vit", "ViT-B/32", batch=16, warmup=1, timed=4, rounds=2),
    # ~50 s a round, start-up included: 3 rounds.
    "demo": Case("demo", "demo-rn32", batch=128, warmup=2, timed=6, rounds=3),
}
# The optimiser both trainers use (AdamW); warm-up steps are the same in both schedules.
LR, WD, BETAS, EPS, WARMUP = 5e-4, 0.1, (0.9, 0.98), 1e-6, 2


# --- the data ------------------------------------------------------------------------------------


def write_jpegs(out: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEG files (256-500 px sides, varied aspect, mild noise so they compress like photos)
    and ``manifest.csv`` with absolute paths; returns the manifest (reused when already there)."""
    import numpy as np
    from PIL import Image

    from cliplab.data.synthetic import SyntheticCaptions

    manifest = out / "manifest.csv"
    if manifest.exists() and sum(1 for _ in manifest.open()) == n + 1:
        return manifest
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = (256, 320, 384, 448, 500)
    sources = {s: SyntheticCaptions(n, seed=seed, image_size=s) for s in sizes}
    rows = []
    for i in range(n):
        side = sizes[i % len(sizes)]
        sample = sources[side][i]
        w = side
        h = int(min(500, max(256, side * rng.uniform(0.75, 1.33))))
        img = sample.image.convert("RGB").resize((w, h), Image.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        path = out / "images" / f"{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        rows.append((str(path.resolve()), sample.caption))
    import csv

    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption"])
        w.writerows(rows)
    return manifest


def head_manifest(manifest: Path, rows: int, out: Path) -> Path:
    """The first ``rows`` samples of ``manifest``: one epoch of exactly the steps to run, for both."""
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) - 1 < rows:
        raise SystemExit(f"{manifest} has {len(lines) - 1} samples; {rows} are needed (raise --images)")
    out.write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return out


def data_stats(manifest: Path) -> dict:
    import csv

    from PIL import Image

    with open(manifest, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    paths = [r["filepath"] for r in rows]
    kib = [os.path.getsize(p) / 1024 for p in paths]
    sides = []
    for p in paths[:200]:
        with Image.open(p) as im:
            sides.extend(im.size)
    words = [len(r["caption"].split()) for r in rows]
    return {
        "images": len(rows),
        "jpeg_kib_median": round(statistics.median(kib), 1),
        "side_px_min_max": [min(sides), max(sides)],
        "caption_words_mean": round(statistics.mean(words), 1),
    }


# --- running the trainers ------------------------------------------------------------------------


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with output to ``log``; (exit code, wall s, ``ru_maxrss`` MiB, which includes the
    parent's memory at exec and is therefore not reported)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=f, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave a trainer running
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def cliplab_cmd(case: Case, manifest: Path, out: Path, workers: int, threads: int) -> list[str]:
    cfg = {
        "model": case.model,
        "data": {"source": "manifest", "path": str(manifest), "workers": workers},
        "batch_size": case.batch,
        "steps": case.steps,
        "lr": LR,
        "weight_decay": WD,
        "betas": list(BETAS),
        "eps": EPS,
        "warmup_steps": WARMUP,
        "precision": "fp32",
        "device": "cpu",
        "threads": threads,
        "eval_every": 0,
        "checkpoint_every": 0,
        "tensorboard": False,
        "log_every": 1,
    }
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    return [sys.executable, __file__, "_cliplab", "--config", str(cfg_path), "--out", str(out), "--overwrite"]


def open_clip_cmd(case: Case, manifest: Path, out: Path, workers: int) -> list[str]:
    name = case.open_clip_name
    argv = [
        "--train-data", str(manifest), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "caption",
        "--model", name, "--batch-size", str(case.batch), "--epochs", "1",
        "--lr", str(LR), "--wd", str(WD), "--beta1", str(BETAS[0]), "--beta2", str(BETAS[1]),
        "--eps", str(EPS), "--warmup", str(WARMUP), "--precision", "fp32", "--device", "cpu",
        "--workers", str(workers), "--logs", str(out), "--name", "run", "--log-every-n-steps", "1",
        "--report-to", "", "--zeroshot-frequency", "0", "--seed", "0",
    ]  # fmt: skip
    return [sys.executable, __file__, "_open_clip", case.model, name, *argv]


def report_peak_rss_at_exit() -> None:
    """Print this process's peak resident set (VmHWM) when it exits.

    ``ru_maxrss`` from ``wait4`` cannot be used: Linux starts a forked (or vfork'd) child's maximum
    from the parent's memory at exec, so every trainer would report at least this script's own peak.
    VmHWM belongs to the process's own address space after exec; data-loader workers are other processes.
    """
    import atexit

    def show() -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                print(f"PEAK_RSS_KIB {line.split()[1]}", flush=True)

    atexit.register(show)


def cliplab_entry(argv: list[str]) -> None:
    """``cliplab train ARGV`` (the command users type), reporting its peak memory at exit."""
    from cliplab.cli.main import main

    report_peak_rss_at_exit()
    sys.exit(main(["train", *argv]))


def open_clip_entry(model: str, name: str, argv: list[str]) -> None:
    """Register cliplab's ``model`` as open_clip config ``name``, then run open_clip's training main."""
    import open_clip
    from open_clip_train.main import main

    from cliplab.checkpoints.open_clip import to_model_cfg
    from cliplab.models import get_config

    cfg_file = Path(tempfile.mkdtemp(prefix="oc_cfg_")) / f"{name}.json"
    cfg_file.write_text(json.dumps(to_model_cfg(get_config(model))))
    open_clip.add_model_config(cfg_file)
    report_peak_rss_at_exit()
    main(argv)


def cliplab_rate(out: Path, case: Case) -> tuple[float, float]:
    """(steady samples/s, first-step loss) from cliplab's metrics.jsonl."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = {r["step"]: r for r in recs if r.get("kind") == "train"}
    t = {k: k * case.batch / r["samples_per_s"] for k, r in recs.items()}  # seconds since the loop began
    return case.timed * case.batch / (t[case.steps] - t[case.warmup]), recs[1]["loss"]


_OC_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+.*?Batch \(t\): ([\d.]+),.*?Loss: ([\d.]+)")


def open_clip_rate(out: Path, case: Case) -> tuple[float, float]:
    """(steady samples/s, first-step loss) from open_clip's out.log (one line per step)."""
    text = (out / "run" / "out.log").read_text()
    steps = {int(n) // case.batch: (float(bt), float(loss)) for n, bt, loss in _OC_LINE.findall(text)}
    if len(steps) != case.steps:
        raise SystemExit(
            f"open_clip logged {len(steps)} steps, expected {case.steps}: {out / 'run' / 'out.log'}"
        )
    timed = sum(steps[k][0] for k in range(case.warmup + 1, case.steps + 1))
    return case.timed * case.batch / timed, steps[1][1]


def run_one(impl: str, case: Case, manifest: Path, work: Path, workers: int, threads: int, k: int) -> dict:
    out = work / f"{case.name}-{impl}-{k}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONWARNINGS"] = "ignore"
    if impl == "cliplab":
        cmd = cliplab_cmd(case, manifest, out, workers, threads)
    else:
        cmd = open_clip_cmd(case, manifest, out, workers)
    log = work / f"{out.name}.log"
    rc, wall, _ = run_measured(cmd, env, log)
    peaks = re.findall(r"PEAK_RSS_KIB (\d+)", log.read_text())
    if rc != 0 or not peaks:
        raise SystemExit(f"{impl} ({case.name}) exited with {rc}; see {log}:\n{log.read_text()[-3000:]}")
    rss = int(peaks[-1]) / 1024
    rate, loss0 = (cliplab_rate if impl == "cliplab" else open_clip_rate)(out, case)
    return {"samples_per_s": rate, "peak_rss_mib": rss, "wall_s": wall, "first_loss": loss0}


# --- agreement -----------------------------------------------------------------------------------


def check_same_computation(case: Case, manifest: Path, threads: int) -> dict:
    """Both models with the same weights, the same batch: parameter counts and losses."""
    import csv

    import open_clip
    import torch
    from open_clip.loss import ClipLoss as OpenClipLoss

    from cliplab import create_model
    from cliplab.checkpoints.open_clip import to_model_cfg
    from cliplab.tokenizer import tokenize
    from cliplab.training.loss import ClipLoss
    from cliplab.training.step import ContrastiveForward

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = create_model(case.model).train()
    cfg_dir = Path(tempfile.mkdtemp(prefix="oc_cfg_"))
    (cfg_dir / f"{case.open_clip_name}.json").write_text(json.dumps(to_model_cfg(ours.config)))
    open_clip.add_model_config(cfg_dir / f"{case.open_clip_name}.json")
    theirs = open_clip.create_model(case.open_clip_name).train()
    theirs.load_state_dict(ours.state_dict())
    shutil.rmtree(cfg_dir)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())

    with open(manifest, encoding="utf-8") as f:
        captions = [r["caption"] for _, r in zip(range(min(case.batch, 16)), csv.DictReader(f), strict=False)]
    size = ours.config.vision.image_size
    images = torch.randn(len(captions), 3, size, size, generator=torch.Generator().manual_seed(0))
    ctx = ours.context_length
    ids_ours = tokenize(captions, context_length=ctx, truncate=True)
    ids_theirs = open_clip.get_tokenizer(case.open_clip_name)(captions)
    # ResNet BatchNorm in training mode: each model sees the batch once, so the statistics agree.
    loss_ours = ClipLoss()(*ContrastiveForward(ours)(images, ids_ours))
    image_f, text_f, scale = theirs(images, ids_theirs)[:3]  # open_clip's CLIP returns a tuple by default
    loss_theirs = OpenClipLoss()(image_f, text_f, scale)
    loss_ours.backward()
    loss_theirs.backward()
    g_ours = torch.cat([p.grad.flatten() for p in ours.parameters()])
    g_theirs = torch.cat([p.grad.flatten() for p in theirs.parameters()])
    return {
        "params": (n_ours, n_theirs),
        "token_ids_equal": bool(torch.equal(ids_ours.long(), ids_theirs.long())),
        "loss": (float(loss_ours.detach()), float(loss_theirs.detach())),
        "loss_abs_diff": abs(float(loss_ours.detach()) - float(loss_theirs.detach())),
        "grad_rel_diff": float((g_ours - g_theirs).norm() / g_theirs.norm()),
    }


def check_reduced_decode(manifest: Path, case: Case, threads: int, images: int = 64) -> dict:
    """cliplab's training crops decoded at reduced JPEG scale (its default, ``data.reduced_decode``)
    against the same crops of the fully decoded images: mean absolute difference in grey levels."""
    import csv

    import torch

    from cliplab.models import get_config
    from cliplab.transforms import OPENAI_STD, image_transform, load_image

    torch.set_num_threads(threads)
    tf = image_transform(get_config(case.model).vision.image_size, train=True)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    with open(manifest, encoding="utf-8") as f:
        paths = [r["filepath"] for _, r in zip(range(images), csv.DictReader(f), strict=False)]
    diffs = []
    for i, path in enumerate(paths):
        full = tf(load_image(path), generator=torch.Generator().manual_seed(i))
        fast = tf.decode(path, torch.Generator().manual_seed(i))
        diffs.append(float(((fast - full).abs() * std * 255).mean()))
    return {"images": len(diffs), "mean": statistics.mean(diffs), "worst_image": max(diffs)}


# --- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="vit,demo", help="comma-separated: vit, demo")
    p.add_argument(
        "--rounds", type=int, help="alternating rounds (cliplab, open_clip) per case (default: 2 vit, 3 demo)"
    )
    p.add_argument("--workers", type=int, default=1, help="data-loader worker processes, both trainers")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both trainers")
    p.add_argument("--images", type=int, help="JPEGs written (default: as many as the longest case reads)")
    p.add_argument("--work", type=Path, help="folder for the JPEGs and runs (default: a temporary one)")
    p.add_argument("--no-write", action="store_true", help="print the results; do not write the JSON")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cases = [CASES[c] for c in args.cases.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_train_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images = args.images or max(c.steps * c.batch for c in cases)
    manifest = write_jpegs(work / "data", images)
    print(f"data: {manifest} ({time.perf_counter() - t0:.0f} s)", flush=True)
    report = Report(
        "compare_train",
        "Training: cliplab's trainer against open_clip's training script",
        description=(
            "End to end from one on-disk CSV manifest of JPEGs, each trainer in its own process, alternating "
            f"(cliplab, open_clip) x {args.rounds or 'n'} per case (rounds in each row); fp32, AdamW (lr {LR}, wd {WD}, betas {BETAS}, "
            f"eps {EPS}, {WARMUP} warm-up steps), {args.workers} data-loader worker(s), {args.threads} torch "
            "threads, the same model config. samples/s: steady state from each trainer's per-step log, "
            "first steps excluded; peak memory: VmHWM of the main training process at exit (data-loader "
            "workers are separate processes, not counted). Each trainer runs with its defaults otherwise: "
            "cliplab's include data.reduced_decode (a JPEG is decoded at 1/2-1/8 scale when its random crop "
            "stays >= 2x the output side; same crop region, see the agreement rows), open_clip decodes in full."
        ),
    )
    report.notes.append(f"data: {data_stats(manifest)}")
    for case in cases:
        sub = head_manifest(manifest, case.steps * case.batch, work / "data" / f"{case.name}.csv")
        check = check_same_computation(case, sub, args.threads)
        print(f"{case.name}: same computation: {check}", flush=True)
        report.agree(
            f"{case.name}: parameter count", "cliplab == open_clip", check["params"][0] == check["params"][1]
        )
        report.agree(f"{case.name}: token ids of the batch's captions", "identical", check["token_ids_equal"])
        report.agree(
            f"{case.name}: loss on the same batch and weights", "abs diff", check["loss_abs_diff"], 1e-4
        )
        report.agree(f"{case.name}: gradients", "relative L2 diff", check["grad_rel_diff"], 1e-3)
        dec = check_reduced_decode(sub, case, args.threads)
        print(f"{case.name}: reduced-scale decode vs full decode: {dec}", flush=True)
        report.agree(
            f"{case.name}: cliplab's training crops, reduced-scale JPEG decode vs full decode "
            f"({dec['images']} images, worst image {dec['worst_image']:.2f})",
            "mean abs diff, grey levels of 255",
            round(dec["mean"], 4),
            1.0,
        )
        results: dict[str, list[dict]] = {"cliplab": [], "open_clip": []}
        for k in range(args.rounds or case.rounds):
            for impl in results:
                r = run_one(impl, case, sub, work, args.workers, args.threads, k)
                print(f"  {case.name} round {k} {impl}: {r}", flush=True)
                results[impl].append(r)
        med = {
            impl: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            for impl, rs in results.items()
        }
        base = med["open_clip"]
        for impl, m in med.items():
            report.row(
                case=f"{case.model}, batch {case.batch}",
                impl=impl,
                samples_per_s=round(m["samples_per_s"], 2),
                peak_rss_mib=round(m["peak_rss_mib"], 1),
                speed_vs_open_clip=round(m["samples_per_s"] / base["samples_per_s"], 3),
                memory_vs_open_clip=round(m["peak_rss_mib"] / base["peak_rss_mib"], 3),
                wall_s=round(m["wall_s"], 1),
                first_step_loss=round(m["first_loss"], 4),
                runs=[round(r["samples_per_s"], 2) for r in results[impl]],
                peak_rss_runs=[round(r["peak_rss_mib"], 1) for r in results[impl]],
                params=check["params"][0],
            )
        speed = med["cliplab"]["samples_per_s"] / base["samples_per_s"]
        memory = med["cliplab"]["peak_rss_mib"] / base["peak_rss_mib"]
        report.target(f"{case.model} batch {case.batch}: samples/s vs open_clip", 1.3, speed)
        report.target(
            f"{case.model} batch {case.batch}: peak memory vs open_clip", 1.0, memory, higher_is_better=False
        )
    report.print()
    if not args.no_write:
        print(f"wrote {report.write()}")
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_open_clip":
        open_clip_entry(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_cliplab":
        cliplab_entry(sys.argv[2:])
    else:
        main()
