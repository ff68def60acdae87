"""Shared pytest fixtures. Add fixtures here; do not remove others' fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``: real files for tests (vocab, categories, a real video). Skips if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_tokenizer():
    """The packaged bert-base-chinese tokenizer (loaded once per test session)."""
    from mmcls.data.text import load_tokenizer

    return load_tokenizer("builtin:bert-base-chinese")


@pytest.fixture(scope="session")
def jpeg_bytes():
    """``jpeg_bytes(value, size=(48, 32))``: a uniform grey JPEG (``value`` 0-255) of ``size`` (width, height)."""
    import io

    from PIL import Image

    def make(value: int, size: tuple[int, int] = (48, 32)) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, (value, value, value)).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    return make


@pytest.fixture(scope="session")
def write_zip():
    """``write_zip(path, {member: bytes}, compression=ZIP_STORED)``: write a zip (parents created)."""
    import zipfile

    def write(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in members.items():
                zf.writestr(name, data)  # a name ending in "/" makes a directory entry
        return path

    return write


# A user's taxonomy (tests/test_taxonomy.py, the deployment tests): 12 classes under 4 parents, ids that are not
# digits, Chinese names.
PARENTS = {"food": "美食", "sport": "体育", "music": "音乐", "pets": "萌宠"}
CHILDREN = {
    "food": [("food/home", "家常菜"), ("food/bake", "烘焙"), ("food/street", "街头小吃")],
    "sport": [("sport/football", "足球"), ("sport/basket", "篮球"), ("sport/run", "跑步")],
    "music": [("music/pop", "流行"), ("music/folk", "民谣"), ("music/live", "现场")],
    "pets": [("pets/cat", "猫"), ("pets/dog", "狗"), ("pets/fish", "观赏鱼")],
}


def write_two_level(path: Path) -> Path:
    """12 classes under 4 parents; an extra column (``owner``) that must be kept."""
    lines = ["id,name,parent,owner"]
    lines += [f"{pid},{name},,team{i}" for i, (pid, name) in enumerate(PARENTS.items())]
    lines += [f"{cid},{name},{pid},team9" for pid, kids in CHILDREN.items() for cid, name in kids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_level(tmp_path_factory) -> Path:
    return write_two_level(tmp_path_factory.mktemp("taxonomy") / "mine.csv")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """``synthetic_data(num_labeled, num_unlabeled, num_test, **kw)``: a synthetic data root, made once per
    session for each distinct set of arguments (``make_synthetic_dataset``'s). Read it, never change it: copy
    it first (``shutil.copytree``) to damage or extend it."""
    from mmcls.data.synthetic import make_synthetic_dataset

    made: dict[tuple, Path] = {}

    def make(num_labeled: int, num_unlabeled: int, num_test: int, **kw) -> Path:
        key = (num_labeled, num_unlabeled, num_test, *sorted(kw.items()))
        if key not in made:
            root = tmp_path_factory.mktemp("synthetic") / "data"
            make_synthetic_dataset(root, num_labeled, num_unlabeled, num_test, **kw)
            made[key] = root
        return made[key]

    return make


@pytest.fixture
def one_thread():
    """One torch thread for this test (see ``commands.one_torch_thread``)."""
    from commands import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture
def crash_after_step(monkeypatch):
    """``crash_after_step(n)``: the next training run in this process dies right after its optimizer step ``n``
    (a :class:`Crash` out of the loop, before the step's checkpoint and log line): the in-process stand-in
    for ``kill -9``. Nothing is saved on the way out, so a resume starts from the newest periodic checkpoint
    and redoes the steps after it. The real signals are tested on real processes in test_resume.py."""
    import gc

    from mmcls.engine.task import TrainingTask

    from commands import Crash

    original = TrainingTask.after_optimizer_step

    def arm(step: int) -> None:
        def after_optimizer_step(self, global_step: int) -> None:
            original(self, global_step)
            if global_step == step:
                monkeypatch.setattr(TrainingTask, "after_optimizer_step", original)  # once
                raise Crash(f"crashed after step {step}")

        monkeypatch.setattr(TrainingTask, "after_optimizer_step", after_optimizer_step)

    yield arm
    gc.collect()  # the crashed run's DataLoader workers and open files go with its frames


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker (``make test`` runs two), one torch thread: two workers on two cores, each with
    its own intra-op threads, would oversubscribe the cores (the child processes the tests start use one
    thread each already)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
