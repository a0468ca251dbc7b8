"""Identification: search, NIST open-set TPIR@FPIR, insightface's merged-gallery figures and
closed-set rank-k / CMC against naive per-probe loops and hand-computed cases; the
path,identity,role list reader; identify.py end to end on real LFW images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from face_rec.config_check import check_config
from face_rec.eval import identification as I
from face_rec.eval.identification import (
    closed_set_identification,
    insightface_merged_identification,
    nist_threshold,
    open_set_identification,
    rate_key,
    search_topk,
)
from face_rec.eval.identify_cli import (
    IdentificationList,
    IdentificationListError,
    identification_report,
    identify_from_config,
    read_identification_list,
)
from face_rec.eval.verification import PairImages

from ..conftest import REPO

# --- naive references (one probe at a time, plain Python ordering)


def _int_feats(rng, n, d=6, low=-2, high=3):
    """Small-integer features: exact float32 dot products and many exact ties."""
    return rng.integers(low, high, (n, d)).astype(np.float32)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _order(scores):
    """Gallery indices by descending score, ties by the lower index."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))


def _naive_ranks(probe, probe_ids, gallery, gallery_ids):
    """Per probe: (mate rank or 0, top-1 score, top-1 index, best mate score or None)."""
    out = []
    for p, pid in zip(probe, probe_ids, strict=True):
        s = [float(np.dot(p, g)) for g in gallery]
        order = _order(s)
        rank = next((r + 1 for r, j in enumerate(order) if gallery_ids[j] == pid), 0)
        mates = [s[j] for j in range(len(s)) if gallery_ids[j] == pid]
        out.append((rank, s[order[0]], order[0], max(mates) if mates else None))
    return out


def _naive_open_set(probe, probe_ids, gallery, gallery_ids, fpir):
    """NIST by brute force: try every candidate threshold, keep the lowest with FPIR <= fpir."""
    rows = _naive_ranks(probe, probe_ids, gallery, gallery_ids)
    nonmated = [top for rank, top, _, _ in rows if rank == 0]
    mated = [(rank, top) for rank, top, _, _ in rows if rank > 0]
    if len(nonmated) * fpir < 1 - 1e-9:
        return None, None
    ok = [t for t in sorted(set(nonmated)) if sum(s > t for s in nonmated) / len(nonmated) <= fpir]
    t = min(ok)
    return t, sum(rank == 1 and top > t for rank, top in mated) / len(mated)


def _naive_insightface(probe, probe_ids, gallery, gallery_ids, far):
    """ijb_1n.py's evaluation() step by step: full sort, pooled non-mate scores, ceil."""
    sim = probe @ gallery.T
    n = len(probe)
    mask = [gallery_ids.index(pid) for pid in probe_ids]  # exactly one entry per subject
    top_inds = np.argsort(-sim, axis=1, kind="stable")
    tops = {k: np.mean([mask[i] in top_inds[i, :k] for i in range(n)]) for k in (1, 5, 10)}
    pos = np.array([sim[i, mask[i]] for i in range(n)])
    neg = sorted(sim[i, j] for i in range(n) for j in range(len(gallery)) if j != mask[i])[::-1]
    th = neg[math.ceil(n * far) - 1]
    return tops, th, float(np.sum(pos > th) / n)


# --- search_topk


@pytest.mark.parametrize("k", [1, 4, 23, 30])
@pytest.mark.parametrize("block", [1, 5, 4096])
def test_search_topk_matches_a_naive_sort_with_ties_by_lower_index(k, block):
    rng = np.random.default_rng(k)
    probe, gallery = _int_feats(rng, 37), _int_feats(rng, 23)
    scores, index = search_topk(probe, gallery, k, block=block)
    kk = min(k, len(gallery))
    assert scores.shape == index.shape == (37, kk)
    assert scores.dtype == np.float32 and index.dtype == np.int64
    for i, p in enumerate(probe):
        s = [float(np.dot(p, g)) for g in gallery]
        assert index[i].tolist() == _order(s)[:kk]
        np.testing.assert_array_equal(scores[i], np.array(s, np.float32)[index[i]])


def test_search_topk_bounds_memory_by_gallery_size(monkeypatch):
    """Blocks shrink with the gallery (BLOCK_ELEMENTS scores at a time), results unchanged."""
    rng = np.random.default_rng(1)
    probe, gallery = _int_feats(rng, 20), _int_feats(rng, 50)
    want = search_topk(probe, gallery, 7)
    monkeypatch.setattr(I, "BLOCK_ELEMENTS", 120)  # 2 probes per block
    blocks = [rows for rows, _ in I._score_blocks(probe, gallery, 4096)]
    assert len(blocks) == 10
    got = search_topk(probe, gallery, 7)
    np.testing.assert_array_equal(got[1], want[1])


def test_search_rejects_bad_features():
    g = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="same D"):
        search_topk(np.zeros((2, 4), np.float32), g, 1)
    with pytest.raises(ValueError, match="empty"):
        search_topk(np.zeros((2, 3), np.float32), np.zeros((0, 3), np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        search_topk(np.full((1, 3), np.nan, np.float32), g, 1)
    with pytest.raises(ValueError, match="k=0"):
        search_topk(g, g, 0)


def test_rate_keys_follow_face_rec():
    assert [rate_key(r) for r in (1e-2, 0.1, 0.05, 1e-6, 0.15)] == [
        "1e-2",
        "1e-1",
        "5e-2",
        "1e-6",
        "1.5e-1",
    ]


# --- NIST open-set, by hand
#
# gallery = identity matrix: probe row i IS its score row (scores are exact)
MATED = [[0.9, 0.1, 0.2], [0.3, 0.6, 0.1], [0.5, 0.2, 0.4], [0.35, 0.1, 0.0]]
MATED_IDS = ["A", "B", "C", "A"]  # ranks 1, 1, 2 (A scores 0.5 > C's 0.4), 1
NONMATED_TOP = [0.7, 0.5, 0.3, 0.4, 0.05, 0.1, 0.15, 0.2, 0.25, 0.45]


def _hand_case():
    nonmated = [[t, 0, 0] if i % 2 == 0 else [0, 0, t] for i, t in enumerate(NONMATED_TOP)]
    probe = np.array(MATED + nonmated, np.float32)
    ids = MATED_IDS + [f"X{i}" for i in range(len(nonmated))]
    return probe, ids, np.eye(3, dtype=np.float32), ["A", "B", "C"]


def test_open_set_hand_computed():
    r = open_set_identification(*_hand_case(), fpirs=(0.01, 0.1, 0.2, 0.5))
    # non-mated top-1 sorted: .7 .5 .45 .4 .3 .25 .2 .15 .1 .05; m = floor(10 x fpir) alarms
    # allowed -> the threshold is the (m+1)-th: .5, .45, .25
    assert r["thresholds"]["1e-1"] == pytest.approx(0.5)
    assert r["thresholds"]["2e-1"] == pytest.approx(0.45)
    assert r["thresholds"]["5e-1"] == pytest.approx(0.25)
    assert r["fpir_at_threshold"] == {"1e-2": None, "1e-1": 0.1, "2e-1": 0.2, "5e-1": 0.5}
    # rank-1 mates above .5: .9 and .6; above .25 also .35; C's .4 is at rank 2: never counts
    assert r["tpir_at_fpir"] == {"1e-2": None, "1e-1": 0.5, "2e-1": 0.5, "5e-1": 0.75}
    assert r["thresholds"]["1e-2"] is None
    assert any("1e-2" in n and "needs at least 100" in n for n in r["notes"])
    assert (r["rank1"], r["rank5"], r["rank10"]) == (0.75, 1.0, 1.0)
    assert r["cmc"] == [0.75, 1.0, 1.0]
    assert (r["n_mated"], r["n_nonmated"], r["n_gallery"]) == (4, 10, 3)


def test_open_set_ties_at_the_threshold_and_at_the_top():
    g = np.eye(3, dtype=np.float32)
    probe = np.array(
        [
            [0.5, 0.0, 0.0],  # A at rank 1 with exactly the threshold: not above it
            [0.6, 0.6, 0.0],  # B tied with A (lower index) at the top: rank 2
            [0.0, 0.0, 0.7],  # C at rank 1, above the threshold
            *([[0.5, 0.0, 0.0]] * 2),  # non-mated: two top-1 scores tied at .5
            *([[0.0, 0.1, 0.0]] * 8),
        ],
        np.float32,
    )
    ids = ["A", "B", "C"] + [f"X{i}" for i in range(10)]
    r = open_set_identification(probe, ids, g, ["A", "B", "C"], fpirs=(0.1,), ranks=(1, 2))
    assert r["thresholds"]["1e-1"] == pytest.approx(0.5)  # the 2nd highest (m = 1)
    assert r["fpir_at_threshold"]["1e-1"] == 0.0  # the tie at .5 does not alarm (> t)
    assert r["tpir_at_fpir"]["1e-1"] == pytest.approx(1 / 3)  # only C
    assert (r["rank1"], r["rank2"]) == (pytest.approx(2 / 3), 1.0)


def test_open_set_with_only_nonmated_searches():
    g = np.eye(3, dtype=np.float32)
    probe = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    r = open_set_identification(probe, [f"X{i}" for i in range(20)], g, ["A", "B", "C"])
    assert r["n_mated"] == 0 and r["n_nonmated"] == 20
    assert r["tpir_at_fpir"] == {"1e-2": None, "1e-1": None}
    assert r["thresholds"]["1e-1"] == pytest.approx(float(np.sort(probe.max(1))[::-1][2]))
    assert r["rank1"] is None and r["cmc"] == []
    assert any("no mated searches" in n for n in r["notes"])


def test_too_few_nonmated_searches_give_none_and_a_note():
    probe, ids, g, gids = _hand_case()
    r = open_set_identification(probe[:13], ids[:13], g, gids)  # 9 non-mated searches
    assert r["tpir_at_fpir"]["1e-1"] is None and r["thresholds"]["1e-1"] is None
    assert any("9 non-mated searches" in n for n in r["notes"])
    assert nist_threshold(np.arange(10.0), 0.1) == 8.0
    with pytest.raises(ValueError, match="rate in"):
        nist_threshold(np.arange(10.0), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_set_matches_a_naive_loop_in_any_block_size(seed):
    rng = np.random.default_rng(seed)
    gallery = _int_feats(rng, 12)
    gallery_ids = [f"s{k}" for k in range(12)]
    probe = _int_feats(rng, 60)
    probe_ids = [f"s{k}" if k < 12 else f"x{k}" for k in rng.integers(0, 24, 60)]
    fpirs = (0.05, 0.1, 0.3)
    results = [
        open_set_identification(probe, probe_ids, gallery, gallery_ids, fpirs, (1, 3), block=b)
        for b in (1, 7, 4096)
    ]
    assert results[0] == results[1] == results[2]
    r = results[0]
    rows = _naive_ranks(probe, probe_ids, gallery, gallery_ids)
    mated = [rank for rank, *_ in rows if rank > 0]
    assert r["n_mated"] == len(mated) and r["n_nonmated"] == 60 - len(mated)
    assert r["rank1"] == pytest.approx(np.mean(np.array(mated) <= 1))
    assert r["rank3"] == pytest.approx(np.mean(np.array(mated) <= 3))
    assert r["cmc"] == pytest.approx([np.mean(np.array(mated) <= k) for k in range(1, 13)])
    for fpir in fpirs:
        t, tpir = _naive_open_set(probe, probe_ids, gallery, gallery_ids, fpir)
        assert r["thresholds"][rate_key(fpir)] == t
        assert r["tpir_at_fpir"][rate_key(fpir)] == pytest.approx(tpir)


# --- insightface's merged-gallery figures


def test_insightface_merged_hand_computed_and_unlike_nist():
    g, gids = np.eye(3, dtype=np.float32), ["A", "B", "C"]
    probe = np.array(MATED, np.float32)
    r = insightface_merged_identification(probe, MATED_IDS, g, gids, fpirs=(0.01, 0.1, 0.5))
    # non-mate scores of all comparisons: .5 .3 .2 .2 .1 .1 .1 0; n = 4 probes
    # k = ceil(4 x rate): 1, 1, 2 -> th = .5, .5, .3
    assert r["thresholds"] == pytest.approx({"1e-2": 0.5, "1e-1": 0.5, "5e-1": 0.3})
    # mates above .3: .9 .6 .35 and C's .4 although a non-mate (.5) outranks it
    assert r["tpir_at_fpir"] == {"1e-2": 0.5, "1e-1": 0.5, "5e-1": 1.0}
    assert r["false_alarms_per_search"] == {"1e-2": 0.0, "1e-1": 0.0, "5e-1": 0.25}
    assert (r["rank1"], r["rank5"]) == (0.75, 1.0)
    assert r["n_probes"] == 4 and r["n_nonmate_scores"] == 8
    assert r["protocol"].startswith("insightface merged G1+G2")
    # NIST on the same searches needs the mate at rank 1: C's probe does not count
    nist = open_set_identification(*_hand_case(), fpirs=(0.5,))
    assert nist["tpir_at_fpir"]["5e-1"] == 0.75


@pytest.mark.parametrize("block", [1, 6, 4096])
def test_insightface_merged_matches_its_script_step_by_step(block):
    rng = np.random.default_rng(3)
    gallery = _unit(rng.normal(size=(30, 8)))  # distinct scores: no tie order
    gallery_ids = [f"s{k}" for k in range(30)]
    probe = _unit(rng.normal(size=(50, 8)))
    probe_ids = [gallery_ids[k] for k in rng.integers(0, 30, 50)]
    fars = (0.01, 0.1, 0.3)
    r = insightface_merged_identification(
        probe, probe_ids, gallery, gallery_ids, fars, (1, 5, 10), block=block
    )
    for far in fars:
        tops, th, recall = _naive_insightface(probe, probe_ids, gallery, gallery_ids, far)
        assert r["thresholds"][rate_key(far)] == pytest.approx(th, abs=1e-6)
        assert r["tpir_at_fpir"][rate_key(far)] == pytest.approx(recall)
    assert [r["rank1"], r["rank5"], r["rank10"]] == pytest.approx([tops[1], tops[5], tops[10]])


def test_insightface_merged_leaves_out_probes_without_a_mate():
    g, gids = np.eye(3, dtype=np.float32), ["A", "B", "C"]
    probe = np.array([*MATED, [0.9, 0.9, 0.9]], np.float32)
    r = insightface_merged_identification(probe, [*MATED_IDS, "Z"], g, gids, fpirs=(0.5,))
    assert r["n_probes"] == 4 and r["n_without_mate"] == 1
    assert r["tpir_at_fpir"]["5e-1"] == 1.0  # as without the extra probe
    assert any("no mate" in n for n in r["notes"])


# --- closed-set


def test_closed_set_hand_computed_with_distractors():
    g = np.eye(3, dtype=np.float32)
    probe = np.array(MATED + [[0.2, 0.2, 0.2]], np.float32)
    distractors = np.array([[0.45, 0.0, 0.0], [0.0, 0.0, 0.2]], np.float32)
    # probe C (.5 .2 .4): A .5, then distractor 0 (.45 -> score .225), C .4 -> rank 2;
    # probe A2 (.35 .1 0): A .35 first. Distractor scores: d0 = .45 x p[0], d1 = .2 x p[2]
    r = closed_set_identification(
        probe, [*MATED_IDS, "Z"], g, ["A", "B", "C"], (1, 2), 4, distractor_feats=distractors
    )
    assert (r["rank1"], r["rank2"]) == (0.75, 1.0)
    assert r["cmc"] == [0.75, 1.0, 1.0, 1.0]  # max_rank 4 of 5 entries
    assert r["n_scored"] == 4 and r["n_unmated"] == 1 and r["unmated"] == [4]
    assert (r["n_gallery"], r["n_gallery_identities"], r["n_distractors"]) == (3, 3, 2)
    assert r["per_probe"]["mate_rank"].tolist() == [1, 1, 2, 1, 0]

    # a distractor that outscores the mate pushes it down; a tie goes to the gallery entry
    strong = np.array([[2.0, 0.0, 0.0]], np.float32)
    r = closed_set_identification(probe[:1], ["A"], g, ["A", "B", "C"], (1,), 10, strong)
    assert r["rank1"] == 0.0 and r["per_probe"]["top1_index"].tolist() == [3]
    tie = np.array([[1.0, 0.0, 0.0]], np.float32)
    r = closed_set_identification(probe[:1], ["A"], g, ["A", "B", "C"], (1,), 10, tie)
    assert r["rank1"] == 1.0


def test_closed_set_ranks_entries_not_identities():
    """Identity A has two entries that both outscore B's only entry: B's probe is at rank 3
    (ranking identities by their best entry would say 2)."""
    g = np.eye(3, dtype=np.float32)
    probe = np.array([[0.9, 0.8, 0.7]], np.float32)
    r = closed_set_identification(probe, ["B"], g, ["A", "A", "B"], (1, 2, 3))
    assert (r["rank1"], r["rank2"], r["rank3"]) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("block", [1, 4, 4096])
def test_closed_set_matches_a_naive_loop(block):
    rng = np.random.default_rng(5)
    gallery = _int_feats(rng, 25)
    gallery_ids = [f"s{k}" for k in rng.integers(0, 10, 25)]  # several entries per identity
    distractors = _int_feats(rng, 15)
    probe = _int_feats(rng, 40)
    probe_ids = [f"s{k}" for k in rng.integers(0, 12, 40)]  # some with no entry
    r = closed_set_identification(
        probe, probe_ids, gallery, gallery_ids, (1, 5, 10), 30, distractors, block=block
    )
    rows = _naive_ranks(
        probe, probe_ids, np.concatenate([gallery, distractors]), gallery_ids + [None] * 15
    )
    ranks = np.array([rank for rank, *_ in rows])
    scored = ranks > 0
    assert r["per_probe"]["mate_rank"].tolist() == ranks.tolist()
    assert r["per_probe"]["top1_index"].tolist() == [top for _, _, top, _ in rows]
    assert r["unmated"] == np.flatnonzero(~scored).tolist()
    assert len(r["cmc"]) == 30
    for k in (1, 5, 10):
        assert r[f"rank{k}"] == pytest.approx(np.mean(ranks[scored] <= k))
    assert r["cmc"] == pytest.approx([np.mean(ranks[scored] <= k) for k in range(1, 31)])


def test_closed_set_needs_a_mated_probe():
    g = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="none of the 1 probes"):
        closed_set_identification(g[:1], ["Z"], g, ["A", "B", "C"])
    with pytest.raises(ValueError, match="one id per row"):
        closed_set_identification(g[:1], ["A", "B"], g, ["A", "B", "C"])


# --- the list reader


def _write(tmp_path, text, name="list.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_a_list_in_any_column_order(tmp_path):
    path = _write(
        tmp_path,
        "\ufeffRole, path ,identity,note\n"
        "gallery,a/1.jpg,a,x\n"
        "\n"
        "probe,a/2.jpg,a,\n"
        "Distractor,z/9.jpg,,\n",
    )
    got = read_identification_list(path)
    assert got.paths == ["a/1.jpg", "a/2.jpg", "z/9.jpg"]
    assert got.identities == ["a", "a", ""]
    assert got.roles == ["gallery", "probe", "distractor"]
    assert got.lines == [2, 4, 5]
    assert got.root == tmp_path
    assert read_identification_list(path, "/imgs").root.as_posix() == "/imgs"
    assert got.role("probe").tolist() == [1]


@pytest.mark.parametrize(
    "body, message",
    [
        ("path,role\ngallery,a/1.jpg\n", r"list.csv:1: .*missing identity"),
        ("path,identity,role\na/1.jpg,a,enrol\n", r"list.csv:2: role 'enrol' is not one of"),
        ("path,identity,role\n,a,gallery\n", r"list.csv:2: empty path"),
        ("path,identity,role\n/x/1.jpg,a,gallery\n", r"list.csv:2: path '/x/1.jpg' is absolute"),
        ("path,identity,role\na/1.jpg,,probe\n", r"list.csv:2: a probe needs an identity"),
        ("path,identity,role\na/1.jpg,a,gallery\na/1.jpg,a,probe\n", r"list.csv:3: .*line 2"),
        ("path,identity,role\na/1.jpg,a\n", r"list.csv:2: expected 3 columns"),
        ("path,identity,role\na/1.jpg,a,gallery\n", r"list.csv: no probe rows"),
        ("path,identity,role\na/1.jpg,a,probe\n", r"list.csv: no gallery rows"),
    ],
)
def test_malformed_lists_name_the_file_and_line(tmp_path, body, message):
    with pytest.raises(IdentificationListError, match=message):
        read_identification_list(_write(tmp_path, body))


def test_a_missing_list_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="list=<file.csv>"):
        read_identification_list(tmp_path / "absent.csv")


# --- the report: every probe accounted for


def _listed(rows):
    return IdentificationList(
        paths=[r[0] for r in rows],
        identities=[r[1] for r in rows],
        roles=[r[2] for r in rows],
        lines=list(range(2, len(rows) + 2)),
        source="list.csv",
        root=None,
    )


def test_report_counts_failed_searches_as_misses_and_lists_the_rest():
    rows = [
        ("a1", "a", "gallery"),
        ("b1", "b", "gallery"),
        ("c1", "c", "gallery"),  # fails: c's probe cannot be searched
        ("d1", "", "distractor"),
        ("e1", "", "distractor"),  # fails: left out
        ("a2", "a", "probe"),  # rank 1
        ("b2", "b", "probe"),  # rank 2 behind the distractor
        ("a3", "a", "probe"),  # fails alignment: a miss
        ("c2", "c", "probe"),  # its gallery image failed: a miss
        ("z2", "z", "probe"),  # no gallery row: not counted
    ]
    problems = ["", "", "not found", "", "no face", "", "", "corrupt", "", ""]
    fallback = np.zeros(len(rows), bool)
    fallback[[1, 5]] = True
    emb = np.zeros((len(rows), 3), np.float32)
    emb[0], emb[1], emb[3] = [1, 0, 0], [0, 1, 0], [0, 0.8, 0.6]
    emb[5], emb[6], emb[8], emb[9] = [1, 0, 0], [0, 0.6, 0.8], [1, 0, 0], [0, 1, 0]
    images = PairImages(np.zeros((len(rows), 2, 2, 3), np.uint8), problems, fallback)
    m = identification_report(_listed(rows), images, emb, [1, 2], 10)
    assert (m["rank1"], m["rank2"]) == (0.5, 1.0)
    assert (m["n_probes"], m["n_probes_scored"], m["n_probes_counted_all"]) == (5, 2, 4)
    assert (m["rank1_all"], m["rank2_all"]) == (0.25, 0.5)
    assert m["cmc"] == [0.5, 1.0, 1.0] and m["cmc_all"] == [0.25, 0.5, 0.5]
    assert (m["n_gallery"], m["n_distractors"], m["n_gallery_listed"]) == (2, 1, 3)
    assert m["n_fallback"] == {"gallery": 1, "probe": 1, "distractor": 0}
    why = {u["path"]: (u["counted_as_miss"], u["reason"]) for u in m["unscored_probes"]}
    assert why["a3"] == (True, "probe image failed alignment: corrupt")
    assert why["c2"][0] and "no gallery image of 'c'" in why["c2"][1]
    assert not why["z2"][0] and "no gallery row" in why["z2"][1]
    assert [f["path"] for f in m["failed_gallery"]] == ["c1"]
    assert [f["path"] for f in m["failed_distractors"]] == ["e1"]
    top = {p["path"]: (p["rank"], p["top1_path"], p["top1_role"]) for p in m["probes"]}
    assert top == {"a2": (1, "a1", "gallery"), "b2": (2, "d1", "distractor")}


# --- config and command


def _compose(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("identify", overrides=list(overrides))


def test_identify_config_composes_and_passes_the_check():
    check_config(_compose())
    cfg = _compose("list=/l.csv", "checkpoint=/runs/x/last.pt", "ranks=[1,5,20]", "max_rank=50")
    check_config(cfg)
    assert cfg.ranks == [1, 5, 20] and cfg.eval.flip is True


def test_identify_needs_a_list(tmp_path):
    with pytest.raises(ValueError, match="list= is required"):
        identify_from_config(_compose("model=mobilefacenet"), tmp_path)


def _lfw_people(lfw_root):
    counts = {}
    for line in (lfw_root / "lfw-names.txt").read_text().splitlines():
        name, n = line.split()
        counts[name] = int(n)
    return counts


@pytest.mark.realdata
def test_identify_end_to_end_on_lfw(lfw_root, tmp_path):
    counts = _lfw_people(lfw_root)
    people = [n for n in sorted(counts) if counts[n] >= 3][:4]
    singles = [n for n in sorted(counts) if counts[n] == 1][:3]
    rows = []
    for name in people:
        rows.append((f"{name}/{name}_0001.jpg", name, "gallery"))
        rows += [(f"{name}/{name}_{k:04d}.jpg", name, "probe") for k in (2, 3)]
    rows += [(f"{n}/{n}_0001.jpg", "", "distractor") for n in singles]
    rows.append((f"{people[0]}/{people[0]}_0999.jpg", people[0], "probe"))  # no such file
    rows.append((f"{singles[0]}/{singles[0]}_0002.jpg", singles[0], "probe"))  # not enrolled
    listing = tmp_path / "ident.csv"
    with open(listing, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "identity", "role"), *rows])
    cfg = _compose(
        f"list={listing}",
        f"image_root={lfw_root}/images",
        f"paths.pack_dir={tmp_path}/packs",
        f"eval.cache_dir={tmp_path}/cache",
        "eval.device=cpu",
        "align.workers=0",
        "model=mobilefacenet",
        "model.input_size=32",
        "model.embedding_dim=16",
    )
    out = tmp_path / "out"
    m = identify_from_config(cfg, out)
    for name in ("metrics.json", "probes.csv", "cmc.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_probes"] == 10 and saved["n_probes_scored"] == 8
    assert saved["n_probes_counted_all"] == 9
    assert (saved["n_gallery"], saved["n_gallery_identities"], saved["n_distractors"]) == (4, 4, 3)
    assert saved["rank1_all"] == pytest.approx(saved["rank1"] * 8 / 9)
    assert len(saved["cmc"]) == 7 and saved["cmc"][-1] == 1.0  # every mate within the gallery
    assert all(a <= b for a, b in zip(saved["cmc"], saved["cmc"][1:], strict=False))
    why = {u["path"]: u for u in saved["unscored_probes"]}
    assert why[rows[-2][0]]["counted_as_miss"] and "failed alignment" in why[rows[-2][0]]["reason"]
    assert not why[rows[-1][0]]["counted_as_miss"]
    with open(out / "probes.csv", newline="") as fh:
        probes = list(csv.DictReader(fh))
    assert len(probes) == 10
    ranks = [int(p["rank"]) for p in probes if p["rank"]]
    assert len(ranks) == 8 and np.mean(np.array(ranks) == 1) == pytest.approx(m["rank1"])
    assert "list: " in (out / "config.yaml").read_text()
