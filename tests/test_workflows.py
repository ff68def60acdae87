"""Multi-model workflows: folds, out-of-fold predictions, ensembles, pseudo-labels, soft targets, distillation.

The fast tests build random-init tiny model folders (no training) or train for one short epoch in-process;
the end-to-end ``mmcls kfold`` / ``group-finetune`` runs are marked slow.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, Record, annotation_path, load_records, write_records
from mmcls.data.categories import official_categories
from mmcls.data.extra_train import load_extra_train
from mmcls.data.folds import assign_folds, split_labeled
from mmcls.data.prob_files import load_probs
from mmcls.data.text import load_tokenizer
from mmcls.engine.checkpoint import latest_checkpoint, load_checkpoint
from mmcls.engine.soft_targets import distillation_kl, soft_cross_entropy
from mmcls.metrics import compute_scores_from_indices
from mmcls.models import build_model, save_model_dir
from mmcls.workflows.ensemble import fast_mean_f1, hill_climb
from mmcls.workflows.kfold import KFoldError, run_kfold
from mmcls.workflows.members import PredictOptions, predict_model

from commands import ONE_EPOCH, SMALL_VOCAB_SETTING, run_main

CATEGORIES = official_categories()
LV1 = np.asarray(CATEGORIES.lv1_of_lv2)
FAST = [SMALL_VOCAB_SETTING, *ONE_EPOCH]
OPTIONS = PredictOptions(batch_size=64, num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(300, 60, 40, seed=11, num_frames=2, image_size=32)


def tiny_config(*settings: str) -> Config:
    return Config.from_yaml("tiny", [*FAST, *settings])


def random_model_dir(path: Path, seed: int, *settings: str) -> Path:
    """An untrained tiny model folder: enough to test what workflows do with a model's predictions."""
    cfg = tiny_config(*settings)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    save_model_dir(path, build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, CATEGORIES)
    return path


def labeled_records(data_root: Path) -> list[Record]:
    return load_records(annotation_path(data_root, "labeled"), require_label=True)


# ------------------------------------------------------------------------------------------------ folds
def test_folds_are_disjoint_stratified_balanced_and_spread_rare_classes():
    rng = np.random.default_rng(0)
    # 40 common classes and 30 singletons: sklearn's StratifiedKFold would put every singleton in fold 0.
    labels = np.concatenate([rng.integers(0, 40, 500), np.arange(100, 130)])
    folds = assign_folds(labels, 5, seed=3)
    assert folds.shape == labels.shape and set(folds.tolist()) == set(range(5))  # each record in one fold
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for cls in np.unique(labels):
        per_fold = np.bincount(folds[labels == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, cls
    singleton_folds = Counter(folds[500:].tolist())
    assert len(singleton_folds) == 5 and max(singleton_folds.values()) <= 7
    assert np.array_equal(folds, assign_folds(labels, 5, seed=3))  # reproducible
    assert not np.array_equal(folds, assign_folds(labels, 5, seed=4))


def test_fold_selection_covers_the_labeled_split_once(data_root):
    records = labeled_records(data_root)
    cfg = tiny_config("data.num_folds=3", "data.fold=0")
    seen: list[str] = []
    for k in range(3):
        cfg.data.fold = k
        train, val = split_labeled(records, cfg.data, cfg.train.seed, CATEGORIES)
        assert not {r.id for r in train} & {r.id for r in val}
        assert len(train) + len(val) == len(records)
        seen += [r.id for r in val]
    assert sorted(seen) == sorted(r.id for r in records)
    # A level-1 group filter keeps the full run's validation records (of that group), never reshuffles them.
    group = CATEGORIES.lv1_index(records[0].category_id)
    cfg.data.lv1_groups = [group]
    _, group_val = split_labeled(records, cfg.data, cfg.train.seed, CATEGORIES)
    assert [r.id for r in group_val] == [r.id for r in val if CATEGORIES.lv1_index(r.category_id) == group]


def test_fold_settings_are_validated():
    with pytest.raises(ConfigError, match="set both or neither"):
        tiny_config("data.num_folds=3")
    with pytest.raises(ConfigError, match="data.fold must be in"):
        tiny_config("data.num_folds=3", "data.fold=3")
    with pytest.raises(ConfigError, match="distill_weight"):
        tiny_config("train.distill_weight=1.5")


# ------------------------------------------------------------------------------------------- ensembles
def test_fast_mean_f1_equals_the_challenge_metric():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 200, 400)
    pred = np.where(rng.random(400) < 0.5, true, rng.integers(0, 200, 400))
    expected = compute_scores_from_indices(true, pred, CATEGORIES)["mean_f1"]
    assert fast_mean_f1(true, pred, LV1) == pytest.approx(expected, abs=1e-12)


def test_hill_climb_finds_negative_weights_never_loses_to_the_best_member_and_is_reproducible():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 200, 600)
    noise = rng.random((600, 200)).astype(np.float32)
    signal = np.eye(200, dtype=np.float32)[labels] * 0.3
    members = [
        signal + noise,  # right often, blurred by the noise
        noise,  # pure noise, but the same noise: subtracting it helps
        np.eye(200, dtype=np.float32)[rng.integers(0, 200, 600)],  # useless
    ]
    fit = hill_climb(members, labels, LV1)
    assert fit.score >= max(fit.member_scores)
    assert fit.weights[1] < 0 and fit.score > max(fit.member_scores) + 0.2
    blended = sum(w * p for w, p in zip(fit.weights, members))
    assert fast_mean_f1(labels, blended.argmax(axis=1), LV1) == pytest.approx(fit.score)
    assert hill_climb(members, labels, LV1) == fit
    # With nothing to gain, the best single member is kept as it is.
    alone = hill_climb([members[2], members[0]], labels, LV1)
    assert alone.score >= alone.member_scores[1]


def test_ensemble_of_one_model_equals_that_model(data_root, tmp_path):
    model = random_model_dir(tmp_path / "model", seed=0)
    ids, probs = predict_model(model, data_root, "test", OPTIONS)
    out = tmp_path / "ens" / "result.csv"
    from mmcls.workflows.ensemble import run_ensemble

    run_ensemble([model], data_root, "test", out, save_probs_to=tmp_path / "ens" / "p.npy", options=OPTIONS)
    rows = list(csv.reader(out.open()))
    assert [r[0] for r in rows] == ids
    assert [r[1] for r in rows] == [CATEGORIES.category_id(int(i)) for i in probs.argmax(axis=1)]
    saved_ids, saved, info = load_probs(tmp_path / "ens" / "p.npy")
    assert saved_ids == ids and info["weights"] == [1.0]
    np.testing.assert_allclose(saved, probs, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="exists"):  # outputs are never replaced silently
        run_ensemble([model], data_root, "test", out, options=OPTIONS)


# ----------------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_labels_pass_annotation_validation_and_respect_the_threshold(data_root, tmp_path):
    from mmcls.workflows.pseudo_label import pseudo_label

    models = [random_model_dir(tmp_path / f"m{i}", seed=i) for i in range(2)]
    probs = np.mean([predict_model(m, data_root, "unlabeled", OPTIONS)[1] for m in models], axis=0)
    threshold = float(np.median(probs.max(axis=1)))
    out = tmp_path / "labels.json"
    summary = pseudo_label(models, data_root, "unlabeled", out, threshold, soft=True, options=OPTIONS)
    expected = int((probs.max(axis=1) >= threshold).sum())
    assert 0 < summary["passed"] == expected < summary["records"] == 60
    assert sum(summary["histogram"].values()) == expected
    records = load_records(out, require_label=True)  # the normal annotation validation
    raw = json.loads(out.read_text())
    assert len(records) == expected
    assert all(item["confidence"] >= threshold - 1e-6 and item["source_split"] == "unlabeled" for item in raw)
    extra = load_extra_train([out], CATEGORIES)
    for record, soft in zip(extra.records, extra.soft_targets):
        assert soft is not None and soft.sum() == pytest.approx(1.0, abs=1e-5)
        assert CATEGORIES.category_id(int(soft.argmax())) == record.category_id
    with pytest.raises(AnnotationError, match="also a labeled record"):
        load_extra_train([out], CATEGORIES, labeled_ids={records[0].id})


def test_extra_train_rejects_bad_soft_labels(tmp_path):
    item = {"id": "1", "category_id": "0101", "title": "", "asr": "", "ocr": [], "soft_label": {"0101": -1}}
    write_records(tmp_path / "bad.json", [item])
    with pytest.raises(AnnotationError, match=r"record 0: field 'soft_label.0101'"):
        load_extra_train([tmp_path / "bad.json"], CATEGORIES)


# ------------------------------------------------------------------------------------ soft targets, distillation
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_cross_entropy_of_one_hot_targets_is_the_hard_cross_entropy(smoothing):
    logits = torch.randn(8, 200, requires_grad=True)
    labels = torch.randint(0, 200, (8,))
    hard = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    soft = soft_cross_entropy(logits, F.one_hot(labels, 200).float(), smoothing).mean()
    torch.testing.assert_close(soft, hard)
    (grad_hard,) = torch.autograd.grad(hard, logits)
    (grad_soft,) = torch.autograd.grad(soft, logits)
    torch.testing.assert_close(grad_soft, grad_hard)


def test_distillation_kl_is_zero_for_a_matching_student_and_scales_with_t_squared():
    logits = torch.randn(4, 200)
    teacher = logits.softmax(-1)
    assert distillation_kl(logits, teacher, 3.0).abs().max() < 1e-5
    student = torch.randn(4, 200)
    kl_t1 = F.kl_div(student.log_softmax(-1), teacher, reduction="none").sum(-1)
    torch.testing.assert_close(distillation_kl(student, teacher, 1.0), kl_t1, rtol=1e-4, atol=1e-5)


def test_a_class_subset_restricts_the_loss_to_the_groups_classes():
    from mmcls.engine.soft_targets import TrainingTargets

    mask = torch.tensor([lv1 == 3 for lv1 in LV1])
    logits = torch.randn(6, 200)
    in_group = torch.nonzero(mask).flatten()
    labels = in_group[torch.randint(0, len(in_group), (6,))]
    loss = TrainingTargets(class_mask=mask).cross_entropy(logits, labels, torch.arange(6), 0.0)
    subset_labels = torch.searchsorted(in_group, labels)
    expected = F.cross_entropy(logits[:, in_group], subset_labels, reduction="none")
    torch.testing.assert_close(loss, expected)


def test_probability_files_are_looked_up_by_id(tmp_path):
    from mmcls.data.prob_files import ProbFileError, rows_for, save_probs

    probs = np.random.default_rng(0).random((3, 200)).astype(np.float32)
    save_probs(tmp_path / "p.npy", probs, ["7", "8", "9"], CATEGORIES, split="labeled")
    np.testing.assert_array_equal(rows_for(tmp_path / "p.npy", ["9", "7"], CATEGORIES), probs[[2, 0]])
    with pytest.raises(ProbFileError, match="no probabilities for 1 of the 2 records"):
        rows_for(tmp_path / "p.npy", ["9", "6"], CATEGORIES)


def _pseudo_labels(data_root: Path, path: Path, soft: bool) -> Path:
    """The unlabeled records with arbitrary labels, as one-hot soft targets or as hard labels."""
    records = load_records(annotation_path(data_root, "unlabeled"))[:32]
    items = []
    for i, record in enumerate(records):
        item = {**record.to_dict(), "category_id": CATEGORIES.category_id(i * 7 % 200)}
        if soft:
            item["soft_label"] = {item["category_id"]: 1.0}
        items.append(item)
    write_records(path, items)
    return path


def test_training_on_one_hot_soft_targets_equals_hard_label_training(data_root, tmp_path):
    from mmcls.engine.trainer import train

    weights = []
    for soft in (False, True):
        extra = _pseudo_labels(data_root, tmp_path / f"extra_{soft}.json", soft)
        cfg = tiny_config("data.limit_train=48", "data.val_fraction=0", f"data.extra_train=[{extra}]")
        train(cfg, data_root, tmp_path / f"run_{soft}")
        weights.append(load_checkpoint(latest_checkpoint(tmp_path / f"run_{soft}"))["model"])
    hard_sd, soft_sd = weights
    for key in hard_sd:
        torch.testing.assert_close(soft_sd[key], hard_sd[key], rtol=1e-5, atol=1e-6, msg=key)


def test_distillation_student_starts_from_its_teachers_lowest_layers(data_root, tmp_path):
    from mmcls.engine.trainer import Trainer

    teacher = random_model_dir(tmp_path / "teacher", seed=5)
    cfg = tiny_config(
        "model.bert_config.num_hidden_layers=1",
        f"model.init_from={teacher}",
        f"train.distill_from={teacher}",
        "data.limit_train=40",
    )
    trainer = Trainer(cfg, data_root, tmp_path / "student")
    teacher_sd = load_file(str(teacher / "model.safetensors"))
    student_sd = trainer.task.model.state_dict()
    assert not any(k.startswith("text_encoder.encoder.layer.1.") for k in student_sd)
    for key, value in student_sd.items():
        assert torch.equal(value, teacher_sd[key]), key
    # The teacher's probabilities are looked up by training index: row i is the teacher on record i.
    ids = [r.id for r in trainer.train_set.records]
    teacher_ids, teacher_probs = predict_model(teacher, data_root, "labeled", OPTIONS, ids)
    row_of = {video_id: row for row, video_id in enumerate(teacher_ids)}
    expected = teacher_probs[[row_of[i] for i in ids]]
    np.testing.assert_allclose(trainer.task.targets.teacher.numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- end to end
def _mmcls(*args: str) -> subprocess.CompletedProcess:
    """``mmcls ARGS`` through the CLI's entry point in this process (no interpreter start per command)."""
    stdout, stderr = run_main(*args)
    return subprocess.CompletedProcess(args, 0, stdout, stderr)


def _settings(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.slow
def test_kfold_oof_lines_up_with_record_ids_resumes_and_feeds_the_other_workflows(data_root, tmp_path):
    out = tmp_path / "kfold"
    args = [
        "kfold",
        "tiny",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--folds",
        "3",
        *_settings(*FAST),
    ]
    summary = json.loads(_mmcls(*args).stdout)
    records = labeled_records(data_root)
    ids, probs, info = load_probs(out / "oof.npy")
    assert ids == [r.id for r in records] and probs.shape == (300, 200)
    assert info["labels"] == [r.category_id for r in records]
    assert summary["oof"]["mean_f1"] == pytest.approx(info["scores"]["mean_f1"])
    folds = np.array(info["folds"])
    for k in range(2):
        # Fold k's OOF rows are its best/ model on its validation records: their score is the run's own.
        rows = folds == k
        labels = np.array([CATEGORIES.lv2_index(c) for c in np.array(info["labels"])[rows]])
        score = compute_scores_from_indices(labels, probs[rows].argmax(axis=1), CATEGORIES)["mean_f1"]
        assert score == pytest.approx(summary["fold_best_mean_f1"][k], abs=1e-9)
        assert (out / f"fold{k}" / "best" / "model.safetensors").is_file()

    # An interrupted kfold (fold 1 not finished) resumes that fold only, and gives the same OOF.
    (out / "fold1" / "oof.npy").unlink()
    fold0_mtime = (out / "fold0" / "oof.npy").stat().st_mtime_ns
    with pytest.raises(KFoldError, match="--resume"):
        run_kfold(tiny_config(), data_root, out, 2)
    _mmcls(*args, "--resume")
    assert (out / "fold0" / "oof.npy").stat().st_mtime_ns == fold0_mtime
    np.testing.assert_array_equal(load_probs(out / "oof.npy")[1], probs)

    # A fold is an ordinary run directory: group-finetune takes it, and validates on the fold's records.
    group = Counter(CATEGORIES.lv1_index(r.category_id) for r in records).most_common(1)[0][0]
    groups_dir = tmp_path / "groups"
    proc = _mmcls(
        "group-finetune", str(out / "fold0"), "--data-root", str(data_root), "--out", str(groups_dir),
        "--groups", str(group), "--epochs", "1",
    )  # fmt: skip
    grouped = json.loads(proc.stdout)
    assert grouped["groups"] == [group] and grouped["val_records"] == int((folds == 0).sum())
    assert grouped["val_base"]["mean_f1"] == pytest.approx(summary["fold_best_mean_f1"][0], abs=1e-9)

    # The kfold directory is an ensemble member (the fold mean) with its own OOF for hill climbing; the
    # group-finetune directory is a member too.
    result = tmp_path / "ens.csv"
    ens = _mmcls(
        "ensemble", str(out), str(out / "fold0"), "--data-root", str(data_root), "--out", str(result),
        "--weights", "hill-climb", "--oof", str(out), str(out), "--num-workers", "0",
    )  # fmt: skip
    fitted = json.loads(ens.stdout[: ens.stdout.rindex("}") + 1])
    assert fitted["oof"]["mean_f1"] >= max(fitted["oof"]["member_mean_f1"])
    assert len(list(csv.reader(result.open()))) == 40
    labels_json = tmp_path / "labels.json"
    _mmcls(
        "pseudo-label", str(groups_dir), "--data-root", str(data_root), "--out", str(labels_json),
        "--min-confidence", "0", "--num-workers", "0",
    )  # fmt: skip
    assert len(load_records(labels_json, require_label=True)) == 60


@pytest.mark.slow
def test_an_exported_onnx_artifact_is_a_member_like_its_model(data_root, tmp_path):
    from mmcls.deploy.export import export_model
    from mmcls.workflows.members import load_member

    model = random_model_dir(tmp_path / "model", seed=3)
    artifact = export_model(model, tmp_path / "onnx", "onnx")
    ids, torch_probs = load_member(model).predict(data_root, "test", OPTIONS)
    onnx_member = load_member(artifact)
    assert type(onnx_member).__name__ == "ExportedArtifact"
    onnx_ids, onnx_probs = onnx_member.predict(data_root, "test", OPTIONS)
    assert onnx_ids == ids
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
