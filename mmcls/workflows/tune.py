"""``mmcls tune``: hyperparameter search with Optuna over ordinary training runs.

A search space is a YAML mapping from config keys to a distribution::

    train.lr: {log_uniform: [1.0e-5, 1.0e-3]}
    train.layer_decay: {uniform: [0.7, 1.0]}
    train.epochs: {int: [2, 4]}
    train.adversarial.method: {choice: [none, fgm, pgd]}

Every key must be a setting of the config and every bound or choice a value it accepts: checked before the
first trial. Each trial is an ordinary run directory ``TUNE_DIR/trial_NNN`` (``mmcls train`` with the trial's
values), which reports its validation ``mean_f1`` after every epoch to the pruner (through the trainer's
``on_epoch_end``); its objective is the run's best validation ``mean_f1``.

The study lives in Optuna's storage: by default ``sqlite:///TUNE_DIR/study.db``; ``--storage`` takes any
database URL Optuna accepts, so several processes or machines can run trials of one study at once. ``--trials N``
is the number of finished (complete or pruned) trials the *study* should have: each process starts trials
until the study has N, counting the ones others are running. A killed process's trial stops sending
heartbeats; after :data:`GRACE_PERIOD` seconds the next process that looks fails it and Optuna enqueues a
retry with the same values, which resumes the killed trial's run directory from its last checkpoint
(``--stale-after`` sets the seconds: longer on storage that can stall, shorter to retry sooner).

Optuna is an optional dependency (``pip install mmcls[tune]``), imported only here.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmcls.config import Config, ConfigError, flatten
from mmcls.data.prob_files import write_json
from mmcls.errors import MmclsError

log = logging.getLogger("mmcls.tune")

KINDS = ("log_uniform", "uniform", "int", "choice")
PRUNERS = ("median", "none")
TUNE_FILE = "tune.json"
STUDY_DB = "study.db"
BEST_FILE = "best.yaml"
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats (at most; see heartbeat_interval)
GRACE_PERIOD = 20  # default --stale-after: a trial without a heartbeat this long is failed (and retried)


def heartbeat_interval(stale_after: int) -> int:
    """Seconds between heartbeats for a study whose trials go stale after ``stale_after`` seconds: several
    heartbeats fit in the grace period, so a slow write or a busy machine never fails a live trial."""
    return max(1, min(HEARTBEAT_INTERVAL, stale_after // 4))


OBJECTIVE = "mean_f1"


class TuneError(MmclsError, ValueError):
    """The search space, the tune directory or the study does not fit this search."""


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: config ``key``, distribution ``kind`` and its ``args``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def candidates(self) -> list[Any]:
        """Values that must all be valid settings: the bounds of a range, every choice."""
        return list(self.args)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "log_uniform":
            return trial.suggest_float(self.key, *self.args, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, *self.args)
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.args)
        return trial.suggest_categorical(self.key, list(self.args))


def load_space(path: str | Path, cfg: Config) -> list[Param]:
    """Read and check a search space file against ``cfg`` (one-line errors naming the file and key)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TuneError(f"{path}: cannot read the search space: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TuneError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict) or not values:
        raise TuneError(
            f"{path}: expected a mapping of config keys to distributions, e.g. train.lr: {{log_uniform: [1e-5, 1e-3]}}"
        )
    settings = flatten(cfg.to_dict())
    space = []
    for key, spec in values.items():
        where = f"{path}: {key}"
        if key not in settings:
            raise TuneError(f"{where}: not a setting of the config (e.g. train.lr, train.adversarial.method)")
        param = _param(str(key), spec, where)
        for value in param.candidates():
            try:
                with_value(cfg, {param.key: value})
            except ConfigError as exc:
                raise TuneError(f"{where}: {value!r} is not a valid value: {exc}") from None
        space.append(param)
    return space


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise TuneError(f"{where}: expected one of {{{': [...]}, {'.join(KINDS)}: [...]}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args or len(set(map(repr, args))) != len(args):
            raise TuneError(f"{where}: choice: expected a list of distinct values, got {args!r}")
        if not all(a is None or isinstance(a, (bool, int, float, str)) for a in args):
            raise TuneError(f"{where}: choice: values must be numbers, strings, true/false or null")
        return Param(key, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise TuneError(f"{where}: {kind}: expected [low, high], got {args!r}")
    low, high = (_number(a, kind == "int", where) for a in args)
    if not low < high:
        raise TuneError(f"{where}: {kind}: low {low!r} must be below high {high!r}")
    if kind == "log_uniform" and low <= 0:
        raise TuneError(f"{where}: log_uniform: low must be above 0, got {low!r}")
    return Param(key, kind, (low, high))


def _number(value: Any, integer: bool, where: str) -> float | int:
    """A bound; YAML 1.1 reads ``1e-5`` (no dot) as a string, so numeric strings are numbers too."""
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise TuneError(f"{where}: expected a number, got {value!r}")
    if integer:
        if int(number) != number:
            raise TuneError(f"{where}: int: expected integers, got {value!r}")
        return int(number)
    return float(number)


def with_value(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with dotted ``values`` set (validated like a loaded config)."""
    tree = copy.deepcopy(cfg.to_dict())
    for key, value in values.items():
        node = tree
        *sections, name = key.split(".")
        for section in sections:
            node = node[section]
        node[name] = value
    return Config.from_dict(tree)


# ------------------------------------------------------------------------------------------- the command


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("mmcls tune needs Optuna: pip install 'mmcls[tune]'") from None
    return optuna


def run_tune(
    cfg: Config,
    data_root: str | Path,
    out_dir: str | Path,
    space_path: str | Path,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    pruner: str = "median",
    stale_after: int = GRACE_PERIOD,
) -> dict[str, Any]:
    """Run trials of the study until it has ``trials`` finished ones (or ``timeout`` seconds have passed),
    then write ``best.yaml`` and Optuna's plots; returns a summary of the study."""
    optuna = import_optuna()
    with warnings.catch_warnings():  # heartbeats and the matplotlib plots are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _tune(
            optuna,
            cfg,
            data_root,
            out_dir,
            space_path,
            trials,
            storage,
            study_name,
            timeout,
            pruner,
            stale_after,
        )


def _tune(
    optuna, cfg, data_root, out_dir, space_path, trials, storage, study_name, timeout, pruner, stale_after
) -> dict:
    data_root, out_dir = Path(data_root), Path(out_dir)
    if trials < 1:
        raise TuneError(f"--trials must be at least 1, got {trials}")
    if pruner not in PRUNERS:
        raise TuneError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if stale_after < 2:
        raise TuneError(f"--stale-after must be at least 2 seconds, got {stale_after}")
    if cfg.data.val_fraction == 0 and cfg.data.num_folds is None:
        raise TuneError("tuning needs validation scores: data.val_fraction is 0 (and no data.num_folds)")
    space = load_space(space_path, cfg)
    _check_tune_dir(out_dir, cfg, space)
    study = _open_study(optuna, out_dir, storage, study_name or "mmcls", pruner, stale_after)
    objective = _Objective(optuna, cfg, data_root, out_dir, space)

    start = time.monotonic()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while len(study.get_trials(deepcopy=False, states=finished)) < trials:
        if timeout is not None and time.monotonic() - start > timeout:
            log.info("--timeout %.0f s reached", timeout)
            break
        optuna.storages.fail_stale_trials(study)  # a killed process's trial: failed, a retry enqueued
        states = [t.state for t in study.get_trials(deepcopy=False)]
        waiting = optuna.trial.TrialState.WAITING in states
        active = sum(s != optuna.trial.TrialState.FAIL for s in states)
        if active < trials or waiting:
            objective.limit = trials
            try:
                study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
            except TuneStopped as exc:
                log.warning("%s; run the same mmcls tune again to continue", exc)
                return {**_finish(optuna, study, cfg, out_dir), "interrupted": True}
        else:  # the rest are running elsewhere: wait for them (or for them to go stale)
            time.sleep(HEARTBEAT_INTERVAL)
    return _finish(optuna, study, cfg, out_dir)


class TuneStopped(Exception):
    """A trial's training was stopped by a signal (SIGTERM/SIGINT): the tune stops after saving it."""


class SurplusTrial(Exception):
    """Another process started the study's last trial first: this one is not run (recorded as failed)."""


class _Objective:
    """One trial: the config with the trial's values, trained in ``TUNE_DIR/trial_NNN``, pruned by epoch."""

    def __init__(self, optuna: Any, cfg: Config, data_root: Path, out_dir: Path, space: list[Param]) -> None:
        self.optuna, self.cfg, self.data_root, self.out_dir, self.space = (
            optuna,
            cfg,
            data_root,
            out_dir,
            space,
        )
        self.limit = 0

    def __call__(self, trial: Any) -> float:
        from mmcls.engine.trainer import train

        earlier = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if t.number < trial.number and t.state != self.optuna.trial.TrialState.FAIL
        ]
        if len(earlier) >= self.limit:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study already has {len(earlier)} trials")
        values = {p.key: p.suggest(trial) for p in self.space}
        # A retried trial (its process was killed) carries the run directory of the first attempt: resume it.
        run_dir = Path(trial.user_attrs.get("run_dir") or self.out_dir / f"trial_{trial.number:03d}")
        trial.set_user_attr("run_dir", str(run_dir))
        resume = run_dir.exists()  # a retry continues from its last checkpoint (or starts again without one)
        log.info("trial %d%s in %s: %s", trial.number, " (resumed)" if resume else "", run_dir, values)
        pruned = False

        def report(epoch: int, metrics: dict[str, float]) -> bool:
            nonlocal pruned
            if OBJECTIVE not in metrics:
                return False
            trial.report(metrics[OBJECTIVE], step=epoch)
            pruned = trial.should_prune()
            return pruned

        result = train(
            with_value(self.cfg, values), self.data_root, run_dir, resume=resume, on_epoch_end=report
        )
        if pruned:
            raise self.optuna.TrialPruned(f"pruned after epoch {result.best_epoch}")
        if result.interrupted:  # stopped by a signal: a retry with the same values continues the run later
            trial.study.enqueue_trial(values, user_attrs={"run_dir": str(run_dir)})
            raise TuneStopped(f"trial {trial.number} stopped at step {result.global_step}")
        if result.best_score is None:  # no evaluation ran (a run without a validation split is refused)
            raise TuneError(f"trial {trial.number}: no validation score")
        return float(result.best_score)


def _open_study(
    optuna: Any, out_dir: Path, storage: str | None, name: str, pruner: str, stale_after: int = GRACE_PERIOD
) -> Any:
    import sqlalchemy.exc

    url = storage or f"sqlite:///{(out_dir / STUDY_DB).resolve()}"
    # Optuna 5 renamed the retry callback and its argument (the old names still work, with a warning).
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        retry = {
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        }
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
    for attempt in range(5):
        try:
            rdb = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval(stale_after),
                grace_period=stale_after,
                **retry,
            )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            # Two processes creating one new database race on its tables: the loser tries again.
            if attempt == 4:
                raise TuneError(f"--storage {url}: {' '.join(str(exc).split())[:300]}") from None
            time.sleep(1 + attempt)
        except Exception as exc:  # SQLAlchemy's errors for a bad URL or a missing driver
            raise TuneError(f"--storage {url}: {' '.join(str(exc).split())[:300]}") from None
    return optuna.create_study(
        storage=rdb,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner() if pruner == "median" else optuna.pruners.NopPruner(),
    )


def _check_tune_dir(out_dir: Path, cfg: Config, space: list[Param]) -> None:
    """A new tune needs a fresh directory; a continued one the same config and space (``tune.json``)."""
    plan = {"config": cfg.to_dict(), "space": {p.key: {p.kind: list(p.args)} for p in space}}
    marker = out_dir / TUNE_FILE
    if marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(plan)):
            raise TuneError(
                f"{marker}: this tune directory searched another config or space; choose a new --out"
            )
        return
    # Hidden files: another process's tune.json being written (two processes may start a tune at once).
    if out_dir.exists() and any(
        p.name not in (STUDY_DB, TUNE_FILE) and not p.name.startswith(".") for p in out_dir.iterdir()
    ):
        raise TuneError(f"{out_dir} is not empty and holds no tune ({TUNE_FILE}): choose a new --out")
    write_json(marker, plan)


def _finish(optuna: Any, study: Any, cfg: Config, out_dir: Path) -> dict[str, Any]:
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "trials": {s: states.count(s) for s in sorted(set(states))},
    }
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.warning("no trial completed: no %s", BEST_FILE)
        return summary
    best = study.best_trial
    with_value(cfg, best.params).save(out_dir / BEST_FILE)
    summary.update(
        best_trial=best.number,
        best_mean_f1=best.value,
        best_params=best.params,
        best_run_dir=best.user_attrs.get("run_dir"),
        best_config=str(out_dir / BEST_FILE),
        plots=write_plots(optuna, study, out_dir),
    )
    return summary


def write_plots(optuna: Any, study: Any, out_dir: Path) -> list[str]:
    """Optuna's optimization history and parameter importances: PNG (matplotlib), HTML too with plotly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = {
        "optimization_history": "plot_optimization_history",
        "param_importances": "plot_param_importances",
    }
    for name, function in plots.items():
        try:
            axes = getattr(optuna.visualization.matplotlib, function)(study)
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.savefig(out_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(f"{name}.png")
        except Exception as exc:  # e.g. importances need two complete trials with varying values
            log.info("no %s.png: %s", name, exc)
        try:
            getattr(optuna.visualization, function)(study).write_html(out_dir / f"{name}.html")
            written.append(f"{name}.html")
        except Exception as exc:  # plotly is not installed
            log.debug("no %s.html: %s", name, exc)
    return written
