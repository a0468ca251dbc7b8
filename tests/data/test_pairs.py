import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from face_rec.data.pairs import (
    PairListError,
    bin_folds,
    load_pairs,
    read_bin,
    read_csv_pairs,
    read_lfw_pairs,
    write_bin,
)

VIEW1 = "2\nAnn\t1\t2\nBob 1 3\nAnn\t1\tCid\t2\nBob 2  Dee 1\n"
VIEW2 = "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid 3 4\nCid 1 Dee 12\n"


def test_view1_has_no_folds_and_lfw_paths(tmp_path):
    p = tmp_path / "pairsDevTest.txt"
    p.write_text(VIEW1)
    pairs = read_lfw_pairs(p)
    assert pairs.protocol == "lfw-view1" and len(pairs) == 4 and pairs.n_folds == 0
    assert pairs.same.tolist() == [True, True, False, False]
    assert pairs.fold.tolist() == [-1] * 4
    assert pairs.images[pairs.left[0]] == "Ann/Ann_0001.jpg"
    assert pairs.images[pairs.right[3]] == "Dee/Dee_0001.jpg"
    assert pairs.root == tmp_path / "images"
    assert len(pairs.images) == 7  # Ann_0001, in two pairs, is listed once


def test_view2_folds_are_the_blocks(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text(VIEW2)
    pairs = read_lfw_pairs(p, image_root=tmp_path)
    assert pairs.protocol == "lfw-view2" and pairs.n_folds == 2
    assert pairs.fold.tolist() == [0, 0, 1, 1]
    assert pairs.same.tolist() == [True, False, True, False]
    assert pairs.images[pairs.right[3]] == "Dee/Dee_0012.jpg"


@pytest.mark.parametrize(
    "text,match",
    [
        ("3\nAnn 1 2\nAnn 1 Bob 1\n", r"header promises 1 x 2 x 3 = 6 pairs, the file has 2"),
        ("1\nAnn 1 Bob 2\nAnn 1 Bob 1\n", r"pairs.txt:2: expected a matched pair"),
        ("1\nAnn 1 2\nAnn 1 2\n", r"pairs.txt:3: expected a mismatched pair"),
        ("1\nAnn 0 2\nAnn 1 Bob 1\n", r"pairs.txt:2: image number 0 is out of range"),
        ("1\nAnn x 2\nAnn 1 Bob 1\n", r"pairs.txt:2: image number 'x' is not an integer"),
        ("ten\n", r"pairs.txt:1: header 'ten'"),
        ("", r"empty pair list"),
    ],
)
def test_malformed_lfw_lists_name_file_and_line(tmp_path, text, match):
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    with pytest.raises(PairListError, match=match):
        read_lfw_pairs(p)


def test_real_lfw_view1_lists(lfw_root):
    test = read_lfw_pairs(lfw_root / "pairsDevTest.txt")
    train = read_lfw_pairs(lfw_root / "pairsDevTrain.txt")
    assert (len(test), int(test.same.sum()), len(train), int(train.same.sum())) == (
        1000,
        500,
        2200,
        1100,
    )
    assert all((test.root / img).is_file() for img in test.images)


def test_csv_pairs_with_header_and_folds(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("path_a,path_b,same,fold\nx/1.jpg,x/2.jpg,1,0\nx/1.jpg,y/1.jpg,false,1\n")
    pairs = read_csv_pairs(p)
    assert pairs.same.tolist() == [True, False] and pairs.fold.tolist() == [0, 1]
    assert pairs.root == tmp_path and pairs.identity(pairs.right[1]) == "y"
    p.write_text("x/1.jpg,x/2.jpg,1\nx/1.jpg,y/1.jpg,maybe\n")
    with pytest.raises(PairListError, match=r"p.csv:2: .*'x/1.jpg,y/1.jpg,maybe'"):
        read_csv_pairs(p)


def _crops(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_bin_round_trip(tmp_path):
    left, right = _crops(25, 1), _crops(25, 2)
    same = np.arange(25) % 2 == 0
    write_bin(tmp_path / "mine.bin", left, right, same)
    pairs = load_pairs(tmp_path / "mine.bin")
    assert pairs.protocol == "bin" and len(pairs) == 25
    np.testing.assert_array_equal(pairs.crops[pairs.left], left)
    np.testing.assert_array_equal(pairs.crops[pairs.right], right)
    assert pairs.same.tolist() == same.tolist()
    assert pairs.fold.tolist() == [
        f for f, size in enumerate([3] * 5 + [2] * 5) for _ in range(size)
    ]


@pytest.mark.parametrize("n", [21, 25, 29, 6000, 7001])
def test_bin_folds_are_exactly_10_contiguous_blocks_as_kfold(n):
    from sklearn.model_selection import KFold

    folds = bin_folds(n)
    sizes = np.bincount(folds)
    assert len(sizes) == 10 and sizes.max() - sizes.min() <= 1
    assert (np.diff(folds) >= 0).all()  # contiguous
    for f, (_, test) in enumerate(KFold(10, shuffle=False).split(np.arange(n))):
        assert (np.flatnonzero(folds == f) == test).all()  # insightface's split


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_bin_pickle_naming_other_globals_is_refused(tmp_path):
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x", b"y"], [_Boom()])))
    with pytest.raises(PairListError, match="refusing to load global"):
        read_bin(tmp_path / "evil.bin")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_bin_with_numpy_buffers_and_numpy_bools_loads(tmp_path, protocol):
    crops = _crops(20, 3)
    bins = [np.frombuffer(_png(c), np.uint8) for c in crops]
    issame = list(np.arange(10) % 2 == 0)  # numpy bools
    (tmp_path / "np.bin").write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    pairs = read_bin(tmp_path / "np.bin")
    np.testing.assert_array_equal(pairs.crops, crops)
    assert pairs.same.tolist() == [bool(v) for v in issame]


def test_bin_pickled_by_python3_at_protocol_2_loads(tmp_path):
    crops = _crops(20, 4)
    data = pickle.dumps(([_png(c) for c in crops], [True, False] * 5), protocol=2)
    assert b"_codecs" in data  # bytes at protocol 2 go through _codecs.encode
    (tmp_path / "p2.bin").write_bytes(data)
    np.testing.assert_array_equal(read_bin(tmp_path / "p2.bin").crops, crops)


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_bin_written_as_python2_pickle_needs_no_mxnet(tmp_path):
    """Bytes laid out by hand as Python 2 wrote insightface's lfw.bin: BINSTRING opcodes, which
    Python 3 can only read with encoding='bytes'."""
    ramp = np.linspace(0, 255, 112)
    imgs = np.stack(
        [np.stack([np.add.outer(ramp, ramp * k / 4) / 2] * 3, -1) for k in range(4)]
    ).astype(np.uint8)  # smooth: JPEG keeps it close
    data = b"\x80\x02]("  # PROTO 2, EMPTY_LIST, MARK
    for img in imgs:
        jpg = _jpeg(img)
        data += b"T" + struct.pack("<i", len(jpg)) + jpg  # BINSTRING
    data += b"e](\x88\x89e\x86."  # APPENDS, EMPTY_LIST, MARK, True, False, APPENDS, TUPLE2, STOP
    (tmp_path / "lfw.bin").write_bytes(data)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    pairs = read_bin(tmp_path / "lfw.bin")
    assert pairs.same.tolist() == [True, False]
    assert np.abs(pairs.crops.astype(int) - imgs).mean() < 3  # JPEG-close to the originals


def test_bin_with_odd_image_count_is_rejected(tmp_path):
    (tmp_path / "bad.bin").write_bytes(pickle.dumps(([_jpeg(_crops(1)[0])] * 3, [True])))
    with pytest.raises(PairListError, match="3 images for 1 pairs"):
        read_bin(tmp_path / "bad.bin")


def test_missing_pair_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_pairs(tmp_path / "nope.txt")
