"""The Triton Python-backend model ``mmcls``: decodes and tokenizes a dynamic batch, runs the Predictor once.

Triton's Python backend loads ``<repository>/mmcls/1/model.py``, which re-exports :class:`TritonPythonModel`
from here. Triton itself does the serving work (HTTP/gRPC, the dynamic batcher, metrics, input checks against
``config.pbtxt``: missing/unknown inputs, wrong dtype or shape, too large a batch all get its own 400).

Why a Python-backend model instead of a PyTriton infer function: PyTriton answers an exception from the infer
function with a 500 for *every* request of the batch and puts the server-side traceback into the message.
Here each request is answered on its own: a request that preprocessing refuses gets a 400 (``INVALID_ARG``)
with a one-line reason, the other requests of the same batch are still classified, and no traceback leaves the
server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mmcls import names
from mmcls.data.dataset import collate_batch
from mmcls.deploy.request_decoder import RequestDecoder, RequestError, VideoLimits

logger = logging.getLogger("mmcls.deploy.triton")


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        from mmcls.deploy.predictor import Predictor

        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        model_path = Path(params["mmcls_model"])
        if not model_path.is_absolute():  # a repository from `export --format triton` holds its model
            model_path = Path(args["model_repository"]) / args["model_version"] / model_path
        threads = int(params.get("threads") or 0) or None
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.predictor = Predictor.from_path(
            model_path,
            params.get("backend") or None,
            device=params.get("device") or "auto",
            precision=params.get("precision") or None,
            threads=threads,
        )
        limits = {
            key: cast(params[name])
            for key, name, cast in (
                ("max_bytes", "max_video_bytes", int),
                ("max_seconds", "max_video_seconds", float),
            )
            if params.get(name)
        }  # a repository written before these parameters existed gets the defaults
        self.decoder = RequestDecoder(self.predictor.assets, VideoLimits(**limits))
        self.categories = self.predictor.assets.categories
        self.tagging = self.predictor.assets.config.data.task == "multilabel"

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        samples: list[dict[str, Any]] = []
        owners: list[int] = []  # request position of every sample (a request may hold several videos)
        failures: dict[int, str] = {}
        for position, request in enumerate(requests):
            try:
                decoded = self._decode_request(request, pb_utils, len(samples))
            except RequestError as exc:
                failures[position] = str(exc)
                continue
            samples.extend(decoded)
            owners.extend([position] * len(decoded))
        outputs: dict[str, np.ndarray] = {}
        if samples:
            try:
                outputs = self._classify(samples)
            except Exception as exc:  # a bug or a runtime failure: one line per request, no traceback
                logger.exception("inference failed")
                message = (
                    f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                return [
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
                    )
                    for _ in requests
                ]
        owner_array = np.asarray(owners)
        responses = []
        for position in range(len(requests)):
            if position in failures:
                error = pb_utils.TritonError(failures[position], pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            rows = owner_array == position
            tensors = [pb_utils.Tensor(name, values[rows]) for name, values in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _decode_request(self, request: Any, pb_utils: Any, first_index: int) -> list[dict[str, Any]]:
        inputs = {}
        for name in self.decoder.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        # Triton stops checking for required inputs once a model has optional ones (frames, video): done here.
        missing = [name for name in self.decoder.required_inputs if name not in inputs]
        if missing:
            raise RequestError(f"missing required input(s) {missing}")
        rows = {len(values) for values in inputs.values()}
        if len(rows) != 1 or 0 in rows:
            raise RequestError(f"inputs {sorted(inputs)} must all hold the same number (>= 1) of videos")
        count = rows.pop()
        return [
            self.decoder.decode({name: values[row] for name, values in inputs.items()}, first_index + row)
            for row in range(count)
        ]

    def _classify(self, samples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        batch = collate_batch(samples, pad_token_id=self.decoder.pad_token_id)
        probs, _ = self.predictor(batch)
        category_ids = [self.categories.category_id(int(i)) for i in probs.argmax(axis=1)]
        return {
            names.SERVED_CATEGORY_ID: np.array([[c.encode()] for c in category_ids], dtype=object),
            names.SERVED_CATEGORY_NAME: np.array(
                [[self.categories.name(c).encode()] for c in category_ids], dtype=object
            ),
            # The level-1 id is the parent of the predicted category (as the challenge scores it), so an answer
            # never names a level-1 class that does not contain its level-2 class.
            names.SERVED_LV1_ID: np.array(
                [[self.categories.lv1_id(c).encode()] for c in category_ids], dtype=object
            ),
            names.SERVED_PROBS: probs.astype(np.float32),
            names.SERVED_ERRORS: np.array(
                [[json.dumps(s["frame_errors"]).encode()] for s in samples], dtype=object
            ),
            **self._tags(probs),
        }

    def _tags(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """A tagging model's ``tags`` and ``tag_names`` (its saved per-class thresholds); nothing otherwise."""
        if not self.tagging:
            return {}
        from mmcls.tagging import model_tags, tag_lists

        assets, ids = self.predictor.assets, list(self.categories.category_ids)
        tags = model_tags(assets.folder, assets.config, ids, probs)
        tag_ids, tag_names = tag_lists(tags, ids, [self.categories.name(c) for c in ids])
        return {names.SERVED_TAGS: tag_ids, names.SERVED_TAG_NAMES: tag_names}

    def finalize(self) -> None:
        self.predictor = None
