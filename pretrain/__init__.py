"""Pretraining on unlabeled videos (MLM, masked frame modeling, video-text matching).

Imports ``mmcls``; ``mmcls`` never imports this package. Filled in by the pretraining issue.
"""
