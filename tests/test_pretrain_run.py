"""``mmcls pretrain`` end to end: a real process for the reference run (trained in the background while the
crash test runs), a crash and resume, fine-tuning from the result, feature zips, and two processes under
torchrun (ITC gathered across ranks). The crash, the fine-tuning and the feature-zip runs go through the CLI's
entry point in this process (no interpreter start); the real kill -9 of a process is in test_resume.py."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmcls.engine.checkpoint import latest_checkpoint

from commands import (
    QUIET,
    SMALL_VOCAB_SETTING,
    Crash,
    child_env,
    mmcls_command,
    one_torch_thread,
    run_main,
    run_torchrun,
    train_args,
)

pytestmark = pytest.mark.slow

TIMEOUT_S = 600  # one run takes ~60 s on an idle 2-core box, several times that on a loaded one
# 24 + 60 + 12 records, 16 held out -> 80 -> 10 steps of 8 per epoch. Dropout stays on (tiny's 0.1).
SETTINGS = [
    "train.epochs=2",
    "train.batch_size=8",
    "train.checkpoint_every_steps=3",
    "train.log_every_steps=2",
    *QUIET,
    "pretrain.val_size=16",
    "data.num_workers=0",
]


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(24, 60, 12, seed=7, num_frames=4, image_size=32, feature_dim=16)


def pretrain_args(data_root: Path, run_dir: Path, settings: list[str], resume: bool = False) -> list[str]:
    """``pretrain pretrain-tiny ...`` (without the program) on the small test vocabulary."""
    args = ["pretrain", "pretrain-tiny", "--data-root", str(data_root), "--out", str(run_dir)]
    for item in [SMALL_VOCAB_SETTING, *settings]:
        args += ["--set", item]
    return [*args, *(["--resume"] if resume else [])]


def logged(run_dir: Path) -> dict[tuple[int, str], float]:
    """``(step, tag) -> value``; a step logged twice (before a kill and after the resume) must agree."""
    values: dict[tuple[int, str], float] = {}
    with (run_dir / "metrics.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            key, value = (int(row["step"]), row["tag"]), float(row["value"])
            assert values.setdefault(key, value) == value, key
    return values


class Reference:
    """The uninterrupted reference run, a real ``mmcls pretrain`` process started in the background when first
    requested: it trains on the second core while the crash test runs in this process. ``path()`` waits."""

    def __init__(self, data_root: Path, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = run_dir.parent / "reference.log"
        with self.log.open("w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                mmcls_command(*pretrain_args(data_root, run_dir, SETTINGS)),
                stdout=log,
                stderr=log,
                env=child_env(),
            )

    def path(self) -> Path:
        code = self.proc.wait(timeout=TIMEOUT_S)
        assert code == 0, f"exit {code}\n{self.log.read_text()[-4000:]}"
        return self.run_dir

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    ref = Reference(data_root, tmp_path_factory.mktemp("reference") / "run")
    yield ref
    ref.stop()


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    return reference_run.path()


def test_crash_then_resume_gives_the_same_weights(
    data_root, reference_run, tmp_path, crash_after_step, one_thread
):
    """First in this file: the reference trains meanwhile in its own process."""
    run_dir = tmp_path / "run"
    crash_after_step(13)  # into the second epoch, after the checkpoint of step 12 (every 3 steps)
    with pytest.raises(Crash):
        run_main(*pretrain_args(data_root, run_dir, SETTINGS))
    assert int(latest_checkpoint(run_dir).stem.split("-")[1]) == 12
    assert not (run_dir / "last").exists()
    run_main(*pretrain_args(data_root, run_dir, SETTINGS, resume=True))
    reference = reference_run.path()
    for name in ("last", "best"):
        got, want = (load_file(d / name / "model.safetensors") for d in (run_dir, reference))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert logged(run_dir) == logged(reference)


def test_pretraining_logs_each_objective_and_writes_model_folders(reference):
    tags = {tag for _, tag in logged(reference)}
    for name in ("mlm", "mfm", "vtm", "itc"):
        assert {f"train/{name}_loss", f"train/{name}_acc", f"val/{name}_loss", f"val/{name}_acc"} <= tags
    assert {"train/loss", "val/loss", "train/itc_temperature"} <= tags
    for name in ("best", "last"):
        assert (reference / name / "model.safetensors").is_file()
        assert (reference / name / "pretrain_info.json").is_file()


def test_finetuning_from_the_pretraining_run_says_what_it_loaded(data_root, reference, tmp_path, caplog):
    settings = [f"model.init_from={reference}", "train.epochs=1", "train.batch_size=8", *QUIET]
    with caplog.at_level("INFO", logger="mmcls"), one_torch_thread():
        run_main(*train_args(data_root, tmp_path / "ft", [*settings, "data.num_workers=0"]))
    line = next(r.getMessage() for r in caplog.records if "init_from" in r.getMessage())
    assert str(reference / "best") in line
    missing = (
        "model keys not in the file (initialised as usual): classifier.1.* (2), video_classifier.1.* (2);"
    )
    assert missing in line
    assert "itc_logit_scale.* (1)" in line and "mlm_transform.0.* (2)" in line


def test_pretraining_on_feature_zips_with_bf16_autocast(data_root, tmp_path):
    settings = [
        *SETTINGS,
        "train.epochs=1",
        "train.precision=bf16",
        "data.frames.source=zip_feats",
        "data.frames.feature_dim=16",
        "model.frame_encoder.type=identity",
        "model.frame_encoder.input_dim=16",
    ]
    run_main(*pretrain_args(data_root, tmp_path / "run", settings))
    assert all(
        torch.isfinite(v).all() for v in load_file(tmp_path / "run" / "last" / "model.safetensors").values()
    )
    assert {"train/mfm_loss", "val/itc_acc"} <= {tag for _, tag in logged(tmp_path / "run")}


def test_pretraining_under_torchrun_with_two_processes(data_root, tmp_path):
    run_torchrun(pretrain_args(data_root, tmp_path / "run", [*SETTINGS, "train.epochs=1"]), timeout=TIMEOUT_S)
    values = logged(tmp_path / "run")
    assert values[(10, "val/num_samples")] == 16
    assert all(v == v for v in values.values())  # no NaN
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()
