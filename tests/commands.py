"""How the tests start mmcls: as a user does (a real child process running ``python -m mmcls``, or two under
``torchrun``) or in-process through the CLI's entry point, with the settings that keep a test run quiet and
small, and what several test modules compare runs with.

The small vocabulary: the tiny preset's model is mostly its 21,128 x 128 word embedding (85% of its weights),
which every optimizer step, EMA update, checkpoint and export carries. Tests that check a mechanism (resume,
distributed training, data errors, exports) train on synthetic data, whose text uses ~2,200 CJK characters:
``tests/assets/small_vocab.txt`` holds exactly those (plus the special tokens and ASCII), so the same real
``BertTokenizer`` reads the same text into the same tokens, with a 7x smaller embedding. Tests of the real
vocabulary use the ``bert_tokenizer`` fixture or the ``tiny`` preset as it is.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from importlib import resources
from pathlib import Path

import pytest
import torch

from mmcls.config import Config
from mmcls.deploy.ports import free_ports

SMALL_VOCAB = Path(__file__).resolve().parent / "assets" / "small_vocab.txt"
# Appended to a config's settings: the real tokenizer class on the small vocabulary file.
SMALL_VOCAB_SETTING = f"data.text.tokenizer={SMALL_VOCAB}"
# No progress bar and no TensorBoard files: nothing a test reads, and both cost time.
QUIET = ("train.progress_bar=false", "train.tensorboard=false")
# One short training on a tiny data root (the workflow, taxonomy and annotation-format tests): one epoch, two
# frames, no workers, quiet.
ONE_EPOCH = (
    "train.epochs=1",
    "train.batch_size=16",
    *QUIET,
    "data.num_workers=0",
    "data.frames.max_frames=2",
)
# Deterministic forward passes: no dropout anywhere in the tiny model.
NO_DROPOUT = (
    "model.dropout=0",
    "model.bert_config.hidden_dropout_prob=0",
    "model.bert_config.attention_probs_dropout_prob=0",
)
# gloo averages gradients as (g0 + g1) / 2 where one process takes the mean over the whole batch: the
# rounding differs, and AdamW carries it through the steps. Measured: max |difference| 7e-6 (DDP) and
# 1.2e-5 (FSDP), while the last of the 2 epochs alone moves them by ~4e-3.
WEIGHT_ATOL = 5e-5
TORCHRUN_TIMEOUT_S = 300


class Crash(Exception):
    """Raised by the ``crash_after_step`` fixture: a run dying in the middle of training."""


def small_vocab_tokens() -> list[str]:
    """The tokens of ``tests/assets/small_vocab.txt`` (rebuilt from the package, to check the file is current).

    bert-base-chinese's special tokens and single ASCII characters, then every character the synthetic data
    writes, in the real vocabulary's order.
    """
    from mmcls.data.synthetic import synthetic_task

    task = synthetic_task()
    used = set(task.filler) | set("".join(task.lv1_keywords)) | set("".join(task.code_keywords))
    vocab = resources.files("mmcls.assets").joinpath("bert_chinese_vocab.txt").read_text(encoding="utf-8")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = [t for t in vocab.split("\n") if (len(t) == 1 and t.isascii() and t.isprintable()) or t in used]
    return special + tokens


def tiny_config(*settings: str, small_vocab: bool = True) -> Config:
    """The ``tiny`` preset with ``settings``, on the small test vocabulary unless ``small_vocab`` is false."""
    return Config.from_yaml("tiny", [*([SMALL_VOCAB_SETTING] if small_vocab else []), *settings])


def mmcls_command(*args: str) -> list[str]:
    """``python -m mmcls ARGS`` with this interpreter (the tested checkout's environment)."""
    return [sys.executable, "-m", "mmcls", *args]


def train_args(
    data_root: Path, run_dir: Path, settings: list[str], config: str = "tiny", small_vocab: bool = True
) -> list[str]:
    """``train CONFIG --data-root ROOT --out RUN_DIR --set S ...`` (without the program), on the small test
    vocabulary unless ``small_vocab`` is false."""
    args = ["train", config, "--data-root", str(data_root), "--out", str(run_dir)]
    for item in [*([SMALL_VOCAB_SETTING] if small_vocab else []), *settings]:
        args += ["--set", item]
    return args


def child_env() -> dict[str, str]:
    """One thread per child (tests run several processes on two cores), offline, no tokenizer threads."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_mmcls(
    *args: str, expect: int | None = 0, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m mmcls ARGS`` in a child process and check its exit code (``expect``; None: no check).

    A wrong exit code fails the test with the command's stdout and stderr shown.
    """
    proc = subprocess.run(
        mmcls_command(*args), capture_output=True, text=True, timeout=timeout, env=env or child_env()
    )
    if expect is not None:
        assert proc.returncode == expect, (
            f"mmcls {' '.join(args)}: exit {proc.returncode}, expected {expect}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def run_main(*args: str, expect: int = 0) -> tuple[str, str]:
    """``mmcls ARGS`` in this process through the CLI's entry point (no interpreter start); its (stdout, stderr).

    What it prints is captured here; its log records go to pytest's ``caplog`` as usual.
    """
    from mmcls.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    assert code == expect, (
        f"mmcls {' '.join(args)}: exit {code}, expected {expect}\n"
        f"--- stdout ---\n{out.getvalue()[-3000:]}\n--- stderr ---\n{err.getvalue()[-6000:]}"
    )
    return out.getvalue(), err.getvalue()


def run_torchrun(
    args: list[str], nproc: int = 2, timeout: float = TORCHRUN_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """``mmcls ARGS`` in ``nproc`` processes under the real ``torchrun`` (c10d rendezvous on a free port, as a
    multi-node launch would use it, one node here); the test fails with stderr shown unless it exits 0."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
    ]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_ports()[0]}"]
    cmd = [*launcher, "-m", "mmcls", *args]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: torchrun runs each worker in its own session and only takes them down itself
        # (SIGTERM, then SIGKILL after its grace period) when it is terminated; killed, it would orphan them.
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n--- stderr ---\n{stderr[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(
            f"exit status {proc.returncode}: {' '.join(cmd)}\n--- stderr ---\n{stderr[-6000:]}"
            f"\n--- stdout ---\n{stdout[-2000:]}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread inside the block, as in the child processes (``OMP_NUM_THREADS=1``): an in-process run
    compared with a child's must use the same thread count (CPU kernels split their sums by thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def random_batch(batch: int = 6, seed: int = 0, with_frames: bool = True) -> dict[str, torch.Tensor]:
    """A training batch for the tiny preset's model (4 frames of 32x32, 16 tokens of the real vocabulary)."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch, 4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return {
        "input_ids": torch.randint(1000, 8000, (batch, 16), generator=gen),
        "attention_mask": torch.ones(batch, 16, dtype=torch.long),
        "frames": frames,
        "frame_mask": torch.full((batch, 4), with_frames),
        "labels": torch.randint(0, 200, (batch,), generator=gen),
    }
