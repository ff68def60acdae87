"""Pretraining on unlabeled videos (MLM, masked frame modeling, video-text matching).

Installed as ``mmcls.pretrain``. Imports the core; the core never imports it (the CLI dispatches to it lazily).
"""
