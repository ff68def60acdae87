"""Adversarial training on weight matrices (FGM, PGD): perturb, one more forward/backward, restore.

For every micro-batch the clean backward also records the gradient ``g`` of the target matrices (BERT's
word-embedding table by default; the frame projection optionally). A step moves the weights to
``W + delta`` with ``delta`` along ``g / ||g||`` inside the L2 ball ``||delta|| <= epsilon``:

* FGM: one step of length ``epsilon``; the gradient at ``W + delta`` is added to the clean one.
* PGD (K = ``steps``): ``delta <- project(delta + alpha * g_t / ||g_t||)`` K times, where ``g_t`` is the target's
  gradient at the current ``W + delta``; only the last of the K passes adds its gradients to the clean ones
  (the earlier ones are taken with ``torch.autograd.grad``, so they never touch ``.grad``).

The weights are restored from a copy, so they are bit for bit what they were. All passes but the very last
backward of an optimizer step run inside ``no_sync``: DDP still all-reduces the gradients once per step.
The direction needs the *global* micro-batch's gradient, so that a 2-process run perturbs exactly as one
process does: the captured target gradients are summed over the ranks (one all-reduce of the target matrix
per attack step, far smaller than the model's gradient all-reduce). The grad scaler's factor (fp16) and the
``1/grad_accum_steps`` factor cancel in ``g / ||g||``; a non-finite or zero gradient gives ``delta = 0``
(the scaler skips that step anyway), so every rank takes the same passes.

``train.adversarial.norm: relative`` (the default) measures ``epsilon`` and ``alpha`` in units of the
root-mean-square L2 norm of the perturbed rows: the rows whose clean gradient is non-zero (the embedding rows
of the batch's tokens; every row of the frame projection, one per output). A random-init tiny table (rows of
norm ~0.2) and a pretrained bert-base one (~1.0-1.5) then get perturbations of the same relative size; the
unit is taken once per micro-batch from the clean weights and the global gradient, so all ranks agree.
``absolute`` uses the numbers as plain L2 lengths.

A guard watches the attack: when the adversarial loss stays many times the clean loss for many micro-batches
in a row, the perturbation is swamping the signal (the model is being destroyed, not regularised); one
warning with the numbers says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from mmcls.config import AdversarialConfig, ConfigError

log = logging.getLogger("mmcls.train")

# The guard: adversarial loss above GUARD_RATIO x clean loss for GUARD_STEPS micro-batches in a row.
GUARD_RATIO = 5.0
GUARD_STEPS = 50


def target_parameters(model: nn.Module, targets: list[str]) -> list[nn.Parameter]:
    """The weight matrices named by ``train.adversarial.target`` in a :class:`MultimodalClassifier`."""
    found = {
        "word_embeddings": model.get_parameter("text_encoder.embeddings.word_embeddings.weight"),
        "frame_proj": model.get_parameter("frame_proj.weight"),
    }
    missing = [t for t in targets if t not in found]
    if missing:
        raise ConfigError(f"train.adversarial.target: unknown {missing}; known: {sorted(found)}")
    return [found[t] for t in targets]


def step_towards(delta: torch.Tensor, grad: torch.Tensor, step: float, epsilon: float) -> torch.Tensor:
    """``delta + step * grad / ||grad||``, projected back onto ``||delta|| <= epsilon`` (L2 over the matrix)."""
    norm = torch.linalg.vector_norm(grad.float())
    if not torch.isfinite(norm) or norm == 0:
        return delta
    moved = delta + (step / norm) * grad.float()
    moved_norm = torch.linalg.vector_norm(moved)
    if moved_norm > epsilon:
        moved = moved * (epsilon / moved_norm)
    return moved


def row_scale(weight: torch.Tensor, grad: torch.Tensor) -> float:
    """Root-mean-square L2 norm of the rows of ``weight`` whose ``grad`` row is non-zero (0.0 if none is)."""
    touched = grad.reshape(grad.shape[0], -1).abs().sum(dim=1) > 0
    if not bool(touched.any()):
        return 0.0
    rows = weight.detach().float().reshape(weight.shape[0], -1)[touched]
    return float(torch.sqrt(rows.pow(2).sum(dim=1).mean()))


class Adversary:
    """FGM/PGD around one micro-batch's clean forward/backward (see the module docstring)."""

    def __init__(self, cfg: AdversarialConfig, model: nn.Module) -> None:
        self.cfg = cfg
        self.params = target_parameters(model, list(cfg.target))
        self._over = 0  # micro-batches in a row with adversarial loss > GUARD_RATIO x clean loss
        self._warned = False

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[torch.Tensor | None]]:
        """Record the gradients of the targets produced by the backward passes inside (this micro-batch's).

        A tensor hook sees the gradient before it is added to ``.grad``, so gradient accumulation over
        micro-batches does not mix earlier micro-batches into the direction.
        """
        captured: list[torch.Tensor | None] = [None] * len(self.params)

        def hook_for(i: int) -> Callable[[torch.Tensor], None]:
            def hook(grad: torch.Tensor) -> None:
                earlier = captured[i]
                captured[i] = grad.detach().clone() if earlier is None else earlier + grad.detach()

            return hook

        handles = [p.register_hook(hook_for(i)) for i, p in enumerate(self.params)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _global(self, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The gradients summed over all ranks (zeros where a target took no part, e.g. no frames)."""
        full = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for grad in full:
                dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return full

    def attack(
        self,
        clean_grads: list[torch.Tensor | None],
        compute_loss: Callable[[], torch.Tensor],
        scale: Callable[[torch.Tensor], torch.Tensor],
        no_sync: Callable[[], contextlib.AbstractContextManager],
        sync: bool,
        clean_loss: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the adversarial passes; the last one's gradients are added to ``.grad``. Returns its loss.

        ``compute_loss`` is one forward of the same micro-batch (under autocast), ``scale`` turns a loss into
        what is backpropagated (grad scaler, accumulation factor), ``sync`` says whether the last backward
        is the one that all-reduces the step's gradients. ``clean_loss`` (this micro-batch's) feeds the guard.
        """
        fgm = self.cfg.method == "fgm"
        steps = 1 if fgm else self.cfg.steps
        step_size = self.cfg.epsilon if fgm else self.cfg.alpha
        originals = [p.detach().clone() for p in self.params]
        deltas = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        grads = self._global(clean_grads)
        units = self.units(originals, grads)
        try:
            for t in range(steps):
                with torch.no_grad():
                    for i, (param, original) in enumerate(zip(self.params, originals)):
                        deltas[i] = step_towards(
                            deltas[i], grads[i], step_size * units[i], self.cfg.epsilon * units[i]
                        )
                        param.copy_(original + deltas[i].to(original.dtype))
                if t < steps - 1:  # PGD's inner steps: only the targets' gradients, .grad untouched
                    with no_sync():
                        local = torch.autograd.grad(
                            scale(compute_loss()), self.params, allow_unused=True, materialize_grads=True
                        )
                    grads = self._global(list(local))
                    continue
                with no_sync() if not sync else contextlib.nullcontext():
                    loss = compute_loss()
                    scale(loss).backward()
        finally:
            with torch.no_grad():
                for param, original in zip(self.params, originals):
                    param.copy_(original)
        self.last_deltas = deltas  # for tests and diagnostics: what was added to each target
        self.last_units = units  # the length that epsilon/alpha were multiplied by, per target
        if clean_loss is not None:
            self.watch(float(clean_loss.detach()), float(loss.detach()))
        return loss

    def units(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[float]:
        """Per target, the length epsilon and alpha are measured in: 1.0 (absolute) or the rows' RMS norm."""
        if self.cfg.norm == "absolute":
            return [1.0] * len(weights)
        return [row_scale(w, g) for w, g in zip(weights, grads)]

    def watch(self, clean: float, adversarial: float) -> None:
        """The guard: one warning when the attack swamps the clean loss for GUARD_STEPS micro-batches in a row."""
        if self._warned:
            return
        self._over = self._over + 1 if adversarial > GUARD_RATIO * max(clean, 1e-8) else 0
        if self._over >= GUARD_STEPS:
            self._warned = True
            log.warning(
                "train.adversarial: the adversarial loss has been over %gx the clean loss for %d micro-batches "
                "in a row (last: %.4g vs %.4g; method=%s, norm=%s, epsilon=%g): the perturbation is destroying "
                "the model rather than regularising it; lower train.adversarial.epsilon (and alpha)",
                GUARD_RATIO,
                GUARD_STEPS,
                adversarial,
                clean,
                self.cfg.method,
                self.cfg.norm,
                self.cfg.epsilon,
            )
