"""How the tests start mmcls as a user does: a real child process running ``python -m mmcls``."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def mmcls_command(*args: str) -> list[str]:
    """``python -m mmcls ARGS`` with this interpreter (the tested checkout's environment)."""
    return [sys.executable, "-m", "mmcls", *args]


def train_args(data_root: Path, run_dir: Path, settings: list[str], config: str = "tiny") -> list[str]:
    """``train CONFIG --data-root ROOT --out RUN_DIR --set S ...`` (without the program)."""
    args = ["train", config, "--data-root", str(data_root), "--out", str(run_dir)]
    for item in settings:
        args += ["--set", item]
    return args


def child_env() -> dict[str, str]:
    """One thread per child (tests run several processes on two cores), offline, no tokenizer threads."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (all bound at once, so no repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
