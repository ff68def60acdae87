"""int8 ONNX artifacts (``export --quantize int8``), ``export --logit-adjust`` and ``bench infer --compare``.

One tiny model is trained once per session (a real ``mmcls train`` run on synthetic data): int8 agreement is
only meaningful on a model whose scores are not all ties.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest

from mmcls.deploy.artifact import ArtifactError
from mmcls.deploy.export import export_model
from mmcls.deploy.predictor import Predictor
from mmcls.metrics import compute_scores, read_labels

from commands import QUIET, child_env, mmcls_command, one_torch_thread, run_main, tiny_config

pytest.importorskip("onnxruntime.quantization")


def run_mmcls(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        mmcls_command(*args), env=child_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``{"root", "data", "model"}``: a tiny model trained for a few epochs on a synthetic data root (in this
    process: what is tested is the exported artifact, not how training was started)."""
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.engine.trainer import train

    root = tmp_path_factory.mktemp("quantize")
    data = root / "data"
    make_synthetic_dataset(data, 240, 0, 80, seed=3, num_frames=4, image_size=32)
    # 20 epochs: fewer leave the model's top scores close (8 epochs: test mean_f1 0.07, int8 agreement 0.975
    # against 0.16 and 1.0 after 20), and the agreement checks below would test ties.
    # One torch thread, as the child process that trained it before: the same model, whatever the machine.
    cfg = tiny_config(*QUIET, "data.num_workers=0", "train.epochs=20", "train.checkpoint_every_steps=1000")
    with one_torch_thread():
        train(cfg, data, root / "run")
    return {"root": root, "data": data, "model": root / "run"}


@pytest.fixture(scope="session")
def onnx_fp32(trained):
    # Both sides without the TAU training chose (auto): what is compared is the quantization alone.
    return export_model(trained["model"], trained["root"] / "fp32", "onnx", logit_adjust=0)


@pytest.fixture(scope="session")
def int8_artifacts(trained):
    """The int8 artifacts of both modes, written through the CLI's entry point as a user would."""
    out = {}
    for mode in ("dynamic", "static"):
        out[mode] = trained["root"] / f"int8_{mode}"
        args = ["export", str(trained["model"]), "--format", "onnx", "--out", str(out[mode])]
        args += ["--quantize", "int8", "--quantize-mode", mode, "--logit-adjust", "0"]
        if mode == "static":
            args += ["--data-root", str(trained["data"]), "--calibration-split", "labeled"]
            args += ["--calibration-size", "64"]
        stdout, _ = run_main(*args)
        assert f"(int8, {mode})" in stdout
    return out


def predict(path, data):
    """``(ids, category ids, probabilities)`` of the test split through the Predictor."""
    ids, preds, category_ids = Predictor.from_path(path, device="cpu").predict_split(
        data, num_workers=0, progress=False
    )
    return ids, category_ids, preds.probs[np.argsort(preds.indices)]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_agrees_with_fp32_on_the_test_split(trained, onnx_fp32, int8_artifacts, mode):
    data = trained["data"]
    truth = read_labels(data / "annotations" / "test_labels.json")
    ids, fp32, probs = predict(onnx_fp32, data)
    ids8, int8, probs8 = predict(int8_artifacts[mode], data)
    assert ids8 == ids and len(ids) == 80
    agreement = np.mean([a == b for a, b in zip(fp32, int8)])
    assert agreement >= 0.97, agreement
    # What int8 may change is a near-tie: every changed label had its FP32 top two within 0.01.
    top2 = np.sort(probs, axis=1)[:, -2:]
    gaps = [top2[i, 1] - top2[i, 0] for i, (a, b) in enumerate(zip(fp32, int8)) if a != b]
    assert all(gap < 0.01 for gap in gaps), gaps
    assert np.abs(probs8 - probs).max() < 0.02
    f1_fp32 = compute_scores([truth[i] for i in ids], fp32)["mean_f1"]
    f1_int8 = compute_scores([truth[i] for i in ids], int8)["mean_f1"]
    assert abs(f1_fp32 - f1_int8) <= 0.01, (f1_fp32, f1_int8)
    assert f1_fp32 > 0.05  # a model that learned something: agreement on ties would prove nothing


def test_int8_export_json_is_complete(trained, onnx_fp32, int8_artifacts):
    dynamic = json.loads((int8_artifacts["dynamic"] / "export.json").read_text())
    static = json.loads((int8_artifacts["static"] / "export.json").read_text())
    for info in (dynamic, static):
        assert info["format"] == "onnx" and info["precision"] == "int8"
        assert info["model_file"] == "model.onnx"
        assert info["quantization"]["precision"] == "int8"
        assert info["quantization"]["tool"] == "onnxruntime.quantization"
        assert info["logit_adjust"] is None
        assert info["versions"]["onnxruntime"]
    assert dynamic["quantization"]["mode"] == "dynamic"
    assert dynamic["quantization"]["calibration"] is None
    assert dynamic["quantization"]["operators"]["MatMulInteger"] > 0
    assert static["quantization"]["mode"] == "static" and static["quantization"]["format"] == "QDQ"
    assert static["quantization"]["calibration"] == {
        "data_root": str(trained["data"]),
        "split": "labeled",
        "count": 64,
    }
    assert static["quantization"]["operators"]["Conv"] >= 1  # the ViT's patch embedding
    assert static["quantization"]["operators"]["MatMul"] > 0
    # Static int8 keeps the label-deciding classifier matmul in FP32 (deploy/quantize.py): its float weight is
    # still read by a Gemm, where quantizing would have replaced it by an int8 initializer.
    graph = onnx.load(str(int8_artifacts["static"] / "model.onnx"), load_external_data=False).graph
    head = next(i.name for i in graph.initializer if i.name == "model.classifier.1.weight")
    assert any(n.op_type == "Gemm" and head in n.input for n in graph.node)
    # The int8 weights shrink the file (the tiny model's bytes are mostly its float embedding table, which
    # neither mode quantizes: Gather is not in the quantized operators).
    fp32_size = (trained["root"] / "fp32" / "model.onnx").stat().st_size
    for artifact in int8_artifacts.values():
        assert (artifact / "model.onnx").stat().st_size < 0.95 * fp32_size
        assert not list(artifact.glob("*.fp32.onnx"))


def test_corrupt_calibration_split_is_one_line_error_before_work(trained, tmp_path):
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "labeled.json").write_text('[{"id": "1", "title": "t"', encoding="utf-8")
    out = tmp_path / "out"
    args = ["export", str(trained["model"]), "--format", "onnx", "--out", str(out), "--quantize", "int8"]
    args += ["--quantize-mode", "static", "--data-root", str(data), "--calibration-split", "labeled"]
    # Through the CLI's entry point in this process (a real process printing one line on a user error is
    # test_cli.py's): what is printed, and that nothing was written.
    _, stderr = run_main(*args, expect=2)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "labeled.json" in lines[0], stderr
    assert lines[0].startswith("mmcls export: error:") and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no artifact, no temporary folder


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantize_mode": "static", "data_root": None}, "needs --data-root"),
        ({"quantize_mode": "static", "calibration_split": "nosuch"}, "'nosuch' not found"),
        ({"calibration_size": 8}, "only for --quantize-mode static"),
        ({"fp16": True}, "choose one precision"),
        ({"fmt": "aoti"}, "no int8 export for this backend"),
        ({"fmt": "triton"}, "not with --format triton"),
        ({"quantize": None, "quantize_mode": "static"}, "only with --quantize int8"),
    ],
)
def test_bad_quantize_settings_are_refused_before_work(trained, tmp_path, settings, message):
    settings = {"fmt": "onnx", "quantize": "int8", "data_root": trained["data"], **settings}
    with pytest.raises(ArtifactError, match=message):
        export_model(trained["model"], tmp_path / "out", **settings)
    assert list(tmp_path.iterdir()) == []


def test_logit_adjust_baked_into_the_artifact_equals_predict(trained, tmp_path):
    from mmcls.inference.predict import predict_split

    tau = 1.0
    artifact = export_model(trained["model"], tmp_path / "adjusted", "onnx", logit_adjust=tau)
    info = json.loads((artifact / "export.json").read_text())
    assert info["logit_adjust"]["tau"] == tau and info["precision"] == "fp32"
    ids, served, served_probs = predict(artifact, trained["data"])
    kwargs = {"device": "cpu", "num_workers": 0, "progress": False}
    ref_ids, ref_preds, adjusted = predict_split(
        trained["model"], trained["data"], logit_adjust=tau, **kwargs
    )
    _, _, plain = predict_split(trained["model"], trained["data"], **kwargs)
    assert ids == ref_ids
    assert served == adjusted
    assert served != plain  # the adjustment changes some labels of this model: the test can fail
    ref_probs = ref_preds.probs[np.argsort(ref_preds.indices)]
    assert np.abs(served_probs - ref_probs).max() <= 1e-4


def test_logit_adjust_needs_the_class_counts(tmp_path):
    from mmcls.inference.predict import LogitAdjustError

    from deploy_fixtures import tiny_model_dir

    model = tiny_model_dir(tmp_path / "model")  # saved without train_counts
    with pytest.raises(LogitAdjustError, match="no train_counts"):
        export_model(model, tmp_path / "out", "onnx", logit_adjust=0.5)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_infer_compare_prints_one_table(trained, onnx_fp32, int8_artifacts):
    # Through the CLI's entry point: bench itself measures each model in a fresh process of its own.
    common = ["--data-root", str(trained["data"]), "--batch-size", "8", "--workers", "0", "--repeats", "1"]
    common += ["--batches", "1", "--limit", "24", "--warmup", "0"]
    models = [str(trained["model"] / "best"), str(onnx_fp32), str(int8_artifacts["dynamic"])]
    stdout, _ = run_main("bench", "infer", "--compare", *models, *common, "--json")
    rows = json.loads(stdout)["compare"]
    assert [(r["backend"], r["precision"]) for r in rows] == [
        ("torch", "fp32"),
        ("onnx", "fp32"),
        ("onnx", "int8 dynamic"),
    ]
    for row in rows:
        for key in ("model_videos_per_s", "e2e_videos_per_s", "peak_memory_gib"):
            assert row[key] > 0, (row["model"], key)
    assert rows[0]["agreement"] == 1.0 and rows[1]["agreement"] == 1.0
    assert rows[2]["agreement"] >= 0.9
    # The table: one model is enough to check its layout (the JSON above holds every row's figures).
    table, _ = run_main("bench", "infer", "--compare", models[1], *common)
    header, *lines = table.splitlines()
    assert "model videos/s" in header and "agreement" in header and len(lines) == 2
    assert lines[0].split()[:3] == [models[1], "onnx", "fp32"] and lines[1].startswith("device cpu")
    # One artifact without --compare runs on its own backend; a backend that cannot run it is one line.
    single, _ = run_main("bench", "infer", models[2], *common, "--json")
    assert json.loads(single)["model_videos_per_s"] > 0
    _, err = run_main("bench", "infer", models[2], *common, "--backend", "torch", expect=2)
    assert "an exported onnx artifact, which --backend torch cannot run" in err and len(err.splitlines()) == 1


def test_the_served_model_answers_an_int8_artifact_with_predicts_labels(trained, int8_artifacts, tmp_path):
    """The server's execution (request decoding, batching, the Predictor over the static int8 artifact), run
    in-process on the requests `mmcls client` sends for the split: `mmcls predict`'s labels, and a refused
    request in the same batch gets its own error while the others are answered. (The Triton transport itself
    is tested once, in test_deploy_server.py.)"""
    from mmcls.cli import main as cli_main
    from mmcls.data.annotations import annotation_path, load_records
    from mmcls.deploy.client import frame_reader, read_frame_bytes
    from mmcls.deploy.request_decoder import RequestError
    from mmcls.deploy.triton_model import BatchClassifier

    artifact, data = int8_artifacts["static"], trained["data"]
    predicted = tmp_path / "predict.csv"
    assert cli_main(["predict", str(artifact), "--data-root", str(data), "--out", str(predicted)]) == 0
    expected = dict(line.split(",") for line in predicted.read_text().split())

    classifier = BatchClassifier(Predictor.from_path(artifact, threads=1), decode_threads=2)
    reader = frame_reader(data / "zip_frames" / "test", classifier.decoder.max_frames)
    records = load_records(annotation_path(data, "test"))
    requests = []
    for record in records:
        frames = read_frame_bytes(reader, record.id)[0]
        frames += [b""] * (classifier.decoder.max_frames - len(frames))  # padded as the client pads
        ocr = json.dumps([{"time": t, "text": s} for t, s in record.ocr], ensure_ascii=False)
        texts = {"title": record.title, "asr": record.asr, "ocr": ocr}
        request = {name: np.array([[text.encode()]], dtype=object) for name, text in texts.items()}
        requests.append({**request, "frames": np.array([frames], dtype=object)})
    bad = {**requests[0], "title": np.array([[b"\xff"]], dtype=object)}
    answers = []
    for start in range(0, len(requests), 16):
        answers += classifier(requests[start : start + 16] + [bad])
        assert isinstance(answers.pop(), RequestError)
    classifier.close()
    served = {r.id: answer["category_id"][0, 0].decode() for r, answer in zip(records, answers)}
    assert served == expected
