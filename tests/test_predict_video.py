"""One video from the command line and over the wire: ``predict --video`` (video files and frame zips, no data
root), the served input ``video`` and output ``category_name``, ``client --video`` and ``--with-names``.

The tests run in-process on an untrained tiny model over the 12-class taxonomy with Chinese names. The same
model served by Triton (its ONNX export, the input ``video``, ``client --video`` and ``--with-names`` agreeing
with ``predict``) is checked in test_deploy_server.py, with the module's one server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmcls.cli import main as cli_main
from mmcls.data.categories import read_taxonomy

from deploy_fixtures import tiny_model_dir


@pytest.fixture(scope="module")
def model(two_level, tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("video") / "model", categories=two_level)


@pytest.fixture(scope="module")
def city(shared_data):
    return shared_data / "cityCC0.mpg"


def predict_json(capsys, *args: str) -> list[dict]:
    assert cli_main(["predict", *args, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_video_prints_the_top_classes_with_names(model, city, two_level, capsys):
    tax = read_taxonomy(two_level)
    assert cli_main(["predict", str(model), "--video", str(city), "--title", "街头", "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == str(city) and "category_id" in table
    [result] = predict_json(capsys, str(model), "--video", str(city), "--title", "街头", "--top-k", "12")
    assert result["video"] == str(city) and len(result["top"]) == 12
    probs = [row["prob"] for row in result["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    for row in result["top"]:
        assert row["name"] == tax.name(row["category_id"])
    for row in result["top"][:3]:  # the table shows the same three, with their Chinese names
        assert f"{row['category_id']}" in table and row["name"] in table and f"{row['prob']:.4f}" in table


def test_a_frame_zip_is_preprocessed_as_the_eval_loader_does(model, two_level, tmp_path, capsys):
    """``--video x.zip`` with a record's text gives the probabilities ``predict --split`` gives that record."""
    from mmcls.data.annotations import annotation_path, load_records
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.inference.predict import predict_split

    data = tmp_path / "data"
    tax = read_taxonomy(two_level)
    make_synthetic_dataset(data, 8, 0, 4, seed=1, num_frames=6, image_size=40, categories=tax)
    record = load_records(annotation_path(data, "test"))[2]
    _, preds, _ = predict_split(model, data, "test", device="cpu", num_workers=0, progress=False)
    ocr = json.dumps([{"time": t, "text": s} for t, s in record.ocr], ensure_ascii=False)
    zip_path = data / "zip_frames" / "test" / record.id[-3:] / f"{record.id}.zip"
    args = ["--title", record.title, "--asr", record.asr, "--ocr", ocr, "--top-k", "12"]
    [result] = predict_json(capsys, str(model), "--video", str(zip_path), *args)
    expected = preds.probs[list(preds.indices).index(2)]
    got = {row["category_id"]: row["prob"] for row in result["top"]}
    np.testing.assert_allclose([got[c] for c in tax.category_ids], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--video", "{tmp}/missing.mp4"], "--video {tmp}/missing.mp4: no such file"),
        (["--video", "{tmp}/notes.mp4"], "{tmp}/notes.mp4: bad_video: cannot decode"),
        (["--video", "{tmp}"], "--video {tmp}: "),
        (
            ["--video", "{tmp}/notes.mp4", "--out", "{tmp}/x.csv"],
            "--video and --out: give files with --video",
        ),
        (["--data-root", "{tmp}", "--json"], "--json: only with --video"),
        (["--data-root", "{tmp}"], "--out required (or --video PATH to classify files)"),
    ],
)
def test_bad_video_arguments_are_one_line(model, tmp_path, capsys, args, message):
    (tmp_path / "notes.mp4").write_text("not a video")
    args = [a.format(tmp=tmp_path) for a in args]
    assert cli_main(["predict", str(model), *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err


# ------------------------------------------------------------------------------------------------ the server
def video_inputs(video: bytes, frames: list[bytes] = ()) -> dict[str, np.ndarray]:
    return {
        "title": np.array([b"t"], dtype=object),
        "asr": np.array([b""], dtype=object),
        "ocr": np.array([b""], dtype=object),
        "frames": np.array(list(frames) or [b""], dtype=object),
        "video": np.array([video], dtype=object),
    }


def test_request_video_is_the_file_source_clip_and_limits_are_400s(model, city, jpeg_bytes):
    from mmcls.data.frames import VideoFileSource
    from mmcls.deploy.artifact import load_assets
    from mmcls.deploy.request_decoder import RequestDecoder, RequestError, VideoLimits
    from mmcls.deploy.triton_repo import TritonModelOptions, model_config_text

    assets = load_assets(model)
    decoder = RequestDecoder(assets)
    sample = decoder.decode(video_inputs(city.read_bytes()))
    clip = VideoFileSource(assets.config.data.frames, city.parent).read_record(_record(str(city)), rng=None)
    assert sample["frame_mask"].all() and sample["frame_errors"] == []
    assert sample["frames"].equal(clip.frames)
    broken = decoder.decode(video_inputs(b"\x00\x01 not a video"))
    assert broken["frame_errors"] == ["video: undecodable video"] and not broken["frame_mask"].any()
    refused = {
        "input 'video': 4573184 bytes, at most 1000": (VideoLimits(max_bytes=1000), []),
        "input 'video': 7.6 s long, at most 5 s": (VideoLimits(max_seconds=5), []),
        "inputs 'frames' and 'video'": (VideoLimits(), [jpeg_bytes(9)]),
    }
    for message, (limits, frames) in refused.items():
        with pytest.raises(RequestError, match=message):
            RequestDecoder(assets, limits).decode(video_inputs(city.read_bytes(), frames))
    with pytest.raises(RequestError, match="max_video_seconds=0"):
        VideoLimits(max_seconds=0)
    config = model_config_text(assets, model, TritonModelOptions(max_video_bytes=123))
    assert '{ name: "video" data_type: TYPE_STRING dims: [ 1 ] optional: true }' in config
    assert '{ name: "category_name" data_type: TYPE_STRING dims: [ 1 ] }' in config
    assert 'key: "max_video_bytes" value { string_value: "123" }' in config


def _record(video: str):
    from mmcls.data.annotations import Record

    return Record(id="0", title="", asr="", ocr=[], video=video)
