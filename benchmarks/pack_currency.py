"""What checking a pack's currency costs: the stat path and the content path.

    python benchmarks/pack_currency.py --pack packs/lfw --image-dir ../shared/data/lfw/images

``face_rec.align.run.pack_rows`` as training and evaluation call it (with the settings the pack
records), ``--repeats`` times each,
alternating: with the pack's record of its files' stamps (every file's size, times and inode
match: nothing is read) and with the record ignored, as at the first check after a fresh
copy of the data (new modification times: every source file is read and hashed, and a record
written, to a temporary file: the pack's own record is left as it was). The page cache is warm
for both
(the files were read before). Prints the machine header, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import face_rec.align.run as run
import face_rec.utils.stamps as stamps
from face_rec.align.run import AlignSettings
from face_rec.data.pack import read_summary
from face_rec.utils.machine import benchmark_header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pack", type=Path, default=Path("packs/lfw"))
    p.add_argument("--image-dir", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    summary = read_summary(args.pack)
    if summary is None or "chunk_size" not in summary:
        raise SystemExit(
            f"no complete pack of today's format in {args.pack}: run python align.py for it"
        )
    made = (AlignSettings(**summary["settings"]), summary["detector"], summary["chunk_size"])
    times: dict[str, list[float]] = {"stat": [], "content": []}
    scratch = Path(tempfile.mkdtemp()) / "stamps.csv"
    write = stamps.write_stamps
    for _ in range(args.repeats):
        for path in times:
            with contextlib.ExitStack() as fresh:
                if path == "content":  # as after a fresh copy: none recorded, one written
                    fresh.enter_context(mock.patch.object(stamps, "read_stamps", lambda p: {}))
                    fresh.enter_context(
                        mock.patch.object(stamps, "write_stamps", lambda p, st: write(scratch, st))
                    )
                start = time.perf_counter()
                rows, current = run.pack_rows(args.image_dir, args.pack, *made)
                times[path].append(time.perf_counter() - start)
            if not current:
                raise SystemExit(f"{args.pack} is not current for {args.image_dir}: align it first")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps(benchmark_header(), indent=1))
    print(
        f"pack_rows on {len(rows)} files, median of {args.repeats}: stat path {med['stat']:.3f} s, "
        f"content path {med['content']:.3f} s ({med['content'] / med['stat']:.1f}x)"
    )


if __name__ == "__main__":
    main()
