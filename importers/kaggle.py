"""Google's MediaPipe landmark sets on Kaggle -> .pose files: the isolated signs become a sign
dictionary (the lexicon format), the fingerspelled phrases a corpus.

What it reads (the competitions' data pages, www.kaggle.com/competitions/asl-signs/data and
.../asl-fingerspelling/data; landmarks by MediaPipe Holistic, 543 per frame):

  asl-signs ("Google - Isolated Sign Language Recognition", 2023; 250 signs, 21 signers)
    SRC/train.csv                                   path,participant_id,sequence_id,sign
    SRC/train_landmark_files/{participant_id}/{sequence_id}.parquet   long format, one row per
        landmark and frame: frame, row_id ("{frame}-{type}-{landmark_index}", e.g. "20-face-0"),
        type (face, left_hand, pose, right_hand), landmark_index, x, y, z; 543 rows per frame
        (face 468, left_hand 21, pose 33, right_hand 21), NaN where MediaPipe found nothing
  asl-fingerspelling ("Google - American Sign Language Fingerspelling Recognition", 2023)
    SRC/train.csv                                   path,file_id,sequence_id,participant_id,phrase
    SRC/train_landmarks/{file_id}.parquet   wide format, many sequences per file, one row per
        frame, indexed by sequence_id: frame, x_face_0 .. x_face_467, x_left_hand_0 .., x_pose_0 ..,
        x_right_hand_0 .. x_right_hand_20, the same for y and z (1,629 float32 columns), NaN where
        not detected; SRC/supplemental_metadata.csv + supplemental_landmarks/ (fingerspelled
        sentences) in the same form, with --supplemental

x and y are MediaPipe's normalised image coordinates (0..1 of the frame's width and height), z
its relative depth. The .pose files are what pose-format's load_holistic writes for these
landmarks: x * width, y * height, z as given, confidence 1 where a landmark was found and 0
(missing) where it is NaN, in pose-format's component order POSE_LANDMARKS 33, FACE_LANDMARKS
468, LEFT_HAND_LANDMARKS 21, RIGHT_HAND_LANDMARKS 21: 543 points, no world landmarks (layout
"holistic"). A clip keeps its frames (one per distinct `frame` value, in order) and its missing
hands as missing. The files give neither the videos' size nor their frame rate: --width/--height
(default 1000 x 1000, load_holistic's own default: x and y keep their ratio of the frame) and
--fps (default 30, a phone camera's usual rate) say what to assume.

What it writes:
  kaggle-signs          OUT/index.csv, the lexicon format (path,spoken_language,signed_language,
                        start,end,words,glosses,priority: poses/{participant}/{sequence}.pose, en,
                        ase, 0, the clip's length in ms rounded up (an end at or past the clip's
                        end is the whole file), the sign, the sign in capitals, 0)
  kaggle-fingerspelling OUT/train.csv, val.csv, test.csv (uid,text: uid {participant}--{sequence},
                        the phrase; split 80/10/10 by signer, corpus.split_by_video) and
                        OUT/poses/{uid}.pose
and OUT/skipped.jsonl (a missing or unreadable parquet file, a sequence not in its file, a bad
CSV row); the counts are the last line, as JSON. A rerun keeps the .pose files already written.
Parquet is read with pyarrow, the optional extra: pip install -r requirements-formats.txt.

    python data.py import kaggle-signs ~/asl-signs data/asl-signs-lexicon [--fps 30]
    python data.py import kaggle-fingerspelling ~/asl-fingerspelling data/asl-fs [--supplemental]
"""
import csv
import math
from pathlib import Path

import numpy as np
from numpy import ma
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader

from corpus import split_by_video
from importers.common import ClipError, ImportFailed, Report, in_order, out_folder, write_csv

# (Kaggle's landmark type, count, first point in pose-format's order), in the files' own order
TYPES = (("face", 468, 33), ("left_hand", 21, 501), ("pose", 33, 0), ("right_hand", 21, 522))
POINTS = 543
LONG_COLUMNS = ("frame", "type", "landmark_index", "x", "y", "z")
# the wide files' coordinate columns in pose-format's point order, x block, then y, then z
WIDE_COLUMNS = [f"{c}_{t}_{i}" for c in "xyz" for t, n, _ in sorted(TYPES, key=lambda t: t[2]) for i in range(n)]
SIGNS_CSV = ("path", "participant_id", "sequence_id", "sign")
FINGERSPELLING_CSV = ("path", "file_id", "sequence_id", "participant_id", "phrase")


class ExtraMissing(ImportFailed):
    """pyarrow (the optional extra that reads parquet) is not installed."""


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ExtraMissing("the Kaggle importers read parquet with pyarrow: "
                           "pip install -r requirements-formats.txt") from e
    return pa, pc, pq


# ----------------------------------------------------------------------------- landmarks -> .pose
def holistic_header(width: int, height: int) -> PoseHeader:
    """pose-format's MediaPipe Holistic header without the world landmarks (543 points)."""
    from synth.demo import holistic_header as with_world   # built without mediapipe; its first four parts
    header = with_world(width, height)
    return PoseHeader(header.version, header.dimensions, header.components[:4])


def to_pose(xyz: np.ndarray, fps: float, width: int, height: int) -> Pose:
    """(T, 543, 3) normalised landmarks in pose-format's point order, NaN where not detected ->
    a Pose as load_holistic makes it: pixels, confidence 1 / 0, a missing point masked and zero."""
    found = np.isfinite(xyz[..., :2]).all(-1)                                  # (T, 543)
    pixels = xyz * np.array([width, height, 1], np.float32)
    data = np.where(found[..., None] & np.isfinite(pixels), pixels, 0).astype(np.float32)[:, None]
    mask = np.repeat(~found[:, None, :, None], 3, axis=-1)                     # (T, 1, 543, 3)
    return Pose(holistic_header(width, height),
                NumPyPoseBody(fps, ma.masked_array(data, mask=mask), found.astype(np.float32)[:, None]))


def _unreadable(path, e: Exception) -> ClipError:
    return ClipError("unreadable parquet", f"{path}: not a readable parquet file ({type(e).__name__}: {e}); "
                                           "truncated download? download it again")


def _check_columns(path, names: list[str], needed) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ClipError("not a landmark file", f"{path}: no column {shown}; it has {', '.join(names[:8])}, ...")


def read_long(path) -> np.ndarray:
    """An asl-signs parquet (long format) -> (frames, 543, 3) float32 in pose-format's point
    order, NaN where a landmark is missing (also where its row is absent)."""
    pa, pc, pq = _pyarrow()
    try:
        _check_columns(path, pq.read_schema(path).names, LONG_COLUMNS)
        table = pq.read_table(path, columns=list(LONG_COLUMNS))
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    if not table.num_rows:
        raise ClipError("no frames", f"{path}: no rows")
    names = pa.array([t for t, *_ in TYPES])
    kind = pc.fill_null(pc.index_in(table["type"].cast(pa.string()), value_set=names), -1).to_numpy()
    frame, index = (table[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in ("frame", "landmark_index"))
    count, first = np.array([n for _, n, _ in TYPES] + [0]), np.array([f for *_, f in TYPES] + [0])
    bad = (kind < 0) | ~np.isfinite(frame) | ~(index >= 0) | (index >= count[kind])
    if bad.any():
        r = int(np.argmax(bad))
        row = {c: table[c][r].as_py() for c in ("frame", "type", "landmark_index")}
        raise ClipError("not a landmark file", f"{path} row {r}: {row} is not one of MediaPipe Holistic's 543 "
                                               "landmarks in a frame")
    frames, at = np.unique(frame, return_inverse=True)
    xyz = np.full((len(frames), POINTS, 3), np.nan, np.float32)
    xyz[at, first[kind] + index.astype(np.int64)] = np.stack(
        [table[c].to_numpy(zero_copy_only=False) for c in "xyz"], -1)
    return xyz


def read_wide(path, wanted: set[int], batch_rows: int = 8192):
    """Yield (sequence_id, (frames, 543, 3) landmarks) for each wanted sequence of an
    asl-fingerspelling parquet (wide format), streamed in batches of rows: a file holds about a
    thousand sequences, far more than memory needs to. A sequence's rows may be anywhere in the
    file; it is yielded once its last row is read."""
    pa, _, pq = _pyarrow()
    columns = ["sequence_id", "frame", *WIDE_COLUMNS]
    try:
        pf = pq.ParquetFile(path)
        _check_columns(path, pf.schema_arrow.names, columns)
        ids = pf.read(columns=["sequence_id"])["sequence_id"].to_numpy()
        seqs, back = np.unique(ids[::-1], return_index=True)
        last = dict(zip(seqs.tolist(), (len(ids) - 1 - back).tolist()))    # sequence -> its last row
        pieces, start = {}, 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            here = ids[start:start + batch.num_rows]
            frame = batch.column(1).to_numpy(zero_copy_only=False)
            values = np.stack([batch.column(j).to_numpy(zero_copy_only=False) for j in range(2, len(columns))], 1)
            for s in set(np.unique(here).tolist()) & wanted:
                rows = here == s
                pieces.setdefault(s, []).append((frame[rows], values[rows]))
                if last[s] < start + batch.num_rows:
                    yield s, _frames_of(pieces.pop(s))
            start += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None


def _frames_of(pieces: list) -> np.ndarray:
    """A sequence's rows (frame numbers, 1629 values each) -> (frames, 543, 3), in frame order."""
    frame = np.concatenate([f for f, _ in pieces])
    values = np.concatenate([v for _, v in pieces]).astype(np.float32)
    frames, first = np.unique(frame, return_index=True)                   # sorted; a repeated frame once
    return values[first].reshape(len(frames), 3, POINTS).transpose(0, 2, 1)


# ----------------------------------------------------------------------------- train.csv
def read_index(path: Path, columns: tuple) -> tuple[list[dict], list[tuple[int, str]]]:
    """The rows of a Kaggle train.csv (participant_id, sequence_id as ints), and (line, problem)
    of each row that cannot be used."""
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file (the competition's {path.name}, with columns {','.join(columns)})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not set(columns) <= set(reader.fieldnames or []):
            raise ImportFailed(f"{path}: needs columns {','.join(columns)}; has {reader.fieldnames}")
        rows, bad = [], []
        for r in reader:
            try:
                r["participant_id"], r["sequence_id"] = int(r["participant_id"]), int(r["sequence_id"])
            except (TypeError, ValueError):
                bad.append((reader.line_num, f"participant_id {r['participant_id']!r}, sequence_id "
                                             f"{r['sequence_id']!r} are not whole numbers"))
                continue
            if not (r["path"] or "").strip():
                bad.append((reader.line_num, "empty path"))
            else:
                rows.append(r)
        return rows, bad


# ----------------------------------------------------------------------------- asl-signs
def convert_sign(item: tuple) -> tuple[str, str, int]:
    """Worker: (parquet, .pose, fps, width, height) -> (written | kept | reason, detail, frames)."""
    import poses
    import video   # write_pose: atomic
    src, out, fps, width, height = item
    try:
        if Path(out).is_file():
            return "kept", "", len(poses.read_pose(out)[1].data)
        if not Path(src).is_file():
            raise ClipError("missing parquet", f"{src}: no such file")
        xyz = read_long(src)
        video.write_pose(to_pose(xyz, fps, width, height), out)
        return "written", "", len(xyz)
    except (ClipError, poses.PoseError) as e:
        return e.kind, str(e), 0
    except Exception as e:   # an odd file must not stop 94k clips: reported with its name
        return "unreadable parquet", f"{src}: {type(e).__name__}: {e}", 0


def import_signs(src, out_dir, fps: float = 30.0, width: int = 1000, height: int = 1000,
                 workers: int | None = None, progress: bool = True) -> dict:
    """asl-signs -> OUT/index.csv (lexicon format) + OUT/poses/{participant}/{sequence}.pose."""
    _pyarrow()
    src, out = Path(src), out_folder(out_dir)
    report = Report(out)
    rows, bad = read_index(src / "train.csv", SIGNS_CSV)
    for n, problem in bad:
        report.skip(f"train.csv line {n}", ClipError("bad CSV row", f"{src / 'train.csv'} line {n}: {problem}"))
    jobs = []
    for r in rows:
        rel = Path("poses") / str(r["participant_id"]) / f"{r['sequence_id']}.pose"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((r, rel, (str(src / r["path"]), str(out / rel), fps, width, height)))
    lexicon = []
    for (r, rel, _), (status, detail, frames) in zip(jobs, in_order(convert_sign, [j for *_, j in jobs],
                                                                      workers, "kaggle-signs", progress)):
        if report.outcome(r["path"], status, detail):
            lexicon.append([rel.as_posix(), "en", "ase", 0, math.ceil(frames * 1000 / fps), r["sign"],
                            r["sign"].upper(), 0])
    write_csv(out / "index.csv", ["path", "spoken_language", "signed_language", "start", "end", "words",
                                  "glosses", "priority"], lexicon)
    return report.finish(format="kaggle-signs", csv_rows=len(rows) + len(bad), signs=len({r[5] for r in lexicon}))


# ----------------------------------------------------------------------------- asl-fingerspelling
def convert_file(item: tuple) -> list[tuple[str, str]]:
    """Worker: (parquet, [(sequence_id, .pose)], fps, width, height) -> (status, detail) per sequence."""
    import video
    src, todo, fps, width, height = item
    status = {s: ("kept", "") for s, out in todo if Path(out).is_file()}
    wanted = {s: out for s, out in todo if s not in status}
    try:
        if wanted and not Path(src).is_file():
            raise ClipError("missing parquet", f"{src}: no such file")
        for s, xyz in read_wide(src, set(wanted)) if wanted else ():
            video.write_pose(to_pose(xyz, fps, width, height), wanted[s])
            status[s] = ("written", "")
    except Exception as e:   # the sequences not yet written share the file's problem
        error = e if isinstance(e, ClipError) else ClipError("unreadable parquet", f"{src}: {type(e).__name__}: {e}")
        status.update({s: (error.kind, str(error)) for s in wanted if s not in status})
    return [status.get(s, ("sequence not in its file", f"{src}: no rows with sequence_id {s}")) for s, _ in todo]


def import_fingerspelling(src, out_dir, fps: float = 30.0, width: int = 1000, height: int = 1000,
                          supplemental: bool = False, workers: int | None = None, progress: bool = True) -> dict:
    """asl-fingerspelling -> OUT/{train,val,test}.csv (split by signer) + OUT/poses/{uid}.pose."""
    _pyarrow()
    src, out = Path(src), out_folder(out_dir)
    report = Report(out)
    rows, n_rows = [], 0
    for name in ("train.csv", "supplemental_metadata.csv") if supplemental else ("train.csv",):
        these, bad = read_index(src / name, FINGERSPELLING_CSV)
        rows += these
        n_rows += len(these) + len(bad)
        for n, problem in bad:
            report.skip(f"{name} line {n}", ClipError("bad CSV row", f"{src / name} line {n}: {problem}"))
    by_file, uid_of, text_of = {}, {}, {}
    for r in rows:
        uid = f"{r['participant_id']}--{r['sequence_id']}"   # corpus.video_id: the signer
        if uid in text_of:
            report.skip(uid, ClipError("duplicate sequence", f"{uid}: sequence_id {r['sequence_id']} twice"))
            continue
        if not (r["phrase"] or "").strip():
            report.skip(uid, ClipError("empty phrase", f"{uid}: empty phrase"))
            continue
        text_of[uid] = r["phrase"].strip()
        uid_of[(r["path"], r["sequence_id"])] = uid
        by_file.setdefault(r["path"], []).append((r["sequence_id"], str(out / "poses" / f"{uid}.pose")))
    items = [(str(src / path), todo, fps, width, height) for path, todo in by_file.items()]
    kept = []
    for (path, todo), results in zip(by_file.items(), in_order(convert_file, items, workers,
                                                                "kaggle-fingerspelling", progress)):
        for (s, _), (status, detail) in zip(todo, results):
            if report.outcome(uid_of[(path, s)], status, detail):
                kept.append(uid_of[(path, s)])
    splits = dict(zip(kept, split_by_video(kept))) if kept else {}
    for split in ("train", "val", "test"):
        write_csv(out / f"{split}.csv", ["uid", "text"], [[u, text_of[u]] for u in kept if splits[u] == split])
    return report.finish(format="kaggle-fingerspelling", csv_rows=n_rows, files=len(by_file),
                         splits={s: list(splits.values()).count(s) for s in ("train", "val", "test")})
