"""Frame encoders: turn ``[B, T, 3, H, W]`` frames (or ``[B, T, D]`` precomputed features) into ``[B, T, D]``.

Three kinds, chosen by ``FrameEncoderConfig.type``:

* ``open_clip``: the visual tower of any open_clip model (``open_clip.create_model(name, pretrained=tag)``);
* ``timm``: any timm backbone without its classifier (``num_classes=0``);
* ``identity``: precomputed frame features (e.g. the challenge's ``zip_feats``), passed through.

Pretrained weights are loaded only through the libraries' own loaders. When they cannot be found (typically: no
network and nothing cached) a :class:`PretrainedWeightsError` says which weights are missing and how to provide
them locally. The folder ``open_clip_configs/`` of this package is registered with open_clip on first use, so tiny
architectures such as ``mmcls-tiny-vit`` (32 px, random init) can be used for CPU tests and demos.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from mmcls.config import CLIP_MEAN, CLIP_STD, FrameConfig, FrameEncoderConfig
from mmcls.errors import MmclsError

OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"

_OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


class PretrainedWeightsError(MmclsError, RuntimeError):
    """Pretrained weights could not be loaded; the message names them and how to provide them offline."""


# ------------------------------------------------------------------------------------- offline weights
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used now, or None if it may be.

    ``HF_HUB_OFFLINE=1``, or one quick TCP connection to the hub (``HF_ENDPOINT``) that fails: then the weights
    must come from the caches, and asking the hub would only spend a minute in retries before the same error.
    Behind a proxy (``HTTPS_PROXY``) the hub is not probed directly (None: the download decides).
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    return _probe(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


@functools.lru_cache(maxsize=4)
def _probe(endpoint: str) -> str | None:
    """One connection attempt per endpoint and process (the answer is kept: no retry storm)."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{url.hostname}:{port} cannot be reached: {exc.strerror or exc}"
    return None


@contextlib.contextmanager
def cache_only_if_hub_unreachable() -> Iterator[str | None]:
    """Within: ``huggingface_hub`` reads only its cache when :func:`hub_unreachable` (yields the reason), so a
    missing download fails at once with the caller's clear error instead of after retries."""
    reason = hub_unreachable()
    if reason is None:
        yield None
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved


def _offline_note(reason: str | None) -> str:
    return f" (not in the local caches, and the hub is not used: {reason})" if reason else ""


class FrameEncoder(nn.Module):
    """Runs a per-image backbone over every frame of a clip.

    ``forward(frames)`` takes ``[B, T, 3, H, W]`` images (``[B, T, D]`` features for ``identity``) and returns
    ``[B, T, output_dim]``. All ``B*T`` frames go through the backbone, padding included: the frame mask is
    applied later (the backbones here treat every image independently in eval mode, so padding cannot leak
    into real frames; a BatchNorm backbone in train mode does see the padded frames in its batch statistics).

    Images may arrive as uint8 pixels (what the data path delivers: a quarter of the bytes of float32 through
    worker processes, pinned memory and PCIe); they are then scaled and normalised here, on the model's device,
    with ``pixel_mean``/``pixel_std`` (``data.frames.mean``/``std``; not saved with the weights). Float frames
    are taken as already normalised.

    ``build_kwargs`` holds the keyword arguments that shape the architecture (for example open_clip's
    ``force_quick_gelu`` for OpenAI weights); the model folder saves them so that a rebuild without
    pretrained weights gets the same network.
    """

    # Buffers (registered in __init__), declared for the type checker.
    pixel_scale: torch.Tensor
    pixel_shift: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module | None,
        output_dim: int,
        kind: str,
        *,
        freeze: bool = False,
        build_kwargs: dict[str, Any] | None = None,
        pixel_mean: tuple[float, ...] = CLIP_MEAN,
        pixel_std: tuple[float, ...] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # 1/(255*std) and mean/std, so normalising uint8 pixels is one fused multiply-add per element.
        std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", mean / std, persistent=False)
        self.output_dim = int(output_dim)
        self.kind = kind
        self.frozen = bool(freeze) and backbone is not None
        self.build_kwargs = dict(build_kwargs or {})
        if self.frozen and backbone is not None:
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        if self.frozen and self.backbone is not None:
            # A frozen backbone stays in eval mode: no dropout, BatchNorm statistics untouched.
            self.backbone.eval()
        return self

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            if frames.dim() != 3 or frames.shape[-1] != self.output_dim:
                raise ValueError(
                    f"identity frame encoder expects features [B, T, {self.output_dim}], got {tuple(frames.shape)}"
                )
            return frames
        if frames.dim() != 5:
            raise ValueError(
                f"{self.kind} frame encoder expects frames [B, T, 3, H, W], got {tuple(frames.shape)}"
            )
        batch, num_frames = frames.shape[:2]
        dtype = next(self.backbone.parameters()).dtype
        images = frames.flatten(0, 1)
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        features = self.backbone(images.to(dtype))
        return features.reshape(batch, num_frames, -1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` pixels -> float32 ``(x / 255 - mean) / std``."""
        return pixels.float() * self.pixel_scale - self.pixel_shift

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone activations in the backward pass (both open_clip and timm support it)."""
        toggle = getattr(self.backbone, "set_grad_checkpointing", None)  # None without a backbone
        if toggle is not None:
            toggle(enable)


def build_frame_encoder(
    cfg: FrameEncoderConfig,
    image_size: int,
    pixel_mean: tuple[float, ...] = CLIP_MEAN,
    pixel_std: tuple[float, ...] = CLIP_STD,
    feature_dim: int = FrameConfig.feature_dim,
) -> FrameEncoder:
    """Build the frame encoder described by ``cfg`` for square frames of ``image_size`` pixels.

    ``pixel_mean``/``pixel_std`` normalise uint8 frames (see :class:`FrameEncoder`); ``feature_dim``
    (``data.frames.feature_dim``) is the width of the features the identity encoder passes through.
    """
    if cfg.type == "identity":
        return FrameEncoder(None, feature_dim, "identity", pixel_mean=pixel_mean, pixel_std=pixel_std)
    if cfg.type == "open_clip":
        backbone, kwargs = _open_clip_visual(cfg, image_size)
    elif cfg.type == "timm":
        backbone, kwargs = _timm_backbone(cfg)
    else:
        raise ValueError(f"model.frame_encoder.type: unknown {cfg.type!r}; use open_clip, timm or identity")
    output_dim = _output_dim(backbone, image_size)
    return FrameEncoder(
        backbone,
        output_dim,
        cfg.type,
        freeze=cfg.freeze,
        build_kwargs=kwargs,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


# ---------------------------------------------------------------------------------------------- open_clip
def open_clip_module() -> Any:
    """open_clip with this package's architectures registered.

    Imported on first use: it pulls in torchvision and torch._dynamo, about half of ``mmcls predict``'s
    import time, which models without an open_clip tower (features, timm) do not need.
    """
    import open_clip

    if str(OPEN_CLIP_CONFIG_DIR) not in _REGISTERED:
        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
        _REGISTERED.add(str(OPEN_CLIP_CONFIG_DIR))
    return open_clip


_REGISTERED: set[str] = set()


def _open_clip_visual(cfg: FrameEncoderConfig, image_size: int) -> tuple[nn.Module, dict[str, Any]]:
    open_clip = open_clip_module()
    name, tag = cfg.name, _normalize_tag(cfg.pretrained)
    has_schema = name.startswith(_OPEN_CLIP_SCHEMAS)
    if not has_schema and open_clip.get_model_config(name) is None:
        raise ValueError(
            f"model.frame_encoder.name: unknown open_clip model {name!r} (see open_clip.list_models(); "
            f"add an architecture with open_clip.add_model_config(JSON) or use 'hf-hub:ORG/REPO')"
        )
    kwargs: dict[str, Any] = {}
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag and not has_schema else {}
    if tag and not has_schema and not tag_cfg and not os.path.isfile(tag):
        raise PretrainedWeightsError(
            f"open_clip model {name!r}: pretrained={tag!r} is not a known tag "
            f"(known: {open_clip.list_pretrained_tags_by_model(name)}) and not an existing checkpoint file"
        )
    if tag_cfg.get("quick_gelu"):
        # OpenAI's weights were trained with QuickGELU; the plain config uses nn.GELU. Saved with the model.
        kwargs["force_quick_gelu"] = True
    kwargs.update(cfg.kwargs)
    try:
        # pretrained_text=False: only the visual tower is kept, so never fetch text-tower weights.
        with _quiet_random_init_warning(enabled=not tag), cache_only_if_hub_unreachable() as offline:
            model = open_clip.create_model(
                name, pretrained=tag, force_image_size=image_size, pretrained_text=False, **kwargs
            )
    except (RuntimeError, OSError) as exc:
        if not tag and not has_schema:
            raise
        raise PretrainedWeightsError(_open_clip_hint(name, tag, tag_cfg, exc, offline)) from exc
    return model.visual, kwargs


def _open_clip_hint(
    name: str, tag: str | bool | None, tag_cfg: dict, exc: Exception, offline: str | None = None
) -> str:
    repo = (tag_cfg.get("hf_hub") or "").rstrip("/") or "ORG/REPO"
    return (
        f"could not load pretrained weights for open_clip model {name!r} (pretrained={tag!r})"
        f"{_offline_note(offline)}: {exc}\n"
        f"To provide them without network: download on a connected machine with "
        f"`hf download {repo} --local-dir DIR` (older huggingface_hub: `huggingface-cli download ...`) and set "
        f"model.frame_encoder.pretrained to the checkpoint file in DIR (e.g. DIR/open_clip_pytorch_model.bin); "
        f"or copy a Hugging Face cache that holds it and point HF_HOME (or HF_HUB_CACHE) at it "
        f"(open_clip's URL downloads are cached in ~/.cache/clip). "
        f"Set HF_HUB_OFFLINE=1 to skip the network retries."
        + (
            " These weights need QuickGELU: with a checkpoint file also set "
            "model.frame_encoder.kwargs.force_quick_gelu=true."
            if tag_cfg.get("quick_gelu")
            else ""
        )
    )


@contextlib.contextmanager
def _quiet_random_init_warning(enabled: bool) -> Iterator[None]:
    """Drop open_clip's root-logger warning "No pretrained weights loaded ... initialized randomly" while
    building with ``pretrained: null`` on purpose (e.g. when loading a model folder, where it would mislead)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    if enabled:
        root.addFilter(keep)
    try:
        yield
    finally:
        if enabled:
            root.removeFilter(keep)


# ---------------------------------------------------------------------------------------------- timm
def _timm_backbone(cfg: FrameEncoderConfig) -> tuple[nn.Module, dict[str, Any]]:
    import timm  # imported here: only timm configs need it

    name, tag = cfg.name, _normalize_tag(cfg.pretrained)
    if not timm.is_model(name):
        raise ValueError(f"model.frame_encoder.name: unknown timm model {name!r} (see timm.list_models())")
    create_kwargs: dict[str, Any] = {"pretrained": bool(tag)}
    if isinstance(tag, str) and _looks_like_file(tag):
        if not os.path.isfile(tag):
            raise PretrainedWeightsError(
                f"timm model {name!r}: pretrained checkpoint file {tag!r} does not exist"
            )
        create_kwargs["pretrained_cfg_overlay"] = {"file": tag}
    elif isinstance(tag, str) and tag.lower() not in ("true", "default"):
        name = f"{name}.{tag}"  # a timm pretrained tag, e.g. "augreg_in21k"
    offline = None
    try:
        with cache_only_if_hub_unreachable() as offline:
            backbone = timm.create_model(name, num_classes=0, **create_kwargs, **cfg.kwargs)
    except (RuntimeError, OSError) as exc:
        if not tag:
            raise
        pretrained_cfg = timm.get_pretrained_cfg(name)
        repo = (pretrained_cfg.hf_hub_id if pretrained_cfg else None) or f"timm/{name}"
        raise PretrainedWeightsError(
            f"could not load pretrained weights for timm model {name!r} (pretrained={tag!r})"
            f"{_offline_note(offline)}: {exc}\n"
            f"To provide them without network: download on a connected machine with "
            f"`hf download {repo} --local-dir DIR` (older huggingface_hub: `huggingface-cli download ...`) "
            f"and set model.frame_encoder.pretrained to DIR/model.safetensors; or copy a Hugging Face cache "
            f"that holds it and point HF_HOME (or HF_HUB_CACHE) at it. Set HF_HUB_OFFLINE=1 to skip the "
            f"network retries."
        ) from exc
    return backbone, dict(cfg.kwargs)


def _normalize_tag(value: str | bool | None) -> str | bool | None:
    """``pretrained`` as given in YAML: null/false/"none" mean random init."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "false"):
        return None
    return value or None


def _looks_like_file(value: str) -> bool:
    return value.endswith(_CHECKPOINT_SUFFIXES) or os.sep in value or "/" in value


# ---------------------------------------------------------------------------------------------- helpers
def _output_dim(backbone: nn.Module, image_size: int) -> int:
    """Width of the backbone's per-image embedding (attribute when it has one, else one probe forward)."""
    # timm: with num_classes=0 the output is the pre-logits width (head_hidden_size), which differs from
    # num_features for models with a pre-logits layer (e.g. MobileNetV3).
    for attr in ("output_dim", "head_hidden_size", "num_features"):
        value = getattr(backbone, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    was_training = backbone.training
    backbone.eval()
    param = next(backbone.parameters())
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device))
    backbone.train(was_training)
    return int(out.shape[-1])
