"""``mmcls tune``: search space checks, trials as run directories, the epoch-end hook, a shared study.

The fast tests run a two-trial study in-process; the slow one starts two real ``mmcls tune`` processes on one
SQLite study (one trial each), then kills a third mid-trial and lets a fourth continue the study.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")
import optuna  # noqa: E402

from mmcls.cli import main  # noqa: E402
from mmcls.config import Config  # noqa: E402
from mmcls.data.synthetic import make_synthetic_dataset  # noqa: E402
from mmcls.engine.checkpoint import latest_checkpoint  # noqa: E402
from mmcls.engine.trainer import train  # noqa: E402
from mmcls.workflows.tune import GRACE_PERIOD, heartbeat_interval, run_tune  # noqa: E402

from commands import SMALL_VOCAB_SETTING, child_env, mmcls_command  # noqa: E402

FAST = [
    SMALL_VOCAB_SETTING,
    "train.epochs=2",
    "train.batch_size=8",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "data.num_workers=0",
    "data.frames.max_frames=2",
    "data.limit_train=48",
]
SPACE = "train.lr: {log_uniform: [1e-5, 1e-3]}\ntrain.adversarial.method: {choice: [none, fgm]}\n"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune") / "data"
    make_synthetic_dataset(root, 60, 0, 10, seed=4, num_frames=2, image_size=32)
    return root


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.learning_rate: {uniform: [0.1, 0.2]}", "train.learning_rate: not a setting of the config"),
        ("train: {uniform: [0.1, 0.2]}", "train: not a setting"),
        ("train.lr: {normal: [0.1, 0.2]}", "train.lr: expected one of"),
        ("train.lr: {log_uniform: [0, 1e-3]}", "log_uniform: low must be above 0"),
        ("train.lr: {uniform: [1e-3, 1e-5]}", "must be below high"),
        (
            "train.layer_decay: {uniform: [0.5, 1.5]}",
            "1.5 is not a valid value: train.layer_decay: 1.5 is above",
        ),
        ("train.adversarial.method: {choice: [none, fgsm]}", "'fgsm' is not a valid value"),
        ("train.epochs: {int: [1.5, 3]}", "int: expected integers"),
        ("train.lr: [1, 2", "not valid YAML"),
        ("- train.lr", "expected a mapping of config keys"),
    ],
)
def test_a_bad_space_file_is_a_one_line_error_before_any_trial(data_root, tmp_path, capsys, text, message):
    space, out = _space(tmp_path, text), tmp_path / "tune"
    argv = [
        "tune",
        "tiny",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--space",
        str(space),
        "--trials",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(space) in err
    assert not out.exists()  # nothing started: no directory, no study


def test_on_epoch_end_sees_each_epochs_validation_and_can_stop_the_run(data_root, tmp_path):
    cfg = Config.from_yaml("tiny", [*FAST, "train.epochs=3"])
    seen = []

    def stop_after_two(epoch: int, metrics: dict[str, float]) -> bool:
        seen.append((epoch, metrics["mean_f1"]))
        return epoch == 2

    result = train(cfg, data_root, tmp_path / "run", on_epoch_end=stop_after_two)
    assert [e for e, _ in seen] == [1, 2] and result.interrupted
    assert result.best_score == max(score for _, score in seen)
    assert result.global_step == 2 * 5  # 43 training records (48 minus 10%): 5 steps of 8 per epoch
    assert latest_checkpoint(tmp_path / "run") is not None  # resumable like any interrupted run


def test_a_tune_runs_trials_as_run_dirs_reports_epochs_and_writes_the_best_config(data_root, tmp_path):
    cfg = Config.from_yaml("tiny", FAST)
    out = tmp_path / "tune"
    summary = run_tune(cfg, data_root, out, _space(tmp_path), 2, pruner="none")
    assert summary["trials"] == {"complete": 2}
    study = optuna.load_study(study_name="mmcls", storage=f"sqlite:///{out / 'study.db'}")
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert (
            run_dir == out / f"trial_{trial.number:03d}"
            and (run_dir / "best" / "model.safetensors").is_file()
        )
        assert sorted(trial.intermediate_values) == [1, 2]  # validation mean_f1 of every epoch, to the pruner
        assert trial.value == max(trial.intermediate_values.values())
        saved = Config.from_yaml(run_dir / "config.yaml")
        assert saved.train.lr == trial.params["train.lr"]
        assert saved.train.adversarial.method == trial.params["train.adversarial.method"]
    best = Config.from_yaml(out / "best.yaml")  # a valid mmcls train config: the base with the best values
    expected = cfg.to_dict()
    expected["train"]["lr"] = study.best_params["train.lr"]
    expected["train"]["adversarial"]["method"] = study.best_params["train.adversarial.method"]
    assert best.to_dict() == expected
    assert "optimization_history.png" in summary["plots"] and (out / "optimization_history.png").is_file()

    # Called again with the same study complete: nothing more to run. With another space: refused.
    assert run_tune(cfg, data_root, out, _space(tmp_path), 2, pruner="none")["trials"] == {"complete": 2}
    other = tmp_path / "other.yaml"
    other.write_text("train.lr: {uniform: [1e-4, 2e-4]}\n")
    with pytest.raises(Exception, match="another config or space"):
        run_tune(cfg, data_root, out, other, 3)


STALE_AFTER = 6  # seconds: the killed trial's retry need not wait the default 20


def _tune_command(data_root: Path, out: Path, space: Path, trials: int) -> list[str]:
    settings = [arg for item in FAST for arg in ("--set", item)]
    return mmcls_command(
        "tune", "tiny", "--data-root", str(data_root), "--out", str(out), "--space", str(space),
        "--trials", str(trials), "--pruner", "none", "--stale-after", str(STALE_AFTER), *settings,
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_share_one_study_and_a_killed_tune_continues_it(data_root, tmp_path):
    out, space = tmp_path / "tune", _space(tmp_path)
    logs = [(tmp_path / f"p{i}.err").open("w") for i in range(4)]
    both = [
        subprocess.Popen(
            _tune_command(data_root, out, space, 2), stdout=subprocess.DEVNULL, stderr=log, env=child_env()
        )
        for log in logs[:2]
    ]
    for proc in both:
        assert proc.wait(timeout=600) == 0, (tmp_path / "p0.err").read_text() + (
            tmp_path / "p1.err"
        ).read_text()
    study = optuna.load_study(study_name="mmcls", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2  # two trials in all, not two per process
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == 2 and len({t.number for t in complete}) == 2  # no trial ran twice
    assert sorted(p.name for p in out.glob("trial_*")) == sorted(Path(d).name for d in run_dirs)

    # A third process is killed (SIGKILL) inside the study's 3rd trial; a fourth continues the study.
    killed = subprocess.Popen(
        _tune_command(data_root, out, space, 3), stdout=subprocess.DEVNULL, stderr=logs[2], env=child_env()
    )
    deadline = time.monotonic() + 300
    while latest_checkpoint(out / "trial_002") is None:
        assert killed.poll() is None and time.monotonic() < deadline, (tmp_path / "p2.err").read_text()
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    started = time.monotonic()
    proc = subprocess.run(
        _tune_command(data_root, out, space, 3), capture_output=True, text=True, timeout=600, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= STALE_AFTER - 1  # it waited for the killed trial to go stale
    study = optuna.load_study(study_name="mmcls", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state for t in study.trials]
    assert (
        states.count(optuna.trial.TrialState.COMPLETE) == 3
        and states.count(optuna.trial.TrialState.FAIL) == 1
    )
    failed = next(t for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
    retry = next(
        t
        for t in study.trials
        if t.number > failed.number and t.user_attrs.get("run_dir") == failed.user_attrs["run_dir"]
    )
    assert retry.params == failed.params and retry.state == optuna.trial.TrialState.COMPLETE
    assert "(resumed) in" in proc.stderr  # the retry continued trial_002 from its checkpoint
    assert json.loads(proc.stdout)["trials"] == {"complete": 3, "fail": 1}


def test_heartbeats_fit_several_times_in_the_stale_window():
    """A live trial is never failed for a late heartbeat: at least 2 heartbeats per ``--stale-after``."""
    assert heartbeat_interval(GRACE_PERIOD) == 5
    for stale_after in (2, 3, 6, 8, 20, 600):
        assert 1 <= heartbeat_interval(stale_after) <= max(1, stale_after // 2)
