"""Real signing (../shared/fixtures/poses/real): every file loads with the layout found from its
header, and its features are sane; corpora of the 576/586-point and of the reduced 178-point
files prepare with nothing skipped and train without any layout flag."""
import csv
import json
import shutil

import numpy as np
import pytest

import data
import poses
import train
from train_helpers import assets, metrics, tiny_args

REAL = sorted(p for p in (data.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "poses" / "real")
              .rglob("*.pose"))
EXPECTED_LAYOUT = {"dgs_corpus_178": "holistic_reduced"}  # every other real file: 576 or 586 points


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_file_loads_with_sane_features(path):
    header, body = poses.read_pose(path)
    layout = poses.detect_layout(header, path)
    assert layout == EXPECTED_LAYOUT.get(path.parent.name, "holistic")
    cfg = poses.PoseConfig(layout=layout)
    x = poses.load_pose(path, poses.PoseConfig())  # "auto": the same as naming the layout
    np.testing.assert_array_equal(x, poses.load_pose(path, cfg))
    assert len(x) == len(body.data) >= 20 and np.isfinite(x).all()
    p = x.reshape(len(x), -1, poses.channels(cfg))
    sl = poses.part_slices(cfg)
    # the shoulders are found (both are the body's first two points) and, after normalisation,
    # their median distance is 1; every value stays within a few shoulder widths
    shoulders = p[:, 0, -1] * p[:, 1, -1] > 0
    assert shoulders.mean() > 0.9
    width = np.linalg.norm(p[shoulders, 0, :2] - p[shoulders, 1, :2], axis=1)
    assert abs(np.median(width) - 1) < 1e-3 and np.abs(x).max() < 3
    # someone signs: a hand (its wrist) is present in most frames
    hands = (p[:, sl["left_hand"].start, -1] + p[:, sl["right_hand"].start, -1]) > 0
    assert hands.mean() > 0.5, hands.mean()


def corpus_of(files: list, texts: list[str], out):
    """A corpus in the iSign layout (CSV + poses/{uid}.pose) of the given files."""
    (out / "poses").mkdir(parents=True)
    rows = []
    for k, (f, text) in enumerate(zip(files, texts)):
        uid = f"{f.stem}--{k}"
        shutil.copy(f, out / "poses" / f"{uid}.pose")
        rows.append((uid, text))
    with open(out / "iSign_v1.1.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("uid", "text"), *rows])
    return out


def dgs_corpus(out):
    folder = REAL[0].parent.parent / "dgs_corpus_178"
    files = sorted(folder.glob("*_original.pose"))
    texts = [json.loads((folder / f.name.replace("_original.pose", "_metadata.json")).read_text())
             ["sentence"]["english"] for f in files]
    return corpus_of(files, texts, out)


@pytest.mark.parametrize("kind", ["dgs_178", "holistic_576_586"])
def test_real_corpus_prepares_and_trains_without_flags(kind, shared, tmp_path):
    if kind == "dgs_178":
        root, layout = dgs_corpus(tmp_path / "corpus"), "holistic_reduced"
    else:
        files = [p for p in REAL if p.parent.name != "dgs_corpus_178"]
        root, layout = corpus_of(files, [f"the sign {p.stem.lower()}" for p in files], tmp_path / "corpus"), "holistic"
    summary = data.prepare(data.DataConfig(data_dir=str(root), split_ratios=(0.75, 0.25, 0)), workers=1,
                           progress=False)
    assert summary["skipped"] == 0 and summary["ok"] == len(list((root / "poses").iterdir()))
    assert summary["layout"] == layout
    out = tmp_path / "run"
    args = tiny_args(shared, out, data_dir=str(root), max_steps=2, eval_every=2, save_every=2, grad_accum=1,
                     batch_size=2, split_ratios=(0.75, 0.25, 0))
    assert train.main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["pose"]["layout"] == layout  # what eval.py reads files with
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2]
