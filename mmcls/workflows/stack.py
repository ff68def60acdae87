"""Stacking: a meta-model fitted on the members' out-of-fold probabilities, applied to their predictions.

Where :mod:`mmcls.workflows.ensemble` fits one weight per member, a stack learns how far to trust each member
*per class* (a member that confuses two classes gets little say on them). Two meta-models, both linear in the
members' log-probabilities ``L[m, n, c] = log p_m(c | n)``:

- ``logreg``: scikit-learn's multinomial logistic regression on all members' log-probabilities side by side
  (``M * C`` features): every class's score is a weighted sum over every member's every class.
- ``conv``: a ``1 x M`` kernel per class over the member axis (``z[n, c] = sum_m W[c, m] L[m, n, c] + b[c]``),
  fitted with torch: ``C * (M + 1)`` parameters, the "1x3-convolution over the models' probabilities" that
  a winning team used. It cannot overfit the way ``logreg`` can on few rows.
- ``lgbm``: LightGBM's multiclass gradient boosting on the same ``M * C`` features (non-linear: it can learn
  "member A says 3 and member B says 7 -> 7"). It grows one tree per class and round, so it is by far the
  slowest of the three. LightGBM is light (a 10 MB wheel over numpy/scipy; ``pip install 'mmcls[lgbm]'``)
  and imported only for this method.

The stack's own OOF score comes from nested folds: the OOF rows are split again (stratified, seeded), and
each fold's rows are predicted by a meta-model fitted on the other folds only, so no row is predicted by a
model that saw its label. The meta-model that is saved and applied is then fitted on all OOF rows.

Layout of ``result.stack/`` (next to ``result.csv``)::

    stack.json     method, seed, members, classes, the OOF scores (stack, members, mean, hill-climb)
    meta.npz       the fitted weights and biases (plain arrays: no pickle)
    oof.npy/.json  the stack's nested-fold OOF probabilities (a probabilities file with labels, so the
                   stack itself can be an OOF source of ``mmcls ensemble --oof``)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.categories import CategoryMap
from mmcls.data.folds import assign_folds
from mmcls.data.prob_files import save_probs, write_json
from mmcls.workflows.ensemble import (
    EnsembleError,
    blend,
    fast_mean_f1,
    hill_climb,
    oof_tables,
    refuse_existing,
)
from mmcls.workflows.members import OOF_FILE, PredictOptions, load_member, same_categories

log = logging.getLogger("mmcls.stack")

METHODS = ("logreg", "conv", "lgbm")
LGBM_ROUNDS = 100
NESTED_FOLDS = 5
STACK_FILE = "stack.json"
META_FILE = "meta.npz"
# Classes missing from a meta-model's training rows get this bias: never predicted, still finite in float32.
ABSENT_BIAS = -1e4


class StackError(EnsembleError):
    """Stack members, their OOF predictions or a saved stack do not fit together."""


def log_features(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """``[M, N, C]`` log-probabilities (clipped: a member's 0 must not become -inf)."""
    return np.log(np.clip(np.stack([np.asarray(p, dtype=np.float64) for p in member_probs]), 1e-7, None))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class MetaModel:
    """A fitted meta-model: ``logreg`` weight ``[C, M*C]`` or ``conv`` weight ``[C, M]``, and bias ``[C]``;
    ``lgbm``: LightGBM's model text and the level-2 index of each of its classes (``classes``)."""

    method: str
    weight: np.ndarray
    bias: np.ndarray
    booster: str = ""
    classes: np.ndarray | None = None

    def predict(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """Stacked ``[N, C]`` probabilities of the members' ``[N, C]`` probabilities (same member order)."""
        logp = log_features(member_probs)
        if self.method == "conv":
            return softmax(np.einsum("mnc,cm->nc", logp, self.weight) + self.bias)
        features = np.concatenate(list(logp), axis=1)  # [N, M*C]
        if self.method == "logreg":
            return softmax(features @ self.weight.T + self.bias)
        return self._predict_lgbm(features, logp.shape[2])

    def _predict_lgbm(self, features: np.ndarray, num_classes: int) -> np.ndarray:
        out = np.zeros((len(features), num_classes), dtype=np.float32)
        assert self.classes is not None
        if len(self.classes) == 1:
            out[:, self.classes[0]] = 1.0
            return out
        lgb = import_lightgbm()
        probs = lgb.Booster(model_str=self.booster).predict(features)
        if probs.ndim == 1:  # binary: the probability of the second class
            probs = np.stack([1 - probs, probs], axis=1)
        out[:, self.classes] = probs
        return out

    def save(self, path: Path) -> None:
        classes = self.classes if self.classes is not None else np.zeros(0, dtype=np.int64)
        np.savez(
            path,
            method=np.array(self.method),
            weight=self.weight,
            bias=self.bias,
            booster=np.array(self.booster),
            classes=classes,
        )

    @classmethod
    def load(cls, path: Path) -> MetaModel:
        with np.load(path, allow_pickle=False) as arrays:
            method = str(arrays["method"])
            booster = str(arrays["booster"]) if "booster" in arrays else ""
            classes = arrays["classes"] if method == "lgbm" else None
            return cls(method, arrays["weight"], arrays["bias"], booster, classes)


def fit_meta(
    method: str, member_probs: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, seed: int
) -> MetaModel:
    """Fit ``method`` on the members' probabilities (rows aligned with ``labels``, level-2 indices)."""
    if method == "logreg":
        return _fit_logreg(log_features(member_probs), labels, num_classes, seed)
    if method == "conv":
        return _fit_conv(log_features(member_probs), labels, seed)
    if method == "lgbm":
        return _fit_lgbm(log_features(member_probs), labels, seed)
    raise StackError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def _fit_logreg(logp: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> MetaModel:
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate(list(logp), axis=1)
    present = np.unique(labels)
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.full(num_classes, ABSENT_BIAS)
    if len(present) == 1:  # nothing to separate: that class everywhere
        bias[present[0]] = 0.0
        return MetaModel("logreg", weight, bias)
    model = LogisticRegression(C=1.0, max_iter=500, random_state=seed).fit(features, labels)
    if len(present) == 2:  # scikit-learn's binary form: one score, for the second class against the first
        weight[present[1]], bias[present[0]], bias[present[1]] = model.coef_[0], 0.0, model.intercept_[0]
    else:
        weight[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    return MetaModel("logreg", weight, bias)


def _fit_conv(logp: np.ndarray, labels: np.ndarray, seed: int, l2: float = 1e-3) -> MetaModel:
    """Full-batch L-BFGS on the cross-entropy, starting from the plain mean of log-probabilities; the L2
    penalty pulls towards that start, so a class with few rows keeps about equal member weights."""
    import torch

    torch.manual_seed(seed)
    num_members, _, num_classes = logp.shape
    x = torch.as_tensor(logp, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    start = torch.full((num_classes, num_members), 1.0 / num_members, dtype=torch.float64)
    weight = start.clone().requires_grad_(True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("mnc,cm->nc", x, weight) + bias
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss = loss + l2 * (((weight - start) ** 2).sum() + (bias**2).sum())
        loss.backward()
        return loss

    optimizer.step(closure)
    return MetaModel("conv", weight.detach().numpy(), bias.detach().numpy())


def import_lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise StackError("--method lgbm needs LightGBM: pip install 'mmcls[lgbm]'") from None
    return lightgbm


def _fit_lgbm(logp: np.ndarray, labels: np.ndarray, seed: int) -> MetaModel:
    """Multiclass boosting over the present classes (LightGBM numbers them 0..K-1); deterministic."""
    features = np.concatenate(list(logp), axis=1)
    classes = np.unique(labels)
    empty = np.zeros(0)
    if len(classes) == 1:
        return MetaModel("lgbm", empty, empty, "", classes)
    lgb = import_lightgbm()
    model = lgb.LGBMClassifier(
        n_estimators=LGBM_ROUNDS,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=5,
        subsample=1.0,
        colsample_bytree=1.0,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,
        n_jobs=1,
        verbose=-1,
    )
    model.fit(features, np.searchsorted(classes, labels))
    return MetaModel("lgbm", empty, empty, model.booster_.model_to_string(), classes)


def nested_oof(
    method: str,
    member_probs: Sequence[np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    num_folds: int = NESTED_FOLDS,
) -> np.ndarray:
    """The stack's OOF probabilities: each nested fold predicted by a meta-model fitted on the other folds."""
    folds = assign_folds(labels, num_folds, seed)
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for k in range(num_folds):
        held = folds == k
        fitted = fit_meta(method, [p[~held] for p in member_probs], labels[~held], num_classes, seed)
        out[held] = fitted.predict([p[held] for p in member_probs])
    return out


def oof_comparison(
    tables: Sequence[np.ndarray], labels: np.ndarray, stacked: np.ndarray, lv1_of_lv2: np.ndarray
) -> dict[str, Any]:
    """OOF ``mean_f1`` of the stack (nested folds), each member, their mean and the hill-climbed blend.

    The hill-climbed weights are fitted and scored on the same OOF rows (as ``mmcls ensemble`` reports them):
    an optimistic number next to the stack's nested one.
    """
    members = [fast_mean_f1(labels, t.argmax(axis=1), lv1_of_lv2) for t in tables]
    return {
        "stack_mean_f1": fast_mean_f1(labels, stacked.argmax(axis=1), lv1_of_lv2),
        "member_mean_f1": members,
        "best_member_mean_f1": max(members),
        "mean_mean_f1": fast_mean_f1(
            labels, blend(tables, [1 / len(tables)] * len(tables)).argmax(axis=1), lv1_of_lv2
        ),
        "hill_climb_mean_f1": hill_climb(tables, labels, lv1_of_lv2).score,
    }


# ------------------------------------------------------------------------------------------- the command


def stack_dir_for(out_csv: str | Path) -> Path:
    """``result.csv`` -> ``result.stack/``."""
    return Path(out_csv).with_suffix(".stack")


def fit_stack(
    members: Sequence[Any], categories: CategoryMap, method: str, seed: int
) -> tuple[MetaModel, dict[str, Any], np.ndarray, list[str]]:
    """Fit the meta-model on the members' OOF probabilities and score it by nested folds: ``(meta-model,
    summary, the stack's OOF probabilities, their record ids)``."""
    from mmcls.data.prob_files import load_probs

    sources = [m.oof_path() for m in members]
    missing = [m.name for m, s in zip(members, sources) if s is None]
    if missing:
        raise StackError(f"{missing[0]}: not a kfold directory; stack members need out-of-fold predictions")
    tables, labels = oof_tables([str(s) for s in sources], categories)
    lv1 = np.asarray(categories.lv1_of_lv2)
    stacked = nested_oof(method, tables, labels, categories.num_lv2, seed)
    info = {
        "method": method,
        "seed": seed,
        "nested_folds": NESTED_FOLDS,
        "members": [m.name for m in members],
        "category_ids": list(categories.category_ids),
        "oof": oof_comparison(tables, labels, stacked, lv1),
        "labels": [categories.category_id(int(i)) for i in labels],
    }
    meta = fit_meta(method, tables, labels, categories.num_lv2, seed)
    return meta, info, stacked, load_probs(sources[0])[0]


def save_stack(
    stack_dir: Path, meta: MetaModel, info: dict[str, Any], stacked: np.ndarray, ids: list[str], categories
) -> None:
    """Write ``stack_dir`` (see the module docstring); ``stack.json`` last, so a directory that has it is whole."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    meta.save(stack_dir / META_FILE)
    labels = info.pop("labels")
    save_probs(
        stack_dir / OOF_FILE,
        stacked,
        ids,
        categories,
        labels=labels,
        method=info["method"],
        scores=info["oof"],
    )
    write_json(stack_dir / STACK_FILE, info)


def load_stack(
    stack_dir: str | Path, members: Sequence[Any], categories: CategoryMap
) -> tuple[MetaModel, dict]:
    """A saved stack, checked against the members it is to be applied to (count, order of names, classes)."""
    stack_dir = Path(stack_dir)
    info_path = stack_dir / STACK_FILE
    if not info_path.is_file() or not (stack_dir / META_FILE).is_file():
        raise StackError(f"{stack_dir}: not a stack directory (no {STACK_FILE} and {META_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if len(info["members"]) != len(members):
        raise StackError(
            f"{info_path}: fitted on {len(info['members'])} members, {len(members)} given "
            f"(the same members, in the same order: {' '.join(info['members'])})"
        )
    if info["category_ids"] != list(categories.category_ids):
        raise StackError(f"{info_path}: fitted over other classes than the members predict")
    for saved, member in zip(info["members"], members):
        if Path(saved).name != Path(member.name).name:
            log.warning("stack member %s is applied to %s (order matters)", saved, member.name)
    return MetaModel.load(stack_dir / META_FILE), info


def run_stack(
    member_paths: Sequence[str | Path],
    data_root: str | Path,
    split: str,
    out_csv: str | Path,
    *,
    method: str | None = None,
    seed: int = 0,
    stack_dir: str | Path | None = None,
    options: PredictOptions | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit (or, with ``stack_dir``, load) the meta-model, apply it to the members' predictions of ``split``
    and write the submission CSV; returns the summary (with the OOF comparison when fitted)."""
    from mmcls.engine.distributed import world_info_from_env
    from mmcls.inference.predict import write_submission

    options = options or PredictOptions()
    out_csv = Path(out_csv)
    if method is not None and method not in METHODS:
        raise StackError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    members = [load_member(p) for p in member_paths]
    categories = same_categories(members)
    is_main = world_info_from_env().is_main
    if stack_dir is None:
        new_dir = stack_dir_for(out_csv)
        refuse_existing([out_csv, new_dir], overwrite)
        # Every rank fits the same (deterministic, cheap) meta-model; rank 0 saves it.
        meta, info, stacked, oof_ids = fit_stack(members, categories, method or "logreg", seed)
        if is_main:
            save_stack(new_dir, meta, info, stacked, oof_ids, categories)
        info.pop("labels", None)
        info = {**info, "stack": str(new_dir)}
    else:
        refuse_existing([out_csv], overwrite)
        meta, info = load_stack(stack_dir, members, categories)
        if method is not None and method != meta.method:
            raise StackError(f"--method {method}: {stack_dir} holds a {meta.method} stack")
        info = {**info, "stack": str(stack_dir)}

    ids, member_probs = None, []
    for member in members:
        member_ids, probs = member.predict(data_root, split, options)
        if ids is not None and member_ids != ids:
            raise StackError(f"{member.name}: predicted other records of {split!r} than {members[0].name}")
        ids = member_ids
        member_probs.append(probs)
    assert ids is not None
    probs = meta.predict(member_probs)
    if is_main:
        write_submission(out_csv, ids, [categories.category_id(int(i)) for i in probs.argmax(axis=1)])
    return {**info, "split": split, "out": str(out_csv)}
