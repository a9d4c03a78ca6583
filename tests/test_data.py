"""data.py on the real pose fixtures (copied before any change; the fixture folder is read-only):
features computed by hand from pose-format's arrays, layout errors, a corpus with broken rows,
resumable and stale caches, splits, label masks, the bucket sampler and collate."""
import json
import os
import threading
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
from pose_format import Pose

import corpus
import batches
import data
import poses
from tokenizer import train_bpe

TEXTS = ["the boy gives the girl a red ball", "where is the train station", "my mother is happy today",
         "we will not go to school tomorrow", "what is your name", "the dog eats food",
         "they bought a new house last year", "he is reading a book", "do you like tea", "it is raining"]


def read_fixture(fixtures_dir, name="holistic_576"):
    return Pose.read((fixtures_dir / f"{name}.pose").read_bytes())


def write_clip(pose, path, frames):
    """A copy of `pose` holding only `frames` (list of frame indices)."""
    with open(path, "wb") as f:
        Pose(pose.header, pose.body.select_frames(list(frames))).write(f)


def make_corpus(root, fixtures_dir, rows, lengths=(97, 60, 31)):
    """An iSign-layout corpus: the CSV and one clip per row, cut from the 576-point fixture
    (three different lengths, so that rows differ)."""
    pose = read_fixture(fixtures_dir)
    (root / "poses").mkdir(parents=True)
    for k, (uid, _) in enumerate(rows):
        n = lengths[k % len(lengths)]
        write_clip(pose, root / "poses" / f"{uid}.pose", range(97 - n, 97))
    write_csv(root / "iSign_v1.1.csv", rows)
    return root


def write_csv(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "text"])
        w.writerows(rows)


def good_rows(n, videos=4):
    return [(f"vid{k % videos:02d}--{k}", TEXTS[k % len(TEXTS)]) for k in range(n)]


# ----------------------------------------------------------------------------- features
def test_holistic_features_by_hand(fixtures_dir):
    cfg = poses.PoseConfig(layout="holistic")
    x = poses.load_pose(fixtures_dir / "holistic_576.pose", cfg)
    pose = read_fixture(fixtures_dir)
    assert x.shape == (97, poses.feature_dim(cfg)) == (97, (94 + 3) * 3) and x.dtype == np.float32  # + 3 places
    assert np.isfinite(x).all() and np.abs(x).max() < 5

    # the same numbers from pose-format's arrays, by component and point name
    comps = {c.name: c for c in pose.header.components}
    offsets = dict(zip(comps, np.cumsum([0] + [len(c.points) for c in pose.header.components])))
    raw, conf = pose.body.data.data[:, 0], pose.body.confidence[:, 0]

    def point(comp, name):
        i = offsets[comp] + comps[comp].points.index(name)
        return raw[:, i, :2], conf[:, i] > 0

    ls, ls_ok = point("POSE_LANDMARKS", "LEFT_SHOULDER")
    rs, rs_ok = point("POSE_LANDMARKS", "RIGHT_SHOULDER")
    scale = np.median(np.linalg.norm(ls - rs, axis=1)[ls_ok & rs_ok])
    f = x.reshape(97, 97, 3)
    mid = (ls + rs) / 2
    # body: elbow relative to the shoulder midpoint (body points come first: 9)
    el, _ = point("POSE_LANDMARKS", "LEFT_ELBOW")
    np.testing.assert_allclose(f[:, 3, :2], (el - mid) / scale, rtol=1e-4, atol=1e-5)
    # right hand (after the body's 9 and the left hand's 21 + its place): index fingertip
    # relative to the right wrist; presence = confidence > 0
    tip, tip_ok = point("RIGHT_HAND_LANDMARKS", "INDEX_FINGER_TIP")
    wr, wr_ok = point("RIGHT_HAND_LANDMARKS", "WRIST")
    k = 9 + 22 + 8   # INDEX_FINGER_TIP is the right hand's 9th point
    ok = tip_ok & wr_ok
    assert ok.any() and (~ok).any(), "the fixture has frames with and without the right hand"
    np.testing.assert_array_equal(f[:, k, 2], ok)
    np.testing.assert_allclose(f[ok, k, :2], ((tip - wr) / scale)[ok], rtol=1e-4, atol=1e-5)
    assert (f[~ok, k] == 0).all()
    # ... and its place, the right wrist relative to the shoulder midpoint: the hand's last point
    place = 9 + 22 + 21
    np.testing.assert_array_equal(f[:, place, 2], wr_ok & ls_ok & rs_ok)
    np.testing.assert_allclose(f[wr_ok, place, :2], ((wr - mid) / scale)[wr_ok], rtol=1e-4, atol=1e-5)
    # face (after both hands, 22 each): upper lip (mesh 0) relative to the nose tip (mesh 1), then
    # the nose tip relative to the shoulder midpoint
    lip, _ = point("FACE_LANDMARKS", "0")
    nose, _ = point("FACE_LANDMARKS", "1")
    face = 9 + 22 + 22
    np.testing.assert_allclose(f[:, face + poses.MP_FACE.index("0"), :2], (lip - nose) / scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f[:, face + 43, :2], (nose - mid) / scale, rtol=1e-4, atol=1e-5)
    assert poses.body_frame(cfg).nonzero()[0].tolist() == [*range(9), 30, 52, 96]
    # the median shoulder width is 1 after normalisation
    w = np.linalg.norm(f[:, 0, :2] - f[:, 1, :2], axis=1)
    assert abs(np.median(w[f[:, 0, 2] * f[:, 1, 2] > 0]) - 1) < 1e-4


def test_frames_fps_and_max_frames(fixtures_dir):
    path = fixtures_dir / "holistic_576.pose"   # 97 frames at 25 fps
    full = poses.load_pose(path, poses.PoseConfig())
    half = poses.load_pose(path, poses.PoseConfig(fps=12.5))
    np.testing.assert_array_equal(half, full[::2])
    short = poses.load_pose(path, poses.PoseConfig(max_frames=40))
    assert len(short) == 40
    np.testing.assert_array_equal(short[[0, -1]], full[[0, -1]])     # uniform: both ends kept
    assert poses.load_pose(path, poses.PoseConfig(use_z=True)).shape == (97, 97 * 4)
    assert poses.load_pose(path, poses.PoseConfig(place=False)).shape == (97, 94 * 3)
    with pytest.raises(poses.PoseError, match="need at least 200") as e:
        poses.load_pose(path, poses.PoseConfig(min_frames=200))
    assert e.value.kind == "too few frames"


def test_zero_confidence_is_masked_never_nan(fixtures_dir, tmp_path):
    pose = read_fixture(fixtures_dir)
    pose.body.confidence[10:20, 0, 522:543] = 0        # the right hand (points 522..542) gone
    pose.body.data.data[10:20, 0, 522:543] = np.nan    # with garbage coordinates
    pose.body.confidence[30, 0, :] = 0                 # one frame without anything
    with open(tmp_path / "x.pose", "wb") as f:
        pose.write(f)
    x = poses.load_pose(tmp_path / "x.pose", poses.PoseConfig()).reshape(97, 97, 3)
    assert np.isfinite(x).all()
    assert (x[10:20, 31:53] == 0).all() and (x[30] == 0).all()   # the right hand: 21 points and its place


def test_other_layouts_work_or_name_missing_points(fixtures_dir):
    holistic = poses.PoseConfig(layout="holistic")
    with pytest.raises(poses.PoseError) as e:
        poses.load_pose(fixtures_dir / "holistic_reduced_178.pose", holistic)
    assert e.value.kind == "layout lacks points"
    message = str(e.value)
    assert "holistic_reduced_178.pose" in message and "NOSE" in message and "FACE_LANDMARKS: 1, 2" in message
    assert "layout='holistic_reduced' fits it" in str(e.value)
    with pytest.raises(poses.PoseError, match="pose_keypoints_2d.*layout='openpose' fits it"):
        poses.load_pose(fixtures_dir / "openpose_137.pose", holistic)
    cfg = poses.PoseConfig(layout="openpose")
    x = poses.load_pose(fixtures_dir / "openpose_137.pose", cfg)
    assert x.shape == (93, poses.feature_dim(cfg)) == (93, (98 + 3) * 3) and np.isfinite(x).all()
    # "auto" takes the first layout a file fits: the same features as naming it
    np.testing.assert_array_equal(poses.load_pose(fixtures_dir / "openpose_137.pose", poses.PoseConfig()), x)
    reduced = poses.load_pose(fixtures_dir / "holistic_reduced_178.pose", poses.PoseConfig())
    assert reduced.shape == (278, (8 + 22 + 22 + 39) * 3) and np.isfinite(reduced).all()
    with pytest.raises(poses.PoseError, match="3-D"):
        poses.load_pose(fixtures_dir / "openpose_137.pose", poses.PoseConfig(layout="openpose", use_z=True))


def test_truncated_v01_file_is_caught(fixtures_dir, tmp_path):
    # pose-format's v0.1 reader accepts a truncated file (it infers the frame count): catch it
    buf = (fixtures_dir / "holistic_reduced_178.pose").read_bytes()
    (tmp_path / "t.pose").write_bytes(buf[: len(buf) // 2])
    with pytest.raises(poses.PoseError, match="bytes after the last frame") as e:
        poses.read_pose(tmp_path / "t.pose")
    assert e.value.kind == "unreadable pose file"


def test_augment_keeps_masks_and_shapes(fixtures_dir):
    cfg = poses.PoseConfig(layout="holistic")
    x = poses.load_pose(fixtures_dir / "holistic_576.pose", cfg)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = poses.augment(x, cfg, rng)
        assert y.shape[1] == x.shape[1] and 40 <= len(y) <= 130 and np.isfinite(y).all()
        p = y.reshape(len(y), -1, 3)
        assert ((p[..., 0] == 0) | (p[..., 2] == 1)).all() and ((p[..., 1] == 0) | (p[..., 2] == 1)).all()
    # no randomness: identity
    still = poses.PoseConfig(layout="holistic", aug_rotate_deg=0, aug_scale=0, aug_shear=0, aug_shift=0, aug_noise=0,
                            aug_speed=0, aug_frame_drop=0)
    np.testing.assert_allclose(poses.augment(x, still, rng), x, atol=1e-7)


# ----------------------------------------------------------------------------- corpus and cache
def test_prepare_skips_exactly_the_broken_rows(fixtures_dir, tmp_path):
    root = make_corpus(tmp_path / "corpus", fixtures_dir, good_rows(10))
    buf = (fixtures_dir / "holistic_576.pose").read_bytes()
    (root / "poses" / "bad--1.pose").write_bytes(buf[: len(buf) // 2])               # truncated
    (root / "poses" / "bad--2.pose").write_bytes(np.random.default_rng(0).bytes(4096))  # garbage
    (root / "poses" / "bad--4.pose").write_bytes(buf)                                 # fine, but no text
    rows = good_rows(10) + [("bad--1", "truncated"), ("bad--2", "garbage"), ("bad--3", "missing file"),
                            ("bad--4", "")]
    write_csv(root / "iSign_v1.1.csv", rows)
    cfg = data.DataConfig(data_dir=str(root))
    summary = data.prepare(cfg, workers=2, progress=False)
    assert summary["ok"] == 10 and summary["skipped"] == 4
    assert summary["reasons"] == {"unreadable pose file": 2, "missing pose file": 1, "empty text": 1}
    lines = (root / "cache" / "skipped.jsonl").read_text().splitlines()
    skipped = {s["uid"]: s["reason"] for s in map(json.loads, lines)}
    assert skipped == {"bad--1": "unreadable pose file", "bad--2": "unreadable pose file",
                       "bad--3": "missing pose file", "bad--4": "empty text"}
    # every good row is in the cache, in corpus order, equal to load_pose of its file (float16)
    index = json.loads((root / "cache" / "index.json").read_text())
    feats = np.load(root / "cache" / "features.npy", mmap_mode="r")
    assert index["uid"] == [u for u, _ in good_rows(10)] and index["text"] == [t for _, t in good_rows(10)]
    for uid, s, n in zip(index["uid"], index["start"], index["length"]):
        ref = poses.load_pose(root / "poses" / f"{uid}.pose", cfg.pose).astype(np.float16)
        np.testing.assert_array_equal(feats[s:s + n], ref)
    assert data.is_fresh(cfg) and not (root / "cache" / "shards").exists()


def test_cli_prepare_last_line_is_json(fixtures_dir, tmp_path, capsys):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(3))
    data.main(["prepare", str(root), "--cache", str(tmp_path / "cache"), "--workers", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["ok"] == 3 and json.loads(last)["skipped"] == 0
    assert (tmp_path / "cache" / "DONE").is_file()


def test_prepare_resumes_after_interruption(fixtures_dir, tmp_path, monkeypatch):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(9))
    cfg = data.DataConfig(data_dir=str(root))
    real, calls = poses.load_pose, []

    def crash_after_5(path, c):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, c)
    monkeypatch.setattr(data, "SHARD_ROWS", 2)
    monkeypatch.setattr(poses, "load_pose", crash_after_5)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(cfg, workers=1, progress=False)
    assert not data.is_fresh(cfg) and len(list((root / "cache" / "shards").glob("shard-*.json"))) == 3

    calls.clear()
    monkeypatch.setattr(poses, "load_pose", lambda path, c: calls.append(path) or real(path, c))
    summary = data.prepare(cfg, workers=1, progress=False)
    assert summary["ok"] == 9 and len(calls) == 4          # only the rows not committed before
    resumed = np.load(root / "cache" / "features.npy")
    fresh = data.DataConfig(data_dir=str(root), cache_dir=str(tmp_path / "fresh"))
    data.prepare(fresh, workers=1, progress=False)
    np.testing.assert_array_equal(resumed, np.load(tmp_path / "fresh" / "features.npy"))
    index = lambda cache: json.loads((cache / "index.json").read_text())
    assert index(root / "cache") == index(tmp_path / "fresh")


def test_cache_staleness(fixtures_dir, tmp_path, monkeypatch):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(3))
    cfg = data.DataConfig(data_dir=str(root))
    data.prepare(cfg, workers=1, progress=False)
    calls = []
    real = poses.load_pose
    monkeypatch.setattr(poses, "load_pose", lambda path, c: calls.append(path) or real(path, c))
    assert data.prepare(cfg, workers=1, progress=False)["ok"] == 3 and calls == []     # fresh: nothing redone
    # a feature setting changed
    assert not data.is_fresh(data.DataConfig(data_dir=str(root), pose=poses.PoseConfig(max_frames=50)))
    write_csv(root / "iSign_v1.1.csv", good_rows(3)[:2])
    os.utime(root / "iSign_v1.1.csv", ns=(1, 1))                                       # the CSV changed
    assert not data.is_fresh(cfg)
    assert data.prepare(cfg, workers=1, progress=False)["ok"] == 2 and len(calls) == 2


def test_ensure_cache_other_ranks_wait(fixtures_dir, tmp_path):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(3))
    cfg = data.DataConfig(data_dir=str(root))
    with pytest.raises(TimeoutError, match="rank 1"):
        data.ensure_cache(cfg, rank=1, world_size=2, timeout_s=0.2, poll_s=0.05)
    waited = []
    t = threading.Thread(target=lambda: waited.append(data.ensure_cache(cfg, 1, 2, timeout_s=60, poll_s=0.05)))
    t.start()
    assert data.ensure_cache(cfg, rank=0, world_size=2) == root / "cache"
    t.join(10)
    assert waited == [root / "cache"] and data.is_fresh(cfg)


def test_split_by_video_leaks_no_video():
    rng = np.random.default_rng(0)
    uids = [f"v{rng.integers(300):03d}--{k}" for k in range(3000)]
    splits = corpus.split_by_video(uids, (0.8, 0.1, 0.1), seed=1)
    assert splits == corpus.split_by_video(uids, (0.8, 0.1, 0.1), seed=1)
    per_video = {}
    for u, s in zip(uids, splits):
        per_video.setdefault(corpus.video_id(u), set()).add(s)
    assert all(len(s) == 1 for s in per_video.values())
    counts = Counter(splits)
    assert abs(counts["train"] / 3000 - 0.8) < 0.02 and abs(counts["val"] / 3000 - 0.1) < 0.02
    assert corpus.video_id("MluonE1OqLY--18") == "MluonE1OqLY" and corpus.video_id("a--b--3") == "a--b"


def test_split_files_and_manifest(fixtures_dir, tmp_path):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(6))
    for name, rows in [("train", good_rows(6)[:4]), ("val", good_rows(6)[4:5]), ("test", good_rows(6)[5:])]:
        write_csv(root / f"{name}.csv", rows)
    rows = corpus.read_rows(data.DataConfig(data_dir=str(root)))
    assert [r.split for r in rows] == ["train"] * 4 + ["val", "test"]
    manifest = [{"pose": f"poses/{u}.pose", "text": t, "split": "test" if k == 0 else "train"}
                for k, (u, t) in enumerate(good_rows(6))]
    (root / "m.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    cfg = data.DataConfig(data_dir=str(root), csv="m.jsonl", cache_dir=str(tmp_path / "mc"))
    assert data.prepare(cfg, workers=1, progress=False)["splits"] == {"test": 1, "train": 5}
    assert corpus.split_texts(cfg, "test") == [TEXTS[0]]


# ----------------------------------------------------------------------------- text, batches
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_bpe(TEXTS * 5, 300, tmp_path_factory.mktemp("tok"))


def tokens_per_pose(frames: int) -> int:   # the pose encoder's two stride-2 convolutions
    return -(-(-(-frames // 2)) // 2)


def test_dataset_and_collate_labels_only_on_answer(fixtures_dir, tmp_path, tok):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(6, videos=6))
    cfg = data.DataConfig(data_dir=str(root), split_ratios=(1, 0, 0))
    data.prepare(cfg, workers=1, progress=False)
    ds = batches.SignDataset(cfg, "train", tok)
    assert len(ds) == 6 and list(ds.lengths) == [97, 60, 31, 97, 60, 31]
    items = [ds[i] for i in (0, 1, 2)]
    F = poses.feature_dim(corpus.resolve_layout(cfg).pose)
    assert items[0]["poses"].shape == (97, F) and items[0]["poses"].dtype == torch.float32
    # the un-expanded sequence is the ChatML conversation with the answer, as the chat template writes it
    for s in items:
        user = cfg.user_prompt.format(pose=tok.pose_token, language=cfg.source_language)
        full = tok.chat([{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user},
                         {"role": "assistant", "content": s["text"]}], add_generation_prompt=False)
        assert s["prompt_ids"] + s["answer_ids"] == full[:-1]          # all but the trailing "\n"
        assert s["prompt_ids"].count(tok.pose_token_id) == 1 and s["answer_ids"][-1] == tok.im_end_id

    b = batches.collate(items, tok, tokens_per_pose)
    B, L = b["input_ids"].shape
    assert b["poses"].shape == (3, 97, F) and b["pose_mask"].sum(1).tolist() == [97, 60, 31]
    assert (b["poses"][2, 31:] == 0).all() and b["uids"] == [s["uid"] for s in items]
    for i, s in enumerate(items):
        n = int(b["attention_mask"][i].sum())
        ids, labels = b["input_ids"][i], b["labels"][i]
        assert (b["attention_mask"][i, :n] == 1).all() and (ids[n:] == tok.pad_id).all()        # right padding
        assert (ids == tok.pose_token_id).sum() == tokens_per_pose(len(s["poses"]))
        on = labels != -100
        assert on.sum() == len(s["answer_ids"]) and (labels[on] == ids[on]).all()
        assert on.nonzero().squeeze(1).tolist() == list(range(n - len(s["answer_ids"]), n))       # the end only
        assert tok.decode(labels[on].tolist()) == s["text"]

    g = batches.collate(items, tok, tokens_per_pose, for_generation=True)
    assert "labels" not in g
    for i, s in enumerate(items):
        n = int(g["attention_mask"][i].sum())
        expanded = [t for t in s["prompt_ids"] if t != tok.pose_token_id]
        assert (g["attention_mask"][i, -n:] == 1).all() and (g["input_ids"][i, :-n] == tok.pad_id).all()  # left
        row = g["input_ids"][i, -n:].tolist()
        assert [t for t in row if t != tok.pose_token_id] == expanded and row[-3:] == s["prompt_ids"][-3:]

    aug = batches.SignDataset(cfg, "train", tok, augment=True)
    torch.manual_seed(0)
    assert not torch.equal(aug[0]["poses"][:50], ds[0]["poses"][:50])
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches.BucketSampler(ds.lengths, 2),
                                         collate_fn=partial(batches.collate, tokenizer=tok,
                                                            tokens_per_pose=tokens_per_pose))
    assert sorted(u for batch in loader for u in batch["uids"]) == sorted(ds.uids)


def test_dataset_needs_a_fresh_cache(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="data.py prepare"):
        batches.SignDataset(data.DataConfig(data_dir=str(tmp_path)), "train", tok)


def all_batches(sampler):
    return [b for b in sampler]


@pytest.mark.parametrize("n,bs,R,drop_last",
                         [(96, 4, 3, False), (103, 4, 3, False), (103, 4, 3, True), (5, 4, 4, False)])
def test_bucket_sampler_shards(n, bs, R, drop_last):
    lengths = np.random.default_rng(0).integers(20, 300, n)
    ranks = [batches.BucketSampler(lengths, bs, R, r, seed=7, drop_last=drop_last) for r in range(R)]
    per_rank = [all_batches(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and all(len(s) == len(b) for s, b in zip(ranks, per_rank))
    flat = [i for batches in per_rank for b in batches for i in b]
    if drop_last:
        assert len(flat) == len(set(flat)) and all(len(b) == bs for bs_ in per_rank for b in bs_)
        assert len(flat) > n - bs * R
    else:
        assert set(flat) == set(range(n))                          # covering
        n_batches = -(-n // bs)
        if n_batches % R == 0:
            assert len(flat) == n                                  # and disjoint
        else:
            assert sum(len(b) for bs_ in per_rank for b in bs_) - n <= bs * (R - 1)   # only the padding repeats
    assert per_rank == [all_batches(batches.BucketSampler(lengths, bs, R, r, seed=7, drop_last=drop_last))
                        for r in range(R)]


def test_bucket_sampler_buckets_and_epochs():
    lengths = np.random.default_rng(1).integers(20, 300, 2000)
    s = batches.BucketSampler(lengths, 16, seed=3)
    first = all_batches(s)
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.2 * np.ptp(lengths)                      # similar lengths together
    assert sorted(i for b in first for i in b) == list(range(2000))
    s.set_epoch(1)
    assert all_batches(s) != first
    s.set_epoch(0)
    assert all_batches(s) == first
    ordered = all_batches(batches.BucketSampler(lengths, 16, shuffle=False))
    assert [i for b in ordered for i in b] == list(np.argsort(lengths, kind="stable"))


def test_bucket_sampler_resumes_mid_epoch():
    lengths = np.random.default_rng(2).integers(20, 300, 200)
    s = batches.BucketSampler(lengths, 8, num_replicas=2, rank=1, seed=5)
    s.set_epoch(3)
    full = all_batches(s)
    it = iter(s)
    seen = [next(it) for _ in range(4)]
    state = s.state_dict()
    assert state["epoch"] == 3 and state["batches_consumed"] == 4 and seen == full[:4]
    r = batches.BucketSampler(lengths, 8, num_replicas=2, rank=1, seed=5)
    r.load_state_dict(json.loads(json.dumps(state)))
    r.set_epoch(3)                                            # the training loop's call keeps the skip
    assert all_batches(r) == full[4:]
    assert all_batches(r) == full                             # a new pass of the epoch starts over
    r.set_epoch(4)
    assert len(all_batches(r)) == len(full) and r.state_dict()["batches_consumed"] == len(full)
    assert s.state_dict(batches_consumed=2)["batches_consumed"] == 2   # trainer-side count (prefetching)
