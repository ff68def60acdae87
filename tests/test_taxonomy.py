"""Taxonomies as data: a CSV file ``id,name,parent`` names the classes, their names and their level-1 groups.

A 12-class taxonomy under 4 parents (ids that are not digits, Chinese names) and a flat one of 5 classes go
through make-data, training, prediction and evaluation (with the report); the packaged WBDC2022 list stays
what the official scorer means; bad files fail in one line naming the file and the row.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcls.cli import main as cli_main
from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, annotation_path, load_labels, load_records
from mmcls.data.categories import (
    CategoryMap,
    Taxonomy,
    TaxonomyError,
    load_categories,
    official_categories,
    read_taxonomy,
)
from mmcls.data.synthetic import class_frequencies, make_synthetic_dataset, synthetic_task
from mmcls.data.text import load_tokenizer
from mmcls.metrics import EvaluationError, compute_scores, evaluate_files
from mmcls.models import build_model, load_model_dir, save_model_dir

from commands import ONE_EPOCH, child_env, mmcls_command
from conftest import CHILDREN, PARENTS

FLAT = [("a", "甲"), ("b", "乙"), ("c", "丙"), ("d", "丁"), ("e", "戊")]
FAST = list(ONE_EPOCH)


def write_flat(path: Path) -> Path:
    path.write_text("id,name,parent\n" + "".join(f"{c},{n},\n" for c, n in FLAT), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    return write_flat(tmp_path_factory.mktemp("taxonomy") / "flat.csv")


# ------------------------------------------------------------------------------------------------ the file
def test_two_level_file_gives_classes_names_parents_and_extra_columns(two_level):
    tax = read_taxonomy(two_level)
    assert CategoryMap is Taxonomy  # the name every caller used
    assert tax.num_lv2 == 12 and tax.num_lv1 == 4 and not tax.is_flat
    assert tax.category_ids == tuple(c for kids in CHILDREN.values() for c, _ in kids)
    assert tax.name("pets/cat") == "猫" and tax.lv1_id("pets/cat") == "pets"
    assert tax.lv1_index("music/live") == 2  # the parent's place among the top-level rows, from the file
    assert tax.lv1_names == tuple(PARENTS.values())
    assert tax.column("owner") == ("team9",) * 12
    assert tax.labeled_counts == (0,) * 12  # no labeled_count column
    np.testing.assert_array_equal(tax.lv2_to_lv1_matrix().sum(axis=0), [3, 3, 3, 3])
    # The model folder's form and the file's text both give the same taxonomy back.
    assert Taxonomy.from_dict(json.loads(json.dumps(tax.to_dict()))) == tax
    again = two_level.with_name("again.csv")
    again.write_text(tax.to_csv(), encoding="utf-8")
    assert read_taxonomy(again) == tax


def test_flat_file_level1_is_level2_and_mean_f1_is_mean_of_accuracy_and_macro_f1(flat):
    tax = read_taxonomy(flat)
    assert tax.is_flat and tax.num_lv1 == tax.num_lv2 == 5
    assert [tax.lv1_index(c) for c in tax.category_ids] == list(range(5))
    true = ["a", "a", "b", "c", "d", "e", "e", "e"]
    pred = ["a", "b", "b", "c", "a", "e", "e", "d"]
    scores = compute_scores(true, pred, tax)
    assert scores["lv1_micro_f1"] == scores["lv2_micro_f1"] == pytest.approx(5 / 8)
    assert scores["lv1_macro_f1"] == scores["lv2_macro_f1"]
    assert scores["mean_f1"] == pytest.approx((scores["lv2_micro_f1"] + scores["lv2_macro_f1"]) / 2)


def test_packaged_list_is_the_shared_official_one(shared_data):
    """The packaged WBDC2022 list is the challenge's own file (``../shared/data``): same ids, order, counts."""
    tax = official_categories()
    with (shared_data / "wbdc2022_categories.csv").open(encoding="utf-8") as handle:
        shared = list(csv.DictReader(handle))
    assert tax.category_ids == tuple(r["category_id"] for r in shared)  # same ids, same order
    assert tax.labeled_counts == tuple(int(r["labeled_count"]) for r in shared)


def test_packaged_list_agrees_with_the_scorers_level1(tmp_path):
    """The official scorer derives level 1 as ``int(id[:2])``: the file's parents say the same for every id."""
    tax = official_categories()
    assert tax.num_lv2 == 200 and tax.num_lv1 == 23 and load_categories(None) is tax
    for cid in tax.category_ids:
        assert tax.lv1_index(cid) == int(cid[:2]) == int(tax.lv1_id(cid))
    # On a WBDC submission the taxonomy's score is the official formula's.
    rng = np.random.default_rng(0)
    true = list(rng.choice(tax.category_ids, 300))
    pred = [c if rng.random() < 0.6 else str(rng.choice(tax.category_ids)) for c in true]
    from sklearn.metrics import f1_score

    lv1 = [int(c[:2]) for c in true], [int(c[:2]) for c in pred]
    official = [f1_score(*lv1, average=a) for a in ("micro", "macro")]
    official += [f1_score(true, pred, average=a) for a in ("micro", "macro")]
    assert compute_scores(true, pred)["mean_f1"] == pytest.approx(sum(official) / 4)


BAD = [
    ("", "empty file"),
    ("id,name,parent\n", "no rows under the header"),
    ("name,parent\nx,\n", "line 1: the header must name an 'id' column"),
    ("id,name,parent\na,A,\nb,B,\na,A2,\n", "line 4: duplicate id 'a' (first on line 2)"),
    ("id,name,parent\na,A,\nb,B,zz\n", "line 3: id 'b': unknown parent 'zz'"),
    ("id,name,parent\na,A,\nb,B,a\nc,C,b\n", "line 4: id 'c': parent 'b' has a parent itself"),
    ("id,name,parent\na,A,\nb,B,b\n", "line 3: id 'b': is its own parent"),
    ('id,name,parent\na,A,\n"b,c",B,\n', "line 3: id 'b,c' contains a comma"),
    ("id,name,parent\na,A,\n,B,\n", "line 3: empty id"),
    ("id,name,parent\na,A,\nb,B,,extra\n", "line 3: 4 fields, the header has 3"),
    ("id,name,parent\na,A,\n", "1 class(es)"),
    ("id,name,parent,labeled_count\na,A,,3\nb,B,,many\n", "line 3: labeled_count must be a non-negative"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0][:24] for _, m in BAD])
def test_bad_taxonomy_is_one_line_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaxonomyError) as info:
        read_taxonomy(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_taxonomy_files(tmp_path):
    with pytest.raises(TaxonomyError, match="missing.csv: cannot read taxonomy file"):
        load_categories(tmp_path / "missing.csv")
    (tmp_path / "latin1.csv").write_bytes("id,name,parent\na,caf\xe9,\n".encode("latin-1"))
    with pytest.raises(TaxonomyError, match="latin1.csv: not UTF-8"):
        read_taxonomy(tmp_path / "latin1.csv")


# ------------------------------------------------------------------------------------------------ settings
def test_config_num_classes_follows_the_file_and_a_mismatch_is_refused(two_level, tmp_path):
    cfg = Config.from_yaml("tiny", [f"data.categories={two_level}"])
    assert cfg.model.num_classes == 12
    with pytest.raises(
        ConfigError, match=r"model.num_classes=7 but data.categories=.*mine.csv has 12 classes"
    ):
        Config.from_yaml("tiny", [f"data.categories={two_level}", "model.num_classes=7"])
    with pytest.raises(ConfigError, match=r"data.categories: .*nope.csv: cannot read taxonomy file"):
        Config.from_yaml("tiny", [f"data.categories={tmp_path / 'nope.csv'}"])
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,parent\na,A,\nb,B,zz\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.categories: .*bad.csv: line 3: id 'b': unknown parent"):
        Config.from_yaml("tiny", [f"data.categories={bad}", "model.num_classes=2"])


def test_a_label_outside_the_taxonomy_names_the_taxonomy_file(two_level, tmp_path):
    ann = tmp_path / "labeled.json"
    ann.write_text(json.dumps([{"id": "1", "category_id": "0103", "title": "", "asr": "", "ocr": []}]))
    tax = read_taxonomy(two_level)
    with pytest.raises(
        AnnotationError, match=rf"record 0: field 'category_id': .*'0103' .*not a class of {two_level}"
    ):
        load_records(ann, categories=tax)
    with pytest.raises(AnnotationError, match=rf"not a class of {two_level}"):
        load_labels(ann, categories=tax)
    ann.write_text(json.dumps([{"id": "1", "category_id": "pets/cat"}]))
    pred = tmp_path / "pred.csv"
    pred.write_text("1,0103\n")
    with pytest.raises(EvaluationError, match=rf"pred.csv: line 1: unknown category_id '0103' .*{two_level}"):
        evaluate_files(pred, ann, tax)


def test_model_folder_carries_the_taxonomy_and_old_folders_load_as_wbdc(two_level, tmp_path):
    tax = read_taxonomy(two_level)
    cfg = Config.from_yaml("tiny", [f"data.categories={two_level}"])
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer))
    save_model_dir(tmp_path / "mine", model, cfg, tokenizer, tax)
    saved = json.loads((tmp_path / "mine" / "categories.json").read_text(encoding="utf-8"))
    assert saved["names"][0] == "家常菜" and saved["parents"][0] == "food"
    loaded = load_model_dir(tmp_path / "mine")
    assert loaded.categories == tax and loaded.config.data.categories is None  # the folder is self-contained

    # A folder written before taxonomies were files: only category_ids and lv1_of_lv2.
    wbdc = official_categories()
    cfg = Config.from_yaml("tiny")
    save_model_dir(tmp_path / "old", build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, wbdc)
    old = {"category_ids": list(wbdc.category_ids), "lv1_of_lv2": list(wbdc.lv1_of_lv2)}
    (tmp_path / "old" / "categories.json").write_text(json.dumps(old), encoding="utf-8")
    assert load_model_dir(tmp_path / "old").categories == wbdc


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_data_follows_the_taxonomy(two_level, tmp_path):
    tax = read_taxonomy(two_level)
    summary = make_synthetic_dataset(
        tmp_path, 300, 0, 0, seed=1, num_frames=1, image_size=16, feature_dim=2, categories=tax
    )
    labels = [r.category_id for r in load_records(annotation_path(tmp_path, "labeled"), categories=tax)]
    assert set(labels) <= set(tax.category_ids) and summary["categories"] == str(two_level)
    counts = np.array([labels.count(c) for c in tax.category_ids])
    assert counts[0] > 3 * counts[-1]  # no counts in the file: a long tail in file order
    np.testing.assert_allclose(class_frequencies(tax)[0] / class_frequencies(tax)[-1], 12**0.7)
    task = synthetic_task(tax)
    lv1 = np.asarray(tax.lv1_of_lv2)
    for code in range(task.num_text_codes):  # a text code stays inside one parent
        assert len(set(lv1[task.text_code == code])) == 1


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("kind", ["two_level", "flat"])
def test_make_data_train_predict_evaluate_report_over_a_users_taxonomy(kind, request, tmp_path):
    from mmcls.engine.trainer import train
    from mmcls.inference.predict import predict_split, write_submission

    taxonomy = request.getfixturevalue(kind)
    tax = read_taxonomy(taxonomy)
    data = tmp_path / "data"
    assert (
        cli_main(
            [
                "make-data",
                str(data),
                "--num-labeled",
                "64",
                "--num-unlabeled",
                "0",
                "--num-test",
                "24",
                "--num-frames",
                "2",
                "--image-size",
                "32",
                "--categories",
                str(taxonomy),
            ]
        )
        == 0
    )
    cfg = Config.from_yaml("tiny", [*FAST, f"data.categories={taxonomy}"])
    torch.manual_seed(0)
    train(cfg, data, tmp_path / "run")
    summary = (tmp_path / "run" / "summary.md").read_text(encoding="utf-8")
    weakest = summary.split("## Weakest classes")[1].split("##")[0]
    assert any(f"| `{c}` | {tax.name(c)} |" in weakest for c in tax.category_ids)  # by id and name
    model = load_model_dir(tmp_path / "run")
    assert model.categories == tax and model.model.cfg.num_classes == tax.num_lv2

    ids, _, predicted = predict_split(
        tmp_path / "run", data, "test", device="cpu", num_workers=0, progress=False
    )
    assert set(predicted) <= set(tax.category_ids)
    submission = tmp_path / "result.csv"
    write_submission(submission, ids, predicted)
    labels = data / "annotations" / "test_labels.json"
    report = tmp_path / "report"
    assert (
        cli_main(
            [
                "evaluate",
                "--pred",
                str(submission),
                "--ann",
                str(labels),
                "--categories",
                str(taxonomy),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    scores = evaluate_files(submission, labels, tax)
    if tax.is_flat:
        assert scores["lv1_macro_f1"] == scores["lv2_macro_f1"]
    with (report / "per_class.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"category_id", "name", "lv1_id"} <= set(rows[0])
    for row in rows:
        assert row["name"] == tax.name(row["category_id"]) and row["lv1_id"] == tax.lv1_id(row["category_id"])
    page = (report / "index.html").read_text(encoding="utf-8")
    assert any(name in page for name in tax.names)
    # Without --categories the ids are not WBDC ids: one line naming the packaged list.
    assert cli_main(["evaluate", "--pred", str(submission), "--ann", str(labels)]) == 2


def test_cli_refuses_a_bad_taxonomy_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,parent\na,A,\na,B,\n", encoding="utf-8")
    proc = subprocess.run(
        mmcls_command("make-data", str(tmp_path / "data"), "--categories", str(bad)),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mmcls make-data: error: {bad}: line 3: duplicate id 'a' (first on line 2)"
    ]
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------------------ workflows
@pytest.fixture(scope="module")
def taxonomy_data(two_level, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("taxonomy_data") / "data"
    make_synthetic_dataset(
        root, 96, 24, 16, seed=2, num_frames=2, image_size=32, categories=read_taxonomy(two_level)
    )
    return root


def _random_model(path: Path, taxonomy: Path | None, seed: int) -> Path:
    cfg = Config.from_yaml("tiny", [*FAST, *([f"data.categories={taxonomy}"] if taxonomy else [])])
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    save_model_dir(
        path, build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, load_categories(taxonomy)
    )
    return path


def test_ensemble_and_pseudo_labels_over_the_members_taxonomy(two_level, taxonomy_data, tmp_path):
    from mmcls.workflows.ensemble import run_ensemble
    from mmcls.workflows.members import MemberError, PredictOptions
    from mmcls.workflows.pseudo_label import pseudo_label

    tax = read_taxonomy(two_level)
    options = PredictOptions(batch_size=32, num_workers=0, device="cpu")
    members = [_random_model(tmp_path / f"m{i}", two_level, seed=i) for i in range(2)]
    run_ensemble(members, taxonomy_data, "test", tmp_path / "ens.csv", options=options)
    with (tmp_path / "ens.csv").open(encoding="utf-8") as handle:
        assert {row[1] for row in csv.reader(handle)} <= set(tax.category_ids)
    summary = pseudo_label(members, taxonomy_data, "unlabeled", tmp_path / "pl.json", 0.0, options=options)
    assert summary["passed"] == 24
    assert set(summary["lv1_histogram"]) <= set(PARENTS)  # level 1 = the file's parents
    assert sum(summary["lv1_histogram"].values()) == 24
    wbdc = _random_model(tmp_path / "wbdc", None, seed=3)
    with pytest.raises(MemberError, match="another taxonomy"):
        run_ensemble([members[0], wbdc], taxonomy_data, "test", tmp_path / "mixed.csv", options=options)


@pytest.mark.slow
def test_kfold_and_group_finetune_over_a_taxonomy(two_level, taxonomy_data, tmp_path):
    """kfold's out-of-fold scores and group-finetune's groups (the file's parents) over the 12-class file."""
    from mmcls.engine.trainer import train
    from mmcls.workflows.group_finetune import group_finetune
    from mmcls.workflows.kfold import run_kfold

    tax = read_taxonomy(two_level)
    cfg = Config.from_yaml("tiny", [*FAST, f"data.categories={two_level}"])
    result = run_kfold(cfg, taxonomy_data, tmp_path / "kfold", num_folds=2)
    assert set(result.scores) >= {"mean_f1", "lv1_macro_f1"}
    train(cfg, taxonomy_data, tmp_path / "run")
    summary = group_finetune(
        tmp_path / "run", taxonomy_data, tmp_path / "groups", epochs=1, min_records=1, groups=[0]
    )
    assert summary["groups"] == [0]  # the first parent: food
    group_model = load_model_dir(tmp_path / "groups" / "group00" / "last")
    assert group_model.categories == tax
    assert read_taxonomy(tmp_path / "groups" / "categories.csv") == tax


def test_class_id_set_keeps_its_file_across_pickling(two_level):
    """DataLoader workers get the dataset (and the id set inside it) pickled under the spawn start method."""
    import pickle

    ids = read_taxonomy(two_level).id_set()
    again = pickle.loads(pickle.dumps(ids))
    assert again == ids and again.source == str(two_level)
