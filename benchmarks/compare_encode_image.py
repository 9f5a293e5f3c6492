"""``encode_image`` against open_clip and transformers, float32, plus cliplab's fast inference mode.

Two image towers, ViT-B/32 and RN50, each at batch 1 (many calls in a row) and batch 64. All
implementations hold the same random weights: cliplab's, loaded into open_clip's
``ViT-B-32-quickgelu`` / ``RN50-quickgelu`` (open_clip's keys are OpenAI's, cliplab's own) and, for the
ViT, exported to a transformers ``CLIPModel`` directory. transformers has no ResNet CLIP, so RN50's
baseline is open_clip alone. The ResNet's BatchNorm layers get random affine parameters and running
statistics (cliplab's initialisation zeroes the last BatchNorm of each block, which would make
every residual branch vanish and flatter the numerics).

Every implementation encodes the same preprocessed float32 batches: a mix of Gaussian noise, smooth
random images and near-constant ones, in the normalised range CLIP's preprocessing produces. Before
anything is timed, float32 features are checked to agree (max abs difference), and the fast mode's
cosine to cliplab's float32 features is measured on the same varied batch. Rounds alternate the
implementations in one process; medians are reported.

* cliplab float32: ``model.encode_image`` under ``torch.inference_mode`` (the plain model);
* cliplab fast: :func:`cliplab.inference.fast.prepare_image_encoder` (bfloat16 weights and
  activations with float32 LayerNorm and softmax, BatchNorm folded into the convolutions,
  channels-last for ResNets), returning float32 features;
* open_clip: ``model.encode_image`` under ``torch.inference_mode`` (its ``nn.MultiheadAttention`` takes
  the fused native fast path there);
* transformers: ``CLIPModel.get_image_features`` (SDPA attention).

    python benchmarks/compare_encode_image.py [--rounds 5] [--calls 10] [--threads 2] [--models ViT-B/32 RN50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Report, alternate, ratio  # noqa: E402

import cliplab  # noqa: E402
from cliplab.inference.fast import prepare_image_encoder  # noqa: E402

FP32_LIMIT = 1e-4  # max abs difference between implementations in float32 (features of size ~1)
COSINE_TARGET = 0.999
OPEN_CLIP_NAME = {"ViT-B/32": "ViT-B-32-quickgelu", "RN50": "RN50-quickgelu"}


def randomize_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm weights, biases and running statistics (eval-mode BN is then a real affine map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def make_models(name: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    import open_clip

    torch.manual_seed(seed)
    ours = cliplab.create_model(name).eval()
    if ours.config.vision.kind == "resnet":
        randomize_batchnorm(ours, seed)
    oc = open_clip.create_model(OPEN_CLIP_NAME[name])
    result = oc.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    models = {"cliplab": ours, "open_clip": oc.eval()}
    if ours.config.vision.kind == "vit":
        from transformers import CLIPModel

        with tempfile.TemporaryDirectory() as tmp:
            cliplab.export.export_hf(ours, Path(tmp) / "hf")
            models["transformers"] = CLIPModel.from_pretrained(Path(tmp) / "hf").eval()
    return models


def varied_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Preprocessed-looking float32 images: noise, smooth random fields, near-constant frames."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out[i] = torch.randn(3, size, size, generator=g)
        elif kind == 1:
            low = torch.randn(1, 3, 7, 7, generator=g)
            out[i] = 1.5 * F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0]
        else:
            out[i] = (
                torch.rand(3, 1, 1, generator=g) * 3 - 1.5 + 0.05 * torch.randn(3, size, size, generator=g)
            )
    return out


def hf_image_features(model, x: torch.Tensor) -> torch.Tensor:
    out = model.get_image_features(pixel_values=x)
    return (
        out if isinstance(out, torch.Tensor) else out.pooler_output
    )  # transformers 5 returns an output object


def encoders(models: dict[str, torch.nn.Module], fast) -> dict:
    fns = {
        "cliplab": models["cliplab"].encode_image,
        "open_clip": models["open_clip"].encode_image,
        "cliplab fast": fast.encode_image,
    }
    if "transformers" in models:
        fns["transformers"] = lambda x: hf_image_features(models["transformers"], x)
    return fns


def compare_model(report: Report, name: str, args) -> None:
    models = make_models(name, args.seed)
    ours = models["cliplab"]
    fast = prepare_image_encoder(ours, args.precision)
    fns = encoders(models, fast)
    size = ours.image_size
    check = varied_images(12, size, args.seed + 1)
    with torch.inference_mode():
        ref = ours.encode_image(check)
        for impl, fn in fns.items():
            out = fn(check).float()
            if impl == "cliplab fast":
                cos = float(F.cosine_similarity(out, ref, dim=-1).min())
                report.agree(
                    f"{name}: cliplab fast ({args.precision}) vs float32",
                    "min cosine",
                    cos,
                    COSINE_TARGET,
                    at_least=True,
                )
                report.notes.append(
                    f"{name}: fast mode min cosine to float32 over 12 varied images: {cos:.6f}"
                )
                fast_cos = cos
            elif impl != "cliplab":
                diff = float((out - ref).abs().max())
                report.agree(f"{name}: {impl} vs cliplab float32", "max abs diff", diff, FP32_LIMIT)
    baselines = [k for k in fns if k not in ("cliplab", "cliplab fast")]
    for batch in args.batches:
        x = varied_images(batch, size, args.seed + 2)
        calls = args.calls if batch == 1 else 1

        def timed(fn, x=x, calls=calls):
            def run():
                with torch.inference_mode():
                    for _ in range(calls):
                        fn(x)

            return run

        res = alternate({k: timed(fn) for k, fn in fns.items()}, rounds=args.rounds, warmup=1)
        per = {k: v["median_s"] / (calls * batch) for k, v in res.items()}
        best = min(baselines, key=lambda k: per[k])
        for impl, r in res.items():
            report.row(
                case=f"{name} batch {batch}",
                impl=impl,
                ms_per_image=round(1e3 * per[impl], 3),
                images_per_s=round(1 / per[impl], 2),
                vs_fastest_baseline=round(ratio(per[best], per[impl]), 3),
                rounds_s=r["times_s"],
            )
        report.target(
            f"{name} batch {batch}: cliplab float32 vs {best}", 1.0, ratio(per[best], per["cliplab"])
        )
        report.target(
            f"{name} batch {batch}: cliplab fast ({args.precision}, cosine {fast_cos:.5f}) vs {best}",
            1.5,
            ratio(per[best], per["cliplab fast"]),
        )
    if "transformers" not in models:
        report.notes.append(f"{name}: transformers has no ResNet CLIP; the baseline is open_clip alone")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=10, help="calls per timed round at batch 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--name", default="compare_encode_image", help="results/<name>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = Report(
        args.name,
        "encode_image: cliplab against open_clip and transformers",
        description=__doc__.split("\n\n")[1],
    )
    for name in args.models:
        compare_model(report, name, args)
    report.print()
    if not args.no_write:
        print("wrote", report.write())


if __name__ == "__main__":
    main()
