"""Architectures as data: frozen, validated dataclasses that round-trip through JSON.

Named configs live as JSON files in ``models/configs/`` (one per architecture). A config can also be
inferred from an OpenAI-layout state dict, which is how a bare checkpoint loads without a name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from importlib import resources
from typing import Any

from ..errors import CliplabError

VISION_KINDS = ("vit", "resnet")


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``kind="vit"`` is OpenAI's VisionTransformer, ``"resnet"`` its ModifiedResNet.

    For a ResNet, ``layers`` is the number of bottleneck blocks in each of the four stages and
    ``width`` the stem width (the final feature map has ``width * 32`` channels).
    ``stem_stride_conv`` says which of the stem's three 3x3 convolutions halves the resolution:
    1 in OpenAI's and open_clip's ResNets. With 2 (or 3) the first convolution(s) see every input
    pixel, which small inputs need (the demo's 32-pixel tower: thin strokes and the corners that
    tell a hexagon from a circle are a pixel wide); the weights have the same shapes either way, so
    only configs, not weights, tell the two apart.
    """

    kind: str = "vit"
    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    heads: int = 12
    patch_size: int = 32  # ViT only
    mlp_ratio: float = 4.0  # ViT only: MLP hidden width / width (ViT-g-14 and ViT-bigG-14 use others)
    stem_stride_conv: int = 1  # ResNet only: which stem convolution (1, 2 or 3) downsamples

    def __post_init__(self) -> None:
        _check_mlp_ratio(self.mlp_ratio, "vision")
        if self.stem_stride_conv not in (1, 2, 3) or isinstance(self.stem_stride_conv, bool):
            raise ValueError(f"vision.stem_stride_conv must be 1, 2 or 3, got {self.stem_stride_conv!r}")
        if self.kind != "resnet" and self.stem_stride_conv != 1:
            raise ValueError("vision.stem_stride_conv applies to ResNets only; leave it out for a ViT")
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision.kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.kind == "resnet":
            layers = tuple(self.layers) if isinstance(self.layers, (list, tuple)) else None
            if layers is None or len(layers) != 4:
                raise ValueError(f"vision.layers must be 4 stage depths for a ResNet, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(int(n) for n in layers))
            if self.image_size % 32:
                raise ValueError(
                    f"vision.image_size must be a multiple of 32 for a ResNet, got {self.image_size}"
                )
            if (self.width * 32) % self.heads:
                raise ValueError(f"vision.heads={self.heads} must divide the pooled width {self.width * 32}")
            if self.mlp_ratio != 4.0:
                raise ValueError(f"vision.mlp_ratio applies to ViTs only; a ResNet has {self.mlp_ratio}")
        else:
            if not isinstance(self.layers, int):
                raise ValueError(f"vision.layers must be an int for a ViT, got {self.layers!r}")
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"vision.image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
                )
            if self.width % self.heads:
                raise ValueError(f"vision.heads={self.heads} must divide vision.width={self.width}")

    @property
    def grid_size(self) -> int:
        return self.image_size // (32 if self.kind == "resnet" else self.patch_size)


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer; pooled at the end-of-text token (the highest id in each row)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _check_mlp_ratio(self.mlp_ratio, "text")
        if self.width % self.heads:
            raise ValueError(f"text.heads={self.heads} must divide text.width={self.width}")
        if self.context_length < 2:
            raise ValueError(f"text.context_length must be >= 2, got {self.context_length}")


def _check_mlp_ratio(ratio: float, tower: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
        raise ValueError(f"{tower}.mlp_ratio must be a number in (0, 64], got {ratio!r}")


def mlp_width(width: int, ratio: float) -> int:
    """The MLP hidden width of a transformer block: ``int(width * ratio)``, truncated as open_clip does
    (ViT-g-14: 6144, ViT-bigG-14: 8192; 96 x 4.9231 = 472.6 gives 472)."""
    return int(width * ratio)


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model: both towers, the joint embedding size and the activation."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # OpenAI's models use x * sigmoid(1.702 x); most later ones use exact GELU
    init_logit_scale: float = math.log(1 / 0.07)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["vision"]["layers"], tuple):
            d["vision"]["layers"] = list(d["vision"]["layers"])
        for tower in ("vision", "text"):  # OpenAI's ratio is left out, so older files stay byte-identical
            if d[tower]["mlp_ratio"] == 4.0:
                del d[tower]["mlp_ratio"]
        if d["vision"]["stem_stride_conv"] == 1:  # likewise OpenAI's stem
            del d["vision"]["stem_stride_conv"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> CLIPConfig:
        _check_keys(d, cls, source)
        _check_keys(d.get("vision", {}), VisionConfig, f"{source}.vision")
        _check_keys(d.get("text", {}), TextConfig, f"{source}.text")
        rest = {k: v for k, v in d.items() if k not in ("vision", "text")}
        return cls(vision=VisionConfig(**d.get("vision", {})), text=TextConfig(**d.get("text", {})), **rest)


def _check_keys(d: Mapping[str, Any], cls: type, source: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")


# --- named configs -------------------------------------------------------------------------------


@cache
def _named_configs() -> dict[str, CLIPConfig]:
    out = {}
    for entry in resources.files("cliplab.models").joinpath("configs").iterdir():
        if entry.name.endswith(".json"):
            d = json.loads(entry.read_text())
            name = d.pop("name")
            out[name] = CLIPConfig.from_dict(d, source=entry.name)
    return out


def list_configs() -> list[str]:
    """Names accepted by :func:`get_config` (OpenAI's architectures and small CPU configs)."""
    return sorted(_named_configs())


class UnknownConfigError(CliplabError, KeyError):
    """No named architecture has this name."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def get_config(name: str) -> CLIPConfig:
    """The named architecture, e.g. ``"ViT-B/32"``, ``"RN50"`` or ``"tiny"``."""
    configs = _named_configs()
    if name not in configs:
        raise UnknownConfigError(
            f"unknown model config {name!r}; available: {', '.join(sorted(configs))} (or a JSON config file)"
        )
    return configs[name]


# --- inference from an OpenAI-layout state dict -------------------------------------------------


def infer_config(state_dict: Mapping[str, Any], quick_gelu: bool = True) -> CLIPConfig:
    """Recover the architecture from OpenAI-layout weights.

    Head counts are not stored in the weights; like OpenAI's ``build_model`` we assume 64-dim heads
    (ViT and text: ``width // 64``, ResNet attention pool: ``width * 32 // 64``).
    """
    sd = state_dict
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        vision = VisionConfig(
            kind="vit",
            image_size=patch * grid,
            layers=layers,
            width=width,
            heads=max(1, width // 64),
            patch_size=patch,
            mlp_ratio=_mlp_ratio(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", width),
        )
    elif "visual.attnpool.positional_embedding" in sd:
        stages = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)
        )
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            kind="resnet", image_size=grid * 32, layers=stages, width=width, heads=width * 32 // 64
        )
    else:
        raise KeyError(
            "cannot infer the image tower: neither 'visual.proj' nor 'visual.attnpool.*' is in the weights"
        )
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(1, text_width // 64),
        layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        mlp_ratio=_mlp_ratio(sd, "transformer.resblocks.0.mlp.c_fc.weight", text_width),
    )
    return CLIPConfig(
        embed_dim=sd["text_projection"].shape[1], vision=vision, text=text, quick_gelu=quick_gelu
    )


def _mlp_ratio(sd: Mapping[str, Any], key: str, width: int) -> float:
    """4.0 (OpenAI's) unless the first block's MLP says otherwise; then a ratio that gives it back."""
    hidden = sd[key].shape[0] if key in sd else 4 * width
    if hidden == 4 * width:
        return 4.0
    ratio = hidden / width
    while mlp_width(width, ratio) < hidden:  # hidden / width may round down by an ulp
        ratio = math.nextafter(ratio, math.inf)
    return ratio
