"""The training run: model, optimiser, data, steps, evaluation, checkpoints and reports.

``train(cfg, out_dir)`` is the whole job; the CLI only parses arguments. Rank and world size are
arguments (the distributed launcher passes them), never read from the environment here.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data import build_train_loader
from ..device import resolve_device
from ..errors import CliplabError, OutputExistsError, UsageError, first_line
from ..fileio import atomic_write_json, read_text, remove_orphans
from ..models import CLIP, CLIPConfig, build_model, get_config
from ..models.modified_resnet import ModifiedResNet
from ..tokenizer import tokenize
from ..transforms import PreprocessConfig, image_transform
from .checkpointing import CheckpointManager, resolve_resume, rng_state, set_rng_state
from .config import TrainConfig, save_config
from .distributed import Collective, DistributedError, is_collective_failure, lost_contact
from .loss import ClipLoss, clamp_logit_scale_
from .optim import build_optimizer, cosine_lr, set_lr
from .reporting import MetricsLog, plot_report
from .step import ContrastiveForward, compute_gradients

logger = logging.getLogger(__name__)


class TrainingDiverged(CliplabError, RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is left as it was."""


class EmptyEpochError(CliplabError, RuntimeError):
    """An epoch yielded no batch at all (every sample or shard unreadable); training cannot progress."""


# What a run writes into its directory; --overwrite removes these and nothing else.
RUN_OUTPUTS = (
    "checkpoints",
    "tensorboard",
    "final",
    "metrics.jsonl",
    "summary.json",
    "report.png",
    "config.yaml",
)
# Settings that give a saved data position (epoch, batch) its meaning; a resume must not change them.
POSITION_SETTINGS = (
    "batch_size",
    "seed",
    "data.source",
    "data.path",
    "data.synthetic_size",
    "data.synthetic_seed",
    "data.num_samples",
    "data.resampled",
)


@dataclass
class RunState:
    step: int = 0  # batches consumed (optimizer steps attempted)
    epoch: int = 0
    next_batch: int = 0  # position in the epoch to resume from
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    empty_batches: int = 0
    samples_seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[list[str]] = field(default_factory=list)
    best_score: float = -1.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- set-up --------------------------------------------------------------------------------------


def build_training_model(cfg: TrainConfig) -> tuple[CLIP, PreprocessConfig]:
    """A fresh model of ``cfg.model`` (name or JSON file), or the checkpoint ``cfg.pretrained``."""
    if cfg.pretrained:
        from ..checkpoints import load_checkpoint

        model, preprocess = load_checkpoint(cfg.pretrained)
        return model.float().train(), preprocess
    if cfg.model.endswith(".json"):
        import json

        text = read_text(cfg.model, "model config")
        try:
            config = CLIPConfig.from_dict(json.loads(text), source=cfg.model)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{cfg.model}:{exc.lineno}: invalid JSON in the model config ({exc.msg})"
            ) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"model config {cfg.model}: {exc}") from None
    else:
        config = get_config(cfg.model)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    return build_model(config), PreprocessConfig(image_size=config.vision.image_size)


def lock_image_tower(model: CLIP) -> None:
    """LiT: the image tower gets no gradients and its BatchNorm statistics stay frozen."""
    for p in model.visual.parameters():
        p.requires_grad_(False)
    model.visual.eval()
    original_train = model.train

    def train(mode: bool = True):
        original_train(mode)
        model.visual.eval()
        return model

    model.train = train  # type: ignore[method-assign]


def check_run_dir(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds anything unless resuming it or ``overwrite``; touches nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out {out_dir} is a file; choose a directory for the run")
    if resuming or overwrite or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if any((out_dir / name).exists() for name in RUN_OUTPUTS):
        raise OutputExistsError(
            f"{out_dir} already holds a run; pass --resume latest to continue it, "
            "--overwrite to start again, or choose another --out"
        )
    raise OutputExistsError(
        f"{out_dir} is not empty and holds no cliplab run; choose another --out "
        "(or pass --overwrite to write the run's files beside what is there)"
    )


def prepare_run_dir(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Make the run directory; with ``overwrite`` remove a previous run's outputs (and only those).

    Called only once the settings, model, data and any resume checkpoint have been validated, so a
    typo never costs the previous run.
    """
    check_run_dir(out_dir, resuming, overwrite)
    if overwrite and not resuming:
        import shutil

        for name in RUN_OUTPUTS:
            target = out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in remove_orphans(out_dir):
        logger.warning("removed %s, left by an interrupted write", item)


class StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt received: writing a checkpoint after this step (press again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the run -------------------------------------------------------------------------------------


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        resume: str | None = None,
        overwrite: bool = False,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        progress: bool = True,
    ):
        """``rank``/``world_size``/``local_rank``: this process's place in a torchrun job, whose
        process group the caller has initialised (:mod:`cliplab.training.distributed`)."""
        self.cfg, self.out_dir, self.rank, self.world_size = cfg, Path(out_dir), rank, world_size
        self.is_main = rank == 0
        self.progress = progress and self.is_main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = training_device(cfg.device, world_size, local_rank)
        self.coll = Collective(world_size, self.device)
        # settings-only checks: the same answer on every rank, so no agreement is needed
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise UsageError(
                "precision=fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU"
            )
        if cfg.sync_batchnorm and world_size > 1 and self.device.type != "cuda":
            raise UsageError("sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only)")
        # Everything is validated (settings, model, data, resume checkpoint) on every rank before
        # the run directory is touched: nothing of a previous run is removed for a run that cannot
        # start, and no rank waits at a barrier for a rank that failed.
        error: CliplabError | None = None
        try:
            resume_step = self._set_up(resume, overwrite)
        except CliplabError as exc:
            error = exc
        if self.coll.any(error is not None)[0]:
            if error is not None:
                raise error
            raise DistributedError("another rank could not set up the run; its error is printed above")
        if self.is_main:
            prepare_run_dir(self.out_dir, resume is not None, overwrite)
            self.checkpoints.remove_orphans()
            save_config(cfg, self.out_dir / "config.yaml")
        self.coll.barrier()  # the others start once the run directory is ready
        self.metrics = (
            MetricsLog(self.out_dir, cfg.tensorboard and self.is_main, resume_step) if self.is_main else None
        )
        self.forward = self._wrap(ContrastiveForward(self.model))
        self.last_eval: dict[str, float] = {}

    def _set_up(self, resume: str | None, overwrite: bool) -> int | None:
        """Build and check everything the run needs, reading files only; returns the resumed step."""
        cfg, rank = self.cfg, self.rank
        check_run_dir(self.out_dir, resume is not None, overwrite)

        self.model, self.preprocess_cfg = build_training_model(cfg)
        self.model.to(self.device).train()
        if self.channels_last:
            self._image_layout(torch.channels_last)
        if cfg.lock_image:
            lock_image_tower(self.model)
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.loss_fn = ClipLoss(rank=rank, world_size=self.world_size)
        self.train_transform = image_transform(
            self.preprocess_cfg, train=True, crop_scale=cfg.train_crop_scale
        )
        self.tokenize = functools.partial(tokenize, context_length=self.model.context_length, truncate=True)
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_last)
        self.state = RunState()
        self.num_batches = self._loader(0, 0).num_batches
        if self.num_batches < 1:
            raise EmptyEpochError(
                f"the training data gives no full batch of {cfg.batch_size}; lower batch_size"
            )
        resume_step = None
        if resume is not None:
            resume_step = self._restore(*resolve_resume(resume, self.out_dir))
        else:
            torch.manual_seed(cfg.seed + rank)
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.num_batches
        self.evaluator = self._evaluator() if self.is_main else None
        return resume_step

    def _evaluator(self):
        """The user's ``eval_data``, else the synthetic tasks when training on the synthetic set."""
        cfg = self.cfg
        if not cfg.eval_every:
            return None
        eval_tf = image_transform(self.preprocess_cfg)
        if cfg.eval_data:
            from .zeroshot_eval import DatasetZeroShot

            return DatasetZeroShot(cfg.eval_data, eval_tf, self.preprocess_cfg.image_size)
        if cfg.data.source == "synthetic":
            from .zeroshot_eval import SyntheticZeroShot

            return SyntheticZeroShot(eval_tf, self.preprocess_cfg.image_size, cfg.eval_per_class)
        return None

    @property
    def evaluates(self) -> bool:
        """Whether evaluations happen (the same answer on every rank, from the settings alone)."""
        cfg = self.cfg
        return bool(cfg.eval_every and (cfg.eval_data or cfg.data.source == "synthetic"))

    def _wrap(self, forward: ContrastiveForward) -> torch.nn.Module:
        """DistributedDataParallel (several processes), SyncBatchNorm and torch.compile as configured."""
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            if self.cfg.sync_batchnorm:
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
            cuda = self.device.type == "cuda"
            try:
                forward = DistributedDataParallel(
                    forward,
                    device_ids=[self.device.index] if cuda else None,
                    output_device=self.device.index if cuda else None,
                )
            except (RuntimeError, torch.distributed.DistBackendError) as exc:
                raise lost_contact(exc) from None
        if self.cfg.compile:
            forward = torch.compile(forward)
        return forward

    def _loader(self, epoch: int, start_batch: int):
        return build_train_loader(
            self.cfg.data,
            transform=self.train_transform,
            tokenize=self.tokenize,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            start_batch=start_batch,
            image_size=self.preprocess_cfg.image_size,
            pin_memory=self.device.type == "cuda",
            progress=self.progress,
        )

    # checkpoints -------------------------------------------------------------------------------

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "state_dict": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "preprocess": self.preprocess_cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "run": self.state.to_dict(),
            "world_size": self.world_size,
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, is_best: bool = False) -> Path | None:
        """Every rank calls this (its RNG state is gathered); rank 0 writes the file."""
        rngs = self.coll.all_gather(rng_state())
        if not self.is_main:
            return None
        state = self._checkpoint_state()
        state["rng_per_rank"] = rngs
        return self.checkpoints.save(state, self.state.step, is_best=is_best)

    def _restore(self, path: Path, ckpt: dict[str, Any]) -> int:
        self._check_resumable(path, ckpt)
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UsageError(
                f"--resume {path}: the checkpoint's weights do not fit this run's model "
                f"({first_line(exc, 200)}); resume with the run's own config.yaml"
            ) from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UsageError(
                f"--resume {path}: the optimiser state does not fit this run's parameter groups "
                f"({first_line(exc, 200)}). Checkpoints written before cliplab decayed "
                "embeddings (the paper's weight decay) group parameters differently: finish that run "
                f"with the version that started it, or start a new run from its weights with --pretrained={path}"
            ) from None
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt.get("rng_per_rank", [ckpt["rng"]])[self.rank])
        self.state = RunState(**ckpt["run"])
        if self.state.next_batch >= self.num_batches:  # saved at the very end of an epoch
            self.state.epoch, self.state.next_batch = self.state.epoch + 1, 0
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            self.state.step,
            self.state.epoch,
            self.state.next_batch,
        )
        return self.state.step

    def _check_resumable(self, path: Path, ckpt: dict[str, Any]) -> None:
        """The settings that give the saved data position its meaning must be the checkpoint's."""
        saved = ckpt.get("config") or {}
        now = self.cfg.to_dict()
        differ = []
        for key in POSITION_SETTINGS:
            a, b = _dotted(saved, key), _dotted(now, key)
            if a != b:
                differ.append(f"{key} {a!r} -> {b!r}")
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.world_size:
            differ.append(f"world_size {saved_world} -> {self.world_size}")
        if differ:
            raise UsageError(
                f"--resume {path}: these settings differ from the checkpoint's and would change which samples "
                f"come next: {'; '.join(differ)}. Resume with the same settings, or start a new run "
                f"with --pretrained={path} (fine-tuning from its weights)"
            )

    # steps ----------------------------------------------------------------------------------------

    def _record_skips(self, batch, anywhere: bool) -> None:
        """Count the batch's skipped samples; with several ranks, every rank's (``anywhere``: some
        rank had skips), so the counts in checkpoints and summary.json cover the whole run."""
        records = list(batch.skipped)
        if self.coll.active and anywhere:
            records = [rec for ranks in self.coll.all_gather(records) for rec in ranks]
        for rec in records:
            self.state.skipped[rec.kind] = self.state.skipped.get(rec.kind, 0) + 1
            if len(self.state.skipped_examples) < 100:
                self.state.skipped_examples.append([rec.source, rec.reason])

    def train_step(self, batch) -> dict[str, float] | None:
        """One optimizer step on ``batch``; returns its log record, or None when the step was skipped."""
        cfg, st = self.cfg, self.state
        lr = cosine_lr(st.step, cfg.lr, cfg.warmup_steps, self.total_steps, cfg.min_lr)
        set_lr(self.optimizer, lr)
        batch = batch.to(self.device, non_blocking=True)
        result = compute_gradients(
            self.forward,
            self.loss_fn,
            batch.images,
            batch.texts,
            cfg.accum_steps,
            cfg.precision,
            self.scaler,
            agree=self.coll.all,
        )
        result.loss = self.coll.mean(result.loss)  # the global batch's loss, the same on every rank
        grad_norm = None
        if result.finite and cfg.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm) and self.scaler is None:
                result.finite = False
        if not result.finite:
            self.model.zero_grad(set_to_none=True)
            st.nonfinite_total += 1
            st.nonfinite_streak += 1
            logger.warning(
                "step %d: non-finite loss/gradient (%s); step skipped (%d in a row)",
                st.step,
                result.loss,
                st.nonfinite_streak,
            )
            if st.nonfinite_streak >= cfg.max_nonfinite:
                raise TrainingDiverged(
                    f"{st.nonfinite_streak} consecutive non-finite steps at step {st.step}; stopping. The last good "
                    f"checkpoint in {self.checkpoints.directory} is intact: lower lr, enable grad_clip or use "
                    "fp32/bf16, then --resume it"
                )
            return None
        st.nonfinite_streak = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        clamp_logit_scale_(self.model.logit_scale)
        st.samples_seen += len(batch) * self.world_size
        record = {"loss": result.loss, "lr": lr, "logit_scale": float(self.model.logit_scale.detach().exp())}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    @property
    def channels_last(self) -> bool:
        """Whether the image tower trains in channels-last (NHWC) layout: ResNet towers on CPU, where
        oneDNN's convolutions run faster so (the demo's tower: about 15% less time per image), and on CUDA
        in reduced precision, where tensor cores want it. The values computed are the same, up to
        float rounding; saved weights are always in the standard layout."""
        reduced = self.cfg.precision != "fp32" and self.device.type == "cuda"
        return isinstance(self.model.visual, ModifiedResNet) and (self.device.type == "cpu" or reduced)

    def _image_layout(self, layout: torch.memory_format) -> None:
        visual = self.model.visual
        visual.to(memory_format=layout)
        if layout == torch.channels_last:
            # The first convolution reads the 3-channel NCHW images; left in NCHW, its output and the
            # BatchNorm after it (a few channels, where NHWC vectorises poorly) stay NCHW too: 5% of
            # the demo tower's time. Every later convolution has channels-last weights and switches.
            visual.conv1.to(memory_format=torch.contiguous_format)

    def evaluate(self) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        # Evaluate in the standard layout, as `cliplab eval` evaluates the saved model: the same
        # features bit for bit, so the numbers in summary.json are the ones the CLI gives.
        if self.channels_last:
            self._image_layout(torch.contiguous_format)
        try:
            results = self.evaluator(self.model, self.device)
        finally:
            if self.channels_last:
                self._image_layout(torch.channels_last)
        self.last_eval = results
        mean = sum(results.values()) / len(results)
        self.metrics.log(
            {
                "kind": "eval",
                "step": self.state.step,
                "mean": mean,
                **{f"zeroshot/{k}": v for k, v in results.items()},
            }
        )
        return results

    def run(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        bar = tqdm(
            total=self.total_steps,
            initial=st.step,
            desc="train",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        t0, samples0, interrupted = time.perf_counter(), st.samples_seen, False
        window: list[float] = []
        try:
            with StopFlag() as stop:
                while st.step < self.total_steps and not interrupted:
                    if self.coll.any(stop.requested)[0]:
                        interrupted = True
                        self.save_checkpoint()
                        break
                    yielded, epoch = 0, st.epoch
                    batches = iter(self._loader(st.epoch, st.next_batch))
                    while True:
                        batch = next(batches, None)
                        # Every rank leaves the epoch together when any rank's stream ends, and
                        # skips a step together when any rank's batch came out short.
                        ended, short, skips = self.coll.any(
                            batch is None,
                            batch is None or self._short(batch),
                            bool(batch is not None and batch.skipped),
                        )
                        if ended:
                            break
                        yielded += 1
                        record = self._step_on(batch, short, skips)
                        bar.update(1)
                        if record is not None:
                            window = (window + [record["loss"]])[-50:]
                            rate = (st.samples_seen - samples0) / max(1e-9, time.perf_counter() - t0)
                            bar.set_postfix(
                                loss=f"{record['loss']:.3f}",
                                lr=f"{record['lr']:.2e}",
                                samples_s=f"{rate:.0f}",
                            )
                            if self.is_main and (st.step % cfg.log_every == 0 or st.step == self.total_steps):
                                self.metrics.log(
                                    {"kind": "train", "step": st.step, "epoch": st.epoch, "samples_per_s": rate, **record}
                                )  # fmt: skip
                        self._periodic(final=st.step >= self.total_steps)
                        if self.coll.any(stop.requested)[0]:
                            interrupted = True
                            self.save_checkpoint()
                        if st.step >= self.total_steps or interrupted:
                            break
                    if yielded == 0 and not interrupted:
                        self._end_of_data()
                    elif (
                        st.epoch == epoch and st.next_batch and not interrupted and st.step < self.total_steps
                    ):
                        # A stream (WebDataset) ended before its nominal length: that was the epoch.
                        st.epoch, st.next_batch = st.epoch + 1, 0
        except Exception as exc:
            if self.coll.active and not isinstance(exc, CliplabError) and is_collective_failure(exc):
                raise lost_contact(exc) from None
            raise
        bar.close()
        elapsed = time.perf_counter() - t0
        summary = self._summary(elapsed, window, interrupted, st.samples_seen - samples0)
        if self.is_main:
            self._export_final()
            atomic_write_json(self.out_dir / "summary.json", summary)
            chance = self.evaluator.chance if self.evaluator else None
            plot_report(self.metrics.path, self.out_dir / "report.png", chance)
            self.metrics.close()
        return summary

    def _short(self, batch) -> bool:
        """A batch that cannot be trained on: empty, or (several ranks) not the full per-rank size."""
        return len(batch) == 0 or (self.coll.active and len(batch) != self.cfg.batch_size)

    def _step_on(self, batch, skip: bool, skips_anywhere: bool) -> dict[str, float] | None:
        """Train on ``batch`` (unless every rank agreed to skip it) and advance the data position."""
        st = self.state
        self._record_skips(batch, skips_anywhere)
        record = None if skip else self.train_step(batch)
        if skip:
            st.empty_batches += 1
        st.step += 1
        st.next_batch = batch.position + 1
        if st.next_batch >= self.num_batches:
            st.epoch, st.next_batch = st.epoch + 1, 0
        return record

    def _end_of_data(self) -> None:
        """A pass over the data from the saved position yielded nothing: move on, or stop with an error.

        A position at the end of an epoch (a stream shorter than its nominal length, a checkpoint
        taken after the last batch) moves to the next epoch; a whole epoch without a batch is an
        error rather than an endless loop.
        """
        st = self.state
        if st.next_batch > 0:
            st.epoch, st.next_batch = st.epoch + 1, 0
            return
        raise EmptyEpochError(
            f"epoch {st.epoch} yielded no batch: every sample or shard of the training data is unreadable "
            f"or the data is smaller than one batch ({self.cfg.batch_size}); check data.path. "
            f"Skipped so far: {st.skipped or 'none'}"
        )

    def _periodic(self, final: bool) -> None:
        cfg, st = self.cfg, self.state
        is_best = False
        if self.evaluates and (final or st.step % cfg.eval_every == 0):
            if self.is_main:  # the other ranks wait in the broadcast below
                results = self.evaluate()
                mean = sum(results.values()) / len(results)
                is_best = mean > st.best_score
                st.best_score = max(st.best_score, mean)
            is_best = self.coll.broadcast(is_best)
        if final or is_best or (cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0):
            self.save_checkpoint(is_best=is_best)

    def _export_final(self) -> None:
        from ..checkpoints import save_checkpoint

        save_checkpoint(
            self.model,
            self.out_dir / "final",
            preprocess=self.preprocess_cfg,
            extra={"step": self.state.step, "train_config": self.cfg.to_dict()},
        )

    def _summary(
        self, elapsed: float, window: list[float], interrupted: bool, session_samples: int
    ) -> dict[str, Any]:
        st = self.state
        chance = self.evaluator.chance if self.evaluator else {}
        return {
            "steps": st.step,
            "total_steps": self.total_steps,
            "interrupted": interrupted,
            "final_loss": sum(window) / len(window) if window else None,
            "samples_seen": st.samples_seen,
            "samples_this_session": session_samples,
            "seconds": round(elapsed, 1),
            # this session's rate: samples of earlier sessions (before a resume) took no time here
            "samples_per_s": round(session_samples / elapsed, 1) if elapsed > 0 else None,
            "skipped_samples": sum(st.skipped.values()),
            "skipped_by_reason": st.skipped,
            "skipped_examples": st.skipped_examples[:20],
            "empty_batches": st.empty_batches,
            "nonfinite_steps": st.nonfinite_total,
            "zeroshot": {k: {"top1": v, "chance": chance.get(k)} for k, v in self.last_eval.items()},
            "zeroshot_mean": (sum(self.last_eval.values()) / len(self.last_eval)) if self.last_eval else None,
            "final_checkpoint": str(self.out_dir / "final"),
        }


def train(cfg: TrainConfig, out_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Run training to completion (or interruption); returns the summary also written to summary.json."""
    return Trainer(cfg, Path(out_dir), **kwargs).run()


def training_device(name: str, world_size: int, local_rank: int) -> torch.device:
    """The configured device; with several processes on GPUs, this process's own ``cuda:LOCAL_RANK``."""
    device = resolve_device(name)
    if world_size > 1 and device.type == "cuda" and device.index is None:
        device = resolve_device(f"cuda:{local_rank}")
    return device


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
