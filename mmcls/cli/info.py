"""``mmcls info``: what this installation can do, for a bug report or before a long job.

Library versions (torch, transformers, open_clip, timm, decord, onnxruntime, TensorRT or its absence), the
CUDA devices, and which pretrained weights of the packaged presets are available offline (in the Hugging Face
and open_clip caches), so a run on a machine without internet is known to work before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

# distribution name -> what to call it in the report
PACKAGES = {
    "mmcls": "mmcls",
    "torch": "torch",
    "transformers": "transformers",
    "open_clip_torch": "open_clip",
    "timm": "timm",
    "decord": "decord",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime-gpu",
    "tensorrt": "TensorRT",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="versions, CUDA devices and the pretrained weights available offline",
        epilog="example: mmcls info --json > environment.json",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def run(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "versions": versions(),
        "cuda": cuda_devices(),
        "pretrained_offline": pretrained_weights(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("versions:")
    for name, version in info["versions"].items():
        print(f"  {name:16} {version or 'not installed'}")
    cuda = info["cuda"]
    print(f"CUDA: {cuda['status']}")
    for device in cuda["devices"]:
        print(f"  cuda:{device['index']} {device['name']} ({device['memory_gib']:.1f} GiB)")
    print("pretrained weights of the presets (offline = found in the local caches):")
    for item in info["pretrained_offline"]:
        state = "offline" if item["available"] else "NOT cached (needs a download)"
        print(f"  {item['preset']:6} {item['kind']:13} {item['source']:45} {state}")
    return 0


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist, name in PACKAGES.items():
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cuda_devices() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {
            "status": f"no CUDA device visible (torch built for CUDA {torch.version.cuda})",
            "devices": [],
        }
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "memory_gib": props.total_memory / 2**30})
    return {"status": f"{len(devices)} device(s), CUDA {torch.version.cuda}", "devices": devices}


def pretrained_weights() -> list[dict[str, Any]]:
    """For each packaged preset: its text encoder and frame encoder weights, and whether they are cached."""
    from importlib import resources

    import yaml

    from mmcls.config import Config

    rows = []
    for item in sorted(resources.files("mmcls.configs").iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".yaml"):
            continue
        values = yaml.safe_load(Path(str(item)).read_text(encoding="utf-8")) or {}
        # Presets of feature packages (pretrain-*) add sections of their own; only the model matters here.
        cfg = Config.from_dict({k: v for k, v in values.items() if k in ("data", "model", "train")})
        preset = item.name[: -len(".yaml")]
        if cfg.model.text_encoder:
            source = cfg.model.text_encoder
            rows.append(
                {"preset": preset, "kind": "text_encoder", "source": source, "available": _hf_cached(source)}
            )
        encoder = cfg.model.frame_encoder
        if encoder.type != "identity" and encoder.pretrained:
            source = f"{encoder.type}:{encoder.name}:{encoder.pretrained}"
            available = _frame_encoder_cached(encoder.type, encoder.name, encoder.pretrained)
            rows.append({"preset": preset, "kind": "frame_encoder", "source": source, "available": available})
    return rows


def _hf_cached(repo_or_dir: str) -> bool:
    if Path(repo_or_dir).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    weights = (
        "model.safetensors",
        "pytorch_model.bin",
        "open_clip_pytorch_model.bin",
        "open_clip_model.safetensors",
    )
    return any(isinstance(try_to_load_from_cache(repo_or_dir, name), str) for name in weights)


def _frame_encoder_cached(kind: str, name: str, tag: str) -> bool:
    if kind == "open_clip":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg:
            return Path(tag).is_file()
        hub = (cfg.get("hf_hub") or "").rstrip("/")
        if hub and _hf_cached(hub):
            return True
        url = cfg.get("url") or ""
        legacy = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return bool(url) and legacy.is_file()
    if kind == "timm":
        import timm

        try:
            # None for a name timm does not know: the AttributeError below.
            hub = timm.models.get_pretrained_cfg(name).hf_hub_id  # type: ignore[union-attr]
        except (AttributeError, RuntimeError, ValueError):
            return False
        return _hf_cached(hub) if hub else False
    return False
