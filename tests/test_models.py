"""Models: frame encoders, the fusion classifier (masking, pooling, overfitting), the model folder, errors."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, BertTokenizerFast

from mmcls.config import Config, FrameEncoderConfig, ModelConfig
from mmcls.data.categories import official_categories
from mmcls.models import (
    MultimodalClassifier,
    PretrainedWeightsError,
    build_frame_encoder,
    build_model,
    load_model_dir,
    lv1_probs,
    save_model_dir,
)
from mmcls.models.frame_encoder import open_clip_module

VOCAB = Path(__file__).resolve().parents[1] / "mmcls" / "assets" / "bert_chinese_vocab.txt"
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
IMAGE = 32
ENCODERS = {
    "open_clip": FrameEncoderConfig(type="open_clip", name="mmcls-tiny-vit", pretrained=None),
    "timm": FrameEncoderConfig(type="timm", name="test_vit", pretrained=None, kwargs={"img_size": IMAGE}),
    "identity": FrameEncoderConfig(type="identity"),  # data.frames.feature_dim's default width, 768
}


def tiny_cfg(encoder: str = "open_clip", **changes) -> ModelConfig:
    cfg = ModelConfig(
        text_encoder=None,
        bert_config=dict(TINY_BERT),
        frame_encoder=replace(ENCODERS[encoder], kwargs=dict(ENCODERS[encoder].kwargs)),
        max_frames=8,
    )
    return replace(cfg, **changes)


def random_frames(encoder: str, batch: int, num_frames: int, generator: torch.Generator) -> torch.Tensor:
    if encoder == "identity":
        return torch.randn(batch, num_frames, 768, generator=generator)
    return torch.randn(batch, num_frames, 3, IMAGE, IMAGE, generator=generator)


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    tok = BertTokenizerFast(vocab=str(VOCAB))
    assert tok("我")["input_ids"] == [101, 2769, 102]  # the vocabulary really was loaded
    return tok


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty hub cache. huggingface_hub reads HF_HUB_OFFLINE once at import, so the
    module constant is set as well as the variable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


# --------------------------------------------------------------------------------------------- frame encoders
@pytest.mark.parametrize(("encoder", "dim"), [("open_clip", 64), ("timm", 64), ("identity", 768)])
def test_frame_encoder_shapes(encoder, dim):
    frame_encoder = build_frame_encoder(ENCODERS[encoder], IMAGE)
    assert frame_encoder.output_dim == dim
    frames = random_frames(encoder, 2, 3, torch.Generator().manual_seed(0))
    assert frame_encoder(frames).shape == (2, 3, dim)


def test_uint8_frames_are_normalised_on_the_model_side():
    """uint8 pixels give what the same pixels normalised on the host with (x/255 - mean)/std give."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    encoder = build_frame_encoder(ENCODERS["open_clip"], IMAGE, pixel_mean=mean, pixel_std=std).eval()
    pixels = torch.randint(0, 256, (2, 3, 3, IMAGE, IMAGE), dtype=torch.uint8)
    normalised = (pixels.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(encoder(pixels), encoder(normalised), atol=1e-5, rtol=1e-5)
    assert "pixel_scale" not in encoder.state_dict()  # preprocessing, not weights: model folders unchanged


def test_frame_encoder_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        build_frame_encoder(ENCODERS["open_clip"], IMAGE)(torch.zeros(2, 3, 768))
    with pytest.raises(ValueError, match="768"):
        build_frame_encoder(ENCODERS["identity"], IMAGE)(torch.zeros(2, 3, 512))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_frame_encoder(replace(ENCODERS["open_clip"], name="no-such-model"), IMAGE)


def test_frozen_frame_encoder_stays_frozen():
    model = MultimodalClassifier(tiny_cfg(frame_encoder=replace(ENCODERS["open_clip"], freeze=True)), IMAGE)
    model.train()
    assert not model.frame_encoder.backbone.training
    assert not any(p.requires_grad for p in model.frame_encoder.parameters())
    g = torch.Generator().manual_seed(0)
    out = model(
        torch.randint(1, 1000, (2, 5)),
        torch.ones(2, 5),
        random_frames("open_clip", 2, 2, g),
        torch.ones(2, 2),
    )
    out["logits"].sum().backward()
    assert all(p.grad is None for p in model.frame_encoder.parameters())
    assert model.frame_proj.weight.grad is not None


# --------------------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("encoder", ["open_clip", "timm", "identity"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "cls_mean"])
def test_forward_shapes(encoder, pooling):
    model = MultimodalClassifier(tiny_cfg(encoder, pooling=pooling), IMAGE).eval()
    g = torch.Generator().manual_seed(0)
    frames = random_frames(encoder, 2, 4, g)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = model(
        torch.randint(1, 1000, (2, 6), generator=g), torch.ones(2, 6), frames, mask, return_hidden=True
    )
    assert out["logits"].shape == (2, 200)
    assert out["video_logits"].shape == (2, 200)
    assert out["pooled"].shape == (2, 128 if pooling == "cls_mean" else 64)
    assert out["hidden_states"].shape == (2, 10, 64)
    assert out["joint_mask"].shape == (2, 10)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "cls_mean"])
def test_padding_does_not_change_logits(attn, pooling):
    torch.manual_seed(0)
    cfg = tiny_cfg(pooling=pooling, bert_config={**TINY_BERT, "attn_implementation": attn})
    model = MultimodalClassifier(cfg, IMAGE, vocab_size=1000).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (1, 7), generator=g)
    frames = random_frames("open_clip", 1, 3, g)
    alone = model(ids, torch.ones(1, 7), frames, torch.ones(1, 3, dtype=torch.bool))

    # Same sample in a batch with a longer one: text padded to 12 tokens, frames padded to 5 with garbage.
    padded_ids = torch.zeros(2, 12, dtype=torch.long)
    padded_ids[0, :7] = ids[0]
    padded_ids[1] = torch.randint(1, 1000, (12,), generator=g)
    text_mask = torch.zeros(2, 12)
    text_mask[0, :7] = 1
    text_mask[1] = 1
    padded_frames = random_frames("open_clip", 2, 5, g) * 5
    padded_frames[0, :3] = frames[0]
    frame_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    batched = model(padded_ids, text_mask, padded_frames, frame_mask)
    for key in ("logits", "video_logits"):
        torch.testing.assert_close(batched[key][:1], alone[key], atol=1e-5, rtol=1e-5)

    # ... while a change to a real frame does change the logits (the comparison above can fail).
    padded_frames[0, 1] += 1.0
    changed = model(padded_ids, text_mask, padded_frames, frame_mask)
    assert not torch.allclose(changed["logits"][:1], alone["logits"], atol=1e-4)


def test_empty_frame_mask_is_text_only():
    model = MultimodalClassifier(tiny_cfg(), IMAGE, vocab_size=1000).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (2, 6), generator=g)
    mask = torch.tensor([[False, False, False], [True, True, False]])
    first = model(ids, torch.ones(2, 6), random_frames("open_clip", 2, 3, g), mask)
    second = model(ids, torch.ones(2, 6), random_frames("open_clip", 2, 3, g), mask)
    for key in ("logits", "video_logits"):
        assert torch.isfinite(first[key]).all()
    torch.testing.assert_close(first["logits"][0], second["logits"][0])  # frames of sample 0 are ignored
    assert not torch.allclose(first["logits"][1], second["logits"][1])

    model.train()  # gradients flow and stay finite for the text-only sample too
    out = model(ids, torch.ones(2, 6), random_frames("open_clip", 2, 3, g), mask)
    (out["logits"].sum() + out["video_logits"].sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("encoder", ["open_clip", "identity"])
def test_batch_without_frame_slots_equals_all_frames_masked(encoder):
    """``data.frames.source=none`` collates frames as ``[B, 0]``: a text-only batch, not a shape error."""
    model = MultimodalClassifier(tiny_cfg(encoder), IMAGE, vocab_size=1000).eval()
    g = torch.Generator().manual_seed(0)
    ids, text_mask = torch.randint(1, 1000, (2, 6), generator=g), torch.ones(2, 6)
    no_slots = model(ids, text_mask, torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool))
    masked = model(ids, text_mask, random_frames(encoder, 2, 3, g), torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(no_slots["logits"], masked["logits"], atol=1e-5, rtol=1e-5)
    assert no_slots["video_logits"].shape == (2, 200)


@pytest.mark.parametrize("encoder", ["open_clip", "timm", "identity"])
def test_every_parameter_gets_a_gradient(encoder):
    """No unused parameters: DistributedDataParallel would otherwise need find_unused_parameters."""
    model = MultimodalClassifier(tiny_cfg(encoder), IMAGE, vocab_size=1000).train()
    g = torch.Generator().manual_seed(0)
    out = model(
        torch.randint(1, 1000, (2, 5), generator=g),
        torch.ones(2, 5),
        random_frames(encoder, 2, 2, g),
        torch.ones(2, 2, dtype=torch.bool),
    )
    (out["logits"].sum() + out["video_logits"].sum()).backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_grad_checkpointing_gives_the_same_gradients():
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model = MultimodalClassifier(
        tiny_cfg(bert_config=no_dropout, dropout=0.0), IMAGE, vocab_size=1000
    ).train()
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randint(1, 1000, (2, 5), generator=g),
        torch.ones(2, 5),
        random_frames("open_clip", 2, 2, g),
        torch.ones(2, 2, dtype=torch.bool),
    )

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        out = model(*args)
        (out["logits"].square().sum() + out["video_logits"].square().sum()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_too_many_frames_is_a_clear_error():
    model = MultimodalClassifier(tiny_cfg("identity", max_frames=4), IMAGE)
    with pytest.raises(ValueError, match="max_frames"):
        model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), torch.zeros(1, 5, 768), torch.ones(1, 5))


def test_tiny_model_overfits_32_samples():
    torch.manual_seed(0)
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    features = FrameEncoderConfig(type="identity")
    cfg = tiny_cfg(bert_config=no_dropout, dropout=0.0, num_classes=10, frame_encoder=features)
    model = MultimodalClassifier(cfg, IMAGE, vocab_size=500, feature_dim=32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 500, (32, 8), generator=g)
    frames = torch.randn(32, 4, 32, generator=g)
    frame_mask = torch.ones(32, 4, dtype=torch.bool)
    labels = torch.randint(0, 10, (32,), generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(120):
        out = model(ids, torch.ones(32, 8), frames, frame_mask)
        loss = torch.nn.functional.cross_entropy(out["logits"], labels)
        loss = loss + torch.nn.functional.cross_entropy(out["video_logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(ids, torch.ones(32, 8), frames, frame_mask)
    assert (out["logits"].argmax(-1) == labels).float().mean() > 0.95
    assert (out["video_logits"].argmax(-1) == labels).float().mean() > 0.95  # the frame path learns too


def test_param_groups_and_layer_ids():
    model = MultimodalClassifier(tiny_cfg(), IMAGE, vocab_size=1000)
    groups = {model.param_group_of(name) for name, _ in model.named_parameters()}
    assert groups == {"frame_encoder", "text_encoder", "head"}
    assert model.param_group_of("frame_proj.weight") == "head"
    assert model.param_group_of("classifier.1.weight") == "head"
    assert model.layer_id_for("text_encoder.embeddings.word_embeddings.weight") == 0
    assert model.layer_id_for("text_encoder.encoder.layer.0.attention.self.query.weight") == 1
    assert model.layer_id_for("text_encoder.encoder.layer.1.output.dense.bias") == 2
    assert model.layer_id_for("video_classifier.1.weight") == 3
    assert model.layer_id_for("frame_position.weight") == 3
    assert model.text_encoder.pooler is None  # no unused parameters (DDP would complain)


def test_parameter_names_survive_the_encoder_heads_split():
    """Model folders, ``model.init_from``, layer decay, EMA and checkpoints address parameters by name: the
    names below are the ones the model had before it was split into encoder and heads."""
    model = MultimodalClassifier(tiny_cfg("identity", pooling="cls_mean"), IMAGE, vocab_size=1000)
    names = list(model.state_dict())
    bert = BertModel(model.text_encoder.config, add_pooling_layer=False)
    assert names[: len(bert.state_dict())] == [f"text_encoder.{k}" for k in bert.state_dict()]
    assert names[len(bert.state_dict()) :] == [
        "frame_proj.weight", "frame_proj.bias", "frame_position.weight", "frame_norm.weight", "frame_norm.bias",
        "classifier.1.weight", "classifier.1.bias", "video_classifier.1.weight", "video_classifier.1.bias",
    ]  # fmt: skip
    # The encoder alone (what pretraining builds): the same names without the heads'.
    encoder = MultimodalClassifier(model.cfg, IMAGE, vocab_size=1000, heads=False)
    assert list(encoder.state_dict()) == [
        n for n in names if not n.startswith(("classifier.", "video_classifier."))
    ]


def test_forward_is_the_heads_over_the_features_and_heads_can_be_replaced():
    model = MultimodalClassifier(tiny_cfg("identity"), IMAGE, vocab_size=1000).eval()
    g = torch.Generator().manual_seed(0)
    ids, frames = torch.randint(1, 1000, (2, 6), generator=g), random_frames("identity", 2, 3, g)
    inputs = (ids, torch.ones(2, 6), frames, torch.tensor([[True, True, False], [True, True, True]]))
    with torch.no_grad():
        out = model(*inputs)
        features = model.forward_features(*inputs)
        assert features["pooled"].shape == (2, model.classifier[1].in_features)
        assert features["video"].shape == (2, model.video_classifier[1].in_features)
        for key, value in model.forward_head(features).items():
            torch.testing.assert_close(value, out[key], rtol=0, atol=0)
        model.reset_classifier(7)
        assert model.forward_head(features)["logits"].shape == (2, 7) and model.cfg.num_classes == 7
        model.reset_classifier(0)
        assert not any(n.startswith(("classifier.", "video_classifier.")) for n in model.state_dict())
        with pytest.raises(RuntimeError, match="without heads"):
            model.forward_head(features)


def test_lv1_probs():
    categories = official_categories()
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(0))
    probs = lv1_probs(logits, categories)
    assert probs.shape == (4, categories.num_lv1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    lv2 = logits.softmax(-1)
    lv1_of = torch.tensor(categories.lv1_of_lv2)
    manual = torch.stack([lv2[:, lv1_of == j].sum(-1) for j in range(categories.num_lv1)], dim=1)
    torch.testing.assert_close(probs, manual)


def test_build_model_checks_data_and_model_agree():
    config = Config()
    config.model = tiny_cfg("identity", max_frames=4)
    config.data.frames.source = "zip_feats"
    config.data.frames.max_frames = 8
    with pytest.raises(ValueError, match="max_frames"):
        build_model(config)
    config.data.frames.max_frames = 4
    config.data.frames.feature_dim = 512  # the one feature width: the identity encoder takes it
    assert build_model(config).frame_encoder.output_dim == 512
    # An older config that also states model.frame_encoder.input_dim: accepted when equal, refused otherwise.
    values = config.to_dict()
    values["model"]["frame_encoder"]["input_dim"] = 512
    assert Config.from_dict(values).to_dict() == config.to_dict()
    values["model"]["frame_encoder"]["input_dim"] = 768
    with pytest.raises(ValueError, match="feature_dim"):
        Config.from_dict(values)


# --------------------------------------------------------------------------------------------- model folder
def _pretrained_sources(tmp_path: Path) -> tuple[str, str]:
    """A local BERT directory and a local open_clip checkpoint file, standing in for downloaded weights."""
    bert_dir = tmp_path / "sources" / "bert"
    BertModel(BertConfig(vocab_size=21128, **TINY_BERT)).save_pretrained(bert_dir)
    clip_file = tmp_path / "sources" / "tiny_clip.pt"
    # open_clip_module(): open_clip with the package's architectures registered (open_clip is imported lazily)
    torch.save(open_clip_module().create_model("mmcls-tiny-vit").state_dict(), clip_file)
    return str(bert_dir), str(clip_file)


def test_model_dir_round_trip_needs_no_sources(tmp_path, tokenizer, offline_hub):
    bert_dir, clip_file = _pretrained_sources(tmp_path)
    config = Config()
    config.data.frames.image_size = IMAGE
    config.model = tiny_cfg(text_encoder=bert_dir, bert_config={"hidden_dropout_prob": 0.0})
    config.model.frame_encoder.pretrained = clip_file
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    assert model.text_encoder.config.hidden_dropout_prob == 0.0  # bert_config overrides a pretrained config
    # The source weights really were loaded.
    reference = BertModel.from_pretrained(bert_dir)
    torch.testing.assert_close(
        model.text_encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )

    run_dir = tmp_path / "run"
    save_model_dir(run_dir / "best", model, config, tokenizer, official_categories())
    save_model_dir(run_dir / "best", model, config, tokenizer, official_categories())  # overwrite works
    for source in Path(bert_dir).iterdir():
        source.unlink()
    Path(clip_file).unlink()

    saved = yaml.safe_load((run_dir / "best" / "config.yaml").read_text())
    assert saved["model"]["text_encoder"] is None
    assert saved["model"]["frame_encoder"]["pretrained"] is None
    assert saved["model"]["bert_config"]["hidden_size"] == 64
    assert saved["model"]["bert_config"]["vocab_size"] == 21128
    assert saved["data"]["frames"]["image_size"] == IMAGE
    info = json.loads((run_dir / "best" / "model_info.json").read_text())
    assert info["source"]["text_encoder"] == bert_dir

    loaded = load_model_dir(run_dir)  # a run directory means its best/ folder
    assert loaded.path == run_dir / "best"
    assert not loaded.model.training
    assert loaded.tokenizer("我")["input_ids"] == [101, 2769, 102]
    assert loaded.categories.category_ids == official_categories().category_ids
    assert loaded.categories.labeled_counts == official_categories().labeled_counts

    g = torch.Generator().manual_seed(0)
    args = (
        torch.randint(1, 21128, (2, 9), generator=g),
        torch.ones(2, 9),
        random_frames("open_clip", 2, 3, g),
        torch.tensor([[True, True, False], [True, True, True]]),
    )
    with torch.no_grad():
        before, after = model(*args), loaded.model(*args)
    for key in ("logits", "video_logits"):
        assert torch.allclose(before[key], after[key], atol=1e-6)
    assert not list(tmp_path.glob("run/.*"))  # no temporary folders left behind


def test_model_dir_keeps_quick_gelu(tmp_path, tokenizer):
    """Architecture kwargs chosen for pretrained weights (QuickGELU for OpenAI CLIP) survive the round trip."""
    config = Config()
    config.data.frames.image_size = IMAGE
    config.model = tiny_cfg()
    config.model.frame_encoder.kwargs = {"force_quick_gelu": True}
    model = build_model(config).eval()
    save_model_dir(tmp_path / "m", model, config, tokenizer, official_categories())
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.config.model.frame_encoder.kwargs == {"force_quick_gelu": True}
    frames = random_frames("open_clip", 1, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.frame_encoder(frames), loaded.model.frame_encoder(frames), atol=1e-6)


def test_model_dir_errors_name_the_path(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no config.yaml"):
        load_model_dir(tmp_path / "empty")
    config = Config()
    config.data.frames.image_size = IMAGE
    config.model = tiny_cfg("identity")
    save_model_dir(tmp_path / "m", build_model(config), config, tokenizer, official_categories())
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"m: incomplete model folder.*model.safetensors"):
        load_model_dir(tmp_path / "m")


# --------------------------------------------------------------------------------------------- pretrained errors
@pytest.mark.parametrize("name", ["mmcls-test/no-such-bert", "/no/such/local/bert-dir"])
def test_missing_bert_weights(offline_hub, name):
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="hf download") as info:
        MultimodalClassifier(tiny_cfg(text_encoder=name), IMAGE)
    assert name in str(info.value)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("name", "tag", "match"),
    [
        ("ViT-B-32", "openai", "vit_base_patch32_clip_224.openai"),  # a real tag, not cached
        ("mmcls-tiny-vit", "openai", "not a known tag .* not an existing checkpoint"),
        ("mmcls-tiny-vit", "/no/such/checkpoint.pt", "not a known tag .* not an existing checkpoint"),
    ],
)
def test_missing_open_clip_weights(offline_hub, name, tag, match):
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match=match) as info:
        build_frame_encoder(FrameEncoderConfig(type="open_clip", name=name, pretrained=tag), 224)
    assert name in str(info.value) and tag in str(info.value)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("tag", ["true", "/no/such/weights.safetensors"])
def test_missing_timm_weights(offline_hub, tag):
    cfg = FrameEncoderConfig(type="timm", name="test_vit", pretrained=tag, kwargs={"img_size": IMAGE})
    match = "timm/test_vit.r160_in1k" if tag == "true" else "does not exist"
    with pytest.raises(PretrainedWeightsError, match=match) as info:
        build_frame_encoder(cfg, IMAGE)
    assert "test_vit" in str(info.value)


# --------------------------------------------------------------------------------------------- init_from
def _saved_teacher(tmp_path, tokenizer) -> tuple[Path, MultimodalClassifier]:
    config = Config()
    config.model = tiny_cfg()
    config.data.frames.image_size = IMAGE
    teacher = build_model(config, vocab_size=len(tokenizer))
    save_model_dir(tmp_path / "run" / "best", teacher, config, tokenizer, official_categories())
    return tmp_path / "run", teacher


def test_init_from_keeps_the_lowest_layers_of_a_deeper_model(tmp_path, tokenizer):
    from mmcls.models import InitFromError, load_init_weights

    run_dir, teacher = _saved_teacher(tmp_path, tokenizer)
    student_cfg = tiny_cfg(bert_config={**TINY_BERT, "num_hidden_layers": 1})
    student = MultimodalClassifier(student_cfg, IMAGE, vocab_size=len(tokenizer))
    report = load_init_weights(student, run_dir)  # a run directory means its best/ model
    teacher_sd, student_sd = teacher.state_dict(), student.state_dict()
    assert report.missing == []
    assert report.unexpected and all(k.startswith("text_encoder.encoder.layer.1.") for k in report.unexpected)
    assert set(report.loaded) == set(student_sd)
    for key in student_sd:
        assert torch.equal(student_sd[key], teacher_sd[key]), key

    wider = MultimodalClassifier(tiny_cfg(bert_config={**TINY_BERT, "intermediate_size": 96}), IMAGE, 21128)
    with pytest.raises(InitFromError, match="differ in shape"):
        load_init_weights(wider, run_dir)
    with pytest.raises(InitFromError, match="does not exist"):
        load_init_weights(student, tmp_path / "nowhere")
