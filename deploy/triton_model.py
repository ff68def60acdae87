"""The Triton Python-backend model ``mmcls``: decodes and tokenizes a dynamic batch, runs the Predictor once.

Triton's Python backend loads ``<repository>/mmcls/1/model.py``, which re-exports :class:`TritonPythonModel`
from here. Triton itself does the serving work (HTTP/gRPC, the dynamic batcher, metrics, input checks against
``config.pbtxt``: missing/unknown inputs, wrong dtype or shape, too large a batch all get its own 400).

Why a Python-backend model instead of a PyTriton infer function: PyTriton answers an exception from the infer
function with a 500 for *every* request of the batch and puts the server-side traceback into the message.
Here each request is answered on its own: a request that preprocessing refuses gets a 400 (``INVALID_ARG``)
with a one-line reason, the other requests of the same batch are still classified, and no traceback leaves the
server.

The work of an execution is in :class:`BatchClassifier` (request arrays in, output arrays out, no Triton
types), which tests run in-process. Where the time goes (BENCHMARKS.md, "Triton server against the offline
path"): request decoding is about half of a tiny model's CPU time per video, and one instance runs decoding and
the model one after the other, so the videos of a batch are decoded by a thread pool (Pillow's JPEG decoder and
resizer release the GIL), one thread per core this instance has, while the runtime keeps its own intra-op
threads; both are shared out between instances (``instance_group`` count) when not set.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mmcls import names
from mmcls.data.dataset import collate_batch
from mmcls.deploy.request_decoder import RequestDecoder, RequestError, VideoLimits

logger = logging.getLogger("mmcls.deploy.triton")


def instance_cores(instances: int) -> int:
    """This instance's share of the CPU cores the process may run on (at least one)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, instances))


def tagging_thresholds(assets: Any) -> np.ndarray:
    """A tagging model's per-class thresholds (its ``thresholds.json``), read once when the model loads: a
    tagging model without them is refused then (``mmcls serve`` checks it before Triton starts), not answered
    with an error per request."""
    from mmcls.tagging import model_thresholds

    return model_thresholds(assets.folder, list(assets.categories.category_ids))


class BatchClassifier:
    """One execution's work without Triton's types: a list of requests, each ``{input name: array with the
    batch dimension}``, to a list of answers, each ``{output name: array}`` or the :class:`RequestError` that
    refused that request (answered with a 400, the other requests still classified)."""

    def __init__(self, predictor: Any, limits: VideoLimits | None = None, decode_threads: int = 1):
        self.predictor = predictor
        self.decoder = RequestDecoder(predictor.assets, limits)
        self.categories = predictor.assets.categories
        self.tagging = predictor.assets.config.data.task == "multilabel"
        self.thresholds = tagging_thresholds(predictor.assets) if self.tagging else None
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None

    def __call__(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | RequestError]:
        decoded = self._map(self._decode_request, list(enumerate(requests)))
        samples: list[dict[str, Any]] = []
        owners: list[int] = []  # request position of every sample (a request may hold several videos)
        for position, answer in enumerate(decoded):
            if isinstance(answer, list):
                for sample in answer:
                    sample["index"] = len(samples)
                    samples.append(sample)
                owners.extend([position] * len(answer))
        outputs = self._classify(samples) if samples else {}
        owner_array = np.asarray(owners)
        answers: list[dict[str, np.ndarray] | RequestError] = []
        for position, answer in enumerate(decoded):
            if isinstance(answer, RequestError):
                answers.append(answer)
            else:
                rows = owner_array == position
                answers.append({name: values[rows] for name, values in outputs.items()})
        return answers

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def _map(self, function, items: list) -> list:
        if self.pool is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self.pool.map(function, items))

    def _decode_request(self, item: tuple[int, dict[str, np.ndarray]]) -> list[dict[str, Any]] | RequestError:
        position, inputs = item
        try:
            # Triton stops checking for required inputs once a model has optional ones (frames, video): here.
            missing = [name for name in self.decoder.required_inputs if name not in inputs]
            if missing:
                raise RequestError(f"missing required input(s) {missing}")
            rows = {len(values) for values in inputs.values()}
            if len(rows) != 1 or 0 in rows:
                raise RequestError(f"inputs {sorted(inputs)} must all hold the same number (>= 1) of videos")
            return [
                self.decoder.decode({name: values[row] for name, values in inputs.items()}, position)
                for row in range(rows.pop())
            ]
        except RequestError as exc:
            return exc

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
        if self.thresholds is None:
            return {}
        from mmcls.tagging import decide_tags, tag_lists

        ids = list(self.categories.category_ids)
        min_tags = self.predictor.assets.config.train.thresholds.min_tags
        tags = decide_tags(probs, self.thresholds, None, min_tags)  # as model_tags, thresholds read once
        tag_ids, tag_names = tag_lists(tags, ids, [self.categories.name(c) for c in ids])
        return {names.SERVED_TAGS: tag_ids, names.SERVED_TAG_NAMES: tag_names}


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        from mmcls.deploy.predictor import Predictor

        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        model_path = Path(params["mmcls_model"])
        if not model_path.is_absolute():  # a repository from `export --format triton` holds its model
            model_path = Path(args["model_repository"]) / args["model_version"] / model_path
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        threads = int(params.get("threads") or 0) or None
        if threads or instances > 1:
            import torch

            # Unset: the runtime's default (all cores) split between the instances.
            threads = threads or max(1, torch.get_num_threads() // instances)
            torch.set_num_threads(threads)
        predictor = Predictor.from_path(
            model_path,
            params.get("backend") or None,
            device=params.get("device") or "auto",
            precision=params.get("precision") or None,
            threads=threads,
        )
        default = VideoLimits()  # a repository written before these parameters existed gets the defaults
        limits = VideoLimits(
            max_bytes=int(params.get("max_video_bytes") or default.max_bytes),
            max_seconds=float(params.get("max_video_seconds") or default.max_seconds),
        )
        decode_threads = int(params.get("decode_threads") or 0) or instance_cores(instances)
        self.classifier = BatchClassifier(predictor, limits, decode_threads)
        self.input_names = self.classifier.decoder.input_names

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        inputs = []
        for request in requests:
            arrays = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            inputs.append(arrays)
        try:
            answers = self.classifier(inputs)
        except Exception as exc:  # a bug or a runtime failure: one line per request, no traceback
            logger.exception("inference failed")
            message = (
                f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            error = pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for answer in answers:
            if isinstance(answer, RequestError):
                error = pb_utils.TritonError(str(answer), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensors = [pb_utils.Tensor(name, values) for name, values in answer.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.classifier.close()
        del self.classifier  # the model's memory goes with the instance, not with the stub process
