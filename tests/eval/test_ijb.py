"""IJB-B / IJB-C evaluation on hand-built trees: template features, pair scores, TAR@FAR (both
readings) and 1:N figures against naive loops and hand-computed cases, for every switch
combination; resume; bad input; the single-image template == eval_lfw equality."""

from __future__ import annotations

import itertools
import json

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
from face_rec.eval.ijb_cli import evaluate_ijb_from_config
from face_rec.eval.ijb_data import MetaFormatError, extract_features, read_1n_csv, read_meta
from face_rec.models.registry import create_model

from ..conftest import REPO
from .ijb_tree import (
    LANDMARKS,
    face_image,
    insightface_tar,
    naive_nist,
    naive_templates,
    write_tree,
)

SWITCHES = [
    ijb.TemplateSwitches(flip, norm, weights)
    for flip, norm, weights in itertools.product(
        ("add", "off"), ("keep", "l2"), ("faceness", "none")
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


# ----------------------------------------------------------------------------- alignment


def test_crop_is_the_alignment_stages_byte_for_byte(tmp_path):
    img = face_image(0)
    lm = LANDMARKS + np.random.default_rng(0).normal(0, 2, (5, 2))
    settings = AlignSettings()
    crop, reason = ijb_data.align_ijb_face(img, lm, settings)
    assert reason == ""
    assert np.array_equal(crop, align_face(img, lm, 112))
    from face_rec.align.detect import Face

    stage, _ = crop_face(img, Face(np.zeros(4), 0.5, lm), settings)
    assert np.array_equal(crop, stage)
    bad, reason = ijb_data.align_ijb_face(img, np.zeros((5, 2)), settings)
    assert "degenerate" in reason and np.array_equal(bad, center_crop(img, 0.5, 112))


@pytest.mark.skipif(
    "border" not in AlignSettings.__dataclass_fields__, reason="no align.settings.border"
)
def test_the_align_border_setting_reaches_the_warp():
    """A face near the image edge: the crop reads beyond the image, as align.settings.border
    says, exactly as the alignment stage warps it."""
    img = face_image(1)
    lm = LANDMARKS - 35
    crops = {}
    for border in ("constant", "replicate"):
        crops[border], _ = ijb_data.align_ijb_face(img, lm, AlignSettings(border=border))
        assert np.array_equal(crops[border], align_face(img, lm, 112, border=border))
    assert not np.array_equal(crops["constant"], crops["replicate"])


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
    # the crop from the meta file's landmarks is the pack's crop (landmarks kept to 3 decimals)
    pack = open_images(tmp_path / "pack")
    meta = read_meta(root, "IJBC")
    for r, (name, _, _) in list(zip(ok, faces, strict=True))[:5]:
        k = meta.faces.names.index(name)
        crop, _ = ijb_data.align_ijb_face(
            load_rgb(root / "loose_crop" / name), meta.faces.landmarks[k], AlignSettings()
        )
        diff = np.abs(crop.astype(int) - pack[int(r["image_index"])])
        assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())
