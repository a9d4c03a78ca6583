"""video.py on a real video (the optional extra: run in the venv of requirements-video.txt).

A person signing, 540x720, ~30 fps, 58 frames (../shared/fixtures/video/test_video.mp4):
MediaPipe Holistic through pose-format must give the iSign 576-point layout, one frame per video
frame, body and face in every frame and a hand in about a third, and a file the project's reader
turns into finite features. Skipped as a whole where mediapipe is not installed.
"""
import csv
import io
import json
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("mediapipe")

import corpus
import data
import video
from conftest import FIXTURES
from pose_format import Pose

VIDEO = FIXTURES.parent / "video" / "test_video.mp4"
ISIGN = [("POSE_LANDMARKS", 33), ("FACE_LANDMARKS", 468), ("LEFT_HAND_LANDMARKS", 21),
         ("RIGHT_HAND_LANDMARKS", 21), ("POSE_WORLD_LANDMARKS", 33)]


@pytest.fixture(scope="module")
def video_path():
    if not VIDEO.is_file():
        pytest.fail(f"video fixture not found at {VIDEO} (set POSE_FIXTURES)")
    return VIDEO


@pytest.fixture(scope="module")
def pose(video_path):
    return video.estimate_pose(video_path, progress=False)


def project_features(path):
    """The project's own reader: data.load_pose, or poses.load_pose since the module split."""
    cfg = data.DataConfig()
    if hasattr(data, "load_pose"):
        return data.load_pose(path, cfg)
    import poses
    return poses.load_pose(path, cfg.pose)


def present(pose, name):
    """(frames,) bool: the component has a point with nonzero confidence in the frame."""
    start = 0
    for c in pose.header.components:
        if c.name == name:
            return (pose.body.confidence[:, 0, start:start + len(c.points)] > 0).any(axis=1)
        start += len(c.points)
    raise KeyError(name)


def test_estimate_pose_isign_layout(pose, video_path):
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(video_path))
    fps, w, h = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    cap.release()
    assert [(c.name, len(c.points)) for c in pose.header.components] == ISIGN
    assert pose.header.total_points() == 576
    assert all(c.format == "XYZC" for c in pose.header.components)
    assert pose.header.components[1].points[:3] == ["0", "1", "2"]       # face named by mesh index
    assert (pose.header.dimensions.width, pose.header.dimensions.height) == (540, 720) == (w, h)
    assert pose.body.fps == pytest.approx(fps, rel=1e-6) and fps == pytest.approx(29.92, abs=0.01)
    assert pose.body.data.shape == (58, 1, 576, 3)                         # one frame per video frame
    assert present(pose, "POSE_LANDMARKS").all() and present(pose, "FACE_LANDMARKS").all()
    assert present(pose, "POSE_WORLD_LANDMARKS").all()
    hands = present(pose, "LEFT_HAND_LANDMARKS") | present(pose, "RIGHT_HAND_LANDMARKS")
    assert 0.2 <= hands.mean() <= 0.6, hands.mean()                        # docs/testing.md: about a third
    xy = np.asarray(pose.body.data[:, 0, :, :2])
    assert np.isfinite(xy).all()
    upper = xy[:, [0, 11, 12]]                          # nose and shoulders: in the picture, in pixels
    assert ((upper > 0) & (upper < [540, 720])).all()


def test_cli_writes_a_pose_the_project_reads(video_path, tmp_path):
    out = tmp_path / "clip.pose"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert video.main([str(video_path), str(out), "--no-progress"]) == 0
    assert json.loads(stdout.getvalue().splitlines()[-1]) == {
        "out": str(out), "frames": 58, "fps": pytest.approx(29.92, abs=0.01), "points": 576}
    assert Pose.read(out.read_bytes()).body.data.shape == (58, 1, 576, 3)
    x = project_features(out)
    assert x.ndim == 2 and len(x) == 58 and np.isfinite(x).all() and np.abs(x).max() > 0


def test_errors_name_the_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        video.estimate_pose(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(video.VideoError, match="junk.mp4.*not a readable video"):
        video.estimate_pose(junk)
    empty = tmp_path / "empty.avi"                     # a valid container with no frame in it
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64)).release()
    with pytest.raises(video.VideoError, match="empty.avi.*no frames"):
        video.estimate_pose(empty)


def test_videos_to_corpus_skips_broken_and_resumes(video_path, tmp_path, monkeypatch):
    src, out = tmp_path / "videos", tmp_path / "corpus"
    src.mkdir()
    shutil.copy(video_path, src / "clip.mp4")
    (src / "x.mp4").write_bytes(np.random.default_rng(1).bytes(4096))     # not a video
    (src / "notes.txt").write_text("not a video suffix: ignored")
    (src / "texts.csv").write_text("uid,text\nclip.mp4,hello world\n")   # found by default

    calls = []
    real = video.estimate_pose
    monkeypatch.setattr(video, "estimate_pose", lambda p, **kw: calls.append(p.name) or real(p, **kw))

    first = video.videos_to_corpus(src, out, progress=False)
    assert first["written"] == ["clip"] and first["kept"] == []
    assert [s["video"] for s in first["skipped"]] == [str(src / "x.mp4")]
    assert "not a readable video" in first["skipped"][0]["reason"]
    assert sorted(p.name for p in (out / "poses").iterdir()) == ["clip.pose"]   # no temp file left
    with open(out / "iSign_v1.1.csv", newline="") as f:
        assert list(csv.reader(f)) == [["uid", "text"], ["clip", "hello world"]]
    assert [json.loads(l)["video"] for l in (out / "skipped.jsonl").read_text().splitlines()] == [str(src / "x.mp4")]
    assert calls == ["clip.mp4", "x.mp4"]

    mtime = (out / "poses" / "clip.pose").stat().st_mtime_ns
    second = video.videos_to_corpus(src, out, progress=False)
    assert second["written"] == [] and second["kept"] == ["clip"] and len(second["skipped"]) == 1
    assert calls == ["clip.mp4", "x.mp4", "x.mp4"]                        # the good one not redone
    assert (out / "poses" / "clip.pose").stat().st_mtime_ns == mtime

    rows = corpus.read_rows(data.DataConfig(data_dir=str(out)))              # the corpus reads as one
    assert [(r.uid, r.text) for r in rows] == [("clip", "hello world")]
    assert project_features(rows[0].pose).shape[0] == 58


@pytest.mark.parametrize("module", ["mediapipe", "cv2"])
def test_missing_extra_is_one_line(module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)                         # import now raises ImportError
    monkeypatch.delitem(sys.modules, "pose_format.utils.holistic", raising=False)
    with pytest.raises(video.VideoExtraMissing) as e:
        video.estimate_pose(VIDEO)
    assert str(e.value) == "video input needs the optional extra: pip install -r requirements-video.txt"
    with pytest.raises(video.VideoExtraMissing):
        video.videos_to_corpus(tmp_path, tmp_path / "out")
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert video.main([str(VIDEO), str(tmp_path / "o.pose")]) == 1
    assert stderr.getvalue() == f"error: {e.value}\n"


def test_eval_translates_a_video(video_path, tmp_path_factory, tmp_path):
    """`eval.py RUN --video CLIP.mp4 --save_pose OUT.pose`: one English line on stdout (the tiny
    model's, whatever it says), and the estimated poses saved in the iSign layout."""
    import subprocess

    import train
    from train_helpers import ROOT, assets, tiny_args

    run = tmp_path / "run"
    assert train.main(tiny_args(assets(tmp_path_factory), run, max_steps=2, eval_every=2, save_every=2,
                                grad_accum=1)) == 0
    saved = tmp_path / "clip.pose"
    res = subprocess.run([sys.executable, str(ROOT / "eval.py"), str(run), "--video", str(video_path),
                          "--save_pose", str(saved)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.splitlines()) == 1
    header = Pose.read(saved.read_bytes()).header
    assert [(c.name, len(c.points)) for c in header.components] == ISIGN
