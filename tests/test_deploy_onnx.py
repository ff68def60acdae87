"""ONNX export and the Predictor: parity with PyTorch at unseen shapes, FP16 agreement, CLI and errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mmcls.deploy.artifact import ArtifactError
from mmcls.deploy.export import InferenceGraph, export_model
from mmcls.deploy.predictor import Predictor
from mmcls.models import load_model_dir

from commands import run_main
from deploy_fixtures import make_data, random_inputs, tiny_model_dir


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_onnx")
    # The small vocabulary: the exports take half the time, and what is tested is the graph's inputs and outputs.
    model = tiny_model_dir(root / "model", small_vocab=True)
    return {"root": root, "model": model, "data": make_data(root / "data")}


@pytest.fixture(scope="module")
def onnx_fp32(workspace):
    return export_model(workspace["model"], workspace["root"] / "onnx", "onnx")


@pytest.fixture(scope="module")
def onnx_fp16(workspace):
    return export_model(workspace["model"], workspace["root"] / "onnx16", "onnx", fp16=True)


def torch_reference(model_dir, inputs):
    loaded = load_model_dir(model_dir)
    graph = InferenceGraph(loaded.model, loaded.categories).eval()
    with torch.no_grad():
        probs, lv1 = graph(*inputs.values())
    return probs.numpy(), lv1.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(5, 13, 3), (1, 40, 8), (3, 2, 1)])
def test_onnx_matches_torch_at_shapes_other_than_the_export_shape(workspace, onnx_fp32, shape):
    info = json.loads((onnx_fp32 / "export.json").read_text())
    assert info["inputs"]["frames"]["dtype"] == "uint8"
    assert info["dynamic_dims"]["frames"] == {"min": 1, "max": 8}
    predictor = Predictor.from_path(onnx_fp32, device="cpu")
    assert predictor.backend_name == "onnx"
    inputs = random_inputs(*shape, max_id=2200)
    probs, lv1 = predictor(inputs)
    ref_probs, ref_lv1 = torch_reference(workspace["model"], inputs)
    assert probs.shape == (shape[0], 200) and lv1.shape == (shape[0], 23)
    assert np.abs(probs - ref_probs).max() <= 1e-4
    assert np.abs(lv1 - ref_lv1).max() <= 1e-4
    np.testing.assert_allclose(lv1.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_feature_model_exports_with_float_frames(tmp_path):
    model = tiny_model_dir(tmp_path / "feats", features=True, small_vocab=True)
    artifact = export_model(model, tmp_path / "feats_onnx", "onnx")
    info = json.loads((artifact / "export.json").read_text())
    assert info["frame_input"] == "features"
    assert info["inputs"]["frames"] == {"dtype": "float32", "shape": ["batch", "frames", 768]}
    inputs = random_inputs(4, 9, 5, features=True, max_id=2200)
    probs, _ = Predictor.from_path(artifact, device="cpu")(inputs)
    ref_probs, _ = torch_reference(model, inputs)
    assert np.abs(probs - ref_probs).max() <= 1e-4


def read_labels(path):
    with open(path, newline="") as handle:
        return dict(csv.reader(handle))


@pytest.mark.slow
def test_predict_backends_agree_on_a_test_split(workspace, onnx_fp32, onnx_fp16):
    """`mmcls predict` end to end: torch vs ONNX FP32 (identical labels) vs ONNX FP16 (>= 99% agreement)."""
    root, data = workspace["root"], workspace["data"]
    outputs = {}
    for name, model, extra in [
        ("torch", workspace["model"], []),
        ("onnx", onnx_fp32, ["--backend", "onnx"]),
        ("onnx16", onnx_fp16, []),
    ]:
        out = root / f"{name}.csv"
        args = ["predict", str(model), "--data-root", str(data), "--out", str(out), "--num-workers", "0"]
        run_main(*args, *extra)  # in this process: no interpreter start per backend
        outputs[name] = read_labels(out)
    assert len(outputs["torch"]) == 60
    assert outputs["onnx"] == outputs["torch"]
    agree = np.mean([outputs["onnx16"][k] == v for k, v in outputs["torch"].items()])
    assert agree >= 0.99
    # And the probabilities themselves, through the Predictor over the same loader.
    _, p32, _ = Predictor.from_path(onnx_fp32, device="cpu").predict_split(
        data, num_workers=0, progress=False
    )
    _, p16, _ = Predictor.from_path(onnx_fp16, device="cpu").predict_split(
        data, num_workers=0, progress=False
    )
    _, pt, _ = Predictor.from_path(workspace["model"], device="cpu").predict_split(
        data, num_workers=0, progress=False
    )
    assert np.abs(p32.probs - pt.probs).max() <= 1e-4
    assert np.abs(p16.probs - pt.probs).max() <= 1e-2


def test_export_refuses_a_non_empty_out_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="already exists"):
        export_model(tmp_path / "no-model", tmp_path / "out", "onnx")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_backend_mismatch_is_a_one_line_error(tmp_path):
    model = tiny_model_dir(tmp_path / "model", small_vocab=True)
    _, stderr = run_main(
        "predict", str(model), "--data-root", str(tmp_path), "--out", "x.csv", "--backend", "onnx", expect=2
    )
    assert "holds a torch model, not onnx" in stderr
    assert "mmcls export" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_bench_infer_runs_an_exported_artifact(workspace, onnx_fp32):
    """`mmcls bench infer --backend onnx` times the artifact through the Predictor and prints the usual keys."""
    stdout, _ = run_main(
        "bench", "infer", str(onnx_fp32), "--data-root", str(workspace["data"]), "--backend", "onnx",
        "--json", "--batch-size", "8", "--workers", "0", "--repeats", "1", "--batches", "2",
    )  # fmt: skip
    report = json.loads(stdout)
    for key in ("model_videos_per_s", "loader_videos_per_s", "e2e_videos_per_s", "peak_memory_gib"):
        assert report[key] > 0, key
    with pytest.raises(ArtifactError, match="not an exported artifact"):
        from mmcls.deploy.predictor import bench_backend

        bench_backend(workspace["model"], torch.device("cpu"), "fp32")
