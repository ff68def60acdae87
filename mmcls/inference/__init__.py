"""Inference command bodies: ``mmcls predict`` (a model folder + a split -> submission) and feature extraction.

The batched forward they share with evaluation during training stays in :mod:`mmcls.engine.inference`, so the
training loop never imports this package's modules at import time.
"""
