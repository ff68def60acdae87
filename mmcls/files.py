"""Safe file handling shared by every command: atomic writes, owned output folders, bounded reads.

Three rules keep a user's files safe:

* **Atomic writes.** Every output file is written to a temporary file in the same folder, flushed to disk and
  renamed over the target, so a crash, a kill or a full disk leaves either the old file or the new one, never
  a truncated mix. The result gets the ordinary permissions the user's umask gives (``0644`` usually), not the
  ``0600`` of ``tempfile.mkstemp``, which would hide models and checkpoints from the rest of a team on a shared
  cluster file system.
* **Owned output folders.** A command that creates a folder (``make-data``, ``train --out``, ``demo --out``)
  writes a small marker file into it (``.mmcls-data``, ``.mmcls-run``, ...). It refuses a non-empty folder that
  lacks its marker unless the user passes ``--overwrite``, and it only ever deletes files it wrote itself.
* **Bounded reads.** Input files are opened only if they are regular files (a symlink to ``/dev/zero`` or a
  FIFO would exhaust memory or hang) and not larger than a cap; the check is made on the open descriptor
  (``fstat``), so the file cannot be swapped between the check and the read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from mmcls.errors import MmclsError

# Marker file names: one per kind of folder a command owns.
DATA_MARKER = ".mmcls-data"
RUN_MARKER = ".mmcls-run"
DEMO_MARKER = ".mmcls-demo"
REPORT_MARKER = ".mmcls-report"


class OutputError(MmclsError, OSError):
    """An output path cannot be used safely (a foreign non-empty folder, a file where a folder should be)."""


class InputFileError(MmclsError, ValueError):
    """An input path is not a regular file or is larger than allowed; ``problem`` is the message without the path."""

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        if problem is None:  # re-created from its message (pickling, DataLoader workers)
            super().__init__(path)
            self.problem = str(path)
            return
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return (type(self), (str(self),), self.__dict__.copy())


# ----------------------------------------------------------------------------------------------- permissions
@lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask can only be read by setting it; done once, before any worker threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new ordinary file under the current umask (``0644`` with the usual ``022``)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions of a new ordinary folder under the current umask (``0755`` with the usual ``022``)."""
    return 0o777 & ~_umask()


# ---------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_writer(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", **kw: Any
) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    On an exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding, **kw) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path, "w", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def same_file(a: str | Path, b: str | Path) -> bool:
    """True if both paths name the same existing file (through symlinks, hard links, ``..``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- owned folders
def is_owned(folder: str | Path, marker: str) -> bool:
    return (Path(folder) / marker).is_file()


def check_output_dir(folder: str | Path, marker: str, *, overwrite: bool = False, hint: str = "") -> bool:
    """Raise unless ``folder`` may be written by the command that owns ``marker``; True if it is ours already.

    Allowed: a path that does not exist yet, an empty folder, a folder holding ``marker``, or any folder with
    ``overwrite``. Refused: an existing file, or a non-empty folder without the marker. Nothing is written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; choose a folder path for the output")
    if not folder.exists():
        return False
    if is_owned(folder, marker):
        return True
    if overwrite or not any(folder.iterdir()):
        return False
    raise OutputError(
        f"{folder}: folder is not empty and was not created by mmcls (no {marker}); choose a new or empty "
        f"folder, or pass --overwrite to write into it anyway{hint}"
    )


def claim_output_dir(folder: str | Path, marker: str, *, overwrite: bool = False, command: str = "") -> bool:
    """:func:`check_output_dir`, then create ``folder`` and write ``marker``; True if it was ours already."""
    folder = Path(folder)
    owned = check_output_dir(folder, marker, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    if not owned:
        # No timestamp: the same command gives byte-identical output (make-data is deterministic by seed).
        atomic_write_json(folder / marker, {"created_by": f"mmcls {command}".strip()})
    return owned


# --------------------------------------------------------------------------------------------- bounded reads
def check_regular_file(path: str | Path, max_bytes: int | None = None, what: str = "file") -> os.stat_result:
    """``os.stat(path)`` if it is a regular file (symlinks followed) of at most ``max_bytes``; else raise.

    FileNotFoundError passes through (callers report missing files their own way).
    """
    info = os.stat(path)
    _check_stat(info, path, max_bytes, what)
    return info


def open_regular(path: str | Path, max_bytes: int | None = None, what: str = "file") -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes`` bytes.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; the type and size are
    then checked on the open descriptor, so what is read is what was checked.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_stat(os.fstat(fd), path, max_bytes, what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_stat(info: os.stat_result, path: str | Path, max_bytes: int | None, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "not a regular file"
        )
        raise InputFileError(path, f"{what} is {kind}, expected a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputFileError(path, f"{what} is {info.st_size} bytes, more than the limit of {max_bytes}")
