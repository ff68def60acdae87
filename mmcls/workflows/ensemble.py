"""Ensembles: blend members' probabilities with equal weights or with weights fitted on out-of-fold predictions.

Hill climbing (Caruana et al.'s ensemble selection, with negative steps allowed as the challenge's winners
did): start from the best single member on the OOF predictions, then repeatedly take the one step
``weights[m] += step`` (over every member and every step of :data:`STEPS`) that raises the OOF ``mean_f1``
most, until no step raises it by more than ``tol``. The result can therefore never score below the best
single member on OOF, and it is deterministic (ties go to the earlier member and step). Negative weights can
make a blended score negative; :func:`blend` clips at 0 and renormalises, which keeps each row's argmax.

``tune_bias`` (``--tune-bias``, off by default) adds per-class biases to the blend's log-probabilities, tuned
on the OOF blend and applied only when a nested estimate gains on every fold (:mod:`mmcls.workflows.bias_tuning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.categories import CategoryMap
from mmcls.data.prob_files import check_probs_path, load_probs, rows_for, save_probs, sidecar, write_json
from mmcls.errors import MmclsError
from mmcls.workflows.members import OOF_FILE, PredictOptions, load_member, same_categories

STEPS = (0.5, 0.25, 0.1, -0.1, -0.25)


class EnsembleError(MmclsError, ValueError):
    """Members, OOF sources or outputs of an ensemble do not fit together."""


def fast_mean_f1(true: np.ndarray, pred: np.ndarray, lv1_of_lv2: np.ndarray) -> float:
    """The challenge's ``mean_f1`` from level-2 indices, with numpy counts (equal to
    :func:`mmcls.metrics.compute_scores`, which calls scikit-learn and is too slow for thousands of
    candidate blends). Micro F1 of single-label predictions is accuracy; macro F1 averages over the classes
    present in the truth or the predictions, as scikit-learn does."""

    def f1_pair(t: np.ndarray, p: np.ndarray, n: int) -> tuple[float, float]:
        hits = t == p
        tp = np.bincount(t[hits], minlength=n)
        support = np.bincount(t, minlength=n) + np.bincount(p, minlength=n)
        present = support > 0
        macro = float(np.mean(2 * tp[present] / support[present]))
        return float(hits.mean()), macro

    lv1_of_lv2 = np.asarray(lv1_of_lv2)
    n2, n1 = len(lv1_of_lv2), int(lv1_of_lv2.max()) + 1
    lv2_micro, lv2_macro = f1_pair(true, pred, n2)
    lv1_micro, lv1_macro = f1_pair(lv1_of_lv2[true], lv1_of_lv2[pred], n1)
    return (lv1_micro + lv1_macro + lv2_micro + lv2_macro) / 4


def blend(member_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w * P)`` clipped at 0 and renormalised per row (a probability table again)."""
    total = sum(w * p for w, p in zip(weights, member_probs))
    total = np.clip(total, 0.0, None)
    sums = total.sum(axis=1, keepdims=True)
    return (total / np.where(sums > 0, sums, 1.0)).astype(np.float32)


@dataclass
class HillClimbResult:
    weights: list[float]  # normalised to sum 1
    score: float  # OOF mean_f1 of the blend
    member_scores: list[float]  # OOF mean_f1 of each member alone
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # (member, step, score after)


def hill_climb(
    member_probs: Sequence[np.ndarray],
    labels: np.ndarray,
    lv1_of_lv2: np.ndarray,
    steps: Sequence[float] = STEPS,
    max_rounds: int = 100,
    tol: float = 1e-9,
) -> HillClimbResult:
    """Weights for ``member_probs`` (OOF, rows aligned with ``labels``) that maximise the OOF mean_f1."""
    if not member_probs:
        raise ValueError("hill climbing needs at least one member")

    def score_of(weights: np.ndarray) -> float:
        if weights.sum() <= 0:  # a blend with a non-positive total would rank classes upside down
            return -np.inf
        scores = sum(w * p for w, p in zip(weights, member_probs) if w != 0)
        return fast_mean_f1(labels, scores.argmax(axis=1), lv1_of_lv2)

    member_scores = [fast_mean_f1(labels, p.argmax(axis=1), lv1_of_lv2) for p in member_probs]
    weights = np.zeros(len(member_probs))
    weights[int(np.argmax(member_scores))] = 1.0
    best = max(member_scores)
    history: list[tuple[int, float, float]] = []
    for _ in range(max_rounds):
        candidate = None
        for m in range(len(member_probs)):
            for step in steps:
                trial = weights.copy()
                trial[m] += step
                score = score_of(trial)
                if score > best + tol and (candidate is None or score > candidate[2]):
                    candidate = (m, step, score)
        if candidate is None:
            break
        m, step, best = candidate
        weights[m] += step
        history.append((m, step, best))
    return HillClimbResult((weights / weights.sum()).tolist(), best, member_scores, history)


# ------------------------------------------------------------------------------------------- the command


def oof_tables(
    oof_sources: Sequence[str | Path], categories: CategoryMap
) -> tuple[list[np.ndarray], np.ndarray]:
    """The members' OOF probabilities aligned on the first one's record order, and the true level-2 indices.

    A source is a kfold directory (its ``oof.npy``) or an ``.npy`` probabilities file whose ``.json`` has
    ``labels`` (kfold writes them). Every source must cover the same records.
    """
    tables, labels, order = [], None, None
    for source in oof_sources:
        path = Path(source)
        path = path / OOF_FILE if path.is_dir() else path
        if order is None:
            order, probs, info = load_probs(path)
            if "labels" not in info:
                raise EnsembleError(
                    f"{sidecar(path)}: no 'labels' (out-of-fold files from mmcls kfold have them)"
                )
            labels = np.array([categories.lv2_index(c) for c in info["labels"]])
        else:
            ids = load_probs(path)[0]
            if sorted(ids) != sorted(order):
                raise EnsembleError(f"{path}: its records differ from those of {oof_sources[0]}")
            probs = rows_for(path, order, categories)
        tables.append(probs)
    assert labels is not None
    return tables, labels


def run_ensemble(
    member_paths: Sequence[str | Path],
    data_root: str | Path,
    split: str,
    out_csv: str | Path,
    *,
    method: str = "mean",
    oof_sources: Sequence[str | Path] | None = None,
    save_probs_to: str | Path | None = None,
    options: PredictOptions | None = None,
    overwrite: bool = False,
    tune_bias: bool = False,
) -> dict[str, Any]:
    """Blend the members' probabilities on ``split``, write the submission CSV (and the probabilities), and
    return the summary that is also saved as ``<out>.ensemble.json`` (members, weights, OOF scores, and with
    ``tune_bias`` the biases' nested OOF gain and whether they were applied)."""
    from mmcls.engine.distributed import world_info_from_env
    from mmcls.inference.predict import write_submission

    options = options or PredictOptions()
    out_csv = Path(out_csv)
    summary_path = out_csv.with_suffix(".ensemble.json")
    outputs = [("--out", out_csv), ("--out", summary_path)]
    if save_probs_to:
        check_probs_path(save_probs_to)
        outputs += [("--save-probs", Path(save_probs_to)), ("--save-probs", sidecar(save_probs_to))]
    guard_member_outputs(outputs, member_paths, data_root, split, extra_inputs=list(oof_sources or []))
    refuse_existing([path for _, path in outputs], overwrite)
    members = [load_member(p) for p in member_paths]
    categories = same_categories(members)
    summary: dict[str, Any] = {"members": [m.name for m in members], "method": method, "split": split}

    sources = list(oof_sources or [])
    if not sources and all(m.oof_path() is not None for m in members):
        sources = [str(m.oof_path()) for m in members]
    if sources and len(sources) != len(members):
        raise EnsembleError(f"--oof names {len(sources)} sources for {len(members)} members (one per member)")
    if method not in ("mean", "hill-climb"):
        raise EnsembleError(f"--weights must be mean or hill-climb, got {method!r}")
    for option, needed in (("--weights hill-climb", method == "hill-climb"), ("--tune-bias", tune_bias)):
        if needed and not sources:
            raise EnsembleError(f"{option} needs out-of-fold predictions: --oof KFOLD_DIR per member")
    # Read once, for the weights, their OOF score and the biases (none of them runs without sources).
    tables, labels = oof_tables(sources, categories) if sources else ([], np.empty(0, dtype=np.int64))
    lv1 = np.asarray(categories.lv1_of_lv2)
    if method == "hill-climb":
        fit = hill_climb(tables, labels, lv1)
        weights = fit.weights
        summary["oof"] = {"member_mean_f1": fit.member_scores, "mean_f1": fit.score, "steps": len(fit.steps)}
    else:
        weights = [1.0 / len(members)] * len(members)
        if sources:  # for comparison: the OOF score of the plain mean
            summary["oof"] = {
                "member_mean_f1": [fast_mean_f1(labels, t.argmax(axis=1), lv1) for t in tables],
                "mean_f1": fast_mean_f1(labels, blend(tables, weights).argmax(axis=1), lv1),
            }
    summary["weights"] = weights
    bias = None
    if tune_bias:
        from mmcls.workflows.bias_tuning import tune_on_oof

        tuning = tune_on_oof(blend(tables, weights), labels, categories)
        summary["tune_bias"] = tuning.summary(categories)
        bias = tuning.bias

    ids, member_probs = None, []
    for member in members:
        member_ids, probs = member.predict(data_root, split, options)
        if ids is not None and member_ids != ids:
            raise EnsembleError(f"{member.name}: predicted other records of {split!r} than {members[0].name}")
        ids = member_ids
        member_probs.append(probs)
    assert ids is not None
    probs = blend(member_probs, weights)
    if bias is not None:
        from mmcls.workflows.bias_tuning import apply_bias

        probs = apply_bias(probs, bias)
    if world_info_from_env().is_main:
        write_submission(out_csv, ids, [categories.category_id(int(i)) for i in probs.argmax(axis=1)])
        if save_probs_to:
            save_probs(
                save_probs_to,
                probs,
                ids,
                categories,
                split=split,
                members=summary["members"],
                weights=weights,
                **({"biases": summary["tune_bias"]["biases"]} if bias is not None else {}),
            )
        write_json(summary_path, summary)
    return summary


def guard_member_outputs(
    outputs: Sequence[tuple[str, Path]],
    member_paths: Sequence[str | Path],
    data_root: str | Path,
    split: str,
    *,
    extra_inputs: Sequence[str | Path] = (),
) -> None:
    """The output guard of the commands that run members (ensemble, pseudo-label): no output is, is inside or
    contains a member, an extra input (``--oof``), the split's annotation file or the data root's frames."""
    from mmcls.output_guard import check_outputs, data_inputs, model_inputs
    from mmcls.workflows.pseudo_label import member_annotation_files

    files = member_annotation_files(member_paths[0]) if member_paths else {}
    inputs: list[str | Path] = [p for member in member_paths for p in model_inputs(member)]
    inputs += [*extra_inputs, *data_inputs(data_root, [split], files), *data_inputs(data_root, [split])]
    check_outputs(outputs, inputs)


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Output files are never silently replaced: an existing one needs ``--overwrite``."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise EnsembleError(f"{existing[0]} exists: choose another output or pass --overwrite")
