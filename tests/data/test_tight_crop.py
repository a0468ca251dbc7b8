"""The tight-crop / low-resolution pair-list builder (``python -m face_rec.data.tight_crop``)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from face_rec.align.detect import Face, FaceDetector
from face_rec.align.run import AlignSettings
from face_rec.data.pairs import load_pairs
from face_rec.data.tight_crop import (
    TightCropSettings,
    build_tight_variants,
    crop_box,
    eval_commands,
)
from face_rec.eval.cli import evaluate_from_config

from ..conftest import REPO

BOX = np.array([40.0, 30.0, 140.0, 150.0])  # FakeBoxDetector's face: 100 x 120 px


class FakeBoxDetector:
    """A confident face at BOX in bright images (mean > 100), none in dark ones."""

    def detect(self, images):
        return [
            Face(BOX.copy(), 0.99, np.zeros((5, 2))) if img.mean() > 100 else None for img in images
        ]


class NeverDetector:
    def __init__(self) -> None:
        raise AssertionError("a complete build must not detect again")


def _lfw_like(root, n_people: int = 3, per: int = 2):
    """An LFW-style folder: images/<Name>/<Name>_NNNN.jpg and View 1 pair lists over them."""
    rng = np.random.default_rng(0)
    names = [f"Person_{k}" for k in range(n_people)]
    for k, name in enumerate(names):
        for i in range(1, per + 1):
            base = 40 if (k, i) == (2, 2) else 160  # one photo without a face
            img = np.clip(rng.normal(base, 20, (200, 180, 3)), 0, 255).astype(np.uint8)
            path = root / "images" / name / f"{name}_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=95)
    bad = root / "images" / names[1] / f"{names[1]}_0002.jpg"
    bad.write_bytes(b"not a jpeg")
    (root / "pairsDevTest.txt").write_text(
        f"2\n{names[0]}\t1\t2\n{names[2]}\t1\t2\n{names[0]}\t1\t{names[1]}\t2\n"
        f"{names[1]}\t1\t{names[2]}\t1\n"
    )
    (root / "pairsDevTrain.txt").write_text(f"1\n{names[1]}\t1\t2\n{names[0]}\t2\t{names[2]}\t1\n")
    return root


def test_crop_box_adds_the_margin_and_clips():
    assert crop_box(BOX, (200, 180), 0.1) == (30, 18, 150, 162)
    assert crop_box(np.array([-5.0, 10, 170, 190]), (200, 180), 0.1) == (0, 0, 180, 200)
    assert crop_box(np.array([50.3, 50.3, 50.4, 50.4]), (100, 100), 0.0) == (50, 50, 51, 51)


def test_builds_both_variants_with_the_lfw_layout(tmp_path):
    lfw = _lfw_like(tmp_path / "lfw")
    out = tmp_path / "out"
    s = TightCropSettings(margin=0.1, low_res=24)
    summary = build_tight_variants(lfw, out, FakeBoxDetector, s, chunk_size=2)
    assert summary["n_images"] == 6
    assert summary["counts"] == {"ok": 4, "fallback": 1, "bad": 1}
    assert summary["bad"][0]["source"] == "Person_1/Person_1_0002.jpg"
    assert "cannot decode" in summary["bad"][0]["reason"]
    with Image.open(out / "tight/images/Person_0/Person_0_0001.jpg") as im:
        assert im.size == (120, 144)  # 100 x 120 box + 10% per side
        original = np.asarray(Image.open(lfw / "images/Person_0/Person_0_0001.jpg"))
        assert np.abs(np.asarray(im).astype(int) - original[18:162, 30:150]).mean() < 4
    with Image.open(out / "lowres/images/Person_0/Person_0_0001.jpg") as im:
        assert min(im.size) == 24 and im.size == (24, 29)
    with Image.open(out / "tight/images/Person_2/Person_2_0002.jpg") as im:  # no face: centre
        side = 0.56 * 180
        assert abs(im.size[0] - side * 1.2) <= 2
    assert not (out / "tight/images/Person_1/Person_1_0002.jpg").exists()
    for variant in ("tight", "lowres"):
        for name in ("pairsDevTest.txt", "pairsDevTrain.txt"):
            assert (out / variant / name).read_bytes() == (lfw / name).read_bytes()
        pairs = load_pairs(out / variant / "pairsDevTest.txt", out / variant / "images")
        present = [(out / variant / "images" / p).is_file() for p in pairs.images]
        assert sum(present) == len(pairs.images) - 1  # all but the unreadable one
    assert not (out / ".parts").exists()
    cmds = eval_commands(out)
    assert f"image_root={out}/tight/images" in cmds[0] and "calibration_pairs=" in cmds[0]
    # complete: a second run is free
    assert build_tight_variants(lfw, out, NeverDetector, s, chunk_size=2)["key"] == summary["key"]


def test_an_interrupted_build_resumes_and_new_settings_start_over(tmp_path):
    lfw = _lfw_like(tmp_path / "lfw")
    out = tmp_path / "out"

    class Dies(FakeBoxDetector):
        calls = 0

        def detect(self, images):
            Dies.calls += 1
            if Dies.calls > 1:
                raise KeyboardInterrupt("killed")
            return super().detect(images)

    with pytest.raises(KeyboardInterrupt):
        build_tight_variants(lfw, out, Dies, chunk_size=2)
    assert (
        not (out / "tight_crop.json").exists() and len(list((out / ".parts").glob("*.json"))) == 1
    )
    calls = []

    class Counting(FakeBoxDetector):
        def detect(self, images):
            calls.append(len(images))
            return super().detect(images)

    summary = build_tight_variants(lfw, out, Counting, chunk_size=2)
    assert sum(calls) == 3 and summary["counts"]["ok"] == 4  # chunk 1 not redone; 1 bad image
    wider = build_tight_variants(lfw, out, FakeBoxDetector, TightCropSettings(margin=0.3))
    assert wider["key"] != summary["key"]
    with Image.open(out / "tight/images/Person_0/Person_0_0001.jpg") as im:
        assert im.size == (160, 186)  # 30% of 120 above the box is clipped at the top


def test_the_summary_holds_absolute_paths(tmp_path, monkeypatch):
    _lfw_like(tmp_path / "lfw")
    monkeypatch.chdir(tmp_path)
    summary = build_tight_variants("lfw", "out", FakeBoxDetector, chunk_size=2)
    on_disk = read_summary_json(tmp_path / "out")
    assert on_disk == summary
    assert summary["lfw_root"] == str(tmp_path / "lfw")
    for v in ("tight", "lowres"):
        assert summary["variants"][v]["image_root"] == str(tmp_path / "out" / v / "images")
        assert summary["variants"][v]["pairs"][0] == str(tmp_path / "out" / v / "pairsDevTest.txt")
    monkeypatch.chdir(tmp_path / "lfw")  # read from elsewhere: the paths still hold
    assert all(Path(p).is_file() for p in summary["variants"]["tight"]["pairs"])


def test_the_key_follows_what_shapes_the_crops_only(tmp_path, monkeypatch):
    """Rebuilt for: the detector's settings, the alignment's detection settings, ALIGN_VERSION
    (the detection code), a source image's contents. Not for: the warp's border, crop size or
    fallback fraction, the detector's device (the builder only detects and cuts), nor a source
    image's modification time alone (a fresh copy of the same data)."""
    import face_rec.data.tight_crop as tc

    lfw = _lfw_like(tmp_path / "lfw")
    out = tmp_path / "out"
    det = {"min_face_size": 40, "device": "cpu"}
    first = build_tight_variants(lfw, out, FakeBoxDetector, detector_settings=det)
    same = (
        {"align": AlignSettings(border="reflect", size=96, fallback_face_fraction=0.3)},
        {"detector_settings": {**det, "device": "cuda"}},
    )
    for kw in same:
        kw = {"detector_settings": det, **kw}
        assert build_tight_variants(lfw, out, NeverDetector, **kw)["key"] == first["key"]
    keys = {first["key"]}
    for kw in (
        {"detector_settings": {**det, "min_face_size": 20}},
        {"align": AlignSettings(max_detect_side=512)},
        {"align": AlignSettings(retry_pad=0.5)},
        {"align": AlignSettings(batch_size=4)},
    ):
        kw = {"detector_settings": det, **kw}
        keys.add(build_tight_variants(lfw, out, FakeBoxDetector, **kw)["key"])
    assert len(keys) == 5
    base = build_tight_variants(lfw, out, FakeBoxDetector, detector_settings=det)
    monkeypatch.setattr(tc, "ALIGN_VERSION", tc.ALIGN_VERSION + 1)
    bumped = build_tight_variants(lfw, out, FakeBoxDetector, detector_settings=det)
    assert bumped["key"] != base["key"] and bumped["align_version"] == tc.ALIGN_VERSION
    src = lfw / "images" / "Person_0" / "Person_0_0001.jpg"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # copied again
    touched = build_tight_variants(lfw, out, NeverDetector, detector_settings=det)
    assert touched["key"] == bumped["key"]
    src.write_bytes(src.read_bytes() + b"\0")  # other bytes (JPEG ignores the tail)
    changed = build_tight_variants(lfw, out, FakeBoxDetector, detector_settings=det)
    assert changed["key"] != bumped["key"]
    assert set(touched["detection"]) == {
        "batch_size",
        "max_detect_side",
        "retry_upscale",
        "retry_pad",
        "retry_border",
    }  # the warp's border, size and fallback fraction are not the builder's


def test_a_new_build_removes_the_old_lists_before_any_image(tmp_path):
    """Other settings: the earlier build's pair lists, manifest and summary are gone before the
    first image is rewritten, so a val= run never reads a mix of the two builds."""
    lfw = _lfw_like(tmp_path / "lfw")
    out = tmp_path / "out"
    build_tight_variants(lfw, out, FakeBoxDetector, chunk_size=2)
    old = [
        out / v / n for v in ("tight", "lowres") for n in ("pairsDevTest.txt", "pairsDevTrain.txt")
    ]
    old += [out / "manifest.csv", out / "tight_crop.json"]
    assert all(p.is_file() for p in old)
    image = out / "tight/images/Person_0/Person_0_0001.jpg"
    stamp = image.stat().st_mtime_ns
    seen = []

    class Checking(FakeBoxDetector):
        def detect(self, images):
            seen.append([p.exists() for p in old] + [image.stat().st_mtime_ns != stamp])
            return super().detect(images)

    build_tight_variants(lfw, out, Checking, TightCropSettings(margin=0.3), chunk_size=2)
    assert seen[0] == [False] * (len(old) + 1)  # nothing of the old build left, no image yet
    assert all(p.is_file() for p in old)  # the new build's


def test_images_are_fsynced_before_their_part_not_os_sync(tmp_path, monkeypatch):
    import face_rec.data.tight_crop as tc

    lfw = _lfw_like(tmp_path / "lfw")
    out = tmp_path / "out"
    synced: list[tuple[Path, int]] = []

    def record(path):
        synced.append((Path(path), len(list((out / ".parts").glob("*.json")))))

    def no_sync():
        raise AssertionError("os.sync flushes every file system of the machine")

    monkeypatch.setattr(tc, "fsync", record)
    monkeypatch.setattr(os, "sync", no_sync)
    build_tight_variants(lfw, out, FakeBoxDetector, chunk_size=2)
    sources = sorted(str(p.relative_to(lfw / "images")) for p in (lfw / "images").rglob("*.jpg"))
    images = {p: n for p, n in synced if p.suffix == ".jpg"}
    for v in ("tight", "lowres"):
        for k, src in enumerate(sources):
            path = out / v / "images" / src
            if path.exists():  # the unreadable image has none
                assert images[path] == k // 2  # before its chunk's part was written
    folders = {p for p, _ in synced if p.suffix != ".jpg"}
    assert {out / "tight/images/Person_0", out / "tight/images", out / "tight", out} <= folders


def test_the_builder_writes_where_val_lfw_tight_reads(tmp_path):
    """One location: data.tight_dir (conf/data/lfw.yaml) is the builder's default output and
    what conf/val/lfw_tight.yaml reads."""
    from face_rec.data.tight_crop import build_from_overrides

    _lfw_like(tmp_path / "data" / "lfw")
    overrides = [f"paths.data_dir={tmp_path / 'data'}", f"paths.pack_dir={tmp_path / 'packs'}"]
    summary = build_from_overrides(["data=lfw", *overrides, "align.detector.device=cpu"])
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("train", overrides=["val=lfw_tight", *overrides])
    for name, variant in (("lfw_tight", "tight"), ("lfw_lowres", "lowres")):
        entry = cfg.val.sets[name]
        assert entry.pairs == summary["variants"][variant]["pairs"][0]
        assert entry.calibration_pairs == summary["variants"][variant]["pairs"][1]
        assert entry.image_root == summary["variants"][variant]["image_root"]
        assert "python -m face_rec.data.tight_crop data=lfw" in entry.build
    assert cfg.data.tight_dir == str(tmp_path / "packs" / "lfw_tight")


def test_a_missing_pair_list_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairsDevTest.txt"):
        build_tight_variants(tmp_path, tmp_path / "out", FakeBoxDetector)


@pytest.mark.realdata
def test_real_lfw_pairs(lfw_root, tmp_path):
    """A few real View 1 pairs: tight crops around the detected face and a 24 px variant, both
    first-class pair lists for eval_lfw.py."""
    lfw = tmp_path / "lfw"
    lfw.mkdir()
    (lfw / "images").symlink_to(lfw_root / "images")
    for name in ("pairsDevTest.txt", "pairsDevTrain.txt"):
        lines = (lfw_root / name).read_text().splitlines()
        n = int(lines[0])
        (lfw / name).write_text("\n".join(["2", *lines[1:3], *lines[n + 1 : n + 3]]) + "\n")
    make = functools.partial(FaceDetector, min_face_size=40, device="cpu")
    out = tmp_path / "packs" / "lfw_tight"  # where the command puts it: beside the packs
    summary = build_tight_variants(lfw, out, make)
    assert summary["counts"]["bad"] == 0 and summary["counts"]["ok"] >= summary["n_images"] - 1
    tight = out / "tight" / "images"
    pairs = load_pairs(out / "tight/pairsDevTest.txt", tight)
    sizes = [Image.open(tight / p).size for p in pairs.images]
    assert all(60 < w < 200 and 60 < h < 220 for w, h in sizes), sizes
    lowres = out / "lowres" / "images"
    assert all(min(Image.open(lowres / p).size) == 24 for p in pairs.images)
    # eval_lfw.py scores both variants (threshold from their DevTrain copy); the alignment finds
    # every face, and the crops of these tight sources lie partly outside them (reported)
    for variant in ("tight", "lowres"):
        base = out / variant
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose(
                "eval_lfw",
                overrides=[
                    f"pairs={base}/pairsDevTest.txt",
                    f"image_root={base}/images",
                    f"calibration_pairs={base}/pairsDevTrain.txt",
                    f"eval.cache_dir={tmp_path}/cache",
                    f"paths.pack_dir={tmp_path}/packs",
                    "model=mobilefacenet",
                    "model.input_size=64",
                    "eval.n_bootstrap=10",
                    "eval.device=cpu",
                    "align.workers=0",
                ],
            )
        m = evaluate_from_config(cfg, tmp_path / f"eval_{variant}")
        assert m["n_scored"] == m["n_pairs"] == 4 and m["n_pairs_with_fallback"] == 0
        written = json.loads((tmp_path / f"eval_{variant}" / "metrics.json").read_text())
        block = written["outside_fraction"]
        assert block["n_known"] == len(pairs.images) and block["median"] > 0.05, block


def test_the_command_composes_the_alignment_config(tmp_path, capsys):
    """``python -m face_rec.data.tight_crop data=lfw paths.data_dir=...``: the detector and the
    output folder come from the Hydra config (``${paths.pack_dir}/lfw_tight``)."""
    from face_rec.data.tight_crop import main

    _lfw_like(tmp_path / "data" / "lfw")
    main(
        [
            "data=lfw",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.pack_dir={tmp_path / 'packs'}",
            "align.detector.device=cpu",
            "--low-res",
            "20",
        ]
    )
    out = tmp_path / "packs" / "lfw_tight"
    summary = read_summary_json(out)
    assert summary["detector"]["min_face_size"] == 40  # data=lfw's
    assert (
        summary["settings"]["low_res"] == 20
        and summary["settings"]["fallback_face_fraction"] == 0.56
    )
    assert summary["counts"]["bad"] == 1
    printed = capsys.readouterr().out
    assert f"pairs={out}/tight/pairsDevTest.txt" in printed


def read_summary_json(folder):
    return json.loads((folder / "tight_crop.json").read_text())
