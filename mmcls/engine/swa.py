"""Stochastic weight averaging: the equal-weight mean of the weights at the end of chosen epochs.

Averaging the end-of-epoch weights of the last epochs lands nearer the middle of the flat region the
optimizer wanders in, which the challenge write-ups credit with a small, reliable gain. The model has no
BatchNorm (LayerNorm only), so the average needs no statistics re-estimated afterwards.

``torch.optim.swa_utils.AveragedModel`` keeps the running mean ``avg += (w - avg) / (n + 1)`` and the count
``n_averaged`` as a buffer, so its ``state_dict`` is all a checkpoint needs for an exact resume.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel


class WeightAverage(AveragedModel):
    """Running equal-weight average of a model's parameters (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, use_buffers=False)

    @property
    def count(self) -> int:
        """How many snapshots the average holds (0: nothing averaged yet)."""
        return int(self.n_averaged.item())

    def update(self, model: nn.Module) -> None:
        self.update_parameters(model)
