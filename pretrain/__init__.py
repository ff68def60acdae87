"""Pretraining on unlabeled videos: MLM (whole-word), masked frame modeling, video-text matching and contrast.

Installed as ``mmcls.pretrain``. Imports the core; the core never imports it (the CLI dispatches to
``mmcls.pretrain.cli`` lazily). ``mmcls pretrain CONFIG --data-root ROOT --out RUN_DIR`` runs the training loop
of ``mmcls train`` with :class:`mmcls.pretrain.task.PretrainingSetup`; the model folders it writes start a
fine-tuning run with ``mmcls train CONFIG --set model.init_from=RUN_DIR``. See ``docs/pretrain.md``.
"""
