"""``mmcls bench data|infer|train``: throughput of the data path, the model and the two together.

Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones, so a machine shared with
other processes gives a stable number. Videos per second always count real videos (samples), not frames.

What each figure means:

* ``one_process_ms_per_video``: ``dataset[i]`` in this process (zip read, JPEG decode, resize, tokenisation),
  next to ``plain_decode_ms_per_video``, a plain PIL decode of the same JPEGs to uint8 arrays: their ratio is
  the data path's overhead beyond decoding.
* ``loader_videos_per_s``: the DataLoader alone with ``workers`` processes (batches consumed and dropped),
  timed from its first batch, so worker start-up is warm-up.
* ``model_videos_per_s``: the model alone on batches already on the device (inference: forward; training: the
  whole optimizer step of ``Trainer.train_step``).
* ``e2e_videos_per_s``: what ``mmcls predict`` (:func:`~mmcls.engine.inference.predict_loader`) or one
  training epoch achieves, loader included.
* ``device_decode_videos_per_s`` (``data.frames.decoder: cuda``): the batched device decoding alone
  (:func:`mmcls.data.device_decode.decode_batch` on collated batches); the one-process figure is then the
  workers' share only (zip read, checks, tokenisation).
* ``peak_memory_gib``: the CUDA allocator's peak on a GPU; on the CPU the process's peak resident set size.
* ``mfu`` (CUDA, training): FLOPs of one forward+backward counted by ``torch.utils.flop_counter`` (matmuls,
  convolutions, attention), times steps per second, over the device's dense bf16/fp16 peak.

This module only uses the library's public entry points (the data builders, ``load_model_dir``, ``autocast``,
``DevicePrefetcher``, and a ``Trainer``'s ``train_step``, ``task``, ``optimizer`` and training set), so
``benchmarks/before_after.py`` can load it against an older checkout to compare.
"""

from __future__ import annotations

import io
import itertools
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls.names import LOGITS, MODEL_INPUTS

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; --peak-tflops overrides.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


@dataclass
class BenchOptions:
    """What to measure and how often (the CLI's options)."""

    split: str = "labeled"
    batch_size: int = 32
    workers: int = 2
    device: str = "cpu"
    precision: str = "fp32"
    repeats: int = 5
    warmup: int = 1
    batches: int = 4  # batches per timed run
    limit: int | None = None  # use only the first N records of the split (infer: the e2e pass)
    peak_tflops: float | None = None
    # "wall" or "cpu": the clock of the one-process and model-alone figures. "cpu" (this process's CPU time) is
    # steadier on a machine shared with other jobs; loader and end-to-end figures are always wall time.
    clock: str = "wall"
    # infer: who decodes JPEG frames (data and train read the config's data.frames.decoder)
    frame_decoder: str = "pil"


# ------------------------------------------------------------------------------------------------ timing
def median_time(
    run: Callable[[], Any], repeats: int, warmup: int, device: torch.device, clock: str = "wall"
) -> float:
    """Median time of ``run()`` in seconds over ``repeats`` runs, after ``warmup`` untimed runs.

    ``clock="cpu"`` measures this process's CPU time instead of wall time (CPU device only).
    """
    now = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = now()
        run()
        _synchronize(device)
        times.append(now() - start)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """CUDA allocator peak on a GPU; otherwise this process's peak RSS (``ru_maxrss``, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _device(name: str) -> torch.device:
    from mmcls.config import ConfigError

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device on this machine")
    return device


# ------------------------------------------------------------------------------------------------ data
def bench_data(cfg: Any, data_root: str | Path, opts: BenchOptions) -> dict[str, Any]:
    """``one_process_ms_per_video`` and ``loader_videos_per_s`` of ``cfg``'s training data path."""
    from mmcls.data.builders import build_loader

    # getattr: benchmarks/before_after.py also passes configs of checkouts older than the setting
    device_decoding = getattr(cfg.data.frames, "decoder", "pil") == "cuda"
    if device_decoding:
        from mmcls.engine.distributed import check_frame_decoder

        check_frame_decoder("cuda", _device(opts.device), setting="data.frames.decoder")
    dataset, pad_id = _dataset(cfg, data_root, opts, train=True)
    cpu = torch.device("cpu")
    num_videos = min(len(dataset), opts.batch_size * opts.batches)
    one = median_time(
        lambda: [dataset[i] for i in range(num_videos)], opts.repeats, opts.warmup, cpu, opts.clock
    )
    result: dict[str, Any] = {"one_process_ms_per_video": 1e3 * one / num_videos}
    if getattr(dataset.frame_source, "root", None) is not None and cfg.data.frames.source == "zip_frames":
        ids = [dataset.records[i].id for i in range(num_videos)]
        plain = median_time(
            lambda: _plain_decode(dataset.frame_source, ids), opts.repeats, opts.warmup, cpu, opts.clock
        )
        result["plain_decode_ms_per_video"] = 1e3 * plain / num_videos
        result["overhead_vs_plain_decode"] = one / plain
        frames = sum(int(dataset[i]["frame_mask"].sum()) for i in range(num_videos))
        result["decoded_frames_per_s_per_core"] = frames / one

    if device_decoding:
        result["device_decode_videos_per_s"] = _device_decode_rate(dataset, pad_id, opts)

    def make_loader():
        return build_loader(dataset, opts.batch_size, None, opts.workers, pad_id, drop_last=True)

    result["loader_videos_per_s"], result["loader_first_batch_s"] = _loader_rate(make_loader, opts)
    return result


def _device_decode_rate(dataset: Any, pad_id: int, opts: BenchOptions) -> float:
    """Videos/s of :func:`~mmcls.data.device_decode.decode_batch` alone, on batches collated in this process."""
    from mmcls.data.builders import build_loader
    from mmcls.data.device_decode import decode_batch

    device = _device(opts.device)
    batches = list(itertools.islice(build_loader(dataset, opts.batch_size, None, 0, pad_id), opts.batches))
    videos = sum(len(b["index"]) for b in batches)
    seconds = median_time(
        lambda: [decode_batch(b, device) for b in batches], opts.repeats, opts.warmup, device
    )
    return videos / seconds


def _plain_decode(source: Any, ids: list[str]) -> list[np.ndarray]:
    """The reference: every JPEG of each zip (up to max_frames, sorted) decoded by PIL to a uint8 array."""
    from PIL import Image

    out = []
    for video_id in ids:
        with zipfile.ZipFile(source.path(video_id)) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg")))
            for name in names[: source.max_frames]:
                out.append(np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB")))
    return out


def _loader_rate(make_loader: Callable[[], Any], opts: BenchOptions) -> tuple[float, float]:
    """Median videos/s of fresh loaders, timed from each one's first batch (start-up is warm-up), and the
    median time from creating a loader to its first batch (what persistent workers would save per pass)."""
    rates, first_batch_s = [], []
    for run in range(opts.warmup + opts.repeats):
        created = time.perf_counter()
        batches = iter(make_loader())
        first = next(batches)
        start, videos = time.perf_counter(), 0
        for batch, _ in zip(batches, range(opts.batches)):
            videos += len(batch["index"])
        elapsed = time.perf_counter() - start
        del first, batches
        if run >= opts.warmup and videos:
            rates.append(videos / elapsed)
            first_batch_s.append(start - created)
    if not rates:
        return float("nan"), float("nan")
    return statistics.median(rates), statistics.median(first_batch_s)


def _dataset(
    cfg: Any, data_root: str | Path, opts: BenchOptions, train: bool, tokenizer: Any = None, **extra
):
    from mmcls.data.annotations import annotation_path, load_records
    from mmcls.data.builders import build_dataset
    from mmcls.data.categories import load_categories
    from mmcls.data.text import load_tokenizer

    categories = load_categories(cfg.data.categories)
    tokenizer = tokenizer or load_tokenizer(cfg.data.text.tokenizer)
    records = load_records(
        annotation_path(data_root, opts.split, cfg.data.annotations), categories=categories
    )[: opts.limit]
    dataset = build_dataset(cfg, data_root, opts.split, records, tokenizer, categories, train=train, **extra)
    return dataset, tokenizer.pad_token_id or 0


def _ready_batches(loader: Any, count: int, device: torch.device, keys=(*MODEL_INPUTS, "labels")) -> list:
    """``count`` batches with their model inputs already on ``device`` (what the model alone is timed on)."""
    return list(itertools.islice(_device_batches(loader, device, keys), count))


# ------------------------------------------------------------------------------------------------ inference
#: ``--backend`` name -> factory ``(model_dir, device, precision) -> (run(batch) -> logits, loaded model)``.
#: The exported backends (ONNX, AOTInductor) live in ``mmcls.deploy`` and are added by the CLI's backend table.
def torch_backend(model_dir: str | Path, device: torch.device, precision: str):
    """The eager PyTorch model of a model folder, run under ``precision`` autocast."""
    from mmcls.models import load_model_dir

    try:
        from mmcls.engine.inference import autocast, cast_for_inference
    except ImportError:  # an older checkout (benchmarks/before_after.py): autocast only, as it did
        from mmcls.engine.inference import autocast

        def cast_for_inference(
            model: torch.nn.Module, device: torch.device, precision: str
        ) -> torch.nn.Module:
            return model

    loaded = load_model_dir(model_dir, device=device)
    cast_for_inference(loaded.model, device, precision)

    @torch.no_grad()
    def run(batch: dict[str, Any]) -> torch.Tensor:
        with autocast(device, precision):
            return loaded.model(**{k: batch[k] for k in MODEL_INPUTS})[LOGITS]

    return run, loaded


def bench_infer(
    model_dir: str | Path, data_root: str | Path, opts: BenchOptions, backend: Callable = torch_backend
) -> dict[str, Any]:
    """``model_videos_per_s``, ``loader_videos_per_s``, ``e2e_videos_per_s`` and ``peak_memory_gib``."""
    from mmcls.data.builders import build_eval_loader

    device = _device(opts.device)
    run, loaded = backend(model_dir, device, opts.precision)
    # Passed only when set: benchmarks/before_after.py runs this against checkouts whose build_dataset lacks it.
    extra = {"frame_decoder": opts.frame_decoder} if opts.frame_decoder != "pil" else {}
    if extra:
        from mmcls.engine.distributed import check_frame_decoder

        check_frame_decoder(opts.frame_decoder, device, setting="--frame-decoder")
    dataset, pad_id = _dataset(
        loaded.config, data_root, opts, train=False, tokenizer=loaded.tokenizer, **extra
    )

    def make_loader():
        return build_eval_loader(dataset, opts.batch_size, opts.workers, pad_id)

    ready = _ready_batches(make_loader(), opts.batches, device, MODEL_INPUTS)
    videos = sum(len(b["index"]) for b in ready)
    model_s = median_time(lambda: [run(b) for b in ready], opts.repeats, opts.warmup, device, opts.clock)
    e2e_rates = [_predict_rate(run, make_loader(), device) for _ in range(opts.warmup + opts.repeats)]
    return {
        "model_videos_per_s": videos / model_s,
        "loader_videos_per_s": _loader_rate(make_loader, opts)[0],
        "e2e_videos_per_s": statistics.median(e2e_rates[opts.warmup :]),
        "peak_memory_gib": peak_memory_gib(device),
    }


def _predict_rate(run: Callable, loader: Any, device: torch.device) -> float:
    """Videos/s of ``mmcls predict``'s loop (device prefetch, forward, softmax to the host) over one pass of
    ``loader``, timed from its first batch (worker start-up is warm-up, as in :func:`_loader_rate`)."""
    start, videos = None, 0
    for batch in _device_batches(loader, device):
        run(batch).float().softmax(dim=-1).cpu()
        if start is None:
            start = time.perf_counter()
        else:
            videos += len(batch["index"])
    return videos / (time.perf_counter() - start) if videos and start is not None else float("nan")


def _device_batches(loader: Any, device: torch.device, keys=MODEL_INPUTS) -> Iterator[dict[str, Any]]:
    try:
        from mmcls.engine.prefetch import DevicePrefetcher
    except ImportError:  # an older checkout (benchmarks/before_after.py): per-batch copies, as it did
        return ({**b, **{k: b[k].to(device) for k in keys}} for b in loader)
    return iter(DevicePrefetcher(loader, device, keys))


# ------------------------------------------------------------------------------------------------ training
def bench_train(cfg: Any, data_root: str | Path, opts: BenchOptions) -> dict[str, Any]:
    """``model_videos_per_s`` (optimizer steps on ready batches), ``e2e_videos_per_s`` (the training loop's
    data path and steps together), ``peak_memory_gib`` and, on CUDA, ``mfu``."""
    from mmcls.engine.trainer import Trainer

    device = _device(opts.device)
    cfg = cfg.copy()
    tcfg = cfg.train
    tcfg.device, tcfg.precision, tcfg.batch_size = opts.device, opts.precision, opts.batch_size
    tcfg.progress_bar = tcfg.tensorboard = False
    tcfg.checkpoint_every_steps = 10**9
    tcfg.epochs = 10**6  # keeps the LR schedule in its warm-up: every timed step is an ordinary step
    cfg.data.num_workers = opts.workers
    cfg.data.val_fraction = 0.0
    cfg.data.train_split = opts.split
    cfg.data.limit_train = opts.batch_size * (opts.batches + 1) * tcfg.grad_accum_steps
    with tempfile.TemporaryDirectory(prefix="mmcls-bench-") as run_dir:
        trainer = Trainer(cfg, data_root, run_dir)
        ready = _ready_batches(_train_loader(trainer), opts.batches * tcfg.grad_accum_steps, device)
        steps = [ready[i : i + tcfg.grad_accum_steps] for i in range(0, len(ready), tcfg.grad_accum_steps)]
        videos = sum(len(b["index"]) for b in ready)
        step_s = median_time(
            lambda: [trainer.train_step(s) for s in steps], opts.repeats, opts.warmup, device, opts.clock
        )
        e2e_rates = [_train_rate(trainer, device) for _ in range(opts.warmup + opts.repeats)]
        result: dict[str, Any] = {
            "model_videos_per_s": videos / step_s,
            "e2e_videos_per_s": statistics.median(e2e_rates[opts.warmup :]),
            "peak_memory_gib": peak_memory_gib(device),
        }
        if device.type == "cuda":
            flops = train_step_flops(trainer, steps[0])
            peak_tflops = opts.peak_tflops or _peak_tflops(device)  # None: a GPU missing from PEAK_TFLOPS
            peak = peak_tflops * 1e12 if peak_tflops else None
            result.update(
                flops_per_video=flops / videos * len(steps),
                mfu=flops * len(steps) / step_s / peak if peak else None,
                peak_tflops=peak / 1e12 if peak else None,
            )
    return result


def _train_loader(trainer: Any) -> Any:
    from mmcls.data.builders import build_loader

    workers, batch = trainer.cfg.data.num_workers, trainer.local_batch
    return build_loader(trainer.train_set, batch, None, workers, trainer.pad_id, drop_last=True)


def _train_rate(trainer: Any, device: torch.device) -> float:
    """Videos/s of the training loop over one pass of a fresh loader: device prefetch, then
    ``Trainer.train_step`` per step; timed from the end of the first step (worker start-up is warm-up)."""
    accum = trainer.cfg.train.grad_accum_steps
    batches = _device_batches(_train_loader(trainer), device, (*MODEL_INPUTS, "labels"))
    start, videos, micro = None, 0, []
    for batch in batches:
        micro.append(batch)
        if len(micro) < accum:
            continue
        trainer.train_step(micro)
        if start is None:
            _synchronize(device)
            start = time.perf_counter()
        else:
            videos += sum(len(b["index"]) for b in micro)
        micro = []
    _synchronize(device)
    return videos / (time.perf_counter() - start) if videos and start is not None else float("nan")


def train_step_flops(trainer: Any, micro_batches: list[dict[str, Any]]) -> float:
    """FLOPs of the forward+backward passes of one step (the optimizer update is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmcls.engine.inference import autocast

    counter = FlopCounterMode(display=False)
    with counter:
        for batch in micro_batches:
            with autocast(trainer.device, trainer.cfg.train.precision):
                loss, _ = trainer.task(batch)
            loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _peak_tflops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


# ------------------------------------------------------------------------------------------------ compare
def bench_compare(models: list[tuple[str, str]], data_root: str | Path, opts: BenchOptions) -> list[dict]:
    """``bench infer --compare``: :func:`bench_infer` of each ``(model path, "module:factory")``, side by side,
    plus ``agreement``: the share of the split's videos whose label equals the first model's.

    Each model is measured in a fresh process of its own, one after the other, so ``peak_memory_gib`` is that
    model's peak, not the largest so far (the CPU figure is the process's peak resident set size).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rows, first = [], None
    for path, factory in models:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result, labels = pool.submit(_compare_one, str(path), factory, str(data_root), opts).result()
        first = labels if first is None else first
        same = len(labels) == len(first)
        result["agreement"] = float(np.mean(labels == first)) if same else float("nan")
        rows.append({"model": str(path), **result})
    return rows


def _compare_one(path: str, factory: str, data_root: str, opts: BenchOptions) -> tuple[dict, np.ndarray]:
    """One row of :func:`bench_compare` (in its own process): the figures, then the labels of the split."""
    import importlib

    from mmcls.data.builders import build_eval_loader

    module, _, name = factory.partition(":")
    backend = getattr(importlib.import_module(module), name)
    made: dict[str, Any] = {}

    def keep(model_dir: str | Path, device: torch.device, precision: str):
        made["run"], made["loaded"] = backend(model_dir, device, precision)
        return made["run"], made["loaded"]

    result = bench_infer(path, data_root, opts, backend=keep)
    loaded, device = made["loaded"], _device(opts.device)
    dataset, pad_id = _dataset(loaded.config, data_root, opts, train=False, tokenizer=loaded.tokenizer)
    loader = build_eval_loader(dataset, opts.batch_size, opts.workers, pad_id)
    indices, labels = [], []
    for batch in _device_batches(loader, device):
        labels.append(made["run"](batch).argmax(dim=-1).cpu().numpy())
        indices.append(batch["index"].numpy())
    order = np.argsort(np.concatenate(indices), kind="stable")
    return result, np.concatenate(labels)[order]
