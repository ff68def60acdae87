"""``mmcls stack``: meta-models on out-of-fold probabilities, scored by nested folds, saved and re-applied.

The mechanism tests use constructed probability tables (no models); the command test builds kfold
directories around one untrained tiny model folder, with hand-made OOF files.
"""

from __future__ import annotations

import csv
import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcls.cli import main
from mmcls.config import Config
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.categories import Taxonomy, official_categories
from mmcls.data.prob_files import load_probs, save_probs
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.data.text import load_tokenizer
from mmcls.models import build_model, save_model_dir
from mmcls.workflows.ensemble import EnsembleError, fast_mean_f1, hill_climb
from mmcls.workflows.members import KFOLD_FILE, PredictOptions
from mmcls.workflows.stack import MetaModel, StackError, fit_meta, nested_oof, run_stack

FLAT = Taxonomy.from_rows(("id", "name", "parent"), [(f"c{i}", f"c{i}", "") for i in range(10)], "flat")
FLAT_LV1 = np.asarray(FLAT.lv1_of_lv2)
OPTIONS = PredictOptions(batch_size=64, num_workers=0, device="cpu")
LGBM = pytest.param("lgbm", marks=pytest.mark.skipif(find_spec("lightgbm") is None, reason="no lightgbm"))
METHODS = ["logreg", "conv", LGBM]


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


@pytest.mark.parametrize("method", METHODS)
def test_the_stack_never_predicts_a_row_with_a_model_that_saw_its_label(method):
    # Members of pure noise: nothing in them predicts the label. A meta-model fitted on the rows it predicts
    # memorises them (logreg has 30 features for 60 rows); the nested folds must stay at chance (1 in 10).
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    members = [rng.dirichlet(np.ones(10), size=60).astype(np.float32) for _ in range(3)]
    stacked = nested_oof(method, members, labels, 10, seed=0)
    assert _accuracy(labels, stacked) <= 0.2
    if method == "logreg":  # the leak the nested folds avoid is real: in-sample, the same model memorises
        in_sample = fit_meta(method, members, labels, 10, seed=0).predict(members)
        assert _accuracy(labels, in_sample) >= 0.6


def _members_that_err_on_different_classes(rng: np.random.Generator, n: int) -> tuple[list, np.ndarray]:
    """Member A is right on classes 0-4 and shifts 5-9 by one; member B the other way round."""
    labels = rng.integers(0, 10, n)

    def member(good: np.ndarray) -> np.ndarray:
        said = np.where(good[labels], labels, np.where(labels % 5 == 4, labels - 4, labels + 1))
        return rng.dirichlet(np.ones(10), size=n) * 0.3 + np.eye(10)[said] * 0.7

    first_half = np.arange(10) < 5
    return [member(first_half), member(~first_half)], labels


@pytest.mark.parametrize("method", METHODS)
def test_the_stack_beats_the_best_member_where_members_err_on_different_classes(method):
    members, labels = _members_that_err_on_different_classes(np.random.default_rng(1), 200)
    stacked = nested_oof(method, members, labels, 10, seed=0)
    best_member = max(fast_mean_f1(labels, m.argmax(axis=1), FLAT_LV1) for m in members)
    stack_score = fast_mean_f1(labels, stacked.argmax(axis=1), FLAT_LV1)
    # One weight per member cannot fix errors that depend on the class: hill climbing stays near 0.5.
    assert stack_score >= best_member + 0.3
    assert stack_score > hill_climb(members, labels, FLAT_LV1).score + 0.3
    assert np.array_equal(stacked, nested_oof(method, members, labels, 10, seed=0))  # reproducible


@pytest.mark.parametrize("method", METHODS)
def test_a_saved_meta_model_predicts_what_the_fitted_one_did(tmp_path, method):
    members, labels = _members_that_err_on_different_classes(np.random.default_rng(2), 100)
    meta = fit_meta(method, members, labels, 10, seed=0)
    meta.save(tmp_path / "meta.npz")
    again = MetaModel.load(tmp_path / "meta.npz")
    assert again.method == method
    np.testing.assert_array_equal(again.predict(members), meta.predict(members))


# ------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stack") / "data"
    make_synthetic_dataset(root, 80, 0, 20, seed=5, num_frames=2, image_size=32)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """One untrained tiny model folder: every kfold member's fold model (the OOF files differ)."""
    cfg = Config.from_yaml("tiny", ["data.frames.max_frames=2", "data.num_workers=0"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    path = tmp_path_factory.mktemp("stack") / "model"
    save_model_dir(path, build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, official_categories())
    return path


def _kfold_dir(path: Path, model_dir: Path, ids: list[str], labels: list[str], probs: np.ndarray) -> Path:
    """A kfold directory of one fold (a link to ``model_dir``) whose OOF probabilities are ``probs``."""
    path.mkdir(parents=True)
    (path / KFOLD_FILE).write_text(json.dumps({"num_folds": 1}))
    (path / "fold0").symlink_to(model_dir, target_is_directory=True)
    save_probs(path / "oof.npy", probs, ids, official_categories(), labels=labels)
    return path


def test_stack_command_fits_saves_reapplies_and_refuses_what_does_not_line_up(data_root, model_dir, tmp_path):
    categories = official_categories()
    records = load_records(annotation_path(data_root, "labeled"), require_label=True)
    ids, labels = [r.id for r in records], [r.category_id for r in records]
    truth = np.array([categories.lv2_index(c) for c in labels])
    rng = np.random.default_rng(3)
    members = []
    for k in range(3):  # each member right on a different third of the records
        right = np.arange(len(ids)) % 3 == k
        said = np.where(right, truth, rng.integers(0, 200, len(ids)))
        probs = (rng.dirichlet(np.ones(200), len(ids)) * 0.5 + np.eye(200)[said] * 0.5).astype(np.float32)
        members.append(_kfold_dir(tmp_path / f"kfold{k}", model_dir, ids, labels, probs))

    out = tmp_path / "result.csv"
    summary = run_stack(members, data_root, "test", out, method="conv", options=OPTIONS)
    stack_dir = tmp_path / "result.stack"
    assert summary["stack"] == str(stack_dir) and summary["method"] == "conv"
    oof_ids, oof, info = load_probs(stack_dir / "oof.npy")
    assert oof_ids == ids and info["labels"] == labels
    assert info["scores"]["stack_mean_f1"] == pytest.approx(
        fast_mean_f1(truth, oof.argmax(axis=1), np.asarray(categories.lv1_of_lv2))
    )
    rows = list(csv.reader(out.open()))
    test_ids = [r.id for r in load_records(annotation_path(data_root, "test"))]
    assert [r[0] for r in rows] == test_ids

    # Applied again without refitting: the same submission, and nothing new in the stack directory.
    before = sorted(p.name for p in stack_dir.iterdir())
    again = tmp_path / "again.csv"
    run_stack(members, data_root, "test", again, stack_dir=stack_dir, options=OPTIONS)
    assert again.read_text() == out.read_text()
    assert sorted(p.name for p in stack_dir.iterdir()) == before
    assert not (tmp_path / "again.stack").exists()

    with pytest.raises(EnsembleError, match="exists"):  # outputs are never replaced silently
        run_stack(members, data_root, "test", out, options=OPTIONS)
    with pytest.raises(StackError, match="fitted on 3 members, 2 given"):
        run_stack(members[:2], data_root, "test", tmp_path / "two.csv", stack_dir=stack_dir, options=OPTIONS)

    # OOF files over other records: one line naming the file, before any prediction.
    shifted = _kfold_dir(tmp_path / "shifted", model_dir, [f"x{i}" for i in ids], labels, oof)
    argv = [
        "stack",
        str(members[0]),
        str(shifted),
        "--data-root",
        str(data_root),
        "--out",
        str(tmp_path / "x.csv"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.stack").exists()
