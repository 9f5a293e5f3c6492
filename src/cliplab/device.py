"""Choosing the device a model runs on, with errors a user can act on."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device, checked to exist.

    A device that is not there (``cuda`` on a machine without a GPU, ``cuda:3`` on a two-GPU
    machine, a misspelt name) is a :class:`UsageError` naming the setting, before any work starts.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r}: CUDA is not available on this machine; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0"
            )
    elif device.type == "mps" and not (torch.backends.mps.is_available()):
        raise UsageError(f"device {name!r}: Apple MPS is not available on this machine; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {name!r}: cliplab runs on cpu, cuda or mps")
    return device
