"""What the importers share: the report of what was written and skipped, atomic CSV writing and
a process pool that keeps its results in order.

A clip that cannot be imported is a `ClipError` (its reason, and a message naming the file and
the problem); the importer records it in the `Report` and goes on with the next clip. The report
ends as OUT/skipped.jsonl (one object per skipped clip: clip, reason, detail), a few lines on
stderr and the counts as one JSON line on stdout.

    report = Report(out_dir)
    report.skip("clip-1", ClipError("no keypoint frames", "json/clip-1: no *_keypoints.json files"))
    print(json.dumps(report.finish(rows=12)))
"""
import csv
import json
import os
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

SHOWN_SKIPS = 20   # skipped clips printed on stderr; all of them are in OUT/skipped.jsonl


class ClipError(ValueError):
    """One clip (or one source file) that cannot be imported; `kind` is the reason counted."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ImportFailed(ValueError):
    """The whole import cannot go on (no source files at all, an output that is not a folder)."""


class Report:
    """Outcomes of an import: clips written, kept from an earlier run, skipped with their reason,
    and notes (a split without its CSV, a folder without a CSV row)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.written = self.kept = 0
        self.skipped: list[dict] = []
        self.notes: list[str] = []

    def skip(self, clip: str, error: ClipError, **where) -> None:
        self.skipped.append({"clip": clip, **where, "reason": error.kind, "detail": str(error)})

    def outcome(self, clip: str, status: str, detail: str, **where) -> bool:
        """Count a worker's result: "written", "kept", or the reason the clip is skipped. True
        when the clip is in the output."""
        if status == "written":
            self.written += 1
        elif status == "kept":
            self.kept += 1
        else:
            self.skip(clip, ClipError(status, detail), **where)
        return status in ("written", "kept")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", file=sys.stderr)

    def finish(self, **counts) -> dict:
        """Write OUT/skipped.jsonl, print the first skipped clips, return the summary."""
        write_lines(self.out_dir / "skipped.jsonl", [json.dumps(s, ensure_ascii=False) for s in self.skipped])
        for s in self.skipped[:SHOWN_SKIPS]:
            print(f"skipped {s['clip']}: {s['detail']}", file=sys.stderr)
        if len(self.skipped) > SHOWN_SKIPS:
            print(f"... and {len(self.skipped) - SHOWN_SKIPS} more skipped clips: all in "
                  f"{self.out_dir / 'skipped.jsonl'}", file=sys.stderr)
        return {**counts, "written": self.written, "kept": self.kept, "skipped": len(self.skipped),
                "reasons": dict(Counter(s["reason"] for s in self.skipped)), "notes": len(self.notes),
                "out": str(self.out_dir)}


def write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path: Path, header: list[str], rows: Iterable[list]) -> None:
    """A comma-separated file with a header line, written atomically (a text with a comma or a
    quote is quoted, as csv.DictReader reads it back)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def out_folder(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ImportFailed(f"{out}: exists and is not a folder")
    (out / "poses").mkdir(parents=True, exist_ok=True)
    return out


def in_order(fn: Callable, items: list, workers: int | None, desc: str, progress: bool = True) -> Iterator:
    """fn(item) for every item, in the items' order, over `workers` processes (default: all
    cores; 1: in this process). fn must be a module-level function (it is pickled)."""
    workers = workers or os.cpu_count() or 1
    pool = Pool(workers) if workers > 1 and len(items) > 1 else None
    try:
        results = pool.imap(fn, items, chunksize=4) if pool else map(fn, items)
        yield from tqdm(results, total=len(items), desc=desc, unit="clip", disable=not progress, file=sys.stderr)
    finally:
        if pool:
            pool.terminate()
