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
