"""How far two packs of the same images put the landmarks (e.g. aligned with different MTCNN
``min_face_size``).

    python align.py data=lfw data.limit=2000 data.min_face_size=40 output_dir=logs/align_min40
    python align.py data=lfw data.limit=2000 data.min_face_size=80 output_dir=logs/align_min80
    python benchmarks/landmark_shift.py logs/align_min40 logs/align_min80

Per image in both manifests, the largest of its ten landmark coordinates' differences, in
source-image pixels; prints the median, the 99th percentile and the maximum.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from face_rec.data.pack import read_manifest
from face_rec.utils.machine import benchmark_header


def landmarks(pack: Path) -> dict[str, np.ndarray]:
    return {
        r["source"]: np.array(r["landmarks"].split(), float)
        for r in read_manifest(pack / "manifest.csv")
        if r["landmarks"]
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args()
    a, b = landmarks(args.a), landmarks(args.b)
    d = np.array([np.abs(a[s] - b[s]).max() for s in a if s in b])
    print(json.dumps(benchmark_header("cpu")))
    print(
        f"{len(d)} images in both: median {np.median(d):.2f} px, 99th percentile "
        f"{np.percentile(d, 99):.2f}, max {d.max():.2f}"
    )


if __name__ == "__main__":
    main()
