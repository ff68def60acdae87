"""Multi-model workflows built from ``train`` and ``predict``: k-fold with out-of-fold predictions, ensembles
with fitted weights, pseudo-labels, group fine-tuning (distillation is a training setting, ``train.distill_*``).

Every workflow writes ordinary run directories and model folders, so each step's output is accepted by the
others and by ``predict``/``evaluate``.
"""
