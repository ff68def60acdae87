"""The training recipe in whole runs: model folder, logit adjustment through the CLI, stages (``init_from``),
one gradient all-reduce per step under DDP, and (slow) torchrun and a crash/resume with every new state on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from mmcls.config import Config
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.categories import official_categories
from mmcls.data.folds import split_train_val
from mmcls.engine.checkpoint import latest_checkpoint, load_checkpoint
from mmcls.engine.task import ClassificationTask
from mmcls.engine.trainer import train
from mmcls.models import build_model

from commands import (
    NO_DROPOUT,
    QUIET,
    WEIGHT_ATOL,
    Crash,
    child_env,
    free_ports,
    max_weight_difference,
    mmcls_command,
    one_torch_thread,
    random_batch,
    run_main,
    run_torchrun,
    tiny_config,
    train_args,
)

SMALL = [
    "train.epochs=1",
    "train.batch_size=8",
    *QUIET,
    "data.num_workers=0",
    "data.val_fraction=0",
    "data.frames.max_frames=4",
]


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(120, 0, 24, seed=3, num_frames=4, image_size=32)


@pytest.fixture(scope="module")
def first_stage(data_root) -> Path:
    """A short run with class weights on: its folder is the source of the stage and prediction tests."""
    run_dir = data_root.parent / "stage1"
    cfg = tiny_config(*SMALL, "data.limit_train=40", "train.class_weight_alpha=0.5")
    train(cfg, data_root, run_dir)
    return run_dir


def test_model_folder_holds_the_training_split_counts(first_stage, data_root):
    records = load_records(annotation_path(data_root, "labeled"), require_label=True)[:40]
    train_records, _ = split_train_val(records, 0.0, 42)
    categories = official_categories()
    expected = np.bincount([categories.lv2_index(r.category_id) for r in train_records], minlength=200)
    for name in ("best", "last"):
        saved = json.loads((first_stage / name / "categories.json").read_text())
        assert saved["train_counts"] == expected.tolist()
        assert saved["labeled_counts"] == list(categories.labeled_counts)  # the official counts stay too


def test_predict_logit_adjust_zero_is_the_plain_prediction_and_tau_favours_rare_classes(
    first_stage, data_root, tmp_path
):
    from mmcls.cli import main

    def predict(out: Path, *extra: str) -> list[str]:
        """``mmcls predict`` through the CLI's entry point, in this process (a subprocess start is slow)."""
        args = ["predict", str(first_stage), "--data-root", str(data_root), "--out", str(out), *extra]
        assert main(args) == 0
        return [line.split(",")[1] for line in out.read_text().splitlines()]

    plain = predict(tmp_path / "plain.csv")
    assert predict(tmp_path / "zero.csv", "--logit-adjust", "0") == plain
    adjusted = predict(tmp_path / "adjusted.csv", "--logit-adjust", "3")
    counts = json.loads((first_stage / "best" / "categories.json").read_text())["train_counts"]
    categories = official_categories()

    def mean_count(pred: list[str]) -> float:
        return float(np.mean([counts[categories.lv2_index(c)] for c in pred]))

    assert adjusted != plain and mean_count(adjusted) < mean_count(plain)


def test_logit_adjust_needs_train_counts(first_stage, data_root, tmp_path, capsys):
    from mmcls.cli import main

    folder = tmp_path / "old"
    shutil.copytree(first_stage / "best", folder)
    saved = json.loads((folder / "categories.json").read_text())
    del saved["train_counts"]  # a folder written before the recipe update
    (folder / "categories.json").write_text(json.dumps(saved))
    args = ["predict", str(folder), "--data-root", str(data_root), "--out", str(tmp_path / "x.csv")]
    assert main([*args, "--logit-adjust", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "train_counts" in err[-1] and not (tmp_path / "x.csv").exists()


def test_a_stage_continues_from_another_runs_weights_on_other_data(first_stage, data_root, tmp_path, caplog):
    """Stage 2 trains on other records from stage 1's released weights. With (next to) no learning rate it
    must end where stage 1 ended: proof that all weights were carried over (and nothing re-initialised).
    ``train.lr`` must be > 0, so the text tower gets 1e-30: it moves weights by ~1e-30 at most."""
    zero_lr = ["train.lr=1e-30", "train.head_lr=0", "train.frame_encoder_lr=0", "train.weight_decay=0"]
    cfg = tiny_config(*SMALL, "data.limit_train=80", f"model.init_from={first_stage}", *zero_lr)
    with caplog.at_level("INFO", logger="mmcls"):
        train(cfg, data_root, tmp_path / "stage2")
    stage1 = load_file(first_stage / "best" / "model.safetensors")
    stage2 = load_file(tmp_path / "stage2" / "last" / "model.safetensors")
    assert stage1.keys() == stage2.keys()
    # Random initialisation would differ by ~0.02; an LR of 1e-30 by less than 1e-20.
    assert all(torch.allclose(stage1[k], stage2[k], rtol=0, atol=1e-20) for k in stage1)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"loaded {len(stage1)} keys" in logged and "initialised as usual): none" in logged
    # The stage's own model folder starts from its own weights, and keeps its own split's counts.
    saved = json.loads((tmp_path / "stage2" / "last" / "categories.json").read_text())
    assert sum(saved["train_counts"]) == 80


# ------------------------------------------------------------------------------------------- DDP


def counting_hook(calls: list[int]):
    """A DDP communication hook that records each bucket it is given and reduces nothing (world size 1)."""

    def hook(state, bucket):
        calls.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    return hook


def test_adversarial_steps_all_reduce_the_gradients_once_per_step():
    """A real DDP wrapper (gloo, one process) with a communication hook that counts the gradient buckets
    reduced: an optimizer step of 2 micro-batches with PGD (6 backward passes) reduces as many buckets as
    one plain backward does, each once, i.e. every pass but the last ran inside no_sync."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_ports()[0]}", rank=0, world_size=1)
    try:
        counts: dict[str, list[int]] = {"pgd": [], "plain": []}
        tasks = {}
        for name, method in (("pgd", "pgd"), ("plain", "none")):
            cfg = Config.from_yaml(
                "tiny", [*NO_DROPOUT, "data.frames.max_frames=4", f"train.adversarial.method={method}"]
            )
            task = ClassificationTask(
                build_model(cfg, vocab_size=21128), cfg.train, torch.device("cpu")
            ).train()
            task.train_model = DistributedDataParallel(task.model)  # what wrap_distributed does for ddp
            task.train_model.register_comm_hook(None, counting_hook(counts[name]))
            tasks[name] = task
        for i in range(2):
            tasks["pgd"].forward_backward(random_batch(seed=i), scale=lambda x: x / 2, sync=i == 1)
        tasks["plain"].forward_backward(random_batch(seed=0), scale=lambda x: x, sync=True)
        assert counts["plain"] and sorted(counts["pgd"]) == sorted(counts["plain"])
        assert len(set(counts["pgd"])) == len(counts["pgd"])  # each bucket once
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- slow: whole runs
# Every new state at once: the SWA average (from epoch 1, so the kill in epoch 2 finds one), PGD, class weights,
# R-Drop, multi-sample dropout, the level-1 and soft-F1 terms, layer decay, restarts; EMA and dropout stay on.
ALL_RECIPE = [
    "train.swa_start_epoch=1",
    "train.adversarial.method=pgd",
    "train.adversarial.steps=2",
    "train.class_weight_alpha=0.5",
    "train.rdrop_alpha=0.5",
    "train.multi_dropout=2",
    "train.lv1_loss_weight=0.3",
    "train.soft_f1_weight=0.2",
    "train.layer_decay=0.8",
    "train.schedule=cosine_restarts",
    "train.ema_decay=0.9",
]
RESUME_RUN = [
    "train.epochs=2",
    "train.batch_size=8",
    "train.checkpoint_every_steps=2",
    *QUIET,
    "train.log_every_steps=2",
    "data.frames.max_frames=4",
    "data.num_workers=0",
    "data.limit_train=60",  # 54 training records: 6 steps per epoch
    *ALL_RECIPE,
]
TIMEOUT = 600


def _start(data_root: Path, run_dir: Path, resume: bool = False) -> subprocess.Popen:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    args = mmcls_command(*train_args(data_root, run_dir, RESUME_RUN), *(["--resume"] if resume else []))
    log = (run_dir.parent / f"{run_dir.name}.log").open("a")
    return subprocess.Popen(args, stdout=log, stderr=log, env=child_env(), start_new_session=True)


def _step(path: Path | None) -> int:
    return -1 if path is None else int(path.stem.split("-")[1])


@pytest.mark.slow
def test_crash_with_every_new_state_resumes_exactly(data_root, tmp_path, crash_after_step, one_thread):
    """A run crashes in epoch 2 in this process and resumes; the uninterrupted reference is a child process,
    trained meanwhile on the other core. (A real kill -9 of a process is in test_resume.py.)"""
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference = _start(data_root, reference_dir)
    try:
        crash_after_step(9)  # into epoch 2, after the checkpoint of step 8 (every 2 steps)
        with pytest.raises(Crash):
            run_main(*train_args(data_root, run_dir, RESUME_RUN))
        killed_at = _step(latest_checkpoint(run_dir))
        assert 6 < killed_at < 12 and not (run_dir / "last").exists()
        assert load_checkpoint(latest_checkpoint(run_dir))["task"]["swa"]["n_averaged"].item() == 1
        run_main(*train_args(data_root, run_dir, RESUME_RUN), "--resume")
        assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "reference.log").read_text()
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    for name in ("best", "last"):
        got, want = (load_file(d / name / "model.safetensors") for d in (run_dir, reference_dir))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    got, want = (load_checkpoint(latest_checkpoint(d)) for d in (run_dir, reference_dir))
    got["swa"], want["swa"] = got["task"]["swa"], want["task"]["swa"]  # the task's extra checkpoint state
    assert want["swa"]["n_averaged"].item() == 2
    for part in ("model", "swa", "ema"):
        assert all(torch.equal(got[part][k], want[part][k]) for k in want[part]), part
    assert got["scheduler"] == want["scheduler"]
    # The released weights are the SWA average of the two epoch ends, not the raw or EMA weights.
    released = load_file(reference_dir / "last" / "model.safetensors")
    average = {k.removeprefix("module."): v for k, v in want["swa"].items() if k.startswith("module.")}
    assert all(torch.equal(released[k], average[k]) for k in released)


@pytest.mark.slow
def test_torchrun_adversarial_training_learns_what_one_process_learns(data_root, tmp_path):
    """PGD + gradient accumulation + class weights + the level-1 loss + SWA + layer decay: 2 ranks of a
    global batch perturb with the global micro-batch's gradient, so they end where one process ends."""

    def train_single(run_dir: Path, settings: list[str]) -> None:
        with one_torch_thread():
            run_main(*train_args(data_root, run_dir, settings))

    settings = [
        *NO_DROPOUT,
        "train.epochs=2",
        "train.batch_size=8",
        "train.grad_accum_steps=2",
        "train.checkpoint_every_steps=1000",
        *QUIET,
        "data.num_workers=0",
        "data.limit_train=64",  # half of the 120 records: half the steps, the same checks
        "data.frames.max_frames=4",
        "train.adversarial.method=pgd",
        "train.adversarial.steps=2",
        "train.class_weight_alpha=1",
        "train.lv1_loss_weight=0.5",
        "train.swa_start_epoch=1",
        "train.layer_decay=0.8",
    ]
    train_single(tmp_path / "single", settings)
    run_torchrun(train_args(data_root, tmp_path / "ddp", settings))
    single = load_file(tmp_path / "single" / "last" / "model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "last" / "model.safetensors")
    assert max_weight_difference(single, ddp) < WEIGHT_ATOL
    # Without the adversarial all-reduce of the direction the ranks would perturb differently: the
    # tolerance is far below what the attack changes.
    plain_dir = tmp_path / "plain"
    train_single(plain_dir, [s for s in settings if not s.startswith("train.adversarial")])
    assert (
        max_weight_difference(single, load_file(plain_dir / "last" / "model.safetensors")) > 20 * WEIGHT_ATOL
    )
