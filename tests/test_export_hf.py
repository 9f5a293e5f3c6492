"""``cliplab export hf`` / ``export open_clip``, model cards, and saving wrapped models.

The transformers export is loaded by transformers itself (``CLIPModel`` and ``CLIPProcessor``) and
its features compared with cliplab's on the same inputs; the architectures beyond OpenAI's that
open_clip's tags need (other MLP ratios, head widths, embedding sizes) go through the same check,
which makes transformers the in-suite reference for them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.checkpoints import CheckpointError, detect_format, load_checkpoint
from cliplab.checkpoints.card import MARKER
from cliplab.cli.main import main as cli
from cliplab.export import export_hf, export_open_clip
from cliplab.models import CLIPConfig, TextConfig, VisionConfig, get_config
from cliplab.models.config import mlp_width

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a dog", "a diagram of a red triangle left of a blue star", "x", "cheap! wow!!"]

# Shapes of open_clip architectures beyond OpenAI's, scaled down: ViT-g-14's and ViT-bigG-14's MLP
# ratios, ViT-H-14's 80-wide heads, ViT-B-16-plus-240's text and embedding widths.
ODD = {
    "mlp-ratios": CLIPConfig(
        embed_dim=48,
        vision=VisionConfig(image_size=42, layers=2, width=88, heads=1, patch_size=14, mlp_ratio=4.3637),
        text=TextConfig(context_length=24, width=104, heads=1, layers=2, mlp_ratio=4.9231),
        quick_gelu=False,
    ),
    "head-width-80": CLIPConfig(
        embed_dim=40,
        vision=VisionConfig(image_size=28, layers=2, width=160, heads=2, patch_size=14),
        text=TextConfig(context_length=16, width=80, heads=1, layers=1),
        quick_gelu=True,
    ),
}


def random_model(config: str | CLIPConfig, seed: int = 0) -> cliplab.CLIP:
    torch.manual_seed(seed)
    model = cliplab.create_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    return model


def photo(width: int = 80, height: int = 60) -> Image.Image:
    rng = np.random.default_rng(width * height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.requires("transformers", "the transformers export is loaded by transformers")
@pytest.mark.parametrize("name", ["micro", "tiny", *ODD])
def test_hf_export_loads_in_transformers_with_equal_features(tmp_path, name):
    import transformers

    model = random_model(ODD.get(name, name))
    out = export_hf(model, tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(out).eval()
    processor = transformers.CLIPProcessor.from_pretrained(out)
    ctx = model.context_length
    _, preprocess = cliplab.load(out)
    # (2n + 12) x 2n is resized to (n + 6) x n, whose centre-crop offset (3) is whole both by
    # torchvision's rounding and by transformers' floor (they differ by a pixel on odd offsets)
    n = model.image_size
    images = [photo(2 * n + 12, 2 * n), photo(2 * n, 2 * n + 12)]
    batch = processor(text=TEXTS, images=images, padding="max_length", max_length=ctx, return_tensors="pt")
    ids = cliplab.tokenize(TEXTS, context_length=ctx)
    # Same ids; transformers pads with <|endoftext|> (as OpenAI's release), cliplab with 0.
    assert torch.equal(batch["input_ids"] * batch["attention_mask"], ids)
    pixels = torch.stack([preprocess(im) for im in images])
    assert (batch["pixel_values"] - pixels).abs().max() < 1e-6
    with torch.no_grad():
        hf_text = hf.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hf_image = hf.get_image_features(pixel_values=batch["pixel_values"])
        hf_text = getattr(hf_text, "pooler_output", hf_text)  # transformers 5 returns an output object
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        assert (hf_text - model.encode_text(ids)).abs().max() < 1e-5
        assert (hf_image - model.encode_image(pixels)).abs().max() < 1e-5
    # and cliplab reads the export back as the same model
    again, _ = load_checkpoint(out)
    assert same_architecture(again.config, model.config)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def same_architecture(a: CLIPConfig, b: CLIPConfig) -> bool:
    """Equal configs up to how an MLP ratio is written (HF stores the hidden width, 384 = 88 x 4.3637)."""

    def hidden(c: CLIPConfig) -> tuple:
        v, t = c.vision, c.text
        ratios = replace(c, vision=replace(v, mlp_ratio=4.0), text=replace(t, mlp_ratio=4.0))
        return ratios, mlp_width(v.width, v.mlp_ratio), mlp_width(t.width, t.mlp_ratio)

    return hidden(a) == hidden(b)


def test_hf_export_refuses_resnets_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="no ResNet image tower"):
        export_hf(random_model("tiny-rn"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_clip_export_refuses_a_stem_open_clip_cannot_express(tmp_path):
    base = get_config("tiny-rn")
    cfg = replace(base, vision=replace(base.vision, stem_stride_conv=2))
    model = random_model(cfg)
    with pytest.raises(CheckpointError, match="stem_stride_conv=2"):
        export_open_clip(model, tmp_path / "oc")
    assert not (tmp_path / "oc").exists()
    again, _ = load_checkpoint(cliplab.save(model, tmp_path / "native"))  # cliplab's own format keeps it
    assert again.config == cfg


@pytest.mark.parametrize("name", ["micro", "tiny-rn", "mlp-ratios"])
def test_open_clip_export_round_trips(tmp_path, name):
    model = random_model(ODD.get(name, name))
    out = export_open_clip(model, tmp_path / "oc")
    assert detect_format(out) == "open_clip"
    config = json.loads((out / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    again, pre = load_checkpoint(out)
    assert again.config == model.config and pre.image_size == model.image_size
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_exports_of_a_half_precision_model_are_float32_and_leave_it_alone(tmp_path):
    model = random_model("micro").half()
    export_open_clip(model, tmp_path / "oc")
    assert model.dtype == torch.float16
    again, _ = load_checkpoint(tmp_path / "oc")
    assert again.dtype == torch.float32


# --- model cards ---------------------------------------------------------------------------------


def fake_run(tmp_path: Path) -> Path:
    """A run directory as `cliplab train` leaves it, with a tiny model as final/."""
    run = tmp_path / "run"
    run.mkdir()
    train_config = {"model": "micro", "data": {"source": "synthetic", "synthetic_size": 500, "synthetic_seed": 3},
                    "steps": 40, "batch_size": 16, "lr": 0.001, "weight_decay": 0.1, "warmup_steps": 5,
                    "precision": "fp32", "seed": 0, "pretrained": None}  # fmt: skip
    (run / "config.yaml").write_text("model: micro\n")
    (run / "metrics.jsonl").write_text("{}\n")
    cliplab.save(random_model("micro"), run / "final", extra={"step": 40, "train_config": train_config})
    summary = {"final_loss": 1.25, "zeroshot": {"colour": {"top1": 0.875, "chance": 0.125}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_save_writes_a_model_card_with_the_training_settings(tmp_path):
    run = fake_run(tmp_path)
    card = (run / "final" / "README.md").read_text()
    assert MARKER in card and "library_name: cliplab" in card
    assert "ViT, 2 layers, width 64" in card and "| embedding | 64 |" in card
    assert "synthetic captioned images (500 samples, seed 3)" in card and "| steps | 40 |" in card
    assert "## Licence" in card


@pytest.mark.parametrize("fmt, library", [("hf", "transformers"), ("open_clip", "open_clip")])
def test_cli_export_writes_a_card_with_evaluation_results(tmp_path, fmt, library, capsys):
    run = fake_run(tmp_path)
    assert cli(["export", fmt, str(run / "final"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"library_name: {library}" in card
    assert "| colour | 87.5% | 12.5% |" in card and "Final contrastive loss: 1.250" in card
    assert "| batch size (per process) | 16 |" in card
    assert "wrote" in capsys.readouterr().out


def test_cli_export_refuses_a_non_empty_directory_and_keeps_user_files(tmp_path, capsys):
    model_dir = cliplab.save(random_model("micro"), tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("my own readme")
    assert cli(["export", "open_clip", str(model_dir), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt"]
    with pytest.warns(UserWarning, match="not written by cliplab"):
        assert cli(["export", "open_clip", str(model_dir), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "README.md").read_text() == "my own readme"
    assert (out / "open_clip_config.json").is_file()


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    rn = cliplab.save(random_model("tiny-rn"), tmp_path / "rn")
    assert cli(["export", "hf", str(rn), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no ResNet image tower" in err
    assert not (tmp_path / "out").exists()
    assert cli(["export", "hf", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "neither an existing file" in capsys.readouterr().err


def test_save_keeps_a_users_readme(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "README.md").write_text("hand-written")
    with pytest.warns(UserWarning, match="not written by cliplab"):
        cliplab.save(random_model("micro"), target)
    assert (target / "README.md").read_text() == "hand-written"
    cliplab.save(random_model("micro"), tmp_path / "n")
    cliplab.save(random_model("micro", seed=1), tmp_path / "n")  # our own card is refreshed silently
    assert MARKER in (tmp_path / "n" / "README.md").read_text()


# --- saving wrapped models ------------------------------------------------------------------------


def test_save_unwraps_torch_compile(tmp_path):
    model = random_model("micro")
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    out = cliplab.save(compiled, tmp_path / "c")
    again, _ = cliplab.load(out)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_unwraps_distributed_data_parallel(tmp_path):
    """A real DDP wrapper (gloo, one process) around the model, then compile around that."""
    code = f"""
import os, torch, torch.distributed as dist, cliplab
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group("gloo", rank=0, world_size=1)
torch.manual_seed(0)
model = cliplab.create_model("micro")
wrapped = torch.compile(torch.nn.parallel.DistributedDataParallel(model))
cliplab.save(wrapped, {str(tmp_path / "ddp")!r})
again, _ = cliplab.load({str(tmp_path / "ddp")!r})
assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
dist.destroy_process_group()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_save_refuses_other_objects(tmp_path):
    with pytest.raises(CheckpointError, match="expected a cliplab CLIP model"):
        cliplab.save(torch.nn.Linear(2, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_half_and_full_configs_round_trip_through_json():
    config = ODD["mlp-ratios"]
    assert CLIPConfig.from_dict(json.loads(config.to_json())) == config
    plain = cliplab.get_config("ViT-B/32")
    assert "mlp_ratio" not in json.dumps(
        plain.to_dict()
    )  # OpenAI's ratio is not written: old files unchanged
    assert replace(plain, vision=replace(plain.vision, mlp_ratio=4.0)) == plain
