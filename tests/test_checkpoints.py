"""Checkpoint formats: OpenAI archives and state dicts, open_clip, cliplab's own, downloads, bad input.

Every foreign file is built here from the reference implementation with random weights (no test
downloads anything): OpenAI's ``model.py`` is traced and ``torch.jit.save``-d the way the released
archives were made, open_clip layouts are produced by renaming keys as open_clip names them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from reference import load_reference

from cliplab.checkpoints import (
    CheckpointError,
    available_models,
    default_cache_dir,
    detect_format,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from cliplab.checkpoints import download as downloads
from cliplab.checkpoints import openai as openai_format
from cliplab.checkpoints.hf import save_hf_checkpoint
from cliplab.fileio import is_orphan, remove_orphans
from cliplab.models import CLIP, CLIPConfig, TextConfig, VisionConfig, get_config
from cliplab.transforms import PreprocessConfig

VOCAB, SOT, EOT = 1000, 998, 999  # a small vocabulary keeps the models tiny; EOT is the highest id
# Reference CLIP(...) arguments: embed, image size, vision layers, vision width, patch, context,
# vocab, text width, text heads, text layers. Heads are width // 64 as OpenAI's build_model assumes.
REF_VIT = (64, 32, 2, 128, 8, 16, VOCAB, 128, 2, 2)
REF_RESNET = (64, 64, (1, 2, 1, 1), 16, None, 16, VOCAB, 64, 1, 2)


# --- helpers --------------------------------------------------------------------------------------


def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every float tensor (zero-initialised ones too) and positive BatchNorm variances."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.05
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs() * 10)
            elif name.endswith("logit_scale"):
                t.fill_(2.3)
            else:
                t.add_(noise)
    return module


@functools.cache
def _reference_module():
    return load_reference("model")


def reference_clip(args=REF_VIT, seed: int = 0):
    torch.manual_seed(seed)
    return randomise_(_reference_module().CLIP(*args), seed).eval()


def tokens(n: int = 3, context: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = 3 + i * (context - 3) // max(1, n - 1)
        out[i, 0] = SOT
        out[i, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=g)
        out[i, length - 1] = EOT
    return out


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_outputs(
    model: CLIP, reference, image_size: int, context: int = 16, atol: float = 1e-4
) -> None:
    """Normalised image and text embeddings within ``atol``, logits within ``atol`` times the scale."""
    x, t = images(2, image_size), tokens(3, context)
    ours_i, ours_t = model.encode_image(x, normalize=True), model.encode_text(t, normalize=True)
    ref_i = F.normalize(reference.encode_image(x).float(), dim=-1)
    ref_t = F.normalize(reference.encode_text(t).float(), dim=-1)
    assert (ours_i - ref_i).abs().max() <= atol
    assert (ours_t - ref_t).abs().max() <= atol
    ours_logits, ref_logits = model(x, t)[0], reference(x, t)[0].float()
    assert (ours_logits - ref_logits).abs().max() <= atol * float(model.logit_scale.exp()) * 2


def save_jit_archive(reference, path: Path, image_size: int, half: bool = False) -> Path:
    """``torch.jit.save`` of the traced reference, like OpenAI's released ``.pt`` files.

    OpenAI's archives also hold ``input_resolution``, ``context_length`` and ``vocab_size`` entries
    and (for ViTs) fp16 weights.
    """
    for name, value in (("input_resolution", image_size), ("context_length", 16), ("vocab_size", VOCAB)):
        if hasattr(reference, name):
            delattr(reference, name)  # plain ints on the reference model; tensor entries in OpenAI's files
        reference.register_buffer(name, torch.tensor(value))
    x, t = images(1, image_size), tokens(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in the reference code
        traced = torch.jit.trace_module(
            reference, {"forward": (x, t), "encode_image": (x,), "encode_text": (t,)}, check_trace=False
        )
    if half:
        traced.half()
    traced.save(str(path))
    return path


def to_open_clip_custom_text(sd: dict, linear_projection: bool = False) -> dict:
    """Rename an OpenAI-layout state dict to open_clip's CustomTextCLIP layout (``text.*``)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("visual.") or key == "logit_scale":
            out[key] = value
        elif key == "text_projection" and linear_projection:
            out["text.text_projection.weight"] = value.t().contiguous()
        else:
            out["text." + key] = value
    return out


MICRO_GELU = CLIPConfig(
    embed_dim=32,
    vision=VisionConfig(kind="vit", image_size=32, layers=2, width=128, heads=4, patch_size=16),
    text=TextConfig(context_length=16, vocab_size=VOCAB, width=64, heads=4, layers=2),
    quick_gelu=False,
)


def random_clip(config: CLIPConfig | str, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return randomise_(CLIP(get_config(config) if isinstance(config, str) else config), seed).eval()


# --- OpenAI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_archive(tmp_path_factory):
    """An fp16 ViT archive like OpenAI's, and the reference holding the same fp16-rounded weights."""
    ref = reference_clip()
    path = save_jit_archive(
        copy.deepcopy(ref), tmp_path_factory.mktemp("jit") / "ViT-micro.pt", 32, half=True
    )
    return SimpleNamespace(path=path, ref=ref.half().float())  # computes in float32, rounded weights


@pytest.fixture(scope="module")
def resnet_archive(tmp_path_factory):
    ref = reference_clip(REF_RESNET, seed=1)
    path = save_jit_archive(copy.deepcopy(ref), tmp_path_factory.mktemp("jit") / "RN-micro.pt", 64)
    return SimpleNamespace(path=path, ref=ref)


def test_openai_jit_archive_fp16_vit(vit_archive):
    assert detect_format(vit_archive.path) == "openai-jit"
    model, pre = load_checkpoint(vit_archive.path)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert pre == PreprocessConfig(image_size=32)
    assert model.config.vision.heads == 2 and model.config.text.heads == 2
    assert_same_outputs(model, vit_archive.ref, 32)


def test_openai_jit_archive_resnet(resnet_archive):
    model, _ = load_checkpoint(resnet_archive.path)
    assert model.config.vision.kind == "resnet" and model.config.vision.layers == (1, 2, 1, 1)
    assert_same_outputs(model, resnet_archive.ref, 64)
    # the tensor-only reader sees exactly what TorchScript's own loader sees
    ours = openai_format.read_torchscript_state_dict(resnet_archive.path)
    theirs = torch.jit.load(str(resnet_archive.path)).state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_unknown_torch_construct_is_refused_not_handed_to_torchscript(vit_archive, tmp_path, monkeypatch):
    """No fallback to torch.jit.load: an archive the safe reader cannot read is a CheckpointError."""

    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load must never be called while loading a checkpoint")

    monkeypatch.setattr(torch.jit, "load", never)
    path = tmp_path / "qtensor.pt"
    with zipfile.ZipFile(vit_archive.path) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"torch._utils\n_rebuild_tensor_v2", b"torch._utils\n_rebuild_qtensor")
            out.writestr(info, data)
    with pytest.raises(CheckpointError, match=r"qtensor\.pt.*_rebuild_qtensor.*never runs code.*re-export"):
        load_checkpoint(path)


def test_openai_state_dict_file(tmp_path):
    ref = reference_clip(seed=2)
    torch.save(ref.state_dict(), tmp_path / "sd.pt")
    assert detect_format(tmp_path / "sd.pt") == "openai"
    model, _ = load_checkpoint(tmp_path / "sd.pt")
    assert_same_outputs(model, ref, 32)


def test_dtype_and_config_override(tmp_path):
    ref = reference_clip()
    torch.save(ref.state_dict(), tmp_path / "sd.pt")
    model, _ = load_checkpoint(tmp_path / "sd.pt", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    # head counts are not in the weights: an explicit config wins over the width // 64 guess
    cfg = model.config
    four_heads = CLIPConfig(
        embed_dim=cfg.embed_dim,
        vision=VisionConfig(**{**cfg.vision.__dict__, "heads": 4}),
        text=cfg.text,
    )
    model, _ = load_checkpoint(tmp_path / "sd.pt", config=four_heads)
    assert model.config.vision.heads == 4 and model.visual.transformer.resblocks[0].attn.heads == 4


# --- open_clip ------------------------------------------------------------------------------------


def test_open_clip_training_checkpoint(tmp_path):
    ref = reference_clip(seed=3)
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.98))
    param.grad = torch.ones(3)
    opt.step()
    ckpt = {
        "epoch": 3,
        "name": "run-1",
        "state_dict": {"module." + k: v for k, v in ref.state_dict().items()},
        "optimizer": opt.state_dict(),
    }
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    assert detect_format(tmp_path / "epoch_3.pt") == "open_clip"
    model, _ = load_checkpoint(tmp_path / "epoch_3.pt")
    assert_same_outputs(model, ref, 32)


@pytest.mark.parametrize("linear_projection", [False, True])
def test_open_clip_custom_text_layout(tmp_path, linear_projection):
    ref = reference_clip(seed=4)
    sd = to_open_clip_custom_text(ref.state_dict(), linear_projection)
    sd["text.attn_mask"] = torch.full((16, 16), float("-inf")).triu(1)  # a buffer old versions saved
    torch.save(sd, tmp_path / "custom.pt")
    assert detect_format(tmp_path / "custom.pt") == "open_clip"
    model, _ = load_checkpoint(tmp_path / "custom.pt")
    assert_same_outputs(model, ref, 32)


def test_open_clip_gelu_state_dict_needs_quick_gelu_override(tmp_path):
    source = random_clip(MICRO_GELU)
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "gelu.pt")
    assert load_checkpoint(tmp_path / "gelu.pt")[0].config.quick_gelu is True  # OpenAI's default guess
    model, _ = load_checkpoint(tmp_path / "gelu.pt", quick_gelu=False)
    assert model.config.quick_gelu is False
    # heads are not inferable (width 128 with 4 heads): pass the architecture
    model, _ = load_checkpoint(tmp_path / "gelu.pt", config=MICRO_GELU)
    x, t = images(2, 32), tokens(2)
    with torch.no_grad():
        assert torch.allclose(model(x, t)[0], source(x, t)[0], atol=1e-5)


def test_open_clip_hub_export_directory(tmp_path):
    from safetensors.torch import save_file

    source = random_clip(MICRO_GELU, seed=5)
    hub = tmp_path / "hub"
    hub.mkdir()
    cfg = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 16, "head_width": 32},
            "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 64, "heads": 4, "layers": 2},
        },
        "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    }
    (hub / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(to_open_clip_custom_text(source.state_dict()), str(hub / "open_clip_model.safetensors"))
    assert detect_format(hub) == "open_clip"
    for path in (hub, hub / "open_clip_model.safetensors"):
        model, pre = load_checkpoint(path)
        assert model.config == MICRO_GELU  # quick_gelu absent means exact GELU in open_clip
        assert pre == PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash")
        x, t = images(2, 32), tokens(2)
        with torch.no_grad():
            assert torch.equal(model(x, t)[0], source(x, t)[0])


def test_open_clip_hub_export_resnet_with_bin_weights(tmp_path):
    source = random_clip("tiny-rn", seed=6)
    cfg = source.config
    model_cfg = {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},  # head_width: default 64
        "text_cfg": {"context_length": 32, "width": 256, "heads": 4, "layers": 4},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(source.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model, pre = load_checkpoint(tmp_path)
    assert model.config == cfg and pre == PreprocessConfig(image_size=64)
    x, t = images(1, 64), tokens(2, 32)
    with torch.no_grad():
        assert torch.equal(model(x, t)[0], source(x, t)[0])


def test_plain_open_clip_state_dict_is_reported_as_openai_layout(tmp_path):
    torch.save(random_clip("micro").state_dict(), tmp_path / "plain.pt")
    assert detect_format(tmp_path / "plain.pt") == "openai"  # the same keys; nothing tells them apart


def test_open_clip_unsupported_architecture_is_named(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    cfg = {"model_cfg": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {}}}
    (hub / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save({}, hub / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="timm_model_name"):
        load_checkpoint(hub)


# --- cliplab's own format -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["micro", "tiny", "tiny-rn"])
def test_cliplab_round_trip(tmp_path, name):
    source = random_clip(name)
    pre = PreprocessConfig(image_size=source.image_size, interpolation="bilinear")
    out = save_checkpoint(source, tmp_path / "ckpt", preprocess=pre, extra={"step": 7, "data": "synthetic"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert detect_format(out) == "cliplab"
    model, loaded_pre = load_checkpoint(out)
    assert model.config == source.config and loaded_pre == pre
    assert read_header(out)["extra"] == {"step": 7, "data": "synthetic"}
    theirs = source.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    x, t = images(2, source.image_size), tokens(2, 32)
    with torch.no_grad():
        assert torch.equal(model(x, t)[0], source(x, t)[0])


def test_cliplab_lone_file_is_self_describing(tmp_path):
    source = random_clip("micro")
    lone = save_checkpoint(source, tmp_path / "micro.safetensors")
    assert lone.is_file() and detect_format(lone) == "cliplab"
    model, pre = load_checkpoint(lone)
    assert model.config == source.config and pre == PreprocessConfig(image_size=32)
    # the weights file of a checkpoint directory works on its own too
    directory = save_checkpoint(source, tmp_path / "dir")
    shutil.copy(directory / "model.safetensors", tmp_path / "copied.safetensors")
    assert load_checkpoint(tmp_path / "copied.safetensors")[0].config == source.config
    # and a weights file without our metadata takes its config from the config.json beside it
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(directory / "model.safetensors"))
    assert detect_format(directory / "model.safetensors") == "cliplab"
    assert load_checkpoint(directory / "model.safetensors")[0].config == source.config


def test_cliplab_save_over_existing_directory_keeps_other_files(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    save_checkpoint(random_clip("micro", seed=1), target)
    second = random_clip("micro", seed=2)
    save_checkpoint(second, target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert torch.equal(load_checkpoint(target)[0].visual.proj, second.visual.proj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary leftovers


@pytest.mark.parametrize("target", ["ckpt", "ckpt.safetensors"])
def test_cliplab_save_is_atomic(tmp_path, monkeypatch, target):
    import safetensors.torch

    def fail_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(random_clip("micro"), tmp_path / target)
    assert list(tmp_path.iterdir()) == []


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(is_orphan(q) for q in (p, *p.parents))
    }


@pytest.mark.parametrize("target", ["ckpt", "ckpt.safetensors", "hf"])
def test_failed_save_over_an_existing_checkpoint_keeps_it(tmp_path, monkeypatch, target):
    import safetensors.torch

    first = random_clip("micro", seed=1)
    save = save_hf_checkpoint if target == "hf" else save_checkpoint
    path = save(first, tmp_path / target)
    before = _files(tmp_path)
    real_save_file = safetensors.torch.save_file

    def fail_midway(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save(random_clip("micro", seed=2), path)
    monkeypatch.undo()
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [target]
    model, _ = load_checkpoint(path)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in model.state_dict().items())


# A child process that saves a model over an existing checkpoint and stalls half-way through writing
# the weights, so the test can SIGKILL it at a known point of the write.
_STALLED_WRITER = """
import sys, time
import safetensors.torch
import torch
import cliplab

def stalled(tensors, filename, metadata=None):
    data = safetensors.torch.save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        print("half written", flush=True)
        time.sleep(300)
        f.write(data[len(data) // 2 :])

safetensors.torch.save_file = stalled
torch.manual_seed(2)
cliplab.save(cliplab.create_model("micro"), sys.argv[1])
"""


@pytest.mark.parametrize("target", ["ckpt", "ckpt.safetensors"])
def test_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, target):
    first = random_clip("micro", seed=1)
    path = save_checkpoint(first, tmp_path / target)
    before = _files(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(300, child.kill)
    watchdog.start()
    try:
        line = child.stdout.readline()
        assert line.strip() == "half written", child.stderr.read() if not line else line
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    orphans = sorted(p for p in tmp_path.iterdir() if is_orphan(p))
    assert len(orphans) == 1  # the killed write's temporary, beside the untouched checkpoint
    assert _files(tmp_path) == before
    model, _ = load_checkpoint(path)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in model.state_dict().items())
    assert sorted(remove_orphans(tmp_path)) == orphans
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]


def test_cliplab_extra_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(random_clip("micro"), tmp_path / "c", extra={"tensor": torch.zeros(1)})
    assert not (tmp_path / "c").exists()


def test_cliplab_newer_version_is_refused(tmp_path):
    out = save_checkpoint(random_clip("micro"), tmp_path / "c")
    header = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(CheckpointError, match="version 99.*Upgrade"):
        load_checkpoint(out)


# --- key mismatches and bad files -----------------------------------------------------------------


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    sd = reference_clip().state_dict()
    broken = dict(sd)
    del broken["visual.ln_post.bias"]
    broken["visual.extra_thing"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(
        CheckpointError, match=r"broken\.pt.*openai.*missing.*visual\.ln_post\.bias.*unexpected.*extra_thing"
    ):
        load_checkpoint(tmp_path / "broken.pt")
    misshapen = dict(sd, **{"ln_final.bias": torch.zeros(5)})
    torch.save(misshapen, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"ln_final\.bias: file \(5,\) vs model \(128,\)"):
        load_checkpoint(tmp_path / "shape.pt")


def test_truncated_and_garbage_files_are_named(tmp_path, vit_archive):
    data = vit_archive.path.read_bytes()
    cases = {
        "truncated_jit.pt": data[: len(data) // 2],
        "truncated_sd.pt": _torch_save_bytes(reference_clip().state_dict(), tmp_path)[:5000],
        "random.pt": os.urandom(4096),
        "empty.pt": b"",
    }
    lone = save_checkpoint(random_clip("micro"), tmp_path / "m.safetensors").read_bytes()
    cases["truncated.safetensors"] = lone[: len(lone) - 1000]
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_checkpoint(path)


def _torch_save_bytes(obj, tmp_path: Path) -> bytes:
    torch.save(obj, tmp_path / "tmp.bin")
    return (tmp_path / "tmp.bin").read_bytes()


class _Payload:
    """Pickles to a call of os.mkdir: proof of execution if the marker directory appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"visual.proj": torch.zeros(1), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt.*refused.*mkdir"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_code_executing_pickle_in_a_torchscript_lookalike_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_jit.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/code/__torch__/model.py", "")
    assert detect_format(path) == "openai-jit"
    with pytest.raises(CheckpointError, match="evil_jit.pt.*Python global.*mkdir"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_name_and_non_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="ViT-Q/7.*ViT-B/32"):
        load_checkpoint("ViT-Q/7")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_format(tmp_path / "other.pt")


# --- downloads ------------------------------------------------------------------------------------


def test_available_models_are_openais():
    assert available_models() == [
        "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"
    ]  # fmt: skip


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CLIPLAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "cliplab"


class _Server:
    """A static file server on 127.0.0.1 counting the requests it answers."""

    def __init__(self, root: Path):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch, vit_archive):
    """A fake model name whose URL points at a jit archive served from localhost."""
    ref, data = vit_archive.ref, vit_archive.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    www = tmp_path / "www"
    (www / sha).mkdir(parents=True)
    (www / sha / "Fake.pt").write_bytes(data)
    server = _Server(www)
    monkeypatch.setitem(downloads._MODELS, "Fake/1", f"http://127.0.0.1:{server.port}/{sha}/Fake.pt")
    yield SimpleNamespace(ref=ref, server=server, www=www, cache=tmp_path / "cache", data=data)
    server.close()


def test_download_verifies_and_caches(served):
    model, _ = load_checkpoint("Fake/1", cache_dir=served.cache)
    assert_same_outputs(model, served.ref, 32)
    assert (served.cache / "Fake.pt").read_bytes() == served.data and served.server.requests == 1
    load_checkpoint("Fake/1", cache_dir=served.cache)
    assert served.server.requests == 1  # the verified cached copy is used, no second download
    # the file and the sidecar remembering its verified SHA256 (so the second load did not hash it)
    assert sorted(p.name for p in served.cache.iterdir()) == [".Fake.pt.sha256.json", "Fake.pt"]


def test_corrupt_cached_file_is_downloaded_again(served):
    served.cache.mkdir()
    (served.cache / "Fake.pt").write_bytes(served.data[:100])
    with pytest.warns(UserWarning, match="SHA256 does not match"):
        path = downloads.download_model("Fake/1", served.cache, progress=False)
    assert path.read_bytes() == served.data and served.server.requests == 1


def test_download_with_wrong_checksum_keeps_nothing(served, monkeypatch):
    wrong = "0" * 64  # the URL promises this checksum; the server sends the real archive
    (served.www / wrong).mkdir()
    (served.www / wrong / "Fake.pt").write_bytes(served.data)
    monkeypatch.setitem(downloads._MODELS, "Fake/1", f"http://127.0.0.1:{served.server.port}/{wrong}/Fake.pt")
    with pytest.raises(
        CheckpointError, match=f"SHA256 is {hashlib.sha256(served.data).hexdigest()}, expected {wrong}"
    ):
        downloads.download_model("Fake/1", served.cache, progress=False)
    assert list(served.cache.iterdir()) == []


def test_download_from_a_file_url(served, tmp_path):
    sha = hashlib.sha256(served.data).hexdigest()
    url = (served.www / sha / "Fake.pt").as_uri()
    assert downloads.download(url, tmp_path / "c2", progress=False).read_bytes() == served.data


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(downloads._MODELS, "Fake/2", f"http://127.0.0.1:{port}/{'a' * 64}/Fake2.pt")
    with pytest.raises(CheckpointError, match="Fake/2.*another machine.*local path"):
        load_checkpoint("Fake/2", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
