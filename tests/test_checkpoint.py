import pickle

import pytest
import torch

from mmcls.engine.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def test_save_keeps_last_k_and_latest_is_newest(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000015.pt", "step-00000020.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 20 and torch.equal(state["w"], torch.full((2,), 20.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_leftover_temporary_file_of_a_killed_write_is_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    leftover = folder / ".tmp-abc123.pt"
    leftover.write_bytes(b"half a checkpoint")
    assert latest_checkpoint(tmp_path) is None  # never mistaken for a checkpoint
    save_checkpoint(tmp_path, 1, {"step": 1}, keep_last=2)
    assert not leftover.exists()
    assert [p.name for p in folder.iterdir()] == ["step-00000001.pt"]


class Payload:
    """Stands for any object a malicious checkpoint could smuggle in through pickle."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickle_bearing_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="plain.pt"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(1000)}, keep_last=1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=path.name):
        load_checkpoint(path)
