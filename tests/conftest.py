"""Shared fixtures. Real-data tests read FACE_REC_DATA and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    value = os.environ.get("FACE_REC_DATA")
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("FACE_REC_DATA is not set to the shared data folder (lfw/, celeba299/)")
    return root


def _images_root(data_root: Path, name: str) -> Path:
    root = data_root / name
    if not (root / "images").is_dir():
        pytest.skip(f"no {name} images under {root}")
    return root


@pytest.fixture(scope="session")
def lfw_root(data_root: Path) -> Path:
    return _images_root(data_root, "lfw")


@pytest.fixture(scope="session")
def celeba_root(data_root: Path) -> Path:
    return _images_root(data_root, "celeba299")


@pytest.fixture(scope="session")
def detector():
    from face_rec.align.detect import FaceDetector

    return FaceDetector(min_face_size=20, device="cpu")


# tiny synthetic training runs (sweeps, distributed training): overrides of train.py
TINY = [
    "model=mobilefacenet",
    "model.input_size=32",
    "augment.size=32",
    "model.embedding_dim=16",
    "trainer.batch_size=8",
    "trainer.max_steps=3",
    "trainer.checkpoint_every=0",
    "scheduler.warmup_steps=1",
    "trainer.device=cpu",
    "eval.n_bootstrap=10",
    "train_data.sources.lfw.identities=null",
    "train_data.holdout_fraction=0",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 6-identity pack of synthetic images, a 20-pair .bin test list and another 20-pair
    .bin selection list."""
    import numpy as np

    from face_rec.align.run import run_alignment
    from face_rec.data.pairs import write_bin

    from .align.test_run import FakeDetector, _tree

    tmp = tmp_path_factory.mktemp("sweep")
    run_alignment(_tree(tmp / "in", n_ids=6, per_id=4), tmp / "pack", FakeDetector, workers=0)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    write_bin(tmp / "val.bin", crops[:20], crops[20:], np.arange(20) % 2 == 0)
    crops = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    write_bin(tmp / "select.bin", crops[:20], crops[20:], np.arange(20) % 2 == 1)
    return tmp


def tiny_args(tiny) -> list[str]:
    """train.py overrides that point at the ``tiny`` fixture's data."""
    return [
        *TINY,
        f"train_data.sources.lfw.pack_dir={tiny}/pack",
        "val=none",
        f"+val.sets.val.pairs={tiny}/val.bin",
        f"val.select={tiny}/select.bin",
        f"paths.pack_dir={tiny}/packs",
    ]


def checks_later(monkeypatch, seconds: float = 60) -> None:
    """File-stamp checks from now on run ``seconds`` later: the files made now count as settled
    (a file's status-change time cannot be set, so the checks' clock is moved instead)."""
    import time
    from types import SimpleNamespace

    import face_rec.utils.stamps as stamps

    monkeypatch.setattr(
        stamps, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + int(seconds * 10**9))
    )
