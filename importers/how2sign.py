"""How2Sign (Duarte et al., CVPR 2021) as downloaded -> a corpus this project trains on.

What it reads: the tree that How2Sign's download script (download_how2sign.sh, in
how2sign/how2sign.github.io) makes with `rgb_front_2D_keypoints english_translation_re-aligned`:

    SRC/sentence_level/{train,val,test}/
      text/en/raw_text/re_aligned/how2sign_realigned_{split}.csv
          tab-separated, a header line: VIDEO_ID VIDEO_NAME SENTENCE_ID SENTENCE_NAME
          START_REALIGNED END_REALIGNED SENTENCE (e.g. -d5dN54tH2E, -d5dN54tH2E-1-rgb_front,
          -d5dN54tH2E_0, -d5dN54tH2E_0-1-rgb_front, 12.97, 19.52, We're going to work on ...)
      rgb_front/features/openpose_output/json/{SENTENCE_NAME}/{SENTENCE_NAME}_{frame:012d}_keypoints.json
          one OpenPose file per frame: {"people": [{"pose_keypoints_2d": [x, y, c] * 25,
          "face_keypoints_2d": * 70, "hand_left_keypoints_2d": * 21, "hand_right_keypoints_2d": * 21}]},
          pixels of the 1280 x 720 video at 24 fps (as sign-language-processing/datasets' how2sign.py
          reads them)

The files are found by name anywhere under SRC (a CSV named how2sign_realigned_{split}.csv, a
folder openpose_output/json, or json, below a folder named after the split), so other
arrangements of the same download work too. The keypoint clips are the ones How2Sign distributes; its authors say
clips that match the re-aligned times must be cut from the full videos
(how2sign/how2sign.github.io issue 9): the re-aligned CSV gives each clip its English here.

What it writes: OUT/poses/{SENTENCE_NAME}.pose (pose-format's OpenPose layout, 137 points, XYC,
through pose_format.utils.openpose.load_openpose; layout "openpose"), OUT/train.csv, val.csv,
test.csv (uid,text: How2Sign's own splits, which corpus.py reads as they are) and
OUT/skipped.jsonl: every CSV row without a usable clip and why (no keypoint folder, a folder
without frames, an unreadable frame file, no person in any frame, an empty sentence, a
malformed row). The counts (CSV rows, keypoint folders, clips written, skipped by reason) are
the last line, as JSON: users of How2Sign report that the CSV rows, the clips and the papers'
counts disagree. A rerun keeps the .pose files already written.

    python data.py import how2sign ~/How2Sign data/how2sign [--workers 8]
"""
import json
import os
import re
from pathlib import Path

from pose_format.utils.openpose import OpenPose_Components, load_openpose

from importers.common import ClipError, ImportFailed, Report, in_order, out_folder, write_csv

SPLITS = ("train", "val", "test")
FPS, WIDTH, HEIGHT = 24, 1280, 720           # How2Sign's frontal videos
CSV_NAME = re.compile(r"how2sign_realigned_(train|val|test)\.csv")
FRAME_FILE = re.compile(r"_(\d+)_keypoints\.json$")


# ----------------------------------------------------------------------------- finding the files
def find_files(src: Path, report: Report) -> dict[str, tuple[Path | None, Path | None]]:
    """split -> (its re-aligned CSV, its keypoints' json folder), None where missing. A json
    folder belongs to the nearest folder above it named train, val or test (SRC may be a split's
    own folder); its thousands of clip folders are not walked here."""
    csvs, roots = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        if here.name == "json":
            split = next((p for p in reversed(here.resolve().parts) if p in SPLITS), None)
            if split:
                roots[split].append(here)
            dirnames.clear()
            continue
        dirnames.sort()
        for name in filenames:
            if m := CSV_NAME.fullmatch(name):
                csvs[m.group(1)].append(here / name)
    found = {}
    for split in SPLITS:
        # several json folders for a split: OpenPose's own, and the frontal view's (the CSV's names)
        front = sorted(roots[split], key=lambda p: (p.parent.name != "openpose_output", "front" not in str(p)))
        for what, paths in (("CSVs", csvs[split]), ("json folders", front)):
            if len(paths) > 1:
                report.note(f"{split}: {len(paths)} {what} ({', '.join(map(str, paths))}); using {paths[0]}")
        found[split] = (csvs[split][0] if csvs[split] else None, front[0] if front else None)
    return found


# ----------------------------------------------------------------------------- the re-aligned CSV
def read_realigned_csv(path: Path) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """(line, SENTENCE_NAME, SENTENCE) of each data row, and (line, problem) of each bad row.
    Read line by line, split on tabs (not as quoted CSV: a sentence that starts with a quote
    must not swallow the next rows); a sentence wholly in double quotes is unquoted."""
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="replace").split("\n")
    except OSError as e:
        raise ClipError("unreadable CSV", f"{path}: cannot be read ({e})") from e
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    if not {"SENTENCE_NAME", "SENTENCE"} <= set(header):
        raise ClipError("unreadable CSV", f"{path}: not How2Sign's tab-separated CSV: its first line names "
                                          f"{header[:8]}, not SENTENCE_NAME and SENTENCE")
    name_at, text_at = header.index("SENTENCE_NAME"), header.index("SENTENCE")
    rows, bad = [], []
    for n, line in enumerate(lines[1:], 2):
        fields = line.rstrip("\r").split("\t")
        if not line.strip():
            continue
        if len(fields) > len(header) and text_at == len(header) - 1:   # a tab inside the sentence
            fields = fields[:text_at] + ["\t".join(fields[text_at:])]
        if len(fields) != len(header):
            bad.append((n, f"{len(fields)} tab-separated fields, the header names {len(header)}"))
            continue
        text = fields[text_at].strip()
        if len(text) > 1 and text[0] == text[-1] == '"':
            text = text[1:-1].replace('""', '"').strip()
        if "\ufffd" in line:
            bad.append((n, "bytes that are not UTF-8"))
        elif not fields[name_at].strip():
            bad.append((n, "empty SENTENCE_NAME"))
        else:
            rows.append((n, fields[name_at].strip(), text))
    return rows, bad


# ----------------------------------------------------------------------------- one clip
def read_clip(folder: Path):
    """A sentence's folder of OpenPose frame files -> a pose_format.Pose (frames without a file
    are missing, as load_openpose leaves them). ClipError names the folder or frame file."""
    if not folder.is_dir():
        raise ClipError("no keypoint folder", f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if FRAME_FILE.search(p.name))   # .DS_Store and the like: ignored
    if not files:
        raise ClipError("no keypoint frames", f"{folder}: no *_keypoints.json frame files")
    frames = {}
    for f in files:
        try:
            frame = json.loads(f.read_bytes())
            for person in frame["people"]:
                for comp in OpenPose_Components:
                    numbers = person[comp.name]
                    if len(numbers) not in (0, 3 * len(comp.points)):
                        raise ValueError(f"{comp.name} holds {len(numbers)} numbers, not {3 * len(comp.points)}")
        except (OSError, ValueError, KeyError, TypeError) as e:   # JSONDecodeError is a ValueError
            raise ClipError("unreadable frame file", f"{f}: not an OpenPose keypoints file "
                                                     f"({type(e).__name__}: {e})") from None
        frames[int(FRAME_FILE.search(f.name).group(1))] = frame
    if not any(frame["people"] for frame in frames.values()):
        raise ClipError("no person", f"{folder}: no person in any of its {len(frames)} frames")
    return load_openpose(frames, fps=FPS, width=WIDTH, height=HEIGHT)


def convert(item: tuple[str, str]) -> tuple[str, str]:
    """Worker: (clip folder, .pose path) -> ("written" | "kept" | the reason it is skipped, detail)."""
    import video   # write_pose: atomic, so an interrupted import leaves no truncated .pose
    folder, out = map(Path, item)
    if out.is_file():
        return "kept", ""
    try:
        video.write_pose(read_clip(folder), out)
    except ClipError as e:
        return e.kind, str(e)
    except Exception as e:   # an odd file must not stop 35k clips: reported with its folder
        return "unreadable frame file", f"{folder}: {type(e).__name__}: {e}"
    return "written", ""


# ----------------------------------------------------------------------------- the whole tree
def import_how2sign(src, out_dir, workers: int | None = None, progress: bool = True) -> dict:
    """SRC (How2Sign as downloaded) -> OUT (poses/, train.csv, val.csv, test.csv, skipped.jsonl).
    Returns the counts; raises ImportFailed when SRC holds no re-aligned CSV at all."""
    src = Path(src)
    if not src.is_dir():
        raise ImportFailed(f"{src}: no such folder")
    out = out_folder(out_dir)
    report = Report(out)
    found = find_files(src, report)
    if not any(csv for csv, _ in found.values()):
        raise ImportFailed(f"{src}: no how2sign_realigned_{{train,val,test}}.csv below it. Expected How2Sign as its "
                           "download script lays it out: sentence_level/{split}/text/en/raw_text/re_aligned/"
                           "how2sign_realigned_{split}.csv and sentence_level/{split}/rgb_front/features/"
                           "openpose_output/json/{SENTENCE_NAME}/...")
    jobs, counts = clips_to_import(found, src, report)
    results = in_order(convert, [(str(folder), str(out / "poses" / f"{name}.pose")) for _, name, _, folder in jobs],
                       workers, "how2sign", progress)
    by_split = {s: [] for s in SPLITS}
    for (split, name, text, _), (status, detail) in zip(jobs, results):
        if report.outcome(name, status, detail, split=split):
            by_split[split].append([name, text])
    for split, rows in by_split.items():
        if split in counts["csv_rows"]:
            write_csv(out / f"{split}.csv", ["uid", "text"], rows)
    return report.finish(format="how2sign", **counts)


def clips_to_import(found: dict, src: Path, report: Report) -> tuple[list[tuple], dict]:
    """Every usable CSV row as (split, SENTENCE_NAME, SENTENCE, its keypoint folder); the rows
    that cannot be used go to the report. Also the counts of CSV rows and keypoint folders."""
    counts = {"csv_rows": {}, "folders": {}, "folders_without_row": {}}
    seen, jobs = {}, []
    for split, (csv_path, root) in found.items():
        if csv_path is None:
            report.note(f"{split}: no how2sign_realigned_{split}.csv under {src}; the split is left out")
            continue
        if root is None:
            report.note(f"{split}: no openpose_output/json folder under {src} (the split's "
                        "rgb_front_2D_keypoints, extracted); its rows are skipped")
        try:
            rows, bad = read_realigned_csv(csv_path)
        except ClipError as e:
            report.note(str(e))
            continue
        counts["csv_rows"][split] = len(rows) + len(bad)
        for n, problem in bad:
            report.skip(f"{csv_path.name} line {n}", ClipError("bad CSV row", f"{csv_path} line {n}: {problem}"))
        names = set(os.listdir(root)) if root else set()
        counts["folders"][split] = len(names)
        counts["folders_without_row"][split] = len(names - {name for _, name, _ in rows})
        for n, name, text in rows:
            where = f"{csv_path} line {n}"
            if name in seen:
                report.skip(name, ClipError("duplicate SENTENCE_NAME", f"{where}: {name} again, first at {seen[name]}"))
            elif not text:
                report.skip(name, ClipError("empty sentence", f"{where}: {name} has an empty SENTENCE"))
            elif name in (".", "..") or "/" in name or "\\" in name:
                report.skip(name, ClipError("bad CSV row", f"{where}: {name!r} is not a clip name"))
            elif root is None:
                report.skip(name, ClipError("no keypoint folder", f"{where}: the {split} split has no keypoints"))
            else:
                jobs.append((split, name, text, root / name))
            seen.setdefault(name, where)
    return jobs, counts
