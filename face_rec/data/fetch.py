"""Fetch public evaluation data into the layout face_rec reads (``python -m face_rec.data.fetch``).

LFW (deep-funneled images, View 1 and View 2 pair lists, people lists) comes from the official
site (University of Massachusetts, Amherst), or from mirrors you name (``--mirror URL``, tried
in order after it). Every file is checked against its published MD5 (the same sums torchvision
uses), downloads resume where they stopped (HTTP Range on a ``.part`` file), and the image archive
is extracted into a temporary folder that is renamed into place only when complete: an
interrupted fetch never leaves a half tree that looks like data. Result::

    <root>/lfw/images/<Name>/<Name>_NNNN.jpg
    <root>/lfw/{pairs,pairsDevTrain,pairsDevTest,people,peopleDevTrain,peopleDevTest}.txt
    <root>/lfw/lfw-names.txt

Other sets: CFP-FP, AgeDB-30, CALFW, CPLFW (insightface ``.bin`` files) and IJB-B/C have no
stable official download; the README says where they come from and which layout face_rec reads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from face_rec.utils.io import fsync

OFFICIAL_LFW = "http://vis-www.cs.umass.edu/lfw/"


@dataclass(frozen=True)
class Remote:
    name: str  #: file name on the server and on disk
    md5: str


LFW_FILES = (
    Remote("lfw-deepfunneled.tgz", "68331da3eb755a505a502b5aacb3c201"),
    Remote("pairs.txt", "9f1ba174e4e1c508ff7cdf10ac338a7d"),
    Remote("pairsDevTrain.txt", "4f27cbf15b2da4a85c1907eb4181ad21"),
    Remote("pairsDevTest.txt", "5132f7440eb68cf58910c8a45a2ac10b"),
    Remote("people.txt", "450f0863dd89e85e73936a6d71a3474b"),
    Remote("peopleDevTrain.txt", "54eaac34beb6d042ed3a7d883e247a21"),
    Remote("peopleDevTest.txt", "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5"),
    Remote("lfw-names.txt", "a6d0a479bd074669f656265a6e693f6d"),
)


class FetchError(RuntimeError):
    """A file could not be fetched or verified; the message says what to do."""


def md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 (a published checksum, not security)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(urls: list[str], dest: Path, expected_md5: str, timeout: float = 30) -> Path:
    """``dest`` from the first of ``urls`` that serves it with the expected MD5; a ``.part``
    file is resumed with an HTTP Range request; renamed onto ``dest`` only when verified."""
    if dest.is_file() and md5(dest) == expected_md5:
        return dest
    part, errors = dest.with_name(dest.name + ".part"), []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        try:
            _get(url, part, timeout)
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        got = md5(part)
        if got == expected_md5:
            fsync(part)
            os.replace(part, dest)
            return dest
        errors.append(f"{url}: MD5 {got}, expected {expected_md5} (discarded)")
        part.unlink()
    raise FetchError(
        f"could not fetch {dest.name}: " + "; ".join(errors) + ". Offline or blocked? Download "
        f"the file by hand into {dest.parent} (it is checked and used), pass --mirror URL, or "
        "point FACE_REC_DATA at a folder that already holds the data."
    )


def _get(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        with open(part, "ab" if have else "wb") as fh:
            shutil.copyfileobj(response, fh, 1 << 20)


def extract_images(archive: Path, images_dir: Path) -> None:
    """The archive's single top folder (``lfw-deepfunneled/``) becomes ``images_dir``,
    atomically: extracted beside it, renamed into place when complete."""
    tmp = images_dir.with_name(images_dir.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise FetchError(f"{archive}: expected one top folder, found {[p.name for p in tops]}")
    os.replace(tops[0], images_dir)
    shutil.rmtree(tmp)


def fetch_lfw(
    root: str | Path, mirrors: tuple[str, ...] = (), files: tuple[Remote, ...] = LFW_FILES
) -> Path:
    """LFW into ``<root>/lfw`` (see the module docstring); returns that folder. Files already
    present and verified are not fetched again; the archive is deleted once extracted."""
    lfw = Path(root) / "lfw"
    bases = [OFFICIAL_LFW, *mirrors]
    for remote in files:
        if remote.name.endswith(".tgz"):
            if (lfw / "images").is_dir():
                continue
            archive = download([b + remote.name for b in bases], lfw / remote.name, remote.md5)
            extract_images(archive, lfw / "images")
            archive.unlink()
        else:
            download([b + remote.name for b in bases], lfw / remote.name, remote.md5)
    return lfw


def main(argv: list[str] | None = None) -> None:
    """``python -m face_rec.data.fetch lfw [--root DIR] [--mirror URL ...]``"""
    ap = argparse.ArgumentParser(
        prog="python -m face_rec.data.fetch",
        description="Download a public evaluation set into FACE_REC_DATA's layout, verified.",
    )
    ap.add_argument("dataset", choices=["lfw"], help="lfw: LFW deep-funneled + pair lists")
    ap.add_argument(
        "--root",
        default=os.environ.get("FACE_REC_DATA", "data"),
        help="datasets root (default: $FACE_REC_DATA, else ./data)",
    )
    ap.add_argument(
        "--mirror", action="append", default=[], help="base URL tried after the official site"
    )
    args = ap.parse_args(argv)
    try:
        where = fetch_lfw(args.root, tuple(args.mirror))
    except FetchError as e:
        sys.exit(f"error: {e}")
    print(f"LFW ready in {where}")


if __name__ == "__main__":
    main()
