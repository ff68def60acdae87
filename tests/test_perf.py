"""The performance tooling: device prefetching, ``mmcls extract-features`` and ``mmcls bench``.

Timings are never asserted here (they live in BENCHMARKS.md); these tests check that the fast paths compute the
same thing as the plain ones and that the commands report what they promise.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcls.cli import main
from mmcls.config import Config, ConfigError
from mmcls.data.builders import build_frame_source
from mmcls.data.categories import official_categories
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.data.text import load_tokenizer
from mmcls.engine.prefetch import DevicePrefetcher
from mmcls.engine.trainer import train
from mmcls.inference.features import OutputExistsError, extract_features
from mmcls.models import build_model, load_model_dir, save_model_dir

from commands import tiny_config

TINY_FAST = ["train.epochs=1", "train.batch_size=8", "train.progress_bar=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("perf") / "data"
    make_synthetic_dataset(root, 32, 0, 12, seed=4, num_frames=6, image_size=48)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random-init tiny model folder (32 px frames, max 8 frames)."""
    cfg = Config.from_yaml("tiny", ["data.frames.max_frames=8", "data.num_workers=0"])
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=len(tokenizer))
    folder = tmp_path_factory.mktemp("perf_model") / "model"
    save_model_dir(folder, model, cfg, tokenizer, official_categories())
    return folder


def test_prefetcher_moves_only_the_named_tensors():
    batches = [{"x": torch.ones(2), "y": torch.zeros(2), "ids": ["a", "b"]} for _ in range(3)]
    out = list(DevicePrefetcher(batches, torch.device("cpu"), ["x"]))
    assert len(out) == 3 and out[0]["ids"] == ["a", "b"]
    assert all(torch.equal(o["x"], b["x"]) and o["y"] is b["y"] for o, b in zip(out, batches))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_on_cuda_delivers_every_batch_in_order():
    batches = [{"x": torch.full((1000,), float(i)).pin_memory(), "i": i} for i in range(5)]
    out = list(DevicePrefetcher(batches, torch.device("cuda"), ["x"]))
    assert [o["i"] for o in out] == list(range(5))
    assert all(o["x"].is_cuda and float(o["x"].mean()) == o["i"] for o in out)


def test_extract_features_round_trips_through_feats_training(data_root, model_dir, tmp_path):
    out = data_root / "zip_feats" / "labeled.zip"
    official = out.read_bytes()  # make-data wrote its own feature zip: never replaced without --overwrite
    with pytest.raises(OutputExistsError, match="--overwrite"):
        extract_features(model_dir, data_root, "labeled", out, device="cpu", num_workers=0)
    assert out.read_bytes() == official

    summary = extract_features(
        model_dir, data_root, "labeled", out, device="cpu", num_workers=1, batch_size=5, overwrite=True
    )
    assert summary.videos == 32 and summary.without_frames == 0 and summary.feature_dim == 64
    assert not list(out.parent.glob(".*tmp*"))  # the temporary file was renamed into place

    # The members are the frame encoder's output for every frame of the video, as float16 [n, D].
    loaded = load_model_dir(model_dir)
    frames_cfg = loaded.config.data.frames
    frames_cfg.max_frames = 32
    source = build_frame_source(frames_cfg, data_root, "labeled")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        video_id = names[0][: -len(".npy")]
        stored = np.load(zf.open(names[0]))
    assert len(names) == 32 and stored.dtype == np.float16
    clip = source.read(video_id)
    with torch.no_grad():
        expected = loaded.model.frame_encoder(clip.frames[clip.mask][None])[0].numpy()
    assert stored.shape == expected.shape == (int(clip.mask.sum()), 64)
    np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2e-3, atol=2e-3)

    # Feature-mode training reads the zip back (identity frame encoder).
    cfg = Config.from_yaml(
        "tiny",
        [
            *TINY_FAST,
            "data.frames.source=zip_feats",
            "data.frames.feature_dim=64",
            "model.frame_encoder.type=identity",
            "model.frame_encoder.input_dim=64",
            "data.frames.on_error=raise",
            "data.num_workers=0",
        ],
    )
    result = train(cfg, data_root, tmp_path / "run")
    assert result.global_step > 0 and result.last_metrics["num_samples"] > 0
    errors = json.loads((tmp_path / "run" / "data_errors.json").read_text())
    assert errors["train"]["total"] == {} and errors["val"]["total"] == {}


def test_extract_features_refuses_a_feature_model(data_root, tmp_path):
    cfg = Config.from_yaml(
        "tiny",
        ["data.frames.source=zip_feats", "data.frames.feature_dim=64", "model.frame_encoder.type=identity"]
        + ["model.frame_encoder.input_dim=64"],
    )
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    folder = tmp_path / "feats_model"
    save_model_dir(folder, build_model(cfg, len(tokenizer)), cfg, tokenizer, official_categories())
    with pytest.raises(ConfigError, match="needs an image model"):
        extract_features(folder, data_root, "test", tmp_path / "f.zip", device="cpu")
    assert not (tmp_path / "f.zip").exists()


def _bench_json(capsys, *args: str) -> dict:
    fast = [
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--batches",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--json",
    ]
    assert main(["bench", *args, *fast]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_reports_the_issue_keys(data_root, model_dir, capsys):
    data = _bench_json(capsys, "data", "tiny", "--data-root", str(data_root), "--set", "data.num_workers=0")
    assert data["one_process_ms_per_video"] > 0 and data["loader_videos_per_s"] > 0
    assert data["plain_decode_ms_per_video"] > 0 and data["decoded_frames_per_s_per_core"] > 0

    infer = _bench_json(capsys, "infer", str(model_dir), "--data-root", str(data_root), "--backend", "torch")
    for key in ("model_videos_per_s", "loader_videos_per_s", "e2e_videos_per_s", "peak_memory_gib"):
        assert infer[key] > 0, key

    trained = _bench_json(capsys, "train", "tiny", "--data-root", str(data_root))
    for key in ("model_videos_per_s", "e2e_videos_per_s", "peak_memory_gib"):
        assert trained[key] > 0, key
    assert "mfu" not in trained  # only on CUDA, where a peak FLOP rate is known


def test_grad_checkpointing_recomputes_both_towers_with_the_same_gradients():
    cfg = Config.from_yaml("tiny")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = {
        "input_ids": torch.randint(1, 100, (2, 12)),
        "attention_mask": torch.ones(2, 12, dtype=torch.long),
        "frames": torch.randint(0, 255, (2, 4, 3, 32, 32), dtype=torch.uint8),
        "frame_mask": torch.ones(2, 4, dtype=torch.bool),
    }
    calls = {"bert": 0, "vit": 0}
    # Hooks on modules inside the checkpointed layers (the recomputation calls those again).
    watched = {
        "bert": model.text_encoder.encoder.layer[0].attention.self,
        "vit": model.frame_encoder.backbone.transformer.resblocks[0].mlp,
    }
    for name, module in watched.items():
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    def grads() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)  # the same dropout masks (the recomputation replays the forward's RNG state)
        model.zero_grad()
        model(**batch)["logits"].logsumexp(dim=-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert calls == {"bert": 1, "vit": 1}
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert calls == {"bert": 3, "vit": 3}  # forward + recomputation in the backward
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


@pytest.mark.slow
def test_train_compile_setting_trains_and_saves_plain_weight_names(synthetic_data, tmp_path):
    # Compiling is this test's time, so the compiled model is small: feature vectors into an identity frame
    # encoder (no ViT), one BERT layer, and one text length for every sample ([CLS] + 4 title tokens + [SEP];
    # synthetic titles have 6 or more), so that each graph compiles once and never again for dynamic shapes.
    data_root = synthetic_data(24, 0, 0, seed=4, num_frames=2, image_size=16, feature_dim=8)
    small_model = [
        "data.frames.source=zip_feats",
        "data.frames.feature_dim=8",
        "model.frame_encoder.type=identity",
        "model.frame_encoder.input_dim=8",
        "model.bert_config.num_hidden_layers=1",
        "data.text.fields=[title]",
        "data.text.max_length=6",
    ]
    cfg = tiny_config(*TINY_FAST, *small_model, "train.compile=true", "data.num_workers=0")
    result = train(cfg, data_root, tmp_path / "run")
    assert result.global_step > 0 and np.isfinite(result.last_metrics["loss"])
    loaded = load_model_dir(tmp_path / "run")  # strict load: no "_orig_mod." prefixes in the saved weights
    assert not any("_orig_mod" in name for name in loaded.model.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_give_the_fp32_predictions(dtype):
    # What cast_for_inference does on CUDA (fp16/bf16 weights, autocast kept on), run here on the CPU: the model
    # code must take uint8 frames and token ids into half-precision towers and agree with float32.
    from mmcls.engine.inference import cast_for_inference

    torch.manual_seed(0)
    model = build_model(Config.from_yaml("tiny")).eval()
    assert cast_for_inference(model, torch.device("cpu"), "fp16") is model
    assert next(model.parameters()).dtype == torch.float32  # the CPU keeps float32 weights
    batch = {
        "input_ids": torch.randint(1, 100, (6, 12)),
        "attention_mask": torch.ones(6, 12, dtype=torch.long),
        "frames": torch.randint(0, 255, (6, 4, 3, 32, 32), dtype=torch.uint8),
        "frame_mask": torch.ones(6, 4, dtype=torch.bool),
    }
    with torch.no_grad():
        reference = model(**batch)["logits"]
        half = model.to(dtype)
        with torch.autocast("cpu", dtype):
            logits = half(**batch)["logits"].float()
    assert next(half.parameters()).dtype == dtype
    # Logits spread ~0.26 around zero here: a half-precision error of 2% of that range leaves every argmax.
    assert (logits - reference).abs().max() < 0.02 * reference.abs().max()
    assert torch.equal(logits.argmax(1), reference.argmax(1))
