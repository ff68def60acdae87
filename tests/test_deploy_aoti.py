"""AOTInductor export: one compile (~25 s of CPU), parity with PyTorch at shapes other than the traced one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcls.deploy.export import InferenceGraph, export_model
from mmcls.deploy.predictor import Predictor
from mmcls.models import load_model_dir

from deploy_fixtures import random_inputs, tiny_model_dir


@pytest.mark.slow
def test_aoti_matches_torch_with_dynamic_batch_text_and_frames(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    artifact = export_model(model, tmp_path / "aoti", "aoti")
    info = json.loads((artifact / "export.json").read_text())
    assert (info["format"], info["model_file"], info["device"]) == ("aoti", "model.pt2", "cpu")
    predictor = Predictor.from_path(artifact, device="cpu")
    loaded = load_model_dir(model)
    graph = InferenceGraph(loaded.model, loaded.categories).eval()
    for shape in [(3, 11, 4), (1, 30, 8), (6, 5, 1)]:
        inputs = random_inputs(*shape)
        probs, lv1 = predictor(inputs)
        with torch.no_grad():
            ref_probs, ref_lv1 = graph(*inputs.values())
        assert probs.shape == (shape[0], 200)
        assert np.abs(probs - ref_probs.numpy()).max() <= 1e-4
        assert np.abs(lv1 - ref_lv1.numpy()).max() <= 1e-4
