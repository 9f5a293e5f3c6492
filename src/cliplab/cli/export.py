"""`cliplab export {hf,open_clip,onnx} MODEL OUTDIR`: write a model for transformers, open_clip or ONNX Runtime.

MODEL is anything ``cliplab.load`` accepts (a checkpoint of any format, an OpenAI model name,
``hf-hub:ORG/REPO``). A non-empty OUTDIR is refused unless ``--overwrite``; even then only the
export's own files are replaced (anything else in OUTDIR stays). Every argument and the model are
checked before OUTDIR is touched. The directory gets a model card (README.md), with the training
settings and evaluation results of the run when MODEL is a run's ``final/`` directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = {
    "hf": "transformers CLIPModel + CLIPProcessor directory (ViT image towers only)",
    "open_clip": "open_clip hub layout (open_clip_config.json + open_clip_model.safetensors)",
    "onnx": "image and text encoder graphs for ONNX Runtime (cliplab.onnx.Encoder), validated against PyTorch",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "format", choices=list(FORMATS), help="; ".join(f"{k}: {v}" for k, v in FORMATS.items())
    )
    parser.add_argument(
        "model", metavar="MODEL", help="checkpoint path, OpenAI model name or hf-hub:ORG/REPO"
    )
    parser.add_argument("out", metavar="OUTDIR", type=Path, help="output directory (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUTDIR")
    parser.add_argument(
        "--quick-gelu",
        choices=("auto", "yes", "no"),
        default="auto",
        help="activation for checkpoints that do not record it (default: what the file says, else QuickGELU)",
    )


def run(args: argparse.Namespace) -> int:
    from cliplab.checkpoints import load_checkpoint
    from cliplab.checkpoints.card import find_run_dir
    from cliplab.export import EXPORTERS
    from cliplab.fileio import check_output_dir

    check_output_dir(args.out, args.overwrite)
    quick_gelu = {"auto": None, "yes": True, "no": False}[args.quick_gelu]
    model, preprocess = load_checkpoint(args.model, quick_gelu=quick_gelu)
    local = Path(args.model)
    extra = _extra(local) if local.exists() else None
    out = EXPORTERS[args.format](
        model,
        args.out,
        preprocess=preprocess,
        source=str(args.model),
        run_dir=find_run_dir(local) if local.is_dir() else None,
        extra=extra,
    )
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"wrote {args.format} export of {args.model} to {out}: {', '.join(files)}")
    return 0


def _extra(path: Path) -> dict | None:
    """The ``extra`` of a cliplab checkpoint (its training settings), for the model card."""
    from cliplab.checkpoints import detect_format, read_header

    try:
        return read_header(path).get("extra") if detect_format(path) == "cliplab" else None
    except Exception:  # a card without training settings is still a card
        return None
