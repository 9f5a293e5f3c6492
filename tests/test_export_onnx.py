"""``cliplab export onnx`` and ``cliplab.onnx.Encoder``: graphs against PyTorch with ONNX Runtime,
dynamic batch and text length, and the encoder in a process where importing torch fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.cli.main import main as cli
from cliplab.tokenizer import TextTooLongError
from cliplab.transforms import PreprocessConfig, to_array_normalized, to_tensor_normalized

pytestmark = pytest.mark.requires("onnxruntime", "the exported graphs are checked with ONNX Runtime")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a photo of a dog",
    "a diagram of a red triangle left of a blue star on a striped background",
    "x",
    "the quick brown fox jumps over the lazy dog " * 12,  # longer than 77 tokens: truncated
    "café, naïve — 東京",
    "",
    "a b c d e f g",
    "an image",
]


def random_model(config, seed: int = 0) -> cliplab.CLIP:
    torch.manual_seed(seed)
    model = cliplab.create_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def micro77() -> cliplab.CLIPConfig:
    cfg = cliplab.get_config("micro")
    return replace(cfg, text=replace(cfg.text, context_length=77))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """micro with a 77-token context, saved and exported through the CLI."""
    root = tmp_path_factory.mktemp("onnx")
    model = random_model(micro77())
    cliplab.save(model, root / "model")
    assert cli(["export", "onnx", str(root / "model"), str(root / "onnx")]) == 0
    return model, root / "onnx"


@pytest.fixture(scope="module")
def exported_resnet(tmp_path_factory):
    from cliplab.export import export_onnx

    root = tmp_path_factory.mktemp("onnx-rn")
    model = random_model("tiny-rn")
    return model, export_onnx(model, root / "onnx")


def sessions(directory: Path):
    import onnxruntime as ort

    meta = json.loads((directory / "cliplab_onnx.json").read_text())
    return (
        ort.InferenceSession(str(directory / meta["image_graph"]), providers=["CPUExecutionProvider"]),
        ort.InferenceSession(str(directory / meta["text_graph"]), providers=["CPUExecutionProvider"]),
    )


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("length", [5, 77])
def test_graphs_match_pytorch(exported, batch, length):
    model, directory = exported
    image_session, text_session = sessions(directory)
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    ids = cliplab.tokenize(TEXTS[:batch], context_length=length, truncate=True)
    assert ids.shape == (batch, length)
    with torch.no_grad():
        want_image, want_text = model.encode_image(images), model.encode_text(ids)
    got_image = image_session.run(None, {"pixel_values": images.numpy()})[0]
    got_text = text_session.run(None, {"input_ids": ids.numpy()})[0]
    assert np.abs(got_image - want_image.numpy()).max() < 1e-4
    assert np.abs(got_text - want_text.numpy()).max() < 1e-4


def test_no_length_or_batch_is_baked_in(exported):
    """The graph inputs are symbolic, and lengths never seen at export (or validation) still match."""
    import onnx

    model, directory = exported
    text_graph = onnx.load(str(directory / "text_encoder.onnx"), load_external_data=False)
    image_graph = onnx.load(str(directory / "image_encoder.onnx"), load_external_data=False)
    text_dims = text_graph.graph.input[0].type.tensor_type.shape.dim
    image_dims = image_graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param and not d.dim_value for d in text_dims)
    assert image_dims[0].dim_param and [d.dim_value for d in image_dims[1:]] == [3, 32, 32]
    _, text_session = sessions(directory)
    for length in (1, 2, 13, 40, 76):
        ids = cliplab.tokenize(TEXTS[:4], context_length=max(length, 2), truncate=True)[:, :length]
        with torch.no_grad():
            want = model.encode_text(ids, full_length=True)
        got = text_session.run(None, {"input_ids": ids.numpy()})[0]
        assert np.abs(got - want.numpy()).max() < 1e-4, length


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_resnet_image_graph_matches_pytorch(exported_resnet, batch):
    model, directory = exported_resnet
    image_session, text_session = sessions(directory)
    images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        want = model.encode_image(images)
    assert np.abs(image_session.run(None, {"pixel_values": images.numpy()})[0] - want.numpy()).max() < 1e-4
    ids = cliplab.tokenize(TEXTS[:batch], context_length=32, truncate=True)
    with torch.no_grad():
        want = model.encode_text(ids)
    assert np.abs(text_session.run(None, {"input_ids": ids.numpy()})[0] - want.numpy()).max() < 1e-4


def test_export_records_its_validation_and_a_card(exported):
    model, directory = exported
    meta = json.loads((directory / "cliplab_onnx.json").read_text())
    assert meta["format"] == "cliplab-onnx" and meta["model"] == model.config.to_dict()
    assert abs(meta["logit_scale"] - model.logit_scale.exp().item()) < 1e-6
    assert set(meta["validation_max_abs_diff"]) >= {
        "image_batch1",
        "image_batch3",
        "text_batch3_length5",
        "text_batch3_length77",
    }
    assert max(meta["validation_max_abs_diff"].values()) < 1e-4
    assert "library_name: onnx" in (directory / "README.md").read_text()


def test_validation_catches_a_graph_that_disagrees(exported):
    from cliplab.export.onnx_graphs import OnnxExportError, validate

    _, directory = exported
    other = random_model(micro77(), seed=1)
    with pytest.raises(OnnxExportError, match="disagree with PyTorch"):
        validate(other, directory)


def write_images(directory: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, mode) in enumerate([(50, 40, "RGB"), (31, 77, "L"), (64, 64, "RGBA"), (90, 33, "P")]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        paths.append(directory / f"img{i}.png")
        img.save(paths[-1])
    return paths


def test_encoder_without_torch_matches_pytorch(exported, tmp_path):
    model, directory = exported
    paths = write_images(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # Any import of torch (or a submodule) fails in this process, as where torch is not installed.
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys

        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, _NoTorch())
    """)
    )
    code = textwrap.dedent(f"""
        import sys, json
        import numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not work")
        from cliplab.onnx import Encoder, softmax
        enc = Encoder({str(directory)!r})
        images = enc.encode_images({[str(p) for p in paths]!r})
        texts = enc.encode_texts({TEXTS!r}, truncate=True)
        probs = softmax(enc.logits(images, texts))
        np.save({str(tmp_path / "images.npy")!r}, images)
        np.save({str(tmp_path / "texts.npy")!r}, texts)
        np.save({str(tmp_path / "probs.npy")!r}, probs)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))
    """)
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []

    _, preprocess = cliplab.load(directory.parent / "model")
    pixels = torch.stack([preprocess(cliplab.transforms.load_image(p)) for p in paths])
    with torch.no_grad():
        want_images = model.encode_image(pixels, normalize=True)
        want_texts = model.encode_text(cliplab.tokenize(TEXTS, truncate=True), normalize=True)
        want_probs, _ = model(pixels, cliplab.tokenize(TEXTS, truncate=True))
    assert np.abs(np.load(tmp_path / "images.npy") - want_images.numpy()).max() < 1e-4
    assert np.abs(np.load(tmp_path / "texts.npy") - want_texts.numpy()).max() < 1e-4
    assert np.abs(np.load(tmp_path / "probs.npy") - want_probs.softmax(-1).numpy()).max() < 1e-4


def test_encoder_tokenize_cuts_exactly_after_the_last_end_token(exported):
    from cliplab.onnx import Encoder

    _, directory = exported
    encoder = Encoder(directory)
    ids = encoder.tokenize(["a photo of a dog", "x"])
    full = cliplab.tokenize(["a photo of a dog", "x"]).numpy()
    assert ids.shape == (2, 7) and np.array_equal(ids, full[:, :7]) and not full[:, 7:].any()
    with pytest.raises(TextTooLongError):
        encoder.encode_texts(["word " * 100])
    assert encoder.encode_texts([]).shape == (0, 64)
    pixels = np.stack([encoder.preprocess(Image.new("RGB", (40, 30), (200, 10, 10)))] * 2)
    assert np.allclose(
        encoder.encode_images(pixels, normalize=False),
        encoder.encode_images(pixels[:1].repeat(2, 0), normalize=False),
    )


def test_encoder_refuses_a_directory_that_is_not_an_export(tmp_path, exported):
    from cliplab.onnx import Encoder, OnnxModelError

    with pytest.raises(OnnxModelError, match="cliplab export onnx"):
        Encoder(tmp_path)
    _, directory = exported
    meta = json.loads((directory / "cliplab_onnx.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cliplab_onnx.json").write_text(json.dumps({**meta, "image_graph": "../elsewhere.onnx"}))
    with pytest.raises(OnnxModelError, match="image_graph"):
        Encoder(bad)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "CMYK"])
def test_numpy_normalisation_is_bit_identical_to_the_tensor_path(mode):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (23, 29, 3), dtype=np.uint8)).convert(
        "RGB" if mode == "I;16" else mode
    )
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (23, 29), dtype=np.uint16))
    pre = PreprocessConfig(image_size=23)
    # torchvision's ToTensor + Normalize arithmetic, op for op, in torch
    rgb = img.convert("RGB")
    x = (
        torch.from_numpy(np.array(rgb, dtype=np.uint8))
        .permute(2, 0, 1)
        .contiguous()
        .to(torch.float32)
        .div(255)
    )
    want = x.sub_(torch.tensor(pre.mean).view(-1, 1, 1)).div_(torch.tensor(pre.std).view(-1, 1, 1)).numpy()
    got = to_array_normalized(img, pre.mean, pre.std)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(to_tensor_normalized(img, pre.mean, pre.std).numpy(), want)
