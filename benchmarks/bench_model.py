"""Model speed on this CPU, side by side with OpenAI's reference model code on the same weights.

1. ``encode_text`` on zero-shot prompts (ImageNet class names x the 80 ImageNet templates, a
   subset of classes so it finishes in a minute), ViT-B/32 text tower: cliplab's default (the
   transformer runs only up to the longest end-of-text token) against the full 77 positions and
   against OpenAI's ``encode_text``. Outputs must agree (max abs difference is printed).
2. ``encode_image`` ViT-B/32, float32, batch 32: images/s for cliplab and OpenAI's reference.

    python benchmarks/bench_model.py [--classes 20] [--image-batches 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import load_reference  # noqa: E402

from cliplab import create_model, tokenize  # noqa: E402
from cliplab.zeroshot import imagenet_classnames, imagenet_templates  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """Best of ``repeats`` wall-clock runs after one warm-up (the machine may be shared)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def reference_copy(model):
    ref_mod = load_reference("model")
    ref = ref_mod.build_model({k: v.clone() for k, v in model.state_dict().items()}).float().eval()
    # build_model rounds weights through fp16; copy the exact float32 weights back in
    ref.load_state_dict(model.state_dict())
    return ref


def bench_text(model, ref, n_classes: int, repeats: int, batch: int = 256) -> dict:
    prompts = [t.format(c) for c in imagenet_classnames()[:n_classes] for t in imagenet_templates()]
    tokens = tokenize(prompts)
    chunks = tokens.split(batch)

    def run(fn):
        return torch.cat([fn(c) for c in chunks])

    with torch.inference_mode():
        fast = run(model.encode_text)
        full = run(lambda c: model.encode_text(c, full_length=True))
        openai = run(ref.encode_text)
        t_fast = best_time(lambda: run(model.encode_text), repeats)
        t_full = best_time(lambda: run(lambda c: model.encode_text(c, full_length=True)), repeats)
        t_ref = best_time(lambda: run(ref.encode_text), repeats)
    n = len(prompts)
    return {
        "prompts": n,
        "mean_tokens": float((tokens.argmax(-1) + 1).float().mean()),
        "cliplab_prompts_per_s": n / t_fast,
        "full_length_prompts_per_s": n / t_full,
        "openai_prompts_per_s": n / t_ref,
        "speedup_vs_full_length": t_full / t_fast,
        "speedup_vs_openai": t_ref / t_fast,
        "max_abs_diff_vs_full_length": float((fast - full).abs().max()),
        "max_abs_diff_vs_openai": float((fast - openai).abs().max()),
    }


def bench_image(model, ref, batches: int, repeats: int, batch: int = 32) -> dict:
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = model.encode_image(images), ref.encode_image(images)
        t_ours = best_time(lambda: [model.encode_image(images) for _ in range(batches)], repeats)
        t_ref = best_time(lambda: [ref.encode_image(images) for _ in range(batches)], repeats)
    return {
        "batch": batch,
        "cliplab_images_per_s": batch * batches / t_ours,
        "openai_images_per_s": batch * batches / t_ref,
        "ratio_cliplab_over_openai": t_ref / t_ours,
        "max_abs_diff": float((ours - theirs).abs().max()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=20, help="ImageNet classes (x 80 templates)")
    parser.add_argument("--image-batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("ViT-B/32").eval()
    ref = reference_copy(model)
    results = {
        "device": "cpu",
        "threads": args.threads,
        "encode_text": bench_text(model, ref, args.classes, args.repeats),
        "encode_image": bench_image(model, ref, args.image_batches, args.repeats),
    }
    t, i = results["encode_text"], results["encode_image"]
    print(f"encode_text  ViT-B/32, {t['prompts']} zero-shot prompts (mean {t['mean_tokens']:.1f} tokens)")
    print(f"  cliplab (truncated)  {t['cliplab_prompts_per_s']:8.1f} prompts/s")
    print(
        f"  full 77 positions    {t['full_length_prompts_per_s']:8.1f} prompts/s   speed-up {t['speedup_vs_full_length']:.2f}x"
        f"   max|diff| {t['max_abs_diff_vs_full_length']:.2e}"
    )
    print(
        f"  OpenAI reference     {t['openai_prompts_per_s']:8.1f} prompts/s   speed-up {t['speedup_vs_openai']:.2f}x"
        f"   max|diff| {t['max_abs_diff_vs_openai']:.2e}"
    )
    print(f"encode_image ViT-B/32 float32, batch {i['batch']}")
    print(
        f"  cliplab {i['cliplab_images_per_s']:.1f} images/s, OpenAI {i['openai_images_per_s']:.1f} images/s, "
        f"ratio {i['ratio_cliplab_over_openai']:.2f}x, max|diff| {i['max_abs_diff']:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
