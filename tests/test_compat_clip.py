"""OpenAI ``clip`` compatibility: ``load``'s signature, the attributes scripts read, and a script written
for OpenAI's package run against cliplab by changing only its import, compared with OpenAI's model code.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from PIL import Image

import cliplab
from cliplab.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

# A script as people write it for OpenAI's package (the README example plus the attributes that
# scripts commonly read). The test runs it with its import line changed and nothing else.
OPENAI_SCRIPT = """
import json
import sys

import torch
import clip
from PIL import Image

model_path, image_path, out_path = sys.argv[1:4]
device = "cuda" if torch.cuda.is_available() else "cpu"
assert "ViT-B/32" in clip.available_models()
model, preprocess = clip.load(model_path, device=device, jit=False)
image = preprocess(Image.open(image_path)).unsqueeze(0).to(device)
text = clip.tokenize(["a diagram", "a dog", "a cat"]).to(device)
with torch.no_grad():
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)
    logits_per_image, logits_per_text = model(image, text)
    probs = logits_per_image.softmax(dim=-1).cpu().numpy()
print("Label probs:", probs)
json.dump({
    "probs": probs.tolist(),
    "image": image.tolist(),
    "text": text.tolist(),
    "image_features": image_features.tolist(),
    "text_features": text_features.tolist(),
    "input_resolution": model.visual.input_resolution,
    "context_length": model.context_length,
    "vocab_size": model.vocab_size,
    "dtype": str(model.dtype),
}, open(out_path, "w"))
"""


def micro77() -> cliplab.CLIPConfig:
    """micro with OpenAI's 77-token context, so OpenAI's own tokenize output fits it."""
    cfg = cliplab.get_config("micro")
    return replace(cfg, text=replace(cfg.text, context_length=77))


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """An OpenAI-layout state dict whose values are exact in float16 (OpenAI's build_model halves them)."""
    torch.manual_seed(0)
    model = cliplab.create_model(micro77())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
            p.copy_(p.half().float())
    sd = model.state_dict()
    path = tmp_path_factory.mktemp("openai") / "micro77.pt"
    torch.save(sd, path)
    return path, sd


def test_clip_import_swap_script_matches_openai_model(openai_checkpoint, tmp_path):
    model_mod = reference.load_reference("model")
    tokenizer_mod = reference.load_reference("simple_tokenizer")
    path, sd = openai_checkpoint
    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image_path)
    script = tmp_path / "script.py"
    swapped = OPENAI_SCRIPT.replace("import clip\n", "import cliplab as clip\n")
    assert swapped.count("\n") == OPENAI_SCRIPT.count("\n") and swapped != OPENAI_SCRIPT  # one line changed
    script.write_text(swapped)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(image_path), str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert (got["input_resolution"], got["context_length"], got["vocab_size"]) == (32, 77, 49408)
    assert got["dtype"] == "torch.float32"

    # OpenAI's model code, the same weights, OpenAI's tokenizer ids
    ref = model_mod.build_model({k: v.clone() for k, v in sd.items()}).float().eval()
    bpe = tokenizer_mod.SimpleTokenizer()
    ids = torch.zeros(3, 77, dtype=torch.long)
    for i, t in enumerate(["a diagram", "a dog", "a cat"]):
        row = [bpe.encoder["<|startoftext|>"], *bpe.encode(t), bpe.encoder["<|endoftext|>"]]
        ids[i, : len(row)] = torch.tensor(row)
    assert torch.equal(torch.tensor(got["text"]), ids)
    image = torch.tensor(got["image"])
    with torch.no_grad():
        ref_logits, _ = ref(image, ids)
        ref_image, ref_text = ref.encode_image(image), ref.encode_text(ids)
    assert ref.visual.input_resolution == got["input_resolution"]
    assert ref.context_length == got["context_length"] and ref.vocab_size == got["vocab_size"]
    assert np.abs(np.array(got["image_features"]) - ref_image.numpy()).max() < 1e-5
    assert np.abs(np.array(got["text_features"]) - ref_text.numpy()).max() < 1e-5
    assert np.abs(np.array(got["probs"]) - ref_logits.softmax(dim=-1).numpy()).max() < 1e-5


def test_available_models_are_openais():
    source = (reference._clip_dir() / "clip.py").read_text()
    tree = ast.parse(source)
    models = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets)
    )
    assert cliplab.available_models() == list(models)


def test_load_accepts_openais_signature_and_refuses_jit(openai_checkpoint):
    path, _ = openai_checkpoint
    model, preprocess = cliplab.load(str(path), "cpu", False, None)
    assert model.dtype == torch.float32 and not model.training
    with pytest.raises(UsageError, match="jit=False") as err:
        cliplab.load(str(path), device="cpu", jit=True)
    assert "\n" not in str(err.value)


def test_download_root_and_cuda_half_precision_are_passed_on(monkeypatch, openai_checkpoint):
    """download_root is the cache; on CUDA the weights are float16 as in OpenAI's clip.load."""
    seen = {}

    def fake_load_checkpoint(name, **kwargs):
        seen.update(kwargs)
        return cliplab.create_model("micro"), cliplab.checkpoints.common.default_preprocess(micro77())

    monkeypatch.setattr(cliplab.checkpoints, "load_checkpoint", fake_load_checkpoint)
    cliplab.load("ViT-B/32", device="cuda:0", download_root="/somewhere")
    assert seen == {"device": "cuda:0", "cache_dir": "/somewhere", "dtype": torch.float16}
    seen.clear()
    cliplab.load("ViT-B/32", device="cpu")
    assert seen == {"device": "cpu"}  # float32 (load_checkpoint's default) off the GPU


def test_half_precision_model_reports_its_dtype(openai_checkpoint):
    path, _ = openai_checkpoint
    model, _ = cliplab.load(path, dtype=torch.float16)
    assert model.dtype == torch.float16


def test_attributes_on_both_towers():
    for name in ("micro", "tiny-rn"):
        model = cliplab.create_model(name)
        cfg = cliplab.get_config(name)
        assert model.visual.input_resolution == cfg.vision.image_size
        assert model.context_length == cfg.text.context_length and model.vocab_size == cfg.text.vocab_size


def test_import_cliplab_does_not_import_torch():
    code = (
        "import sys, cliplab; cliplab.tokenize; print('torch' in sys.modules)\n"
        # what `import cliplab` made reachable before stays reachable, loaded on first use
        "print(cliplab.models.CLIP.__name__, cliplab.transforms.PreprocessConfig.__name__, cliplab.CLIPConfig.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False", "CLIP PreprocessConfig CLIPConfig"]


def test_tokenize_still_returns_long_tensors():
    ids = cliplab.tokenize(["a photo of a dog"])
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long and ids.shape == (1, 77)
    assert cliplab.CLIP is cliplab.models.CLIP
