"""A copy of a CLIP image tower prepared for fast inference; features come back in float32.

::

    encoder = prepare_image_encoder(model)               # precision="auto": bfloat16 where the
    features = encoder.encode_image(images)              # hardware has it, else float32; (N, D) float32
    out = encode_images(model, images, preprocess=preprocess, precision="auto")   # the same, streamed

What the preparation does, on a deep copy (the caller's model is not touched):

* **BatchNorm folded into the convolution before it** (ResNet towers): eval-mode BatchNorm is an
  affine map per channel, so ``bn(conv(x)) = conv'(x)`` with the weights scaled by
  ``gamma / sqrt(var + eps)`` and a bias ``beta - mean * gamma / sqrt(var + eps)``, computed in float32
  from the original parameters. Fifty-three passes over the activations disappear.
* **channels-last memory format** (ResNet towers): oneDNN's CPU convolutions and cuDNN's tensor-core
  kernels work on NHWC; with NCHW tensors each convolution reorders its input and output.
* **bfloat16 (or float16) weights and activations** for every matrix product and convolution.
  LayerNorm still runs in float32 (cliplab's ``LayerNorm`` upcasts), and so do the softmax
  accumulations of the fused attention kernels. On CPUs with AVX512-BF16 or AMX, oneDNN runs
  bfloat16 matrix products at about twice the float32 rate, and half the bytes of weights move per
  image. The features are cast back to float32.

Precisions: ``"float32"`` (only the first two steps: the same numbers up to float rounding),
``"bfloat16"``, ``"float16"`` (CUDA only: CPUs have no fast half-precision units and it would be
slower than float32), ``"auto"`` (CUDA: bfloat16 where supported, else float16; CPU: bfloat16 when it
runs natively, else float32). Cosine similarity to the float32 features is above 0.999 for the
released architectures (``tests/test_fast_inference.py`` checks it on random weights;
``benchmarks/compare_encode_image.py`` reports it for ViT-B/32 and RN50).

The prepared encoder is for inference only: it has no gradients and its BatchNorm statistics are
frozen into the weights, so training it would not train the model it came from.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import UsageError
from ..models.modified_resnet import Bottleneck, ModifiedResNet
from ..models.vision_transformer import VisionTransformer

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FastImageEncoder(nn.Module):
    """An inference-only image tower: ``encode_image`` takes float images, returns float32 features."""

    def __init__(self, visual: nn.Module, dtype: torch.dtype, device: torch.device, config=None):
        super().__init__()
        self.visual = visual
        self.dtype = dtype
        self.device = device
        self.config = config  # the CLIPConfig it came from (embed_dim for the inference layer)
        self.channels_last = isinstance(visual, ModifiedResNet)

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images (any float dtype, any device) -> (N, embed_dim) float32."""
        if images.ndim != 4 or not images.is_floating_point():
            raise UsageError(
                f"expected preprocessed images as a float tensor (N, 3, H, W), got {tuple(images.shape)} "
                f"{images.dtype}"
            )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(device=self.device, dtype=self.dtype, memory_format=fmt, non_blocking=True)
        with torch.inference_mode():
            out = self.visual(x).float()
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype ``precision`` means on ``device``; a clear error where it cannot run well."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return torch.bfloat16 if bf16 else torch.float16
        if precision == "bfloat16" and not bf16:
            raise UsageError(
                f"precision='bfloat16': {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                "use precision='float16'"
            )
        return _DTYPES[precision]
    if device.type == "cpu":
        native = cpu_has_native_bfloat16()
        if precision == "auto":
            return torch.bfloat16 if native else torch.float32
        if precision == "float16":
            raise UsageError(
                "precision='float16' on the CPU: CPUs have no fast float16 matrix units, so it would run "
                "slower than float32; use precision='bfloat16' (or 'auto')"
            )
        if precision == "bfloat16" and not native:
            warnings.warn(
                "this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX); bfloat16 is emulated "
                "and may be slower than float32 (precision='auto' picks float32 here)",
                RuntimeWarning,
                stacklevel=3,
            )
        return _DTYPES[precision]
    if precision == "auto":
        return torch.float32
    return _DTYPES[precision]


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 matrix products natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def prepare_image_encoder(
    model: nn.Module, precision: str = "auto", *, device: str | torch.device | None = None
) -> FastImageEncoder:
    """A fast, inference-only copy of ``model``'s image tower (see the module docstring).

    ``model`` is a cliplab ``CLIP`` (or its ``visual`` tower); ``device`` defaults to the model's.
    The model itself is left as it is. Its BatchNorm layers must be in eval mode (their running
    statistics are what gets folded).
    """
    from ..checkpoints.common import unwrap_model

    config = None
    if isinstance(model, (ModifiedResNet, VisionTransformer)):
        visual = model
    else:
        try:
            clip = unwrap_model(model)
        except Exception:
            raise UsageError(
                f"prepare_image_encoder takes a cliplab CLIP model or its image tower, got {type(model).__name__}"
            ) from None
        visual, config = clip.visual, clip.config
    if device is None:
        device = next(visual.parameters()).device
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    if visual.training and any(isinstance(m, nn.BatchNorm2d) for m in visual.modules()):
        raise UsageError(
            "the model is in training mode: its BatchNorm statistics are not the ones inference uses; "
            "call model.eval() before prepare_image_encoder"
        )
    visual = copy.deepcopy(visual).float().eval().requires_grad_(False)
    if isinstance(visual, ModifiedResNet):
        fold_batchnorms(visual)
        visual = visual.to(memory_format=torch.channels_last)
    visual = visual.to(device=device, dtype=dtype)
    return FastImageEncoder(visual, dtype, device, config).eval()


def fold_batchnorms(resnet: ModifiedResNet) -> None:
    """Fold every eval-mode BatchNorm of a ModifiedResNet into the convolution before it, in place."""
    pairs = [(resnet, "conv1", "bn1"), (resnet, "conv2", "bn2"), (resnet, "conv3", "bn3")]
    for block in resnet.modules():
        if isinstance(block, Bottleneck):
            pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2"), (block, "conv3", "bn3")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, _fold(conv, bn))
        setattr(parent, bn_name, nn.Identity())


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    bias = bn.bias.float() - bn.running_mean.float() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.float() * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    fused.weight.copy_(conv.weight.float() * scale.view(-1, 1, 1, 1))
    fused.bias.copy_(bias)
    return fused.requires_grad_(False)
