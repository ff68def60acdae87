"""Command-line options that several commands share, defined once so their names and help stay the same."""

from __future__ import annotations

import argparse
from pathlib import Path


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
        choices=["pil", "cuda"],
        help="JPEG frames decoded by the DataLoader workers (pil, default) or on the GPU in batches (cuda: "
        "nvJPEG, for when the CPU cores cannot keep up; needs --device cuda)",
    )
