"""Aggregate runs: ``python report.py <sweep dir> [dirs ...] [--published NAME=FILE ...]``."""

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description="results.csv, results.md and roc_overlay.png")
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories")
    p.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    p.add_argument(
        "--published",
        nargs="*",
        default=[],
        metavar="NAME=FILE",
        help="published ROC files (TPR FPR per line) to overlay",
    )
    args = p.parse_args()
    from face_rec.report import report

    published = dict(item.split("=", 1) for item in args.published)
    summary = report(args.dirs, args.out, {k: Path(v) for k, v in published.items()})
    print(f"{summary['runs']} runs -> {args.out or args.dirs[0]}/results.md")


if __name__ == "__main__":
    main()
