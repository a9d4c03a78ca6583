"""Corpora and dictionaries in the forms the field ships them -> the layouts this project reads.

    how2sign               How2Sign's OpenPose JSON + re-aligned CSVs -> a corpus, its splits kept
                           (importers/how2sign.py)
    kaggle-signs           Google's isolated ASL signs (parquet, long format) -> a sign dictionary in
                           the lexicon format (importers/kaggle.py)
    kaggle-fingerspelling  Google's ASL fingerspelling (parquet, wide format) -> a corpus of phrases

Each reads through the library made for the format (pose-format's OpenPose reader, pyarrow),
writes pose-format .pose files, reports every clip it skips and why (OUT/skipped.jsonl; one bad
file never stops an import), keeps what an earlier run wrote, and prints its counts as the last
line, one JSON object. docs/data.md shows each layout with an example.

    python data.py import how2sign SRC OUT
    python data.py import kaggle-signs SRC OUT [--fps 30 --width 1000 --height 1000]
    python data.py import kaggle-fingerspelling SRC OUT [--supplemental]
"""
import argparse
import json
import sys

from importers.common import ClipError, ImportFailed

FORMATS = ("how2sign", "kaggle-signs", "kaggle-fingerspelling")


def add_command(sub) -> None:
    """`data.py import FORMAT SRC OUT` on data.py's subcommands."""
    p = sub.add_parser("import", help="a corpus or dictionary as the field ships it -> this project's layout "
                                      f"({', '.join(FORMATS)})")
    p.add_argument("format", choices=FORMATS)
    p.add_argument("src", help="the data set as downloaded")
    p.add_argument("out", help="the corpus (or dictionary) folder to write")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--fps", type=float, default=30.0, help="Kaggle sets: the videos' frame rate (not in the files)")
    p.add_argument("--width", type=int, default=1000, help="Kaggle sets: the videos' width in pixels")
    p.add_argument("--height", type=int, default=1000, help="Kaggle sets: the videos' height in pixels")
    p.add_argument("--supplemental", action="store_true",
                   help="kaggle-fingerspelling: also supplemental_metadata.csv (fingerspelled sentences)")
    p.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    """One import; a source that cannot be imported at all is one `error:` line and exit code 2."""
    from importers import how2sign, kaggle
    try:
        if args.format == "how2sign":
            summary = how2sign.import_how2sign(args.src, args.out, workers=args.workers)
        else:
            frame = dict(fps=args.fps, width=args.width, height=args.height, workers=args.workers)
            summary = (kaggle.import_signs(args.src, args.out, **frame) if args.format == "kaggle-signs" else
                       kaggle.import_fingerspelling(args.src, args.out, supplemental=args.supplemental, **frame))
    except (ImportFailed, ClipError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
