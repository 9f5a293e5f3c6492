"""Issue acceptance: `cliplab eval zeroshot` on a synthetic task written to disk as an image folder
reproduces the zero-shot accuracy that training logged for that task (same images through PNG,
same eval preprocessing, same prompts)."""

from __future__ import annotations

import json

import pytest

from cliplab.cli.main import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main([
        "train", "--out", str(out), "--no-progress", "--model=micro", "--steps=12", "--batch_size=32",
        "--data.workers=0", "--data.synthetic_size=512", "--eval_every=12", "--eval_per_class=6",
        "--warmup_steps=2", "--lr=2e-3", "--tensorboard=false",
    ])  # fmt: skip
    assert code == 0
    return out


@pytest.mark.parametrize("task", ["colour", "shape", "digit", "compositional"])
def test_eval_cli_reproduces_training_accuracy(trained_run, tmp_path, task):
    summary = json.loads((trained_run / "summary.json").read_text())
    logged = summary["zeroshot"][task]["top1"]
    tasks_dir = tmp_path / "tasks"
    assert main(["data", "tasks", "--out", str(tasks_dir), "--image-size", "32", "--per-class", "6",
                 "--tasks", task]) == 0  # fmt: skip
    result_path = tmp_path / "result.json"
    code = main([
        "eval", "zeroshot", "--model", str(trained_run / "final"), "--data", str(tasks_dir / task),
        "--json", str(result_path), "--workers", "0",
    ])  # fmt: skip
    assert code == 0
    result = json.loads(result_path.read_text())
    n = result["n_images"]
    assert n == 6 * len(result["per_class_recall"])
    # Identical pixels, preprocessing and prompts: equal up to float summation order across batch sizes.
    assert abs(result["top1"] - logged) <= 1.0 / n + 1e-9


def test_training_evaluates_the_users_own_data(trained_run, tmp_path):
    """With ``eval_data``, periodic evaluation scores the user's sets (not the synthetic tasks), and
    `cliplab eval zeroshot` on the same folder prints the accuracy the run logged."""
    data = tmp_path / "mine"
    assert main(["data", "tasks", "--out", str(data), "--image-size", "32", "--per-class", "4",
                 "--tasks", "colour", "count", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "run"
    code = main([
        "train", "--out", str(out), "--no-progress", "--model=micro", "--steps=4", "--batch_size=16",
        "--data.workers=0", "--data.synthetic_size=64", "--eval_every=2", "--warmup_steps=1",
        "--tensorboard=false", f"--eval_data=[{data / 'colour'},{data / 'count'}]",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["zeroshot"]) == {"colour", "count"}
    assert summary["zeroshot"]["count"]["chance"] == 0.25
    result_path = tmp_path / "count.json"
    assert main(["eval", "zeroshot", "--model", str(out / "final"), "--data", str(data / "count"),
                 "--json", str(result_path), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(result_path.read_text())["top1"] == summary["zeroshot"]["count"]["top1"]


def test_training_on_a_manifest_without_eval_data_does_not_evaluate(tmp_path):
    from cliplab.data.synthetic import SyntheticCaptions
    from cliplab.data.writers import write_files

    manifest = write_files(SyntheticCaptions(16, image_size=32), tmp_path / "data", progress=False)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--model=micro", "--steps=2", "--batch_size=8",
                 "--data.workers=0", "--data.source=manifest", f"--data.path={manifest}", "--eval_every=1",
                 "--tensorboard=false"]) == 0  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["zeroshot"] == {}
