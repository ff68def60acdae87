"""Validate everything before any work, and never guess (issue 12, class 2).

Every invalid setting fails at once (before data is read or a folder is written) with one line naming it;
``--resume`` refuses a config that differs from the run's saved one except in resume-safe settings.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from mmcls.cli import main
from mmcls.config import Config, ConfigError, resume_safe_keys
from mmcls.engine.checkpoint import save_checkpoint
from mmcls.engine.run_dir import RunDirError, check_run_dir
from mmcls.files import RUN_MARKER

from commands import train_args

BAD_SETTINGS = [
    ("train.eval_every_epochs=0", "train.eval_every_epochs"),
    ("train.log_every_steps=0", "train.log_every_steps"),
    ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=-1", "train.batch_size"),
    ("train.batch_size=1.5", "train.batch_size"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("data.frames.max_frames=0", "data.frames.max_frames"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.frames.mean=[0.5, 0.5]", "data.frames.mean"),
    ("data.frames.std=[0.5, 0, 0.5]", "data.frames.std"),
    ("model.num_classes=10", "model.num_classes"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.progress_bar=maybe", "train.progress_bar"),
    ("data.text.fields=[title, comments]", "data.text.fields"),
    ("data.text.budgets={title: -5}", "data.text.budgets"),
    ("train.betas=[0.9, 1.5]", "train.betas"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("data.frames.max_frames=16", "data.frames.max_frames"),  # more than the tiny model's 8 positions
    ("data.frames.source=zip_feats", "data.frames.source"),  # features need model.frame_encoder.type=identity
]


@pytest.fixture
def empty_data_root(tmp_path) -> Path:
    """A data root with nothing in it: a check that came after reading data would fail differently."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.mark.parametrize(("setting", "key"), BAD_SETTINGS, ids=[s for s, _ in BAD_SETTINGS])
def test_each_invalid_setting_fails_fast_in_one_line_naming_it(
    tmp_path, empty_data_root, capsys, setting, key
):
    run = tmp_path / "run"
    start = time.perf_counter()
    assert main(train_args(empty_data_root, run, [setting])) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0], err
    assert not run.exists()  # nothing written before the refusal
    assert elapsed < 30  # generous on a shared 2-core machine; the check itself takes milliseconds


def test_a_config_changed_in_code_is_checked_too(tmp_path):
    cfg = Config.from_yaml("tiny")
    cfg.train.epochs = 0
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        check_run_dir(cfg, tmp_path / "run", resume=False, overwrite=False)


def test_a_mistyped_config_path_is_an_error_never_the_preset(tmp_path, capsys):
    assert (
        main(["train", "myexpp/tiny.yaml", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert "myexpp/tiny.yaml" in err and "no such config file" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "train.device=cuda"], "train.device=cuda"),
        (["--set", "train.precision=fp16"], "train.precision=fp16"),
    ],
)
def test_gpu_settings_without_a_gpu_are_one_line(tmp_path, empty_data_root, capsys, args, named):
    assert main([*train_args(empty_data_root, tmp_path / "run", []), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
@pytest.mark.parametrize(
    ("option", "named"), [("--device=cuda", "--device=cuda"), ("--precision=fp16", "--precision")]
)
def test_predict_gpu_options_without_a_gpu_name_the_option(tmp_path, capsys, option, named):
    assert (
        main(
            ["predict", str(tmp_path), "--data-root", str(tmp_path), "--out", str(tmp_path / "o.csv"), option]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "train." not in err[0]


def test_predict_batch_size_zero_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path), "--data-root", str(tmp_path), "--out", "o.csv", "--batch-size", "0"])
    assert info.value.code == 2 and "--batch-size: must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- resume
@pytest.fixture
def saved_run(tmp_path) -> Path:
    """A run directory as training leaves it after a checkpoint (marker, config.yaml, checkpoints/)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("{}")
    Config.from_yaml("tiny").save(run / "config.yaml")
    save_checkpoint(run, 3, {"progress": {}}, keep_last=1)
    return run


def test_resume_with_a_changed_setting_is_refused_with_the_list_of_changes(saved_run, capsys):
    saved = (saved_run / "config.yaml").read_bytes()
    settings = ["train.lr=0.5", "model.bert_config.num_hidden_layers=4", "train.epochs=20"]
    assert main([*train_args(saved_run.parent, saved_run, settings), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "train.lr: 0.001 -> 0.5" in err[0] and "model.bert_config.num_hidden_layers: 2 -> 4" in err[0]
    assert "train.epochs:" not in err[0]  # safe to change: not listed as a refused difference
    assert (saved_run / "config.yaml").read_bytes() == saved  # the run's record is not rewritten


def test_resume_allows_safe_changes_and_says_so(saved_run, caplog):
    cfg = Config.from_yaml("tiny", ["train.epochs=20", "data.num_workers=0", "train.progress_bar=false"])
    with caplog.at_level("INFO", logger="mmcls"):
        check_run_dir(cfg, saved_run, resume=True, overwrite=False)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "safe to change" in message and "train.epochs=20 (was 10)" in message


def test_resume_and_overwrite_together_are_refused(saved_run):
    with pytest.raises(RunDirError, match="only one"):
        check_run_dir(Config.from_yaml("tiny"), saved_run, resume=True, overwrite=True)


def test_every_resume_safe_key_is_a_real_setting():
    cfg = Config()
    for key in resume_safe_keys():
        section = cfg
        *parents, name = key.split(".")
        for part in parents:
            section = getattr(section, part)
        assert name in {f.name for f in dataclasses.fields(section)}, key
    assert {"train.epochs", "data.num_workers", "train.progress_bar"} <= resume_safe_keys()
    assert "train.lr" not in resume_safe_keys()
