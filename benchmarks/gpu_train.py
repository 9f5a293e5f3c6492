"""Training speed on GPUs: samples/s, peak memory and model FLOPs utilisation (MFU) of the real step.

    python benchmarks/gpu_train.py                                   # one GPU: ViT-B-32, batch 256
    torchrun --nproc_per_node 8 benchmarks/gpu_train.py --compile    # eight GPUs, 256 each
    python benchmarks/gpu_train.py --precision fp16 --grad-checkpointing --batch-size 512
    python benchmarks/gpu_train.py --device cpu --model micro --batch-size 8 --steps 2 --warmup-steps 1

What runs is training's own step: a :class:`~cliplab.training.loop.Trainer` (the model,
``ContrastiveForward`` wrapped in DistributedDataParallel under torchrun, ``ClipLoss`` over the
global batch, ``build_optimizer``, autocast and the fp16 gradient scaler, torch.compile and gradient
checkpointing as configured) and its ``train_step``, fed one batch of random images and token ids
kept on the device, so data loading is not measured. ``--warmup-steps`` untimed steps (compilation,
cuDNN autotuning, the optimiser's first allocation) come before ``--steps`` timed ones, with the
device synchronised on both sides of the timed region. Every caption ends at the last position of
the context, so the text tower runs its whole context (77 tokens for ViT-B-32); real captions are
often shorter and the model stops at the longest one's end, so this is the upper bound of its cost.

Reported, by rank 0 (a table, and JSON in ``--out``): samples/s over all GPUs, peak memory
(``torch.cuda.max_memory_allocated``, the largest over the GPUs), and MFU = achieved model FLOP/s per
GPU / the GPU's peak dense FLOP/s at the precision the matmuls run in. Model FLOPs are counted once by
``torch.utils.flop_counter.FlopCounterMode`` over a forward and backward of one GPU's batch (attention
through the math kernel, so it is counted on every device, in full even where causal). Recomputation
by gradient checkpointing is not model FLOPs and is not counted, as in PaLM's definition of MFU. The
peak comes from :data:`PEAK_TFLOPS` or ``--peak-tflops``; MFU is null when neither knows the device
(always on CPU unless ``--peak-tflops`` is given).

Not part of ``run_all.py``: it needs a GPU to mean anything. The CPU form above is its smoke test
(tests/test_gpu_train_script.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from cliplab.data import DataConfig
from cliplab.data.samples import Batch
from cliplab.errors import CliplabError, UsageError
from cliplab.training import TrainConfig
from cliplab.training.distributed import (
    ProcessPlacement,
    destroy_process_group,
    from_environment,
    init_process_group,
)
from cliplab.training.loop import Trainer, training_device
from cliplab.training.loss import ClipLoss
from cliplab.training.step import ContrastiveForward, autocast_context

RESULTS = Path(__file__).resolve().parent / "results"

# Dense peak TFLOP/s per GPU by the precision matmuls run in (no 2:4 sparsity: half the figure NVIDIA
# datasheets print with an asterisk). None: no tensor-core support for that format. Matched in order
# against torch.cuda.get_device_name(), so the more specific names come first.
PEAK_TFLOPS: list[tuple[str, str, dict[str, float | None]]] = [
    (r"\bH100\b.*\bNVL\b", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0}),
    (r"\bH100\b", "H100 SXM", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bH200\b", "H200 SXM", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    (r"\bA100\b", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    # No NVIDIA datasheet for AWS's A10G; its tensor cores run at half the A10's rate per clock
    # (matmul benchmarks top out near 70 TFLOP/s in bf16). Use --peak-tflops if you know better.
    (r"\bA10G\b", "A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bL40S\b", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bV100\b.*\bPCIe\b", "V100 PCIe", {"bf16": None, "fp16": 112.0, "tf32": None, "fp32": 14.0}),
    (r"\bV100\b", "V100 SXM2", {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
    (r"\bT4\b", "T4", {"bf16": None, "fp16": 65.0, "tf32": None, "fp32": 8.1}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="named config (cliplab.list_configs()) or JSON file")
    p.add_argument("--batch-size", type=int, default=256, help="samples per GPU per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's peak dense TFLOP/s (default: the table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_train.json", help="JSON results")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "warmup_steps"):
        minimum = 0 if name == "warmup_steps" else 1
        if getattr(args, name) < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UsageError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    return args


def train_config(args: argparse.Namespace, world_size: int) -> TrainConfig:
    """Training's settings for this measurement: no evaluation, checkpoints or TensorBoard."""
    return TrainConfig(
        model=args.model,
        batch_size=args.batch_size,
        steps=args.warmup_steps + args.steps,
        precision=args.precision,
        compile=args.compile,
        grad_checkpointing=args.grad_checkpointing,
        device=args.device,
        seed=args.seed,
        eval_every=0,
        checkpoint_every=0,
        tensorboard=False,
        # Only sizes the trainer's epoch; batches come from random_batch.
        data=DataConfig(source="synthetic", synthetic_size=args.batch_size * world_size, workers=0),
    )


def random_batch(trainer: Trainer, batch_size: int) -> Batch:
    """Normalised-image-like noise and token ids whose end-of-text token is each row's last position."""
    config, device = trainer.model.config, trainer.device
    size, context, vocab = config.vision.image_size, config.text.context_length, config.text.vocab_size
    images = torch.randn(batch_size, 3, size, size, device=device)
    texts = torch.randint(1, vocab - 2, (batch_size, context), device=device)
    texts[:, 0] = vocab - 2  # start of text
    texts[:, -1] = vocab - 1  # end of text: the highest id, where encode_text reads the features
    return Batch(images, texts, torch.arange(batch_size, device=device))


def count_flops(trainer: Trainer, batch: Batch) -> int:
    """Model FLOPs of one forward + backward over ``batch`` (one GPU's share), as training runs it.

    Counted on a copy of the model: the trainer's own parameters carry DistributedDataParallel's
    gradient hooks. Without gradient checkpointing (its recomputation is not model FLOPs).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(trainer.model)
    model.set_grad_checkpointing(False)
    forward = ContrastiveForward(model)
    with (
        FlopCounterMode(display=False) as counter,
        sdpa_kernel(SDPBackend.MATH),  # fused attention kernels are not counted on every device
        autocast_context(trainer.device, trainer.cfg.precision),
    ):
        image_f, text_f, scale = forward(batch.images, batch.texts)
        ClipLoss()(image_f, text_f, scale).backward()
    del model, forward
    return counter.get_total_flops()


def peak_tflops(gpu_name: str, kind: str) -> tuple[float | None, str | None]:
    """``(TFLOP/s, which GPU it is)`` from :data:`PEAK_TFLOPS`; ``(None, None)`` when unknown."""
    for pattern, label, peaks in PEAK_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return peaks.get(kind), label
    return None, None


def matmul_kind(precision: str) -> str:
    """The format matmuls run in: autocast's, or for fp32 TF32 when PyTorch allows it."""
    if precision != "fp32":
        return precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


def mfu(flops_per_sample: float, samples_per_s: float, world_size: int, peak: float | None) -> float | None:
    """Achieved model FLOP/s per GPU over its peak (``peak`` in TFLOP/s); None without a peak."""
    if peak is None:
        return None
    return flops_per_sample * samples_per_s / world_size / (peak * 1e12)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer: Trainer, batch: Batch, warmup: int, steps: int) -> tuple[float, int]:
    """Seconds for ``steps`` training steps after ``warmup`` untimed ones, and the steps skipped."""
    for _ in range(warmup):
        step(trainer, batch)
    synchronize(trainer.device)
    trainer.coll.barrier()
    start = time.perf_counter()
    skipped = sum(not step(trainer, batch) for _ in range(steps))
    synchronize(trainer.device)
    return time.perf_counter() - start, skipped


def step(trainer: Trainer, batch: Batch) -> bool:
    """One training step; False when it was skipped (a non-finite loss)."""
    record = trainer.train_step(batch)
    trainer.state.step += 1  # the learning-rate schedule moves on, as in training
    return record is not None


def run(args: argparse.Namespace, placement: ProcessPlacement, out_dir: Path) -> dict | None:
    """Measure on this rank; rank 0 returns the results, the others None."""
    rank, world_size = placement.rank, placement.world_size
    trainer = Trainer(train_config(args, world_size), out_dir, rank=rank, world_size=world_size,
                      local_rank=placement.local_rank, progress=False)  # fmt: skip
    device = trainer.device
    torch.manual_seed(args.seed + rank)
    batch = random_batch(trainer, args.batch_size)
    flops_per_sample = count_flops(trainer, batch) / args.batch_size
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, skipped = measure(trainer, batch, args.warmup_steps, args.steps)
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    per_rank = trainer.coll.all_gather({"seconds": seconds, "peak_memory": peak_memory, "skipped": skipped})
    if trainer.metrics is not None:
        trainer.metrics.close()
    if rank != 0:
        return None
    seconds = max(r["seconds"] for r in per_rank)  # the step ends when the slowest rank is done
    samples_per_s = args.batch_size * world_size * args.steps / seconds
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    kind = matmul_kind(args.precision)
    peak, peak_source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else (None, None)
    if peak is None and gpu_name is not None:
        peak, label = peak_tflops(gpu_name, kind)
        peak_source = f"table: {label} {kind}" if peak is not None else None
    memories = [r["peak_memory"] for r in per_rank if r["peak_memory"] is not None]
    return {
        "model": args.model,
        "batch_size_per_gpu": args.batch_size,
        "global_batch_size": args.batch_size * world_size,
        "world_size": world_size,
        "precision": args.precision,
        "matmul_precision": kind,
        "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "skipped_steps": sum(r["skipped"] for r in per_rank),
        "device": device.type,
        "gpu_name": gpu_name,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "seconds": seconds,
        "step_time_s": seconds / args.steps,
        "samples_per_s": samples_per_s,
        "samples_per_s_per_gpu": samples_per_s / world_size,
        "peak_memory_bytes": max(memories) if memories else None,
        "peak_memory_per_gpu_bytes": memories or None,
        "flops_per_sample": flops_per_sample,
        "achieved_tflops_per_gpu": flops_per_sample * samples_per_s / world_size / 1e12,
        "peak_tflops_per_gpu": peak,
        "peak_source": peak_source,
        "mfu": mfu(flops_per_sample, samples_per_s, world_size, peak),
    }


def print_table(r: dict) -> None:
    where = r["gpu_name"] or r["device"]
    print(
        f"\n{r['model']}: batch {r['batch_size_per_gpu']} x {r['world_size']} = {r['global_batch_size']}, "
        f"{r['precision']}, compile {'on' if r['compile'] else 'off'}, "
        f"grad checkpointing {'on' if r['grad_checkpointing'] else 'off'}, {r['steps']} timed steps"
    )
    print(f"{where}, torch {r['torch_version']}, CUDA {r['cuda_version']}")
    memory, peak = r["peak_memory_bytes"], r["peak_tflops_per_gpu"]
    rows = [
        ("samples/s", f"{r['samples_per_s']:.1f} ({r['samples_per_s_per_gpu']:.1f} per device)"),
        ("step time", f"{r['step_time_s'] * 1e3:.1f} ms"),
        ("peak memory", f"{memory / 2**30:.2f} GiB" if memory is not None else "n/a"),
        ("model FLOPs/sample", f"{r['flops_per_sample'] / 1e9:.3f} GFLOP (forward + backward)"),
        ("achieved", f"{r['achieved_tflops_per_gpu']:.3g} TFLOP/s per device"),
        ("peak", f"{peak} TFLOP/s ({r['peak_source']})" if peak is not None else "unknown"),
        ("MFU", f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (no peak for this device)"),
    ]
    for name, value in rows:
        print(f"  {name:<20}{value}")
    if r["skipped_steps"]:
        print(f"  warning: {r['skipped_steps']} timed step(s) had a non-finite loss and were skipped")
    print()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        placement = from_environment()
        device = training_device(args.device, placement.world_size, placement.local_rank)
        init_process_group(placement, device, timeout_s=600.0)
        with tempfile.TemporaryDirectory(prefix="gpu_train-") as tmp:
            results = run(args, placement, Path(tmp))
    except CliplabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy_process_group()
    if results is not None:
        print_table(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
