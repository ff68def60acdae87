"""One :class:`Predictor` over several runtimes: PyTorch, ONNX Runtime, AOTInductor and TensorRT.

The preprocessing is the same whatever runs the model: batches come from the core's eval loader
(``mmcls.data.builders``: tokenizer, frame decoding, resizing) or from the server's request decoder, as the dict
``input_ids, attention_mask, frames, frame_mask`` that the model takes. Normalisation of uint8 frames happens
inside the model/graph. A backend only maps that dict to ``(probs, lv1_probs)`` as NumPy arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls import names
from mmcls.deploy.artifact import ArtifactError, Assets, load_assets
from mmcls.deploy.backends import get_backend


class Backend:
    """Runs the model on a batch dict; returns ``(probs [B, C], lv1_probs [B, C1])`` float32 NumPy arrays.

    Built as ``Runtime(path, device, info, *, precision, threads)``: ``path`` is the backend's model file in the
    artifact folder (the model folder itself for torch), ``info`` the artifact's ``export.json`` (None for a
    model folder). The registry (:mod:`mmcls.deploy.backends`) names each backend's runtime class.
    """

    device: torch.device

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class TorchBackend(Backend):
    """The model folder's PyTorch model under the requested precision (autocast for bf16/fp16)."""

    def __init__(
        self,
        folder: Path,
        device: torch.device,
        info: dict[str, Any] | None = None,
        *,
        precision: str = "fp32",
        threads: int | None = None,
    ):
        from mmcls.deploy.export import InferenceGraph, bake_logit_adjustment, export_tau
        from mmcls.engine.inference import cast_for_inference
        from mmcls.models import load_model_dir

        loaded = load_model_dir(folder, device=device)
        # As `mmcls predict` (--logit-adjust auto) and an exported artifact: the TAU training chose, if any.
        tau = export_tau(loaded, "auto")
        if tau:
            bake_logit_adjustment(loaded, tau)
        cast_for_inference(loaded.model, device, precision)
        multilabel = loaded.config.data.task == "multilabel"
        self.graph = InferenceGraph(loaded.model, loaded.categories, multilabel).eval()
        self.device = device
        self.precision = precision

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        from mmcls.engine.inference import autocast

        args = [inputs[name].to(self.device, non_blocking=True) for name in names.MODEL_INPUTS]
        with autocast(self.device, self.precision):
            probs, lv1 = self.graph(*args)
        return probs.float().cpu().numpy(), lv1.float().cpu().numpy()


class OnnxBackend(Backend):
    """ONNX Runtime; the CUDA execution provider when ``device`` is CUDA and onnxruntime has it."""

    def __init__(
        self, path: Path, device: torch.device, info: dict[str, Any], *, precision: str, threads: int | None
    ):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ArtifactError(
                    f"{path}: --device cuda needs onnxruntime-gpu (this onnxruntime has "
                    f"{ort.get_available_providers()})"
                )
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in info["inputs"].items()}
        self.device = device

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: _numpy(inputs[name], self.dtypes[name]) for name in names.MODEL_INPUTS}
        probs, lv1 = self.session.run(list(names.GRAPH_OUTPUTS), feed)
        return probs, lv1


class AotiBackend(Backend):
    """An AOTInductor package (``model.pt2``), compiled for one device type at export time."""

    def __init__(
        self, path: Path, device: torch.device, info: dict[str, Any], *, precision: str, threads: int | None
    ):
        from torch._inductor import aoti_load_package

        if info.get("device", "cpu") != device.type:
            raise ArtifactError(
                f"{path}: compiled for {info.get('device')}, cannot run on {device.type}; "
                f"export again with --device {device.type}"
            )
        self.runner = aoti_load_package(str(path))
        self.dtypes = {name: _torch_dtype(spec["dtype"]) for name, spec in info["inputs"].items()}
        self.device = device

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        args = [
            inputs[name].to(self.device, self.dtypes[name], non_blocking=True) for name in names.MODEL_INPUTS
        ]
        probs, lv1 = self.runner(*args)
        return probs.float().cpu().numpy(), lv1.float().cpu().numpy()


class Predictor:
    """Preprocessing assets + one backend. Build it with :meth:`from_path`."""

    def __init__(
        self, assets: Assets, backend: Backend, backend_name: str, device: torch.device | None = None
    ):
        self.assets = assets
        self.backend = backend
        self.backend_name = backend_name
        self.device = torch.device("cpu") if device is None else device  # where inputs are prepared

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        backend: str | None = None,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """A model folder / run directory (backend ``torch``) or an artifact folder (its own backend).

        ``precision`` applies to the torch backend (autocast); an artifact's precision was fixed at export,
        and asking for another one is an error rather than a silent mismatch.
        """
        from mmcls.engine.distributed import resolve_device, world_info_from_env

        assets = load_assets(path)
        backend = check_backend(path, assets, backend)
        torch_device = resolve_device(device, world_info_from_env())
        info = assets.export_info
        if info is not None and precision not in (None, info["precision"]):
            raise ArtifactError(
                f"{path}: exported in {info['precision']}; --precision {precision} needs another export"
            )
        record = get_backend(backend)
        if torch_device.type not in record.devices:
            raise ArtifactError(
                f"{path}: the {backend} backend runs on {' or '.join(record.devices)} only; "
                f"use --device {record.devices[0]}"
            )
        precision = precision or (info["precision"] if info else "fp32")
        problem = record.precision_problem(precision, torch_device.type)
        if problem is not None:
            raise ArtifactError(problem)
        model_path = assets.folder if info is None else assets.folder / record.model_file
        runner: Backend = record.runtime()(
            model_path, torch_device, info, precision=precision, threads=threads
        )
        return cls(assets, runner, backend, torch_device)

    @property
    def precision(self) -> str:
        info = self.assets.export_info
        return info["precision"] if info else getattr(self.backend, "precision", "fp32")

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, lv1_probs)`` of one batch dict (the eval loader's or the server's)."""
        return self.backend(batch)

    def predict_loader(self, loader, progress: bool = False):
        """Like ``mmcls.engine.inference.predict_loader``, over this predictor's backend."""
        from tqdm.auto import tqdm

        from mmcls.engine.inference import Predictions
        from mmcls.engine.prefetch import to_device

        indices, probs, labels = [], [], []
        errors: Counter[str] = Counter()
        for batch in tqdm(loader, desc=f"predict[{self.backend_name}]", disable=not progress, leave=False):
            batch = to_device(
                batch, self.device, keys=()
            )  # decodes frames still encoded (--frame-decoder cuda)
            errors.update(batch["frame_errors"])
            if len(batch["index"]) == 0:
                continue
            probs.append(self(batch)[0])
            indices.append(batch["index"].numpy())
            labels.append(batch["labels"].numpy())
        if not indices:
            raise ArtifactError("the split has no records to predict")
        return Predictions(np.concatenate(indices), np.concatenate(probs), np.concatenate(labels), errors)

    def predict_split(
        self,
        data_root: str | Path,
        split: str = "test",
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        progress: bool = True,
        frame_decoder: names.FrameDecoder = "pil",
    ):
        """``(ids, predictions, category_ids)`` for ``split``, as ``mmcls.inference.predict.predict_split``."""
        from mmcls.data.builders import build_dataset, build_eval_loader
        from mmcls.engine.distributed import check_frame_decoder
        from mmcls.inference.predict import records_to_predict

        check_frame_decoder(frame_decoder, self.device, setting="--frame-decoder")
        cfg, categories = self.assets.config, self.assets.categories
        records = records_to_predict(data_root, split, categories, files=cfg.data.annotations)
        tokenizer = self.assets.tokenizer
        dataset = build_dataset(
            cfg,
            data_root,
            split,
            records,
            tokenizer,
            categories,
            train=False,
            on_error="text_only",
            frame_decoder=frame_decoder,
        )
        workers = cfg.data.num_workers if num_workers is None else num_workers
        loader = build_eval_loader(dataset, batch_size, workers, tokenizer.pad_token_id or 0)
        preds = self.predict_loader(loader, progress=progress)
        order = np.argsort(preds.indices)
        category_ids = [categories.category_id(int(i)) for i in preds.pred[order]]
        return [r.id for r in records], preds, category_ids


def check_backend(path: str | Path, assets: Assets, backend: str | None) -> str:
    """The backend that runs ``path``: ``backend`` if the folder holds that kind of model, else an error."""
    backend = backend or assets.backend
    get_backend(backend)  # an unknown name: an error naming the choices
    if backend != assets.backend:
        hint = (
            f"`mmcls export {path} --format {backend}` first"
            if backend != "torch"
            else "pass the model folder"
        )
        raise ArtifactError(f"{path}: holds a {assets.backend} model, not {backend}: {hint}")
    return backend


def _numpy(value: Any, dtype: np.dtype) -> np.ndarray:
    array = value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return np.ascontiguousarray(array, dtype=dtype)


def _torch_dtype(name: str) -> torch.dtype:
    return {"int64": torch.long, "uint8": torch.uint8, "float32": torch.float32, "bool": torch.bool}[name]


def bench_backend(path: str | Path, device: torch.device, precision: str):
    """``mmcls bench infer --backend onnx|aoti|tensorrt``: an artifact's runner in the form the core's
    benchmark takes (see ``mmcls.bench.torch_backend``): ``(run(batch) -> log-probabilities, assets)``.

    An artifact's precision was fixed at export, so ``precision`` is only checked against it: ``fp32`` (the
    benchmark's default) means "as exported". On the CPU the runtime gets torch's intra-op thread count
    (``OMP_NUM_THREADS``), so that backends compared side by side (``--compare``) use the same cores.
    """
    predictor = Predictor.from_path(
        path,
        device=device.type,
        precision=None if precision == "fp32" else precision,
        threads=torch.get_num_threads() if device.type == "cpu" else None,
    )
    if predictor.backend_name == "torch":
        raise ArtifactError(f"{path}: a model folder, not an exported artifact: use --backend torch")

    def run(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        probs, _ = predictor(batch)
        return torch.from_numpy(probs).clamp_min(1e-30).log()  # the caller applies a softmax, as to logits

    return run, predictor.assets
