"""Command-line options that several commands share, defined once so their names and help stay the same."""

from __future__ import annotations

import argparse


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


def add_frame_decoder_option(parser: argparse.ArgumentParser) -> None:
    """``--frame-decoder pil|cuda``: who decodes JPEG frames at inference, whatever the model was trained with."""
    parser.add_argument(
        "--frame-decoder",
        default="pil",
        choices=["pil", "cuda"],
        help="JPEG frames decoded by the DataLoader workers (pil, default) or on the GPU in batches (cuda: "
        "nvJPEG, for when the CPU cores cannot keep up; needs --device cuda)",
    )
