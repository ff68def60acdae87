"""Tiny model folders and data for the deployment tests (shared by test_deploy_*.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmcls.config import Config
from mmcls.data.categories import load_categories
from mmcls.data.text import load_tokenizer
from mmcls.models import build_model, save_model_dir

from commands import SMALL_VOCAB_SETTING


def tiny_model_dir(
    path: Path,
    *,
    features: bool = False,
    seed: int = 0,
    categories: Path | None = None,
    small_vocab: bool = False,
) -> Path:
    """A model folder of a freshly built (untrained) ``tiny`` model; ``features``: identity encoder on zip_feats;
    ``categories``: a taxonomy file (default: the packaged WBDC list); ``small_vocab``: on the small test
    vocabulary (``commands.SMALL_VOCAB``; token ids below 2,200)."""
    overrides = [f"data.categories={categories}"] if categories is not None else []
    if small_vocab:
        overrides.append(SMALL_VOCAB_SETTING)
    if features:
        overrides += [
            "data.frames.source=zip_feats",
            "data.frames.feature_dim=768",
            "model.frame_encoder.type=identity",
            "model.frame_encoder.input_dim=768",
        ]
    config = Config.from_yaml("tiny", overrides=overrides)
    tokenizer = load_tokenizer(config.data.text.tokenizer)
    torch.manual_seed(seed)
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    save_model_dir(path, model, config, tokenizer, load_categories(categories))
    return path


def make_data(root: Path, num_test: int = 60) -> Path:
    from mmcls.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(root, num_labeled=40, num_unlabeled=0, num_test=num_test, seed=3, image_size=32)
    return root


def random_inputs(
    batch: int, text: int, num_frames: int, *, features: bool = False, seed: int = 1, max_id: int = 8000
) -> dict[str, torch.Tensor]:
    """A batch with padded text (token ids from 1000 to ``max_id``) and some padded frames (one sample with no
    frames at all)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, max_id, (batch, text), generator=g)
    lengths = torch.randint(2, text + 1, (batch,), generator=g)
    lengths[0] = text
    attention_mask = (torch.arange(text)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    if features:
        frames = torch.randn(batch, num_frames, 768, generator=g)
    else:
        frames = torch.randint(0, 256, (batch, num_frames, 3, 32, 32), generator=g, dtype=torch.uint8)
    frame_mask = torch.rand(batch, num_frames, generator=g) > 0.3
    frame_mask[:, 0] = True
    frame_mask[-1] = False  # a text-only sample
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "frames": frames,
        "frame_mask": frame_mask,
    }
