"""benchmarks/gpu_train.py: its CPU smoke run through the real command, its FLOP count against the
arithmetic of the architecture, and its peak/MFU bookkeeping. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cliplab.models import get_config

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_train.py"
SMOKE = ["--device", "cpu", "--model", "micro", "--batch-size", "8", "--steps", "2", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def gpu_train():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vit_clip_training_flops(name: str, batch: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one training sample of a ViT CLIP, written out by hand.

    Per transformer layer over L tokens of width w: q/k/v and output projections 8w^2 and the MLP
    16w^2 multiply-adds per token, and attention scores and their weighted sum L*w each per token.
    The text tower runs its whole context (the script's captions end at the last position), and
    its last layer computes only what the end-of-text token needs: q/k/v projections of every token
    (3w^2 each), then one query's attention (2 * L * w), output projection and MLP (9w^2). The
    loss multiplies the batch's features both ways (2 * batch * embed_dim per sample). Backward
    costs twice the forward, except the patch convolution: images need no gradient, so it only
    computes its weight gradient (once the forward).
    """
    c = get_config(name)
    v, t, d = c.vision, c.text, c.embed_dim

    def tower(width: int, layers: int, tokens: int) -> int:
        return layers * (2 * tokens * 12 * width**2 + 2 * 2 * tokens**2 * width)

    grid = v.image_size // v.patch_size
    patch_conv = 2 * 3 * v.patch_size**2 * v.width * grid**2
    n, w = t.context_length, t.width
    text_last_layer = 2 * (3 * w**2 * n + 2 * n * w + 9 * w**2)
    forward = (
        tower(v.width, v.layers, grid**2 + 1)
        + tower(w, t.layers - 1, n)
        + text_last_layer
        + 2 * v.width * d  # image projection of the class token
        + 2 * t.width * d  # text projection of the end-of-text token
        + 2 * 2 * batch * d  # logits per image and per text
    )
    return 3 * forward + 2 * patch_conv


def test_cpu_smoke_run_reports_every_field(tmp_path):
    out = tmp_path / "results" / "gpu_train.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *SMOKE, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples/s" in proc.stdout and "MFU" in proc.stdout
    r = json.loads(out.read_text())
    assert r["model"] == "micro" and r["precision"] == "bf16" and r["device"] == "cpu"
    assert (r["batch_size_per_gpu"], r["global_batch_size"], r["world_size"]) == (8, 8, 1)
    assert (r["steps"], r["warmup_steps"], r["skipped_steps"]) == (2, 1, 0)
    assert r["compile"] is False and r["grad_checkpointing"] is False
    assert r["torch_version"] == torch.__version__ and r["cuda_version"] == torch.version.cuda
    assert r["gpu_name"] is None and r["peak_memory_bytes"] is None  # no GPU, no GPU memory
    # No peak for a CPU: MFU is null rather than a made-up number.
    assert r["peak_tflops_per_gpu"] is None and r["peak_source"] is None and r["mfu"] is None
    assert math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0
    assert r["samples_per_s_per_gpu"] == pytest.approx(r["samples_per_s"])
    assert r["step_time_s"] == pytest.approx(r["seconds"] / 2)
    assert r["flops_per_sample"] == pytest.approx(vit_clip_training_flops("micro", 8), rel=1e-3)
    assert r["achieved_tflops_per_gpu"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e12)


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path):
    """torchrun on CPUs (gloo): DistributedDataParallel's step; rank 0 reports for both processes."""
    out = tmp_path / "gpu_train.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, str(SCRIPT), *SMOKE, "--precision", "fp32", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("samples/s") == 1  # one table, from rank 0
    r = json.loads(out.read_text())
    assert (r["batch_size_per_gpu"], r["global_batch_size"], r["world_size"]) == (8, 16, 2)
    assert r["samples_per_s_per_gpu"] == pytest.approx(r["samples_per_s"] / 2)
    assert r["samples_per_s"] == pytest.approx(16 * 2 / r["seconds"])
    # One process's share of the work: the loss is counted over its own 8 rows, as on one device.
    assert r["flops_per_sample"] == pytest.approx(vit_clip_training_flops("micro", 8), rel=1e-3)
    assert r["skipped_steps"] == 0 and r["mfu"] is None


def test_training_steps_with_grad_checkpointing_and_a_given_peak(gpu_train, tmp_path, monkeypatch):
    """The timed steps are the trainer's own; model FLOPs are the same with gradient checkpointing
    (its recomputation is not model FLOPs); ``--peak-tflops`` gives an MFU on any device."""
    steps, real_step = [], gpu_train.Trainer.train_step

    def train_step(trainer, batch):
        steps.append(len(batch))
        return real_step(trainer, batch)

    monkeypatch.setattr(gpu_train.Trainer, "train_step", train_step)
    out = tmp_path / "r.json"
    args = [*SMOKE, "--precision", "fp32", "--grad-checkpointing", "--peak-tflops", "2.5", "--out", str(out)]
    assert gpu_train.main(args) == 0
    assert steps == [8, 8, 8]  # one warm-up and two timed steps of 8 samples
    r = json.loads(out.read_text())
    assert r["grad_checkpointing"] is True and r["matmul_precision"] == "fp32"
    assert r["flops_per_sample"] == pytest.approx(vit_clip_training_flops("micro", 8), rel=1e-3)
    assert r["peak_source"] == "--peak-tflops" and r["peak_tflops_per_gpu"] == 2.5
    assert r["mfu"] == pytest.approx(r["achieved_tflops_per_gpu"] / 2.5)


@pytest.mark.parametrize(
    "gpu, kind, expected",
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", (312.0, "A100")),
        ("NVIDIA A100 80GB PCIe", "tf32", (156.0, "A100")),
        ("NVIDIA H100 80GB HBM3", "bf16", (989.5, "H100 SXM")),
        ("NVIDIA H100 PCIe", "fp16", (756.5, "H100 PCIe")),
        ("NVIDIA H100 NVL", "bf16", (835.5, "H100 NVL")),
        ("NVIDIA H200", "bf16", (989.5, "H200 SXM")),
        ("NVIDIA L4", "bf16", (121.0, "L4")),
        ("NVIDIA L40S", "bf16", (362.05, "L40S")),
        ("NVIDIA A10G", "bf16", (70.0, "A10G")),
        ("NVIDIA A10", "bf16", (125.0, "A10")),
        ("Tesla V100-SXM2-16GB", "fp16", (125.0, "V100 SXM2")),
        ("Tesla V100-PCIE-32GB", "fp16", (112.0, "V100 PCIe")),
        ("Tesla V100-SXM2-16GB", "bf16", (None, "V100 SXM2")),  # no bf16 tensor cores
        ("Tesla T4", "fp32", (8.1, "T4")),
        ("NVIDIA GeForce GTX 1080", "fp16", (None, None)),
    ],
)
def test_peak_table_matches_device_names(gpu_train, gpu, kind, expected):
    assert gpu_train.peak_tflops(gpu, kind) == expected


def test_mfu_is_achieved_flops_per_gpu_over_peak(gpu_train):
    # 2 GPUs together at 1,000 samples/s of 1 GFLOP each: 0.5 PFLOP/s each, half of a 1,000 TFLOP/s peak.
    assert gpu_train.mfu(1e9, 1000.0, 2, 1000.0) == pytest.approx(0.0005)
    assert gpu_train.mfu(1e9, 1000.0, 2, None) is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "fp16"], "fp16 needs a CUDA device"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_user_errors_are_one_line(gpu_train, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    assert gpu_train.main([*SMOKE, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    assert not out.exists()
