"""Copy open_clip's model-config and pretrained-weight tables into cliplab, or check the copy is current.

The tables are facts published by open_clip (MIT licence, see ``src/cliplab/checkpoints/data/NOTICE``):
each architecture's ``model_cfg`` and, for each pretrained tag, where its weights live (a Hugging
Face Hub repository and/or a URL), the checksum open_clip verifies, and its preprocessing. cliplab
reads them at run time (``cliplab.list_pretrained``); nothing here imports open_clip's code there.

Run in an environment with open_clip installed (it needs torchvision, so not cliplab's own venv)::

    /work/cmpenv/bin/python benchmarks/check_open_clip_tables.py write   # regenerate the JSON files
    /work/cmpenv/bin/python benchmarks/check_open_clip_tables.py check   # exit 1 if they are stale
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "cliplab" / "checkpoints" / "data"
MODELS_FILE = DATA / "open_clip_models.json"
PRETRAINED_FILE = DATA / "open_clip_pretrained.json"


def published_sha256(url: str) -> str:
    """The checksum (or checksum prefix) open_clip verifies for a URL, by its own rule; '' if none."""
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        return os.path.splitext(os.path.basename(url))[0].split("-")[-1]
    return ""


def tables() -> tuple[dict, dict]:
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS
    from open_clip.pretrained import _PRETRAINED

    source = f"open_clip_torch {open_clip.__version__}"
    models = {"source": source, "models": {name: cfg for name, cfg in sorted(_MODEL_CONFIGS.items())}}
    pretrained: dict[str, dict] = {}
    for name, tags in _PRETRAINED.items():
        for tag, cfg in tags.items():
            entry = {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v not in ("", None)
            }
            sha = published_sha256(cfg.get("url") or "")
            if sha:
                entry["sha256"] = sha
            pretrained.setdefault(name, {})[tag] = entry
    return models, {"source": source, "pretrained": pretrained}


def main(mode: str) -> int:
    models, pretrained = tables()
    if mode == "write":
        DATA.mkdir(parents=True, exist_ok=True)
        MODELS_FILE.write_text(json.dumps(models, indent=1) + "\n")
        PRETRAINED_FILE.write_text(json.dumps(pretrained, indent=1) + "\n")
        n_tags = sum(len(t) for t in pretrained["pretrained"].values())
        print(
            f"wrote {len(models['models'])} model configs and {n_tags} pretrained tags ({models['source']})"
        )
        return 0
    stale = [
        f.name for f, table in ((MODELS_FILE, models), (PRETRAINED_FILE, pretrained))
        if json.loads(f.read_text()) != json.loads(json.dumps(table))
    ]  # fmt: skip
    print("stale: " + ", ".join(stale) if stale else "tables are current")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "check"))
