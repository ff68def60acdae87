"""A user's files are never destroyed or silently replaced (issue 12, class 1).

Every command that creates a folder refuses a non-empty folder it did not create and leaves it byte-identical;
outputs are written atomically (a failed write leaves the previous file); files get ordinary permissions.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
from pathlib import Path

import pytest

from mmcls.cli import main
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.engine.checkpoint import save_checkpoint
from mmcls.engine.run_dir import start_run_dir
from mmcls.files import RUN_MARKER, atomic_write_text, file_mode
from mmcls.inference.predict import write_submission

from commands import train_args


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: relative path -> (sha256, mode). Equal snapshots = byte-identical trees."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def users_folder(tmp_path) -> Path:
    """A folder with a user's own files, looking like a real data root / run."""
    folder = tmp_path / "mine"
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "labeled.json").write_text('[{"id": "1", "title": "real"}]', encoding="utf-8")
    (folder / "best").mkdir()
    (folder / "best" / "notes.txt").write_text("my notes", encoding="utf-8")
    (folder / "config.yaml").write_text("train: {epochs: 3}\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files") / "data"
    make_synthetic_dataset(root, 40, 4, 8, seed=1, num_frames=2, image_size=32)
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(
    "command",
    [
        ["make-data", "{out}", "--num-labeled", "4", "--num-unlabeled", "1", "--num-test", "2"],
        ["demo", "--out", "{out}", "--num-labeled", "8", "--num-test", "4"],
        ["train", "tiny", "--data-root", "{data}", "--out", "{out}"],
    ],
    ids=["make-data", "demo", "train"],
)
def test_commands_refuse_a_foreign_non_empty_folder_and_leave_it_byte_identical(
    users_folder, data_root, capsys, command
):
    before = snapshot(users_folder)
    args = [a.format(out=users_folder, data=data_root) for a in command]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert str(users_folder) in line and "--overwrite" in line
    assert snapshot(users_folder) == before
    assert sorted(p.name for p in users_folder.iterdir()) == ["annotations", "best", "config.yaml"]


@pytest.mark.parametrize("command", ["make-data", "train", "demo"])
def test_an_existing_file_given_as_an_output_folder_is_one_line(tmp_path, data_root, capsys, command):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    args = {
        "make-data": ["make-data", str(target)],
        "train": ["train", "tiny", "--data-root", str(data_root), "--out", str(target)],
        "demo": ["demo", "--out", str(target)],
    }[command]
    assert main(args) == 2
    assert "not a folder" in one_error_line(capsys)
    assert target.read_text() == "keep me"


def test_make_data_regenerates_its_own_folder_and_overwrite_keeps_other_files(users_folder, tmp_path):
    own = tmp_path / "synthetic"
    make_synthetic_dataset(own, 4, 1, 2, seed=0, num_frames=2, image_size=32)
    make_synthetic_dataset(own, 4, 1, 2, seed=1, num_frames=2, image_size=32)  # ours: allowed again
    make_synthetic_dataset(users_folder, 4, 1, 2, seed=0, num_frames=2, image_size=32, overwrite=True)
    assert (users_folder / "best" / "notes.txt").read_text() == "my notes"  # never deleted


def test_train_refuses_a_run_folder_that_already_holds_a_run(tmp_path, data_root, capsys):
    """A finished run whose checkpoints were deleted is neither retrained over nor resumable."""
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("{}")
    (run / "config.yaml").write_text("{}")
    (run / "best").mkdir()
    (run / "best" / "model.safetensors").write_bytes(b"weights")
    before = snapshot(run)
    for extra in ([], ["--resume"]):
        assert main([*train_args(data_root, run, []), *extra]) == 2
        line = one_error_line(capsys)
        assert str(run) in line and "finished run" in line
        assert snapshot(run) == before


def test_overwrite_replaces_only_mmcls_outputs(tmp_path, data_root):
    from mmcls.config import Config

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_bytes(b"old weights")
    (run / "metrics.csv").write_text("old")
    (run / "my_notes.md").write_text("mine")
    start_run_dir(Config.from_yaml("tiny"), run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER, "config.yaml", "my_notes.md"]
    assert (run / "my_notes.md").read_text() == "mine"


def test_a_failed_write_leaves_the_previous_csv_intact(tmp_path):
    out = tmp_path / "result.csv"
    write_submission(out, ["1", "2"], ["0101", "0102"])
    previous = out.read_bytes()

    def failing_ids():  # the disk fills up (or the process is stopped) half-way through the rows
        yield "3"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_submission(out, failing_ids(), ["0101", "0102"])
    assert out.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]  # no temporary file left behind
    assert list(csv.reader(out.open())) == [["1", "0101"], ["2", "0102"]]


def test_outputs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint = save_checkpoint(tmp_path / "run", 1, {"progress": {}}, keep_last=1)
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert file_mode() == 0o644
    for path in (checkpoint, tmp_path / "a.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
