"""One-off check of open_clip checkpoints against open_clip itself (not part of the test suite).

open_clip needs torchvision, which does not import beside this machine's CPU torch, so the check
runs in two environments:

    /work/cmpenv/bin/python benchmarks/check_open_clip.py make DIR    # open_clip + torchvision env
    .venv/bin/python benchmarks/check_open_clip.py check DIR          # cliplab's env

``make`` builds open_clip models with random weights, writes each as an open_clip training
checkpoint (``{"epoch", "state_dict": {"module." + key}}``) plus the model's own image and text
features for fixed inputs; ``check`` loads every checkpoint with ``cliplab.load`` and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# open_clip model name -> what cliplab must be told that the weights cannot say
MODELS = {"ViT-B-32-quickgelu": {}, "ViT-B-32": {"quick_gelu": False}, "RN50-quickgelu": {}}


def make(out: Path) -> None:
    import open_clip

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=g)
    texts = open_clip.tokenize(["a photo of a dog", "a diagram of a red triangle left of a blue star"])
    torch.save({"images": images, "texts": texts}, out / "inputs.pt")
    for name in MODELS:
        torch.manual_seed(0)
        model = open_clip.create_model(name).eval()
        with torch.no_grad():
            for p in model.parameters():  # break zero-initialised structure (e.g. ResNet bn3 weights)
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
            feats = {"image": model.encode_image(images), "text": model.encode_text(texts)}
        sd = {"module." + k: v for k, v in model.state_dict().items()}
        torch.save({"epoch": 1, "name": name, "state_dict": sd}, out / f"{name}.pt")
        torch.save(feats, out / f"{name}.features.pt")
        print(f"wrote {name}")


def check(out: Path) -> int:
    import cliplab

    inputs = torch.load(out / "inputs.pt", weights_only=True)
    results, ok = {}, True
    for name, kwargs in MODELS.items():
        model, _ = cliplab.load(out / f"{name}.pt", **kwargs)
        ref = torch.load(out / f"{name}.features.pt", weights_only=True)
        with torch.no_grad():
            img = (model.encode_image(inputs["images"]) - ref["image"]).abs().max().item()
            txt = (model.encode_text(inputs["texts"]) - ref["text"]).abs().max().item()
        results[name] = {"image_max_abs_diff": img, "text_max_abs_diff": txt}
        ok &= img <= 1e-4 and txt <= 1e-4
        print(f"{name:<22} image {img:.2e}  text {txt:.2e}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    mode, directory = sys.argv[1], Path(sys.argv[2])
    sys.exit(make(directory) if mode == "make" else check(directory))
