"""Helpers of the IJB tests: hand-built IJB trees and naive (loop) references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from face_rec.align.warp import ARCFACE_TEMPLATE_112

#: landmarks of a face in a 160 px synthetic image: the ArcFace template, scaled and shifted
LANDMARKS = ARCFACE_TEMPLATE_112 * 1.2 + 10


def write_tree(
    root: Path,
    target: str,
    images: dict[str, np.ndarray | bytes | None],
    faces: list[tuple[str, np.ndarray, float]],
    rows: list[tuple[str, int, int]],
    pairs: list[tuple[int, int, int]],
    one_n: dict[str, list[tuple[int, int]]] | None = None,
) -> Path:
    """An IJB tree in insightface's layout. ``images``: name -> array (saved as PNG), bytes
    (written as is) or None (not written: a missing image). ``faces``: landmark lines (name,
    (5, 2) points, faceness); ``rows``: face_tid_mid lines (name, template, media); ``pairs``:
    (t1, t2, label); ``one_n``: "G1"/"G2"/"probe" -> [(template, subject)] CSV rows."""
    t = target.lower()
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    for name, img in images.items():
        if isinstance(img, bytes):
            (root / "loose_crop" / name).write_bytes(img)
        elif img is not None:
            Image.fromarray(img).save(root / "loose_crop" / name)
    lines = [
        f"{n} " + " ".join(f"{v:.3f}" for v in np.asarray(lm).reshape(-1)) + f" {s}"
        for n, lm, s in faces
    ]
    (root / "meta" / f"{t}_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    (root / "meta" / f"{t}_face_tid_mid.txt").write_text(
        "".join(f"{n} {tid} {mid}\n" for n, tid, mid in rows)
    )
    (root / "meta" / f"{t}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {y}\n" for a, b, y in pairs)
    )
    if one_n:
        names = {
            "IJBC": ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"),
            "IJBB": ("ijbb_1N_gallery_S1.csv", "ijbb_1N_gallery_S2.csv", "ijbb_1N_probe_mixed.csv"),
        }[target]
        for key, name in zip(("G1", "G2", "probe"), names, strict=True):
            body = "".join(f"{tid},{sid},img/{tid}.jpg,0\n" for tid, sid in one_n[key])
            (root / "meta" / name).write_text(
                "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n" + body
            )
    return root


class OffGridDetector:
    """A stand-in for the alignment stage's detector: one confident face per image, its points
    :data:`LANDMARKS` shifted by an amount with many decimals that depends on the image."""

    def detect(self, images: list[np.ndarray]) -> list:
        from face_rec.align.detect import Face

        return [Face(np.array([20, 20, 140, 140.0]), 0.99, self.points(img)) for img in images]

    @staticmethod
    def points(image: np.ndarray) -> np.ndarray:
        """(5, 2) float64 landmarks, far from any 3-decimal value."""
        shift = image.reshape(-1, 3).mean(axis=0)[:2] / 255 * 4 - 2 + 1 / 7
        return LANDMARKS + shift + np.arange(10).reshape(5, 2) * 1e-4 / 3


def face_image(seed: int, size: int = 160) -> np.ndarray:
    """A synthetic 'face': smooth random colour blobs (distinct per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def naive_templates(x, xf, faceness, templates, media, images, ok, switches):
    """insightface's image2template_feature, one template at a time, with the switches.

    Per line (R,): template id, media id, image index (-1: none). Returns {template id:
    unit feature (D,) or None (no usable image or a zero sum)}."""
    out = {}
    for t in np.unique(templates):
        media_feats = []
        for m in np.unique(media[templates == t]):
            lines = np.flatnonzero((templates == t) & (media == m))
            feats = []
            for line in lines:
                i = images[line]
                if i < 0 or not ok[i]:
                    continue
                g = x[i].astype(np.float64) + (xf[i] if switches.flip == "add" else 0)
                quality = np.linalg.norm(g)  # the feature norm, before any normalisation
                if switches.norm == "l2":
                    g = g / np.linalg.norm(g)
                w = {"faceness": faceness[i], "none": 1.0, "quality": quality}[switches.weights]
                feats.append(w * g)
            if feats:
                media_feats.append(np.mean(feats, axis=0))
        total = np.sum(media_feats, axis=0) if media_feats else None
        if total is None or np.linalg.norm(total) == 0:
            out[int(t)] = None
        else:
            out[int(t)] = total / np.linalg.norm(total)
    return out


def insightface_tar(labels, scores, far):
    """ijb_11.py's reading, literally: sklearn's roc_curve, flipped, min over (|fpr - far|, i)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, k = min(zip(abs(fpr - far), range(len(fpr)), strict=True))
    return float(tpr[k])


def naive_nist(probe, probe_ids, gallery, gallery_ids, fpir):
    """NIST open-set figures by a loop over probes: (rank1 over mated, TPIR at fpir)."""
    s = probe @ gallery.T
    mated = np.array([p in set(gallery_ids) for p in probe_ids])
    top = s.max(axis=1)
    non = np.sort(top[~mated])[::-1]
    allowed = int(np.floor(len(non) * fpir + 1e-9))
    th = non[allowed]
    hits, rank1 = 0, 0
    for k in np.flatnonzero(mated):
        best = int(np.argmax(s[k]))
        if gallery_ids[best] == probe_ids[k]:
            rank1 += 1
            hits += s[k, best] > th
    return rank1 / mated.sum(), hits / mated.sum()
