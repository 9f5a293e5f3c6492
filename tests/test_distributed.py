"""Data parallelism through torchrun on CPUs (gloo): exactly one big batch, and safe when it fails.

Every run here is real: ``torchrun --standalone --nproc_per_node 2 -m cliplab train`` (or, where
torchrun's own supervision would hide what is tested, two processes started with the environment
torchrun sets), on the 32-pixel ``micro`` model with one thread per process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cliplab.training.checkpointing import CheckpointManager, load_training_checkpoint
from cliplab.training.reporting import read_metrics

pytestmark = pytest.mark.slow

# 64 samples; a global batch of 16 gives 4 steps per epoch, so 6 steps cross an epoch boundary.
# eps=1e-3: some gradients are exactly zero in exact arithmetic (attention's key bias cannot change a
# softmax), so both runs hold only rounding noise there (~1e-9), and Adam with eps=1e-6 would turn
# that noise into lr-sized steps of either sign. A larger eps leaves real gradients (1e-3..1e-1)
# nearly as they are and keeps the comparison about the gradients, which agree to ~5e-7.
COMMON = ["--model=micro", "--data.workers=0", "--data.synthetic_size=64", "--steps=6", "--eval_every=0",
          "--tensorboard=false", "--warmup_steps=2", "--lr=2e-3", "--eps=1e-3", "--threads=1", "--log_every=1",
          "--checkpoint_every=1", "--keep_last=10", "--no-progress"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240


def single(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cliplab", "train", "--out", str(out), *COMMON, *args]


def torchrun(out: Path, *args: str, nproc: int = 2) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "cliplab", "train", "--out", str(out), *COMMON, *args]


def run(cmd: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    run(single(out, "--batch_size=16"))
    return out


@pytest.mark.parametrize("accum", [1, 2])
def test_two_ranks_equal_one_process_with_twice_the_batch(one_process, tmp_path, accum):
    out = tmp_path / "ddp"
    run(torchrun(out, "--batch_size=8", f"--accum_steps={accum}"))
    ref, got = losses(one_process), losses(out)
    assert len(got) == len(ref) == 6
    # Relative, as float32 rounding is: the two runs' weights drift ~1e-6 apart, the logit scale (14)
    # multiplies that in the logits, and a loss of 3 moves by ~1e-5. Seen: 4.2e-6 relative at worst.
    assert got == pytest.approx(ref, rel=1e-5), (ref, got)
    assert max_weight_difference(one_process, out) <= 1e-5
    # the runs really trained: the weights moved from their initial values
    initial = load_training_checkpoint(out / "checkpoints" / "step_0000001.pt")
    assert not torch.equal(initial["state_dict"]["text_projection"], weights(out)["text_projection"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_seen"] == 6 * 16 and summary["steps"] == 6


def test_only_rank_0_writes_and_checkpoints_hold_every_ranks_rng(tmp_path):
    """Also: periodic evaluation on rank 0, with the other rank waiting, ends without deadlock."""
    out = tmp_path / "ddp"
    run(torchrun(out, "--batch_size=8", "--steps=2", "--eval_every=1", "--eval_per_class=1"))
    ckpt = load_training_checkpoint(out / "checkpoints" / "step_0000002.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    # rank r seeded its RNG with seed + r, so the two states differ
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "final", "metrics.jsonl", "report.png", "summary.json",
    ]  # fmt: skip
    records = read_metrics(out / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert set(json.loads((out / "summary.json").read_text())["zeroshot"]) >= {"colour", "shape"}


def test_sigkilled_two_process_run_resumes_bitwise(tmp_path):
    reference = tmp_path / "reference"
    run(torchrun(reference, "--batch_size=8"))
    out = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(out, "--batch_size=8"), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        manager = CheckpointManager(out / "checkpoints")
        while not any(p.name == "step_0000003.pt" for p in manager.list()):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "final").exists()
    run(torchrun(out, "--batch_size=8", "--resume", "latest"))
    wa, wb = weights(reference), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), (
        "resumed 2-process run differs from the uninterrupted one"
    )
    assert losses(out) == losses(reference)


def test_resume_with_another_world_size_is_refused(tmp_path):
    out = tmp_path / "ddp"
    run(torchrun(out, "--batch_size=8", "--steps=2"))
    cmd = single(out, "--batch_size=8", "--steps=4", "--resume", "latest")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == 2 and "world_size 2 -> 1" in result.stderr, result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_makes_the_other_exit_with_an_error(tmp_path):
    """Started the way torchrun starts workers, but without torchrun, which would tear the survivor
    down itself: the survivor must notice on its own, within the timeout, and leave its checkpoints."""
    out = tmp_path / "ddp"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        cmd = single(out, "--batch_size=8", "--steps=100000", "--dist_timeout=20")
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        manager = CheckpointManager(out / "checkpoints")
        deadline = time.monotonic() + TIMEOUT
        while len(manager.list()) < 2:
            assert all(p.poll() is None for p in procs), "a rank ended early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        procs[1].kill()
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2, err[-3000:]
    assert "lost contact with the other processes" in err and "Traceback" not in err, err[-3000:]
    assert waited < 20 + 15
    for ckpt in manager.list():  # every checkpoint left behind reads back whole
        assert load_training_checkpoint(ckpt)["run"]["step"] >= 1


def test_corrupt_samples_on_one_rank_only_keep_every_rank_stepping(tmp_path):
    """Rank 0's share of the first epoch holds broken files, rank 1's none. Substitutes keep both
    batches full, so no step is skipped, the skips of every rank are counted, and the run still
    equals one process with the doubled batch on the same (broken) data."""
    from cliplab.data.loader import epoch_batches
    from cliplab.data.synthetic import SyntheticCaptions
    from cliplab.data.writers import write_files

    manifest = write_files(SyntheticCaptions(64, image_size=32), tmp_path / "data", progress=False)
    rank0 = [i for batch in epoch_batches(64, 8, seed=0, epoch=0, rank=0, world_size=2) for i in batch]
    broken = rank0[:3]
    for i in broken:
        (tmp_path / "data" / "images" / f"{i:06d}.png").write_bytes(b"not a png")
    data = ["--data.source=manifest", f"--data.path={manifest}", "--steps=4"]
    single_run, ddp = tmp_path / "single", tmp_path / "ddp"
    run(single(single_run, "--batch_size=16", *data))
    run(torchrun(ddp, "--batch_size=8", *data))
    for out in (single_run, ddp):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["empty_batches"] == 0
        assert summary["skipped_samples"] >= len(broken), summary
    assert (
        json.loads((ddp / "summary.json").read_text())["skipped_by_reason"]
        == json.loads((single_run / "summary.json").read_text())["skipped_by_reason"]
    )
    assert max_weight_difference(single_run, ddp) <= 1e-5
