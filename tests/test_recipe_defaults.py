"""Issue 22: defaults that do not hurt. Scale-free adversarial perturbations and their guard; the logit
adjustment TAU chosen on validation, saved in the model folder and applied by ``predict --logit-adjust auto``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcls.cli.predict import logit_adjust_value
from mmcls.config import Config
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.categories import load_categories, official_categories
from mmcls.data.folds import split_labeled
from mmcls.data.prob_files import load_probs, save_probs
from mmcls.engine import adversarial
from mmcls.engine.task import ClassificationTask
from mmcls.engine.tau import TAU_GRID, choose_tau
from mmcls.engine.trainer import train
from mmcls.inference.predict import predict_split
from mmcls.metrics import compute_scores_from_indices
from mmcls.models import build_model
from mmcls.names import BEST_DIR, LOGIT_ADJUST_FILE
from mmcls.workflows.bias_tuning import BIAS_GRID, SHRINK, log_of, nested_gain, tune_biases
from mmcls.workflows.ensemble import fast_mean_f1

from commands import NO_DROPOUT, QUIET, random_batch, run_main, tiny_config

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


# ---------------------------------------------------------------------------- logit adjustment chosen on validation
@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(120, 0, 24, seed=5, num_frames=4, image_size=32)


@pytest.fixture(scope="module")
def validated_run(data_root) -> tuple[Path, Config]:
    """One short epoch with a validation split: its best/ folder records the TAU chosen on validation."""
    run_dir = data_root.parent / "tau-run"
    cfg = tiny_config(
        "train.epochs=1",
        "train.batch_size=8",
        *QUIET,
        "data.num_workers=0",
        "data.val_fraction=0.3",
        "data.frames.max_frames=4",
    )
    train(cfg, data_root, run_dir)
    return run_dir, cfg


def validation_mean_f1(run_dir: Path, cfg: Config, data_root: Path) -> dict[float, float]:
    """The grid scored independently of training: predict the held-out records with each TAU and score them."""
    categories = load_categories(cfg.data.categories)
    records = load_records(annotation_path(data_root, "labeled"), require_label=True)
    _, val_records = split_labeled(records, cfg.data, cfg.train.seed, categories)
    labels = {r.id: categories.lv2_index(r.category_id) for r in val_records}
    scores = {}
    for tau in TAU_GRID:
        ids, _, predicted = predict_split(
            run_dir, data_root, "labeled", ids=list(labels), logit_adjust=tau, progress=False
        )
        pred = [categories.lv2_index(c) for c in predicted]
        scores[tau] = compute_scores_from_indices([labels[i] for i in ids], pred, categories)["mean_f1"]
    return scores


def test_the_saved_tau_is_the_validation_argmax_of_the_grid(validated_run, data_root):
    run_dir, cfg = validated_run
    saved = json.loads((run_dir / BEST_DIR / LOGIT_ADJUST_FILE).read_text())
    grid = {row["tau"]: row["mean_f1"] for row in saved["grid"]}
    assert list(grid) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    recomputed = validation_mean_f1(run_dir, cfg, data_root)
    assert grid == pytest.approx(recomputed, abs=1e-6)
    best = max(recomputed.values())
    assert saved["tau"] == min(t for t, s in recomputed.items() if s >= best - 1e-9)
    summary = (run_dir / "summary.md").read_text()
    assert f"logit adjustment: TAU {saved['tau']:g} chosen by validation mean_f1" in summary


def test_predict_auto_applies_the_saved_tau_and_old_folders_predict_as_tau_0(
    validated_run, data_root, tmp_path
):
    run_dir, _ = validated_run
    folder = tmp_path / "model"
    shutil.copytree(run_dir / BEST_DIR, folder)
    record = json.loads((folder / LOGIT_ADJUST_FILE).read_text())
    (folder / LOGIT_ADJUST_FILE).write_text(json.dumps({**record, "tau": 1.5}))

    def predict(name: str, *extra: str) -> list[str]:
        out = tmp_path / f"{name}.csv"
        run_main("predict", str(folder), "--data-root", str(data_root), "--out", str(out), *extra)
        return [line.split(",")[1] for line in out.read_text().splitlines()]

    auto = predict("auto")
    assert auto == predict("explicit", "--logit-adjust", "1.5") == predict("named", "--logit-adjust", "auto")
    plain = predict("zero", "--logit-adjust", "0")
    assert auto != plain  # TAU 1.5 moves some of the 24 test records to rarer classes
    (folder / LOGIT_ADJUST_FILE).unlink()  # a folder written before the file existed
    assert predict("old") == plain


def test_predict_the_exported_artifact_and_the_serving_predictor_apply_the_same_saved_tau(
    validated_run, data_root, tmp_path
):
    """A model folder whose saved TAU is 1.5: ``mmcls predict`` on the folder, ``mmcls predict`` and the Predictor on
    its ONNX export (TAU baked into the classifier bias), and the torch Predictor that the Triton model runs for a
    model folder give the same labels, which differ from the plain argmax's; an explicit other TAU on the artifact
    is refused instead of silently ignored."""
    from mmcls.deploy.export import export_model
    from mmcls.deploy.predictor import Predictor

    run_dir, _ = validated_run
    folder = tmp_path / "model"
    shutil.copytree(run_dir / BEST_DIR, folder)
    record = json.loads((folder / LOGIT_ADJUST_FILE).read_text())
    (folder / LOGIT_ADJUST_FILE).write_text(json.dumps({**record, "tau": 1.5}))

    def predicted(model: Path, name: str, *extra: str) -> dict[str, str]:
        out = tmp_path / f"{name}.csv"
        run_main("predict", str(model), "--data-root", str(data_root), "--out", str(out), *extra)
        return dict(line.split(",") for line in out.read_text().splitlines())

    by_predict = predicted(folder, "folder", "--num-workers", "0")
    assert by_predict != predicted(folder, "plain", "--num-workers", "0", "--logit-adjust", "0")
    artifact = export_model(folder, tmp_path / "onnx", "onnx")
    assert json.loads((artifact / "export.json").read_text())["logit_adjust"]["tau"] == 1.5
    assert predicted(artifact, "artifact", "--num-workers", "0") == by_predict
    _, reference, _ = predict_split(folder, data_root, num_workers=0, progress=False)
    for path, backend in ((artifact, "onnx"), (folder, "torch")):
        predictor = Predictor.from_path(path, device="cpu")
        assert predictor.backend_name == backend
        ids, preds, labels = predictor.predict_split(data_root, num_workers=0, progress=False)
        assert dict(zip(ids, labels)) == by_predict
        order = np.argsort(preds.indices)
        assert np.abs(preds.probs[order] - reference.probs[np.argsort(reference.indices)]).max() <= 1e-4
    for tau in ("0", "1"):  # not what the artifact holds: an error, not the baked TAU's labels
        _, err = run_main("predict", str(artifact), "--data-root", str(data_root), "--out",
                          str(tmp_path / f"x{tau}.csv"), "--logit-adjust", tau, expect=2)  # fmt: skip
        assert "--logit-adjust" in err.strip().splitlines()[-1] and not (tmp_path / f"x{tau}.csv").exists()
    assert predicted(artifact, "same", "--num-workers", "0", "--logit-adjust", "1.5") == by_predict


def test_a_broken_saved_tau_is_a_one_line_error(validated_run, data_root, tmp_path):
    run_dir, _ = validated_run
    folder = tmp_path / "model"
    shutil.copytree(run_dir / BEST_DIR, folder)
    (folder / LOGIT_ADJUST_FILE).write_text(json.dumps({"tau": -1}))
    args = ["predict", str(folder), "--data-root", str(data_root), "--out", str(tmp_path / "x.csv")]
    _, err = run_main(*args, expect=2)
    assert f"{LOGIT_ADJUST_FILE}: field tau must be a number >= 0" in err.strip().splitlines()[-1]
    assert not (tmp_path / "x.csv").exists()
    run_main(*args, "--logit-adjust", "0")  # an explicit TAU does not read the file
    with pytest.raises(argparse.ArgumentTypeError, match="expected auto or a finite number"):
        logit_adjust_value("nan")  # what argparse reports for --logit-adjust nan
    assert logit_adjust_value("auto") == "auto" and logit_adjust_value("0.5") == 0.5


def test_choose_tau_takes_the_smallest_of_equal_scores():
    assert choose_tau({0.0: 0.5, 0.25: 0.7, 0.5: 0.7, 0.75: 0.6}) == 0.25
    assert choose_tau(dict.fromkeys(TAU_GRID, 0.3)) == 0.0


# ---------------------------------------------------------------------------- per-class biases on OOF predictions
def head_biased_oof(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities of a classifier that favours the first classes, and the true labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 200, n)
    logits = rng.normal(size=(n, 200))
    logits[np.arange(n), labels] += 2.5
    logits[:, :20] += 1.5  # the head
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)), labels


def test_tune_bias_never_scores_rows_it_tuned_on():
    categories = official_categories()
    log_probs, labels = head_biased_oof()
    result = nested_gain(log_probs, labels, categories, folds=3, seed=0)
    for tuned_on, scored, _ in result.folds:
        assert not np.intersect1d(tuned_on, scored).size and len(tuned_on) + len(scored) == len(labels)
    assert np.array_equal(np.sort(np.concatenate([s for _, s, _ in result.folds])), np.arange(len(labels)))
    # Relabel the rows fold 0 scores: fold 0's biases must not move (it never saw those labels).
    relabelled = labels.copy()
    scored0 = result.folds[0][1]
    relabelled[scored0] = (labels[scored0] + 1) % 200
    again = nested_gain(log_probs, relabelled, categories, folds=3, seed=0)
    assert np.array_equal(again.folds[0][2], result.folds[0][2])
    assert any(not np.array_equal(a[2], b[2]) for a, b in zip(again.folds[1:], result.folds[1:]))


def brute_force_biases(log_probs: np.ndarray, labels: np.ndarray, categories, rounds: int = 2) -> np.ndarray:
    """The coordinate search written the slow way: a full argmax for every candidate bias."""
    lv1_of = categories.lv2_to_lv1_matrix().argmax(axis=1)
    bias = np.zeros(log_probs.shape[1])
    for _ in range(rounds):
        for c in range(log_probs.shape[1]):
            best_value, best_objective = bias[c], -np.inf
            for value in BIAS_GRID:
                bias[c] = value
                pred = (log_probs + bias).argmax(axis=1)
                objective = fast_mean_f1(labels, pred, lv1_of) - SHRINK * np.abs(bias).sum()
                if objective > best_objective + 1e-12:
                    best_value, best_objective = value, objective
            bias[c] = best_value
    return bias


def test_the_bias_search_equals_the_brute_force_one_ties_included():
    categories = official_categories()
    log_probs, labels = head_biased_oof(n=150, seed=1)
    for table in (log_probs, np.round(log_probs, 1)):  # rounded: many ties between classes
        fast = tune_biases(table, labels, categories)
        assert np.count_nonzero(fast) > 5 and np.array_equal(
            fast, brute_force_biases(table, labels, categories)
        )


def oof_file(path: Path, log_probs: np.ndarray, labels: np.ndarray) -> tuple[Path, np.ndarray]:
    """An out-of-fold probabilities file as kfold writes one (its .json has the true labels); its log table."""
    categories = official_categories()
    ids = [f"{10**19 + i}" for i in range(len(labels))]
    label_ids = [categories.category_id(int(c)) for c in labels]
    save_probs(path, np.exp(log_probs).astype(np.float32), ids, categories, labels=label_ids)
    return path, log_of(load_probs(path)[1])


def test_ensemble_tune_bias_applies_biases_only_when_the_nested_oof_estimate_gains(
    validated_run, data_root, tmp_path
):
    """``ensemble --tune-bias``: the reported OOF scores are the nested ones (every row scored with biases tuned
    without it); biases tuned on all OOF rows shift the test blend when that estimate gains, and nothing is
    applied when it does not."""
    from mmcls.workflows.members import PredictOptions, predict_model

    categories = official_categories()
    model = validated_run[0] / BEST_DIR
    ids, plain = predict_model(model, data_root, "test", PredictOptions(num_workers=0, device="cpu"))

    def ensemble(name: str, oof: Path) -> tuple[dict, list[str], np.ndarray]:
        out, probs = tmp_path / f"{name}.csv", tmp_path / f"{name}_probs.npy"
        args = ["ensemble", str(model), "--data-root", str(data_root), "--out", str(out), "--oof", str(oof)]
        run_main(*args, "--tune-bias", "--save-probs", str(probs), "--num-workers", "0", "--device", "cpu")
        rows = [line.split(",") for line in out.read_text().splitlines()]
        assert [r[0] for r in rows] == ids
        report = json.loads(out.with_suffix(".ensemble.json").read_text())["tune_bias"]
        return report, [r[1] for r in rows], load_probs(probs)[1]

    head_biased, labels = head_biased_oof(n=400)
    path, table = oof_file(tmp_path / "biased.npy", head_biased, labels)
    report, predicted, saved = ensemble("biased", path)
    nested = nested_gain(table, labels, categories)
    assert report["oof_mean_f1_plain"] == pytest.approx(nested.plain_mean_f1)
    assert report["oof_mean_f1_tuned_nested"] == pytest.approx(nested.tuned_mean_f1)
    assert report["oof_gain_nested"] == pytest.approx(nested.gain) and nested.gain > 0.01
    assert (
        report["oof_gain_nested_per_fold"] == pytest.approx(nested.fold_gains) and min(nested.fold_gains) > 0
    )
    assert report["applied"]
    bias = tune_biases(table, labels, categories)
    assert report["biases"] == {categories.category_id(c): b for c, b in enumerate(bias) if b}
    assert predicted == [categories.category_id(int(c)) for c in (log_of(plain) + bias).argmax(axis=1)]
    shifted = np.exp(log_of(plain) + bias)
    np.testing.assert_allclose(saved, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    assert np.abs(saved - plain).max() > 1e-3  # the biases moved the test blend

    perfect = np.full((60, 200), -20.0)
    perfect[np.arange(60), labels[:60]] = 0.0  # every OOF row right already: biases cannot gain
    report, predicted, saved = ensemble(
        "perfect", oof_file(tmp_path / "perfect.npy", perfect, labels[:60])[0]
    )
    assert not report["applied"] and report["biases"] == {} and report["oof_gain_nested"] <= 0
    assert predicted == [categories.category_id(int(c)) for c in plain.argmax(axis=1)]
    np.testing.assert_allclose(saved, plain, rtol=1e-6, atol=1e-7)


def test_tune_bias_needs_out_of_fold_predictions(validated_run, data_root, tmp_path):
    model = validated_run[0] / BEST_DIR
    args = ["ensemble", str(model), "--data-root", str(data_root), "--out", str(tmp_path / "x.csv")]
    _, err = run_main(*args, "--tune-bias", expect=2)
    assert "--tune-bias needs out-of-fold predictions" in err.strip().splitlines()[-1]
    assert not (tmp_path / "x.csv").exists()
