"""python -m face_rec.data.make_pairs: a 10-fold, identity-disjoint pair list from a folder tree."""

from math import comb

import numpy as np
import pytest

from face_rec.data.make_pairs import identity_disjoint_pairs, main, scan_identities
from face_rec.data.pairs import load_pairs
from face_rec.data.train_set import read_people


def _groups(sizes):
    return {f"id{i}": [f"id{i}/{j}.jpg" for j in range(n)] for i, n in enumerate(sizes)}


def test_pairs_are_balanced_identity_disjoint_folds():
    sizes = [1, 2, 3, 7, 30] * 8  # 40 identities, 8 with one image
    groups = _groups(sizes)
    pairs = identity_disjoint_pairs(groups, max_matched_per_identity=10, n_folds=10, seed=0)
    ident = {img: k for k, g in groups.items() for img in g}
    fold_of_id: dict[str, int] = {}
    for a, b, same, f in pairs:
        assert (ident[a] == ident[b]) == same
        for k in (ident[a], ident[b]):
            assert fold_of_id.setdefault(k, f) == f  # an identity lies in one fold only
    assert set(fold_of_id.values()) == set(range(10))
    for f in range(10):
        same = [p[2] for p in pairs if p[3] == f]
        assert sum(same) == len(same) - sum(same)  # as many mismatched as matched
    matched = [(a, b) for a, b, s, _ in pairs if s]
    assert len(set(matched)) == len(matched)  # no matched pair twice
    per_id = {k: sum(ident[a] == k for a, _ in matched) for k in groups}
    for k, n in zip(groups, sizes, strict=True):
        assert per_id[k] == min(10, comb(n, 2))  # every pair up to the cap
    assert pairs == identity_disjoint_pairs(groups, 10, 10, seed=0)  # reproducible
    assert pairs != identity_disjoint_pairs(groups, 10, 10, seed=1)


def test_folds_too_small_for_pairs_are_a_clear_error():
    with pytest.raises(ValueError, match="9 with two or more images: too few for 10"):
        identity_disjoint_pairs(_groups([2] * 9 + [1] * 20), n_folds=10)
    groups = _groups([2] * 12 + [1] * 60)  # enough in all, but dealt so that some fold has none
    with pytest.raises(ValueError, match="each needs two identities, one of them with two"):
        identity_disjoint_pairs(groups, n_folds=10)
    assert {f for *_, f in identity_disjoint_pairs(groups, n_folds=2)} == {0, 1}
    # 15 identities for 10 folds: some fold would hold one identity and no mismatched pair
    with pytest.raises(ValueError, match="15 identities, 15 with two"):
        identity_disjoint_pairs(_groups([5] * 15), n_folds=10)


def test_unique_mismatched_pairs_never_repeat():
    groups = _groups([2, 2, 2, 2])  # per fold (2 folds): 2 identities, 2 matched, 4 image pairs
    for seed in range(20):
        pairs = identity_disjoint_pairs(groups, 10, n_folds=2, seed=seed, unique_mismatched=True)
        mism = [frozenset(p[:2]) for p in pairs if not p[2]]
        assert len(mism) == 2 * 1 * 2 and len(set(mism)) == len(mism)
    # one fold: 6 matched pairs of the 4-image identity, only 4 distinct mismatched ones
    with pytest.raises(ValueError, match="fewer than 6 distinct mismatched pairs"):
        identity_disjoint_pairs(_groups([4, 1]), 10, n_folds=1, unique_mismatched=True)
    assert len(identity_disjoint_pairs(_groups([4, 1]), 10, n_folds=1)) == 12  # repeats allowed


def _tree(root, sizes, names=None):
    for i, n in enumerate(sizes):
        d = root / (names[i] if names else f"person_{i}")
        d.mkdir(parents=True)
        for j in range(n):
            (d / f"{j:04d}.jpg").write_bytes(b"")
        (d / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_scan_lists_images_as_alignment_does(tmp_path):
    root = _tree(tmp_path / "img", [1, 3])
    (root / "person_1" / "more").mkdir()
    (root / "person_1" / "more" / "x.png").write_bytes(b"")
    assert scan_identities(root) == {
        "person_0": ["person_0/0000.jpg"],
        "person_1": [f"person_1/000{j}.jpg" for j in range(3)] + ["person_1/more/x.png"],
    }
    assert list(scan_identities(root, ["person_1"])) == ["person_1"]
    with pytest.raises(FileNotFoundError, match="first: 'nobody'"):
        scan_identities(root, ["person_1", "nobody"])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_identities(tmp_path / "missing")


def test_a_list_of_numeric_identities_keeps_its_first_name(tmp_path):
    (tmp_path / "ids.txt").write_text("7201\n7202\n7203\n")
    assert read_people(tmp_path / "ids.txt") == ["7201", "7202", "7203"]
    (tmp_path / "people.txt").write_text("2\n7201\t3\n7202\t5\n")  # LFW's: the count first
    assert read_people(tmp_path / "people.txt") == ["7201", "7202"]


def test_cli_writes_a_list_eval_reads(tmp_path, capsys):
    names = [f"person_{i}" for i in range(29)] + ["Doe,John"]  # a comma: quoted in the CSV
    root = _tree(tmp_path / "img", [4, 2, 6, 2, 3] * 6, names)
    names = names[5:]
    people = tmp_path / "people.txt"
    people.write_text("25\n" + "".join(f"{n}\t1\n" for n in names))
    out = tmp_path / "lists" / "pairs.csv"
    main([str(root), "--out", str(out), "--identities", str(people), "--matched-per-identity", "3"])
    assert "over 25 identities" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp*"))  # written atomically: no temporary left
    pairs = load_pairs(out, image_root=root)
    assert pairs.n_folds == 10 and pairs.has_identities
    ids = np.array([pairs.identity(k) for k in range(len(pairs.images))])
    assert set(ids) <= set(names) and "Doe,John" in set(ids)
    assert (ids[pairs.left] == ids[pairs.right]).tolist() == pairs.same.tolist()
    for f in range(10):
        in_f = pairs.fold == f
        inside = set(ids[pairs.left[in_f]]) | set(ids[pairs.right[in_f]])
        assert not inside & (set(ids[pairs.left[~in_f]]) | set(ids[pairs.right[~in_f]]))
    assert all((root / p).is_file() for p in pairs.images)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit, match="make_pairs: input_dir .*missing.* is not a directory"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "p.csv")])
    root = _tree(tmp_path / "img", [2] * 12)
    with pytest.raises(SystemExit, match="too few for 10 .*; pass a smaller --folds"):
        main([str(root), "--out", str(tmp_path / "p.csv")])
    with pytest.raises(SystemExit):
        main([str(root), "--out", str(tmp_path / "p.csv"), "--folds", "1"])
    assert "--folds 1" in capsys.readouterr().err
    main([str(root), "--out", str(tmp_path / "p.csv"), "--folds", "6"])
    assert load_pairs(tmp_path / "p.csv").n_folds == 6
