"""The one way cliplab writes files: atomically, through a temporary file beside the target.

A write goes to a temporary file in the target's directory, is flushed and fsync-ed, then renamed
over the target (``os.replace`` is atomic on POSIX and Windows), and the directory entry is synced.
A process killed at any moment therefore leaves either the old file whole or the new one whole,
plus at worst an orphaned ``.<name>.<random>.tmp`` that :func:`remove_orphans` cleans up. New files
get the permissions an ordinary ``open(..., "w")`` would (0666 less the umask), not mkstemp's 0600.

Checkpoints, models, feature caches, results, metrics rewrites and downloads all go through here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import OutputExistsError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``target``, then rename it into place.

    ``write`` may open the path itself (``torch.save``, safetensors, Pillow); the file is fsync-ed
    after it returns. On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, target: str | os.PathLike) -> Path:
    import torch

    return atomic_write(target, lambda tmp: torch.save(obj, tmp))


def atomic_write_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Fill a new directory through ``write(tmp_dir)``, then move it to ``target``.

    A new ``target`` appears whole by one rename. An existing one may hold other files (a user's
    notes, logs), so it is not replaced wholesale: each written file replaces its old version by
    its own atomic rename, JSON files (the description of the rest) last.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a directory; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        for item in tmp.iterdir():
            if item.is_file():
                os.chmod(item, 0o666 & ~_umask())
                with open(item, "rb+") as f:
                    os.fsync(f.fileno())
        if target.exists():
            for item in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".json"):
                os.replace(item, target / item.name)
            tmp.rmdir()
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def is_orphan(path: Path) -> bool:
    """A temporary file or directory left by a write that was killed before its rename."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes in ``directory``; returns what was removed.

    Call it only where no other process is writing (a run directory owned by this run).
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for item in directory.iterdir():
        if is_orphan(item):
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item)
    return removed


def check_output_dir(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> Path:
    """Refuse a non-empty output directory unless ``overwrite``; touches nothing.

    Call it while validating arguments, then :func:`clear_output_dir` once every setting is known
    to be good, so a typo never costs the user their files.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path} is not empty; choose another output directory or pass {flag} to replace its contents"
        )
    return path


def clear_output_dir(path: str | os.PathLike) -> Path:
    """Empty ``path`` (created if missing). Only after :func:`check_output_dir` and validation."""
    path = Path(path)
    if path.is_dir():
        for item in path.iterdir():
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file's contents as UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured and dropped).

    Any other encoding is an error naming the file, the line and the offending byte, with the fix,
    instead of a bare ``UnicodeDecodeError``. ``what`` names the file's role in messages.
    """
    from .errors import UsageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory; pass a file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], enc
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: {what} is not valid {encoding.upper()} (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); re-save it as UTF-8 (for example: iconv -f latin1 -t utf-8)"
        ) from None
