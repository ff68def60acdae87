from pathlib import Path

import pytest

from mmcls.config import Config, ConfigError, apply_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["tiny", "base", "feats"])
def test_presets_load_by_name_and_path(preset):
    by_name = Config.from_yaml(preset)
    by_path = Config.from_yaml(REPO / "configs" / f"{preset}.yaml")
    assert by_name.to_dict() == by_path.to_dict()


def test_base_preset_is_the_reference_recipe():
    cfg = Config.from_yaml("base")
    assert cfg.model.frame_encoder.name == "ViT-B-16" and cfg.model.frame_encoder.pretrained == "openai"
    assert cfg.model.text_encoder == "hfl/chinese-macbert-base"
    assert cfg.data.frames.max_frames == 8 and cfg.data.text.max_length == 256


def test_overrides_parse_yaml_values_and_numbers():
    cfg = Config.from_yaml("tiny", ["train.lr=3e-4", "data.text.fields=[title]", "train.ema_decay=null"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.text.fields == ["title"]
    assert cfg.train.ema_decay is None


def test_apply_overrides_does_not_mutate_input():
    values = {"train": {"lr": 1.0}}
    assert apply_overrides(values, ["train.lr=2"])["train"]["lr"] == 2
    assert values["train"]["lr"] == 1.0


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.precision=fp8", "train.precision"),
        ("train.lr=abc", "train.lr"),
        ("data.frames.source=webcam", "data.frames.source"),
        ("nokey", "nokey"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        Config.from_yaml("tiny", [override])


def test_saved_config_round_trips(tmp_path):
    cfg = Config.from_yaml("tiny", ["train.seed=7"])
    cfg.save(tmp_path / "config.yaml")
    assert Config.from_yaml(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such config"):
        Config.from_yaml("does-not-exist.yaml")
