"""Multilabel tagging (issue 17): labels in annotations, losses, GAP/mAP against reference implementations,
thresholds, tag decisions, the synthetic tagging set, and train -> predict -> evaluate on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, load_multilabels, load_records
from mmcls.data.categories import Taxonomy, official_categories
from mmcls.data.multilabel import MultiLabelDataset, label_matrix
from mmcls.engine import losses
from mmcls.engine.multilabel import MultiLabelSetup
from mmcls.metrics import gap_at_k, multilabel_scores
from mmcls.tagging import best_cut, choose_thresholds, decide_tags, threshold_vector

from commands import SMALL_VOCAB_SETTING, run_main

CATS = official_categories()
A, B, C = CATS.category_ids[:3]


# ------------------------------------------------------------------------------------------ annotations
def test_labels_read_from_json_jsonl_and_csv(tmp_path: Path) -> None:
    rec = {"id": "1", "title": "t", "asr": "", "ocr": [], "labels": [A, B]}
    empty = {"id": "2", "title": "t", "labels": []}
    (tmp_path / "a.json").write_text(json.dumps([rec, empty]))
    (tmp_path / "a.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(empty) + "\n")
    (tmp_path / "a.csv").write_text(f"id,title,labels\n1,t,{A}|{B}\n2,t,\n")
    for name in ("a.json", "a.jsonl", "a.csv"):
        records = load_records(tmp_path / name, require_labels=True, categories=CATS)
        assert [r.labels for r in records] == [(A, B), ()], name
    assert load_multilabels(tmp_path / "a.csv", categories=CATS) == {"1": (A, B), "2": ()}


def test_bad_labels_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"id": "1", "title": "t", "labels": [A, "9999"]}) + "\n")
    with pytest.raises(
        AnnotationError, match=r"a.jsonl: line 1: field 'labels\[1\]': unknown category id '9999'"
    ):
        load_records(path, categories=CATS)
    path.write_text(json.dumps({"id": "1", "title": "t"}) + "\n")
    with pytest.raises(AnnotationError, match="field 'labels': missing"):
        load_records(path, require_labels=True, categories=CATS)
    assert load_records(path, categories=CATS)[0].labels is None  # not required: an unlabeled record


def test_multi_hot_rows_and_collate(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": str(i), "title": "t", "labels": labels})
            for i, labels in enumerate([[A, C], []])
        )
    )
    records = load_records(path, categories=CATS) + [load_records(path, categories=CATS)[0]]
    records[2].labels = None  # an unknown record: a row of -1, never "no tags"
    matrix = label_matrix(records, CATS)
    assert matrix[0, [0, 2]].tolist() == [1, 1] and matrix[0].sum() == 2
    assert matrix[1].sum() == 0 and (matrix[2] == -1).all()
    samples = [
        {
            "index": i,
            "id": str(i),
            "input_ids": torch.ones(3, dtype=torch.long),
            "frames": torch.zeros(0),
            "frame_mask": torch.zeros(0, dtype=torch.bool),
            "label": torch.from_numpy(matrix[i]),
            "frame_errors": [],
        }
        for i in range(3)
    ]
    batch = MultiLabelDataset.collate_fn([samples[0], None, samples[2]])
    assert batch["labels"].shape == (2, CATS.num_lv2) and batch["dropped"] == 1


# --------------------------------------------------------------------------------------------------- losses
def test_asl_without_focusing_is_bce_and_down_weights_easy_negatives() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=gen) * 3
    targets = (torch.rand(4, 7, generator=gen) > 0.6).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)
    torch.testing.assert_close(losses.multilabel_bce(logits, targets), bce)
    torch.testing.assert_close(losses.asymmetric_loss(logits, targets, 0, 0, 0), bce, rtol=1e-5, atol=1e-5)
    easy_negative = torch.tensor([[-2.0]])  # p = 0.12
    zero = torch.zeros(1, 1)
    assert losses.asymmetric_loss(easy_negative, zero, 0, 4, 0.0) < 0.01 * losses.multilabel_bce(
        easy_negative, zero
    )
    assert losses.asymmetric_loss(easy_negative, zero, 0, 0, 0.2).item() == 0.0  # p < clip: no loss at all


# -------------------------------------------------------------------------------------------------- metrics
def starter_gap(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """YouTube-8M starter code's GAP, written from its definition: top k of every video pooled, sorted by
    confidence, AP = sum over hits of precision-at-rank / (number of positive labels in total)."""
    pooled = []
    for p, t in zip(probs, targets):
        for c in sorted(range(len(p)), key=lambda c: -p[c])[:k]:
            pooled.append((p[c], t[c]))
    pooled.sort(key=lambda x: -x[0])
    total, hits, ap = targets.sum(), 0, 0.0
    for rank, (_, hit) in enumerate(pooled, start=1):
        if hit:
            hits += 1
            ap += hits / rank / total
    return ap


def grouped_gap(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """The same with equal confidences as one rank: precision and recall are taken once per distinct value."""
    pooled = []
    for p, t in zip(probs, targets):
        order = np.argsort(-p, kind="stable")[:k]
        pooled += [(p[c], t[c]) for c in order]
    total, seen, hits, ap = targets.sum(), 0, 0, 0.0
    for value in sorted({v for v, _ in pooled}, reverse=True):
        group = [hit for v, hit in pooled if v == value]
        seen, new = seen + len(group), sum(group)
        hits += new
        ap += (hits / seen) * new / total
    return ap


def test_gap_equals_the_starter_code_formula() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((30, 12))
    targets = (rng.random((30, 12)) < 0.2).astype(int)
    targets[:5] = 0  # videos without tags: their predictions only cost precision
    for k in (1, 3, 20):
        assert gap_at_k(probs, targets, k) == pytest.approx(starter_gap(probs, targets, k), abs=1e-12)
    # a positive outside every top-k is a miss: k=1 cannot reach recall 1
    assert gap_at_k(probs, targets, 1) < gap_at_k(probs, targets, 12)


def test_gap_with_ties_and_a_fixed_example() -> None:
    probs = np.array([[0.9, 0.5, 0.5, 0.1], [0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3]])
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert gap_at_k(probs, targets, 2) == pytest.approx(grouped_gap(probs, targets, 2))
    # by hand, k=1: pooled (0.9, hit), (0.5, miss), (0.3, miss); 3 positives -> AP = 1/3
    assert gap_at_k(probs, targets, 1) == pytest.approx(1 / 3)
    assert gap_at_k(probs, np.zeros_like(targets), 2) == 0.0


def reference_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP by its definition, equal scores as one rank: sum over distinct thresholds of precision x recall step."""
    ap, positives = 0.0, truth.sum()
    for value in sorted(set(scores), reverse=True):
        kept = scores >= value
        new = truth[scores == value].sum()
        ap += truth[kept].sum() / kept.sum() * new / positives
    return ap


def test_map_f1_and_dimensions_against_references() -> None:
    taxonomy = Taxonomy.from_rows(
        ["id", "name", "parent"],
        [
            ("10", "g1", ""),
            ("11", "a", "10"),
            ("12", "b", "10"),
            ("20", "g2", ""),
            ("21", "c", "20"),
            ("22", "d", "20"),
        ],
        source="t.csv",
    )
    probs = np.array([[0.9, 0.2, 0.7, 0.1], [0.4, 0.4, 0.2, 0.3], [0.8, 0.6, 0.2, 0.2], [0.1, 0.6, 0.5, 0.9]])
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    predicted = probs >= 0.5
    scores = multilabel_scores(targets, probs, predicted, taxonomy, top_k=2)
    aps = [reference_ap(probs[:, c], targets[:, c]) for c in range(3)]  # class 3 has no positive: left out
    assert scores["map"] == pytest.approx(np.mean(aps))
    tp, fp, fn = (targets & predicted).sum(), (~targets & predicted).sum(), (targets & ~predicted).sum()
    assert scores["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    per_class = [2 * (t & p).sum() / (t.sum() + p.sum()) for t, p in zip(targets.T, predicted.T)]
    assert scores["macro_f1"] == pytest.approx(np.mean(per_class))  # all four are predicted or true somewhere
    assert scores["gap_at_2"] == pytest.approx(grouped_gap(probs, targets.astype(int), 2))
    assert scores["10/map"] == pytest.approx(np.mean(aps[:2]))
    assert scores["20/map"] == pytest.approx(aps[2])
    assert {"10/gap_at_2", "10/micro_f1", "20/macro_f1"} <= set(scores)


# ----------------------------------------------------------------------------------------------- thresholds
def test_best_cut_maximises_f1_on_a_constructed_case() -> None:
    probs = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.35, 0.3, 0.2, 0.1])
    truth = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 0])
    threshold, f1 = best_cut(probs, truth)

    def f1_at(t: float) -> float:
        pred = probs >= t
        return 2 * (pred & (truth > 0)).sum() / (pred.sum() + truth.sum())

    assert f1 == pytest.approx(max(f1_at(t) for t in probs))
    assert f1_at(threshold) == pytest.approx(f1)
    assert 0.35 < threshold < 0.4  # between the last kept probability and the next


def test_choose_thresholds_floor_and_fallback() -> None:
    rng = np.random.default_rng(1)
    targets = np.zeros((40, 3), dtype=bool)
    targets[:20, 0] = True
    targets[0, 1] = True  # one positive: too few for its own threshold
    probs = rng.random((40, 3)) * 0.3
    probs[:20, 0] += 0.6
    chosen = choose_thresholds(probs, targets, ["a", "b", "c"], floor=0.05, min_positives=3)
    assert chosen.own.tolist() == [True, False, False]
    assert chosen.per_class[1] == chosen.per_class[2] == chosen.global_threshold >= 0.05
    assert (probs[:, 0] >= chosen.per_class[0]).tolist() == targets[:, 0].tolist()
    assert (
        choose_thresholds(np.full((4, 1), 0.01), np.ones((4, 1), bool), ["a"], floor=0.3).per_class[0] == 0.3
    )


def test_decide_tags_top_k_min_tags_and_threshold_specs() -> None:
    probs = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.1, 0.3, 0.05]])
    tags = decide_tags(probs, np.full(4, 0.5))
    assert tags.sum(axis=1).tolist() == [3, 0]
    assert decide_tags(probs, np.full(4, 0.5), top_k=2).sum(axis=1).tolist() == [2, 0]
    assert decide_tags(probs, np.full(4, 0.5), min_tags=1)[1].tolist() == [False, False, True, False]
    assert threshold_vector("0.25", None, 4).tolist() == [0.25] * 4
    with pytest.raises(Exception, match="no thresholds.json"):
        threshold_vector("per-class", None, 4)
    with pytest.raises(Exception, match=r"in \(0, 1\)"):
        threshold_vector("1.5", None, 4)


# -------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "setting",
    [
        "train.label_smoothing=0.1",
        "train.rdrop_alpha=1",
        "train.class_weight_alpha=1",
        "train.lv1_loss_weight=0.5",
        "train.distill_from=teacher",
        "data.extra_train=[pseudo.json]",
        "data.lv1_groups=[1]",
    ],
)
def test_single_label_settings_are_refused(setting: str) -> None:
    cfg = Config.from_yaml("tiny", ["data.task=multilabel", setting])
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        MultiLabelSetup(cfg, "unused").check_config()


def test_the_presets_default_level1_loss_is_no_refusal() -> None:
    """``lv1_loss_weight`` null (the default: 0.5 for single-label) is what tagging runs get too, unrefused."""
    cfg = Config.from_yaml("tiny", ["data.task=multilabel"])
    assert cfg.train.lv1_loss_weight is None
    MultiLabelSetup(cfg, "unused").check_config()


def test_kfold_and_ensemble_members_refuse_tagging_models(tmp_path: Path) -> None:
    from mmcls.data.text import load_tokenizer
    from mmcls.models import build_model, save_model_dir
    from mmcls.workflows.kfold import kfold_config
    from mmcls.workflows.members import MemberError, load_member, same_categories

    cfg = Config.from_yaml("tiny", ["data.task=multilabel", "data.frames.max_frames=2"])
    with pytest.raises(ConfigError, match="data.num_folds: k-fold"):
        kfold_config(cfg, 5, None)
    model = build_model(cfg, vocab_size=21128)
    save_model_dir(tmp_path / "m", model, cfg, load_tokenizer(cfg.data.text.tokenizer), CATS)
    with pytest.raises(MemberError, match="multilabel"):
        same_categories([load_member(tmp_path / "m")])
    # Through the CLI: one line, before any member predicts (the data root holds nothing to predict).
    for command, out in (("ensemble", "blend.csv"), ("pseudo-label", "labels.json")):
        extra = ("--min-confidence", "0.9") if command == "pseudo-label" else ()
        args = (
            command,
            str(tmp_path / "m"),
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / out),
            *extra,
        )
        _, err = run_main(*args, expect=2)
        assert err.strip().count("\n") == 0 and "multilabel (tagging) model" in err, err
        assert not (tmp_path / out).exists()


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_tagging_set(tmp_path: Path) -> None:
    from mmcls.data.synthetic import make_synthetic_dataset

    summary = make_synthetic_dataset(
        tmp_path / "d", 300, 0, 20, seed=1, num_frames=2, image_size=16, task="multilabel", label_noise=0.0
    )
    records = load_records(tmp_path / "d/annotations/labeled.json", require_labels=True, categories=CATS)
    counts = label_matrix(records, CATS).sum(axis=0)
    assert 1.5 < summary["tags_per_video"] < 3.5
    assert counts.max() >= 5 * max(np.median(counts[counts > 0]), 1)  # a long tail
    assert any(len(r.labels) == 0 for r in records)
    truth = load_multilabels(tmp_path / "d/annotations/test_labels.json", categories=CATS)
    assert len(truth) == 20
    assert all(r.labels is None for r in load_records(tmp_path / "d/annotations/test.json", categories=CATS))


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_train_predict_evaluate(tmp_path: Path) -> None:
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.engine.trainer import train
    from mmcls.inference.predict import predict_tags, write_tags
    from mmcls.metrics import evaluate_tag_files, tag_probs_path

    root = tmp_path / "data"
    make_synthetic_dataset(root, 60, 0, 12, seed=2, num_frames=2, image_size=32, task="multilabel")
    cfg = Config.from_yaml(
        "tiny",
        [
            SMALL_VOCAB_SETTING,
            "data.task=multilabel",
            "train.epochs=1",
            "data.num_workers=0",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "data.val_fraction=0.3",
            "train.multilabel_loss=asl",
            "model.label_embedding=pmi",
            "train.ema_decay=0.9",
            "train.adversarial.method=fgm",
            "data.frames.max_frames=2",
        ],
    )
    result = train(cfg, root, tmp_path / "run")
    assert result.selection_metric == "gap_at_20" and "map" in result.last_metrics
    saved = json.loads((tmp_path / "run/best/thresholds.json").read_text())
    assert len(saved["per_class"]) == CATS.num_lv2
    ids, probs, tags, _ = predict_tags(
        tmp_path / "run",
        root,
        "test",
        threshold="0.5",
        top_k=3,
        min_tags=1,
        device="cpu",
        num_workers=0,
        progress=False,
    )
    assert probs.shape == (12, CATS.num_lv2) and ((probs > 0) & (probs < 1)).all()
    assert tags.sum(axis=1).min() >= 1 and tags.sum(axis=1).max() <= 3
    out = tmp_path / "pred.csv"
    write_tags(out, ids, probs, tags, CATS)
    assert next(csv.reader(out.open())) == ["id", "labels"] and tag_probs_path(out).is_file()
    scores = evaluate_tag_files(out, root / "annotations/test_labels.json", CATS)
    assert {"gap_at_20", "map", "micro_f1", "macro_f1"} <= set(scores)
    check_export_and_serve(tmp_path, root, probs)


def check_export_and_serve(tmp_path: Path, root: Path, torch_probs: np.ndarray) -> None:
    """The ONNX artifact of the trained tagger gives the torch sigmoids; the served model answers with tags."""
    from mmcls.deploy.export import export_model
    from mmcls.deploy.triton_model import TritonPythonModel
    from mmcls.names import SERVED_TAG_NAMES, SERVED_TAGS
    from mmcls.tagging import load_thresholds

    artifact = export_model(tmp_path / "run", tmp_path / "onnx", "onnx")
    assert (artifact / "thresholds.json").is_file()
    out = tmp_path / "onnx_pred.csv"
    args = ["predict", str(artifact), "--data-root", str(root), "--out", str(out), "--device", "cpu"]
    run_main(*args, "--num-workers", "0")
    from mmcls.data.prob_files import load_probs
    from mmcls.metrics import tag_probs_path

    _, onnx_probs, info = load_probs(tag_probs_path(out))
    assert info["task"] == "multilabel"
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4  # parity, and sigmoids (not a softmax)

    model = TritonPythonModel()
    params = {"mmcls_model": {"string_value": str(artifact)}, "device": {"string_value": "cpu"}}
    model.initialize(
        {"model_config": json.dumps({"parameters": params}), "model_repository": "", "model_version": "1"}
    )
    text = {
        "title": np.array([b"\xe4\xbd\xa0\xe5\xa5\xbd"], dtype=object),
        "asr": np.array([b""], dtype=object),
    }
    samples = [model.classifier.decoder.decode(text, i) for i in range(2)]
    served = model.classifier._classify(samples)
    thresholds = load_thresholds(artifact, list(CATS.category_ids)).per_class
    probs = served["probs"]
    expected = [[CATS.category_ids[c] for c in np.flatnonzero(row >= thresholds)] for row in probs]
    assert served[SERVED_TAGS].shape[0] == 2 and served[SERVED_TAG_NAMES].shape == served[SERVED_TAGS].shape
    for row, want in zip(served[SERVED_TAGS], expected):
        got = [t.decode() for t in row if t]
        assert got == want or (not want and len(got) == 1)  # min_tags=1 adds the most probable class


# --------------------------------------------------------------------------------------- label embeddings
def test_pmi_of_a_known_co_occurrence() -> None:
    from mmcls.models.label_embedding import pmi_embedding, pmi_matrix

    # 8 videos: classes 0 and 1 always together (4 videos), class 2 alone (2), class 3 never, one without tags.
    labels = np.array([[1, 1, 0, 0]] * 4 + [[0, 0, 1, 0]] * 2 + [[0, 0, 0, 0]] * 2 + [[-1, -1, -1, -1]])
    pmi = pmi_matrix(labels)
    # PMI(0, 1) = log(P(0,1) / (P(0) P(1))) = log((4/8) / (4/8 * 4/8)) = log 2; never together: 0 (PPMI).
    assert pmi[0, 1] == pytest.approx(np.log(2)) and pmi[1, 0] == pytest.approx(np.log(2))
    assert pmi[2, 2] == pytest.approx(np.log(4)) and pmi[0, 2] == 0 and (pmi[3] == 0).all()
    vectors = pmi_embedding(labels, 3)
    assert vectors.shape == (4, 3)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # always together: one direction
    assert abs(vectors[0] @ vectors[2]) < 1e-6  # never together: orthogonal
    assert np.linalg.norm(vectors[3]) == 0  # never seen: no vector
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("trainable", [True, False])
def test_label_embedding_head_saves_and_loads(tmp_path: Path, trainable: bool) -> None:
    from mmcls.data.text import load_tokenizer
    from mmcls.models import build_model, load_model_dir, save_model_dir
    from mmcls.models.label_embedding import LabelDot

    cfg = Config.from_yaml(
        "tiny",
        [
            "data.task=multilabel",
            "model.label_embedding=pmi",
            "model.label_embedding_dim=8",
            f"model.label_embedding_trainable={str(trainable).lower()}",
            "data.frames.max_frames=2",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=21128)
    head = model.classifier[2]
    assert isinstance(head, LabelDot) and head.vectors.requires_grad is trainable
    head.set_vectors(torch.randn(CATS.num_lv2, 8))
    model.eval()
    batch = {
        "input_ids": torch.randint(1000, 8000, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "frames": torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8),
        "frame_mask": torch.ones(2, 2, dtype=torch.bool),
    }
    logits = model(**batch)["logits"]
    assert logits.shape == (2, CATS.num_lv2)
    save_model_dir(tmp_path / "m", model, cfg, load_tokenizer(cfg.data.text.tokenizer), CATS)
    loaded = load_model_dir(tmp_path / "m")
    torch.testing.assert_close(loaded.model(**batch)["logits"], logits)


def test_label_embedding_needs_multilabel() -> None:
    with pytest.raises(ConfigError, match="model.label_embedding=pmi"):
        Config.from_yaml("tiny", ["model.label_embedding=pmi"])


def test_tag_lists_are_padded_bytes() -> None:
    from mmcls.tagging import tag_lists

    tags = np.array([[1, 0, 1], [0, 0, 0]], dtype=bool)
    ids, labels = tag_lists(tags, ["a", "b", "c"], ["A", "B", "C"])
    assert ids.tolist() == [[b"a", b"c"], [b"", b""]] and labels.tolist() == [[b"A", b"C"], [b"", b""]]


def test_evaluate_detects_tag_files_and_writes_the_report(tmp_path: Path) -> None:
    from mmcls.inference.predict import write_tags

    ids = ["1", "2", "3"]
    ann = tmp_path / "truth.jsonl"
    truth = [[A, B], [], [C]]
    ann.write_text("\n".join(json.dumps({"id": i, "labels": t}) for i, t in zip(ids, truth)) + "\n")
    probs = np.full((3, CATS.num_lv2), 0.01, dtype=np.float32)
    probs[0, [0, 1]] = 0.9
    probs[1, 2] = 0.6  # a false positive of class C
    probs[2, 2] = 0.8
    tags = decide_tags(probs, np.full(CATS.num_lv2, 0.5))
    write_tags(tmp_path / "pred.csv", ids, probs, tags, CATS, np.full(CATS.num_lv2, 0.5))
    stdout, _ = run_main(
        "evaluate", "--pred", str(tmp_path / "pred.csv"), "--ann", str(ann), "--report", str(tmp_path / "rep")
    )
    scores = json.loads(stdout)
    assert scores["gap_at_20"] == pytest.approx(1.0) and scores["map"] == pytest.approx(1.0)
    assert scores["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    rows = list(csv.DictReader((tmp_path / "rep/per_class.csv").open()))
    assert rows[0]["category_id"] in (A, B, C) and rows[0]["threshold"] == "0.5"
    fps = json.loads((tmp_path / "rep/summary.json").read_text())["most_frequent_false_positives"]
    assert fps == [{"category_id": C, "name": CATS.name(C), "false_positives": 1, "positives": 1}]
