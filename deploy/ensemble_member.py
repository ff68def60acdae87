"""An exported artifact (ONNX, AOTInductor, TensorRT folder) as a member of ``mmcls ensemble``/``pseudo-label``.

Registered in ``mmcls.workflows.members.MEMBER_TYPES`` by name, so the workflows import ``mmcls.deploy`` only
when a path is not one of the core's own kinds. Runs the split through the artifact's own backend
(:class:`~mmcls.deploy.predictor.Predictor`), with the preprocessing settings saved in the artifact.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from mmcls.deploy.artifact import is_artifact
from mmcls.workflows.members import FolderMember


class ExportedArtifact(FolderMember):
    """An artifact folder written by ``mmcls export``."""

    @staticmethod
    def accepts(path: Path) -> bool:
        return is_artifact(path)

    def predict(self, data_root, split: str, options, ids: Collection[str] | None = None):
        from mmcls.deploy.predictor import Predictor

        predictor = Predictor.from_path(self.path, device=options.device)
        split_ids, preds, _ = predictor.predict_split(
            data_root, split, batch_size=options.batch_size, num_workers=options.num_workers,
            progress=options.progress,
        )  # fmt: skip
        probs = preds.probs[np.argsort(preds.indices)]
        if ids is None:
            return split_ids, probs
        wanted = set(ids)
        rows = [i for i, video_id in enumerate(split_ids) if video_id in wanted]
        return [split_ids[i] for i in rows], probs[rows]
