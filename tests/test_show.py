"""data.py show: the written pictures read back (GIF through Pillow, MP4 through imageio-ffmpeg's
ffmpeg): their size and frame count, and that a hand is drawn where the file has one (pixels of
the hand's colour inside the box of its points, mapped to pixels by the panel's own axes) and
nowhere in a frame where the file has lost it. With a trained run: its translation, the same as
eval.py's, and the word head's words."""
import json

import numpy as np
import pytest
from pose_format import Pose

import data
import show
from poses import PoseConfig

RIGHT_HAND = slice(522, 543)              # the 576-point fixture's RIGHT_HAND_LANDMARKS
FRAMES = range(8, 24)                     # the right hand is lost in 8..16 and found from 17 on


@pytest.fixture
def clip(fixtures_dir, tmp_path):
    pose = Pose.read((fixtures_dir / "holistic_576.pose").read_bytes())
    path = tmp_path / "clip.pose"
    with open(path, "wb") as f:
        Pose(pose.header, pose.body.select_frames(list(FRAMES))).write(f)
    return path, Pose.read(path.read_bytes())


def rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])


def near(image: np.ndarray, color: str, tol: float) -> np.ndarray:
    """(H, W) bool: pixels within tol of a colour."""
    return np.abs(image.astype(int) - rgb(color)).max(-1) <= tol


def hand_box(pic, pose: Pose, t: int) -> tuple[slice, slice]:
    """Rows and columns of the image inside which the right hand's points of frame t are drawn in
    the left panel ("as in the file"), from the file's own numbers and the panel's axes."""
    pic.frame(t)                                                    # lays the figure out
    seen = pose.body.confidence[t, 0, RIGHT_HAND] > 0
    xy = pose.body.data.data[t, 0, RIGHT_HAND, :2][seen]
    px = pic.axes[0].transData.transform(xy)                        # display pixels, y up
    x0, x1 = px[:, 0].min() - 3, px[:, 0].max() + 3
    y0, y1 = pic.height - px[:, 1].max() - 3, pic.height - px[:, 1].min() + 3
    return slice(int(y0), int(y1) + 1), slice(int(x0), int(x1) + 1)


def gif_frames(path) -> list[np.ndarray]:
    from PIL import Image, ImageSequence
    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def mp4_frames(path) -> list[np.ndarray]:
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    w, h = next(reader)["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


@pytest.mark.parametrize("suffix, tol", [(".gif", 0), (".mp4", 40)])
def test_picture_shows_the_hand_where_the_file_has_one(clip, tmp_path, suffix, tol):
    path, pose = clip
    summary = show.show(path, tmp_path / f"clip{suffix}")
    frames = (gif_frames if suffix == ".gif" else mp4_frames)(tmp_path / f"clip{suffix}")
    assert len(frames) == summary["frames"] == len(FRAMES)
    assert frames[0].shape == (show.HEIGHT, show.WIDTH, 3) and summary["layout"] == "holistic"
    found = (pose.body.confidence[:, 0, RIGHT_HAND] > 0).any(-1)
    assert found.any() and not found.all()
    pic = show.picture(path, PoseConfig())
    for t, image in enumerate(frames):
        hand = near(image, show.COLORS["right_hand"], tol)
        if found[t]:
            rows, cols = hand_box(pic, pose, t)
            assert hand[rows, cols].sum() >= 20, t                   # drawn where its points are,
            assert hand[:, :show.WIDTH // 2].sum() <= 1.2 * hand[rows, cols].sum() + 5, t   # and mostly there
            assert hand[:, show.WIDTH // 2:].sum() >= 20, t          # and in the encoder's panel
        else:
            assert hand.sum() <= (0 if suffix == ".gif" else 3), t   # lost: nowhere


def test_openpose_clip_and_bad_input(fixtures_dir, tmp_path, capsys):
    pose = Pose.read((fixtures_dir / "openpose_137.pose").read_bytes())
    with open(tmp_path / "op.pose", "wb") as f:
        Pose(pose.header, pose.body.select_frames(list(range(40, 52)))).write(f)
    summary = show.show(tmp_path / "op.pose", tmp_path / "op.gif")
    assert summary["layout"] == "openpose" and len(gif_frames(tmp_path / "op.gif")) == 12
    with pytest.raises(ValueError, match=r"\.gif or an \.mp4"):
        show.show(tmp_path / "op.pose", tmp_path / "op.png")
    with pytest.raises(SystemExit) as stop:                       # the command line: one error line
        data.main(["show", str(tmp_path / "none.pose"), "--out", str(tmp_path / "x.gif")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error:") and "none.pose" in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import train
    from train_helpers import assets, tiny_args
    out = tmp_path_factory.mktemp("showrun") / "run"
    assert train.main(tiny_args(assets(tmp_path_factory), out, max_steps=2, grad_accum=1, eval_every=2,
                                save_every=2)) == 0
    return out


def test_run_adds_its_translation_and_words(run_dir, clip, tmp_path, capsys):
    import corpus
    import eval as run_eval
    import words
    from config import load_run_config
    path, _ = clip
    with pytest.raises(SystemExit) as stop:
        data.main(["show", str(path), "--out", str(tmp_path / "r.gif"), "--run", str(run_dir)])
    out = capsys.readouterr()
    assert stop.value.code == 0, out.err[-2000:]
    summary = json.loads(out.out.strip().splitlines()[-1])
    frames = gif_frames(tmp_path / "r.gif")
    assert len(frames) == len(FRAMES) and frames[0].shape == (show.HEIGHT + show.TIMELINE, show.WIDTH, 3)
    assert run_eval.main([str(run_dir), "--pose", str(path)]) == 0
    assert summary["translation"] == capsys.readouterr().out.strip()
    cfg = load_run_config(run_dir)
    vocab = words.word_vocabulary(corpus.split_texts(cfg.data, "train"), cfg.aux_words)
    assert {w.lower() for w in summary["words"]} <= set(vocab)
    # the cursor moves along the timeline: its colour sits further right in a later frame
    cols = [np.nonzero(near(f[show.HEIGHT:], show.CURSOR, 0).any(0))[0].mean() for f in (frames[0], frames[-1])]
    assert cols[1] > cols[0] + 100
