"""Loading never runs code from a file: crafted checkpoints of every format are refused, harmlessly.

Each crafted file carries a payload with a visible side effect: it overwrites the first bytes of a
``victim`` file or creates a ``marker`` path. Every test asserts both that the load is refused with
a one-line CheckpointError naming the file and that the side effect did not happen. Where a payload
can be fired on purpose through the unsafe loader (``torch.jit.load``, ``weights_only=False``), a
test does so, to prove the crafted files are live exploits and the refusals are what stops them.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cliplab
from cliplab.checkpoints import CheckpointError, detect_format, load_checkpoint
from cliplab.checkpoints import openai as openai_format

SRC = Path(cliplab.__file__).parent
ORIGINAL = b"original bytes of a file the payloads try to overwrite\n"


@pytest.fixture
def victim(tmp_path):
    """A file a payload overwrites and a path it creates; ``untouched()`` says neither happened."""
    target = tmp_path / "victim.txt"
    target.write_bytes(ORIGINAL)
    marker = tmp_path / "pwned"

    class Victim:
        path, created = target, marker

        @staticmethod
        def untouched() -> bool:
            return target.read_bytes() == ORIGINAL and not marker.exists()

    return Victim


def assert_refused(path: Path, match: str = "", load=load_checkpoint) -> CheckpointError:
    """The load raises a one-line CheckpointError that names ``path`` (and matches ``match``)."""
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert re.search(match, message), message
    return info.value


# --- payloads -------------------------------------------------------------------------------------


class _FileWriter(torch.nn.Module):
    """A scripted module whose TorchScript ``__setstate__`` overwrites bytes of ``target`` (torch.from_file).

    ``extra`` is saved with the module; a quantized tensor is one the safe reader does not rebuild.
    """

    def __init__(self, target: str, extra: torch.Tensor):
        super().__init__()
        self.target = target
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.extra, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.training = state[2]
        self.extra = torch.from_file(state[0], True, 4, dtype=torch.uint8)
        self.extra.fill_(33)  # b"!!!!" over the victim's first bytes


def file_writer_archive(path: Path, target: Path, quantized: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of quantized tensors and of torch.jit
        extra = torch.ones(4)
        if quantized:
            extra = torch.quantize_per_tensor(extra, 0.1, 0, torch.quint8)
        torch.jit.script(_FileWriter(str(target), extra)).save(str(path))
    return path


class _Reduce:
    """Pickles to ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(victim) -> dict[str, _Reduce]:
    return {
        "os.system": _Reduce(os.system, f"touch {shlex.quote(str(victim.created))}"),
        "exec": _Reduce(exec, f"open({str(victim.path)!r}, 'wb').write(b'pwned')"),
        "os.mkdir": _Reduce(os.mkdir, str(victim.created)),
    }


def clip_like(payload) -> dict:
    """A small OpenAI-layout state dict with the payload among its entries."""
    return {"token_embedding.weight": torch.zeros(4, 2), "visual.proj": torch.zeros(2, 2), "x": payload}


# --- a tiny pickle assembler for TorchScript-shaped data.pkl files ---------------------------------


@dataclass
class G:
    """A GLOBAL opcode naming ``module.name``."""

    module: str
    name: str


@dataclass
class Call:
    func: object
    args: tuple


@dataclass
class Obj:
    """A TorchScript object: ``cls`` instantiated by NEWOBJ, then BUILD with ``state``."""

    cls: G
    state: object


@dataclass
class Pid:
    value: tuple


@dataclass
class Raw:
    opcodes: bytes


def _ops(v) -> bytes:
    if isinstance(v, Raw):
        return v.opcodes
    if isinstance(v, G):
        return b"c" + f"{v.module}\n{v.name}\n".encode()
    if isinstance(v, Call):
        return _ops(v.func) + _ops(tuple(v.args)) + b"R"
    if isinstance(v, Obj):
        return _ops(v.cls) + b")\x81" + _ops(v.state) + b"b"
    if isinstance(v, Pid):
        return _ops(v.value) + b"Q"
    if v is None or isinstance(v, bool):
        return {None: b"N", True: b"\x88", False: b"\x89"}[v]
    if isinstance(v, int):
        n = (v.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)
    if isinstance(v, float):
        return b"G" + struct.pack(">d", v)
    if isinstance(v, str):
        return b"X" + struct.pack("<I", len(v.encode())) + v.encode()
    if isinstance(v, tuple):
        return b"(" + b"".join(map(_ops, v)) + b"t"
    if isinstance(v, list):
        return b"](" + b"".join(map(_ops, v)) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(_ops(k) + _ops(x) for k, x in v.items()) + b"u"
    raise TypeError(v)


def dumps(v) -> bytes:
    return b"\x80\x02" + _ops(v) + b"."


def tensor(key="0", numel=4, size=(2, 2), stride=(2, 1), offset=0, storage="FloatStorage"):
    """What the TorchScript pickler writes for a tensor: _rebuild_tensor_v2 of a persistent storage."""
    pid = Pid(("storage", G("torch", storage), key, "cpu", numel))
    hooks = Call(G("collections", "OrderedDict"), ())
    return Call(G("torch._utils", "_rebuild_tensor_v2"), (pid, offset, size, stride, False, hooks))


def module(**state) -> Obj:
    return Obj(G("__torch__.m", "M"), {"training": False, **state})


WEIGHT = torch.arange(4, dtype=torch.float32)


def write_archive(path: Path, root, data: dict | None = None, extra: dict | None = None) -> Path:
    """A zip laid out like ``torch.jit.save``'s: data.pkl, data/<key> (stored), code/, constants.pkl."""
    data = {"0": WEIGHT.numpy().tobytes()} if data is None else data
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", root if isinstance(root, bytes) else dumps(root))
        for key, value in data.items():
            z.writestr(f"archive/data/{key}", value)
        z.writestr("archive/constants.pkl", dumps(()))
        z.writestr(
            "archive/code/__torch__/m.py",
            'class M(Module):\n  __parameters__ = ["weight", ]\n  __buffers__ = []\n',
        )
        z.writestr("archive/version", "3\n")
        for name, value in (extra or {}).items():
            z.writestr(f"archive/{name}", value)
    return path


def rewrite_entry(src: Path, dst: Path, suffix: str, edit) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``edit(bytes)`` applied to the entry ending in ``suffix``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, edit(data) if info.filename.endswith(suffix) else data)
    return dst


# --- (a) TorchScript archives whose code writes files ----------------------------------------------


@pytest.mark.parametrize("quantized", [True, False], ids=["quantized-tensor", "plain-tensor"])
def test_scripted_setstate_that_writes_a_file_is_refused(tmp_path, victim, quantized):
    path = file_writer_archive(tmp_path / "evil.pt", victim.path, quantized)
    assert detect_format(path) == "openai-jit"
    construct = "_rebuild_qtensor" if quantized else r"custom __setstate__ on \S*_FileWriter"
    assert_refused(path, f"refused to load.*{construct}.*never runs code.*re-export", load=cliplab.load)
    assert_refused(path, construct, load=openai_format.read_torchscript_state_dict)
    assert victim.untouched()
    # The payload is live: TorchScript's own loader runs it and overwrites the victim's bytes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))
    assert victim.path.read_bytes() == b"!!!!" + ORIGINAL[4:]


def test_genuine_archive_edited_to_use_an_unknown_torch_global(tmp_path, victim):
    """A real torch.jit.save archive whose data.pkl was edited: an unknown global, then a crafted pid."""
    source = file_writer_archive(tmp_path / "source.pt", victim.path, quantized=False)
    unknown = rewrite_entry(
        source, tmp_path / "global.pt", "/data.pkl",
        lambda d: d.replace(b"torch._utils\n_rebuild_tensor_v2", b"torch\nfrom_file"),
    )  # fmt: skip
    assert_refused(unknown, r"torch\.from_file.*weights-only reader does not support")
    pid = rewrite_entry(source, tmp_path / "pid.pt", "/data.pkl", lambda d: d.replace(b"storage", b"storagE"))
    assert_refused(pid, "persistent id.*storagE")
    assert victim.untouched()


# --- (b) torch.save pickles with a __reduce__ payload ---------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "exec", "os.mkdir"])
def test_torch_save_payload_is_refused(tmp_path, victim, zip_format, kind):
    path = tmp_path / "evil.pt"
    torch.save(clip_like(payloads(victim)[kind]), path, _use_new_zipfile_serialization=zip_format)
    assert_refused(path, rf"refused to unpickle.*never runs code.*{kind.split('.')[-1]}", load=cliplab.load)
    assert_refused(path, "refused to unpickle", load=detect_format)
    assert victim.untouched()


def test_the_pickle_payloads_are_live(tmp_path, victim):
    """Unrestricted unpickling (what cliplab never does) fires every payload used above."""
    for kind, payload in payloads(victim).items():
        torch.save(clip_like(payload), tmp_path / f"{kind}.pt")
        victim.path.write_bytes(ORIGINAL)
        if victim.created.exists():
            victim.created.rmdir() if victim.created.is_dir() else victim.created.unlink()
        assert victim.untouched()
        torch.load(tmp_path / f"{kind}.pt", weights_only=False)
        assert not victim.untouched(), kind


# --- (c) TorchScript-looking zips naming non-torch globals -----------------------------------------


PYTHON_GLOBALS = {
    "eval": lambda v: Call(G("builtins", "eval"), (f"__import__('os').mkdir({str(v.created)!r})",)),
    "os.system": lambda v: Call(G("os", "system"), (f"touch {shlex.quote(str(v.created))}",)),
    "posix.system": lambda v: Call(G("posix", "system"), (f"touch {shlex.quote(str(v.created))}",)),
    "exec-inside-a-module": lambda v: module(
        weight=tensor(), hook=Call(G("builtins", "exec"), (f"open({str(v.path)!r}, 'wb').write(b'x')",))
    ),
    "Popen-object": lambda v: module(sub=Obj(G("subprocess", "Popen"), {"args": ["touch", str(v.created)]})),
}


@pytest.mark.parametrize("kind", PYTHON_GLOBALS)
def test_torchscript_lookalike_naming_a_python_global_is_refused(tmp_path, victim, kind):
    path = write_archive(tmp_path / "evil_jit.pt", PYTHON_GLOBALS[kind](victim))
    assert detect_format(path) == "openai-jit"
    assert_refused(path, r"Python global (builtins|os|posix|subprocess)\.\w+.*crafted", load=cliplab.load)
    assert victim.untouched()


def test_python_global_payloads_are_live(tmp_path, victim):
    """Plain unpickling of those data.pkl files runs them (what the restricted reader prevents)."""
    pickle.loads(dumps(PYTHON_GLOBALS["eval"](victim)))
    assert victim.created.is_dir()


# --- crafted data inside an otherwise valid archive: every failure is a CheckpointError -------------


def test_synthetic_archive_baseline_loads(tmp_path):
    """The crafted cases below each change one thing in this readable archive."""
    sd = openai_format.read_torchscript_state_dict(write_archive(tmp_path / "ok.pt", module(weight=tensor())))
    assert list(sd) == ["weight"] and torch.equal(sd["weight"], WEIGHT.view(2, 2))


def _build_on(target) -> Raw:
    """BUILD on ``target``, not a TorchScript object: would set its attributes or call its __setstate__."""
    return Raw(_ops(target) + _ops({"__setstate__": G("collections", "OrderedDict")}) + b"b")


def _cycle() -> Raw:
    """A module whose attribute ``child`` is the module itself (via the pickle memo)."""
    return Raw(
        _ops(G("__torch__.m", "M"))
        + b")\x81q\x00"
        + _ops({"training": False})[:-1]
        + _ops("child")
        + b"h\x00ub"
    )


def _deep(depth: int):
    node = module(weight=tensor())
    for _ in range(depth):
        node = module(child=node)
    return node


CRAFTED = {  # name: (data.pkl root, tensor entries or None for the default, expected message)
    "reduce-on-a-non-callable": (module(weight=Call(G("torch", "FloatStorage"), ())), None, "TypeError"),
    "out-of-bounds-view": (module(weight=tensor(size=(3, 3), stride=(3, 1))), None, "beyond its 4-element"),
    "offset-past-the-end": (module(weight=tensor(size=(2,), stride=(1,), offset=3)), None, "beyond"),
    "negative-offset": (module(weight=tensor(offset=-1)), None, "non-negative offset"),
    "negative-stride": (module(weight=tensor(stride=(-2, 1))), None, "non-negative integers"),
    "float-size": (module(weight=tensor(size=(2.0, 2))), None, "non-negative integers"),
    "bool-stride": (module(weight=tensor(stride=(True, 1))), None, "non-negative integers"),
    "size-stride-mismatch": (module(weight=tensor(stride=(1,))), None, "as many strides as sizes"),
    "too-many-dims": (module(weight=tensor(size=(1,) * 100, stride=(1,) * 100)), None, "at most 64"),
    "stride-0-terabyte-view": (
        module(weight=tensor(size=(10**12,), stride=(0,))),
        None,
        "beyond its 4-element",
    ),
    "huge-declared-numel": (
        module(weight=tensor(numel=10**15)),
        None,
        "declares 1000000000000000 x torch.float32 = 4000000000000000 bytes",
    ),
    "negative-numel": (module(weight=tensor(numel=-1)), None, "declares -1 elements"),
    "missing-entry": (module(weight=tensor(key="7")), None, "no entry archive/data/7"),
    "path-in-storage-key": (module(weight=tensor(key="../../etc/passwd")), None, "not an entry"),
    "short-entry": (module(weight=tensor()), {"0": b"\0" * 8}, "holds 8 bytes.*16 bytes"),
    "one-key-two-dtypes": (
        module(weight=tensor(), other=tensor(storage="IntStorage")),
        None,
        "declared twice",
    ),
    "unknown-storage-type": (module(weight=tensor(storage="QUInt8Storage")), None, r"torch\.QUInt8Storage"),
    "storage-type-as-string": (
        module(
            weight=Call(
                G("torch._utils", "_rebuild_tensor_v2"),
                (Pid(("storage", "FloatStorage", "0", "cpu", 4)), 0, (4,), (1,)),
            )
        ),
        None,
        "storage type 'FloatStorage'",
    ),
    "persistent-id-not-storage": (module(weight=Pid(("module", "x"))), None, "persistent id"),
    "tensor-from-a-non-storage": (
        module(weight=Call(G("torch._utils", "_rebuild_tensor_v2"), ((1, 2), 0, (1,), (1,)))),
        None,
        "other than the archive's tensor data",
    ),
    "build-on-a-class": (
        module(weight=tensor(), x=_build_on(G("__torch__.m", "M"))),
        None,
        "state of a type",
    ),
    "build-on-a-function": (
        module(weight=tensor(), x=_build_on(G("torch._utils", "_rebuild_tensor_v2"))),
        None,
        "state of a method",
    ),
    "build-on-a-tensor": (module(weight=_build_on(tensor())), None, "state of a Tensor"),
    "build-twice": (Raw(_ops(module(weight=tensor())) + _ops({"training": True}) + b"b"), None, "once"),
    "module-containing-itself": (_cycle(), None, "contains itself"),
    "deeply-nested-modules": (_deep(150), None, "implausibly deep"),
    "root-is-not-a-module": ({"weight": tensor()}, None, "root object is a dict"),
    "custom-state": (Obj(G("__torch__.m", "M"), (tensor(), False)), None, "custom __setstate__"),
    "truncated-pickle": (dumps(module(weight=tensor()))[:-7], None, "truncated, corrupt"),
    "unknown-opcode": (b"\x80\x02\xff.", None, "truncated, corrupt"),
    "extension-code": (b"\x80\x02\x82\x01.", None, "truncated, corrupt"),
    "out-of-band-buffer": (b"\x80\x05\x97.", None, "truncated, corrupt"),
    "huge-string-length": (b"\x80\x02X\xff\xff\xff\x7fabc.", None, "truncated, corrupt"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_archive_data_is_a_checkpoint_error(tmp_path, case):
    root, data, match = CRAFTED[case]
    path = write_archive(tmp_path / "crafted.pt", root if isinstance(root, bytes) else dumps(root), data)
    assert_refused(path, match, load=openai_format.read_torchscript_state_dict)
    assert_refused(path, match)


def test_big_endian_archive_is_refused(tmp_path):
    path = write_archive(tmp_path / "be.pt", module(weight=tensor()), extra={"byteorder": "big"})
    assert_refused(path, "big-endian")


# --- (d) Hugging Face and (e) open_clip files carrying a payload -----------------------------------


def test_hf_directory_with_a_payload_is_refused(tmp_path, victim):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "clip"}')
    torch.save(clip_like(payloads(victim)["exec"]), tmp_path / "hf" / "pytorch_model.bin")
    assert detect_format(tmp_path / "hf") == "hf"
    assert_refused(tmp_path / "hf" / "pytorch_model.bin", "refused to unpickle.*exec", load=cliplab.load)
    assert_refused(tmp_path / "hf", "refused to unpickle.*exec", load=cliplab.load)
    # the weights file may also be a TorchScript archive whose code writes files
    file_writer_archive(tmp_path / "hf" / "pytorch_model.bin", victim.path, quantized=False)
    assert_refused(tmp_path / "hf", "TorchScript archive where a torch.save-d state dict was expected")
    assert victim.untouched()


def test_open_clip_training_checkpoint_with_a_payload_is_refused(tmp_path, victim):
    ckpt = {
        "epoch": 3,
        "name": "run",
        "state_dict": {"module.visual.proj": torch.zeros(2, 2)},
        "optimizer": {"state": {}, "param_groups": [{"lr": payloads(victim)["os.system"]}]},
    }
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    assert_refused(tmp_path / "epoch_3.pt", "refused to unpickle.*system", load=cliplab.load)
    assert victim.untouched()


@pytest.mark.parametrize("kind", ["os.mkdir", "exec"])
def test_open_clip_hub_directory_with_a_payload_is_refused(tmp_path, victim, kind):
    hub = tmp_path / "hub"
    hub.mkdir()
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 4, "layers": 2},
    }
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(clip_like(payloads(victim)[kind]), hub / "open_clip_pytorch_model.bin")
    assert detect_format(hub) == "open_clip"
    assert_refused(hub, "refused to unpickle", load=cliplab.load)
    assert_refused(hub / "open_clip_pytorch_model.bin", "refused to unpickle", load=cliplab.load)
    assert victim.untouched()


# --- (f) zip bombs and oversized declarations: refused before anything is allocated ----------------


def _peak_bytes_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


BOMB_FLOATS = 16 << 20  # 64 MiB of zeros, about 64 KiB deflated


def _refused_cheaply(path: Path, match: str, limit: int = 16 << 20) -> None:
    peak = _peak_bytes_while(lambda: assert_refused(path, match))
    assert peak < limit, f"{peak} bytes allocated while refusing {path.name}"


def test_deflated_tensor_entry_is_refused_without_inflating(tmp_path):
    path = tmp_path / "bomb.pt"
    write_archive(path, module(weight=tensor(numel=BOMB_FLOATS, size=(BOMB_FLOATS,), stride=(1,))), data={})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", bytes(BOMB_FLOATS * 4), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < BOMB_FLOATS
    _refused_cheaply(path, "zip bomb")


def test_many_deflated_entries_each_smaller_than_the_file_are_refused(tmp_path):
    """No single entry inflates beyond the 1 MiB file, but together they declare 40 MiB."""
    n, floats = 40, 1 << 18
    weights = {f"w{i}": tensor(key=str(i), numel=floats, size=(floats,), stride=(1,)) for i in range(n)}
    path = write_archive(
        tmp_path / "bombs.pt", module(**weights), data={}, extra={"pad": os.urandom(1 << 20)}
    )
    with zipfile.ZipFile(path, "a") as z:
        for i in range(n):
            z.writestr(f"archive/data/{i}", bytes(floats * 4), compress_type=zipfile.ZIP_DEFLATED)
    assert floats * 4 < path.stat().st_size < 2 * floats * 4
    _refused_cheaply(path, "zip bomb", limit=4 * floats * 4)


def test_size_the_file_cannot_hold_is_refused_without_allocating(tmp_path):
    """A central directory that claims a stored entry of 1 GiB in a file of a few hundred bytes."""
    numel = 1 << 28
    path = write_archive(tmp_path / "liar.pt", module(weight=tensor(numel=numel, size=(numel,), stride=(1,))))
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the central directory records follow the entries
    while data[entry + 46 : entry + 46 + 14] != b"archive/data/0":
        entry = data.index(b"PK\x01\x02", entry + 1)
    data[entry + 20 : entry + 28] = struct.pack("<II", numel * 4, numel * 4)  # compressed, uncompressed size
    path.write_bytes(bytes(data))
    _refused_cheaply(path, "zip bomb")


def test_huge_declared_storage_is_refused_without_allocating(tmp_path):
    path = write_archive(
        tmp_path / "huge.pt", module(weight=tensor(numel=10**12, size=(10**12,), stride=(1,)))
    )
    _refused_cheaply(path, "holds 16 bytes, but its tensor declares 1000000000000")


def test_torch_save_zip_bomb_is_refused(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pt")

    def inflate(data: bytes) -> bytes:  # the pickle now declares BOMB_FLOATS elements for storage "0"
        big = b"J" + struct.pack("<i", BOMB_FLOATS)
        data, storages = re.subn(rb"(cpuq.)K\x04", rb"\1" + big, data)
        data, sizes = re.subn(rb"K\x04\x85", big + b"\x85", data)
        assert storages == sizes == 1
        return data

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(tmp_path / "small.pt") as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data/0"):
                zout.writestr(info.filename, bytes(BOMB_FLOATS * 4), compress_type=zipfile.ZIP_DEFLATED)
            elif info.filename.endswith("/data.pkl"):
                zout.writestr(info, inflate(zin.read(info)))
            else:
                zout.writestr(info, zin.read(info))
    assert_refused(path, "zip bomb", load=cliplab.load)


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torchscript-setstate", "torch-save-reduce", "hf-directory"])
def test_cli_refuses_a_crafted_model_with_one_line(tmp_path, victim, kind):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 100, 50)).save(image)
    if kind == "torchscript-setstate":
        model = file_writer_archive(tmp_path / "evil.pt", victim.path, quantized=True)
    elif kind == "torch-save-reduce":
        model = tmp_path / "evil.pt"
        torch.save(clip_like(payloads(victim)["os.system"]), model)
    else:
        model = tmp_path / "hf"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "clip"}')
        torch.save(clip_like(payloads(victim)["exec"]), model / "pytorch_model.bin")
    argv = [sys.executable, "-m", "cliplab", "zeroshot", str(image), "--labels", "a,b", "--model", str(model)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("cliplab zeroshot: error: ") and str(model) in lines[0]
    assert "refused" in lines[0] or "TorchScript" in lines[0]
    assert result.stdout == ""
    assert victim.untouched()


# --- the source itself ----------------------------------------------------------------------------


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20 and SRC / "checkpoints" / "openai.py" in files
    return files


def test_source_never_calls_an_unrestricted_loader():
    """A grep: no torch.jit.load( and no weights_only=False anywhere in src/cliplab, code or text."""
    for file in _sources():
        text = file.read_text(encoding="utf-8")
        assert "torch.jit.load(" not in text, file
        assert not re.search(r"weights_only\s*=\s*False", text), file


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_every_torch_load_is_weights_only_and_nothing_else_unpickles():
    """The same by syntax: every torch.load passes weights_only=True; no pickle.load(s), jit.load, eval."""
    for file in _sources():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name, where = _dotted(node.func), f"{file}:{node.lineno}"
            if name.endswith("torch.load"):
                kw = {k.arg: k.value for k in node.keywords}
                safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert safe, f"{where}: torch.load without weights_only=True"
            assert not name.endswith(("jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler")), where
            assert not name.endswith(
                ("_pickle.Unpickler", "marshal.loads", "torch.package.PackageImporter")
            ), where
            # The builtins, called by bare name (``something(...).eval()`` is nn.Module.eval).
            bare = isinstance(node.func, ast.Name)
            assert not (bare and name in ("eval", "exec")), where
