"""Command-line options that several commands share, defined once so their names and help stay the same."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from mmcls import names


# ------------------------------------------------------------------------------- numeric option types
# Every numeric option of every command declares its range through one of these argparse types, as config
# fields do through ``setting(min=...)``: a bad value is refused at parse time (usage line, exit 2), before a
# model is loaded or a file written.
def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]`` (None: unbounded on that side)."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return parse


def float_range(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'more than' if low_open else 'at least'} {low}, got {value}"
            )
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)  # --batch-size, --repeats, --instances, ...
non_negative_int = int_range(0)  # --num-workers, --warmup, --seed, ...
port = int_range(1, 65535)  # --http-port, --grpc-port, --metrics-port
finite_float = float_range()  # --logit-adjust: any finite number (nan/inf refused)
positive_float = float_range(0.0, low_open=True)  # --timeout, --lr-scale, --peak-tflops
probability = float_range(0.0, 1.0)  # --min-confidence


def logit_adjust_value(text: str) -> float | str:
    """argparse type of ``--logit-adjust`` (predict, export): ``auto`` (the TAU its training run chose on
    validation, saved in the model folder) or a finite number."""
    if text == "auto":
        return text
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a finite number, got {text!r}") from None


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: config overrides, values parsed as YAML."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML); repeatable",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """What a training run takes besides its config: ``--data-root``, ``--out``, ``--set``, ``--resume``,
    ``--overwrite`` (``mmcls train`` and ``mmcls pretrain``, which share the training loop)."""
    parser.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    add_set_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an --out that holds a run or that mmcls did not create "
        "(mmcls's outputs there are replaced, other files kept)",
    )


def add_frame_decoder_option(parser: argparse.ArgumentParser) -> None:
    """``--frame-decoder pil|cuda``: who decodes JPEG frames at inference, whatever the model was trained with."""
    parser.add_argument(
        "--frame-decoder",
        default="pil",
        choices=get_args(names.FrameDecoder),
        help="JPEG frames decoded by the DataLoader workers (pil, default) or on the GPU in batches (cuda: "
        "nvJPEG, for when the CPU cores cannot keep up; needs --device cuda)",
    )


def add_precision_option(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:  # noqa: A002
    """``--precision fp32|bf16|fp16``: the choices of ``train.precision`` (:data:`mmcls.names.Precision`)."""
    parser.add_argument("--precision", default=default, choices=get_args(names.Precision), help=help)


def add_backend_option(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:  # noqa: A002
    """``--backend torch|onnx|aoti|tensorrt``: the inference backends (:data:`mmcls.names.BACKENDS`, the
    names of ``mmcls.deploy.backends``'s records; the core's commands name them without importing deploy)."""
    parser.add_argument("--backend", default=default, choices=names.BACKENDS, help=help)


def add_device_option(parser: argparse.ArgumentParser, *, default: str, help: str, auto: bool = True) -> None:  # noqa: A002
    """``--device``: the choices of ``train.device`` (:data:`mmcls.names.Device`), without ``auto`` if not
    ``auto``."""
    choices = [d for d in get_args(names.Device) if auto or d != "auto"]
    parser.add_argument("--device", default=default, choices=choices, help=help)
