"""Fault tolerance of training: kill -9 / SIGTERM and resume, non-finite losses, run-directory guards.

Two resume tests run ``python -m mmcls train`` as real processes and interrupt them from outside, the way a
preempted job (SIGTERM to the process group) or an out-of-memory kill (SIGKILL) does, then resume in this
process; a third crashes a run in this process (``crash_after_step``) in its second epoch with DataLoader
workers. Each compares the resumed run with one that was never interrupted. Dropout is on (the tiny preset's
0.1), EMA is on and frames are sampled at random, so the comparison only holds if the checkpoint restores the
RNG streams, the EMA copy, the optimizer and scheduler, and the position inside the epoch exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmcls.config import Config
from mmcls.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mmcls.engine.task import ClassificationTask
from mmcls.engine.trainer import TrainingError, train

from commands import (
    QUIET,
    Crash,
    child_env,
    mmcls_command,
    one_torch_thread,
    run_main,
    tiny_config,
    train_args,
)

# 100 of the 200 labeled records, 10% held out for validation -> 90 training samples -> 11 steps of 8 per epoch.
STEPS_PER_EPOCH = 11
RUN_SETTINGS = [
    "data.limit_train=100",
    "train.epochs=2",
    "train.batch_size=8",
    "train.checkpoint_every_steps=3",
    "train.ema_decay=0.9",
    *QUIET,
    "train.log_every_steps=4",
    "data.frames.max_frames=4",
]
PROCESS_TIMEOUT = 120  # seconds; one full run takes ~15 s on 2 cores


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(200, 10, 20, seed=5, num_frames=4, image_size=32)


def _train_args(data_root: Path, run_dir: Path, workers: int, resume: bool) -> list[str]:
    """``mmcls train ...`` without the program."""
    settings = [*RUN_SETTINGS, f"data.num_workers={workers}"]
    return [*train_args(data_root, run_dir, settings), *(["--resume"] if resume else [])]


def start_training(data_root: Path, run_dir: Path, workers: int) -> subprocess.Popen:
    """Start training in the background; output goes to files next to the run (no pipe to fill up)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        (run_dir.parent / f"{run_dir.name}.stdout").open("w") as out,
        (run_dir.parent / f"{run_dir.name}.stderr").open("w") as err,
    ):  # the child keeps its own copies of the two descriptors
        return subprocess.Popen(
            mmcls_command(*_train_args(data_root, run_dir, workers, resume=False)),
            stdout=out,
            stderr=err,
            env=child_env(),
            start_new_session=True,  # its own process group, so a test can signal it as a scheduler does
        )


def output_of(run_dir: Path) -> tuple[str, str]:
    return tuple(  # type: ignore[return-value]
        (run_dir.parent / f"{run_dir.name}.{name}").read_text() for name in ("stdout", "stderr")
    )


def checkpoint_step(path: Path | None) -> int:
    return -1 if path is None else int(re.fullmatch(r"step-(\d+)\.pt", path.name).group(1))


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, min_step: int) -> int:
    """Poll until the run has a checkpoint of at least ``min_step``; its step."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        step = checkpoint_step(latest_checkpoint(run_dir))
        if step >= min_step:
            return step
        if proc.poll() is not None:
            pytest.fail(
                f"training ended (exit {proc.returncode}) before step {min_step}:\n{output_of(run_dir)}"
            )
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint of step >= {min_step} within {PROCESS_TIMEOUT} s:\n{output_of(run_dir)}")


def logged_values(run_dir: Path) -> dict[tuple[int, str], float]:
    """``(step, tag) -> value`` from metrics.csv, learning rates left out.

    A resumed run appends to the file and redoes the steps after its checkpoint, so a step can be logged twice:
    once by the killed process and once after the resume. Both must have logged the same value.
    """
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    values: dict[tuple[int, str], float] = {}
    for row in rows:
        if "/lr/" in row["tag"]:
            continue
        key, value = (int(row["step"]), row["tag"]), float(row["value"])
        assert values.setdefault(key, value) == value, f"{key} logged as {values[key]} and as {value}"
    return values


def summary_of(stdout: str) -> dict:
    summary = json.loads(stdout[stdout.index("{") :])
    summary.pop("run_dir")
    return summary


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bit-identical released weights, raw weights and optimizer state; identical logged losses and metrics."""
    for name in ("last", "best"):
        got, want = (load_file(d / name / "model.safetensors") for d in (run_dir, reference))
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, (
            f"{name}/model.safetensors differs in {len(different)} tensors, e.g. {different[:3]}"
        )
    got_ckpt, want_ckpt = (load_checkpoint(latest_checkpoint(d)) for d in (run_dir, reference))
    assert checkpoint_step(latest_checkpoint(run_dir)) == 2 * STEPS_PER_EPOCH
    for key in want_ckpt["model"]:
        assert torch.equal(got_ckpt["model"][key], want_ckpt["model"][key]), key
    for key, value in want_ckpt["ema"].items():
        assert torch.equal(got_ckpt["ema"][key], value), f"ema {key}"
    want_optim = want_ckpt["optimizer"]["state"]
    assert got_ckpt["optimizer"]["state"].keys() == want_optim.keys()
    assert got_ckpt["scheduler"] == want_ckpt["scheduler"]
    for key, state in got_ckpt["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(want_optim[key][name])), (key, name)
    got_log, want_log = logged_values(run_dir), logged_values(reference)
    assert got_log == want_log
    assert {tag for _, tag in want_log} >= {"train/loss", "val/mean_f1", "val/lv2_macro_f1"}


class Reference:
    """An uninterrupted run without DataLoader workers, started in the background when first requested.

    It runs on the second core while the first test's interrupted run starts; ``finish()`` waits for it.
    """

    def __init__(self, data_root: Path, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc = start_training(data_root, run_dir, workers=0)
        self.summary: dict | None = None

    def finish(self) -> tuple[Path, dict]:
        if self.summary is None:
            code = self.proc.wait(timeout=PROCESS_TIMEOUT)
            stdout, stderr = output_of(self.run_dir)
            assert code == 0, f"reference run exited {code}\n{stdout}\n{stderr}"
            self.summary = summary_of(stdout)
        return self.run_dir, self.summary

    def assert_reproduced_by(self, run_dir: Path, stdout: str) -> None:
        """The interrupted-and-resumed ``run_dir`` ended exactly where this uninterrupted run did."""
        reference_dir, reference_summary = self.finish()
        assert_same_run(run_dir, reference_dir)
        assert summary_of(stdout) == reference_summary

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    ref = Reference(data_root, tmp_path_factory.mktemp("reference") / "run")
    yield ref
    ref.stop()


def kill_and_resume(
    data_root: Path, run_dir: Path, workers: int, min_step: int, sig: int, whole_group: bool = False
) -> tuple[int, str]:
    """Start a run, send ``sig`` once it has a checkpoint of ``min_step``, then resume it to the end (in-process).

    ``whole_group`` signals the main process and its DataLoader workers at once, as SLURM or Ctrl-C do.

    Returns the step of the newest checkpoint the resume started from, and the resumed run's stdout.
    """
    proc = start_training(data_root, run_dir, workers)
    try:
        wait_for_checkpoint(proc, run_dir, min_step)
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=PROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = output_of(run_dir)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, f"exit {code}\n{stdout}\n{stderr}"
    else:
        assert code == 0, f"SIGTERM: exit {code}\n{stdout}\n{stderr}"
        match = re.search(r"stopped at step (\d+); continue with: .* --resume", stdout)
        assert match, f"no resume hint in the output:\n{stdout}\n{stderr}"
        assert "received signal 15" in stderr
        # The stop saved a checkpoint of exactly the step it reported.
        assert checkpoint_step(latest_checkpoint(run_dir)) == int(match.group(1))
    resumed_from = checkpoint_step(latest_checkpoint(run_dir))
    assert not (run_dir / "last").exists()  # the run really was cut short
    # The resume runs in this process (one interpreter start less): what a resume restores is on disk.
    with one_torch_thread():
        stdout, _ = run_main(*_train_args(data_root, run_dir, workers, resume=True))
    return resumed_from, stdout


# ------------------------------------------------------------------------------------ interruptions
@pytest.mark.slow
def test_kill9_in_first_epoch_then_resume_matches_uninterrupted(data_root, reference, tmp_path):
    run_dir = tmp_path / "run"
    step, stdout = kill_and_resume(data_root, run_dir, workers=0, min_step=3, sig=signal.SIGKILL)
    assert 3 <= step < STEPS_PER_EPOCH, f"the resume should start mid-epoch 1, got step {step}"
    reference.assert_reproduced_by(run_dir, stdout)


@pytest.mark.slow
def test_crash_in_second_epoch_with_workers_then_resume_matches(
    data_root, reference, tmp_path, crash_after_step, one_thread
):
    """In this process (the real kill -9 is the test above): a run with 2 DataLoader workers dies in epoch 2
    and resumes, against a reference without workers: loading must not matter."""
    run_dir = tmp_path / "run"
    crash_after_step(STEPS_PER_EPOCH + 4)  # step 15, before its checkpoint: the newest is step 12's
    with pytest.raises(Crash):
        run_main(*_train_args(data_root, run_dir, workers=2, resume=False))
    step = checkpoint_step(latest_checkpoint(run_dir))
    assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH, f"the resume should start mid-epoch 2, got {step}"
    assert not (run_dir / "last").exists()  # the run really was cut short
    stdout, _ = run_main(*_train_args(data_root, run_dir, workers=2, resume=True))
    reference.assert_reproduced_by(run_dir, stdout)


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_exits_cleanly_and_resume_matches(data_root, reference, tmp_path):
    """The DataLoader workers get the signal too: they must leave the stop to the main process."""
    run_dir = tmp_path / "run"
    step, stdout = kill_and_resume(
        data_root, run_dir, workers=2, min_step=6, sig=signal.SIGTERM, whole_group=True
    )
    assert 6 < step < 2 * STEPS_PER_EPOCH  # the step in flight when the signal came was finished first
    reference.assert_reproduced_by(run_dir, stdout)


# ------------------------------------------------------------------------------- in-process checks
def small_config(*overrides: str) -> Config:
    """One epoch of 5 steps on 43 records, no validation: a few seconds in-process."""
    return tiny_config(
        "train.epochs=1",
        "train.batch_size=8",
        *QUIET,
        "train.ema_decay=0.9",
        "data.num_workers=0",
        "data.limit_train=43",
        "data.val_fraction=0",
        "data.frames.max_frames=4",
        *overrides,
    )


def inject_nonfinite(monkeypatch, bad_steps: dict[int, float]) -> list[dict[str, torch.Tensor]]:
    """Make the loss of the given (1-based) steps ``loss * value`` (nan or inf), through the real backward.

    Returns, per step, a snapshot of the raw and EMA weights as they were when the step started.
    """
    original = ClassificationTask.forward
    snapshots: list[dict[str, torch.Tensor]] = []

    def forward(self, batch):
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            weights.update({f"ema.{k}": v.detach().clone() for k, v in self.ema.module.state_dict().items()})
        snapshots.append(weights)
        loss, parts = original(self, batch)
        step = len(snapshots)  # one forward per step: grad_accum_steps is 1
        return (loss * bad_steps[step], parts) if step in bad_steps else (loss, parts)

    monkeypatch.setattr(ClassificationTask, "forward", forward)
    return snapshots


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_isolated_nonfinite_losses_are_skipped_and_training_goes_on(data_root, tmp_path, monkeypatch, caplog):
    snapshots = inject_nonfinite(monkeypatch, {2: math.nan, 4: math.inf})
    cfg = small_config("train.max_nonfinite_steps=2")  # two bad steps, but never two in a row
    with caplog.at_level(logging.WARNING, logger="mmcls"):
        result = train(cfg, data_root, tmp_path / "run")
    assert result.global_step == 5 and len(snapshots) == 5
    skipped = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(skipped) == 2 and "step 2: non-finite loss, step skipped (1 in a row, limit 2)" in skipped[0]
    assert not same_weights(snapshots[0], snapshots[1])  # a good step changes raw and EMA weights ...
    assert same_weights(snapshots[1], snapshots[2])  # ... the skipped step 2 changed nothing
    assert not same_weights(snapshots[2], snapshots[3])
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["scheduler"]["last_epoch"] == 3  # 3 real optimizer steps out of 5
    assert all(s["step"].item() == 3 for s in state["optimizer"]["state"].values())
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


def test_consecutive_nonfinite_losses_stop_with_a_clear_error(data_root, tmp_path, monkeypatch, caplog):
    inject_nonfinite(monkeypatch, {2: math.nan, 3: math.inf, 4: math.nan, 5: math.nan})
    with (
        caplog.at_level(logging.WARNING, logger="mmcls"),
        pytest.raises(TrainingError, match=r"3 consecutive steps .*train\.max_nonfinite_steps=3"),
    ):
        train(small_config("train.max_nonfinite_steps=3"), data_root, tmp_path / "run")
    assert sum("non-finite loss" in r.getMessage() for r in caplog.records) == 3


def test_cli_reports_nonfinite_stop_in_one_line_with_exit_code_2(data_root, tmp_path, monkeypatch, capsys):
    from mmcls.cli import main

    inject_nonfinite(monkeypatch, dict.fromkeys(range(1, 6), math.nan))
    settings = ["train.max_nonfinite_steps=2", "data.limit_train=43", "data.val_fraction=0", *QUIET]
    assert main(train_args(data_root, tmp_path / "run", [*settings, "data.num_workers=0"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmcls train: error: stopping: 2 consecutive steps with a non-finite loss")
    assert "train.max_nonfinite_steps=2" in err[-1] and not any("Traceback" in line for line in err)


def test_run_dir_with_checkpoints_needs_resume(data_root, tmp_path, capsys):
    from mmcls.cli import main

    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, 7, {"progress": {}}, keep_last=1)
    assert main(train_args(data_root, run_dir, ["data.num_workers=0"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run_dir) in err and "--resume" in err
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000007.pt"]  # untouched


def test_resume_without_checkpoint_starts_from_scratch_with_a_warning(data_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mmcls"):
        result = train(small_config(), data_root, tmp_path / "run", resume=True)
    assert any("no checkpoint" in r.getMessage() and "from scratch" in r.getMessage() for r in caplog.records)
    assert result.global_step == 5 and (tmp_path / "run" / "last" / "model.safetensors").is_file()
