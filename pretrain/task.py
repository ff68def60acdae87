"""Pretraining as a training task: the objectives' weighted sum on the shared loop (``mmcls.engine.trainer``).

:class:`PretrainingTask` draws the per-step random choices (which frame slots MFM masks, which samples VTM
pairs with another sample's frames) and turns the model's outputs into losses. :class:`PretrainingSetup`
tells the trainer what to train on (records of ``pretrain.splits``, a seeded held-out set), how to score the
held-out set (the weighted pretraining loss, lower is better, selects ``best/``) and how to write a model
folder that ``mmcls train --set model.init_from=...`` loads.

Randomness: the text masks come with the samples (per-sample generators, see ``mmcls.pretrain.data``); the
frame masks and VTM swaps come from torch's global CPU generator while training (a checkpoint restores it,
so a resumed run draws the same ones) and from a fixed generator for the held-out loss (the same masks at
every evaluation, so epochs compare).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import cast

import torch
import yaml
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcls.engine.distributed import all_gather_objects
from mmcls.engine.inference import autocast
from mmcls.engine.prefetch import to_device
from mmcls.engine.setup import Selection, TaskData, TaskSetup
from mmcls.engine.task import TrainingTask
from mmcls.models.fusion import MultimodalClassifier, check_model_config
from mmcls.models.model_dir import CONFIG_FILE, WEIGHTS_FILE, portable_config, unwrap_model
from mmcls.names import MODEL_INPUTS
from mmcls.pretrain.config import PretrainConfig, PretrainSection
from mmcls.pretrain.data import build_pretrain_datasets
from mmcls.pretrain.model import PretrainingModel, build_pretraining_model
from mmcls.pretrain.objectives import itc_loss, mlm_loss, nce_loss, vtm_loss

INFO_FILE = "pretrain_info.json"


class PretrainingTask(TrainingTask):
    device_keys = (*MODEL_INPUTS, "mlm_labels")

    def __init__(self, model: MultimodalClassifier, cfg: PretrainConfig, device: torch.device) -> None:
        super().__init__(model, cfg.train, device)
        self.objectives: PretrainSection = cfg.pretrain

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.losses(self.train_model, batch, generator=None, gather=True)

    def losses(
        self, model: nn.Module, batch: dict, generator: torch.Generator | None, gather: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the enabled objectives, and each one's loss and accuracy (detached) for the log."""
        weights = self.objectives.weights()
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        frame_mask = batch["frame_mask"].bool()
        batch_size = len(frame_mask)
        vtm_source = matched = None
        if weights["vtm"] > 0:
            vtm_source, matched = swap_frames(batch_size, self.objectives.vtm_swap_probability, generator)
            vtm_source, matched = vtm_source.to(self.device), matched.to(self.device)
        shown_mask = frame_mask if vtm_source is None else frame_mask[vtm_source]
        mfm_mask = None
        if weights["mfm"] > 0:
            mfm_mask = mask_frames(shown_mask.cpu(), self.objectives.mfm_probability, generator).to(
                self.device
            )
        out = model(
            **inputs,
            mlm_labels=batch["mlm_labels"] if weights["mlm"] > 0 else None,
            mfm_mask=mfm_mask,
            vtm_source=vtm_source,
        )
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if weights["mlm"] > 0:
            results["mlm"] = mlm_loss(out["mlm_logits"], out["mlm_targets"])
        if weights["mfm"] > 0:
            results["mfm"] = nce_loss(
                out["mfm_pred"], out["mfm_keys"], out["mfm_targets"], self.objectives.mfm_temperature
            )
        if weights["vtm"] > 0:
            valid = shown_mask.any(dim=1) & frame_mask.any(dim=1)
            assert matched is not None  # drawn above whenever vtm is on
            results["vtm"] = vtm_loss(out["vtm_logit"], matched, valid)
        if weights["itc"] > 0:
            results["itc"] = itc_loss(out["itc_text"], out["itc_video"], out["itc_scale"], gather=gather)
        # validate_pretrain keeps at least one objective on, so the sum is a tensor (never sum()'s start, 0).
        loss = cast(torch.Tensor, sum(weights[name] * value for name, (value, _) in results.items()))
        parts = {}
        for name, (value, accuracy) in results.items():
            parts[f"{name}_loss"] = value.detach()
            parts[f"{name}_acc"] = accuracy.detach()
        if "itc_scale" in out:
            parts["itc_temperature"] = 1.0 / out["itc_scale"].detach()
        return loss, parts


def swap_frames(
    batch_size: int, probability: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(source, matched)`` for VTM: sample ``i`` shows the frames of ``source[i]``; about ``probability`` of
    the samples get those of another sample of the batch (a random non-zero shift), ``matched`` is 0 there."""
    rows = torch.arange(batch_size)
    if batch_size < 2:
        return rows, torch.ones(batch_size)
    swap = torch.rand(batch_size, generator=generator) < probability
    shift = torch.randint(1, batch_size, (batch_size,), generator=generator)
    source = torch.where(swap, (rows + shift) % batch_size, rows)
    return source, (~swap).float()


def mask_frames(
    frame_mask: torch.Tensor, probability: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``[B, T]`` bool: each real frame masked with ``probability``; at least one if the batch has any frame
    (so the MFM head always takes part in the step)."""
    chosen = (torch.rand(frame_mask.shape, generator=generator) < probability) & frame_mask
    if not chosen.any() and frame_mask.any():
        first = frame_mask.flatten().nonzero()[0]
        chosen.view(-1)[first] = True
    return chosen


class PretrainingSetup(TaskSetup):
    """Pretraining run: records of ``pretrain.splits``; ``best/`` has the lowest held-out pretraining loss."""

    selection = Selection("loss", higher_is_better=False)

    def __init__(self, cfg: PretrainConfig, data_root: str | Path) -> None:
        super().__init__(cfg, data_root)
        self.cfg: PretrainConfig = cfg

    def check_config(self) -> None:
        check_model_config(self.cfg)  # data/model agreement, before any file is written

    def datasets(self) -> TaskData:
        train_set, val_set = build_pretrain_datasets(self.cfg, self.data_root, self.tokenizer)
        return TaskData(train_set, val_set)

    def build_model(self) -> PretrainingModel:
        return build_pretraining_model(self.cfg, self.cfg.pretrain, vocab_size=len(self.tokenizer))

    def build_task(self, model: MultimodalClassifier, device: torch.device) -> TrainingTask:
        return PretrainingTask(model, self.cfg, device)

    @torch.no_grad()
    def evaluate(
        self, task: TrainingTask, loader: DataLoader, device: torch.device, progress: bool
    ) -> tuple[dict[str, float], Counter]:
        """Held-out losses and accuracies (sample-weighted means over all ranks); masks and swaps from a fixed
        generator. ITC is scored within each evaluation batch (not gathered across ranks)."""
        assert isinstance(task, PretrainingTask)
        model = task.eval_model
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        sums: dict[str, float] = defaultdict(float)
        errors: Counter = Counter()
        for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            # Moved first: frames decoded on the device (data.frames.decoder=cuda) add their errors here.
            batch = to_device(batch, device, task.device_keys)
            errors.update(batch["frame_errors"])
            n = len(batch["index"])
            if n == 0:
                continue
            with autocast(device, self.cfg.train.precision):
                loss, parts = task.losses(model, batch, generator, False)
            sums["loss"] += float(loss) * n
            for key, value in parts.items():
                sums[key] += float(value) * n
            sums["num_samples"] += n
        model.train(was_training)
        # Every rank's sums (the sampler pads the last shard with a few repeats; they count like the others).
        totals: dict[str, float] = defaultdict(float)
        all_errors: Counter = Counter()
        for part_sums, part_errors in all_gather_objects((dict(sums), dict(errors))):
            for key, value in part_sums.items():
                totals[key] += value
            all_errors.update(part_errors)
        count = max(totals.pop("num_samples", 0.0), 1.0)
        scores = {key: value / count for key, value in totals.items()}
        scores["num_samples"] = int(count)
        return scores, all_errors

    def save_model(self, path: Path, model: nn.Module) -> None:
        save_pretrained_dir(path, model, self.cfg, self.tokenizer)


def save_pretrained_dir(path: Path, model: nn.Module, cfg: PretrainConfig, tokenizer) -> None:
    """A pretraining model folder: ``config.yaml``, ``model.safetensors`` (backbone under the classifier's
    names + pretraining heads), tokenizer files and ``pretrain_info.json``. It has no ``categories.json``:
    it is a starting point for ``model.init_from``, not a classifier for ``mmcls predict``."""
    model = unwrap_model(model)
    if not isinstance(model, PretrainingModel):
        raise TypeError(f"expected a PretrainingModel, got {type(model).__name__}")
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    saved = portable_config(model, cfg)
    header = (
        "# mmcls pretraining model folder: fine-tune with mmcls train CONFIG --set model.init_from=THIS_DIR\n"
    )
    body = yaml.safe_dump(saved.to_dict(), sort_keys=False, allow_unicode=True)
    (tmp / CONFIG_FILE).write_text(header + body, encoding="utf-8")
    save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "mmcls_pretrain": "1"})
    tokenizer.save_pretrained(str(tmp))
    info = {
        "format": "mmcls-pretrain",
        "objectives": list(model.objectives),
        "weights": cfg.pretrain.weights(),
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
