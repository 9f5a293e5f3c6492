"""The one atomic-write helper: a process killed at any point of a write leaves the old file whole.

Each writer in the project goes through ``cliplab.fileio``; here a child process is SIGKILLed at
the two moments that matter (data written but not yet synced, synced but not yet renamed) and the
previous version must read back unchanged, with the orphaned temporary cleaned up afterwards.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cliplab.errors import OutputExistsError, UsageError
from cliplab.fileio import (
    atomic_torch_save,
    atomic_write_dir,
    atomic_write_text,
    check_output_dir,
    clear_output_dir,
    read_text,
    remove_orphans,
)

# name -> (code writing version `v` to `target`, code reading it back as a comparable value)
WRITERS = {
    "text": ("atomic_write_text(target, 'v%d' % v * 1000)", "target.read_text()[:2]"),
    "torch": ("atomic_torch_save({'w': torch.full((1000,), float(v))}, target)",
              "int(torch.load(target, weights_only=True)['w'][0])"),
    "dir": ("atomic_write_dir(target, lambda d: ((d / 'a.bin').write_bytes(bytes([v]) * 5000), "
            "(d / 'config.json').write_text(str(v))))", "(target / 'a.bin').read_bytes()[0]"),
    "checkpoint": ("CheckpointManager(target, keep_last=5).save({'v': v}, step=1)",
                   "torch.load(target / 'step_0000001.pt', weights_only=True)['v']"),
    "features": ("save_features(target, ImageFeatures(torch.full((3, 4), float(v)), torch.zeros(3, dtype=torch.long), []), 'k')",
                 "int(load_features(target).features[0, 0])"),
    "model": ("save_checkpoint(torch.nn.Module() if False else model(v), target)",
              "int(cliplab.load(target)[0].logit_scale.item())"),
}  # fmt: skip

PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from pathlib import Path
    import cliplab
    from cliplab.fileio import atomic_torch_save, atomic_write_dir, atomic_write_text
    from cliplab.training.checkpointing import CheckpointManager
    from cliplab.evaluation.features import ImageFeatures, load_features, save_features
    from cliplab.checkpoints import save_checkpoint

    def model(v):
        torch.manual_seed(0)
        m = cliplab.create_model("micro")
        with torch.no_grad():
            m.logit_scale.fill_(float(v))
        return m

    target, v, kill_at = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if kill_at:
        setattr(os, kill_at, die)  # fsync: data written, not synced; replace: synced, not renamed
    """
)


def run_writer(name: str, target: Path, v: int, kill_at: str = "") -> subprocess.CompletedProcess:
    code = PRELUDE + WRITERS[name][0]
    return subprocess.run(
        [sys.executable, "-c", code, str(target), str(v), kill_at], capture_output=True, timeout=120
    )


def read_back(name: str, target: Path):
    import cliplab  # noqa: F401 - used by the read expressions
    from cliplab.evaluation.features import load_features  # noqa: F401

    return eval(WRITERS[name][1], {"torch": torch, "target": target, **locals(), **globals()})


@pytest.mark.parametrize("kill_at", ["fsync", "replace"])
@pytest.mark.parametrize("name", list(WRITERS))
def test_killed_write_leaves_the_previous_version_whole(tmp_path, name, kill_at):
    target = tmp_path / ("out" if name in ("dir", "checkpoint", "model") else "out.bin")
    first = run_writer(name, target, 1)
    assert first.returncode == 0, first.stderr.decode()
    killed = run_writer(name, target, 2, kill_at)
    assert killed.returncode == -9, killed.stderr.decode()
    expected = "v1" if name == "text" else 1
    assert read_back(name, target) == expected
    parent = target if name == "checkpoint" else target.parent
    orphans = [p for p in parent.iterdir() if p.name.endswith(".tmp")]
    assert orphans, "the killed write should have left its temporary behind"
    assert remove_orphans(parent) and not [p for p in parent.iterdir() if p.name.endswith(".tmp")]
    assert read_back(name, target) == expected


def test_new_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"a": 1}, tmp_path / "b.pt")
        atomic_write_dir(tmp_path / "d", lambda d: (d / "f").write_text("y"))
    finally:
        os.umask(old)
    for path in (tmp_path / "a.txt", tmp_path / "b.pt", tmp_path / "d" / "f"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_failed_write_removes_its_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    from cliplab.fileio import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_text_encodings(tmp_path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfa,b\n")
    assert read_text(tmp_path / "bom.csv") == "a,b\n"
    (tmp_path / "u16.csv").write_bytes("a,b\né\n".encode("utf-16"))
    assert read_text(tmp_path / "u16.csv") == "a,b\né\n"
    (tmp_path / "latin1.csv").write_bytes("a,b\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin1\.csv:3: .*UTF-8.*0xe9"):
        read_text(tmp_path / "latin1.csv", "manifest")
    with pytest.raises(UsageError, match="does not exist"):
        read_text(tmp_path / "nope.csv")
    with pytest.raises(UsageError, match="is a directory"):
        read_text(tmp_path)


def test_output_dir_checks_touch_nothing(tmp_path):
    out = tmp_path / "o"
    check_output_dir(out, overwrite=False)  # missing: fine
    out.mkdir()
    check_output_dir(out, overwrite=False)  # empty: fine
    (out / "mine").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_dir(out, overwrite=False)
    assert (out / "mine").exists()
    check_output_dir(out, overwrite=True)
    assert (out / "mine").exists(), "checking must never delete"
    clear_output_dir(out)
    assert out.is_dir() and not any(out.iterdir())
