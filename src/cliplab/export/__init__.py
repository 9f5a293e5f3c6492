"""Writing a cliplab model for other tools: transformers, open_clip and ONNX Runtime.

Each exporter fills a directory through :func:`cliplab.fileio.atomic_write_dir` (a new directory
appears whole; in an existing one only the exporter's own files are replaced, anything else stays)
and writes a model card (``README.md``) beside the weights.

* :func:`export_hf`        ``transformers.CLIPModel`` + ``CLIPProcessor`` (weights, config, tokenizer
  files, preprocessor config); ViT image towers only, as transformers has no ResNet CLIP.
* :func:`export_open_clip` open_clip's hub layout (``open_clip_config.json`` + safetensors), for
  ``open_clip.create_model_and_transforms("local-dir:DIR")`` or an upload to the Hub.
* :func:`export_onnx`      separate image and text encoder graphs with dynamic batch (and text
  length) plus ``cliplab_onnx.json``, for :class:`cliplab.onnx.Encoder`.
"""

from __future__ import annotations

from .formats import EXPORTERS, export_hf, export_onnx, export_open_clip

__all__ = ["EXPORTERS", "export_hf", "export_onnx", "export_open_clip"]
