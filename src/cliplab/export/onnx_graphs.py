"""ONNX export: one graph per encoder, checked with ONNX Runtime against PyTorch before it is kept.

``image_encoder.onnx``: ``pixel_values`` float32 (N, 3, S, S) -> ``image_embeds`` (N, embed_dim).
``text_encoder.onnx``:  ``input_ids`` int64 (N, L) -> ``text_embeds`` (N, embed_dim), for any
1 <= L <= context_length. Both N and L are symbolic in the graph (``torch.export`` dynamic shapes),
so no batch's size or length is baked in. The text graph runs the transformer over all L positions
it is given and reads each row at its end-of-text token (``ArgMax`` over the ids, as
``CLIP.encode_text``); with the causal mask, positions after that token cannot change the result,
so a caller may cut the ids after the longest row's end-of-text token and get the same features
faster: :class:`cliplab.onnx.Encoder` does exactly that.

Features are not normalised (as ``encode_image``/``encode_text``); ``cliplab_onnx.json`` records
the architecture, preprocessing, ``logit_scale`` and the validation's largest differences.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.card import CARD_FILE, model_card, write_card
from ..checkpoints.common import default_preprocess, unwrap_model
from ..errors import CliplabError
from ..fileio import atomic_write_dir
from ..models import CLIP
from ..onnx import FORMAT, META_FILE, VERSION
from ..transforms import PreprocessConfig

IMAGE_GRAPH = "image_encoder.onnx"
TEXT_GRAPH = "text_encoder.onnx"
TOLERANCE = 1e-4  # largest accepted |ONNX Runtime - PyTorch|, relative to the features' scale
MAX_BATCH = 1 << 16
# Above this many bytes of weights a graph keeps them in a separate .data file (protobuf's 2 GiB limit).
_INLINE_LIMIT = 1_800_000_000


class OnnxExportError(CliplabError, RuntimeError):
    """ONNX export is not possible here (a missing package) or its graphs disagree with PyTorch."""


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # full_length: all L given positions, never a length read from this batch's data
        return self.model.encode_text(input_ids, full_length=True)


def export_onnx(
    model: CLIP,
    out_dir: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    source: str | None = None,
    run_dir: Path | None = None,
    extra: dict | None = None,
) -> Path:
    """Write both encoder graphs, their metadata and a model card into ``out_dir``.

    The graphs are run with ONNX Runtime on random images and real token ids (batch 1 and 3; text
    length 5 and the full context) and compared with PyTorch before anything reaches ``out_dir``.
    """
    _require("onnx", "onnxscript", "onnxruntime")
    model = copy.deepcopy(unwrap_model(model)).to(device="cpu", dtype=torch.float32)
    model.eval()
    preprocess = preprocess or default_preprocess(model.config)
    card = model_card(model, preprocess, "onnx", extra=extra, run_dir=run_dir, source=source)
    out_dir = Path(out_dir)
    inline = sum(p.numel() * 4 for p in model.parameters()) < _INLINE_LIMIT

    def write(tmp: Path) -> None:
        _export_graphs(model, tmp, inline)
        diffs = validate(model, tmp)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": model.config.to_dict(),
            "preprocess": preprocess.to_dict(),
            "logit_scale": float(model.logit_scale.detach().exp()),
            "image_graph": IMAGE_GRAPH,
            "text_graph": TEXT_GRAPH,
            "validation_max_abs_diff": diffs,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        write_card(tmp, card, existing=out_dir / CARD_FILE)

    return atomic_write_dir(out_dir, write)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxExportError(f"ONNX export needs {', '.join(missing)}; pip install 'cliplab[export]'")


@torch.no_grad()
def _export_graphs(model: CLIP, directory: Path, inline: bool) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    length = torch.export.Dim("length", min=1, max=model.context_length)
    size = model.image_size
    # Example inputs of sizes other than 0/1 and the maximum, so the exporter cannot specialise on them.
    images = torch.randn(2, 3, size, size)
    ids = torch.zeros(2, min(3, model.context_length), dtype=torch.long)
    ids[:, -1] = model.vocab_size - 1
    graphs = (
        (_ImageEncoder(model), (images,), IMAGE_GRAPH, "pixel_values", "image_embeds", {"pixel_values": {0: batch}}),
        (_TextEncoder(model), (ids,), TEXT_GRAPH, "input_ids", "text_embeds", {"input_ids": {0: batch, 1: length}}),
    )  # fmt: skip
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs each operator library it skips (torchvision's...)
    try:
        for graph in graphs:
            _export_one(*graph, directory, inline)
    finally:
        quiet.setLevel(level)


def _export_one(module, args, name, input_name, output_name, dynamic, directory: Path, inline: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=not inline,
            verbose=False,
        )
    program.save(str(directory / name), external_data=not inline)


def validate(model: CLIP, directory: Path, batches: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| per case; OnnxExportError beyond :data:`TOLERANCE`."""
    import onnxruntime as ort

    from ..tokenizer import get_tokenizer

    options = ort.SessionOptions()
    options.log_severity_level = 3
    image_session = ort.InferenceSession(
        str(directory / IMAGE_GRAPH), options, providers=["CPUExecutionProvider"]
    )
    text_session = ort.InferenceSession(
        str(directory / TEXT_GRAPH), options, providers=["CPUExecutionProvider"]
    )
    g = torch.Generator().manual_seed(0)
    texts = ["a photo of a dog", "a diagram", "a very long caption " * 20, "x"]
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for n in batches:
            images = torch.randn(n, 3, model.image_size, model.image_size, generator=g)
            got = image_session.run(None, {"pixel_values": images.numpy()})[0]
            diffs[f"image_batch{n}"] = _diff(got, model.encode_image(images))
            for length in sorted({min(5, model.context_length), model.context_length}):
                ids = get_tokenizer()((texts * n)[:n], context_length=length, truncate=True)
                got = text_session.run(None, {"input_ids": ids.numpy()})[0]
                diffs[f"text_batch{n}_length{length}"] = _diff(got, model.encode_text(ids))
    bad = {k: v for k, v in diffs.items() if v > TOLERANCE}
    if bad:
        raise OnnxExportError(
            f"the exported graphs disagree with PyTorch beyond {TOLERANCE} ({bad}); nothing was written. "
            "Please report this with the model's config"
        )
    return diffs


def _diff(got, want: torch.Tensor) -> float:
    """Max abs difference, scaled down when the features themselves are large."""
    want = want.numpy()
    scale = max(1.0, float(abs(want).max()))
    return float(abs(got - want).max()) / scale
