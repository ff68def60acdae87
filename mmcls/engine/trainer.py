"""The training loop. Reads top to bottom: set-up, (resume), epochs of steps, evaluation, release.

Works the same for one process and under ``torchrun`` (DDP/FSDP): the global batch is fixed by the config
and split across ranks, the sampler shards a permutation that depends only on (seed, epoch), and frame
sampling draws from a per-sample RNG, so the data a step sees does not depend on the world size, the number
of DataLoader workers, or whether the run was resumed.

What is trained is pluggable: a :class:`~mmcls.engine.setup.TaskSetup` supplies the datasets, the model, the
loss (a :class:`~mmcls.engine.task.TrainingTask`), the validation scores with the one that selects ``best/``,
and the model folder format. ``mmcls train`` uses classification; ``mmcls pretrain`` the same loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.utils.data import Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from mmcls.config import Config, ConfigError
from mmcls.data.builders import TrainingSet, build_eval_loader, build_loader
from mmcls.data.switch import EpochSubset
from mmcls.engine import checkpoint as ckpt
from mmcls.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    any_rank,
    barrier,
    check_frame_decoder,
    check_precision,
    init_distributed,
    is_initialized,
    resolve_device,
    shutdown_distributed,
    world_info_from_env,
)
from mmcls.engine.logger import RunLogger, show_progress
from mmcls.engine.optim import build_optimizer, build_scheduler
from mmcls.engine.prefetch import DevicePrefetcher
from mmcls.engine.run_dir import check_run_dir, start_run_dir
from mmcls.engine.setup import TaskSetup, build_setup
from mmcls.errors import MmclsError
from mmcls.files import atomic_write_json
from mmcls.models import load_init_weights
from mmcls.names import BEST_DIR, LAST_DIR
from mmcls.output_guard import check_outputs, config_inputs
from mmcls.run_report import write_run_report

log = logging.getLogger("mmcls.train")


class TrainingError(MmclsError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


@dataclass
class TrainState:
    """The run's progress counters: what a checkpoint restores besides weights, optimizer and RNG streams."""

    epoch: int = 0
    samples_done: int = 0  # global samples consumed in the current epoch
    global_step: int = 0
    nonfinite_in_a_row: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    epoch_errors: Counter = field(default_factory=Counter)  # this process's frame problems this epoch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch_errors": dict(self.epoch_errors)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "epoch_errors": Counter(values.get("epoch_errors", {}))})


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    best_score: float | None
    best_epoch: int | None
    last_metrics: dict[str, float]
    interrupted: bool
    selection_metric: str  # the validation score that picked best/ (best_score): the setup's Selection.metric
    class_scores: list[dict[str, Any]] | None = None  # per class (id, name, F1...) of the last validation
    # Runs of epochs that trained on the same records (data.switch): first/last epoch, records, samples.
    data_phases: list[dict[str, int]] = field(default_factory=list)


#: Called after every epoch with its number (1-based) and its validation scores ({} when it had no
#: validation); returning True stops the run there (a checkpoint is saved; the result says interrupted).
EpochEndCallback = Callable[[int, dict[str, float]], bool | None]


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes the current step, saves a checkpoint and returns."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: give up immediately
            raise KeyboardInterrupt
        log.warning("received signal %d: finishing this step, then saving and exiting", signum)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SkipSampler(Sampler[int]):
    """Wraps a sampler and skips its first ``skip`` indices (the part of an epoch done before a resume)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class Trainer:
    """One training run: ``Trainer(cfg, data_root, run_dir, resume=...).fit()``.

    ``setup``: what is trained (default: classification, :func:`mmcls.engine.setup.build_setup`).
    ``on_epoch_end``: see :data:`EpochEndCallback` (``mmcls tune`` reports to its pruner through it).
    """

    def __init__(
        self,
        cfg: Config,
        data_root: str | Path,
        run_dir: str | Path,
        resume: bool = False,
        setup: TaskSetup | None = None,
        overwrite: bool = False,
        on_epoch_end: EpochEndCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_epoch_end = on_epoch_end
        self.data_root = Path(data_root)
        self.run_dir = Path(run_dir)
        self.resume = resume
        # Everything that can be refused is refused here, before any data is read or any file written.
        check_run_dir(cfg, self.run_dir, resume=resume, overwrite=overwrite)
        check_outputs([("--out", self.run_dir)], config_inputs(cfg, self.data_root))
        self.setup = setup if setup is not None else build_setup(cfg, self.data_root)
        self.setup.check_config()
        tcfg = cfg.train

        # ---- processes and devices
        self.device = resolve_device(tcfg.device, world_info_from_env())
        check_precision(tcfg.precision, self.device)
        check_frame_decoder(cfg.data.frames.decoder, self.device)
        self.dist: DistInfo = init_distributed(self.device)
        if not self.dist.is_main:
            # One voice in the log: the other ranks report warnings and errors only.
            logging.getLogger("mmcls").setLevel(logging.WARNING)
        if tcfg.batch_size % (self.dist.world_size) != 0:
            raise ConfigError(
                f"train.batch_size={tcfg.batch_size} (global) must be divisible by the world size "
                f"{self.dist.world_size}"
            )
        self.local_batch = tcfg.batch_size // self.dist.world_size
        if self.dist.is_main:
            start_run_dir(cfg, self.run_dir, resume=resume, overwrite=overwrite)
        barrier()

        # ---- data
        self.pad_id = self.setup.pad_id
        data = self.setup.datasets()
        self.train_set, self.val_set = data.train_set, data.val_set
        # The steps of every epoch (its training samples are the setup's choice, data.switch): the schedule
        # spans them all, so it carries on across a switch to fewer records.
        self.epoch_steps: list[int] = []
        self.data_phases: list[dict[str, int]] = []  # runs of epochs on the same records, for the report
        previous = None
        for epoch in range(tcfg.epochs):
            indices = self.setup.train_indices(epoch)
            records = len(self.train_set) if indices is None else len(indices)
            steps = (records // self.dist.world_size) // self.local_batch // tcfg.grad_accum_steps
            if steps == 0:
                raise ConfigError(
                    f"epoch {epoch + 1}: {records} training records give no full step of "
                    f"batch_size={tcfg.batch_size} x grad_accum_steps={tcfg.grad_accum_steps}"
                )
            self.epoch_steps.append(steps)
            samples = steps * tcfg.batch_size * tcfg.grad_accum_steps
            if epoch == 0 or not _same_indices(indices, previous):
                self.data_phases.append({"first_epoch": epoch + 1, "records": records, "samples": 0})
            self.data_phases[-1].update(
                last_epoch=epoch + 1, samples=self.data_phases[-1]["samples"] + samples
            )
            previous = indices
        self.steps_per_epoch = self.epoch_steps[0]
        self.total_steps = sum(self.epoch_steps)

        # ---- model, task, optimisation. Same init on every rank; DDP also broadcasts rank 0's weights.
        seed_everything(tcfg.seed)
        model = self.setup.build_model()
        if cfg.model.init_from:
            load_init_weights(model, cfg.model.init_from)  # logs what was loaded and what was not
        if tcfg.grad_checkpointing:
            set_grad_checkpointing = getattr(model, "set_grad_checkpointing", None)
            if set_grad_checkpointing is None:
                raise ConfigError(f"train.grad_checkpointing: {type(model).__name__} does not support it")
            set_grad_checkpointing(True)
        self.task = self.setup.build_task(model, self.device)
        self.task.wrap_distributed(self.dist, find_unused_parameters=self.setup.find_unused_parameters)
        if tcfg.compile:
            # After DDP/FSDP wrapping (the order torch recommends); in place, so checkpoints keep their keys.
            self.task.model.compile()
        self.optimizer = build_optimizer(self.task.model, tcfg)
        self.scheduler = build_scheduler(self.optimizer, tcfg, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.precision == "fp16")
        seed_everything(tcfg.seed + self.dist.rank)  # dropout streams differ per rank

        # ---- progress (what a checkpoint restores)
        self.state = TrainState()
        self.last_metrics: dict[str, float] = {}
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=tcfg.tensorboard)

    def _epoch_train_set(self, epoch: int) -> TrainingSet:
        """The training samples of ``epoch`` (0-based): the whole set, or the subset the setup chose."""
        indices = self.setup.train_indices(epoch)
        return self.train_set if indices is None else EpochSubset(self.train_set, indices.tolist())

    def _epoch_sampler(self, dataset: Dataset) -> DistributedSampler:
        """This rank's shard of a permutation that depends on (seed, epoch) only."""
        return DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.cfg.train.seed,
            drop_last=True,
        )

    # ------------------------------------------------------------------ checkpoints
    def _state_dict_options(self) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def save_checkpoint(self) -> None:
        model_sd, optim_sd = get_state_dict(
            self.task.model, self.optimizer, options=self._state_dict_options()
        )
        rng_states = all_gather_objects(_rng_state())  # every rank's dropout stream
        if self.dist.is_main:
            state = {
                "model": model_sd,
                "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.task.ema.state_dict() if self.task.ema is not None else None,
                "task": self.task.extra_state(),
                "rng": rng_states,
                "progress": {**self.state.to_dict(), "world_size": self.dist.world_size},
            }
            ckpt.save_checkpoint(
                self.run_dir, self.state.global_step, state, self.cfg.train.keep_last_checkpoints
            )
        barrier()

    def load_checkpoint(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        set_state_dict(
            self.task.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=self._state_dict_options(),
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.task.ema is not None and state["ema"] is not None:
            self.task.ema.load_state_dict(state["ema"])
        self.task.load_extra_state(state.get("task") or {})
        progress = state["progress"]
        self.state = TrainState.from_dict(progress)
        rng = state["rng"]
        if progress["world_size"] == self.dist.world_size:
            _set_rng_state(rng[self.dist.rank])
        else:
            log.warning("resuming with a different world size: dropout streams are re-seeded")
        log.info("resumed from %s (epoch %d, step %d)", path, self.state.epoch, self.state.global_step)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        if self.resume:
            latest = ckpt.latest_checkpoint(self.run_dir)
            if latest is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.run_dir)
            else:
                self.load_checkpoint(latest)
        with StopRequest() as stop:
            while self.state.epoch < self.cfg.train.epochs:
                if self._train_epoch(stop):
                    self.save_checkpoint()
                    self.logger.close()
                    return self._result(interrupted=True)
                metrics = self._end_epoch()
                if self._stop_after_epoch(metrics):
                    self.logger.close()
                    return self._result(interrupted=True)
        self._release(LAST_DIR)
        if self.val_set is None:
            self._release(BEST_DIR)
        self.logger.close()
        return self._result(interrupted=False)

    def _stop_after_epoch(self, metrics: dict[str, float]) -> bool:
        """Ask ``on_epoch_end`` whether to stop (every rank asks; any rank's yes stops them all)."""
        if self.on_epoch_end is None:
            return False
        stop = bool(self.on_epoch_end(self.state.epoch, metrics))
        (stop_any,) = any_rank([stop], self.device)
        return stop_any

    def _train_epoch(self, stop: StopRequest) -> bool:
        """Train the rest of the current epoch; True if a stop was requested."""
        tcfg, state = self.cfg.train, self.state
        train_set = self._epoch_train_set(state.epoch)
        sampler = self._epoch_sampler(train_set)
        sampler.set_epoch(state.epoch)
        train_set.set_epoch(state.epoch)
        steps = self.epoch_steps[state.epoch]
        switching = len(self.data_phases) > 1
        if (
            switching
            and state.samples_done == 0
            and state.epoch + 1 in {p["first_epoch"] for p in self.data_phases}
        ):
            # metrics.csv (the run's log) records each phase's start: data/train_records at its first step.
            self.logger.log(state.global_step, state.epoch, {"train_records": len(train_set)}, prefix="data/")
            if self.dist.is_main:
                log.info("epoch %d: data.switch: training on %d records", state.epoch + 1, len(train_set))
        skip = state.samples_done // self.dist.world_size
        loader = build_loader(
            train_set,
            self.local_batch,
            SkipSampler(sampler, skip),
            self.cfg.data.num_workers,
            self.pad_id,
            drop_last=True,
            device=self.device,
        )
        step_in_epoch = state.samples_done // (tcfg.batch_size * tcfg.grad_accum_steps)
        batches = iter(DevicePrefetcher(loader, self.device, self.task.device_keys))
        bar = tqdm(
            total=steps,
            initial=step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{tcfg.epochs}",
            disable=not (self.dist.is_main and show_progress(tcfg.progress_bar)),
            dynamic_ncols=True,
        )
        self.task.train()
        while step_in_epoch < steps:
            micro_batches = [next(batches) for _ in range(tcfg.grad_accum_steps)]
            losses = self.train_step(micro_batches)
            step_in_epoch += 1
            state.global_step += 1
            state.samples_done += tcfg.batch_size * tcfg.grad_accum_steps
            bar.update(1)
            if losses and state.global_step % tcfg.log_every_steps == 0:
                # The losses stay on the device between logging steps (reading them is a host sync).
                # Every rank is here (skipped steps are agreed on by all ranks): average the losses so
                # the log shows the global batch's loss, as a single process would.
                mean_losses = all_reduce_mean(_to_floats(losses), self.device)
                bar.set_postfix(loss=f"{mean_losses['loss']:.4f}")
                lr = {f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups}
                self.logger.log(state.global_step, state.epoch, {**mean_losses, **lr}, prefix="train/")
            (stop_now,) = any_rank([stop.requested], self.device)
            if stop_now:
                bar.close()
                return True
            if state.global_step % tcfg.checkpoint_every_steps == 0 and step_in_epoch < steps:
                self.save_checkpoint()
        bar.close()
        return False

    def train_step(self, micro_batches: list[dict]) -> dict[str, torch.Tensor] | None:
        """One optimizer step over ``grad_accum_steps`` micro-batches; None if the step was skipped.

        The batches' model inputs are already on the device (see :class:`DevicePrefetcher`). The returned
        losses are device scalars: the one host sync of a step is the finiteness check of its loss.
        """
        tcfg = self.cfg.train
        totals: dict[str, torch.Tensor] = {}
        skip = False
        for i, batch in enumerate(micro_batches):
            self.state.epoch_errors.update(batch["frame_errors"])
            if batch.get("dropped"):
                self.state.epoch_errors["dropped_samples"] += batch["dropped"]
            # Every rank must take part in every backward (DDP all-reduces inside it), so an empty batch
            # on one rank (all its samples dropped) makes every rank skip this micro-batch.
            (empty,) = any_rank([len(batch["index"]) == 0], self.device)
            if empty:
                skip = True
                continue
            last = i == len(micro_batches) - 1
            # Only the last micro-batch's (last) backward all-reduces: the task runs the rest inside no_sync.
            loss, parts = self.task.forward_backward(
                batch,
                scale=lambda loss: self.scaler.scale(loss / len(micro_batches)),
                sync=last,
            )
            for key, value in {"loss": loss, **parts}.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach()
                totals[key] = totals.get(key, 0.0) + value / len(micro_batches)
        finite = "loss" not in totals or bool(torch.isfinite(totals["loss"]))
        (nonfinite,) = any_rank([not finite], self.device)
        if nonfinite or skip:
            self.optimizer.zero_grad(set_to_none=True)
            if nonfinite:
                self._count_nonfinite()
            return None
        self.state.nonfinite_in_a_row = 0
        if tcfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), tcfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_optimizer_step(self.state.global_step + 1)
        return totals

    def _count_nonfinite(self) -> None:
        state = self.state
        state.nonfinite_in_a_row += 1
        limit = self.cfg.train.max_nonfinite_steps
        log.warning(
            "step %d: non-finite loss, step skipped (%d in a row, limit %d)",
            state.global_step + 1,
            state.nonfinite_in_a_row,
            limit,
        )
        if state.nonfinite_in_a_row >= limit:
            raise TrainingError(
                f"stopping: {state.nonfinite_in_a_row} consecutive steps with a non-finite loss "
                f"(train.max_nonfinite_steps={limit}); lower the learning rate or check the data"
            )

    # ------------------------------------------------------------------ epoch end
    def _end_epoch(self) -> dict[str, float]:
        """Evaluate (when due), release ``best/``, checkpoint; returns this epoch's validation scores ({})."""
        state, evaluated = self.state, {}
        errors: Counter[str] = Counter()
        for part in all_gather_objects(dict(state.epoch_errors)):
            errors.update(part)
        if errors and self.dist.is_main:
            log.warning("epoch %d: data problems %s", state.epoch + 1, dict(errors))
        self._write_data_report("train", errors)
        self.task.after_epoch(state.epoch + 1)  # SWA's snapshot: evaluated below, saved in the checkpoint
        if self.val_set is not None and (state.epoch + 1) % self.cfg.train.eval_every_epochs == 0:
            self.last_metrics, val_errors = self._evaluate_with_errors()
            evaluated = self.last_metrics
            if val_errors and self.dist.is_main:
                log.warning("epoch %d: validation data problems %s", state.epoch + 1, dict(val_errors))
            self._write_data_report("val", val_errors)
            self.logger.log(state.global_step, state.epoch, self.last_metrics, prefix="val/")
            score = self.last_metrics[self.setup.selection.metric]
            if self.setup.selection.improves(score, state.best_score):
                state.best_score, state.best_epoch = score, state.epoch + 1
                self._release(BEST_DIR)
            if self.dist.is_main:
                log.info("epoch %d: %s", state.epoch + 1, json.dumps(self.last_metrics))
        state.epoch += 1
        state.samples_done = 0
        state.epoch_errors = Counter()
        self.save_checkpoint()
        return evaluated

    def evaluate(self) -> dict[str, float]:
        """Scores of the evaluated weights (EMA if on) on the validation split, identical for any world size."""
        return self._evaluate_with_errors()[0]

    def _evaluate_with_errors(self) -> tuple[dict[str, float], Counter]:
        """:meth:`evaluate`'s scores and the frame problems of the validation split (all ranks together)."""
        assert self.val_set is not None
        loader = build_eval_loader(
            self.val_set,
            self.cfg.train.eval_batch_size // self.dist.world_size or 1,
            self.cfg.data.num_workers,
            self.pad_id,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
        )
        progress = self.dist.is_main and show_progress(self.cfg.train.progress_bar)
        return self.setup.evaluate(self.task, loader, self.device, progress)

    def _write_data_report(self, split: str, errors: Counter) -> None:
        """Record this epoch's frame problems of ``split`` ("train" or "val") in ``RUN_DIR/data_errors.json``.

        The file reads ``{"train": {"epoch_1": {kind: count}, ..., "total": {...}}, "val": {...}}``; an epoch
        without problems is recorded as ``{}`` so the file also shows which epochs were clean.
        """
        if not self.dist.is_main:
            return
        path = self.run_dir / "data_errors.json"
        report = json.loads(path.read_text()) if path.exists() else {}
        part = report.setdefault(split, {})
        part.pop("total", None)  # recomputed below, and kept last
        part[f"epoch_{self.state.epoch + 1}"] = dict(errors)
        part["total"] = dict(sum((Counter(v) for v in part.values()), Counter()))
        annotation_problems = self.setup.annotation_problems()  # found when the setup read the records
        if annotation_problems:
            report["annotations"] = annotation_problems
        atomic_write_json(path, report)

    def _release(self, name: str) -> None:
        """Write the evaluated weights as a model folder (run_dir/best or run_dir/last)."""
        model = self.task.eval_model
        if self.task.is_sharded:
            # Gather the FSDP shards (a collective: every rank takes part) into a plain copy on rank 0.
            full = get_model_state_dict(model, options=self._state_dict_options())
            if self.dist.is_main:  # only rank 0 receives the full weights (cpu_offload=True)
                model = self.setup.build_model()
                model.load_state_dict(full)
        if self.dist.is_main:
            self.setup.save_model(self.run_dir / name, model)
        barrier()

    def _result(self, interrupted: bool) -> TrainResult:
        state = self.state
        return TrainResult(
            self.run_dir,
            state.global_step,
            state.best_score,
            state.best_epoch,
            self.last_metrics,
            interrupted=interrupted,
            selection_metric=self.setup.selection.metric,
            class_scores=self.setup.class_scores,
            data_phases=self.data_phases if len(self.data_phases) > 1 else [],
        )


def _same_indices(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device scalars -> Python floats with a single device-to-host copy."""
    numbers = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, numbers))


def train(
    cfg: Config,
    data_root: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    setup: TaskSetup | None = None,
    overwrite: bool = False,
    on_epoch_end: EpochEndCallback | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``data_root``, writing checkpoints, logs and model folders to ``run_dir``.

    ``setup``: what is trained; default classification (``mmcls pretrain`` passes its own). ``overwrite``
    starts a run again in a folder that holds one (or that mmcls did not create); see
    :mod:`mmcls.engine.run_dir`. ``on_epoch_end``: see :data:`EpochEndCallback`.
    """
    start = time.time()
    owns_process_group = not is_initialized()  # a caller's own process group is left to the caller
    trainer = Trainer(
        cfg, data_root, run_dir, resume=resume, setup=setup, overwrite=overwrite, on_epoch_end=on_epoch_end
    )
    result = trainer.fit()
    seconds = time.time() - start
    log.info("training took %.1f s", seconds)
    if trainer.dist.is_main and not result.interrupted:
        try:
            write_run_report(run_dir, cfg, result, seconds)
        except Exception:  # the model is saved; a failed plot must not turn a finished run into a failure
            log.exception("could not write curves.png / summary.md")
    if owns_process_group:
        shutdown_distributed()
    return result
