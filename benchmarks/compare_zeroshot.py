"""Zero-shot evaluation of a folder of JPEGs, end to end: cliplab against CLIP_benchmark.

Both evaluate the same random ViT-B/32 weights on the same image folder (class sub-folders of
JPEGs), with the 80 ImageNet templates, the same batch size and the same number of DataLoader
workers, float32 on the CPU:

* cliplab: what ``cliplab eval zeroshot --data FOLDER --templates imagenet`` runs after loading the
  model: ``resolve_prompts`` (opens the folder with the model's preprocessing) then
  ``evaluate_zero_shot`` (image features, the zero-shot classifier, metrics);
* CLIP_benchmark: ``clip_benchmark.metrics.zeroshot_classification.evaluate`` with an open_clip
  model holding the same weights, a torchvision ``ImageFolder`` with open_clip's preprocess in a
  ``DataLoader``, the way clip_benchmark builds a dataset, and ``amp=False`` (float32, as cliplab).

The folder is generated: ``--classes`` ImageNet class names (a seeded draw) with ``--per-class``
JPEGs each, random sizes from 300 to 640 px a side. Prompts per image follow ImageNet's evaluation:
1,000 classes x 80 templates against 50,000 validation images is 1.6 prompts per image, and 50
images per class keeps that ratio here, so prompt encoding weighs what it weighs on ImageNet.
Predictions are checked before timing (top-1, top-5 and the confusion matrix, i.e. every image's
top-1 class counted per true class); each end-to-end run is timed, alternating, median reported.

    python benchmarks/compare_zeroshot.py [--classes 4] [--per-class 50] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Report, alternate  # noqa: E402

import cliplab  # noqa: E402
from cliplab.zeroshot import imagenet_classnames, imagenet_templates  # noqa: E402

ACC_LIMIT = 0.0


def make_folder(root: Path, classes: int, per_class: int, seed: int) -> list[str]:
    """Class folders named after ImageNet classes, each with ``per_class`` random-content JPEGs."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    names = sorted(n for n in rng.sample(imagenet_classnames(), classes * 2) if "/" not in n)[
        :classes
    ]  # folder-safe names; sorted as both readers order class folders
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = rng.randint(300, 640), rng.randint(300, 640)
            base = np.random.default_rng(rng.randrange(2**32)).integers(
                0, 256, (h // 8, w // 8, 3), dtype=np.uint8
            )
            img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x0, y0 = rng.randrange(w), rng.randrange(h)
                draw.ellipse(
                    [x0, y0, x0 + rng.randint(20, 200), y0 + rng.randint(20, 200)],
                    fill=tuple(rng.randrange(256) for _ in range(3)),
                )
            img.save(folder / f"{i:04d}.jpg", quality=90)
    return names


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Fraction of rows whose target is among the k highest logits, for each k."""
    ranked = logits.topk(max(topk), dim=1).indices
    hits = ranked == target[:, None]
    return [float(hits[:, :k].any(dim=1).float().mean()) for k in topk]


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4, help="class folders (ImageNet names, seeded draw)")
    parser.add_argument("--per-class", type=int, default=50, help="JPEGs per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (both)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/compare_zeroshot.json)"
    )
    args = parser.parse_args(argv)
    if min(args.classes, args.per_class, args.batch_size, args.rounds, args.threads) < 1 or args.workers < 0:
        parser.error("--classes, --per-class, --batch-size, --rounds, --threads must be >= 1; --workers >= 0")
    if args.classes > 50:
        parser.error("--classes: at most 50 (the predictions are compared through the confusion matrix)")
    torch.set_num_threads(args.threads)

    import open_clip
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from torchvision.datasets import ImageFolder

    from cliplab.evaluation.zeroshot import evaluate_zero_shot, resolve_prompts

    templates = imagenet_templates()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = make_folder(tmp / "images", args.classes, args.per_class, args.seed)
        torch.manual_seed(args.seed)
        cliplab.save(cliplab.create_model("ViT-B/32"), tmp / "model")
        model, preprocess = cliplab.load(tmp / "model")  # as the CLI loads --model
        oc, _, oc_preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu")
        oc.load_state_dict(model.state_dict(), strict=True)
        oc.eval()
        oc_tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
        data = str(tmp / "images")
        captured = {}
        run_classification = zsc.run_classification

        def capturing(*a, **k):  # keep clip_benchmark's logits to compare predictions image by image
            captured["logits"], captured["target"] = run_classification(*a, **k)
            return captured["logits"], captured["target"]

        zsc.run_classification = capturing
        # clip_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which numpy 2.4 refuses;
        # the same top-k accuracy, computed without that call (metrics only, not timed apart).
        zsc.accuracy = topk_accuracy

        def cliplab_eval():
            dataset, classnames, tpl = resolve_prompts(data, preprocess, None, "imagenet")
            return evaluate_zero_shot(
                model,
                cliplab.tokenize,
                dataset,
                classnames,
                tpl,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
            )

        def clip_benchmark_eval():
            dataset = ImageFolder(data, transform=oc_preprocess)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers
            )
            classnames = [c for c in dataset.classes]
            return zsc.evaluate(
                oc,
                loader,
                oc_tokenizer,
                classnames,
                [t.replace("{}", "{c}") for t in templates],
                "cpu",
                amp=False,
            )

        report = Report(
            name="compare_zeroshot",
            title="Zero-shot evaluation of an image folder, end to end, ViT-B/32",
            description=__doc__.split("\n\n")[1],
        )
        n_images = args.classes * args.per_class
        report.notes.append(
            f"Folder: {args.classes} classes ({', '.join(names)}) x {args.per_class} JPEGs = {n_images} images, "
            f"300-640 px, quality 90; 80 templates = {80 * args.classes} prompts "
            f"({80 * args.classes / n_images:.2f} per image, as ImageNet's 80,000 / 50,000); batch "
            f"{args.batch_size}, {args.workers} workers, torch threads {args.threads}, float32, CPU."
        )

        ours, theirs = cliplab_eval(), clip_benchmark_eval()
        pred = captured["logits"].argmax(1)
        cm = np.zeros((args.classes, args.classes), dtype=int)
        np.add.at(cm, (captured["target"].numpy(), pred.numpy()), 1)
        report.agree(
            "top-1 accuracy cliplab vs CLIP_benchmark",
            "abs difference",
            abs(ours["top1"] - theirs["acc1"]),
            ACC_LIMIT,
        )
        if args.classes >= 5:
            report.agree(
                "top-5 accuracy cliplab vs CLIP_benchmark",
                "abs difference",
                abs(ours["top5"] - theirs["acc5"]),
                ACC_LIMIT,
            )
        report.agree(
            "confusion matrix (every image's top-1, per true class)",
            "identical",
            ours["confusion_matrix"] == cm.tolist(),
        )
        report.row(
            case="agreement",
            top1_cliplab=ours["top1"],
            top1_clip_benchmark=theirs["acc1"],
            n_images_cliplab=ours["n_images"],
            n_images_clip_benchmark=len(pred),
        )
        assert all(a["ok"] for a in report.agreement), report.agreement

        timing = alternate(
            {"cliplab": cliplab_eval, "clip_benchmark": clip_benchmark_eval}, rounds=args.rounds, warmup=0
        )  # warmed by the agreement run
        for name, t in timing.items():
            report.row(
                case=f"{n_images} images, {args.classes} classes x 80 templates",
                impl=name,
                median_s=round(t["median_s"], 2),
                images_per_s=round(n_images / t["median_s"], 2),
                speedup_of_cliplab=round(t["median_s"] / timing["cliplab"]["median_s"], 2),
                times_s=t["times_s"],
            )
        report.target(
            "cliplab vs CLIP_benchmark, end to end",
            1.5,
            timing["clip_benchmark"]["median_s"] / timing["cliplab"]["median_s"],
        )
        shares(report, model, oc, oc_tokenizer, preprocess, data, names, templates, args)
    report.print()
    report.write(args.out)
    return report


def shares(report, model, oc, oc_tokenizer, preprocess, data, names, templates, args) -> None:
    """Where each end-to-end run spends its time: images (decode + preprocess + encode) and prompts."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    from cliplab.evaluation.features import extract_image_features
    from cliplab.evaluation.zeroshot import resolve_prompts
    from cliplab.zeroshot import build_zero_shot_classifier

    dataset, classnames, tpl = resolve_prompts(data, preprocess, None, "imagenet")
    t0 = time.perf_counter()
    extract_image_features(model, dataset, batch_size=args.batch_size, workers=args.workers, progress=False)
    t1 = time.perf_counter()
    build_zero_shot_classifier(
        model, cliplab.tokenize, classnames, tpl, batch_size=args.batch_size, progress=False
    )
    t2 = time.perf_counter()
    with torch.no_grad():
        zsc.zero_shot_classifier(
            oc, oc_tokenizer, names, [t.replace("{}", "{c}") for t in templates], "cpu", amp=False
        )
    t3 = time.perf_counter()
    report.row(
        case="parts (one run each)",
        impl="cliplab",
        image_features_s=round(t1 - t0, 2),
        classifier_s=round(t2 - t1, 2),
    )
    report.row(
        case="parts (one run each)",
        impl="clip_benchmark",
        classifier_s=round(t3 - t2, 2),
        image_features_s="rest of its end-to-end time",
    )


if __name__ == "__main__":
    main()
