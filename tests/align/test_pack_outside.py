"""The alignment job records each crop's outside fraction, summarises it, warns on tight sets,
and makes the border mode part of the pack's settings and resume key."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from face_rec.align.run import AlignSettings, run_alignment
from face_rec.align.warp import ARCFACE_TEMPLATE_112, alignment_matrix, outside_fraction
from face_rec.data.pack import (
    LATER_COLUMNS,
    MANIFEST_COLUMNS,
    TIGHT_OVER,
    outside_fractions,
    outside_stats,
    read_manifest,
    tight_crop_warning,
)

from .test_run import FakeDetector, _interrupting, _write

LANDMARKS = ARCFACE_TEMPLATE_112 * 1.5 + 20  # what FakeDetector finds: spans source 20..188


def _set(root, side: int, n: int = 6, seed: int = 0):
    """``n`` bright 'faces' in ``side`` px images: wide at 240 px (crop inside), tight at 120."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(rng.normal(160, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        _write(root / f"id{i % 2}" / f"img{i}.png", img)
    return root


def _brute_outside(side: int) -> float:
    """Per-pixel loop, independent of the implementation: LANDMARKS are the template x 1.5 +
    20, so crop pixel (i, j) samples the source at (1.5 j + 20, 1.5 i + 20); it is outside a
    ``side`` px image beyond its pixel centres 0 .. side - 1."""
    n = 0
    for i in range(112):
        for j in range(112):
            x, y = 1.5 * j + 20, 1.5 * i + 20
            n += not (0 <= x <= side - 1 and 0 <= y <= side - 1)
    return n / 112**2


def test_manifest_records_the_exact_outside_fraction(tmp_path):
    # 121 px: no sample lies within 0.5 px of the last pixel centre (x = 119.0 at 120 px would,
    # and the manifest's 3-decimal landmarks may put it a hair on either side)
    root = _set(tmp_path / "in", 121)
    run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    expected = _brute_outside(121)
    assert expected == pytest.approx(1 - (67 / 112) ** 2)  # columns and rows 0..66 inside
    np.testing.assert_allclose(outside_fractions(rows), expected, atol=1e-6)


def _brute_fallback_outside(h: int, w: int) -> float:
    """Per-pixel loop over the fallback crop of the whole shorter side (fraction 1), from its
    geometry: the centred square's outer edges map onto the crop's, so crop pixel (i, j)
    samples ((w - h) / 2 - 0.5 + (j + 0.5) h / 112, -0.5 + (i + 0.5) h / 112) when h <= w."""
    n = 0
    for i in range(112):
        for j in range(112):
            x = (w - h) / 2 - 0.5 + (j + 0.5) * h / 112
            y = -0.5 + (i + 0.5) * h / 112
            n += not (0 <= x <= w - 1 and 0 <= y <= h - 1)
    return n / 112**2


def test_fallback_rows_record_their_outside_fraction(tmp_path):
    """No face: the centred fallback crop, whose outside fraction is recorded too. The whole
    shorter side (fallback_face_fraction 1) of a 225 px and a 301 x 503 px photo shrinks through
    box_reduce with ragged edges (225 = 2 x 112 + 1): nothing is outside and the crop has no
    dark rim (1.8% was outside when the ragged row and column were dropped). A 90 px one is
    enlarged: its outer crop pixels sample a little beyond the edge pixel centres."""
    root = tmp_path / "in"
    _write(root / "a" / "dark225.png", np.full((225, 225, 3), 60, np.uint8))
    _write(root / "b" / "dark_wide.png", np.full((301, 503, 3), 70, np.uint8))
    _write(root / "c" / "small.png", np.full((90, 150, 3), 80, np.uint8))
    settings = AlignSettings(fallback_face_fraction=1.0)
    summary = run_alignment(root, tmp_path / "pack", FakeDetector, settings, workers=0)
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    assert [r["status"] for r in rows] == ["fallback"] * 3
    expected = [_brute_fallback_outside(h, w) for h, w in ((225, 225), (301, 503), (90, 150))]
    assert expected[:2] == [0.0, 0.0] and expected[2] == pytest.approx(2 / 112)  # 2 rows
    np.testing.assert_allclose(outside_fractions(rows), expected, atol=1e-6)
    assert summary["outside_fraction"]["n_known"] == 3
    crops = np.load(tmp_path / "pack" / "images.npy")
    assert (crops[0] == 60).all() and (crops[1] == 70).all()


def test_summary_reports_the_distribution_and_warns_on_a_tight_set(tmp_path):
    wide = run_alignment(_set(tmp_path / "wide", 240), tmp_path / "pw", FakeDetector, workers=0)
    assert wide["outside_fraction"]["median"] == 0.0 and wide["warnings"] == []
    tight = run_alignment(_set(tmp_path / "tight", 120), tmp_path / "pt", FakeDetector, workers=0)
    stats = tight["outside_fraction"]
    assert stats["n_known"] == 6 and stats["median"] > 0.3
    assert stats[f"fraction_over_{TIGHT_OVER:g}"] == 1.0
    assert len(tight["warnings"]) == 1 and "tight crops" in tight["warnings"][0]


def test_outside_stats_match_numpy_and_skip_unknown():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 0.3, 200)
    with_unknown = np.r_[values, [np.nan] * 7]
    stats = outside_stats(with_unknown)
    assert stats["n_known"] == 200 and stats["n_unknown"] == 7
    assert stats["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert stats["median"] == pytest.approx(np.median(values), abs=1e-6)
    assert stats["p90"] == pytest.approx(np.percentile(values, 90), abs=1e-6)
    assert stats["fraction_over_0.1"] == pytest.approx((values > 0.1).mean(), abs=1e-6)
    empty = outside_stats(np.full(3, np.nan))
    assert empty["n_known"] == 0 and empty["mean"] is None
    assert tight_crop_warning(empty, "x") is None


@pytest.mark.parametrize(
    "values,warns",
    [
        (np.r_[np.zeros(80), np.full(20, 0.5)], False),  # 20% over 0.1, median 0: a few tight
        (np.r_[np.zeros(70), np.full(30, 0.5)], True),  # 30% over 0.1
        (np.full(100, 0.06), True),  # median 6% outside
        (np.full(100, 0.04), False),
    ],
)
def test_the_tight_crop_warning_thresholds(values, warns):
    assert (tight_crop_warning(outside_stats(values), "set") is not None) == warns


def test_a_pack_made_before_the_columns_existed_is_read_as_unknown(tmp_path):
    old = [c for c in MANIFEST_COLUMNS if c not in LATER_COLUMNS]
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=old)
        w.writeheader()
        w.writerow({c: "" for c in old} | {"source": "a/1.jpg", "label": 0, "image_index": 0})
    rows = read_manifest(path)
    assert rows[0]["outside_fraction"] == "" and rows[0]["detect_retry"] == ""
    assert rows[0]["input_sha256"] == ""  # no digest recorded: the pack is not current
    assert np.isnan(outside_fractions(rows)).all()


def test_border_is_in_the_settings_and_the_resume_key(tmp_path):
    root = _set(tmp_path / "in", 120, n=2)
    first = run_alignment(root, tmp_path / "pack", FakeDetector, workers=0)
    crops_constant = np.load(tmp_path / "pack" / "images.npy")
    assert first["settings"]["border"] == "constant"
    again = run_alignment(root, tmp_path / "pack", _interrupting(0), workers=0)  # no detection
    assert again["key"] == first["key"]
    settings = AlignSettings(border="replicate")
    other = run_alignment(root, tmp_path / "pack", FakeDetector, settings, workers=0)
    assert other["key"] != first["key"] and other["settings"]["border"] == "replicate"
    crops_replicate = np.load(tmp_path / "pack" / "images.npy")
    assert (crops_constant == 0).all(-1).mean() > 0.3  # the black frame of a tight source
    assert (crops_replicate == 0).all(-1).mean() == 0.0
    resumed = run_alignment(root, tmp_path / "pack", _interrupting(0), settings, workers=0)
    assert resumed["key"] == other["key"]


def test_evaluation_reports_the_outside_fraction_of_the_scored_pairs(tmp_path):
    from face_rec.data.pairs import read_csv_pairs
    from face_rec.eval.verification import align_pair_images, scored_outside_fraction

    root = _set(tmp_path / "tight", 120, n=4)  # id0/img0, id1/img1, id0/img2, id1/img3
    _set(tmp_path / "wide", 240, n=2, seed=1)
    for f in (tmp_path / "wide").rglob("*.png"):  # wide photos of two more people
        target = root / f"w{f.parent.name}" / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        f.rename(target)
    (root / "id0" / "broken.png").write_bytes(b"not an image")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "id0/img0.png,id0/img2.png,1\n"  # tight + tight
        "wid0/img0.png,wid1/img1.png,0\n"  # wide + wide
        "id1/img1.png,wid0/img0.png,0\n"  # tight + wide
        "id0/broken.png,id1/img3.png,0\n"  # unscorable
    )
    pairs = read_csv_pairs(csv_path, root)
    images = align_pair_images(pairs, tmp_path / "cache", FakeDetector, workers=0)
    tight = outside_fraction((120, 120), alignment_matrix(LANDMARKS), 112)
    k = {p: i for i, p in enumerate(pairs.images)}
    assert images.outside_fraction[k["id0/img0.png"]] == pytest.approx(tight, abs=1e-6)
    assert images.outside_fraction[k["wid0/img0.png"]] == 0.0
    assert np.isnan(images.outside_fraction[k["id0/broken.png"]])
    scores = np.array([0.5, 0.1, 0.2, np.nan])  # as measure_pairs leaves an unscored pair
    stats = scored_outside_fraction(pairs, images, scores)
    # scored pairs use 5 unique images: id0/img0, id0/img2, id1/img1 (tight), wid0, wid1 (wide)
    assert stats["n_known"] == 5 and stats["n_unknown"] == 0
    assert stats["mean"] == pytest.approx(3 * tight / 5, abs=1e-5)
    assert stats["fraction_over_0.1"] == pytest.approx(0.6)
    assert "tight crops" in stats["warning"]
    images.outside_fraction = None  # a .bin: crops only
    unknown = scored_outside_fraction(pairs, images, scores)
    assert unknown["n_known"] == 0 and unknown["warning"] is None and "note" in unknown


def test_align_py_prints_the_distribution_and_the_warning(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from face_rec.align.cli import align_from_config

    from ..conftest import REPO

    root = tmp_path / "in"
    for i in range(2):  # no face: the fallback crop, the whole (shrunk) photo: nothing outside
        _write(root / f"p{i}" / "a.png", np.full((200, 200, 3), 120, np.uint8))
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose(
            "align",
            overrides=[
                f"input_dir={root}",
                f"output_dir={tmp_path}/pack",
                "align.workers=0",
                "align.detector.device=cpu",
                "align.settings.fallback_face_fraction=1.0",
                "align.settings.border=reflect",
            ],
        )
    summary = align_from_config(cfg)
    out = capsys.readouterr().out
    assert summary["settings"]["border"] == "reflect"
    assert "border-filled, align.settings.border=reflect): mean 0.0%" in out
    assert "WARNING" not in out
