"""The training loop (``trainer``) and what only it uses.

What is trained (``setup``: data, model, scoring, model folder; ``task``: loss, EMA, distributed wrapping), the
loss terms and targets (``losses``, ``soft_targets``, ``adversarial``, ``swa``), optimisation (``optim``),
processes and devices (``distributed``, ``prefetch``), the run directory and its checkpoints (``run_dir``,
``checkpoint``, ``logger``), and the batched forward that validation shares with ``mmcls predict``
(``inference``). Command bodies that only use a trained model live in :mod:`mmcls.inference`.
"""
