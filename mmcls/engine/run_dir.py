"""The run directory's rules, checked before a training run does any work.

A run directory belongs to one run. ``train --out DIR`` starts a run only in a new or empty folder, or in a
folder holding this run's marker (``.mmcls-run``) with nothing of a run in it yet; ``--resume`` continues the
run whose checkpoints are there, only if the config has not changed in a way that would make the continued run
a different experiment; ``--overwrite`` starts again, replacing mmcls's outputs (and only those: other files
in the folder stay). A finished run whose checkpoints were deleted is never silently trained over.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from mmcls import names
from mmcls.config import Config, ConfigError, flatten, resume_safe_keys, validate
from mmcls.engine import checkpoint as ckpt
from mmcls.errors import MmclsError
from mmcls.files import RUN_MARKER, check_output_dir, claim_output_dir

log = logging.getLogger("mmcls.train")

CONFIG_FILE = names.CONFIG_FILE
# Everything a run writes (files and folders directly in the run directory): what --overwrite may replace.
RUN_OUTPUTS = (
    CONFIG_FILE,
    "metrics.csv",
    "data_errors.json",
    "summary.md",
    "curves.png",
    ckpt.CHECKPOINT_DIR,
    "tensorboard",
    names.BEST_DIR,
    names.LAST_DIR,
)


class RunDirError(MmclsError, RuntimeError):
    """The run directory cannot be used as asked (it holds another run, or resuming would change it)."""


def check_run_dir(cfg: Config, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse before any work: a bad config, a foreign or finished run directory, a resume that changes the run.

    Read-only, so every rank of a distributed run can call it before the process group exists. What only one
    kind of run refuses (classification: the class count) is its setup's ``check_config``.
    """
    validate(cfg)  # a config built or changed in code gets the same checks as one loaded from YAML
    init_from = getattr(getattr(cfg, "model", None), "init_from", None)
    if init_from:
        from mmcls.models.init_from import init_weights_path

        init_weights_path(init_from)  # a missing source is refused now, not after the run dir was started
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite starts it again: pass only one of them")
    latest = ckpt.latest_checkpoint(run_dir)
    if resume:
        if latest is not None:
            check_resume_config(cfg, run_dir)
            return
        if any((run_dir / name).exists() for name in (names.BEST_DIR, names.LAST_DIR)):
            raise RunDirError(
                f"{run_dir}: a finished run whose checkpoints were deleted; it cannot be resumed. "
                "Choose a new --out (or pass --overwrite to train it again from scratch)"
            )
        check_output_dir(run_dir, RUN_MARKER)
        return
    if overwrite:
        check_output_dir(run_dir, RUN_MARKER, overwrite=True)  # still refuses a file given as a folder
        return
    if latest is not None:
        raise RunDirError(
            f"{run_dir} already holds checkpoints: pass --resume to continue that run, or choose a new --out"
        )
    check_output_dir(run_dir, RUN_MARKER)
    # config.yaml alone is not a run: it is written first, so a run that failed at once left only that, and
    # the corrected command may start there again without --overwrite.
    started = [name for name in RUN_OUTPUTS if name != CONFIG_FILE and (run_dir / name).exists()]
    if started:
        state = (
            "a finished run"
            if {names.BEST_DIR, names.LAST_DIR} & set(started)
            else "a run without checkpoints"
        )
        raise RunDirError(
            f"{run_dir} already holds {state} ({', '.join(started)}); choose a new --out, "
            "or pass --overwrite to start again (mmcls's outputs in it are replaced, other files kept)"
        )


def check_resume_config(cfg: Config, run_dir: Path) -> None:
    """Refuse a resume whose config differs from the run's saved one in anything but resume-safe settings."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        log.warning("--resume: %s has no %s; the current config is taken as the run's", run_dir, CONFIG_FILE)
        return
    try:
        # The run's own config class: a pretraining run's config has a section the core Config lacks.
        saved = type(cfg).from_dict(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise RunDirError(f"{saved_path}: the run's saved config cannot be read: {exc}") from exc
    changed = config_differences(saved, cfg)
    safe = resume_safe_keys()
    refused = {k: v for k, v in changed.items() if k not in safe}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise RunDirError(
            f"--resume: the config differs from {saved_path} in {listed}. These cannot change on resume "
            f"(allowed: {', '.join(sorted(safe))}); start a new --out for a different experiment"
        )
    if changed:
        listed = ", ".join(f"{k}={new!r} (was {old!r})" for k, (old, new) in changed.items())
        log.info("resuming with changed settings that are safe to change: %s", listed)


def config_differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every setting that differs."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def start_run_dir(cfg: Config, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create/claim the run directory and save the config (main process only, after :func:`check_run_dir`)."""
    if overwrite and not resume and run_dir.is_dir():
        for name in RUN_OUTPUTS:  # only what mmcls writes: a user's own files in the folder stay
            target = run_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    claim_output_dir(run_dir, RUN_MARKER, overwrite=True, command="train")
    cfg.save(run_dir / CONFIG_FILE)
