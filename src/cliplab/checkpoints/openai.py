"""OpenAI's checkpoints: the released TorchScript ``.pt`` archives and plain state dicts.

The released files are ``torch.jit.save`` archives: a zip holding the pickled module tree
(``data.pkl``), the raw tensor bytes (``data/<n>``) and compiled TorchScript source (``code/``).
Opening one with ``torch.jit.load`` runs that TorchScript code (a module's ``__setstate__`` may read
or overwrite any file), so cliplab never does, not even as a fallback. A restricted unpickler reads
``data.pkl`` instead: it accepts only the handful of globals an archive of weights uses (its
``__torch__.*`` classes become inert attribute records, tensors are rebuilt from the raw bytes once
their sizes, offsets and strides are checked against the data) and refuses everything else. Which
attributes are parameters and buffers is read from the ``__parameters__`` / ``__buffers__``
declarations in ``code/``, as text; nothing is compiled.

An archive this reader cannot read (a quantized or sparse tensor, a module with a custom
``__setstate__``, an unknown global) is refused with a CheckpointError naming the construct. If the
file is trusted, re-export its weights as a plain state dict in a trusted environment.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import first_line
from .common import (
    OPENAI_METADATA_KEYS,
    CheckpointError,
    Loaded,
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
# Limits no genuine archive comes near (ViT-L/14's data.pkl is well under a megabyte): crafted
# input is refused before it can exhaust memory, the stack or the CPU.
_MAX_TEXT_BYTES = 256 << 20  # data.pkl, and all of code/ together
_MAX_DIMS = 64
_MAX_DEPTH = 100
_MAX_OBJECTS = 1_000_000
_STORAGE_KEY = re.compile(r"\w{1,64}")
_REEXPORT = (
    "cliplab never runs code from a checkpoint, so it does not hand such archives to torch.jit. If you "
    "trust the file, re-export its weights in a trusted environment (load it with torch.jit and "
    "torch.save its state_dict()) and load that file instead"
)


def read_openai(path: Path, contents: object | None = None) -> Loaded:
    """Weights of an OpenAI TorchScript archive or of a ``torch.save``-d OpenAI-layout state dict.

    ``contents`` is the file's already-read contents (``read_weights_file``), when the caller has
    them: the file is then not read again.
    """
    if contents is None and is_torchscript_zip(path):
        sd, fmt = read_torchscript_state_dict(path), "openai-jit"
    else:
        obj = read_weights_file(path, mmap=True) if contents is None else contents
        fmt = "openai"
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
            )
        sd = dict(obj)
    for key in OPENAI_METADATA_KEYS:
        sd.pop(key, None)
    return Loaded(sd, fmt)


def read_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, read without executing anything.

    Anything the reader cannot or will not read, corrupt or crafted, is a CheckpointError naming ``path``.
    """
    try:
        with zipfile.ZipFile(path) as z:
            return _SafeArchiveReader(z, Path(path).stat().st_size).state_dict()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # crafted data: TypeError from a REDUCE, RuntimeError from torch, MemoryError...
        raise CheckpointError(
            f"{path}: cannot read this TorchScript archive; it is truncated, corrupt or not a model "
            f"({type(exc).__name__}: {first_line(exc)}). Re-download it."
        ) from None


def _unsupported(construct: str) -> CheckpointError:
    return CheckpointError(
        f"refused to load: the archive uses {construct}, which cliplab's weights-only reader does not "
        f"support; {_REEXPORT}"
    )


class _ScriptObject:
    """Inert stand-in for a TorchScript object: its class name and its attributes, nothing else."""

    qualname = ""
    state: object = None


class _StorageType:
    """What ``torch.<X>Storage`` unpickles to: the element type's name, resolved when data is read."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _SafeArchiveReader:
    def __init__(self, z: zipfile.ZipFile, archive_bytes: int):
        self.z = z
        self.archive_bytes = archive_bytes
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError("not a TorchScript archive: no <archive>/data.pkl entry. Re-download it.")
        self.prefix = pickles[0][: -len("data.pkl")]
        self.storages: dict[str, torch.Tensor] = {}
        self.storage_ids: set[int] = set()
        self.tensor_bytes = 0
        self.classes: dict[str, type] = {}
        self.objects = 0
        self._check_byteorder()

    def state_dict(self) -> dict[str, torch.Tensor]:
        data = self.read_text_entry(self.prefix + "data.pkl", _MAX_TEXT_BYTES)
        root = _Unpickler(self, data).load()
        if not isinstance(root, _ScriptObject):
            raise CheckpointError(f"the archive's root object is a {type(root).__name__}, not a module")
        out: dict[str, torch.Tensor] = {}
        self.collect(root, "", self.declarations(), out, set())
        return out

    def _check_byteorder(self) -> None:
        name = self.prefix + "byteorder"
        if name in self.z.NameToInfo:
            order = self.read_text_entry(name, 64).decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise CheckpointError(
                    f"its tensors are stored {order}-endian and this machine is {sys.byteorder}-endian; "
                    "re-save the weights on this machine"
                )

    def read_text_entry(self, name: str, limit: int) -> bytes:
        """An entry's bytes, refusing (before reading) one that declares more than ``limit`` bytes."""
        try:
            info = self.z.getinfo(name)
        except KeyError:
            raise CheckpointError(f"the archive has no entry {name}; it is truncated or corrupt") from None
        if info.file_size > limit:
            raise CheckpointError(
                f"entry {name} declares {info.file_size} bytes (limit {limit}); the file is corrupt or crafted"
            )
        return self.z.read(info)

    def declarations(self) -> dict[str, list[str]]:
        """``{"__torch__.pkg.Class": parameter and buffer names}`` from the archive's TorchScript source."""
        out: dict[str, list[str]] = {}
        code, budget = self.prefix + "code/", _MAX_TEXT_BYTES
        for info in self.z.infolist():
            name = info.filename
            if name.startswith(code) and name.endswith(".py"):
                text = self.read_text_entry(name, budget).decode("utf-8", "replace")
                budget -= info.file_size
                module = name[len(code) : -len(".py")].replace("/", ".")
                for cls, params, buffers in _DECLARATION.findall(text):
                    out[f"{module}.{cls}"] = re.findall(r'"([^"]+)"', params + buffers)
        return out

    def script_class(self, qualname: str) -> type:
        if qualname not in self.classes:
            self.classes[qualname] = type("ScriptObject", (_ScriptObject,), {"qualname": qualname})
        return self.classes[qualname]

    def storage(self, storage_type: object, key: object, numel: object) -> torch.Tensor:
        """The flat tensor of ``data/<key>``, once its declared size is checked against ``numel``."""
        if not isinstance(storage_type, _StorageType):
            raise _unsupported(f"the storage type {storage_type!r:.60}")
        if not (isinstance(key, str) and _STORAGE_KEY.fullmatch(key)):
            raise CheckpointError(f"a tensor names its data {key!r:.60}, not an entry of the archive")
        if type(numel) is not int or numel < 0:
            raise CheckpointError(f"tensor data {key} declares {numel!r:.60} elements")
        dtype = _STORAGE_DTYPES[storage_type.name]
        if key in self.storages:
            flat = self.storages[key]
            if flat.dtype != dtype or flat.numel() != numel:
                raise CheckpointError(f"tensor data {key} is declared twice with different types or sizes")
            return flat
        name = f"{self.prefix}data/{key}"
        try:
            info = self.z.getinfo(name)
        except KeyError:
            raise CheckpointError(f"the archive has no entry {name}; it is truncated or corrupt") from None
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        # Both checked on the zip directory, before a byte is read or allocated. torch writes tensor
        # data uncompressed, so all of it together fits in the file: a compressed entry that inflates
        # beyond that (a zip bomb), or a directory that claims more than the file holds, is refused.
        if info.file_size != nbytes:
            raise CheckpointError(
                f"entry {name} holds {info.file_size} bytes, but its tensor declares {numel} x {dtype} = "
                f"{nbytes} bytes; the file is corrupt or crafted"
            )
        self.tensor_bytes += nbytes
        if self.tensor_bytes > self.archive_bytes:
            raise CheckpointError(
                f"its tensors declare {self.tensor_bytes} bytes of data (up to entry {name}), more than the "
                f"whole {self.archive_bytes}-byte file holds; the file is corrupt or crafted (a zip bomb)"
            )
        data = bytearray(nbytes)
        with self.z.open(info) as f:
            if f.readinto(data) != nbytes:
                raise CheckpointError(f"entry {name} is truncated")
        flat = torch.frombuffer(data, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        self.storages[key] = flat
        self.storage_ids.add(id(flat))
        return flat

    def rebuild_tensor(
        self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None
    ) -> torch.Tensor:
        """``torch._utils._rebuild_tensor_v2``, for a strided view that stays inside its storage."""
        if not (isinstance(storage, torch.Tensor) and id(storage) in self.storage_ids):
            raise CheckpointError("a tensor is built from something other than the archive's tensor data")
        size, stride = _dims(size, "size"), _dims(stride, "stride")
        if type(offset) is not int or offset < 0 or len(size) != len(stride):
            raise CheckpointError(
                f"a tensor has offset {offset!r:.40}, size {size} and stride {stride}; expected a "
                "non-negative offset and as many strides as sizes"
            )
        available, numel = storage.numel(), math.prod(size)
        end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if numel else offset
        # A genuine weight never repeats elements: a view larger than its data (stride 0) is refused
        # so a tiny file cannot declare a tensor of terabytes that would be materialised later.
        if end > available or numel > available:
            raise CheckpointError(
                f"a tensor of size {size}, stride {stride} at offset {offset} reaches beyond its "
                f"{available}-element data; the file is corrupt or crafted"
            )
        return storage.as_strided(size, stride, offset)

    def collect(
        self,
        obj: _ScriptObject,
        prefix: str,
        decls: dict[str, list[str]],
        out: dict[str, torch.Tensor],
        path: set[int],
    ) -> None:
        """Add the tensors of ``obj`` and its submodules to ``out`` under dotted names."""
        self.objects += 1
        if len(path) > _MAX_DEPTH or self.objects > _MAX_OBJECTS:
            raise CheckpointError("its module tree is implausibly deep or large; the file is crafted")
        if id(obj) in path:
            raise CheckpointError(
                f"module {prefix.rstrip('.') or 'root'} contains itself; the file is crafted"
            )
        state = obj.state
        if state is None:
            return
        if not isinstance(state, dict):
            raise _unsupported(
                f"a custom __setstate__ on {obj.qualname.removeprefix('__torch__.')} "
                f"({prefix.rstrip('.') or 'the root module'}; only TorchScript code can interpret its state)"
            )
        # Without a declaration (never seen in practice) every tensor attribute is taken as a weight.
        if obj.qualname in decls:
            names = decls[obj.qualname]
        else:
            names = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
        for name in names:
            if isinstance(state.get(name), torch.Tensor):
                out[f"{prefix}{name}"] = state[name]
        path = path | {id(obj)}
        for name, value in state.items():
            if isinstance(value, _ScriptObject):
                self.collect(value, f"{prefix}{name}.", decls, out, path)


def _dims(value: object, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) > _MAX_DIMS
        or not all(type(v) is int and v >= 0 for v in value)
    ):
        raise CheckpointError(
            f"a tensor's {what} is {value!r:.60}; expected at most {_MAX_DIMS} non-negative integers"
        )
    return tuple(value)


def _restore_type_tag(value, type_str):
    return value


class _Unpickler(pickle._Unpickler):
    """Python's own unpickler, with every global, persistent id and BUILD checked.

    The pure-Python implementation is used so BUILD can be restricted: in the C one, BUILD on any
    object calls its ``__setstate__`` or sets attributes on it (a tensor's, a class's), which a
    crafted pickle could use to reconfigure what it touches.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, reader: _SafeArchiveReader, data: bytes):
        super().__init__(io.BytesIO(data))
        self.reader = reader

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return self.reader.script_class(f"{module}.{name}")
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.reader.rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch.jit._pickle" and name in _JIT_LIST_HELPERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if module == "torch" or module.startswith("torch."):
            raise _unsupported(f"{module}.{name}")
        # A genuine TorchScript archive never names other Python globals: this file was crafted.
        raise CheckpointError(
            f"refused to load: the archive's data.pkl names the Python global {module}.{name}, which no "
            "archive of weights contains; the file was crafted or is not a model. cliplab never runs "
            "code from a checkpoint"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _unsupported(f"the persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid[:5]
        return self.reader.storage(storage_type, key, numel)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _ScriptObject) or inst.state is not None:
            raise CheckpointError(
                f"data.pkl sets the state of a {type(inst).__name__}; in an archive of weights only "
                "TorchScript objects have state, once. The file is corrupt or crafted"
            )
        inst.state = state

    dispatch[pickle.BUILD[0]] = load_build
