"""OpenAI's checkpoints: the released TorchScript ``.pt`` archives and plain state dicts.

The released files are ``torch.jit.save`` archives: a zip holding the pickled module tree
(``data.pkl``), the raw tensor bytes (``data/<n>``) and compiled TorchScript source (``code/``).
We read the weights without ``torch.jit.load``: a restricted unpickler accepts only the handful of
globals a TorchScript archive uses (its ``__torch__.*`` classes become inert attribute records,
tensors are rebuilt from the raw bytes) and refuses everything else, so loading runs neither
Python nor TorchScript code. Which attributes are parameters and buffers is read from the
``__parameters__`` / ``__buffers__`` declarations in ``code/``.

Only if an archive uses a torch construct this reader does not know do we fall back to
``torch.jit.load``. That is acceptable in the ``weights_only`` sense: its unpickler resolves classes
from the archive's own TorchScript compilation unit and a fixed set of torch builtins, never
arbitrary Python objects, though it does compile the archive's TorchScript code.
"""

from __future__ import annotations

import collections
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import torch

from .common import (
    OPENAI_METADATA_KEYS,
    CheckpointError,
    Loaded,
    _first_line,
    is_torchscript_zip,
    read_weights_file,
)

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Helpers the TorchScript pickler emits for typed lists; for reading weights they are identities.
_JIT_LIST_HELPERS = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}
_DECLARATION = re.compile(
    r"^class (\w+)\(Module\):\s*\n\s*__parameters__ = \[([^\]]*)\]\s*\n\s*__buffers__ = \[([^\]]*)\]", re.M
)


def read_openai(path: Path) -> Loaded:
    """Weights of an OpenAI TorchScript archive or of a ``torch.save``-d OpenAI-layout state dict."""
    if is_torchscript_zip(path):
        sd, fmt = read_torchscript_state_dict(path), "openai-jit"
    else:
        obj, fmt = read_weights_file(path), "openai"
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
            )
        sd = dict(obj)
    for key in OPENAI_METADATA_KEYS:
        sd.pop(key, None)
    return Loaded(sd, fmt)


def read_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, read without executing anything."""
    try:
        with zipfile.ZipFile(path) as z:
            return _SafeArchiveReader(z).state_dict()
    except _NeedsTorchScript as exc:
        warnings.warn(
            f"{path}: the archive uses {exc}, which cliplab's tensor-only reader does not handle; "
            "falling back to torch.jit.load (TorchScript deserialisation, no arbitrary Python).",
            stacklevel=3,
        )
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        KeyError,
        ValueError,
        RuntimeError,
        pickle.UnpicklingError,
    ) as exc:
        if isinstance(exc, CheckpointError):
            raise CheckpointError(f"{path}: {exc}") from None
        raise CheckpointError(
            f"{path}: cannot read this TorchScript archive; it is truncated or corrupt "
            f"({type(exc).__name__}: {_first_line(exc)}). Re-download it."
        ) from None
    return _jit_load_state_dict(path)


def _jit_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: torch.jit.load failed ({_first_line(exc)})") from None
    return {k: v.detach() for k, v in module.state_dict().items()}


class _NeedsTorchScript(Exception):
    """The archive uses a torch global this reader does not rebuild itself."""


class _ScriptObject:
    """Inert stand-in for a TorchScript object: its class name and its attributes, nothing else."""

    qualname = ""

    def __setstate__(self, state: object) -> None:
        self.state = state


@cache
def _script_class(qualname: str) -> type:
    return type("ScriptObject", (_ScriptObject,), {"qualname": qualname})


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _restore_type_tag(value, type_str):
    return value


class _SafeArchiveReader:
    def __init__(self, z: zipfile.ZipFile):
        self.z = z
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise KeyError("no <archive>/data.pkl entry")
        self.prefix = pickles[0][: -len("data.pkl")]
        self.storages: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        root = _Unpickler(self, self.z.open(self.prefix + "data.pkl")).load()
        if not isinstance(root, _ScriptObject):
            raise CheckpointError(f"the archive's root object is a {type(root).__name__}, not a module")
        out: dict[str, torch.Tensor] = {}
        _collect(root, "", self.declarations(), out)
        return out

    def declarations(self) -> dict[str, list[str]]:
        """``{"__torch__.pkg.Class": parameter and buffer names}`` from the archive's TorchScript source."""
        out = {}
        code = self.prefix + "code/"
        for name in self.z.namelist():
            if name.startswith(code) and name.endswith(".py"):
                module = name[len(code) : -len(".py")].replace("/", ".")
                for cls, params, buffers in _DECLARATION.findall(
                    self.z.read(name).decode("utf-8", "replace")
                ):
                    out[f"{module}.{cls}"] = re.findall(r'"([^"]+)"', params + buffers)
        return out

    def storage(self, storage_type: _StorageType, key: str, numel: int) -> torch.Tensor:
        if key not in self.storages:
            data = bytearray(self.z.read(f"{self.prefix}data/{key}"))
            flat = (
                torch.frombuffer(data, dtype=storage_type.dtype)
                if data
                else torch.empty(0, dtype=storage_type.dtype)
            )
            if flat.numel() < numel:
                raise ValueError(f"tensor data {key} holds {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


class _Unpickler(pickle.Unpickler):
    def __init__(self, reader: _SafeArchiveReader, file):
        super().__init__(file)
        self.reader = reader

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in _JIT_LIST_HELPERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if module == "torch" or module.startswith("torch."):
            raise _NeedsTorchScript(f"{module}.{name}")
        # A genuine TorchScript archive never names other Python globals: this file was crafted.
        raise CheckpointError(
            f"refused to load: the archive's data.pkl names the Python global {module}.{name}"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _NeedsTorchScript(f"persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise _NeedsTorchScript(f"storage type {storage_type!r:.60}")
        return self.reader.storage(storage_type, str(key), int(numel))


def _collect(
    obj: _ScriptObject, prefix: str, decls: dict[str, list[str]], out: dict[str, torch.Tensor]
) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    # Without a declaration (never seen in practice) every tensor attribute is taken as a weight.
    if obj.qualname in decls:
        names = decls[obj.qualname]
    else:
        names = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    for name in names:
        if isinstance(state.get(name), torch.Tensor):
            out[prefix + name] = state[name]
    for name, value in state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", decls, out)
