"""Model variants (issue #18): frame aggregators, dual-stream fusion, layer selection for students.

Tiny models on precomputed features (identity frame encoder) keep these fast; the ONNX parity test is slow.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertModel

from mmcls.config import Config, ConfigError, FrameEncoderConfig, ModelConfig, TrainConfig
from mmcls.data.categories import official_categories
from mmcls.data.text import load_tokenizer
from mmcls.engine.adversarial import target_parameters
from mmcls.engine.optim import param_groups
from mmcls.models import (
    DualStreamClassifier,
    InitFromError,
    MultimodalClassifier,
    build_model,
    create_classifier,
    load_init_weights,
    load_model_dir,
    save_model_dir,
)
from mmcls.models.aggregators import NeXtVLAD, RecurrentAggregator

from commands import tiny_config

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
FEATURES = 16
AGGREGATORS = ["none", "lstm", "gru", "nextvlad"]
FUSIONS = ["single_stream", "dual_stream"]
SMALL_VLAD = {"clusters": 4, "groups": 2, "expansion": 2}


def tiny_cfg(fusion: str = "single_stream", aggregator: str = "none", **changes) -> ModelConfig:
    cfg = ModelConfig(
        text_encoder=None,
        bert_config=dict(TINY_BERT),
        frame_encoder=FrameEncoderConfig(type="identity"),
        max_frames=8,
        num_classes=5,
        fusion=fusion,
        frame_aggregator=aggregator,
    )
    cfg.nextvlad.clusters, cfg.nextvlad.groups = SMALL_VLAD["clusters"], SMALL_VLAD["groups"]
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(fusion: str = "single_stream", aggregator: str = "none", seed: int = 0, **changes):
    torch.manual_seed(seed)
    return create_classifier(tiny_cfg(fusion, aggregator, **changes), feature_dim=FEATURES).eval()


def batch(seed: int = 0, frames: int = 5):
    """Three samples: padded text, frames padded in the middle and at the end, and no frames at all."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 1000, (3, 6), generator=g)
    attention_mask = torch.ones(3, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0
    feats = torch.randn(3, frames, FEATURES, generator=g)
    frame_mask = torch.zeros(3, frames, dtype=torch.bool)
    frame_mask[0, [0, 2, 3]] = True
    frame_mask[1, : frames - 1] = True
    return input_ids, attention_mask, feats, frame_mask


# ------------------------------------------------------------------------------------------- shapes, masks
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_variant_shapes_and_padded_frames_never_leak(fusion, aggregator):
    model = tiny_model(fusion, aggregator)
    input_ids, attention_mask, feats, frame_mask = batch()
    with torch.no_grad():
        out = model(input_ids, attention_mask, feats, frame_mask, return_hidden=True)
        garbage = torch.where(frame_mask[..., None], feats, 1e3 * torch.randn_like(feats))
        again = model(input_ids, attention_mask, garbage, frame_mask)
        # Trailing padding removed altogether: the same real frames at the same positions.
        trimmed = model(input_ids, attention_mask, feats[:, :4], frame_mask[:, :4])
    extra = 1 if aggregator == "nextvlad" else 0
    assert out["logits"].shape == out["video_logits"].shape == (3, 5)
    assert out["hidden_states"].shape == (3, 6 + 5 + extra, 32)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["video_logits"]).all()
    assert torch.equal(out["logits"], again["logits"])
    assert torch.equal(out["video_logits"], again["video_logits"])
    torch.testing.assert_close(trimmed["logits"], out["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_aggregator_is_a_packed_bidirectional_run_per_sample(kind):
    """Real frames anywhere in the mask give what a plain RNN over just those frames (and reversed) gives."""
    torch.manual_seed(0)
    agg = RecurrentAggregator(kind, 8, dropout=0.0).eval()
    tokens = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = agg(tokens, mask)
        for i in range(2):
            real = tokens[i][mask[i]].unsqueeze(0)
            forward = agg.forward_rnn(real)[0]
            backward = agg.backward_rnn(real.flip(1))[0].flip(1)
            expected = agg.norm(real + torch.cat([forward, backward], dim=-1))[0]
            torch.testing.assert_close(out[i][mask[i]], expected, atol=1e-6, rtol=1e-5)


def test_nextvlad_ignores_padding_and_checks_its_groups():
    torch.manual_seed(0)
    vlad = NeXtVLAD(8, clusters=3, groups=2, expansion=2, dropout=0.0).eval()
    tokens, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = vlad(tokens, mask)
        alone = vlad(tokens[:1, :2], mask[:1, :2])
    assert out.shape == (2, 8) and torch.isfinite(out).all()  # no frames: a finite vector
    torch.testing.assert_close(out[:1], alone, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="model.nextvlad.groups=3"):
        NeXtVLAD(8, clusters=3, groups=3, expansion=1)


# ------------------------------------------------------------------------------------------- names, ids
def test_default_model_parameter_names_are_unchanged():
    """The default (single stream, no aggregator) has exactly the names model folders were saved with."""
    model = tiny_model()
    assert type(model) is MultimodalClassifier
    bert = BertModel(
        BertConfig(**TINY_BERT, vocab_size=model.text_encoder.config.vocab_size), add_pooling_layer=False
    )
    expected = {f"text_encoder.{k}" for k in bert.state_dict()} | {
        "frame_proj.weight", "frame_proj.bias", "frame_position.weight", "frame_norm.weight", "frame_norm.bias",
        "classifier.1.weight", "classifier.1.bias", "video_classifier.1.weight", "video_classifier.1.bias",
    }  # fmt: skip
    assert set(model.state_dict()) == expected


@pytest.mark.parametrize("aggregator", ["lstm", "nextvlad"])
def test_new_modules_get_new_names_only(aggregator):
    base = set(tiny_model().state_dict())
    for fusion in FUSIONS:
        names = set(tiny_model(fusion, aggregator).state_dict())
        assert base <= names
        new = {n.split(".")[0] for n in names - base}
        assert new == (
            {"frame_aggregator"} | ({"frame_layers", "cross_layers"} if fusion == "dual_stream" else set())
        )


def test_dual_stream_layer_ids_groups_units_and_targets():
    model = tiny_model("dual_stream", "lstm")
    assert isinstance(model, DualStreamClassifier)
    n, c = 2, model.cfg.dual.cross_layers
    assert model.num_layers == n + c
    assert model.layer_id_for("text_encoder.embeddings.word_embeddings.weight") == 0
    assert model.layer_id_for("text_encoder.encoder.layer.1.output.dense.weight") == 2
    assert model.layer_id_for("frame_layers.0.self_attn.in_proj_weight") == 1
    assert model.layer_id_for("cross_layers.0.text.ffn.0.weight") == n + 1
    assert model.layer_id_for("cross_layers.1.frames.cross_attn.in_proj_weight") == n + 2
    for head in ("classifier.1.weight", "frame_proj.weight", "frame_aggregator.forward_rnn.weight_ih_l0"):
        assert model.layer_id_for(head) == n + c + 1
    # Layer decay: the cross layers are the top of the ladder, BERT's layers below them.
    groups = {g["name"]: g for g in param_groups(model, TrainConfig(lr=1.0, head_lr=10.0, layer_decay=0.5))}
    assert groups["text_encoder/layer_04/decay"]["lr"] == 0.5  # top cross layer: lr * decay^(N+C+1-4)
    assert groups["text_encoder/layer_02/decay"]["lr"] == 0.5**3  # BERT's top layer, under the cross layers
    assert groups["head/decay"]["lr"] == 10.0  # projection, aggregator and heads: train.head_lr
    units = model.fsdp_units()
    assert len(units) == n + model.cfg.dual.frame_layers + c
    assert all(any(p is q for q in model.parameters()) for u in units for p in u.parameters())
    assert [p.shape for p in target_parameters(model, ["word_embeddings", "frame_proj"])] == [
        model.text_encoder.embeddings.word_embeddings.weight.shape,
        (32, FEATURES),
    ]


def test_single_stream_aggregator_is_a_head_side_layer():
    model = tiny_model("single_stream", "gru")
    assert model.layer_id_for("frame_aggregator.norm.weight") == model.num_layers + 1
    assert model.param_group_of("frame_aggregator.norm.weight") == "head"


# ------------------------------------------------------------------------------------------- init_from
def save_weights(model: nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_dual_stream_loads_every_single_stream_tensor(tmp_path):
    single = tiny_model(seed=1)
    dual = tiny_model("dual_stream", seed=2)
    report = load_init_weights(dual, save_weights(single, tmp_path / "single.safetensors"))
    assert set(report.loaded) == set(single.state_dict())
    assert {k.split(".")[0] for k in report.missing} == {"frame_layers", "cross_layers"}
    assert report.unexpected == []
    own = dual.state_dict()
    assert all(torch.equal(own[k], v) for k, v in single.state_dict().items())


def test_dual_stream_loads_a_pretraining_run(tmp_path, bert_tokenizer):
    from mmcls.pretrain.config import PretrainConfig
    from mmcls.pretrain.model import build_pretraining_model

    cfg = PretrainConfig.from_yaml("pretrain-tiny")
    pretrained = build_pretraining_model(cfg, cfg.pretrain, vocab_size=len(bert_tokenizer))
    tiny = Config.from_yaml("tiny", ["model.fusion=dual_stream"])
    dual = build_model(tiny, vocab_size=len(bert_tokenizer))
    report = load_init_weights(dual, save_weights(pretrained, tmp_path / "pre.safetensors"))
    assert {k.split(".")[0] for k in report.missing} == {
        "frame_layers", "cross_layers", "classifier", "video_classifier"
    }  # fmt: skip
    assert all(k.startswith(("mlm_", "mfm_", "vtm_", "itc_")) for k in report.unexpected)
    bert = [k for k in pretrained.state_dict() if k.startswith("text_encoder.")]
    assert bert and set(bert) <= set(report.loaded)


def test_init_layers_maps_teacher_layers_to_student_layers(tmp_path):
    teacher = tiny_model(bert_config={**TINY_BERT, "num_hidden_layers": 4}, seed=3)
    source = save_weights(teacher, tmp_path / "teacher.safetensors")
    student = tiny_model(seed=4, init_layers=[1, 3], init_from=source)
    report = load_init_weights(student, source)
    own, ref = student.state_dict(), teacher.state_dict()
    for k, i in enumerate([1, 3]):
        key = "attention.self.query.weight"
        assert torch.equal(
            own[f"text_encoder.encoder.layer.{k}.{key}"], ref[f"text_encoder.encoder.layer.{i}.{key}"]
        )
    assert report.missing == []
    assert {int(k.split(".")[3]) for k in report.unexpected} == {0, 2}  # the teacher layers left out
    assert report.layer_maps == {"text": [1, 3]}
    assert "text layers from the source's [1, 3]" in report.describe()
    with pytest.raises(InitFromError, match=r"model.init_layers: 3 layers \[0, 1, 2\] for a model with 2"):
        load_init_weights(student, source, layers=[0, 1, 2])
    with pytest.raises(InitFromError, match=r"has no text layer\(s\) \[7\]"):
        load_init_weights(student, source, layers=[0, 7])


def test_init_frame_layers_fill_a_student_with_fewer_vit_blocks(tmp_path):
    """A CPU student with fewer ViT blocks (``frame_encoder.kwargs.vision_cfg.layers``, as benchmarks/int8_cpu.sh
    builds it) starts from the teacher's chosen blocks."""
    from mmcls.models import build_model
    from mmcls.models.frame_encoder import open_clip_module

    teacher_cfg = Config.from_yaml("tiny", [])
    torch.manual_seed(0)
    teacher = build_model(teacher_cfg, vocab_size=100)
    source = save_weights(teacher, tmp_path / "teacher.safetensors")
    vision = dict(open_clip_module().get_model_config("mmcls-tiny-vit")["vision_cfg"])
    assert vision["layers"] == 2
    vision["layers"] = 1
    kwargs = json.dumps({"vision_cfg": vision})
    student_cfg = Config.from_yaml(
        "tiny",
        [f"model.frame_encoder.kwargs={kwargs}", f"model.init_from={source}", "model.init_frame_layers=[1]"],
    )
    student = build_model(student_cfg, vocab_size=100)
    report = load_init_weights(student, source)  # what training does with model.init_from
    assert report.layer_maps == {"frame": [1]}
    blocks = "frame_encoder.backbone.transformer.resblocks"
    own, ref = student.state_dict(), teacher.state_dict()
    assert not any(k.startswith(f"{blocks}.1.") for k in own)
    for key in [k for k in own if k.startswith(f"{blocks}.0.")]:
        assert torch.equal(own[key], ref[key.replace(f"{blocks}.0.", f"{blocks}.1.")]), key


def test_init_layers_selects_layers_of_a_pretrained_text_encoder(tmp_path):
    torch.manual_seed(5)
    teacher = BertModel(
        BertConfig(**{**TINY_BERT, "num_hidden_layers": 3}, vocab_size=100), add_pooling_layer=False
    )
    teacher.save_pretrained(tmp_path / "bert")
    cfg = tiny_cfg(text_encoder=str(tmp_path / "bert"), bert_config={}, init_layers=[0, 2])
    student = create_classifier(cfg, feature_dim=FEATURES)
    assert student.text_encoder.config.num_hidden_layers == 2
    key = "encoder.layer.{}.output.dense.weight"
    assert torch.equal(student.text_encoder.state_dict()[key.format(1)], teacher.state_dict()[key.format(2)])
    with pytest.raises(ConfigError, match="must name distinct layers"):
        create_classifier(tiny_cfg(text_encoder=str(tmp_path / "bert"), bert_config={}, init_layers=[0, 5]))


def test_variant_settings_are_validated():
    with pytest.raises(ConfigError, match="model.fusion"):
        Config.from_yaml("tiny", ["model.fusion=triple_stream"])
    with pytest.raises(ConfigError, match="model.dual.cross_layers"):
        Config.from_yaml("tiny", ["model.fusion=dual_stream", "model.dual.cross_layers=0"])
    with pytest.raises(ConfigError, match="model.init_layers"):
        Config.from_yaml("tiny", ["model.init_layers=[0, 1]"])  # tiny has neither init_from nor text_encoder
    assert Config.from_yaml("base-dual").model.fusion == "dual_stream"


# ------------------------------------------------------------------------------------------- model folder
@pytest.mark.parametrize(("fusion", "aggregator"), [("dual_stream", "lstm"), ("single_stream", "nextvlad")])
def test_variant_model_folder_round_trip(tmp_path, fusion, aggregator):
    config = Config.from_yaml(
        "tiny",
        [f"model.fusion={fusion}", f"model.frame_aggregator={aggregator}", "model.nextvlad.clusters=4"],
    )
    tokenizer = load_tokenizer(config.data.text.tokenizer)
    torch.manual_seed(0)
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    save_model_dir(tmp_path / "m", model, config, tokenizer, official_categories())
    loaded = load_model_dir(tmp_path / "m")
    assert type(loaded.model) is type(model)
    inputs = (
        torch.randint(1, 1000, (2, 5)),
        torch.ones(2, 5),
        torch.randn(2, 3, 3, 32, 32),
        torch.ones(2, 3),
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(*inputs)["logits"], model(*inputs)["logits"])


# ------------------------------------------------------------------------------------------- export
# One export per aggregator and per fusion (each export takes seconds; the fast tests above run every
# combination in-process): GRU here, NeXtVLAD on the dual stream, the LSTM in the FP16 test below.
ONNX_VARIANTS = [("single_stream", "gru"), ("dual_stream", "nextvlad")]


def feature_model_dir(path, fusion: str, aggregator: str):
    """A model folder of a fresh tiny variant on precomputed features (16 wide), on the small test vocabulary
    (what is exported is the variant's frame side, not the 21,128-token embedding)."""
    config = tiny_config(
        "data.frames.source=zip_feats",
        f"data.frames.feature_dim={FEATURES}",
        "model.frame_encoder.type=identity",
        f"model.fusion={fusion}",
        f"model.frame_aggregator={aggregator}",
        "model.nextvlad.clusters=4",
    )
    tokenizer = load_tokenizer(config.data.text.tokenizer)
    torch.manual_seed(0)
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    save_model_dir(path, model, config, tokenizer, official_categories())
    return path


def feature_inputs(batch: int, text: int, frames: int) -> dict[str, torch.Tensor]:
    """Frames padded at random (the first always real), the last sample without frames (if batch > 1)."""
    g = torch.Generator().manual_seed(batch * 100 + text * 10 + frames)
    mask = torch.rand(batch, frames, generator=g) > 0.3
    mask[:, 0] = True
    if batch > 1:
        mask[-1] = False
    return {
        "input_ids": torch.randint(100, 2200, (batch, text), generator=g),  # within the small vocabulary
        "attention_mask": torch.ones(batch, text, dtype=torch.long),
        "frames": torch.randn(batch, frames, FEATURES, generator=g),
        "frame_mask": mask,
    }


def max_diff_to_torch(model_dir, artifact, shapes) -> float:
    from mmcls.deploy.export import InferenceGraph
    from mmcls.deploy.predictor import Predictor

    predictor = Predictor.from_path(artifact, device="cpu")
    loaded = load_model_dir(model_dir)
    graph = InferenceGraph(loaded.model, loaded.categories).eval()
    worst = 0.0
    for shape in shapes:
        inputs = feature_inputs(*shape)
        probs, _ = predictor(inputs)
        with torch.no_grad():
            ref, _ = graph(*inputs.values())
        worst = max(worst, float(abs(probs - ref.numpy()).max()))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize(("fusion", "aggregator"), ONNX_VARIANTS)
def test_onnx_export_matches_torch_for_each_variant(tmp_path, fusion, aggregator):
    """Dynamic batch, text and frames (with padding in the middle and a text-only sample) after export."""
    pytest.importorskip("onnxscript")
    from mmcls.deploy.export import export_model

    model_dir = feature_model_dir(tmp_path / "m", fusion, aggregator)
    artifact = export_model(model_dir, tmp_path / "onnx", "onnx")
    assert max_diff_to_torch(model_dir, artifact, [(4, 11, 7), (1, 3, 1)]) <= 1e-4


@pytest.mark.slow
def test_fp16_onnx_export_keeps_the_frame_axis_dynamic(tmp_path):
    """`mmcls export --fp16` (through the CLI's entry point): the recurrent weights stay float32, so the frame
    count stays dynamic (a half-precision LSTM is traced one step per frame, which fixed it to the example's 2).
    """
    import json

    from commands import run_main

    pytest.importorskip("onnxscript")
    model_dir = feature_model_dir(tmp_path / "m", "single_stream", "lstm")
    out = tmp_path / "onnx16"
    run_main("export", str(model_dir), "--format", "onnx", "--fp16", "--out", str(out))
    info = json.loads((out / "export.json").read_text())
    assert info["precision"] == "fp16" and info["dynamic_dims"]["frames"] == {"min": 1, "max": 8}
    assert max_diff_to_torch(model_dir, out, [(3, 9, 6), (2, 4, 1)]) <= 1e-2


def test_pretraining_refuses_a_variant_it_would_ignore(bert_tokenizer):
    from mmcls.pretrain.config import PretrainConfig
    from mmcls.pretrain.model import build_pretraining_model

    for override in ("model.fusion=dual_stream", "model.frame_aggregator=lstm"):
        cfg = PretrainConfig.from_yaml("pretrain-tiny", [override])
        with pytest.raises(ConfigError, match="fine-tune the variant with model.init_from"):
            build_pretraining_model(cfg, cfg.pretrain, vocab_size=len(bert_tokenizer))
