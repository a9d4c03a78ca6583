"""data.py import: How2Sign and Google's Kaggle sets, each written here in its real layout from the
real pose fixtures (How2Sign: one OpenPose JSON file per frame, a tab-separated re-aligned CSV per
split; asl-signs: one long-format parquet per clip, NaN where MediaPipe found nothing;
asl-fingerspelling: wide-format parquet files of many sequences), imported, and compared with
what was written: values, frames, missing points, splits, texts. Broken and partial downloads
are reported by file, never fatal."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq
from pose_format import Pose

import corpus
import data
import poses
import video
from conftest import FIXTURES
from importers import ImportFailed, how2sign, kaggle

ROOT = Path(__file__).resolve().parents[1]
LEXICON_FIXTURE = ROOT.parent / "shared" / "fixtures" / "lexicon_ase_fingerspelling" / "index.csv"


def read_pose(path) -> Pose:
    return Pose.read(Path(path).read_bytes())


def rows_of(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def data_py(*args):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- How2Sign
TAB_HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"
# (SENTENCE_NAME, frames of the OpenPose fixture, sentence); names as How2Sign spells them
H2S_TRAIN = [("-d5dN54tH2E_0-1-rgb_front", range(0, 30), "We're going to work on a arm drill, okay?"),
             ("-d5dN54tH2E_1-1-rgb_front", range(30, 60), '"Painting the wall," I call it.'),
             ("_0-JkwZ9o4Q_6-5-rgb_front", range(60, 93), "So, it's ship, captain, crew, cargo.")]
H2S_VAL = [("fzrJBu2qsM8_11-8-rgb_front", range(10, 40), "And that ought to do it.")]
H2S_TEST = [("g3Cc_1-V31U_23-3-rgb_front", range(50, 80), "Ugly old fly.")]


def openpose_json(pose: Pose, t: int) -> dict:
    """Frame t of the OpenPose fixture as OpenPose writes it: x, y, confidence per point, 0 0 0
    where a point was not found."""
    xy, conf = pose.body.data.data[t, 0], pose.body.confidence[t, 0]        # (137, 2), (137,)
    person, start = {"person_id": [-1]}, 0
    for comp in pose.header.components:
        n = len(comp.points)
        xyc = np.concatenate([np.where(conf[start:start + n, None] > 0, xy[start:start + n], 0),
                              conf[start:start + n, None]], 1)
        person[comp.name] = [float(v) for v in xyc.reshape(-1)]
        start += n
    person.update(pose_keypoints_3d=[], face_keypoints_3d=[], hand_left_keypoints_3d=[], hand_right_keypoints_3d=[])
    return {"version": 1.3, "people": [person]}


def write_how2sign(src: Path, pose: Pose) -> Path:
    """How2Sign as its download script lays it out, with the partial-download cases of the field:
    a CSV row whose clip folder is missing, a folder without frames, a truncated frame file, a
    folder without a CSV row, a frame without a person, a frame whose file is missing."""
    extra = [("NoFolder_0-1-rgb_front", None, "A row whose keypoints never came."),
             ("EmptyFolder_0-1-rgb_front", [], "A folder without frames."),
             ("Truncated_0-1-rgb_front", range(0, 5), "A clip with a truncated frame file.")]
    for split, clips in (("train", H2S_TRAIN + extra), ("val", H2S_VAL), ("test", H2S_TEST)):
        level = src / "How2Sign" / "sentence_level" / split
        lines = [TAB_HEADER]
        for k, (name, frames, text) in enumerate(clips):
            video = name.split("_")[0] if not name.startswith("_") else name[:12]
            lines.append("\t".join([video, f"{video}-1-rgb_front", name.split("-rgb")[0].rsplit("-", 1)[0], name,
                                    f"{12.97 + k:.2f}", f"{19.52 + k:.2f}", text]))
            if frames is None:
                continue
            folder = level / "rgb_front" / "features" / "openpose_output" / "json" / name
            folder.mkdir(parents=True)
            for i, t in enumerate(frames):
                frame = openpose_json(pose, t)
                if name == H2S_TRAIN[1][0] and i == 5:
                    frame["people"] = []                           # OpenPose found no one
                if name == H2S_TRAIN[1][0] and i == 10:
                    continue                                       # a frame file that is missing
                (folder / f"{name}_{i:012d}_keypoints.json").write_text(json.dumps(frame))
        csv_dir = level / "text" / "en" / "raw_text" / "re_aligned"
        csv_dir.mkdir(parents=True)
        (csv_dir / f"how2sign_realigned_{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    json_root = src / "How2Sign" / "sentence_level" / "train" / "rgb_front" / "features" / "openpose_output" / "json"
    bad = json_root / "Truncated_0-1-rgb_front" / "Truncated_0-1-rgb_front_000000000003_keypoints.json"
    bad.write_text(bad.read_text()[:100])
    (json_root / "NotInTheCsv_0-1-rgb_front").mkdir()
    return src


@pytest.fixture(scope="module")
def how2sign_import(tmp_path_factory):
    pose = read_pose(FIXTURES / "openpose_137.pose")
    tmp = tmp_path_factory.mktemp("h2s")
    src = write_how2sign(tmp / "download", pose)
    return pose, src, tmp / "corpus", how2sign.import_how2sign(src, tmp / "corpus", workers=2, progress=False)


def test_how2sign_clips_and_counts(how2sign_import):
    pose, _, out, summary = how2sign_import
    assert summary["csv_rows"] == {"train": 6, "val": 1, "test": 1}
    assert summary["folders"] == {"train": 6, "val": 1, "test": 1}          # NoFolder has none; NotInTheCsv one
    assert summary["folders_without_row"] == {"train": 1, "val": 0, "test": 0}
    assert (summary["written"], summary["skipped"]) == (5, 3)
    assert summary["reasons"] == {"no keypoint folder": 1, "no keypoint frames": 1, "unreadable frame file": 1}
    for name, frames, _ in H2S_TRAIN + H2S_VAL + H2S_TEST:
        got = read_pose(out / "poses" / f"{name}.pose")
        assert [c.name for c in got.header.components] == [c.name for c in pose.header.components]
        assert (got.body.fps, got.header.dimensions.width, got.header.dimensions.height) == (24, 1280, 720)
        want_xy, want_c = pose.body.data.data[list(frames), 0], pose.body.confidence[list(frames), 0]
        xy, c = got.body.data.data[:, 0], got.body.confidence[:, 0]
        assert xy.shape == want_xy.shape                                     # every frame, in order
        if name == H2S_TRAIN[1][0]:                                          # no person; no file: missing
            assert not c[[5, 10]].any()
            keep = [i for i in range(len(frames)) if i not in (5, 10)]
            xy, c, want_xy, want_c = xy[keep], c[keep], want_xy[keep], want_c[keep]
        np.testing.assert_array_equal(c, want_c)
        seen = want_c > 0
        np.testing.assert_array_equal(xy[seen], want_xy[seen])


def test_how2sign_splits_texts_and_skips(how2sign_import):
    _, src, out, _ = how2sign_import
    for split, clips in (("train", H2S_TRAIN), ("val", H2S_VAL), ("test", H2S_TEST)):
        assert [(r["uid"], r["text"]) for r in rows_of(out / f"{split}.csv")] == [(n, t) for n, _, t in clips]
    skipped = {s["clip"]: s for s in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    assert skipped["NoFolder_0-1-rgb_front"]["reason"] == "no keypoint folder"
    assert "EmptyFolder_0-1-rgb_front" in skipped["EmptyFolder_0-1-rgb_front"]["detail"]
    assert "Truncated_0-1-rgb_front_000000000003_keypoints.json" in skipped["Truncated_0-1-rgb_front"]["detail"]
    # the corpus reads with How2Sign's own splits and the OpenPose layout found by itself
    cfg = data.DataConfig(data_dir=str(out))
    rows = corpus.read_rows(cfg)
    assert {r.uid: r.split for r in rows} == {n: s for s, clips in (("train", H2S_TRAIN), ("val", H2S_VAL),
                                                                    ("test", H2S_TEST)) for n, _, _ in clips}
    assert corpus.resolve_layout(cfg, rows).pose.layout == "openpose"


def test_how2sign_partial_download_and_cli(how2sign_import, tmp_path, capsys):
    _, download, out, _ = how2sign_import
    src = shutil.copytree(download, tmp_path / "download")          # the module's download stays whole
    (src / "How2Sign" / "sentence_level" / "test" / "text" / "en" / "raw_text" / "re_aligned" /
     "how2sign_realigned_test.csv").unlink()
    res = data_py("import", "how2sign", src, tmp_path / "again", "--workers", "1")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["csv_rows"] == {"train": 6, "val": 1} and summary["written"] == 4
    assert "test: no how2sign_realigned_test.csv" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "again" / "test.csv").exists()
    # a rerun over the first import keeps what it wrote
    again = how2sign.import_how2sign(src, out, workers=1, progress=False)
    assert (again["written"], again["kept"]) == (0, 4)
    # nothing to import at all: one error line naming what was expected
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        data.main(["import", "how2sign", str(tmp_path / "again"), str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error:") and "how2sign_realigned_" in err
    with pytest.raises(ImportFailed, match="no such folder"):
        how2sign.import_how2sign(tmp_path / "nowhere", tmp_path / "y")


def test_how2sign_other_arrangements(how2sign_import, tmp_path):
    """The same download rearranged as users keep it: the CSVs side by side, each split's json
    folder under a folder named after the split; and SRC a split's own folder."""
    _, src, _, first = how2sign_import
    level = src / "How2Sign" / "sentence_level"
    flat = tmp_path / "flat"
    for split in ("train", "val", "test"):
        (flat / split).mkdir(parents=True)
        shutil.copytree(level / split / "rgb_front" / "features" / "openpose_output", flat / split / "openpose_output")
        for csv_file in level.glob(f"{split}/**/how2sign_realigned_*.csv"):
            shutil.copy(csv_file, flat)
    again = how2sign.import_how2sign(flat, tmp_path / "out", workers=1, progress=False)
    assert {k: again[k] for k in ("csv_rows", "folders", "written", "reasons")} == \
           {k: first[k] for k in ("csv_rows", "folders", "reasons")} | {"written": first["written"] + first["kept"]}
    one = how2sign.import_how2sign(level / "val", tmp_path / "val-only", workers=1, progress=False)
    assert one["csv_rows"] == {"val": 1} and one["written"] == 1


# ----------------------------------------------------------------------------- Kaggle
SIGN_CLIPS = [(26734, 1000035562, "blow", range(0, 30)), (26734, 1000106739, "TV", range(30, 70)),
              (28656, 1000210073, "hello", range(60, 97))]
KAGGLE_TYPES = (("face", 468, 33), ("left_hand", 21, 501), ("pose", 33, 0), ("right_hand", 21, 522))


def normalised(pose: Pose, frames) -> np.ndarray:
    """(T, 543, 3) of the 576-point fixture as MediaPipe gives them: x / width, y / height, z, NaN
    where nothing was found; pose-format's point order (the world landmarks left out)."""
    w, h = pose.header.dimensions.width, pose.header.dimensions.height
    xyz = pose.body.data.data[list(frames), 0, :543].astype(np.float64) / [w, h, 1]
    xyz[pose.body.confidence[list(frames), 0, :543] == 0] = np.nan
    return xyz


def write_long_parquet(path: Path, xyz: np.ndarray, first_frame: int, dtype) -> None:
    """asl-signs' long format: 543 rows per frame, face, left_hand, pose, right_hand."""
    frame, row_id, kind, index, values = [], [], [], [], []
    for t in range(len(xyz)):
        for name, n, start in KAGGLE_TYPES:
            for i in range(n):
                frame.append(first_frame + t)
                row_id.append(f"{first_frame + t}-{name}-{i}")
                kind.append(name)
                index.append(i)
                values.append(xyz[t, start + i])
    values = np.array(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"frame": pa.array(frame, pa.int16()), "row_id": row_id, "type": kind,
                             "landmark_index": pa.array(index, pa.int16()),
                             **{c: pa.array(values[:, k], dtype) for k, c in enumerate("xyz")}}), path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.fixture
def holistic(fixtures_dir):
    return read_pose(fixtures_dir / "holistic_576.pose")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kaggle_signs_lexicon(holistic, tmp_path, dtype):
    src, out = tmp_path / "asl-signs", tmp_path / "lexicon"
    rows = [["path", "participant_id", "sequence_id", "sign"]]
    for p, s, sign, frames in SIGN_CLIPS:
        write_long_parquet(src / f"train_landmark_files/{p}/{s}.parquet", normalised(holistic, frames), 20, dtype)
        rows.append([f"train_landmark_files/{p}/{s}.parquet", p, s, sign])
    rows.append(["train_landmark_files/26734/999.parquet", 26734, 999, "after"])   # never downloaded
    write_long_parquet(src / "train_landmark_files/28656/1000.parquet", normalised(holistic, range(5)), 0, dtype)
    truncate(src / "train_landmark_files/28656/1000.parquet")
    rows.append(["train_landmark_files/28656/1000.parquet", 28656, 1000, "cloud"])
    with open(src / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    summary = kaggle.import_signs(src, out, fps=30, width=320, height=240, workers=1, progress=False)
    assert (summary["written"], summary["skipped"], summary["csv_rows"]) == (3, 2, 5)
    assert summary["reasons"] == {"missing parquet": 1, "unreadable parquet": 1}
    skipped = (out / "skipped.jsonl").read_text()
    assert "999.parquet" in skipped and "28656/1000.parquet" in skipped
    # exactly the lexicon format of the real dictionary in shared/fixtures
    assert (out / "index.csv").read_text().splitlines()[0] == LEXICON_FIXTURE.read_text().splitlines()[0]
    entries = rows_of(out / "index.csv")
    assert [(e["words"], e["glosses"], e["spoken_language"], e["signed_language"], e["start"], e["priority"])
            for e in entries] == [(sign, sign.upper(), "en", "ase", "0", "0") for *_, sign, _ in SIGN_CLIPS]
    for e, (*_, frames) in zip(entries, SIGN_CLIPS):
        assert e["end"] == {30: "1000", 40: "1334", 37: "1234"}[len(frames)]   # its length in ms, rounded up
        assert_holistic_543(read_pose(out / e["path"]), holistic, frames)


def assert_holistic_543(got: Pose, fixture: Pose, frames) -> None:
    """An imported clip is the fixture's frames as load_holistic wrote them: the first four
    components, the same points where the fixture has them, missing (confidence 0) elsewhere."""
    assert [(c.name, c.points, c.format) for c in got.header.components] == \
           [(c.name, c.points, c.format) for c in fixture.header.components[:4]]
    want, conf = fixture.body.data.data[list(frames), 0, :543], fixture.body.confidence[list(frames), 0, :543]
    assert got.body.data.shape == (len(frames), 1, 543, 3)
    np.testing.assert_array_equal(got.body.confidence[:, 0], (conf > 0).astype(np.float32))
    seen = conf > 0
    np.testing.assert_allclose(got.body.data.data[:, 0][seen], want[seen], atol=1e-3)
    assert (got.body.data.data[:, 0][~seen] == 0).all()
    hands = slice(501, 543)
    assert (got.body.confidence[:, 0, hands] > 0).any(-1).sum() == (conf[:, hands] > 0).any(-1).sum() > 0


def test_543_points_read_as_holistic(holistic, tmp_path):
    """Google's 543 points (no world landmarks) are the `holistic` layout, with the same features."""
    path = tmp_path / "clip543.pose"
    video.write_pose(kaggle.to_pose(normalised(holistic, range(97)).astype(np.float32), 25, 320, 240), path)
    header, _ = poses.read_pose(path)
    assert header.total_points() == 543 and poses.detect_layout(header) == "holistic"
    np.testing.assert_allclose(poses.load_pose(path, poses.PoseConfig()),
                               poses.load_pose(FIXTURES / "holistic_576.pose", poses.PoseConfig()), atol=1e-4)


FS_SEQUENCES = [  # (file_id, sequence_id, participant_id, phrase, frames)
    (5414471, 1816796431, 217, "3 creekhouse", range(0, 25)),
    (5414471, 1816825349, 107, "scales/kuhaylah", range(25, 60)),
    (5414471, 1816909464, 1, "1383 william lanier", range(60, 97)),
    (105143404, 1817141095, 21, "www.aamc.org", range(5, 30)),
    (105143404, 1817169271, 217, "hertzog", range(40, 80))]


def wide_table(rows: list[tuple[int, range]], holistic: Pose):
    """asl-fingerspelling's wide format: frame, then x, y, z columns per landmark in the files' own
    order (face, left_hand, pose, right_hand), float32, indexed by sequence_id."""
    seq, frame, blocks = [], [], []
    for s, frames in rows:
        xyz = normalised(holistic, frames)
        seq += [s] * len(frames)
        frame += list(range(len(frames)))
        blocks.append(xyz)
    xyz = np.concatenate(blocks)
    cols = {"sequence_id": pa.array(seq, pa.int64()), "frame": pa.array(frame, pa.int16())}
    for c, k in (("x", 0), ("y", 1), ("z", 2)):
        for name, n, start in KAGGLE_TYPES:
            for i in range(n):
                cols[f"{c}_{name}_{i}"] = pa.array(xyz[:, start + i, k], pa.float32())
    return pa.table(cols)


def test_kaggle_fingerspelling_corpus(holistic, tmp_path):
    src, out = tmp_path / "asl-fingerspelling", tmp_path / "fs"
    (src / "train_landmarks").mkdir(parents=True)
    for file_id in (5414471, 105143404):
        table = wide_table([(s, fr) for f, s, _, _, fr in FS_SEQUENCES if f == file_id], holistic)
        pq.write_table(table, src / f"train_landmarks/{file_id}.parquet", row_group_size=40)
    pq.write_table(wide_table([(7, range(10))], holistic), src / "train_landmarks/9.parquet")
    truncate(src / "train_landmarks/9.parquet")
    rows = [["path", "file_id", "sequence_id", "participant_id", "phrase"]]
    rows += [[f"train_landmarks/{f}.parquet", f, s, p, text] for f, s, p, text, _ in FS_SEQUENCES]
    rows += [["train_landmarks/9.parquet", 9, 7, 5, "truncated file"],
             ["train_landmarks/5414471.parquet", 5414471, 123, 5, "not in its file"]]
    with open(src / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    summary = kaggle.import_fingerspelling(src, out, fps=30, width=320, height=240, workers=2, progress=False)
    assert (summary["written"], summary["skipped"]) == (5, 2)
    assert summary["reasons"] == {"unreadable parquet": 1, "sequence not in its file": 1}
    splits = {r["uid"]: (split, r["text"]) for split in ("train", "val", "test") for r in rows_of(out / f"{split}.csv")}
    assert {u: t for u, (_, t) in splits.items()} == {f"{p}--{s}": text for _, s, p, text, _ in FS_SEQUENCES}
    signer_split = {}
    for uid, (split, _) in splits.items():   # split by signer: no signer in two splits
        assert signer_split.setdefault(uid.split("--")[0], split) == split
    for _, s, p, _, frames in FS_SEQUENCES:
        assert_holistic_543(read_pose(out / "poses" / f"{p}--{s}.pose"), holistic, frames)
    assert corpus.resolve_layout(data.DataConfig(data_dir=str(out))).pose.layout == "holistic"


def test_wide_reader_streams_sequences_in_any_row_order(holistic, tmp_path):
    """A sequence whose rows are spread over the file is yielded whole, once, after its last row."""
    table = wide_table([(1, range(0, 12)), (2, range(20, 29)), (3, range(40, 50))], holistic)
    order = np.random.default_rng(0).permutation(table.num_rows)
    path = tmp_path / "shuffled.parquet"
    pq.write_table(table.take(order), path, row_group_size=7)
    got = dict(kaggle.read_wide(path, {1, 3}, batch_rows=5))
    assert sorted(got) == [1, 3]
    np.testing.assert_array_equal(got[1], normalised(holistic, range(0, 12)).astype(np.float32))
    np.testing.assert_array_equal(got[3], normalised(holistic, range(40, 50)).astype(np.float32))
