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
