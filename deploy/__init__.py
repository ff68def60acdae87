"""Deployment: ONNX/FP16 export, TensorRT engines, runtimes and the batching inference server.

Installed as ``mmcls.deploy``. Imports the core; the core never imports it (the CLI dispatches to it lazily).
"""
