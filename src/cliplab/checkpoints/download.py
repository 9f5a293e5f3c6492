"""OpenAI's released model names -> their download addresses, fetched into a local cache.

The addresses are those OpenAI publishes (listed in their ``clip/clip.py``); the second-to-last path
component of each is the SHA256 of the file, which we check after every download and before
trusting a cached copy. The cache is ``$CLIPLAB_CACHE`` or ``~/.cache/cliplab``.

Hashing a cached file costs a full read of it (about a second for ViT-B/32's 350 MB) on every
load, so each verified file gets a small sidecar, ``.<name>.sha256.json``, recording its SHA256 with
the size, modification time, change time and inode it had when hashed. A later load trusts the
recorded hash while all four are unchanged and hashes the file again otherwise: any write to the
file, ``touch``, a restored modification time (``os.utime`` sets the change time) or a replaced file
is re-checked. The sidecar is written atomically, after the hash was checked; a missing, unreadable
or unwritable sidecar only means the file is hashed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from ..fileio import atomic_write, atomic_write_json
from .common import CheckpointError

_BASE = "https://openaipublic.azureedge.net/clip/models"
_MODELS = {
    "RN50": f"{_BASE}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_BASE}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_BASE}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_BASE}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_BASE}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_BASE}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_BASE}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_BASE}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": f"{_BASE}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
_CHUNK = 1 << 20


def available_models() -> list[str]:
    """Names of OpenAI's released models, downloadable by name."""
    return list(_MODELS)


def default_cache_dir() -> Path:
    """``$CLIPLAB_CACHE`` if set, else ``~/.cache/cliplab``."""
    return Path(os.environ.get("CLIPLAB_CACHE") or Path.home() / ".cache" / "cliplab").expanduser()


def download_model(name: str, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The local path of OpenAI's model ``name``, downloading and verifying it unless already cached."""
    if name not in _MODELS:
        raise CheckpointError(f"unknown model name {name!r}; available: {', '.join(_MODELS)}")
    return download(_MODELS[name], cache_dir, progress=progress, label=name)


def download(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    label: str | None = None,
) -> Path:
    """Fetch ``url`` into the cache unless a copy with the right SHA256 is there; return its path.

    ``sha256`` defaults to the second-to-last component of the URL (OpenAI's convention); it may be
    a prefix of at least 8 hex digits where only that is published (open_clip's release files). A
    cached file with the wrong checksum is downloaded again; the file appears only once complete and
    verified.
    """
    sha256 = (sha256 or url.rstrip("/").split("/")[-2]).lower()
    if not (8 <= len(sha256) <= 64 and all(c in "0123456789abcdef" for c in sha256)):
        raise CheckpointError(
            f"{url}: {sha256!r} is not a SHA256 (or a prefix of 8+ hex digits) to check it by"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / url.rstrip("/").split("/")[-1]
    if target.exists() and not target.is_file():
        raise CheckpointError(
            f"{target} exists and is not a regular file; remove it or choose another cache_dir"
        )
    if target.is_file():
        digest = verified_sha256(target)
        if digest.startswith(sha256):
            return target
        warnings.warn(f"{target}: SHA256 does not match {sha256}; downloading it again", stacklevel=2)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fetched: list[str] = []
        atomic_write(target, lambda tmp: fetched.append(_fetch(url, tmp, sha256, timeout, progress, label)))
        _remember_sha256(target, fetched[0])
        return target
    except _NetworkError as exc:
        raise CheckpointError(
            f"could not download {label or target.name} from {url} ({exc.__cause__ or exc}). Without network "
            f"access, download that file on another machine, copy it here and pass its local path to "
            f"load (or put it at {target})."
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the download to {cache} ({exc}); set $CLIPLAB_CACHE or pass cache_dir to a writable directory"
        ) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    """Where the verified SHA256 of the cached file ``path`` is remembered."""
    return path.with_name(f".{path.name}.sha256.json")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def verified_sha256(path: Path) -> str:
    """The SHA256 of ``path``: from its sidecar while the file's size and times are unchanged, else hashed.

    A freshly hashed file's digest is remembered in its sidecar for the next call.
    """
    stamp = _stamp(path)
    try:
        recorded = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        if isinstance(recorded, dict) and {k: recorded.get(k) for k in stamp} == stamp:
            digest = recorded.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
    except (OSError, ValueError):
        pass  # no sidecar yet, or an unreadable one: hash the file
    digest = sha256_file(path)
    if _stamp(path) == stamp:  # not modified while it was read
        _remember_sha256(path, digest, stamp)
    return digest


def _remember_sha256(path: Path, digest: str, stamp: dict[str, int] | None = None) -> None:
    try:
        atomic_write_json(sidecar_path(path), {**(stamp or _stamp(path)), "sha256": digest})
    except OSError:
        pass  # a read-only cache: the file is hashed on every load, as before


class _NetworkError(Exception):
    pass


def _fetch(url: str, out_path: Path, sha256: str, timeout: float, progress: bool, label: str | None) -> str:
    """Download ``url`` to ``out_path``, checking and returning its SHA256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(out_path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise _NetworkError(str(exc)) from exc
    if not digest.hexdigest().startswith(sha256):
        raise CheckpointError(
            f"downloaded {url} but its SHA256 is {digest.hexdigest()}, expected {sha256}: the transfer was "
            "corrupted or the server sent another file. Try again; the bad file was not kept."
        )
    return digest.hexdigest()
