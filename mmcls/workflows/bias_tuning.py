"""Per-class additive biases tuned on out-of-fold predictions (issue 22's ``ensemble --tune-bias``; not wired).

``tune_biases`` runs a coordinate search: class by class, the bias ``b_c`` added to the blended
log-probabilities takes the value of ``BIAS_GRID`` that maximises OOF ``mean_f1`` minus
``shrink * |b_c|`` (the shrinkage keeps a class at 0 unless moving it pays for itself), for ``rounds`` sweeps.
``nested_gain`` says what that is worth on rows the search never saw: the OOF rows are cut into folds, biases
are tuned on all other folds and applied to the held-out one, and the held-out predictions are scored
together, with and without biases. Scoring uses the ensemble's bincount ``fast_mean_f1`` (equal to the
challenge's ``mean_f1``), as the search scores thousands of candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcls.data.categories import CategoryMap
from mmcls.workflows.ensemble import fast_mean_f1

BIAS_GRID: tuple[float, ...] = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)


def tune_biases(
    log_probs: np.ndarray, labels: np.ndarray, categories: CategoryMap, shrink: float = 0.002, rounds: int = 2
) -> np.ndarray:
    """Per-class biases ``[C]`` that maximise ``mean_f1(argmax(log_probs + b)) - shrink * sum|b|``."""
    lv1_of = categories.lv2_to_lv1_matrix().argmax(axis=1)
    bias = np.zeros(log_probs.shape[1])
    for _ in range(rounds):
        for c in range(log_probs.shape[1]):
            best_value, best_objective = bias[c], -np.inf
            for value in BIAS_GRID:
                bias[c] = value
                pred = (log_probs + bias).argmax(axis=1)
                objective = fast_mean_f1(labels, pred, lv1_of) - shrink * np.abs(bias).sum()
                if objective > best_objective + 1e-12:
                    best_value, best_objective = value, objective
            bias[c] = best_value
    return bias


@dataclass
class NestedResult:
    plain_mean_f1: float  # the held-out rows without biases
    tuned_mean_f1: float  # the same rows, each with biases tuned on the other folds only
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (rows tuned on, rows scored, biases) per fold

    @property
    def gain(self) -> float:
        return self.tuned_mean_f1 - self.plain_mean_f1


def nested_gain(
    log_probs: np.ndarray,
    labels: np.ndarray,
    categories: CategoryMap,
    folds: int = 5,
    seed: int = 0,
    shrink: float = 0.002,
) -> NestedResult:
    """The OOF gain of :func:`tune_biases`, every row scored with biases tuned without it."""
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = np.array_split(order, folds)
    pred = log_probs.argmax(axis=1)
    tuned_pred = pred.copy()
    record = []
    for k, scored in enumerate(parts):
        tuned_on = np.concatenate([p for j, p in enumerate(parts) if j != k])
        bias = tune_biases(log_probs[tuned_on], labels[tuned_on], categories, shrink)
        tuned_pred[scored] = (log_probs[scored] + bias).argmax(axis=1)
        record.append((np.sort(tuned_on), np.sort(scored), bias))
    lv1_of = categories.lv2_to_lv1_matrix().argmax(axis=1)
    return NestedResult(
        fast_mean_f1(labels, pred, lv1_of),
        fast_mean_f1(labels, tuned_pred, lv1_of),
        record,
    )
