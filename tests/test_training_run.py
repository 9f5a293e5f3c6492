"""Training runs end to end: the CLI and its run directory, exact resume after SIGKILL and Ctrl-C,
bad data, NaN losses, configuration errors and fine-tuning.

Every run uses the 32-pixel ``micro`` model, a few steps and ``data.workers=0`` unless workers are
the point, so the whole file stays fast on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import cliplab
from cliplab.cli.main import main
from cliplab.data.synthetic import SyntheticCaptions, zero_shot_tasks
from cliplab.data.writers import write_files
from cliplab.training import TrainConfig, TrainingDiverged, load_config, train
from cliplab.training.checkpointing import CKPT_RE, CheckpointManager, load_training_checkpoint
from cliplab.training.loop import Trainer
from cliplab.training.loss import ClipLoss
from cliplab.training.reporting import read_metrics

FAST = ["--model=micro", "--data.workers=0", "--warmup_steps=1", "--log_every=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------
# Resume: a killed run, resumed, ends bitwise equal to an uninterrupted one (subprocesses)

# 24 samples / batch 8 = 3 batches per epoch, so 12 steps cross 3 epoch boundaries. One thread per
# process: the runs below overlap on a small machine, and every run must use the same thread count.
RESUME = FAST + ["--batch_size=8", "--steps=12", "--data.synthetic_size=24", "--checkpoint_every=2",
                 "--eval_every=0", "--tensorboard=false", "--lr=2e-3", "--threads=1"]  # fmt: skip


def cliplab_train(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cliplab", "train", "--out", str(out), "--no-progress", *args]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def latest_step(run: Path) -> int:
    found = CheckpointManager(run / "checkpoints").latest()
    return int(CKPT_RE.match(found.name).group(1)) if found else -1


class InterruptedRun:
    """A ``cliplab train`` subprocess that gets ``sig`` once a checkpoint at ``min_step`` exists."""

    def __init__(self, root: Path, sig: signal.Signals, min_step: int, *args: str) -> None:
        self.run, self.log, self.sig, self.min_step = root / "run", root / "log.txt", sig, min_step
        root.mkdir(parents=True)
        self.proc = start(cliplab_train(self.run, *RESUME, *args), self.log)
        self.signalled_at: int | None = None

    def poll(self) -> bool:
        """Signal the process when its checkpoint appears; True once it has exited."""
        if self.signalled_at is None:
            step = latest_step(self.run)
            if step >= self.min_step:
                os.kill(self.proc.pid, self.sig)
                self.signalled_at = step
            elif self.proc.poll() is not None:
                pytest.fail(f"run ended before a checkpoint at step {self.min_step}:\n{self.log.read_text()}")
        return self.signalled_at is not None and self.proc.poll() is not None

    def resume(self) -> subprocess.Popen:
        return start(cliplab_train(self.run, "--resume", "latest"), self.log.with_name("resume.txt"))


def wait_all(poll, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not poll():
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"training subprocesses still running after {timeout}s")
        time.sleep(0.01)


def check_resumed_equals_reference(run: Path, reference: Path, log: str) -> None:
    assert "resumed from" in log and "steps 12/12" in log, log
    assert_bitwise_equal(final_weights(run), final_weights(reference))
    records = train_records(run)
    steps = [r["step"] for r in records]
    assert steps == list(range(1, 13)), f"metrics.jsonl steps after resume: {steps}"
    for got, want in zip(records, train_records(reference), strict=True):
        assert (got["loss"], got["lr"], got["logit_scale"]) == (want["loss"], want["lr"], want["logit_scale"])


@pytest.mark.slow  # three training subprocesses: ~13 s idle, 45 s on a busy 2-core machine
def test_resume_after_sigkill_or_ctrl_c_is_bitwise_equal(tmp_path):
    """Three runs at once through `python -m cliplab train`: uninterrupted; SIGKILLed (workers=0);
    Ctrl-C (workers=2, and batches do not depend on the number of workers). Both interrupted runs
    are resumed with ``--resume latest`` and must end with exactly the reference's weights."""
    procs: list[subprocess.Popen] = []
    try:
        _resume_scenario(tmp_path, procs)
    finally:
        for proc in procs:  # a failed check must not leave training processes behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _resume_scenario(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    reference_log = tmp_path / "reference.txt"
    reference = start(cliplab_train(tmp_path / "reference", *RESUME), reference_log)
    procs.append(reference)
    killed = InterruptedRun(tmp_path / "killed", signal.SIGKILL, 4)
    procs.append(killed.proc)
    ctrl_c = InterruptedRun(tmp_path / "ctrl_c", signal.SIGINT, 2, "--data.workers=2")
    procs.append(ctrl_c.proc)
    interrupted = [killed, ctrl_c]
    wait_all(lambda: all([r.poll() for r in interrupted]), procs)

    assert killed.proc.returncode == -signal.SIGKILL
    assert killed.signalled_at < 12 and not (killed.run / "final").exists(), "killed before it finished"

    out = ctrl_c.log.read_text()
    assert ctrl_c.proc.returncode == 130, out
    summary = json.loads((ctrl_c.run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] < 12, out
    latest = CheckpointManager(ctrl_c.run / "checkpoints").latest()
    assert latest_step(ctrl_c.run) == summary["steps"], "Ctrl-C checkpoints the step where it stopped"
    assert load_training_checkpoint(latest)["run"]["step"] == summary["steps"]

    resumed = [r.resume() for r in interrupted]
    procs.extend(resumed)
    wait_all(lambda: all(p.poll() is not None for p in [reference, *resumed]), procs)
    assert reference.returncode == 0, reference_log.read_text()
    assert "steps 12/12" in reference_log.read_text()  # the summary `python -m cliplab train` prints
    for run, proc in zip(interrupted, resumed, strict=True):
        log = run.log.with_name("resume.txt").read_text()
        assert proc.returncode == 0, log
        check_resumed_equals_reference(run.run, tmp_path / "reference", log)


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    from cliplab.training.reporting import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n{"kind": "train", "step": 3}\n{"kind": "tr'
    )
    MetricsLog(tmp_path, tensorboard=False, resume_step=2).close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


# ---------------------------------------------------------------------------------------------
# End to end through `cliplab train` (in process), and what the run directory holds

E2E = FAST + ["--batch_size=8", "--steps=4", "--data.synthetic_size=32", "--eval_every=2", "--eval_per_class=2",
              "--checkpoint_every=2", "--lr=1e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    rc = main(["train", "--out", str(out), "--no-progress", *E2E])
    assert rc == 0
    return out


def test_run_directory_contents(e2e_run):
    out = e2e_run
    # config.yaml is the resolved config and loads back to the same object
    assert load_config(out / "config.yaml") == load_config(None, E2E)
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == [
        "step_0000002.pt",
        "step_0000004.pt",
    ]
    assert (out / "checkpoints" / "best.pt").is_file()

    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is valid JSON
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert train_steps == [1, 2, 3, 4]
    assert all(
        {"loss", "lr", "logit_scale", "samples_per_s"} <= r.keys() for r in records if r["kind"] == "train"
    )
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= v <= 1 for r in evals for k, v in r.items() if k.startswith("zeroshot/"))

    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 4 and summary["interrupted"] is False
    assert (
        summary["samples_seen"] == 32 and summary["skipped_samples"] == 0 and summary["nonfinite_steps"] == 0
    )
    tasks = summary["zeroshot"]
    chance = {t.name: 1 / len(t.classnames) for t in zero_shot_tasks(image_size=32, per_class=1)}
    assert set(tasks) == set(chance) and len(tasks) >= 4  # every synthetic task, with its chance level
    for name, r in tasks.items():
        assert 0 <= r["top1"] <= 1 and r["chance"] == pytest.approx(chance[name]), name
        assert r["top1"] == evals[-1][f"zeroshot/{name}"]
    assert summary["zeroshot_mean"] == pytest.approx(sum(r["top1"] for r in tasks.values()) / len(tasks))

    png = out / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    with Image.open(png) as im:
        assert im.width > 400 and im.height > 300

    model, preprocess = cliplab.load(out / "final")
    assert model.config.vision.image_size == 32
    assert_bitwise_equal(
        model.state_dict(), load_training_checkpoint(out / "checkpoints" / "step_0000004.pt")["state_dict"]
    )
    image = preprocess(Image.new("RGB", (40, 30), "red")).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(image, cliplab.tokenize(["a red square", "a blue circle"], context_length=32))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_existing_run_is_not_overwritten_without_flag(e2e_run, capsys):
    rc = main(["train", "--out", str(e2e_run), "--no-progress", *E2E])
    assert rc == 2
    assert "--resume latest" in capsys.readouterr().err
    assert (e2e_run / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def test_pretrained_starts_from_the_given_weights(e2e_run, tmp_path):
    cfg = load_config(
        None, E2E + [f"--pretrained={e2e_run / 'final'}", "--eval_every=0", "--tensorboard=false"]
    )
    trainer = Trainer(cfg, tmp_path / "ft", progress=False)
    reference, _ = cliplab.load(e2e_run / "final")
    assert_bitwise_equal(trainer.model.state_dict(), reference.state_dict())
    torch.manual_seed(cfg.seed)  # what a run without --pretrained would start from
    fresh = cliplab.create_model("micro").state_dict()
    assert not torch.equal(fresh["text_projection"], trainer.model.state_dict()["text_projection"])


def test_lock_image_leaves_the_image_tower_unchanged(e2e_run, tmp_path):
    cfg = load_config(None, E2E + [f"--pretrained={e2e_run / 'final'}", "--lock_image=true", "--steps=3",
                                   "--eval_every=0", "--tensorboard=false", "--lr=5e-3"])  # fmt: skip
    summary = train(cfg, tmp_path / "lit", progress=False)
    assert summary["steps"] == 3 and summary["nonfinite_steps"] == 0
    before, after = final_weights(e2e_run), final_weights(tmp_path / "lit")
    visual = [k for k in before if k.startswith("visual.")]
    assert len(visual) > 10
    changed_visual = [k for k in visual if not torch.equal(before[k], after[k])]
    assert not changed_visual, f"locked image tower changed: {changed_visual[:5]}"
    changed_text = [k for k in before if not k.startswith("visual.") and not torch.equal(before[k], after[k])]
    assert "text_projection" in changed_text and len(changed_text) > 10


# ---------------------------------------------------------------------------------------------
# Bad data


@pytest.fixture
def broken_manifest(tmp_path) -> tuple[Path, dict[str, int]]:
    """60 samples on disk, 6 of them broken (10%): truncated, not an image, deleted."""
    data = SyntheticCaptions(60, seed=1, image_size=32)
    manifest = write_files([data[i] for i in range(60)], tmp_path / "data", fmt="csv")
    images = tmp_path / "data" / "images"
    for i in (3, 17):
        raw = (images / f"{i:06d}.png").read_bytes()
        (images / f"{i:06d}.png").write_bytes(raw[: len(raw) // 2])
    for i in (25, 41):
        (images / f"{i:06d}.png").write_text("this is not a PNG file\n")
    for i in (8, 59):
        (images / f"{i:06d}.png").unlink()
    return manifest, {"unreadable image": 4, "missing file": 2}


def test_broken_images_are_skipped_and_counted(broken_manifest, tmp_path):
    manifest, expected = broken_manifest
    out, config = tmp_path / "run", tmp_path / "broken.yaml"
    # batch 10 divides 60, so 6 steps are exactly one epoch: every sample is read once, and each
    # broken one is replaced by a substitute, so every batch is full.
    config.write_text(
        f"model: micro\nbatch_size: 10\nsteps: 6\ndata:\n  source: manifest\n  path: {manifest}\n"
    )
    rc = main(["train", "--config", str(config), "--out", str(out), "--no-progress", *FAST, "--eval_every=0",
               "--tensorboard=false", "--checkpoint_every=0"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["skipped_samples"] == sum(expected.values()) == 6
    assert summary["skipped_by_reason"] == expected
    assert summary["samples_seen"] == 60 and summary["empty_batches"] == 0
    assert len(summary["skipped_examples"]) == 6
    assert {Path(src).name for src, _ in summary["skipped_examples"]} == {
        f"{i:06d}.png" for i in (3, 17, 25, 41, 8, 59)
    }


def test_malformed_manifest_line_fails_before_training(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("filepath,caption\na.png,one\nb.png,two\nc.png,three\nd.png,four,extra\ne.png,five\n")
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--no-progress", *FAST, "--data.source=manifest",
               f"--data.path={manifest}", "--batch_size=2", "--steps=2", "--eval_every=0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0
    assert "m.csv:5" in err, err
    assert not list(out.glob("checkpoints/*.pt")) and not (out / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# Non-finite losses


class NanOnCalls:
    """The real loss, multiplied by NaN on the given (1-based) calls: a step that blows up."""

    def __init__(self, bad_calls) -> None:
        self.inner, self.bad_calls, self.calls = ClipLoss(), bad_calls, 0

    def __call__(self, *args):
        self.calls += 1
        loss = self.inner(*args)
        return loss * float("nan") if self.calls in self.bad_calls else loss


NAN = FAST + ["--batch_size=8", "--data.synthetic_size=32", "--eval_every=0", "--tensorboard=false"]


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    trainer = Trainer(
        load_config(None, NAN + ["--steps=6", "--checkpoint_every=0"]), tmp_path / "run", progress=False
    )
    monkeypatch.setattr(trainer, "loss_fn", NanOnCalls({2, 4}))
    summary = trainer.run()
    assert summary["steps"] == 6 and summary["nonfinite_steps"] == 2
    assert summary["samples_seen"] == 4 * 8  # only the finite steps trained
    assert [r["step"] for r in train_records(tmp_path / "run")] == [1, 3, 5, 6]
    assert all(torch.isfinite(t).all() for t in trainer.model.state_dict().values())


def test_consecutive_nonfinite_steps_stop_with_diverged(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(None, NAN + ["--steps=10", "--checkpoint_every=2", "--max_nonfinite=3"])
    trainer = Trainer(cfg, run, progress=False)
    monkeypatch.setattr(trainer, "loss_fn", NanOnCalls(set(range(3, 100))))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive non-finite") as info:
        trainer.run()
    assert str(run / "checkpoints") in str(info.value)  # says where the good checkpoint is
    assert trainer.state.nonfinite_total == 3
    good = CheckpointManager(run / "checkpoints").list()
    assert good and int(CKPT_RE.match(good[0].name).group(1)) == 2
    ckpt = load_training_checkpoint(good[0])
    assert ckpt["run"]["step"] == 2 and ckpt["run"]["nonfinite_total"] == 0
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    # no update happened after the good steps, and the checkpoint loads as a model too
    assert_bitwise_equal(ckpt["state_dict"], trainer.model.state_dict())
    model, preprocess = cliplab.load(good[0])
    assert_bitwise_equal(model.state_dict(), ckpt["state_dict"])
    # the training checkpoint describes itself: architecture and preprocessing come from the file
    assert model.config.to_dict() == ckpt["model_config"]
    assert preprocess.cfg.to_dict() == ckpt["preprocess"]


# ---------------------------------------------------------------------------------------------
# Configuration


def test_epochs_instead_of_steps(tmp_path):
    cfg = load_config(None, NAN + ["--steps=null", "--epochs=2", "--data.synthetic_size=24"])
    assert Trainer(cfg, tmp_path / "run", progress=False).total_steps == 2 * 3  # 24 samples / batch 8
    with pytest.raises(ValueError, match="steps or epochs"):
        load_config(None, ["--steps=null"])


def test_config_file_plus_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: micro\nlr: 1e-3\nbetas: [0.9, 0.95]\ndata:\n  workers: 0\n  synthetic_size: 64\n")
    cfg = load_config(path, ["--lr=2e-3", "--data.synthetic_size=50", "--lock_image=true", "--grad_clip=1"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.model == "micro" and cfg.lr == 2e-3 and cfg.betas == (0.9, 0.95)
    assert cfg.data.workers == 0 and cfg.data.synthetic_size == 50 and cfg.lock_image is True
    assert cfg.grad_clip == 1.0 and isinstance(cfg.grad_clip, float)
    assert load_config(path).lr == 1e-3  # YAML 1.1 reads "1e-3" as a string; it is converted
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    "override,key",
    [("--bogus_key=1", "bogus_key"), ("--data.bogus=1", "data.bogus"), ("--batch_size=abc", "batch_size"),
     ("--lr=fast", "lr"), ("--lock_image=maybe", "lock_image"), ("--betas=[0.9]", "betas"),
     ("--data.workers=two", "workers"), ("--precision=fp8", "precision"), ("--steps=1.5", "steps")],
)  # fmt: skip
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, override, key):
    rc = main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--model=micro", override])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: micro\nwarmup: 10\n")
    with pytest.raises(ValueError, match="warmup"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size="12")  # the Python API checks types too


def test_resnet_tower_resumes_bitwise_equal(tmp_path):
    """A ResNet image tower trains in channels-last layout on CPU (weights, gradients and AdamW
    state); resuming from a checkpoint still ends bitwise equal to the uninterrupted run, and the
    saved weights are in the standard layout."""
    args = [*FAST, "--model=tiny-rn", "--batch_size=8", "--data.synthetic_size=24", "--steps=4",
            "--checkpoint_every=2", "--keep_last=4", "--eval_every=0", "--tensorboard=false", "--threads=1"]  # fmt: skip
    reference = tmp_path / "reference"
    train(load_config(None, args), reference, progress=False)
    step2 = CheckpointManager(reference / "checkpoints").directory / "step_0000002.pt"
    assert step2.is_file(), sorted(p.name for p in step2.parent.iterdir())
    train(load_config(None, args), tmp_path / "resumed", resume=str(step2), progress=False)
    weights = final_weights(reference)
    assert_bitwise_equal(final_weights(tmp_path / "resumed"), weights)
    assert all(w.is_contiguous() for w in weights.values())
