"""Multi-process training through the real ``torchrun`` (gloo on this CPU), compared with one process.

The trainer promises that the world size does not change what is learned: the global batch is fixed by the
config and split across ranks, the training sampler shards one permutation per epoch, and evaluation
gathers every rank's predictions and scores each validation sample once. So a 2-process run must give the
single-process validation metrics and, up to the rounding of gloo's gradient averaging, the same weights;
and only rank 0 may write to the run directory.

Every multi-process run here is a real subprocess (``python -m torch.distributed.run ... -m mmcls train``),
with a time limit, ``OMP_NUM_THREADS=1`` (two ranks on two cores) and its stderr shown when it fails. The
single-process references run in this process, through the CLI's entry point with one torch thread.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from commands import (
    NO_DROPOUT,
    QUIET,
    WEIGHT_ATOL,
    max_weight_difference,
    one_torch_thread,
    run_main,
    run_torchrun,
    train_args,
)

pytestmark = pytest.mark.slow

# Deterministic and quick: no dropout, one DataLoader process, no progress bar or TensorBoard, 4 frames.
FAST = [
    *NO_DROPOUT,
    "train.epochs=2",
    "train.batch_size=8",
    "train.checkpoint_every_steps=1000",
    "train.log_every_steps=3",
    *QUIET,
    "data.num_workers=0",
    "data.frames.max_frames=4",
]
# The pixel path of the tiny preset, with gradient accumulation so that no_sync is exercised.
FRAMES = [*FAST, "train.grad_accum_steps=2"]
# 150 labeled records -> 15 validation samples: DistributedSampler pads rank 1's shard with a repeat.
# No frames can be read (text-only fallback), so no local batch has a sample for the video head; with EMA.
ODD_TEXT_ONLY = [*FAST, "data.limit_train=150", "train.ema_decay=0.9"]


# ------------------------------------------------------------------------------------------------ helpers
def train_single(data_root: Path, out: Path, overrides: list[str]) -> None:
    """The single-process reference: ``mmcls train`` in this process."""
    with one_torch_thread():
        run_main(*train_args(data_root, out, overrides))


def train_torchrun(data_root: Path, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return run_torchrun(train_args(data_root, out, overrides))


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def val_metrics(run_dir: Path) -> dict[tuple[int, str], float]:
    """``{(step, "val/..."): value}`` from RUN_DIR/metrics.csv."""
    return {
        (int(row["step"]), row["tag"]): float(row["value"])
        for row in metric_rows(run_dir)
        if row["tag"].startswith("val/")
    }


def train_losses(run_dir: Path) -> dict[tuple[int, str], float]:
    return {
        (int(row["step"]), row["tag"]): float(row["value"])
        for row in metric_rows(run_dir)
        if row["tag"].startswith("train/loss")
    }


def assert_same_val_metrics(single: Path, multi: Path, loss_rel: float = 1e-4) -> None:
    expected, got = val_metrics(single), val_metrics(multi)
    assert expected, f"{single}/metrics.csv has no val/* rows"
    assert set(got) == set(expected)
    for key, value in expected.items():
        if key[1] == "val/loss":  # a mean of log-probabilities: rounding differs with the weights
            assert got[key] == pytest.approx(value, rel=loss_rel), key
        else:  # F1 scores and the sample count: identical
            assert got[key] == value, key


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "last" / "model.safetensors")


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(160, 0, 20, seed=0, num_frames=4, image_size=32, feature_dim=64)


@pytest.fixture(scope="module")
def text_only_root(data_root: Path) -> Path:
    """The same annotations without any frame zip: every sample falls back to text only."""
    root = data_root.parent / "text_only"
    shutil.copytree(data_root / "annotations", root / "annotations")
    return root


@pytest.fixture(scope="module")
def single_run(data_root: Path) -> Path:
    out = data_root.parent / "single"
    train_single(data_root, out, FRAMES)
    return out


@pytest.fixture(scope="module")
def ddp_run(data_root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = data_root.parent / "ddp"
    return out, train_torchrun(data_root, out, FRAMES)


@pytest.fixture(scope="module")
def text_only_runs(text_only_root: Path) -> tuple[Path, Path]:
    single, ddp = text_only_root.parent / "text_only_single", text_only_root.parent / "text_only_ddp"
    train_single(text_only_root, single, ODD_TEXT_ONLY)
    train_torchrun(text_only_root, ddp, ODD_TEXT_ONLY)
    return single, ddp


# ------------------------------------------------------------------------------------------------ DDP
def test_ddp_matches_single_process(
    single_run: Path, ddp_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    ddp, _ = ddp_run
    assert_same_val_metrics(single_run, ddp)
    assert val_metrics(ddp)[(18, "val/num_samples")] == 16  # 10% of 160 labeled records

    # The logged training loss is the global batch's (averaged over ranks), not rank 0's half.
    expected_losses, got_losses = train_losses(single_run), train_losses(ddp)
    assert got_losses.keys() == expected_losses.keys() and got_losses
    for key, value in expected_losses.items():
        assert got_losses[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key

    single_w, ddp_w = last_weights(single_run), last_weights(ddp)
    assert max_weight_difference(single_w, ddp_w) < WEIGHT_ATOL
    # The tolerance is far below what one epoch of training changes: a wrong shard or batch would show.
    epoch1 = torch.load(single_run / "checkpoints" / "step-00000009.pt", weights_only=True)["model"]
    assert max_weight_difference(single_w, epoch1) > 20 * WEIGHT_ATOL


def test_ddp_only_rank0_writes(single_run: Path, ddp_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    ddp, proc = ddp_run
    # Same files as a single-process run: no per-rank copies, no leftover temporary files or folders.
    assert files_of(ddp) == files_of(single_run)
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step-00000009.pt", "step-00000018.pt"]
    for name in ("best", "last"):
        assert (ddp / name / "model.safetensors").is_file()
    lines = (ddp / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert lines.count("time,step,epoch,tag,value") == 1
    rows = metric_rows(ddp)
    assert len({(r["step"], r["tag"]) for r in rows}) == len(rows), "a metric row was written twice"
    # One result on stdout, and INFO logging from rank 0 only.
    assert proc.stdout.count('"run_dir"') == 1
    assert "[rank 0] INFO" in proc.stderr
    assert "[rank 1] INFO" not in proc.stderr


# ------------------------------------------------------------------------------------------------ FSDP
def _has_fsdp2() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_fsdp2(), reason="FSDP2 (torch.distributed.fsdp.fully_shard) needs torch>=2.6")
def test_fsdp_on_cpu_matches_single_process(data_root: Path, single_run: Path) -> None:
    from mmcls.models import load_model_dir

    out = data_root.parent / "fsdp"
    train_torchrun(data_root, out, [*FRAMES, "train.distributed=fsdp"])

    assert_same_val_metrics(single_run, out)
    assert files_of(out) == files_of(single_run)
    # The released folder holds the gathered full weights, loadable without any process group.
    loaded = load_model_dir(out / "last")
    weights = {k: v.detach() for k, v in loaded.model.state_dict().items()}
    single = last_weights(single_run)
    assert max_weight_difference({k: weights[k] for k in single}, single) < WEIGHT_ATOL
    # Checkpoints hold full (unsharded) tensors too, so a run can resume with any world size.
    state = torch.load(out / "checkpoints" / "step-00000018.pt", weights_only=True)
    assert state["model"].keys() == single.keys()
    assert max_weight_difference(state["model"], single) < WEIGHT_ATOL


# ------------------------------------------------------------------------------------------------ evaluation
def test_eval_gather_scores_each_padded_sample_once(text_only_runs: tuple[Path, Path]) -> None:
    single, ddp = text_only_runs
    # 15 validation samples: each rank evaluates 8, rank 1's last one a repeat that must not count twice.
    for run in (single, ddp):
        counts = {step: v for (step, tag), v in val_metrics(run).items() if tag == "val/num_samples"}
        assert counts and set(counts.values()) == {15}, run
    assert_same_val_metrics(single, ddp)


def test_ddp_trains_batches_without_frames_and_ema(text_only_runs: tuple[Path, Path]) -> None:
    single, ddp = text_only_runs
    # No sample has frames, so the video head gets no signal: DDP must still all-reduce its (zero) gradient
    # rather than stop with "Expected to have finished reduction in the prior iteration".
    errors = json.loads((ddp / "data_errors.json").read_text())
    assert errors["train"]["total"].get("missing_file", 0) > 0
    # EMA is built before DDP wrapping and updated from the plain module: the released (EMA) weights agree.
    assert max_weight_difference(last_weights(single), last_weights(ddp)) < WEIGHT_ATOL


def test_ddp_text_only_source_trains(text_only_root: Path) -> None:
    """``data.frames.source=none`` leaves the frame encoder without gradients: DDP must be told so."""
    out = text_only_root.parent / "source_none_ddp"
    train_torchrun(text_only_root, out, [*FAST, "train.epochs=1", "data.frames.source=none"])
    assert (out / "last" / "model.safetensors").is_file()
    assert [v for (_, tag), v in val_metrics(out).items() if tag == "val/num_samples"] == [16]


# ------------------------------------------------------------------------------------------------ prediction
def test_torchrun_predict_matches_single_process_and_rank0_writes(data_root: Path, single_run: Path) -> None:
    def predict_args(out: Path) -> list[str]:
        # 20 test records in batches of 3 per rank: uneven shards, the last one padded by the sampler.
        return [
            "predict",
            str(single_run),
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--batch-size",
            "3",
        ]

    single_csv, multi_csv = data_root.parent / "single.csv", data_root.parent / "multi.csv"
    with one_torch_thread():
        run_main(*predict_args(single_csv))
    proc = run_torchrun(predict_args(multi_csv))

    assert multi_csv.read_text() == single_csv.read_text()
    assert len(single_csv.read_text().splitlines()) == 20
    assert proc.stdout.count("wrote 20 predictions") == 1
