"""Videos -> MediaPipe Holistic .pose files in the iSign layout: an optional extra.

What this is:
  - `estimate_pose(video)`: reads the frames with OpenCV and runs MediaPipe Holistic through
    pose-format's `load_holistic`, giving a `pose_format.Pose` with the 576 points of the iSign
    pose files: POSE_LANDMARKS 33, FACE_LANDMARKS 468 (face mesh not refined), LEFT_HAND_LANDMARKS 21,
    RIGHT_HAND_LANDMARKS 21, POSE_WORLD_LANDMARKS 33; x, y in pixels, fps from the video.
  - `videos_to_corpus(video_dir, out_dir)`: a folder of videos -> out_dir/poses/{stem}.pose and
    out_dir/iSign_v1.1.csv (uid,text), the layout `data.py prepare` and `eval.py` read. Texts come
    from a CSV (uid,text; video_dir/texts.csv by default), else are empty. Resumable (a pose already
    written is kept), and a video that fails is skipped with its reason (out_dir/skipped.jsonl),
    never fatal.
  - Needs the extra: `pip install -r requirements-video.txt` (mediapipe 0.10.21, whose legacy
    `mp.solutions.holistic` API pose-format uses, and OpenCV). Without it: `VideoExtraMissing`.

References:
  - MediaPipe Holistic (Lugaresi et al. 2019, "MediaPipe: A Framework for Building Perception
    Pipelines"; Grishchenko & Bazarevsky 2020, "MediaPipe Holistic").
  - pose-format (sign-language-processing/pose): `pose_format.utils.holistic.load_holistic` and
    its `video_to_pose` command, whose settings (model_complexity=1) this follows.
  - iSign (Joshi et al. 2024): the corpus layout.

Run:
    python video.py CLIP.mp4 OUT.pose                           # one video
    python video.py --dir VIDEOS OUT_DIR [--texts texts.csv]     # a folder; last line: JSON summary
"""
import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from pose_format import Pose

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".avi", ".mkv")
CSV_NAME = "iSign_v1.1.csv"   # data.DataConfig.csv
# Holistic's own defaults, spelled out: refine_face_landmarks=False keeps the face at 468 points
# (True adds 10 iris points: 586 in all, not the iSign layout). load_holistic always appends
# POSE_WORLD_LANDMARKS, which makes 576.
HOLISTIC_CONFIG = {"model_complexity": 1, "refine_face_landmarks": False}


class VideoExtraMissing(RuntimeError):
    """mediapipe or OpenCV is not installed (or a mediapipe without the legacy solutions API)."""


class VideoError(ValueError):
    """A file that is not a usable video; the message names the file and the reason."""


def _extra():
    """Import the optional extra only when a video is actually read: the rest of the project
    never needs mediapipe (which also pins numpy < 2)."""
    try:
        import cv2
        from pose_format.utils.holistic import load_holistic   # imports mediapipe
    except (ImportError, AttributeError) as e:   # AttributeError: a mediapipe without mp.solutions
        raise VideoExtraMissing("video input needs the optional extra: pip install -r requirements-video.txt") from e
    return cv2, load_holistic


class _Frames:
    """The video's frames as RGB arrays, decoded one at a time: load_holistic only iterates, so
    the whole video is never in memory. `__len__` (the container's frame count) gives
    load_holistic's tqdm bar its total; the count is a header value, the frames are what decode."""

    def __init__(self, cv2, cap, first: np.ndarray, count: int):
        self.cv2, self.cap, self.first, self.count = cv2, cap, first, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        cv2, frame = self.cv2, self.first
        try:
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)   # OpenCV decodes BGR, MediaPipe wants RGB
                ok, frame = self.cap.read()
                frame = frame if ok else None
        finally:
            self.cap.release()


def estimate_pose(video_path, progress: bool = True, fps: float | None = None) -> Pose:
    """One video -> a `pose_format.Pose` (frames, 1 person, 576 points, XYZC), one frame per
    decoded video frame. `fps` overrides the container's frame rate (needed when it has none).
    Raises FileNotFoundError, VideoError (not a video, no frames, no frame rate), VideoExtraMissing."""
    cv2, load_holistic = _extra()
    path = Path(video_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: not a readable video (OpenCV could not open it)")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoError(f"{path}: no frames (OpenCV decoded none)")
    fps = fps or cap.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and 0 < fps < 1000):   # some webm files say 1000: their time base
        cap.release()
        raise VideoError(f"{path}: no usable frame rate ({fps}); pass fps=")
    # Size from the decoded frame, not the container: OpenCV applies a phone video's rotation tag,
    # so the frame is what MediaPipe sees and what its normalised coordinates are scaled by.
    height, width = first.shape[:2]
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))   # 0 or less where the container does not say
    frames = _Frames(cv2, cap, first, count)
    frames = frames if count > 0 else iter(frames)    # a bare generator: a bar without a total
    # load_holistic adds static_image_mode to the dict it is given: always a fresh copy.
    return load_holistic(frames, fps=fps, width=width, height=height, progress=progress,
                         additional_holistic_config=dict(HOLISTIC_CONFIG))


def write_pose(pose: Pose, out_path) -> None:
    """Write atomically: an interrupted run leaves no truncated .pose that a rerun would keep."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        pose.write(f)
    os.replace(tmp, out)


def read_texts(path) -> dict[str, str]:
    """A CSV with a header: text, and the clip in uid (or stem / video / file) -> {stem: text}.
    A value like clip1.mp4 is taken as its stem, clip1."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = reader.fieldnames or []
        key = next((k for k in ("uid", "stem", "video", "file") if k in names), None)
        if key is None or "text" not in names:
            raise ValueError(f"{path}: needs columns uid,text; has {names}")
        return {Path(r[key].strip()).stem if Path(r[key].strip()).suffix.lower() in VIDEO_SUFFIXES
                else r[key].strip(): (r["text"] or "").strip() for r in reader}


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uid", "text"])
        w.writerows(rows)
    os.replace(tmp, path)


def videos_to_corpus(video_dir, out_dir, texts=None, progress: bool = True) -> dict:
    """Every video in video_dir (not recursive) -> out_dir/poses/{stem}.pose, then
    out_dir/iSign_v1.1.csv with a row per pose written (now or by an earlier run) and
    out_dir/skipped.jsonl with the videos that failed. Returns the summary
    {"written", "kept", "skipped": [{"video", "reason"}], "csv"}."""
    video_dir, out_dir = Path(video_dir), Path(out_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"{video_dir}: no such folder")
    _extra()   # a missing extra is one error for the batch, not a skip per video
    if texts is None and (video_dir / "texts.csv").is_file():
        texts = video_dir / "texts.csv"
    text_of = read_texts(texts) if texts else {}
    videos = sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    poses = out_dir / "poses"
    poses.mkdir(parents=True, exist_ok=True)
    written, kept, skipped, rows, seen = [], [], [], [], set()
    for i, video in enumerate(videos):
        if video.stem in seen:   # clip.mp4 and clip.mov would both be poses/clip.pose
            skipped.append({"video": str(video), "reason": f"duplicate stem {video.stem!r}"})
            continue
        seen.add(video.stem)
        out = poses / f"{video.stem}.pose"
        if out.is_file():
            kept.append(video.stem)
        else:
            if progress:
                print(f"[{i + 1}/{len(videos)}] {video.name}", file=sys.stderr)
            try:
                write_pose(estimate_pose(video, progress=progress), out)
                written.append(video.stem)
            except Exception as e:   # one broken video never stops the batch; the reason is kept
                skipped.append({"video": str(video), "reason": f"{type(e).__name__}: {e}"})
                continue
        rows.append((video.stem, text_of.get(video.stem, "")))
    _write_csv(out_dir / CSV_NAME, rows)
    (out_dir / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped), encoding="utf-8")
    return {"written": written, "kept": kept, "skipped": skipped, "csv": str(out_dir / CSV_NAME)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="a video, or with --dir a folder of videos")
    parser.add_argument("out", help="OUT.pose, or with --dir the corpus folder")
    parser.add_argument("--dir", action="store_true", help="SRC is a folder of videos (mp4, mov, webm, avi, mkv)")
    parser.add_argument("--texts", default=None, help="CSV uid,text of the videos (default SRC/texts.csv if present)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate, for a video whose file has none")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        if args.dir:
            summary = videos_to_corpus(args.src, args.out, texts=args.texts, progress=args.progress)
            for s in summary["skipped"]:
                print(f"skipped {s['video']}: {s['reason']}", file=sys.stderr)
            print(json.dumps({k: len(v) if isinstance(v, list) else v for k, v in summary.items()}))
        else:
            pose = estimate_pose(args.src, progress=args.progress, fps=args.fps)
            write_pose(pose, args.out)
            print(json.dumps({"out": args.out, "frames": len(pose.body.data), "fps": float(pose.body.fps),
                              "points": int(pose.header.total_points())}))
    except (VideoExtraMissing, VideoError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
