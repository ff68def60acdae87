"""Deployment: ONNX/FP16 export, TensorRT engines, runtimes and the batching inference server.

Imports ``mmcls``; ``mmcls`` never imports this package. Filled in by the deployment issue.
"""
