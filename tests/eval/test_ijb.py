"""IJB-B / IJB-C evaluation on hand-built trees: template features, pair scores, TAR@FAR (both
readings) and 1:N figures against naive loops and hand-computed cases, for every switch
combination; resume; bad input; the single-image template == eval_lfw equality."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from face_rec.align.run import AlignSettings, crop_face
from face_rec.align.warp import align_face, center_crop
from face_rec.data.images import load_rgb
from face_rec.eval import ijb, ijb_data
from face_rec.eval import metrics as M
from face_rec.eval.embed import embed_crops
from face_rec.eval.ijb_cli import evaluate_ijb_from_config, sweep_value
from face_rec.eval.ijb_data import (
    MetaFormatError,
    extract_features,
    features_key,
    model_identity,
    read_1n_csv,
    read_meta,
)
from face_rec.models.registry import create_model

from ..conftest import REPO
from .ijb_tree import (
    LANDMARKS,
    OffGridDetector,
    face_image,
    insightface_tar,
    naive_nist,
    naive_templates,
    write_tree,
)

SWITCHES = [
    ijb.TemplateSwitches(flip, norm, weights)
    for flip, norm, weights in itertools.product(
        ("add", "off"), ("keep", "l2"), ("faceness", "none", "quality")
    )
]


def _ids(s):
    return f"{s.flip}-{s.norm}-{s.weights}"


def _small_model(dim=16, size=32, seed=0):
    torch.manual_seed(seed)
    return create_model("mobilefacenet", embedding_dim=dim, input_size=size).eval()


# ----------------------------------------------------------------------------- aggregation


def _aggregation_case(seed=0):
    """12 images, D=8; lines give images to templates and media: several media per template,
    several images per media, an image in two templates, failed images (5, 11), a template
    whose only image failed (50), a line without landmarks (-1)."""
    rng = np.random.default_rng(seed)
    x, xf = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    faceness = rng.uniform(0.2, 1.0, 12)
    ok = np.ones(12, bool)
    ok[[5, 11]] = False
    lines = [  # (template, media, image)
        (10, 1, 0), (10, 1, 1), (10, 1, 2), (10, 2, 3),
        (20, 7, 4), (20, 8, 3),
        (30, 1, 6),
        (40, 3, 7), (40, 3, 8), (40, 4, 9), (40, 4, 11),
        (50, 5, 5),
        (60, 6, 10), (60, 6, -1),
        (70, 1, 0), (70, 2, 2),
    ]  # fmt: skip
    t, m, i = (np.array(c) for c in zip(*lines, strict=True))
    return x, xf, faceness, ok, t, m, i


@pytest.mark.parametrize("switches", SWITCHES, ids=_ids)
@pytest.mark.parametrize("block", [5, 100])
def test_template_features_match_a_naive_loop(switches, block):
    x, xf, faceness, ok, t, m, i = _aggregation_case()
    layout = ijb.template_layout(t, m, i)
    matrix, n_images = ijb.aggregation_matrix(layout, ok)
    weights = ijb.image_weights(faceness, switches)
    feats, norms = ijb.template_features(ijb.array_blocks(x, xf, block), matrix, weights, switches)
    usable = (n_images > 0) & (norms > 0)
    ref = naive_templates(x, xf, faceness, t, m, i, ok, switches)
    assert list(layout.template_ids) == sorted(ref)
    for k, tid in enumerate(layout.template_ids):
        if ref[tid] is None:
            assert not usable[k], tid
        else:
            assert usable[k], tid
            np.testing.assert_allclose(feats[k], ref[tid], atol=1e-12)
    assert not usable[list(layout.template_ids).index(50)]
    assert n_images.tolist() == [4, 2, 1, 3, 0, 1, 2]


def test_a_template_by_hand():
    """D=2. Media 1: images a=[2,0] (faceness .5), b=[0,2] (1); media 2: c=[0,-1] (1), with
    f(flip x) = f(x) / 2. Default: g = 1.5 f(x) x faceness: a [1.5,0], b [0,3], c [0,-1.5];
    media 1 mean [.75,1.5], + media 2 -> [.75, 0] -> [1, 0]. weights=none: a [3,0] -> mean
    [1.5,1.5], + [0,-1.5] -> [1.5, 0] -> [1, 0]. norm=l2, none: [.5,.5] + [0,-1] -> [.5,-.5]."""
    x = np.array([[2.0, 0], [0, 2], [0, -1]])
    layout = ijb.template_layout(np.array([7, 7, 7]), np.array([1, 1, 2]), np.arange(3))
    matrix, _ = ijb.aggregation_matrix(layout, np.ones(3, bool))
    faceness = np.array([0.5, 1, 1])

    def feature(s):
        w = ijb.image_weights(faceness, s)
        return ijb.template_features(ijb.array_blocks(x, x / 2), matrix, w, s)[0][0]

    np.testing.assert_allclose(feature(ijb.TemplateSwitches()), [1, 0], atol=1e-12)
    np.testing.assert_allclose(feature(ijb.TemplateSwitches(weights="none")), [1, 0], atol=1e-12)
    s = ijb.TemplateSwitches(norm="l2", weights="none")
    np.testing.assert_allclose(feature(s), [2**-0.5, -(2**-0.5)], atol=1e-12)
    s = ijb.TemplateSwitches(flip="off", norm="l2")  # .5[1,0] + [0,1] -> mean [.25,.5]; + [0,-1]
    np.testing.assert_allclose(feature(s), np.array([0.25, -0.5]) / np.hypot(0.25, 0.5))


def test_bad_switch_values_are_refused():
    with pytest.raises(ValueError, match="template.norm='raw'.*keep, l2"):
        ijb.TemplateSwitches(norm="raw")
    assert "faceness" in ijb.TemplateSwitches().formula()


# ----------------------------------------------------------------------------- pair scores


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_pair_scores_match_a_naive_loop(dtype, atol):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    usable = rng.random(50) > 0.1
    i1, i2 = rng.integers(-1, 50, 2000), rng.integers(-1, 50, 2000)
    # at most 3 first templates per block: many blocks
    scores = ijb.score_pairs(feats, usable, i1, i2, dtype, block_bytes=3 * 50 * 8)
    for k in range(len(i1)):
        a, b = i1[k], i2[k]
        if a < 0 or b < 0 or not usable[a] or not usable[b]:
            assert np.isnan(scores[k])
        else:
            assert abs(scores[k] - feats[a] @ feats[b]) < atol


# ----------------------------------------------------------------------------- TAR readings


@pytest.mark.parametrize("ties", [False, True])
def test_tar_at_far_nearest_is_insightfaces_reading(ties):
    rng = np.random.default_rng(2)
    labels = rng.random(3000) < 0.2
    scores = rng.normal(labels * 1.5, 1.0)
    if ties:
        scores = np.round(scores, 1)  # long runs of tied scores, both labels
    fpr, tpr, _ = M.roc(scores, labels)
    sk = ijb.sklearn_roc_points(fpr, tpr, int(labels.sum()), int((~labels).sum()))
    for far in (*ijb.IJB_FARS.values(), 3e-3, 0.05, 0.37):
        assert ijb.tar_at_far_nearest(*sk, far) == insightface_tar(labels, scores, far), far


def test_sklearn_roc_points_equal_sklearn():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.5
    scores = np.round(rng.normal(labels, 1.0), 1)
    fpr, tpr, _ = M.roc(scores, labels)
    ours = ijb.sklearn_roc_points(fpr, tpr, int(labels.sum()), int((~labels).sum()))
    ref = roc_curve(labels, scores)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


def test_tar_readings_by_hand():
    """Positives 0.9, 0.7; negatives 0.7, 0.5. ROC: (0,0) (0,.5) (.5,1) (1,1). At FAR .25 the
    points (0,.5) and (.5,1) are equally near: insightface takes the later, TAR 1; the
    interpolated reading is halfway along the diagonal tie segment: .75."""
    scores, labels = np.array([0.9, 0.7, 0.7, 0.5]), np.array([1, 1, 0, 0], bool)
    fpr, tpr, _ = M.roc(scores, labels)
    sk = ijb.sklearn_roc_points(fpr, tpr, 2, 2)
    assert ijb.tar_at_far_nearest(*sk, 0.25) == 1.0 == insightface_tar(labels, scores, 0.25)
    assert ijb.tar_at_far_nearest(*sk, 0.2) == 0.5
    assert ijb.tar_at_far_interpolated(fpr, tpr, 0.25) == pytest.approx(0.75)
    assert ijb.tar_at_far_interpolated(fpr, tpr, 0.5) == 1.0
    assert ijb.tar_at_far_interpolated(fpr, tpr, 0.0) == 0.5  # top of the vertical run at 0
    assert ijb.tar_at_far_interpolated(fpr, tpr, 0.75) == 1.0


def test_interpolated_reading_against_a_dense_polyline():
    rng = np.random.default_rng(4)
    labels = rng.random(400) < 0.3
    scores = np.round(rng.normal(labels, 1.0), 1)
    fpr, tpr, _ = M.roc(scores, labels)
    for far in rng.uniform(0, 1, 50):
        k = int(np.flatnonzero(fpr <= far)[-1])  # the segment k -> k+1 holds far
        t = (far - fpr[k]) / (fpr[k + 1] - fpr[k]) if fpr[k] != far else 0.0
        ref = tpr[k] + t * (tpr[k + 1] - tpr[k])
        assert ijb.tar_at_far_interpolated(fpr, tpr, far) == pytest.approx(ref)


def test_verification_figures_leave_out_unresolvable_fars_and_unscored_pairs():
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(50, bool), np.zeros(500, bool)]
    scores = rng.normal(labels * 2.0, 1.0)
    scores[:5] = np.nan
    fig, curve = ijb.verification_figures(scores, labels)
    assert fig["n_scored"] == 545 and fig["n_positive"] == 45 and fig["n_negative"] == 500
    assert fig["tar_at_far"]["1e-3"] is None and "500 impostor" in fig["tar_at_far_notes"]["1e-3"]
    assert fig["tar_at_far_interpolated"]["1e-2"] is not None
    assert fig["tar_at_far"]["1e-1"] == insightface_tar(labels[5:], scores[5:], 0.1)
    assert fig["auc"] == pytest.approx(M.auc(*M.roc(scores[5:], labels[5:])[:2]))
    assert len(curve["fpr"]) == len(curve["tpr"])


# ----------------------------------------------------------------------------- meta files


def _meta_tree(tmp_path, target="IJBC"):
    names = [f"{k}.jpg" for k in range(4)]
    return write_tree(
        tmp_path / target,
        target,
        {},
        [(n, LANDMARKS, 0.9) for n in names],
        [(n, 1 + k // 2, k) for k, n in enumerate(names)],
        [(1, 2, 0), (1, 1, 1)],
        {"G1": [(1, 100)], "G2": [(2, 200)], "probe": [(1, 100), (2, 200)]},
    )


@pytest.mark.parametrize(
    "suffix,line,text,message",
    [
        ("name_5pts_score.txt", 2, "1.jpg 1 2 3", r"name_5pts_score.txt:2: malformed"),
        ("name_5pts_score.txt", 3, "2.jpg " + "1 " * 10 + "x", r"name_5pts_score.txt:3:"),
        ("name_5pts_score.txt", 1, "0.jpg " + "1 " * 10 + "nan", r"finite faceness"),
        ("face_tid_mid.txt", 2, "1.jpg 1", r"face_tid_mid.txt:2: .*template_id media_id"),
        ("face_tid_mid.txt", 4, "3.jpg two 3", r"face_tid_mid.txt:4:"),
        ("template_pair_label.txt", 2, "1 1 2", r"template_pair_label.txt:2: .*label 0 or 1"),
        ("template_pair_label.txt", 1, "1 x 0", r"template_pair_label.txt:1:"),
        ("template_pair_label.txt", 2, "1 1", r"template_pair_label.txt:2:"),
    ],
)
def test_malformed_meta_lines_name_file_and_line(tmp_path, suffix, line, text, message):
    root = _meta_tree(tmp_path)
    path = root / "meta" / f"ijbc_{suffix}"
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetaFormatError, match=message):
        read_meta(root, "IJBC")


def test_meta_is_read_and_paired(tmp_path):
    root = _meta_tree(tmp_path)
    meta = read_meta(root, "IJBC")
    assert meta.rows.face.tolist() == [0, 1, 2, 3]  # same names, same order: by position
    assert meta.pairs.label.tolist() == [False, True]
    np.testing.assert_allclose(meta.faces.landmarks[0], np.round(LANDMARKS, 3))
    # another order: paired by name; a name without a landmark line gets -1
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("3.jpg 2 3\n9.jpg 2 3\n0.jpg 1 0\n")
    assert read_meta(root, "IJBC").rows.face.tolist() == [3, -1, 0]
    with pytest.raises(FileNotFoundError, match="meta/ folder"):
        read_meta(tmp_path / "nowhere", "IJBC")
    with pytest.raises(ValueError, match="IJBC, IJBB"):
        read_meta(root, "IJBA")


@pytest.mark.parametrize(
    "suffix", ["name_5pts_score.txt", "face_tid_mid.txt", "template_pair_label.txt"]
)
def test_an_empty_meta_file_is_an_error(tmp_path, suffix):
    root = _meta_tree(tmp_path)
    (root / "meta" / f"ijbc_{suffix}").write_text("\n")
    with pytest.raises(MetaFormatError, match=f"ijbc_{suffix}: no lines"):
        read_meta(root, "IJBC")


def test_1n_csv_columns_by_header_and_errors(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("FILENAME,SUBJECT_ID,TEMPLATE_ID\na.jpg,5,10\nb.jpg,5,10\nc.jpg,6,11\n")
    tids, sids = read_1n_csv(path)
    assert tids.tolist() == [10, 11] and sids.tolist() == [5, 6]
    path.write_text("T,S\n1,2\n")
    with pytest.raises(MetaFormatError, match=r"g.csv:1: .*TEMPLATE_ID and SUBJECT_ID"):
        read_1n_csv(path)
    path.write_text("TEMPLATE_ID,SUBJECT_ID\n1,2\n1,x\n")
    with pytest.raises(MetaFormatError, match=r"g.csv:3:"):
        read_1n_csv(path)
    path.write_text("TEMPLATE_ID,SUBJECT_ID\n1,2\n1,3\n")
    with pytest.raises(MetaFormatError, match=r"g.csv:3: template 1 has subject 3 .* line 2"):
        read_1n_csv(path)


def test_1n_csv_with_a_byte_order_mark(tmp_path):
    """A CSV saved by Excel & co. starts with a UTF-8 BOM: the header is still found."""
    path = tmp_path / "g.csv"
    path.write_bytes(b"\xef\xbb\xbfTEMPLATE_ID,SUBJECT_ID,FILENAME\n5,50,a.jpg\n6,60,b.jpg\n")
    ids, subjects = read_1n_csv(path)
    assert ids.tolist() == [5, 6] and subjects.tolist() == [50, 60]


# ----------------------------------------------------------------------------- alignment


def test_crop_is_the_alignment_stages_byte_for_byte(tmp_path):
    """The alignment stage's crop (landmarks to the manifest's 3 decimals, then the warp);
    landmarks given with 3 decimals are warped exactly as given."""
    from face_rec.align.detect import Face
    from face_rec.align.run import manifest_landmarks

    img = face_image(0)
    lm = LANDMARKS + np.random.default_rng(0).normal(0, 2, (5, 2))
    settings = AlignSettings()
    crop, reason = ijb_data.align_ijb_face(img, lm, settings)
    assert reason == ""
    stage, _ = crop_face(img, Face(np.zeros(4), 0.5, lm), settings)
    assert np.array_equal(crop, stage)
    three = manifest_landmarks(lm)  # as read from a file with 3 decimals: warped as given
    assert not np.array_equal(three, lm)
    assert np.array_equal(crop, align_face(img, three, 112))
    assert np.array_equal(ijb_data.align_ijb_face(img, three, settings)[0], crop)
    bad, reason = ijb_data.align_ijb_face(img, np.zeros((5, 2)), settings)
    assert "degenerate" in reason and np.array_equal(bad, center_crop(img, 0.5, 112))


@pytest.mark.skipif(
    "border" not in AlignSettings.__dataclass_fields__, reason="no align.settings.border"
)
def test_the_align_border_setting_reaches_the_warp():
    """A face near the image edge: the crop reads beyond the image, as align.settings.border
    says, exactly as the alignment stage warps it."""
    from face_rec.align.run import manifest_landmarks

    img = face_image(1)
    lm = manifest_landmarks(LANDMARKS - 35)  # 3 decimals, as a meta file gives them
    crops = {}
    for border in ("constant", "replicate"):
        crops[border], _ = ijb_data.align_ijb_face(img, lm, AlignSettings(border=border))
        assert np.array_equal(crops[border], align_face(img, lm, 112, border=border))
    assert not np.array_equal(crops["constant"], crops["replicate"])


def test_the_manifests_landmarks_reproduce_the_packs_crops(tmp_path):
    """A pack's crops are warped from the landmarks its manifest records (3 decimals), so a
    tree built from the manifest (IJB's provided landmarks) gives the pack's crops byte for
    byte; the detector's own points have more decimals (warping from them differed)."""
    from PIL import Image

    from face_rec.align.run import manifest_landmarks, run_alignment
    from face_rec.data.pack import open_images, read_manifest

    for k in range(6):
        (tmp_path / "in" / f"id{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(face_image(20 + k)).save(tmp_path / "in" / f"id{k % 2}" / f"{k}.png")
    run_alignment(tmp_path / "in", tmp_path / "pack", OffGridDetector, workers=0)
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    pack = open_images(tmp_path / "pack")
    assert [r["status"] for r in rows] == ["ok"] * 6
    for r in rows:
        img = load_rgb(tmp_path / "in" / r["source"])
        raw = OffGridDetector.points(img)
        recorded = np.array(r["landmarks"].split(), np.float64).reshape(5, 2)
        crop, reason = ijb_data.align_ijb_face(img, recorded, AlignSettings())
        assert reason == "" and np.array_equal(crop, pack[int(r["image_index"])])
        assert np.array_equal(crop, align_face(img, recorded))
        assert not np.array_equal(raw, recorded)  # the detector's points are off the grid
        assert np.array_equal(manifest_landmarks(raw), recorded)


# ----------------------------------------------------------------------------- extraction


def _image_tree(tmp_path, n=7, target="IJBC", extra_images=None, extra_faces=(), rows=None):
    names = [f"{k}.png" for k in range(n)]
    images = {nm: face_image(k) for k, nm in enumerate(names)} | (extra_images or {})
    faces = [(nm, LANDMARKS, 1.0) for nm in names] + list(extra_faces)
    rows = rows or [(nm, k, k) for k, nm in enumerate(names)]
    pairs = [(a, b, int(a % 2 == b % 2)) for a in range(n) for b in range(a + 1, n)]
    return write_tree(tmp_path / target, target, images, faces, rows, pairs)


def test_extraction_resumes_after_a_kill(tmp_path, monkeypatch):
    root = _image_tree(tmp_path)
    meta = read_meta(root, "IJBC")
    model = _small_model()
    calls = []
    real = ijb_data.embed_crops

    def counting(*args, **kw):
        calls.append(1)
        if kill[0] and len(calls) == 4:  # 1 probe of the size, 2 per chunk: in chunk 2
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kw)

    monkeypatch.setattr(ijb_data, "embed_crops", counting)
    kill = [True]
    args = (model, root / "loose_crop", meta.faces.names, meta.faces.landmarks)
    kw = {"chunk_size": 3, "batch_size": 2, "workers": 1, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        extract_features(*args, tmp_path / "cache", **kw)
    (first,) = (tmp_path / "cache").glob("*/chunk-000000.npz")
    stamp = first.stat().st_mtime_ns
    assert not list((tmp_path / "cache").glob("*/chunk-000001.npz"))
    kill[0], calls[:] = False, []
    store = extract_features(*args, tmp_path / "cache", **kw)
    assert first.stat().st_mtime_ns == stamp
    dim_probe = 1  # one forward pass to learn the feature size, then 2 per remaining chunk
    assert len(calls) == dim_probe + 2 * 2
    calls[:] = []
    again = extract_features(*args, tmp_path / "cache", **kw)
    assert not calls and again.folder == store.folder  # complete: nothing recomputed
    for image in (root / "loose_crop").iterdir():  # the images copied again: new times
        image.write_bytes(image.read_bytes())
    copied = extract_features(*args, tmp_path / "cache", **kw)
    assert not calls and copied.folder == store.folder  # the same contents: still the cache
    fresh = extract_features(*args, tmp_path / "fresh", **kw)
    for (s1, x1, f1), (s2, x2, f2) in zip(store.blocks(), fresh.blocks(), strict=True):
        assert s1 == s2
        np.testing.assert_allclose(x1, x2, atol=1e-6)
        np.testing.assert_allclose(f1, f2, atol=1e-6)
    assert store.ok.all() and store.n == 7
    other = extract_features(_small_model(seed=1), *args[1:], tmp_path / "cache", **kw)
    assert other.folder != store.folder  # another model: another cache entry
    rechunked = extract_features(*args, tmp_path / "cache", **{**kw, "chunk_size": 5})
    assert rechunked.folder != store.folder  # other chunks: never read as these
    np.testing.assert_allclose(
        np.concatenate([b[1] for b in rechunked.blocks()]),
        np.concatenate([b[1] for b in store.blocks()]),
        atol=1e-6,
    )


def test_the_feature_cache_key_follows_what_shapes_the_features(tmp_path):
    """The key changes with the landmarks, the crop settings, the image list, an image file's
    content, the model's weights and input preprocessing; not with a detection-only setting,
    nor with an image's modification time alone (a fresh copy of the same files)."""
    import dataclasses
    import os

    from face_rec.models.preprocess import InputAdapter, Preprocessing
    from face_rec.utils.stamps import file_stamps

    root = _image_tree(tmp_path, 4)
    meta = read_meta(root, "IJBC")
    image_dir, names, lm = root / "loose_crop", meta.faces.names, meta.faces.landmarks
    model = _small_model()
    mid = model_identity(model)
    settings = AlignSettings()

    def key(model_id=mid, names=names, lm=lm, settings=settings, chunk=4):
        stamps = file_stamps(image_dir, names)
        return features_key(model_id, image_dir, names, lm, settings, chunk, stamps)

    base = key()
    assert key() == base  # deterministic
    moved = lm.copy()
    moved[2, 1, 0] += 0.001
    changed = {
        "landmarks": key(lm=moved),
        "border": key(settings=AlignSettings(border="replicate")),
        "size": key(settings=AlignSettings(size=96)),
        "fallback": key(settings=AlignSettings(fallback_face_fraction=0.7)),
        "image list": key(names=names[:3], lm=lm[:3]),
        "image order": key(names=names[::-1], lm=lm[::-1]),
        "chunking": key(chunk=3),
    }
    detection_only = dataclasses.replace(
        settings,
        batch_size=3,
        max_detect_side=500,
        retry_upscale=0.0,
        retry_pad=0.0,
        retry_border="constant",
    )
    assert key(settings=detection_only) == base  # no detection: same features
    path = image_dir / names[1]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # copied again: same bytes
    assert key() == base
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other bytes, the same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old time: only the content
    changed["image content"] = key()
    path.unlink()
    changed["image missing"] = key()
    other = _small_model()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    changed["weights"] = key(model_id=model_identity(other))
    rgb = InputAdapter(_small_model(), Preprocessing("RGB", (127.5,) * 3, (127.5,) * 3))
    bgr = InputAdapter(_small_model(), Preprocessing("BGR", (127.5,) * 3, (127.5,) * 3))
    assert repr(rgb) == repr(bgr)  # the colour order is neither in the repr nor a buffer
    changed["preprocessing"] = key(model_id=model_identity(bgr))
    assert key(model_id=model_identity(rgb)) != changed["preprocessing"]
    for what, value in changed.items():
        assert value != base, what
    assert len(set(changed.values())) == len(changed)


def test_bad_images_are_counted_and_their_pairs_reported(tmp_path):
    """A missing image, a corrupt one (template 8 then has no usable image), a face_tid_mid line
    without landmarks, and a pair with a template that no line lists."""
    extra = {"missing.png": None, "corrupt.png": b"not an image"}
    faces = [("missing.png", LANDMARKS, 1.0), ("corrupt.png", LANDMARKS, 1.0)]
    rows = [(f"{k}.png", k, k) for k in range(4)] + [("missing.png", 3, 9), ("corrupt.png", 8, 8)]
    rows.append(("ghost.png", 2, 5))  # a line without a landmark line
    root = _image_tree(tmp_path, 4, extra_images=extra, extra_faces=faces, rows=rows)
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    pairs.write_text(pairs.read_text() + "0 8 0\n8 1 0\n2 77 1\n")
    m = evaluate_ijb_from_config(_cfg(tmp_path, root), tmp_path / "out")
    images = m["images"]
    assert images["n_faces"] == 6 and images["n_failed"] == 2
    assert images["failed_reasons"] == {"file not found": 1, "cannot decode": 1}
    assert any("missing.png" in e for e in images["failed_examples"])
    assert images["lines_without_landmarks"] == ["ghost.png"]
    v = m["verification"]
    assert v["n_pairs"] == 9 and v["n_scored"] == 6
    assert v["skipped"]["count"] == 3
    assert v["skipped"]["reasons"] == {
        "template not in face_tid_mid": 1,
        "template has no usable image": 2,
    }
    assert v["skipped"]["examples"][0] == {
        "line": 7,
        "t1": 0,
        "t2": 8,
        "reason": "template has no usable image",
    }


# ----------------------------------------------------------------------------- eval_lfw


def test_single_image_templates_score_as_eval_lfw(tmp_path):
    """faceness 1, one image per template: the score is eval_lfw's normalize(f(x) + f(flip x))
    cosine on the same crop; hence the same AUC and TAR@FAR."""
    root = _image_tree(tmp_path, 8)
    meta = read_meta(root, "IJBC")
    model = _small_model(size=112)
    store = extract_features(
        model, root / "loose_crop", meta.faces.names, meta.faces.landmarks, tmp_path / "c",
        chunk_size=5, batch_size=3, workers=1, progress=False,
    )  # fmt: skip
    layout = ijb.template_layout(meta.rows.template, meta.rows.media, meta.rows.face)
    matrix, n_images = ijb.aggregation_matrix(layout, store.ok)
    s = ijb.TemplateSwitches()
    feats, norms = ijb.template_features(store.blocks(), matrix, meta.faces.faceness, s)
    i1, i2 = layout.index_of(meta.pairs.t1), layout.index_of(meta.pairs.t2)
    scores = ijb.score_pairs(feats, (n_images > 0) & (norms > 0), i1, i2)

    crops = np.stack(
        [align_face(load_rgb(root / "loose_crop" / n), LANDMARKS) for n in meta.faces.names]
    )
    emb = embed_crops(model, crops, batch_size=8, flip=True)  # eval_lfw's embedding
    ref = np.einsum("nd,nd->n", emb[i1], emb[i2]).astype(np.float64)
    np.testing.assert_allclose(scores, ref, atol=1e-6)
    labels = meta.pairs.label
    np.testing.assert_array_equal(np.argsort(scores, kind="stable"), np.argsort(ref, kind="stable"))
    ours, _ = ijb.verification_figures(scores, labels)
    theirs, _ = ijb.verification_figures(ref, labels)
    assert ours["auc"] == pytest.approx(theirs["auc"], abs=1e-12)
    assert ours["tar_at_far"] == theirs["tar_at_far"]


# ----------------------------------------------------------------------------- 1:N


def test_identification_against_naive_nist_loops():
    """G1: subjects 1-3, G2: subjects 4-6; probes of all six subjects, one probe of subject 2
    drawn towards subject 3 (a rank-1 miss) and one probe template absent from the layout."""
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(7, 32))
    tids = np.arange(101, 107).tolist() + list(range(201, 225))
    subjects = [1, 2, 3, 4, 5, 6] + [1 + k % 6 for k in range(24)]
    feats = np.stack([centres[s] + rng.normal(0, 0.6, 32) for s in subjects])
    feats[6 + 1] = centres[3] + rng.normal(0, 0.1, 32)  # probe 202 (subject 2) looks like 3
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    layout = ijb.template_layout(np.array(tids), np.zeros(len(tids)), np.arange(len(tids)))
    usable = np.ones(len(tids), bool)
    galleries = {
        "G1": (np.array([101, 102, 103]), np.array([1, 2, 3])),
        "G2": (np.array([104, 105, 106]), np.array([4, 5, 6])),
    }
    probe_t = np.array(tids[6:] + [999])
    probe_s = np.array(subjects[6:] + [1])
    out = ijb.identification_figures(feats, usable, layout, galleries, (probe_t, probe_s))
    assert out["skipped"]["probe"]["not_in_face_tid_mid"] == {"count": 1, "examples": [999]}
    probe = feats[6:]
    for name, offset in (("G1", 0), ("G2", 3)):
        gallery = feats[offset : offset + 3]
        gids = galleries[name][1].tolist()
        rank1, tpir = naive_nist(probe, probe_s[:-1].tolist(), gallery, gids, 0.1)
        assert out[name]["rank1"] == pytest.approx(rank1)
        assert out[name]["tpir_at_fpir"]["1e-1"] == pytest.approx(tpir)
        assert out[name]["n_mated"] == 12 and out[name]["n_nonmated"] == 12
    assert out["G1"]["rank1"] < 1.0  # the drawn probe misses
    for key in ("rank1", "rank5", "rank10"):
        assert out["mean"][key] == pytest.approx((out["G1"][key] + out["G2"][key]) / 2)
    assert out["mean"]["tpir_at_fpir"]["1e-2"] is None  # 12 non-mated searches cannot resolve it
    assert "insightface" in out["merged"]["label"] and out["merged"]["n_probes"] == 24


@pytest.mark.parametrize("switches", SWITCHES, ids=_ids)
def test_the_whole_chain_against_naive_loops(switches):
    """Image features -> templates -> pair scores -> TAR@FAR and 1:N, each step against its
    naive loop: 6 subjects x 6 templates of 1-3 media of 1-3 images, 5% of images unusable;
    every template pair; G1/G2 the first template of subjects 0-2 / 3-5, the rest probes."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(6, 16))
    lines = []  # (template, media, image)
    subject_of = {}
    for t in range(36):
        subject_of[1000 + t] = t % 6
        for m in range(rng.integers(1, 4)):
            for _ in range(rng.integers(1, 4)):
                lines.append((1000 + t, 10 * t + m, len(lines)))
    t_ids, media, images = (np.array(c) for c in zip(*lines, strict=True))
    subj = np.array([subject_of[t] for t in t_ids])
    x = centres[subj] + rng.normal(0, 1.2, (len(lines), 16)) * rng.uniform(0.5, 2, (len(lines), 1))
    xf = x + rng.normal(0, 0.3, x.shape)
    faceness = rng.uniform(0.1, 1.0, len(lines))
    ok = rng.random(len(lines)) > 0.05
    layout = ijb.template_layout(t_ids, media, images)
    matrix, n_images = ijb.aggregation_matrix(layout, ok)
    w = ijb.image_weights(faceness, switches)
    feats, norms = ijb.template_features(ijb.array_blocks(x, xf, 7), matrix, w, switches)
    usable = (n_images > 0) & (norms > 0)
    ref = naive_templates(x, xf, faceness, t_ids, media, images, ok, switches)

    tids = sorted(subject_of)
    a, b = (np.array(c) for c in zip(*itertools.combinations(tids, 2), strict=True))
    labels = np.array([subject_of[i] == subject_of[j] for i, j in zip(a, b, strict=True)])
    scores = ijb.score_pairs(feats, usable, layout.index_of(a), layout.index_of(b))
    naive = np.array(
        [
            np.nan if ref[i] is None or ref[j] is None else ref[i] @ ref[j]
            for i, j in zip(a, b, strict=True)
        ]
    )
    np.testing.assert_allclose(scores, naive, atol=1e-12)
    fig, _ = ijb.verification_figures(scores, labels)
    scored = ~np.isnan(naive)
    for key, far in ijb.IJB_FARS.items():
        if fig["tar_at_far"][key] is not None:
            assert fig["tar_at_far"][key] == insightface_tar(labels[scored], naive[scored], far)

    gallery = {"G1": tids[:3], "G2": tids[3:6]}
    probes = [t for t in tids[6:] if ref[t] is not None]
    galleries = {g: (np.array(v), np.array([subject_of[t] for t in v])) for g, v in gallery.items()}
    probe_ids = np.array([subject_of[t] for t in probes])
    out = ijb.identification_figures(
        feats, usable, layout, galleries, (np.array(probes), probe_ids)
    )
    for g, members in gallery.items():
        ref_g = np.stack([ref[t] for t in members])
        rank1, tpir = naive_nist(
            np.stack([ref[t] for t in probes]), probe_ids.tolist(), ref_g,
            [subject_of[t] for t in members], 0.1,
        )  # fmt: skip
        assert out[g]["rank1"] == pytest.approx(rank1)
        assert out[g]["tpir_at_fpir"]["1e-1"] == pytest.approx(tpir)


# ----------------------------------------------------------------------------- end to end


def _cfg(tmp_path, root, *extra, target="IJBC"):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose(
            "eval_ijb",
            overrides=[
                f"root={root}",
                f"target={target}",
                f"feature_cache={tmp_path}/features",
                "model=mobilefacenet",
                "model.input_size=32",
                "model.embedding_dim=16",
                "eval.device=cpu",
                "eval.batch_size=4",
                "align.workers=1",
                "chunk_size=4",
                *extra,
            ],
        )


@pytest.mark.parametrize("target", ["IJBC", "IJBB"])
def test_cli_writes_the_outputs(tmp_path, target):
    names = [f"{k}.png" for k in range(8)]
    images = {n: face_image(k) for k, n in enumerate(names)}
    faces = [(n, LANDMARKS, 0.5 + k / 20) for k, n in enumerate(names)]
    rows = [(n, 1 + k // 2, k) for k, n in enumerate(names)]  # templates 1-4, 2 media each
    pairs = [(a, b, int(a % 2 == b % 2)) for a in range(1, 5) for b in range(a + 1, 5)]
    one_n = {"G1": [(1, 10)], "G2": [(2, 20)], "probe": [(3, 10), (4, 20)]}
    root = write_tree(tmp_path / target, target, images, faces, rows, pairs, one_n)
    cfg = _cfg(tmp_path, root, "save_scores=true", "template.norm=l2", target=target)
    m = evaluate_ijb_from_config(cfg, tmp_path / "out")
    out = tmp_path / "out"
    for f in ("metrics.json", "roc.png", "roc.csv", "config.yaml", "scores.npy"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "metrics.json").read_text())
    v = saved["verification"]
    assert v["n_templates"] == 4 and v["n_pairs"] == 6 and v["n_scored"] == 6
    assert set(v["tar_at_far"]) == set(ijb.IJB_FARS) == set(v["tar_at_far_interpolated"])
    assert v["skipped"]["count"] == 0 and saved["template"]["norm"] == "l2"
    assert not saved["template"]["insightface_default"]
    scores = np.load(out / "scores.npy")
    assert scores.shape == (6,) and np.isfinite(scores).all()
    ident = saved["identification"]
    assert {"G1", "G2", "mean", "merged"} <= set(ident)
    assert ident["G1"]["n_mated"] == 1 and ident["G1"]["n_nonmated"] == 1
    assert ident["files"]["G1"].endswith("G1.csv" if target == "IJBC" else "S1.csv")
    assert m["verification"]["auc"] == v["auc"]


def test_cli_without_1n_files_says_so(tmp_path):
    root = _image_tree(tmp_path, 3)
    m = evaluate_ijb_from_config(_cfg(tmp_path, root), tmp_path / "out")
    assert "identification" not in m and "not run" in m["identification_note"]
    with pytest.raises(ValueError, match="template.flip=off"):
        evaluate_ijb_from_config(_cfg(tmp_path, root, "eval.flip=false"), tmp_path / "o2")


def test_sweepers_get_a_number(tmp_path, caplog):
    """eval_ijb.py returns TAR@FAR 1e-4 (insightface's reading); NaN and a warning saying why
    where the pairs cannot resolve it, never None."""
    import logging
    import math

    root = _image_tree(tmp_path, 4)  # 6 pairs: FAR 1e-4 is unresolvable
    m = evaluate_ijb_from_config(_cfg(tmp_path, root), tmp_path / "out")
    assert m["verification"]["tar_at_far"]["1e-4"] is None
    with caplog.at_level(logging.WARNING, logger="face_rec.eval.ijb_cli"):
        value = sweep_value(m)
    assert math.isnan(value)
    assert "NaN" in caplog.text and "impostor pairs" in caplog.text
    resolved = {"verification": {"tar_at_far": {"1e-4": 0.875}}}
    assert sweep_value(resolved) == 0.875


def test_the_config_states_the_image_folder_once(tmp_path):
    """No data node beside root: the images are <root>/loose_crop; the two values that
    align/default.yaml reads from data.* are set on align directly."""
    cfg = _cfg(tmp_path, tmp_path / "IJB")
    assert "data" not in cfg
    assert cfg.align.settings.fallback_face_fraction == 0.5
    assert cfg.align.detector.min_face_size == 20


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_celeba299_as_an_ijb_tree(celeba_root, tmp_path):
    """Four celeba299 identities aligned by the alignment stage (MTCNN); its manifest's
    landmarks become an IJB tree: per identity two templates of two-image media, every template
    pair, G1/G2 of first templates, probes the second ones; then the whole command."""
    import functools

    from face_rec.align.detect import FaceDetector
    from face_rec.align.run import run_alignment
    from face_rec.data.pack import open_images, read_manifest

    people = [p for p in sorted((celeba_root / "images").iterdir()) if p.is_dir()]
    people = [p for p in people if len(list(p.iterdir())) >= 6][:4]
    for person in people:
        (tmp_path / "in" / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir())[:6]:
            (tmp_path / "in" / person.name / f.name).symlink_to(f)
    make = functools.partial(FaceDetector, min_face_size=20, device="cpu")
    run_alignment(tmp_path / "in", tmp_path / "pack", make, workers=0)
    ok = [r for r in read_manifest(tmp_path / "pack" / "manifest.csv") if r["status"] == "ok"]
    root = tmp_path / "IJBC"
    (root / "loose_crop").mkdir(parents=True)
    faces, rows, by_person = [], [], {}
    for r in ok:
        name = r["source"].replace("/", "_")
        (root / "loose_crop" / name).symlink_to(tmp_path / "in" / r["source"])
        lm = np.array(r["landmarks"].split(), float).reshape(5, 2)
        faces.append((name, lm, float(r["det_prob"])))
        by_person.setdefault(r["identity"], []).append(name)
    tid = {}
    for p, (_, names) in enumerate(sorted(by_person.items())):
        half = len(names) // 2
        for k, name in enumerate(names):
            tid[name] = 10 * p + (k >= half)
            rows.append((name, tid[name], 100 * tid[name] + (k % half) // 2))
    templates = sorted(set(tid.values()))
    pairs = [(a, b, int(a // 10 == b // 10)) for a, b in itertools.combinations(templates, 2)]
    first = [(t, t // 10) for t in templates if t % 10 == 0]
    one_n = {"G1": first[:2], "G2": first[2:], "probe": [(t, t // 10) for t in templates if t % 10]}
    write_tree(root, "IJBC", {}, faces, rows, pairs, one_n)

    m = evaluate_ijb_from_config(_cfg(tmp_path, root, "chunk_size=8"), tmp_path / "out")
    assert m["images"]["n_faces"] == len(ok) >= 20 and m["images"]["n_failed"] == 0
    v = m["verification"]
    assert v["n_templates"] == 8 and v["n_pairs"] == 28 == v["n_scored"]
    assert v["n_positive"] == 4 and v["skipped"]["count"] == 0 and 0 <= v["auc"] <= 1
    ident = m["identification"]
    for g in ("G1", "G2"):
        assert ident[g]["n_mated"] == 2 and ident[g]["n_nonmated"] == 2
        assert ident[g]["n_gallery"] == 2
    assert ident["merged"]["n_probes"] == 4 and ident["merged"]["n_gallery"] == 4
    for f in ("metrics.json", "roc.png", "config.yaml"):
        assert (tmp_path / "out" / f).is_file()
    # the crop from the meta file's landmarks is the pack's crop, byte for byte: the pack was
    # warped from the landmarks rounded as its manifest (and so the meta file) records them
    pack = open_images(tmp_path / "pack")
    meta = read_meta(root, "IJBC")
    for r, (name, _, _) in zip(ok, faces, strict=True):
        k = meta.faces.names.index(name)
        crop, _ = ijb_data.align_ijb_face(
            load_rgb(root / "loose_crop" / name), meta.faces.landmarks[k], AlignSettings()
        )
        assert np.array_equal(crop, pack[int(r["image_index"])]), name


@pytest.mark.realdata
def test_one_image_templates_score_as_the_eval_lfw_command(lfw_root, tmp_path):
    """The judging point, through both commands' library functions: LFW pairs scored by
    eval_lfw.py (a CSV pair list; MTCNN alignment into eval.cache_dir) and by eval_ijb.py on an
    IJB tree of the same images (one image per template, faceness 1, the landmarks of the pack
    eval_lfw made) with the same pair file and the same seeded random-init model: the same
    crops, scores to ~1e-6 (float64 template sums vs float32), equal AUC and TAR@FAR. The 100
    impostor pairs make every resolvable FAR a whole number of false accepts, where the two
    commands' TAR readings coincide (see face_rec.eval.ijb's docstring)."""
    from face_rec.data.pack import open_images, read_manifest
    from face_rec.eval.cli import build_model, evaluate_from_config

    people = []
    for person in sorted((lfw_root / "images").iterdir()):
        files = sorted(person.glob("*.jpg")) if person.is_dir() else []
        if len(files) >= 2:
            people.append([f.relative_to(lfw_root / "images").as_posix() for f in files[:2]])
        if len(people) == 25:
            break
    pairs = [(a, b, 1) for a, b in people]
    for k in range(100):  # image 0 of person p with image 1 of person p + 1 ... p + 4
        p, q = k % 25, (k % 25 + 1 + k // 25) % 25
        pairs.append((people[p][0], people[q][1], 0))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("path_a,path_b,same\n" + "".join(f"{a},{b},{y}\n" for a, b, y in pairs))
    model_args = ["model=mobilefacenet", "model.input_size=32", "model.embedding_dim=16"]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        lfw_cfg = compose(
            "eval_lfw",
            overrides=[
                f"pairs={csv_path}",
                f"image_root={lfw_root / 'images'}",
                "calibration_pairs=null",
                f"paths.pack_dir={tmp_path}/packs",
                f"eval.cache_dir={tmp_path}/pairs",
                "eval.device=cpu",
                "eval.batch_size=16",
                "eval.n_bootstrap=10",
                "eval.seed=3",
                "align.workers=0",
                *model_args,
            ],
        )
    lfw = evaluate_from_config(lfw_cfg, tmp_path / "lfw_out")

    (manifest,) = (tmp_path / "pairs").glob("*/manifest.csv")  # the pack eval_lfw aligned into
    rows = {r["source"]: r for r in read_manifest(manifest)}
    not_ok = {s: r["reason"] for s, r in rows.items() if r["status"] != "ok"}
    assert not not_ok, f"MTCNN missed faces; choose other images: {not_ok}"
    root = tmp_path / "IJBC"
    (root / "loose_crop").mkdir(parents=True)
    sources = sorted(rows)
    tid = {src: k + 1 for k, src in enumerate(sources)}
    faces = []
    for src in sources:
        name = src.replace("/", "_")
        (root / "loose_crop" / name).symlink_to(lfw_root / "images" / src)
        faces.append((name, np.array(rows[src]["landmarks"].split(), float).reshape(5, 2), 1.0))
    lines = [(name, tid[src], tid[src]) for (name, _, _), src in zip(faces, sources, strict=True)]
    ijb_pairs = [(tid[a], tid[b], y) for a, b, y in pairs]
    write_tree(root, "IJBC", {}, faces, lines, ijb_pairs)
    ijb_cfg = _cfg(
        tmp_path, root, "save_scores=true", "identification=false", "eval.seed=3", *model_args
    )
    a, b = build_model(lfw_cfg).state_dict(), build_model(ijb_cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seeded random init
    ijb_m = evaluate_ijb_from_config(ijb_cfg, tmp_path / "ijb_out")

    pack = open_images(manifest.parent)  # the same crops
    for (name, lm, _), src in zip(faces, sources, strict=True):
        crop, _ = ijb_data.align_ijb_face(load_rgb(root / "loose_crop" / name), lm, AlignSettings())
        assert np.array_equal(crop, pack[int(rows[src]["image_index"])]), src
    v = ijb_m["verification"]
    assert v["n_scored"] == len(pairs) == lfw["n_scored"] and v["n_negative"] == 100
    ijb_scores = np.load(tmp_path / "ijb_out" / "scores.npy")
    np.testing.assert_allclose(ijb_scores, lfw["scores"], atol=1e-6, rtol=0)
    assert np.ptp(lfw["scores"]) > 1e-3  # scores spread far beyond the float32 / 64 gap
    assert v["auc"] == lfw["auc"]
    shared = set(v["tar_at_far"]) & set(lfw["tar_at_far"])
    assert shared == {"1e-1", "1e-2", "1e-3"}
    for key in shared:
        assert v["tar_at_far"][key] == lfw["tar_at_far"][key], key
    assert sum(lfw["tar_at_far"][k] is not None for k in shared) == 2  # 1e-3: both None


def test_the_real_path_benchmark_runs_the_commands_steps(tmp_path):
    """benchmarks/ijb_scoring.py --real-path at 2,000 faces: the tree and feature chunks it
    writes are read by the command's own functions in a child process, whose per-step times and
    peak RSS are reported; the figures equal those computed here from the same tree."""
    import os
    import subprocess
    import sys

    from face_rec.eval.ijb_cli import templates, verify
    from face_rec.eval.ijb_data import open_features

    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "ijb_scoring.py"), "--real-path",
        "--faces", "2000", "--templates", "120", "--pairs", "30000", "--dim", "16",
        "--tmp-dir", str(tmp_path), "--keep", "--json", str(report_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| verify (pair scoring, ROC, AUC, EER, TAR@FAR) |" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["n_faces"] == 2000 and report["n_templates"] == 120
    assert report["n_pairs"] == 30000 == report["n_scored"]
    steps = report["steps"]
    assert len(steps) == 7 and all(v["s"] >= 0 for v in steps.values())
    assert any("np.loadtxt" in k for k in steps)
    rss = [v["peak_rss_mb"] for v in steps.values()]
    assert 0 < report["rss_after_imports_mb"] <= min(rss) <= max(rss) <= report["peak_rss_mb"]
    assert report["child_peak_rss_mb"] >= report["peak_rss_mb"]
    root = Path(report["tree"]["root"])
    meta = read_meta(root, "IJBC")
    assert len(meta.faces.names) == 2000 and len(meta.pairs.t1) == 30000
    assert len(np.unique(meta.rows.template)) == 120
    assert len(list((root / "features").glob("chunk-*.npz"))) == 1  # 2,000 < 4,096 faces
    faces = np.arange(2000)
    store = open_features(root / "features", 2000, report["tree"]["chunk_size"])
    assert store.ok.all()
    layout, feats, usable, n_images, norms = templates(meta, faces, store, ijb.TemplateSwitches())
    ours, _, _ = verify(meta.pairs, layout, feats, usable, n_images, norms)
    assert ours["auc"] == pytest.approx(report["auc"], abs=1e-12)
