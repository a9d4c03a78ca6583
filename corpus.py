"""A sign corpus's rows: which pose file holds which text, in which split.

    read_rows      every row of the corpus (uid, text, pose path, split, problem), in file order
    split_texts    one split's texts, straight from the corpus files (e.g. to train a tokenizer)
    splits_source  where the splits come from, in words
    split_by_video the deterministic train/val/test split by video when the corpus has none
    resolve_layout layout "auto" -> the keypoint layout of the corpus's first readable pose file
    Row, DataError a row (a bad one keeps its problem, for data.prepare to report and skip) and
                   a corpus file that cannot be read at all

Layouts read:
  - iSign (the default): a CSV `uid,text` (default iSign_v1.1.csv) and poses/{uid}.pose;
    train.csv / val.csv / test.csv when present, else a deterministic 80/10/10 split by video
    (uid without its trailing `--N` segment), so no video is in two splits.
  - A JSONL manifest ({"pose": path, "text": ..., "split": ...}) for other corpora (How2Sign,
    PHOENIX poses); an empty split is assigned by video.
  - A sign dictionary's index.csv (sign-language-processing's spoken-to-signed-translation
    format: path,spoken_language,signed_language,start,end,words,glosses,priority; recognised by
    its columns): one row per clip of a word, `words` its text, all in the train split, each
    with its window (start and end in ms; lexicon.py uses them).
A row that cannot be used (an unquoted comma, bytes that are not UTF-8, a uid naming a file
outside the pose folder, an unknown split) is kept with its problem, never fatal: data.prepare
lists it in skipped.jsonl. A UTF-8 byte-order mark (as Excel writes) is skipped. A quote left
open across lines stops the read (DataError naming the line): it would merge rows silently.

References:
  - iSign (Joshi et al. 2024, "iSign: A Benchmark for Indian Sign Language Processing").

Used by data.py (the cache is built from these rows) and preflight.py (the layout a run records;
the tiny demo's tokenizer, trained on the training texts); the settings are data.DataConfig's
(CorpusConfig below). Tests: python -m pytest tests/test_data.py

    rows = read_rows(data.DataConfig(data_dir="data/synth"))   # [Row(uid, text, pose, split, problem)]
"""
import csv
import dataclasses
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

import poses
from poses import PoseConfig, PoseError

SPLITS = ("train", "val", "test")


class CorpusConfig(Protocol):
    """The settings this file reads: data.DataConfig's fields of the same names (a Protocol, so
    this file needs no import of data.py, which imports it)."""
    data_dir: str
    csv: str                 # the CSV (uid,text) or .jsonl manifest in data_dir
    pose_dir: str            # {data_dir}/{pose_dir}/{uid}.pose
    split_ratios: tuple      # train/val/test, by video, when no split CSVs exist
    split_seed: int
    pose: PoseConfig


Config = TypeVar("Config", bound=CorpusConfig)


class DataError(ValueError):
    """A corpus file that cannot be read at all, or a cache that would be lost if built as asked."""


@dataclass
class Row:
    uid: str
    text: str
    pose: str          # path of the .pose file
    split: str
    problem: str = ""  # why the corpus row itself is unusable (file and line named); prepare skips it
    where: str = ""    # the corpus file and line it comes from, e.g. "data/x/train.csv line 7"
    window: tuple[int, int] | None = None   # a dictionary row's (start, end) in ms within its file


def video_id(uid: str) -> str:
    """iSign uids are {video}--{segment}: MluonE1OqLY--18 -> MluonE1OqLY."""
    return re.sub(r"--\d+$", "", uid)


def split_by_video(uids: list[str], ratios: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 0) -> list[str]:
    """Shuffle the videos (seeded) and fill train, then val, then test up to the row ratios."""
    counts = Counter(video_id(u) for u in uids)
    videos = sorted(counts)
    bounds = np.cumsum(ratios) / sum(ratios) * len(uids)
    which, seen = {}, 0
    for i in np.random.default_rng(seed).permutation(len(videos)):
        v = videos[i]
        mid = seen + counts[v] / 2          # a video goes where its middle row falls
        which[v] = SPLITS[int(np.searchsorted(bounds, mid, side="right")) if mid < bounds[-1] else 2]
        seen += counts[v]
    return [which[video_id(u)] for u in uids]


def _utf8(text: str) -> bool:
    """False when `text` holds bytes that were not UTF-8 (read with errors="surrogateescape")."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_csv(path: Path) -> list[tuple[str, str, str, str]]:
    """(uid, text, problem, where) per data row, problem "" when the row is good. A UTF-8 BOM (as Excel
    writes) is skipped; a row with bytes that are not UTF-8 or with more fields than the header
    (an unquoted comma in the text) is kept with its problem, for prepare to report and skip."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if not {"uid", "text"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs columns uid,text; has {reader.fieldnames} (the first line must "
                            "name the columns, e.g. `uid,text`)")
        out, previous = [], reader.line_num
        for r in reader:
            _refuse_line_breaks(path, r, previous, reader.line_num)
            previous = reader.line_num
            where, uid, text = f"{path} line {reader.line_num}", (r["uid"] or "").strip(), (r["text"] or "").strip()
            problem = ""
            if None in r:   # DictReader's key for the fields beyond the header's
                problem = (f"{where}: {len(reader.fieldnames) + len(r[None])} fields, the header names "
                           f"{len(reader.fieldnames)}; quote a text that holds a comma")
            elif not _utf8(uid + text):
                problem = f"{where}: bytes that are not UTF-8 (save the file as UTF-8)"
            elif not uid:
                problem = f"{where}: empty uid"
            out.append((uid, text, problem, where))
        return out


def _refuse_line_breaks(path: Path, fields: dict, previous: int, end: int) -> None:
    """A field holding a line break is a quote opened and closed lines later, or never: one stray
    `"` turns every row up to the next `"` (or the end of the file) into one text, and the corpus
    silently loses them. The file must be fixed, so this stops the read (DataError). `previous`
    and `end`: the reader's line number after the previous row and after this one."""
    values = [v for v in fields.values() if isinstance(v, str)] + (fields.get(None) or [])
    breaks = sum(v.count("\n") + v.count("\r") - v.count("\r\n") for v in values)
    if breaks:
        start = max(previous + 1, end - breaks)   # a quote never closed holds the file's last line break too
        raise DataError(f"{path} line {start}: a quote opens there and closes only at line {end} (or never), so "
                        f"lines {start}-{end} would be one text; remove that stray \", double it (\"\") or put the "
                        "text's quotes on its own line, then run again (nothing was read)")


def _read_manifest(path: Path, data_dir: Path) -> list[Row]:
    """A JSONL manifest's rows ({"pose", "text", "split", optional "uid"}; pose relative to
    data_dir). A line that is not such an object becomes a row with its problem."""
    rows = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                it = json.loads(line) if _utf8(line) else None
            except ValueError as e:
                rows.append(Row(f"line-{n}", "", "", "", f"{where}: not JSON ({e})"))
                continue
            problem = ("bytes that are not UTF-8 (save the file as UTF-8)" if it is None else
                       "not a JSON object" if not isinstance(it, dict) else
                       'no "pose" field (the .pose file\'s path, relative to the data directory)'
                       if not isinstance(it.get("pose"), str) else
                       f'"split" is {it["split"]!r}, not one of {", ".join(SPLITS)} (or empty: assigned by video)'
                       if it.get("split") not in (None, "", *SPLITS) else "")
            if problem:
                rows.append(Row(f"line-{n}", "", "", "", f"{where}: {problem}"))
            else:
                rows.append(Row(str(it.get("uid") or Path(it["pose"]).stem), str(it.get("text") or "").strip(),
                                str(data_dir / it["pose"]), it.get("split") or "", where=where))
    return rows


LEXICON_COLUMNS = ("path", "spoken_language", "signed_language", "start", "end", "words", "glosses", "priority")


def is_lexicon_index(path: Path) -> bool:
    """Whether a CSV is a sign dictionary's index (its header names the columns path and words)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return {"path", "words"} <= set(next(csv.reader(f), []))


def _int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value and value.strip() else 0
    except ValueError:
        return None


def _read_lexicon(path: Path) -> list[Row]:
    """A dictionary index's rows: pose = the folder's `path`, text = `words`, window = (start, end)
    in ms, split "train"; uid L{line}. A row that cannot be used keeps its problem (prepare skips
    it): too few or too many fields, a path outside the folder, no words, start or end not a
    whole number of ms, or an end before its start (end 0 means the end of the file)."""
    folder = os.path.normpath(path.parent)
    rows = []
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        for r in reader:
            where, uid = f"{path} line {reader.line_num}", f"L{reader.line_num:06d}"
            rel, words = (r.get("path") or "").strip(), " ".join((r.get("words") or "").split())
            pose = os.path.normpath(os.path.join(folder, rel))
            start, end = _int(r.get("start")), _int(r.get("end"))
            problem = (f"{len(reader.fieldnames) + len(r[None])} fields, the header names {len(reader.fieldnames)}"
                       if None in r else "a field missing" if None in r.values() else
                       "bytes that are not UTF-8 (save the file as UTF-8)" if not _utf8(rel + words) else
                       "empty path" if not rel else
                       f"path {rel!r} is outside the dictionary's folder" if not pose.startswith(folder + os.sep) else
                       "empty words (the spoken word or phrase the clip signs)" if not words else
                       "start or end is not a whole number of milliseconds" if start is None or end is None else
                       f"start {start} ms is negative" if start < 0 else
                       f"end {end} ms is not after start {start} ms" if 0 < end <= start else "")
            rows.append(Row(uid, words, pose, "train", f"{where}: {problem}" if problem else "", where,
                            window=None if problem else (start, end)))
    return rows


def source_files(cfg: CorpusConfig) -> list[Path]:
    """The text files that define the corpus: a manifest, the split CSVs, or the single CSV."""
    d = Path(cfg.data_dir)
    if cfg.csv.endswith(".jsonl"):
        return [d / cfg.csv]
    split_files = [d / f"{s}.csv" for s in SPLITS if (d / f"{s}.csv").is_file()]
    if (d / "train.csv").is_file():
        return split_files
    if not (d / cfg.csv).is_file():
        if split_files:
            raise FileNotFoundError(f"{d}: {', '.join(f.name for f in split_files)} but no train.csv: the train "
                                    f"split has no clips; add train.csv (or one CSV, {cfg.csv}, split by video)")
        raise FileNotFoundError(f"{d}: no {cfg.csv} (nor train.csv / val.csv / test.csv)")
    return [d / cfg.csv]


def splits_source(cfg: CorpusConfig, sizes: dict[str, int] | None = None) -> str:
    """Where the splits come from, in words (e.g. 'splits from train.csv, val.csv; iSign_v1.1.csv
    beside them is not read': a corpus with split files ignores its main CSV), and with `sizes`
    the clips in each."""
    files = source_files(cfg)
    if cfg.csv.endswith(".jsonl"):
        source = f'splits from the "split" field of {files[0].name} (rows without one: by video)'
    elif files[0].name != "train.csv":
        source = (f"splits: {files[0].name}'s rows by video, {'/'.join(f'{r:g}' for r in cfg.split_ratios)} "
                  f"(split_ratios, split_seed {cfg.split_seed})")
    else:
        source = f"splits from {', '.join(f.name for f in files)}" + (
            f"; {cfg.csv} beside them is not read" if (Path(cfg.data_dir) / cfg.csv).is_file() else "")
    return source + (": " + ", ".join(f"{s} {sizes.get(s, 0)}" for s in SPLITS) + " clips" if sizes else "")


def read_rows(cfg: CorpusConfig) -> list[Row]:
    """Every row of the corpus with its pose path and split, in file order."""
    d, files = Path(cfg.data_dir), source_files(cfg)
    if cfg.csv.endswith(".jsonl"):
        return _split_unsplit(_read_manifest(files[0], d), cfg)
    if len(files) == 1 and is_lexicon_index(files[0]):
        return _read_lexicon(files[0])
    split_files = files[0].name == "train.csv"
    rows = [Row(u, t, "", f.stem if split_files else "", problem, where)
            for f in files for u, t, problem, where in _read_csv(f)]
    pose_dir = os.path.normpath(d / cfg.pose_dir)
    for r in rows:
        r.pose = str(d / cfg.pose_dir / f"{r.uid}.pose")
        if not r.problem and not os.path.normpath(r.pose).startswith(pose_dir + os.sep):
            r.problem = f"uid {r.uid!r} names a file outside {cfg.pose_dir}/ (a uid is a file name there)"
    return _split_unsplit(rows, cfg)


def _split_unsplit(rows: list[Row], cfg: CorpusConfig) -> list[Row]:
    unsplit = [r for r in rows if not r.split]
    for r, s in zip(unsplit, split_by_video([r.uid for r in unsplit], cfg.split_ratios, cfg.split_seed)):
        r.split = s
    return rows


def split_texts(cfg: CorpusConfig, split: str) -> list[str]:
    """The non-empty texts of one split, read from the corpus files (no cache needed), e.g. to
    train a tokenizer."""
    return [r.text for r in read_rows(cfg) if r.split == split and r.text and not r.problem]


def resolve_layout(cfg: Config, rows: list[Row] | None = None) -> Config:
    """cfg with layout "auto" replaced by the first layout (poses.fitting_layouts) of the corpus's
    first readable pose file: chosen once per corpus, then required of every file (a file that
    does not fit is skipped with its reason). Looks at most at the first 100 pose files."""
    if cfg.pose.layout != "auto":
        return cfg
    problems = []
    for r in (rows if rows is not None else read_rows(cfg))[:100]:
        try:
            header, _ = poses.read_pose(r.pose, cfg.pose.max_pose_mb)
            layout = poses.detect_layout(header, r.pose)
        except PoseError as e:
            problems.append(str(e))
            continue
        return dataclasses.replace(cfg, pose=dataclasses.replace(cfg.pose, layout=layout))
    raise FileNotFoundError(f"{cfg.data_dir}: layout 'auto' found no readable pose file to choose the layout "
                            f"from among its first rows ({len(problems)} tried; first: "
                            f"{problems[0] if problems else 'the corpus has no rows'})")
