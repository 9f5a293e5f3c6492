"""Resuming never hangs, never silently changes the data, and survives a damaged newest checkpoint.

Findings this file guards: a resume with another batch size left the saved position at the end
of the epoch and the loop spun forever; an epoch with no batch (every shard unreadable) did the
same; a truncated newest checkpoint stopped the resume instead of falling back; orphaned
temporaries stayed; ``samples_per_s`` after a resume counted the earlier session's samples.
Every run is in a subprocess with a timeout, so a regression to a hang fails instead of stalling.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cliplab.training.checkpointing import CheckpointManager

# 24 samples / batch 8 = 3 batches per epoch; 6 steps cross an epoch boundary twice.
BASE = ["--model=micro", "--data.workers=0", "--data.synthetic_size=24", "--batch_size=8", "--steps=6",
        "--checkpoint_every=1", "--keep_last=10", "--eval_every=0", "--tensorboard=false", "--warmup_steps=1",
        "--lr=2e-3", "--threads=1", "--log_every=1"]  # fmt: skip


def train(out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cliplab", "train", "--out", str(out), "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(out, *BASE)
    assert result.returncode == 0, result.stderr
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def copy_up_to(reference: Path, dest: Path, step: int) -> Path:
    """The reference run as it stood at ``step``: later checkpoints and the final model removed."""
    shutil.copytree(reference, dest)
    shutil.rmtree(dest / "final")
    (dest / "summary.json").unlink()
    for ckpt in CheckpointManager(dest / "checkpoints").list():
        if int(ckpt.stem.split("_")[1]) > step:
            ckpt.unlink()
    return dest


def test_changed_batch_size_is_refused_naming_the_setting(reference, tmp_path):
    run = copy_up_to(reference, tmp_path / "run", 2)
    result = train(run, *BASE, "--batch_size=12", "--resume", "latest", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "batch_size 8 -> 12" in result.stderr and "Traceback" not in result.stderr
    result = train(run, *BASE, "--seed=3", "--data.synthetic_size=48", "--resume", "latest", timeout=60)
    assert (
        result.returncode == 2
        and "seed 0 -> 3" in result.stderr
        and "data.synthetic_size 24 -> 48" in result.stderr
    )


def test_position_at_the_end_of_an_epoch_moves_to_the_next(reference, tmp_path):
    """A checkpoint whose position is the epoch's end (as older versions wrote) resumes, not spins."""
    run = copy_up_to(reference, tmp_path / "run", 3)
    path = run / "checkpoints" / "step_0000003.pt"
    ckpt = torch.load(path, weights_only=True)
    assert (ckpt["run"]["epoch"], ckpt["run"]["next_batch"]) == (1, 0)
    ckpt["run"]["epoch"], ckpt["run"]["next_batch"] = 0, 3  # the same position, written the other way
    torch.save(ckpt, path)
    result = train(run, *BASE, "--resume", "latest", timeout=60)
    assert result.returncode == 0, result.stderr
    assert_same_weights(run, reference)


def test_truncated_newest_checkpoint_falls_back_with_a_warning(reference, tmp_path):
    run = copy_up_to(reference, tmp_path / "run", 4)
    newest = run / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    orphan = run / "checkpoints" / ".step_0000005.pt.x1y2.tmp"
    orphan.write_bytes(b"half a checkpoint")
    result = train(run, *BASE, "--resume", "latest")
    assert result.returncode == 0, result.stderr
    assert "step_0000003.pt" in result.stderr and "step_0000004.pt" in result.stderr
    assert not orphan.exists(), "the orphaned temporary of a killed write is removed on resume"
    assert_same_weights(run, reference)  # resumed from step 3, so the run still ends where it should
    summary = json.loads((run / "summary.json").read_text())
    # This session trained steps 4..6 (3 x 8 samples); the rate counts only those.
    assert summary["samples_seen"] == 48 and summary["samples_this_session"] == 24
    # and the reported rate is this session's samples over this session's time (both rounded)
    rate, seconds = summary["samples_per_s"], summary["seconds"]
    assert abs(rate * seconds - 24) <= 0.06 * rate + 1, (rate, seconds)


def test_every_checkpoint_damaged_is_an_error(reference, tmp_path):
    run = copy_up_to(reference, tmp_path / "run", 1)
    (run / "checkpoints" / "step_0000001.pt").write_bytes(b"PK\x03\x04 garbage")
    result = train(run, *BASE, "--resume", "latest", timeout=60)
    assert result.returncode == 2 and "no readable checkpoint" in result.stderr, result.stderr


def test_epoch_without_batches_is_an_error_not_a_hang(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        (shards / f"shard-{i:06d}.tar").write_bytes(b"not a tar archive at all" * 100)
    (shards / "sizes.json").write_text(json.dumps({"shard-000000.tar": 8, "shard-000001.tar": 8}))
    args = [a for a in BASE if not a.startswith("--data.synthetic_size")]
    result = train(tmp_path / "run", *args, "--data.source=webdataset", f"--data.path={shards}", timeout=90)
    assert result.returncode == 2, result.stderr
    assert "yielded no batch" in result.stderr and "Traceback" not in result.stderr
