"""Several processes: the process group, and the few collective decisions a training step needs.

cliplab has no launcher of its own: ``torchrun`` starts one process per device and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous address). Only the command-line entry point
reads those variables (:func:`from_environment`); everything below takes rank and world size as
arguments. NCCL drives GPUs (``cuda:LOCAL_RANK``), gloo drives CPUs.

:class:`Collective` holds the agreements that keep ranks in lock step. A rank that skips a step
(non-finite loss, empty batch, stop signal) while another enters a collective would wait forever,
so every such decision is an all-reduce of a flag that all ranks then act on. With one process
every method is a no-op answer.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import CliplabError, UsageError, first_line

logger = logging.getLogger(__name__)


class DistributedError(CliplabError, RuntimeError):
    """Another rank died or a collective stalled past the timeout; the last good checkpoint is intact."""


@dataclass(frozen=True)
class ProcessPlacement:
    """Where this process sits: its rank among ``world_size`` and its device index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def from_environment(environ: dict[str, str] | None = None) -> ProcessPlacement:
    """The placement torchrun (or SLURM through torchrun) gives this process; one process without it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return ProcessPlacement()
    try:
        placement = ProcessPlacement(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        raise UsageError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers; launch with torchrun"
        ) from None
    if not 0 <= placement.rank < placement.world_size:
        raise UsageError(f"RANK={placement.rank} is outside WORLD_SIZE={placement.world_size}")
    return placement


def init_process_group(placement: ProcessPlacement, device: torch.device, timeout_s: float) -> None:
    """Join the process group (rendezvous from torchrun's MASTER_ADDR/MASTER_PORT) if not already in one."""
    if placement.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(
        backend,
        rank=placement.rank,
        world_size=placement.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    logger.info("rank %d/%d joined the %s process group (pid %d)", placement.rank, placement.world_size,
                backend, os.getpid())  # fmt: skip


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Collective:
    """The agreements between ranks; trivial with one process."""

    def __init__(self, world_size: int = 1, device: torch.device | None = None):
        self.world_size = world_size
        # NCCL reduces tensors on the GPU; gloo on the CPU.
        self.device = device if device is not None and device.type == "cuda" else torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag: whether it is true on any rank (one all-reduce for all of them)."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self.device)
        self._call(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return not self.any(not flag)[0]

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._call(dist.all_reduce, t)
        return float(t.item()) / self.world_size

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        self._call(dist.broadcast_object_list, box, src=src)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._call(dist.all_gather_object, out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            self._call(dist.barrier)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise lost_contact(exc) from None


def lost_contact(exc: BaseException) -> DistributedError:
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return DistributedError(
        f"rank {rank} lost contact with the other processes ({first_line(exc)}): a rank died, was killed or stalled "
        "past dist_timeout. Checkpoints already written are intact; fix the cause and resume with "
        "--resume latest"
    )


def is_collective_failure(exc: BaseException) -> bool:
    """A failure inside a collective (gloo/NCCL): a peer closed its connection or the timeout passed."""
    if isinstance(exc, dist.DistBackendError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout")
    )
