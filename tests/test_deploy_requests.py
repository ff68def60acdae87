"""The server's request decoding (fast, no server): the same sample as the data path, and 400-worthy errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcls.data.annotations import Record
from mmcls.data.text import TextEncoder
from mmcls.deploy.artifact import load_assets
from mmcls.deploy.request_decoder import RequestDecoder, RequestError

from deploy_fixtures import tiny_model_dir


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return RequestDecoder(load_assets(tiny_model_dir(tmp_path_factory.mktemp("req") / "model")))


def inputs(title="标题", asr="", ocr="", frames=()):
    as_bytes = lambda v: v if isinstance(v, bytes) else v.encode()  # noqa: E731
    return {
        "title": np.array([as_bytes(title)], dtype=object),
        "asr": np.array([as_bytes(asr)], dtype=object),
        "ocr": np.array([as_bytes(ocr)], dtype=object),
        "frames": np.array(list(frames) or [b""], dtype=object),
    }


def test_text_matches_the_data_path(decoder):
    ocr = '[{"time": 2.0, "text": "第二"}, {"time": 1.0, "text": "第一"}]'
    sample = decoder.decode(inputs(title="一个标题", asr="语音", ocr=ocr))
    record = Record(id="x", title="一个标题", asr="语音", ocr=[(1.0, "第一"), (2.0, "第二")])
    expected = TextEncoder(decoder.text_encoder.tokenizer, decoder.text_encoder.cfg).encode(record)
    assert sample["input_ids"].tolist() == expected
    plain = decoder.decode(inputs(ocr="第一 第二"))
    assert decoder.text_encoder.tokenizer.decode(plain["input_ids"]).count("第") == 2


def test_frames_are_decoded_padded_and_bad_ones_named(decoder, jpeg_bytes):
    sample = decoder.decode(inputs(frames=[jpeg_bytes(10), b"junk", jpeg_bytes(200), b""]))
    assert sample["frames"].shape == (4, 3, 32, 32) and sample["frames"].dtype == torch.uint8
    assert sample["frame_mask"].tolist() == [True, True, False, False]
    assert sample["frame_errors"] == ["frames[1]: undecodable image"]
    assert int(sample["frames"][1].float().mean()) == pytest.approx(200, abs=3)


@pytest.mark.parametrize(
    ("request_inputs", "message"),
    [
        (inputs(title=b"\xc3\x28"), "input 'title': not valid UTF-8"),
        (inputs(title=""), "empty request"),
        (inputs(ocr='[{"time": 1}]'), "input 'ocr': not a JSON list"),
    ],
)
def test_refused_requests_name_the_input(decoder, request_inputs, message):
    with pytest.raises(RequestError, match=message):
        decoder.decode(request_inputs)


def test_too_many_frames(decoder, jpeg_bytes):
    with pytest.raises(RequestError, match="input 'frames': 5 frames, at most 4"):
        decoder.decode(inputs(frames=[jpeg_bytes(1)] * 5))


def test_triton_repository_layout(tmp_path):
    """`export --format triton` (torch backend): a self-contained repository whose config names the inputs."""
    from mmcls.deploy.export import export_model

    model = tiny_model_dir(tmp_path / "model")
    repo = export_model(model, tmp_path / "repo", "triton")
    config = (repo / "mmcls" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "dynamic_batching" in config
    for name in ("title", "asr", "ocr", "frames", "category_id", "lv1_id", "probs", "errors"):
        assert f'name: "{name}"' in config
    assert 'key: "mmcls_model" value { string_value: "model" }' in config
    assert "TritonPythonModel" in (repo / "mmcls" / "1" / "model.py").read_text()
    assert load_assets(repo / "mmcls" / "1" / "model").backend == "torch"


def test_tensorrt_profile_and_missing_tensorrt(tmp_path):
    from mmcls.config import Config
    from mmcls.deploy.export import dynamic_dims, export_model
    from mmcls.deploy.tensorrt import TensorRTUnavailable, profile_shapes

    config = Config.from_yaml("tiny")
    shapes = profile_shapes(dynamic_dims(config, 32), "pixels", config)
    assert shapes["frames"] == ((1, 1, 3, 32, 32), (16, 4, 3, 32, 32), (32, 8, 3, 32, 32))
    assert shapes["input_ids"] == ((1, 1), (16, 64), (32, 64))
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        model = tiny_model_dir(tmp_path / "model")
        with pytest.raises(TensorRTUnavailable, match="pip install tensorrt"):
            export_model(model, tmp_path / "plan", "tensorrt")
        assert not (tmp_path / "plan").exists()
        assert not list(tmp_path.glob(".plan.tmp-*"))


def test_graph_model_config_for_native_triton_backends(tmp_path):
    """With an ONNX file, the repository also describes the bare graph for Triton's onnxruntime backend."""
    import json
    import shutil

    from mmcls.deploy.triton_repo import TritonModelOptions, write_graph_model

    artifact = tmp_path / "artifact"
    tiny_model_dir(artifact)
    (artifact / "model.onnx").write_bytes(b"stand-in: only copied, never parsed here")
    info = {
        "format": "onnx",
        "model_file": "model.onnx",
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["batch", "text"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "text"]},
            "frames": {"dtype": "uint8", "shape": ["batch", "frames", 3, 32, 32]},
            "frame_mask": {"dtype": "bool", "shape": ["batch", "frames"]},
        },
        "outputs": {
            "probs": {"dtype": "float32", "shape": ["batch", 200]},
            "lv1_probs": {"dtype": "float32", "shape": ["batch", 23]},
        },
        "frame_input": "pixels",
    }
    (artifact / "export.json").write_text(json.dumps(info))
    (artifact / "model.safetensors").unlink()
    write_graph_model(tmp_path / "repo", artifact, "onnx", TritonModelOptions(max_batch=8))
    config = (tmp_path / "repo" / "mmcls_graph" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config
    assert '{ name: "frames" data_type: TYPE_UINT8 dims: [ -1, 3, 32, 32 ] }' in config
    assert '{ name: "frame_mask" data_type: TYPE_BOOL dims: [ -1 ] }' in config
    assert '{ name: "lv1_probs" data_type: TYPE_FP32 dims: [ 23 ] }' in config
    assert (tmp_path / "repo" / "mmcls_graph" / "1" / "model.onnx").is_file()
    shutil.rmtree(tmp_path / "repo")


def test_predictor_refuses_what_it_cannot_run(tmp_path):
    from mmcls.deploy.artifact import ArtifactError
    from mmcls.deploy.predictor import Predictor

    model = tiny_model_dir(tmp_path / "model")
    with pytest.raises(ArtifactError, match="fp16 with the torch backend needs CUDA"):
        Predictor.from_path(model, precision="fp16", device="cpu")
    with pytest.raises(ArtifactError, match="--backend 'tflite'"):
        Predictor.from_path(model, "tflite", device="cpu")
    with pytest.raises(ArtifactError, match="holds a torch model, not aoti"):
        Predictor.from_path(model, "aoti", device="cpu")
