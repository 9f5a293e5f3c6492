"""``cliplab.load("hf-hub:ORG/REPO")`` through huggingface_hub, without network.

Repositories are laid out on disk as huggingface_hub's cache holds them (``models--ORG--REPO/refs/``
and ``snapshots/<commit>/``), and huggingface_hub runs in offline mode, so the real download code
path resolves revisions and files exactly as it would after a download. Both layouts are covered:
open_clip's (``open_clip_config.json`` + weights) and transformers' (``config.json`` +
``model.safetensors``). The transformers-layout repository is written by transformers itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cliplab
from cliplab.checkpoints import CheckpointError
from cliplab.checkpoints.hub import parse_hub_id
from cliplab.export import export_hf, export_open_clip

pytestmark = pytest.mark.requires(
    "huggingface_hub", "cliplab.load('hf-hub:...') goes through huggingface_hub"
)
ROOT = Path(__file__).resolve().parents[1]


def fake_hub_repo(cache: Path, repo: str, files: dict[str, Path | bytes], revision: str = "main",
                  commit: str | None = None) -> str:  # fmt: skip
    """Put ``files`` into huggingface_hub's cache layout as revision ``revision``; returns the commit."""
    commit = commit or ("%040x" % (abs(hash((repo, revision))) % (1 << 160)))
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / revision).write_text(commit)
    return commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache, used by default, in offline mode."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def random_model(name: str = "micro", seed: int = 0) -> cliplab.CLIP:
    torch.manual_seed(seed)
    model = cliplab.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    return model


def directory_files(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in directory.iterdir() if p.is_file()}


def same_outputs(a: cliplab.CLIP, b: cliplab.CLIP) -> bool:
    size, ctx = a.image_size, a.context_length
    images = torch.randn(2, size, size, 3).permute(0, 3, 1, 2)
    ids = cliplab.tokenize(["a photo of a dog", "x"], context_length=ctx)
    with torch.no_grad():
        return torch.allclose(a.encode_image(images), b.encode_image(images), atol=1e-6) and torch.allclose(
            a.encode_text(ids), b.encode_text(ids), atol=1e-6
        )


def test_open_clip_layout_repository(offline_hub, tmp_path):
    model = random_model("tiny-rn")
    export = export_open_clip(model, tmp_path / "export")
    fake_hub_repo(offline_hub, "someone/clip-rn", directory_files(export))
    loaded, preprocess = cliplab.load("hf-hub:someone/clip-rn")
    assert loaded.config == model.config and same_outputs(model, loaded)
    assert preprocess.cfg.image_size == model.image_size


@pytest.mark.requires("transformers", "a transformers-layout repository written by transformers")
def test_transformers_layout_repository_written_by_transformers(offline_hub, tmp_path):
    import transformers

    model = random_model("micro")
    export_hf(model, tmp_path / "ours")
    hf_model = transformers.CLIPModel.from_pretrained(tmp_path / "ours")
    hf_model.save_pretrained(tmp_path / "theirs", safe_serialization=True)  # config.json + model.safetensors
    files = directory_files(tmp_path / "theirs")
    assert {"config.json", "model.safetensors"} <= set(files)
    files["preprocessor_config.json"] = tmp_path / "ours" / "preprocessor_config.json"
    fake_hub_repo(offline_hub, "someone/clip-vit", files)
    loaded, _ = cliplab.load("hf-hub:someone/clip-vit")
    assert same_outputs(model, loaded)


def test_revisions_select_snapshots(offline_hub, tmp_path):
    old, new = random_model(seed=1), random_model(seed=2)
    fake_hub_repo(
        offline_hub, "org/m", directory_files(export_open_clip(old, tmp_path / "old")), revision="v1"
    )
    fake_hub_repo(
        offline_hub, "org/m", directory_files(export_open_clip(new, tmp_path / "new")), revision="main"
    )
    assert same_outputs(cliplab.load("hf-hub:org/m@v1")[0], old)
    assert same_outputs(cliplab.load("hf-hub:org/m")[0], new)
    # a commit hash names its snapshot directly
    commit = (offline_hub / "models--org--m" / "refs" / "v1").read_text()
    assert same_outputs(cliplab.load(f"hf-hub:org/m@{commit}")[0], old)


def test_cache_dir_argument_is_the_hub_cache(offline_hub, tmp_path):
    other = tmp_path / "elsewhere"
    model = random_model()
    fake_hub_repo(other, "org/m", directory_files(export_open_clip(model, tmp_path / "e")))
    assert same_outputs(cliplab.load("hf-hub:org/m", download_root=other)[0], model)


def test_offline_and_not_cached_names_the_files_to_fetch(offline_hub):
    with pytest.raises(CheckpointError) as err:
        cliplab.load("hf-hub:org/absent")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message
    assert "https://huggingface.co/org/absent/resolve/main/open_clip_config.json" in message
    assert "pass that directory to cliplab.load" in message


def test_missing_weights_are_named(offline_hub, tmp_path):
    export = export_open_clip(random_model(), tmp_path / "e")
    fake_hub_repo(offline_hub, "org/noweights", {"open_clip_config.json": export / "open_clip_config.json"})
    with pytest.raises(CheckpointError, match="could not get the weights.*open_clip_model.safetensors"):
        cliplab.load("hf-hub:org/noweights")


def test_repository_with_unsupported_open_clip_architecture_is_refused(offline_hub, tmp_path):
    export = export_open_clip(random_model(), tmp_path / "e")
    cfg = json.loads((export / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["pool_type"] = "avg"
    fake_hub_repo(offline_hub, "org/avgpool", {
        "open_clip_config.json": json.dumps(cfg).encode(),
        "open_clip_model.safetensors": export / "open_clip_model.safetensors",
    })  # fmt: skip
    with pytest.raises(CheckpointError, match=r"vision_cfg\.pool_type='avg'"):
        cliplab.load("hf-hub:org/avgpool")


@pytest.mark.parametrize("bad", ["hf-hub:", "hf-hub:noslash", "hf-hub:a/b/c", "hf-hub:a b/c"])
def test_malformed_hub_ids(bad):
    with pytest.raises(CheckpointError, match="hf-hub:ORG/REPO"):
        parse_hub_id(bad)


def test_environment_variables_of_huggingface_hub_are_honoured(tmp_path):
    """A fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE come from the environment alone."""
    cache = tmp_path / "env-cache"
    model = random_model()
    fake_hub_repo(cache, "org/envmodel", directory_files(export_open_clip(model, tmp_path / "e")))
    weights_sum = float(sum(p.detach().double().sum() for p in model.parameters()))
    code = (
        "import cliplab\n"
        "m, _ = cliplab.load('hf-hub:org/envmodel')\n"
        "print(float(sum(p.double().sum() for p in m.parameters())))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_unused"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout.split()[-1]) - weights_sum) < 1e-6


def test_without_huggingface_hub_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"pip install 'cliplab\[hub\]'"):
        cliplab.load("hf-hub:org/m")
