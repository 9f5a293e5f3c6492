"""Models on the Hugging Face Hub: ``"hf-hub:ORG/REPO"`` (optionally ``"@REVISION"``) -> a local directory.

Files are fetched with ``huggingface_hub`` (``pip install 'cliplab[hub]'``), so its cache, its
offline mode (``HF_HUB_OFFLINE=1``), its cache location (``HF_HUB_CACHE``/``HF_HOME``) and its token
(``HF_TOKEN`` or ``huggingface-cli login``) all apply. Two repository layouts are read:

* open_clip's: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``);
* transformers': ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``), with
  ``preprocessor_config.json`` when the repository has one.

Only those files are downloaded; they land in one snapshot directory of the cache, which the
ordinary format detection then reads like any local checkpoint directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .common import CheckpointError
from .open_clip import HUB_CONFIG, HUB_WEIGHTS

PREFIX = "hf-hub:"
_REPO = re.compile(r"[\w.\-]+/[\w.\-]+")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_hub_id(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` -> ``("org/repo", "rev")``; the revision is optional."""
    repo, _, revision = spec[len(PREFIX) :].partition("@")
    if not _REPO.fullmatch(repo):
        raise CheckpointError(
            f"{spec!r}: expected 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO@REVISION' (a branch, tag or commit)"
        )
    return repo, revision or None


def hub_snapshot(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or find in the cache) the files of a Hub model; returns their local directory."""
    repo, revision = parse_hub_id(spec)
    fetch = _Fetcher(spec, repo, revision, cache_dir)
    if fetch.first((HUB_CONFIG,)):
        weights = fetch.first(HUB_WEIGHTS)
        wanted = HUB_WEIGHTS
    elif config := fetch.first(("config.json",)):
        weights = fetch.first(_HF_WEIGHTS)
        wanted = _HF_WEIGHTS
        fetch.first(("preprocessor_config.json",))  # optional: mean and std
        if weights is not None and weights.parent != config.parent:
            raise CheckpointError(f"{spec}: config and weights were cached in different snapshots; retry")
    else:
        raise fetch.error((HUB_CONFIG, "config.json"), "a configuration")
    if weights is None:
        raise fetch.error(wanted, "the weights")
    return weights.parent


def hub_file(spec: str, filename: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """One file of a Hub repository (downloaded or cached), or None where the repository lacks it."""
    repo, revision = parse_hub_id(spec)
    return _Fetcher(spec, repo, revision, cache_dir).first((filename,))


class _Fetcher:
    """Tries files of one repository in turn, remembering why each could not be had."""

    def __init__(self, spec: str, repo: str, revision: str | None, cache_dir: str | os.PathLike | None):
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise CheckpointError(
                f"{spec}: loading from the Hugging Face Hub needs huggingface_hub; pip install 'cliplab[hub]'"
            ) from None
        self.spec, self.repo, self.revision = spec, repo, revision
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.reasons: list[str] = []

    def first(self, filenames: Sequence[str]) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        for name in filenames:
            try:
                return Path(
                    hf_hub_download(
                        self.repo,
                        name,
                        revision=self.revision,
                        cache_dir=self.cache_dir,
                        library_name="cliplab",
                    )
                )
            except GatedRepoError:
                raise CheckpointError(
                    f"{self.spec}: the repository is gated; accept its terms on the Hub and set HF_TOKEN "
                    "(or run `huggingface-cli login`)"
                ) from None
            except RepositoryNotFoundError:
                raise CheckpointError(
                    f"{self.spec}: no such repository, or it is private (set HF_TOKEN to a token that can read it)"
                ) from None
            except RevisionNotFoundError:
                raise CheckpointError(
                    f"{self.spec}: the repository has no revision {self.revision!r}; name a branch, tag or commit"
                ) from None
            except LocalEntryNotFoundError:  # offline, or no connection, and not in the cache
                self.reasons.append(f"{name}: not in the cache and the Hub could not be reached")
            except EntryNotFoundError:
                self.reasons.append(f"{name}: not in the repository")
            except Exception as exc:  # HTTP and connection errors of every kind
                self.reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return None

    def error(self, filenames: Sequence[str], what: str) -> CheckpointError:
        rev = self.revision or "main"
        urls = " or ".join(f"https://huggingface.co/{self.repo}/resolve/{rev}/{n}" for n in filenames)
        return CheckpointError(
            f"{self.spec}: could not get {what} ({'; '.join(self.reasons) or 'no file'}). Without network access "
            f"(or with HF_HUB_OFFLINE=1 and nothing cached), download {urls} with the repository's other "
            "config files on another machine and pass that directory to cliplab.load instead"
        )
