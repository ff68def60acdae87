"""Trust, round two (issue 23): no command writes over or into its own inputs, numeric options are checked at
parse time, bad values and broken artifacts are one line, and a command refused by validation writes nothing.

Every case runs the real command in-process (``mmcls.cli.main``) and checks the exit status 2, one stderr line
naming the problem, and that the inputs are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mmcls.cli import main
from mmcls.data.synthetic import make_synthetic_dataset

from deploy_fixtures import tiny_model_dir


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: relative path -> sha256 (equal snapshots = byte-identical trees)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def refused(capsys, argv: list[str], *needles: str) -> str:
    """``mmcls ARGV`` exits 2 with one stderr line holding every needle."""
    assert main(argv) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A data root (``data/``), a model folder (``model/``) and a run directory (``run/`` with ``best/``)."""
    root = tmp_path_factory.mktemp("trust")
    make_synthetic_dataset(root / "data", 24, 4, 6, seed=2, num_frames=2, image_size=32)
    tiny_model_dir(root / "model")
    (root / "run").mkdir()
    tiny_model_dir(root / "run" / "best")
    (root / "run" / "config.yaml").write_bytes((root / "run" / "best" / "config.yaml").read_bytes())
    return root


# ------------------------------------------------------------------------- 1. outputs never replace inputs
@pytest.mark.parametrize(
    "out",
    [
        "run/best/model.safetensors",
        "run/best/config.yaml",
        "run/config.yaml",
        "model/model.safetensors",
        "data/annotations/test.json",
        "data/zip_feats/test.zip",
        "data/zip_frames/test/x.csv",
    ],
)
def test_predict_refuses_an_output_that_is_or_is_inside_an_input(work, capsys, out):
    before = snapshot(work)
    model = "model" if out.startswith("model") else "run"
    argv = ["predict", str(work / model), "--data-root", str(work / "data"), "--out", str(work / out)]
    refused(capsys, argv, str(work / out), "input of this command")
    assert snapshot(work) == before


def test_predict_beside_the_run_is_still_allowed(work):
    """The README's ``--out runs/tiny/result.csv``: beside the run's files, not one of them."""
    out = work / "run" / "result.csv"
    argv = ["predict", str(work / "run"), "--data-root", str(work / "data"), "--out", str(out)]
    argv += ["--batch-size", "8", "--num-workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    assert out.is_file() and (work / "run" / "result.data_errors.json").is_file()
    out.unlink()
    (work / "run" / "result.data_errors.json").unlink()


def test_predict_replaces_a_file_of_another_kind_only_with_overwrite(work, tmp_path, capsys):
    """An earlier result CSV is replaced on a re-run; a user's ``notes.txt`` given as ``--out`` by mistake is not."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    argv = ["predict", str(work / "model"), "--data-root", str(work / "data"), "--out", str(notes)]
    argv += ["--batch-size", "8", "--num-workers", "0", "--device", "cpu"]
    refused(capsys, argv, str(notes), "not a prediction file", "--overwrite")
    assert notes.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert main([*argv, "--overwrite"]) == 0
    assert notes.read_text().count(",") >= 1  # now the predictions, as asked
    client = ["client", "http://127.0.0.1:9", "--data-root", str(work / "data"), "--out", str(notes)]
    refused(capsys, client, str(notes), "not a prediction file", "--overwrite")  # before any connection


@pytest.mark.parametrize(
    "argv_of",
    [
        lambda w: ["ensemble", str(w / "model"), "--data-root", str(w / "data"), "--out",
                   str(w / "data/annotations/test.json"), "--overwrite"],
        lambda w: ["ensemble", str(w / "model"), "--data-root", str(w / "data"), "--out",
                   str(w / "x.csv"), "--save-probs", str(w / "model/p.npy"), "--overwrite"],
        lambda w: ["pseudo-label", str(w / "run"), "--data-root", str(w / "data"), "--split", "unlabeled",
                   "--out", str(w / "data/annotations/unlabeled.json"), "--min-confidence", "0.5",
                   "--overwrite"],
        lambda w: ["extract-features", str(w / "model"), "--data-root", str(w / "data"), "--split", "test",
                   "--out", str(w / "model/model.safetensors"), "--overwrite"],
        lambda w: ["extract-features", str(w / "model"), "--data-root", str(w / "data"), "--split", "test",
                   "--out", str(w / "data/annotations/test.json"), "--overwrite"],
        lambda w: ["export", str(w / "run"), "--format", "onnx", "--out", str(w / "run/best/onnx")],
        lambda w: ["train", "tiny", "--data-root", str(w / "data"), "--out", str(w / "data"), "--overwrite"],
        lambda w: ["train", "tiny", "--data-root", str(w / "data"), "--out", str(w / "run/best/again"),
                   "--set", f"model.init_from={w / 'run'}", "--overwrite"],
        lambda w: ["kfold", "tiny", "--data-root", str(w / "data"), "--out", str(w / "data/zip_frames/k")],
        lambda w: ["group-finetune", str(w / "run"), "--data-root", str(w / "data"), "--out",
                   str(w / "run/best/groups")],
        lambda w: ["client", "http://127.0.0.1:9", "--data-root", str(w / "data"), "--out",
                   str(w / "data/annotations/test.json")],
        lambda w: ["make-data", str(w / "model"), "--categories", str(w / "model/categories.json"),
                   "--overwrite"],
    ],
    ids=["ensemble-annotations", "ensemble-save-probs-in-model", "pseudo-label-own-split",
         "extract-features-weights", "extract-features-annotations", "export-into-model", "train-into-data",
         "train-into-init-from", "kfold-into-frames", "group-finetune-into-model", "client-own-split",
         "make-data-over-taxonomy"],
)  # fmt: skip
def test_every_writing_command_refuses_its_own_inputs_even_with_overwrite(work, capsys, argv_of):
    before = snapshot(work)
    refused(capsys, argv_of(work), "input of this command")
    assert snapshot(work) == before


def test_ensemble_save_probs_bad_fails_before_the_csv_is_written(work, tmp_path, capsys):
    out = tmp_path / "result.csv"
    argv = ["ensemble", str(work / "model"), "--data-root", str(work / "data"), "--out", str(out)]
    refused(capsys, [*argv, "--save-probs", str(tmp_path / "probs.txt")], "probs.txt", ".npy")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- 2. numeric options checked at parsing
def parse_refused(capsys, argv: list[str], option: str) -> str:
    """argparse refuses ``argv`` (exit 2) before ``run`` in one line (no usage dump) that names the option."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    line = one_error_line(capsys)
    assert option in line and "--help" in line, line
    return line


PARSE_CASES = [
    (["export", "m", "--format", "onnx", "--out", "o", "--max-batch", "0"], "--max-batch"),
    (["serve", "m", "--max-batch", "0"], "--max-batch"),
    (["serve", "m", "--instances", "0"], "--instances"),
    (["serve", "m", "--http-port", "70000"], "--http-port"),
    (["serve", "m", "--grpc-port", "0"], "--grpc-port"),
    (["serve", "m", "--max-video-seconds", "inf"], "--max-video-seconds"),
    (["client", "http://h:1", "--concurrency", "0"], "--concurrency"),
    (["tune", "tiny", "--data-root", "d", "--out", "o", "--space", "s", "--trials", "1", "--stale-after", "1"],
     "--stale-after"),
    (["client", "http://h:1", "--timeout", "-1"], "--timeout"),
    (["bench", "data", "tiny", "--data-root", "d", "--warmup", "-1"], "--warmup"),
    (["bench", "data", "tiny", "--data-root", "d", "--workers", "-2"], "--workers"),
    (["bench", "data", "tiny", "--data-root", "d", "--repeats", "0"], "--repeats"),
    (["bench", "infer", "m", "--data-root", "d", "--batch-size", "0"], "--batch-size"),
    (["predict", "m", "--data-root", "d", "--out", "o", "--logit-adjust", "nan"], "--logit-adjust"),
    (["predict", "m", "--data-root", "d", "--out", "o", "--num-workers", "-1"], "--num-workers"),
    (["ensemble", "m", "--data-root", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["pseudo-label", "m", "--data-root", "d", "--out", "o", "--min-confidence", "1.5"], "--min-confidence"),
    (["extract-features", "m", "--data-root", "d", "--split", "s", "--out", "o", "--max-frames", "0"],
     "--max-frames"),
    (["kfold", "tiny", "--data-root", "d", "--out", "o", "--folds", "1"], "--folds"),
    (["group-finetune", "r", "--data-root", "d", "--out", "o", "--epochs", "0"], "--epochs"),
    (["group-finetune", "r", "--data-root", "d", "--out", "o", "--groups", "-1"], "--groups"),
    (["make-data", "o", "--image-size", "0"], "--image-size"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["ensemble", "m", "--data-root", "d", "--out", "o", "--device", "gpu"], "--device"),
    (["extract-features", "m", "--data-root", "d", "--split", "s", "--out", "o", "--device", "tpu"], "--device"),
    (["serve", "m", "--device", "cuda:9"], "--device"),
]  # fmt: skip


@pytest.mark.parametrize("argv,option", PARSE_CASES, ids=[" ".join(a[-2:]) for a, _ in PARSE_CASES])
def test_numeric_options_are_checked_at_parse_time(capsys, tmp_path, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    parse_refused(capsys, argv, option)
    assert list(tmp_path.iterdir()) == []  # nothing written (demo --epochs 0 included)


def test_a_path_like_config_that_does_not_exist_is_an_error_not_the_preset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, ["train", "./tiny", "--data-root", "d", "--out", "o"], "./tiny", "no such config")
    assert "preset 'tiny'" in line  # the hint
    assert list(tmp_path.iterdir()) == []


def test_group_finetune_groups_naming_no_group_is_one_line(work, tmp_path, capsys):
    argv = [
        "group-finetune",
        str(work / "run"),
        "--data-root",
        str(work / "data"),
        "--out",
        str(tmp_path / "g"),
    ]
    refused(capsys, [*argv, "--groups", "99"], "--groups 99", "no such level-1 group")
    assert not (tmp_path / "g").exists()


# -------------------------------------------------------------------------- 3. one line, not a traceback
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_export_device_cuda_without_a_gpu_is_one_line(work, tmp_path, capsys):
    argv = [
        "export",
        str(work / "model"),
        "--format",
        "onnx",
        "--out",
        str(tmp_path / "a"),
        "--device",
        "cuda",
    ]
    refused(capsys, argv, "--device cuda", "no CUDA device")
    assert list(tmp_path.iterdir()) == []


def fake_artifact(work: Path, tmp_path: Path, **changes) -> Path:
    """A model folder turned artifact: a stand-in model.onnx and an export.json with ``changes`` applied."""
    from mmcls.config import Config
    from mmcls.deploy.artifact import build_export_info

    folder = tmp_path / "artifact"
    tiny_model_dir(folder)
    (folder / "model.onnx").write_bytes(b"stand-in, never parsed: export.json is refused first")
    config = Config.from_yaml(folder / "config.yaml")
    info = build_export_info(
        config,
        fmt="onnx",
        precision="fp32",
        model_file="model.onnx",
        device="cpu",
        frame_input="pixels",
        dynamic_dims={"batch": (1, 8)},
        num_lv1=23,
    )
    for key, value in changes.items():
        info[key] = value(info[key]) if callable(value) else value
    (folder / "export.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"format": "aoti"}, "model_file"),
        ({"format": "tensorrt"}, "model_file"),
        ({"inputs": lambda d: {("text_ids" if k == "input_ids" else k): v for k, v in d.items()}}, "inputs"),
        ({"outputs": lambda d: {"scores": d["probs"]}}, "outputs"),
        ({"frame_input": "jpeg"}, "frame_input"),
    ],
    ids=["other-format-aoti", "other-format-tensorrt", "renamed-input", "renamed-output", "frame-input"],
)
def test_an_artifact_whose_export_json_lies_is_refused_at_load_in_one_line(
    work, tmp_path, capsys, changes, needle
):
    artifact = fake_artifact(work, tmp_path, **changes)
    out = tmp_path / "out.csv"
    argv = ["predict", str(artifact), "--data-root", str(work / "data"), "--out", str(out), "--device", "cpu"]
    refused(capsys, argv, "export.json", needle)
    assert not out.exists()


def test_kfold_with_more_folds_than_records_is_one_line_and_writes_nothing(work, tmp_path, capsys):
    out = tmp_path / "k"
    argv = ["kfold", "tiny", "--data-root", str(work / "data"), "--out", str(out), "--folds", "30"]
    refused(capsys, [*argv, "--set", "train.device=cpu"], "--folds 30", "more folds than the 24")
    assert not out.exists()


# ------------------------------------------------------ 5. a refused command writes nothing; retries work
def test_train_with_a_missing_init_from_writes_nothing(work, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "tiny", "--data-root", str(work / "data"), "--out", str(run)]
    refused(capsys, [*argv, "--set", "model.init_from=nowhere"], "model.init_from", "nowhere")
    assert not run.exists()


def test_a_run_dir_holding_only_its_config_is_no_run_to_protect(tmp_path):
    """What a run that failed at once left behind: the corrected command starts there without --overwrite."""
    from mmcls.config import Config
    from mmcls.engine.run_dir import RunDirError, check_run_dir, start_run_dir

    cfg = Config.from_yaml("tiny")
    run = tmp_path / "run"
    start_run_dir(cfg, run, resume=False, overwrite=False)
    assert sorted(p.name for p in run.iterdir()) == [".mmcls-run", "config.yaml"]
    check_run_dir(cfg, run, resume=False, overwrite=False)  # no error
    (run / "metrics.csv").write_text("epoch\n")
    with pytest.raises(RunDirError, match="already holds a run without checkpoints"):
        check_run_dir(cfg, run, resume=False, overwrite=False)


def test_a_kfold_dir_holding_only_its_plan_is_replaced_by_the_next_command(tmp_path):
    from mmcls.config import Config
    from mmcls.workflows.kfold import KFoldError, _check_plan, _plan, kfold_config

    out = tmp_path / "k"
    (out / "fold0").mkdir(parents=True)
    (out / "fold0" / "config.yaml").write_text("{}")  # fold 0 failed before training
    old = kfold_config(Config.from_yaml("tiny"), 3, 1)
    (out / "kfold.json").write_text(json.dumps(_plan(old)))
    assert _check_plan(out, kfold_config(Config.from_yaml("tiny"), 4, 1), resume=False) is True
    (out / "fold0" / "metrics.csv").write_text("epoch\n")  # a fold that trained: a run to protect
    with pytest.raises(KFoldError, match="already holds a kfold run"):
        _check_plan(out, old, resume=False)


# ------------------------------------------------------------- 4. serve refuses before tritonserver starts
def test_serve_names_a_busy_port_before_starting(work, capsys):
    import socket

    from commands import free_ports

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        grpc, metrics = free_ports(2)
        argv = ["serve", str(work / "model"), "--http-port", str(port)]
        argv += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        refused(capsys, argv, f"--http-port {port}", "not free")


def test_serve_refuses_equal_ports(work, capsys):
    argv = [
        "serve",
        str(work / "model"),
        "--http-port",
        "8100",
        "--grpc-port",
        "8100",
        "--metrics-port",
        "8102",
    ]
    refused(capsys, argv, "must differ")


def test_serve_checks_the_model_as_predict_does_before_starting(work, tmp_path, capsys):
    import pickle

    from commands import free_ports

    ports = free_ports(3)
    port_args = ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    broken = tmp_path / "model"
    tiny_model_dir(broken)
    (broken / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    refused(capsys, ["serve", str(broken), *port_args], "model.safetensors", "not a readable safetensors")
    argv = ["serve", str(work / "model"), "--precision", "fp16", "--device", "cpu", *port_args]
    refused(capsys, argv, "fp16")


# ------------------------------------------------- 6. the client reads frames as predict does, same totals
@pytest.fixture
def hostile_root(tmp_path) -> Path:
    """A data root whose test zips are a symlink to /dev/zero, a FIFO, missing, truncated, empty, and one
    whose frames have no image suffix (valid JPEGs that predict reads)."""
    import os
    import zipfile

    from mmcls.data.annotations import load_records

    root = tmp_path / "data"
    make_synthetic_dataset(root, 8, 0, 8, seed=4, num_frames=3, image_size=32)
    ids = [r.id for r in load_records(root / "annotations" / "test.json")]
    zips = [root / "zip_frames" / "test" / i[-3:] / f"{i}.zip" for i in ids]
    zips[0].unlink()
    zips[0].symlink_to("/dev/zero")
    zips[1].unlink()
    os.mkfifo(zips[1])
    zips[2].unlink()
    zips[3].write_bytes(zips[3].read_bytes()[:40])
    zips[4].write_bytes(b"")
    with zipfile.ZipFile(zips[5]) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(zips[5], "w") as zf:
        for name, data in members:
            zf.writestr(name.rsplit(".", 1)[0], data)
    return root


def test_client_frame_reader_counts_what_predict_counts(work, hostile_root, tmp_path):
    from mmcls.config import Config
    from mmcls.data.annotations import load_records
    from mmcls.deploy.client import frame_error_kinds, frame_reader, read_frame_bytes

    out = tmp_path / "predict.csv"
    argv = ["predict", str(work / "model"), "--data-root", str(hostile_root), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--num-workers", "0", "--batch-size", "4"]) == 0
    predicted = json.loads((tmp_path / "predict.data_errors.json").read_text())

    max_frames = Config.from_yaml(work / "model" / "config.yaml").data.frames.max_frames
    reader = frame_reader(hostile_root / "zip_frames" / "test", max_frames)
    totals: dict[str, int] = {}
    sent = {}
    for record in load_records(hostile_root / "annotations" / "test.json"):
        frames, local = read_frame_bytes(reader, record.id)
        sent[record.id] = len(frames)
        for kind in frame_error_kinds(local, len(frames), []):  # the server decodes every valid JPEG
            totals[kind] = totals.get(kind, 0) + 1
    assert {"frames": dict(sorted(totals.items())), "total": sum(totals.values())} == predicted
    assert predicted["total"] >= 5  # /dev/zero, FIFO, missing, truncated, empty
    assert sum(1 for n in sent.values() if n) == 3  # the suffix-less zip is read, as predict reads it


def test_frame_error_kinds_of_server_side_failures():
    from mmcls.deploy.client import frame_error_kinds

    assert frame_error_kinds([], 3, ["frames[1]: undecodable image"]) == ["bad_image"]
    assert frame_error_kinds(
        ["bad_image"], 2, ["frames[0]: undecodable image", "frames[1]: undecodable image"]
    ) == ["bad_image"]
    assert frame_error_kinds(["missing_file"], 0, []) == ["missing_file"]


def test_the_client_streams_a_split_in_order_with_a_bounded_window():
    from mmcls.deploy.client import _in_order

    started = []
    stream = _in_order(lambda r: started.append(r) or r * 2, list(range(1000)), 2)
    first = next(stream)
    assert first == (0, 0) and len(started) <= 8  # 4 x concurrency read ahead, not the whole split
    assert [first, *stream] == [(r, 2 * r) for r in range(1000)]


# ------------------------------------------------------ 7. uncached pretrained weights fail at once offline
@pytest.fixture
def hub_down(monkeypatch):
    """The hub answers nothing: HF_HUB_OFFLINE off, HF_ENDPOINT a closed local port, no proxy."""
    from huggingface_hub import constants

    from mmcls.models import frame_encoder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    frame_encoder._probe.cache_clear()
    yield
    frame_encoder._probe.cache_clear()


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_uncached_bert_weights_fail_at_once(hub_down, monkeypatch, offline):
    import time

    from huggingface_hub import constants

    from mmcls.models.frame_encoder import PretrainedWeightsError
    from mmcls.models.fusion import load_pretrained_bert

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as caught:
        load_pretrained_bert("mmcls-tests/not-a-cached-bert")
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "not in the local caches" in message and "hf download" in message
    assert ("HF_HUB_OFFLINE=1" if offline else "127.0.0.1:9 cannot be reached") in message


def test_uncached_open_clip_weights_fail_at_once_when_the_hub_is_down(hub_down):
    import time

    from mmcls.config import Config
    from mmcls.models.frame_encoder import PretrainedWeightsError, build_frame_encoder

    cfg = Config.from_yaml("tiny", ["model.frame_encoder.name=hf-hub:mmcls-tests/not-cached"])
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match="127.0.0.1:9 cannot be reached"):
        build_frame_encoder(cfg.model.frame_encoder, cfg.data.frames)
    assert time.monotonic() - start < 10
