"""One-off parity check of cliplab against open_clip, in both directions (not part of the test suite).

open_clip needs torchvision, which does not import beside cliplab's CPU torch, so this runs in two
environments that share a directory (see check_open_clip.py for the same pattern)::

    /work/cmpenv/bin/python benchmarks/check_open_clip_compat.py oc-make DIR   # open_clip env
    .venv/bin/python        benchmarks/check_open_clip_compat.py cl-check DIR  # cliplab env
    .venv/bin/python        benchmarks/check_open_clip_compat.py cl-make DIR   # cliplab env
    /work/cmpenv/bin/python benchmarks/check_open_clip_compat.py oc-check DIR  # open_clip env

1. ``oc-make``: every open_clip architecture cliplab implements (``cliplab.list_models()``, read from
   cliplab's copy of open_clip's table) is built by open_clip with random weights, at its real widths,
   head counts, MLP ratios, image and patch sizes but only 2 blocks per tower (1 bottleneck per
   ResNet stage); ViT-B-32, ViT-H-14 and RN50 also at full depth. Each is saved in open_clip's hub
   layout (open_clip's own ``save_config_for_hf`` config, weights alternately as safetensors and
   ``.bin``) with its image and text features for fixed inputs.
2. ``cl-check``: cliplab loads each directory (``cliplab.load``) and compares features; it also checks
   that ``cliplab.create_model(name)`` has the same architecture as open_clip's full config.
3. ``cl-make``: cliplab exports models (``cliplab export open_clip``) with random weights: ViT and
   ResNet, QuickGELU and GELU, MLP ratio and head widths other than OpenAI's; with features, the
   preprocessed pixels of one image and the token ids of a few texts.
4. ``oc-check``: open_clip loads each export with ``create_model_and_transforms("local-dir:DIR")`` and
   ``get_tokenizer("local-dir:DIR")`` and compares features, preprocessing and token ids.

Then ``summary DIR`` combines ``DIR/cl_check.json`` and ``DIR/oc_check.json`` into
``benchmarks/results/check_open_clip_compat.json`` (the committed result).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "src" / "cliplab" / "checkpoints" / "data" / "open_clip_models.json"
FULL_DEPTH = ("ViT-B-32", "ViT-H-14", "RN50")
TEXTS = ["a photo of a dog", "a diagram of a red triangle left of a blue star", "x " * 100]
TOLERANCE = 1e-4


def supported_names() -> list[str]:
    """cliplab.list_models(); the open_clip env has no cliplab installed, so it is imported from src/."""
    sys.path.insert(0, str(ROOT / "src"))
    from cliplab.checkpoints.pretrained import list_models

    return list_models()


def shallow(cfg: dict) -> dict:
    cfg = json.loads(json.dumps(cfg))
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    v["layers"] = [1, 1, 1, 1] if isinstance(v["layers"], list) else min(v["layers"], 2)
    t["layers"] = min(t["layers"], 2)
    return cfg


def inputs(size: int, context_length: int):
    g = torch.Generator().manual_seed(size)
    return torch.randn(2, 3, size, size, generator=g)


def oc_make(out: Path) -> None:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIP
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    table = json.loads(TABLE.read_text())["models"]
    jobs = [(n, shallow(table[n])) for n in supported_names()] + [(f"{n}@full", table[n]) for n in FULL_DEPTH]
    for i, (name, cfg) in enumerate(jobs):
        torch.manual_seed(i)
        model = CLIP(**cfg).eval()
        model.visual.image_mean, model.visual.image_std = (
            OPENAI_DATASET_MEAN,
            OPENAI_DATASET_STD,
        )  # as its factory sets
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():  # break zero-initialised structure (ResNet bn3 weights...)
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        images = inputs(size, cfg["text_cfg"]["context_length"])
        texts = open_clip.tokenize(TEXTS, context_length=cfg["text_cfg"]["context_length"])
        with torch.no_grad():
            feats = {"image": model.encode_image(images), "text": model.encode_text(texts)}
        d = out / "oc" / name
        d.mkdir(parents=True, exist_ok=True)
        save_config_for_hf(model, d / "open_clip_config.json", model_config=cfg)
        if i % 2:
            torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
        else:
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()},
                str(d / "open_clip_model.safetensors"),
            )
        torch.save({"images": images, "texts": texts, **feats}, d / "reference.pt")
        print(
            f"oc-make {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True
        )


def cl_check(out: Path) -> int:
    from dataclasses import replace

    import cliplab
    from cliplab.checkpoints.pretrained import resolve_architecture

    table = json.loads(TABLE.read_text())["models"]
    results, ok = {}, True
    for d in sorted((out / "oc").iterdir()):
        name = d.name
        model, _ = cliplab.load(d)
        ref = torch.load(d / "reference.pt", weights_only=True)
        with torch.no_grad():
            img = (model.encode_image(ref["images"]) - ref["image"]).abs().max().item()
            txt = (model.encode_text(ref["texts"]) - ref["text"]).abs().max().item()
        base = name.removesuffix("@full")
        # the name's architecture (as cliplab.create_model_and_transforms resolves it), at the file's depth
        alias = resolve_architecture(base, open_clip_first=True)
        v, t = model.config.vision, model.config.text
        same_arch = model.config == replace(
            alias, vision=replace(alias.vision, layers=v.layers), text=replace(alias.text, layers=t.layers)
        )
        results[name] = {
            "image_max_abs_diff": img,
            "text_max_abs_diff": txt,
            "config_matches_table": same_arch,
        }
        ok &= img <= TOLERANCE and txt <= TOLERANCE and same_arch
        print(f"cl-check {name:<28} image {img:.2e}  text {txt:.2e}", flush=True)
    unsupported = sorted(set(table) - set(cliplab.list_models()))
    summary = {
        "direction": "open_clip writes (hub layout), cliplab loads",
        "tolerance": TOLERANCE,
        "models": results,
        "supported": len(cliplab.list_models()),
        "unsupported": len(unsupported),
        "pass": bool(ok),
    }
    (out / "cl_check.json").write_text(json.dumps(summary, indent=2))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cl_make(out: Path) -> None:
    from dataclasses import replace

    from PIL import Image

    import cliplab
    from cliplab.export import export_open_clip
    from cliplab.models import CLIPConfig, TextConfig, VisionConfig

    odd = CLIPConfig(
        embed_dim=48,
        vision=VisionConfig(image_size=42, layers=2, width=80, heads=2, patch_size=14, mlp_ratio=4.3637),
        text=TextConfig(context_length=20, width=96, heads=3, layers=2, mlp_ratio=4.9231),
        quick_gelu=False,
    )
    models = {
        "micro": cliplab.get_config("micro"),
        "tiny-rn": cliplab.get_config("tiny-rn"),
        "tiny-gelu": replace(cliplab.get_config("tiny"), quick_gelu=False),
        "odd-widths": odd,
    }
    image = Image.fromarray(
        (torch.rand(57, 83, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    )
    image.save(out / "image.png")
    for i, (name, config) in enumerate(models.items()):
        torch.manual_seed(100 + i)
        model = cliplab.create_model(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape) * 0.02)
        d = export_open_clip(model, out / "cl" / name, source=f"random {name}")
        images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size)
        texts = cliplab.tokenize(TEXTS, context_length=config.text.context_length, truncate=True)
        _, preprocess = cliplab.load(d)
        with torch.no_grad():
            ref = {"image": model.encode_image(images), "text": model.encode_text(texts)}
        torch.save(
            {"images": images, "texts": texts, "pixels": preprocess(image), **ref}, out / "cl" / f"{name}.pt"
        )
        print(f"cl-make {name}", flush=True)


def oc_check(out: Path) -> int:
    import open_clip
    from PIL import Image

    image = Image.open(out / "image.png")
    results, ok = {}, True
    for d in sorted(p for p in (out / "cl").iterdir() if p.is_dir()):
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
        model.eval()
        ref = torch.load(out / "cl" / f"{d.name}.pt", weights_only=True)
        with torch.no_grad():
            img = (model.encode_image(ref["images"]) - ref["image"]).abs().max().item()
            txt = (model.encode_text(ref["texts"]) - ref["text"]).abs().max().item()
        pix = (preprocess(image) - ref["pixels"]).abs().max().item()
        ids = bool(torch.equal(tokenizer(TEXTS), ref["texts"]))
        results[d.name] = {
            "image_max_abs_diff": img,
            "text_max_abs_diff": txt,
            "preprocess_max_abs_diff": pix,
            "token_ids_equal": ids,
        }
        ok &= img <= TOLERANCE and txt <= TOLERANCE and pix <= 1e-6 and ids
        print(
            f"oc-check {d.name:<12} image {img:.2e}  text {txt:.2e}  pixels {pix:.2e}  ids {ids}", flush=True
        )
    summary = {
        "direction": "cliplab exports (open_clip hub layout), open_clip loads with local-dir:",
        "open_clip": open_clip.__version__,
        "tolerance": TOLERANCE,
        "models": results,
        "pass": bool(ok),
    }
    (out / "oc_check.json").write_text(json.dumps(summary, indent=2))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def summary(out: Path) -> int:
    cl, oc = (json.loads((out / f).read_text()) for f in ("cl_check.json", "oc_check.json"))
    result = {"open_clip_to_cliplab": cl, "cliplab_to_open_clip": oc, "pass": cl["pass"] and oc["pass"]}
    target = ROOT / "benchmarks" / "results" / "check_open_clip_compat.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}: {'PASS' if result['pass'] else 'FAIL'}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    mode, DIR_ARG = sys.argv[1], Path(sys.argv[2])
    DIR_ARG.mkdir(parents=True, exist_ok=True)
    steps = {
        "oc-make": oc_make,
        "cl-check": cl_check,
        "cl-make": cl_make,
        "oc-check": oc_check,
        "summary": summary,
    }
    sys.exit(steps[mode](DIR_ARG) or 0)
