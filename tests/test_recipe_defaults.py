"""Issue 22: defaults that do not hurt. Scale-free adversarial perturbations and their guard."""

from __future__ import annotations

import logging

import pytest
import torch

from mmcls.config import Config
from mmcls.engine import adversarial
from mmcls.engine.task import ClassificationTask
from mmcls.models import build_model

from commands import NO_DROPOUT, random_batch

CPU = torch.device("cpu")


def adversarial_task(scale: float, *overrides: str) -> ClassificationTask:
    """The tiny model with its word embeddings and frame projection multiplied by ``scale``."""
    cfg = Config.from_yaml(
        "tiny",
        [
            "data.frames.max_frames=4",
            *NO_DROPOUT,
            "train.adversarial.method=fgm",
            "train.adversarial.target=[word_embeddings, frame_proj]",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=21128)
    with torch.no_grad():
        model.text_encoder.embeddings.word_embeddings.weight.mul_(scale)
        model.frame_proj.weight.mul_(scale)
    return ClassificationTask(model, cfg.train, CPU).train()


def rms_row_norm(rows: torch.Tensor) -> float:
    return rows.float().norm(dim=1).pow(2).mean().sqrt().item()


def perturbation_ratios(task: ClassificationTask, batch: dict) -> list[float]:
    """||delta|| over the RMS norm of the rows perturbed: the batch's token rows; all frame projection rows."""
    word = task.model.text_encoder.embeddings.word_embeddings.weight.detach().clone()
    proj = task.model.frame_proj.weight.detach().clone()
    task.forward_backward(batch, scale=lambda x: x, sync=True)
    word_delta, proj_delta = task.adversary.last_deltas
    tokens = batch["input_ids"].unique()
    untouched = torch.ones(word.shape[0], dtype=torch.bool)
    untouched[tokens] = False
    assert torch.count_nonzero(word_delta[untouched]) == 0  # only the batch's token rows move
    return [
        word_delta.norm().item() / rms_row_norm(word[tokens]),
        proj_delta.norm().item() / rms_row_norm(proj),
    ]


def test_relative_epsilon_gives_the_same_ratio_for_two_embedding_scales():
    batch = random_batch()
    small = perturbation_ratios(adversarial_task(1.0, "train.adversarial.epsilon=0.3"), batch)
    large = perturbation_ratios(adversarial_task(8.0, "train.adversarial.epsilon=0.3"), batch)
    assert small == pytest.approx([0.3, 0.3], rel=1e-4)
    assert large == pytest.approx([0.3, 0.3], rel=1e-4)


def test_absolute_epsilon_is_a_plain_length_whatever_the_scale():
    batch = random_batch()
    for scale in (1.0, 8.0):
        task = adversarial_task(scale, "train.adversarial.epsilon=0.3", "train.adversarial.norm=absolute")
        task.forward_backward(batch, scale=lambda x: x, sync=True)
        assert [d.norm().item() for d in task.adversary.last_deltas] == pytest.approx([0.3, 0.3], rel=1e-4)
        assert task.adversary.last_units == [1.0, 1.0]


def test_relative_is_the_default_and_pgd_stays_in_the_relative_ball():
    assert Config.from_yaml("tiny", []).train.adversarial.norm == "relative"
    task = adversarial_task(
        8.0, "train.adversarial.method=pgd", "train.adversarial.epsilon=0.2", "train.adversarial.alpha=0.15"
    )
    task.forward_backward(random_batch(), scale=lambda x: x, sync=True)
    for delta, unit in zip(task.adversary.last_deltas, task.adversary.last_units):
        assert 0 < delta.norm().item() <= 0.2 * unit * (1 + 1e-5)


def test_the_guard_warns_once_with_the_numbers(caplog):
    task = adversarial_task(1.0)
    guard = task.adversary
    caplog.set_level(logging.WARNING, logger="mmcls.train")
    for _ in range(adversarial.GUARD_STEPS - 1):
        guard.watch(clean=0.5, adversarial=4.0)
    guard.watch(clean=0.5, adversarial=1.0)  # one ordinary micro-batch resets the count
    for _ in range(adversarial.GUARD_STEPS - 1):
        guard.watch(clean=0.5, adversarial=4.0)
    assert not caplog.records
    for _ in range(adversarial.GUARD_STEPS + 5):
        guard.watch(clean=0.5, adversarial=4.0)
    (record,) = caplog.records
    assert "4 vs 0.5" in record.getMessage() and "epsilon=1" in record.getMessage()
