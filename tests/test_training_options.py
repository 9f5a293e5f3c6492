"""Training options beyond the default path: bf16 autocast, fp16 refusal on CPU, gradient
checkpointing, WebDataset shards as the training source."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cliplab.cli.main import main
from cliplab.data.synthetic import SyntheticCaptions
from cliplab.data.writers import write_webdataset

BASE = ["--no-progress", "--model=micro", "--data.workers=0", "--warmup_steps=1", "--batch_size=8",
        "--eval_every=0", "--tensorboard=false", "--data.synthetic_size=64", "--threads=1"]  # fmt: skip


def run(out, *extra) -> dict:
    assert main(["train", "--out", str(out), *BASE, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def test_bf16_autocast_trains_on_cpu(tmp_path):
    summary = run(tmp_path / "bf16", "--precision=bf16", "--steps=3")
    assert summary["nonfinite_steps"] == 0 and summary["final_loss"] is not None
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "bf16").values())
    fp32 = run(tmp_path / "fp32", "--steps=3")
    # same data, same start: bf16 rounding changes the numbers a little, not the run
    assert abs(summary["final_loss"] - fp32["final_loss"]) < 0.1


def test_fp16_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    assert main(["train", "--out", str(tmp_path / "r"), *BASE, "--precision=fp16", "--steps=1"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_grad_checkpointing_gives_the_same_weights(tmp_path):
    run(tmp_path / "plain", "--steps=3")
    run(tmp_path / "ckpt", "--steps=3", "--grad_checkpointing=true")
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)


def test_train_from_webdataset_shards(tmp_path):
    data = SyntheticCaptions(48, seed=2, image_size=32)
    write_webdataset([data[i] for i in range(48)], tmp_path / "shards", shard_size=16)
    summary = run(tmp_path / "run", "--data.source=webdataset", f"--data.path={tmp_path / 'shards'}",
                  "--data.synthetic_size=100000", "--steps=4")  # fmt: skip
    assert summary["steps"] == 4 and summary["skipped_samples"] == 0
    assert summary["samples_seen"] == 4 * 8


def test_sync_batchnorm_needs_cuda_with_several_processes(tmp_path, monkeypatch):
    """SyncBatchNorm runs on GPUs only: a CPU run over several processes is refused before it starts
    (checked without a process group: the refusal comes before any collective)."""
    from cliplab.errors import UsageError
    from cliplab.training import load_config
    from cliplab.training.loop import Trainer

    cfg = load_config(None, [*BASE[1:], "--sync_batchnorm=true", "--steps=1"])
    with pytest.raises(UsageError, match="sync_batchnorm needs CUDA"):
        Trainer(cfg, tmp_path / "r", rank=0, world_size=2, progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_compiled_forward_trains_like_the_eager_one(tmp_path):
    """torch.compile (inductor on CPU) gives the same losses as eager execution, to float tolerance."""
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        assert (
            main(["train", "--out", str(out), *BASE, "--steps=3", f"--compile={flag}", "--eval_every=0"]) == 0
        )
        runs[flag] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "train"]  # fmt: skip
    assert runs["true"] == pytest.approx(runs["false"], abs=1e-4)
