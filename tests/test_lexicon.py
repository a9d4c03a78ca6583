"""Sign dictionaries (lexicon.py, corpus.py's index reader, poses.window_frames): the index format
of spoken-to-signed-translation on the real ASL fingerspelling dictionary, bad rows skipped with
their reason, clip windows, trimming, names spelled from real letters, stitching, the command that
makes a dictionary from a folder. Cheap: no model is trained here (what a dictionary does for
learning is measured in full runs: docs/benchmark-log.md, 2026-12-07, "CPU: the long tail")."""
import csv
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES

import corpus
import data
import lexicon
import poses
from poses import PoseConfig, PoseError

ASL = FIXTURES.parent / "lexicon_ase_fingerspelling"


def asl_rows() -> list[dict]:
    with open(ASL / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_index(folder, rows) -> None:
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(corpus.LEXICON_COLUMNS)
        w.writerows(rows)


@pytest.fixture(scope="module")
def asl(tmp_path_factory):
    """The real ASL fingerspelling dictionary (read-only fixture) cached with holistic features, as
    a run with that layout would: (its DataConfig, the Lexicon)."""
    cfg = data.DataConfig(data_dir=str(tmp_path_factory.mktemp("corpus")), lexicon_dir=str(ASL),
                          pose=PoseConfig(layout="holistic"))
    lcfg = lexicon.lexicon_config(cfg)
    summary = data.prepare(lcfg, workers=1, progress=False)
    assert summary["ok"] == 26 and summary["skipped"] == 0
    return lcfg, lexicon.Lexicon(lcfg)


# ----------------------------------------------------------------------------- the index
def test_real_index_is_read_as_rows_with_windows():
    rows = corpus.read_rows(data.DataConfig(data_dir=str(ASL), csv="index.csv"))
    want = asl_rows()
    assert len(rows) == 26 and not any(r.problem for r in rows)
    assert [r.text for r in rows] == [w["words"] for w in want] == [chr(c) for c in range(65, 91)]
    assert all(r.split == "train" and r.pose == str(ASL / w["path"]) for r, w in zip(rows, want))
    assert [r.window for r in rows] == [(int(w["start"]), int(w["end"])) for w in want]


def test_bad_rows_keep_their_reason(tmp_path):
    shutil.copy(ASL / asl_rows()[0]["path"], tmp_path / "a.pose")
    write_index(tmp_path, [
        ("a.pose", "en", "ase", 0, 0, "A", "A", 0),                  # good: the whole file
        ("a.pose", "en", "ase", 40, 400, "thank  you", "THANK-YOU", 1),   # good: a window, a phrase
        ("../a.pose", "en", "ase", 0, 0, "B", "B", 0),
        ("a.pose", "en", "ase", 0, 0, " ", "C", 0),
        ("a.pose", "en", "ase", "1.5", 0, "D", "D", 0),
        ("a.pose", "en", "ase", 500, 400, "E", "E", 0),
        ("a.pose", "en", "ase", -1, 0, "F", "F", 0),
        ("", "en", "ase", 0, 0, "G", "G", 0)])
    with open(tmp_path / "index.csv", "a") as f:
        f.write("a.pose,en,ase,0,0,H,H,0,extra\n")
    rows = corpus.read_rows(data.DataConfig(data_dir=str(tmp_path), csv="index.csv"))
    assert [r.window for r in rows[:2]] == [(0, 0), (40, 400)] and rows[1].text == "thank you"
    problems = [r.problem.split(": ", 1)[1] for r in rows[2:]]
    assert problems == ["path '../a.pose' is outside the dictionary's folder",
                        "empty words (the spoken word or phrase the clip signs)",
                        "start or end is not a whole number of milliseconds",
                        "end 400 ms is not after start 500 ms", "start -1 ms is negative", "empty path",
                        "9 fields, the header names 8"]
    assert all(str(tmp_path / "index.csv") in r.problem and " line " in r.problem for r in rows[2:])


def test_window_frames_hand_computed(fixtures_dir):
    assert poses.window_frames(100, 25, (400, 1000)) == slice(10, 25)        # 400 ms = frame 10, 1000 ms = 25
    assert poses.window_frames(100, 25, (410, 1001)) == slice(10, 26)        # floor the start, ceil the end
    assert poses.window_frames(100, 25, (0, 0)) == slice(0, 100)             # 0/0: the whole file
    assert poses.window_frames(100, 25, (1000, 9000)) == slice(25, 100)      # an end past the clip: its end
    with pytest.raises(PoseError, match="past the clip's end"):
        poses.window_frames(100, 25, (4000, 0))
    # on a real file: the window's frames are the whole file's (the shoulders barely move, so the
    # scale, a median over the frames kept, is the same)
    path, cfg = fixtures_dir / "holistic_576.pose", PoseConfig(layout="holistic")
    whole, part = poses.load_pose(path, cfg), poses.load_pose(path, cfg, (400, 1000))
    np.testing.assert_allclose(part, whole[10:25], atol=2e-3)


def test_dictionary_cache_skips_bad_rows_never_fails(tmp_path):
    for r in asl_rows()[:3]:
        (tmp_path / "ase").mkdir(exist_ok=True)
        shutil.copy(ASL / r["path"], tmp_path / r["path"])
    write_index(tmp_path, [(r["path"], "en", "ase", r["start"], r["end"], r["words"], r["glosses"], 0)
                           for r in asl_rows()[:3]] +
                [("ase/missing.pose", "en", "ase", 0, 0, "Z", "Z", 0),
                 (asl_rows()[0]["path"], "en", "ase", 60000, 0, "Y", "Y", 0),
                 (asl_rows()[0]["path"], "en", "ase", 0, 0, "", "X", 0)])
    cfg = data.DataConfig(data_dir=str(tmp_path / "corpus"), lexicon_dir=str(tmp_path),
                          pose=PoseConfig(layout="holistic"))
    summary = data.prepare(lexicon.lexicon_config(cfg), workers=1, progress=False)
    assert summary["ok"] == 3 and summary["reasons"] == {"missing pose file": 1, "window outside the clip": 1,
                                                         "bad corpus row": 1}
    skipped = [json.loads(line) for line in (tmp_path / "corpus" / "cache" / "lexicon" / "skipped.jsonl").open()]
    assert any("60000-0 ms is past the clip's end" in s["detail"] for s in skipped)


# ----------------------------------------------------------------------------- clips, names, stitching
def test_trimmed_to_the_signing_hand_computed(asl):
    """Signing is where a wrist is above its elbow (y grows downwards) or well above its lowest
    place; the span is those frames and one more on each side. The real letters were trimmed
    upstream: each is kept whole, as the rule computed on the raw file says."""
    from pose_format import Pose
    _, lex = asl
    for r in asl_rows():
        body = Pose.read((ASL / r["path"]).read_bytes()).body
        wrist, elbow = body.data.data[:, 0, 16, 1], body.data.data[:, 0, 14, 1]   # RIGHT_WRIST, RIGHT_ELBOW
        up = np.flatnonzero(wrist < elbow)
        assert lex.spans[lex.words.index(r["words"].lower())] == (max(0, up[0] - 1), min(len(wrist), up[-1] + 2))
    # a clip with rest before and after (hands down), a sign up by the face, one low in front
    cfg = PoseConfig(layout="holistic")
    x = np.zeros((20, poses.feature_dim(cfg)), np.float32)
    body = x.reshape(20, -1, 3)[:, :9]                  # LEFT/RIGHT_SHOULDER, NOSE, *_ELBOW, *_WRIST, *_HIP
    body[..., 2] = 1
    body[:, 3, 1] = body[:, 4, 1] = .7                   # elbows
    body[:, 5, 1] = body[:, 6, 1] = 1.3                  # wrists at rest, below them
    body[6:9, 6, 1] = .2                                 # the right hand up by the face
    body[9:12, 6, 1] = 1.0                               # then low in front: below the elbow, .3 above rest
    assert lexicon.active_span(x, cfg) == (5, 13)
    assert lexicon.active_span(np.zeros_like(x), cfg) == (0, 20)   # nothing to go by: the whole clip
    assert len(lex.clip(0)) == lex.spans[0][1] - lex.spans[0][0] and len(lex.clip(0, True, True)) == lex.lengths[0]


def test_names_are_spelled_from_real_letters(asl):
    _, lex = asl
    texts = ["My friend Ana eats.", "Ana and Bo eat.", "The boy and Bo run."]
    st = lexicon.Stitcher(lex, texts, [60, 60, 60])
    assert st.names == {"ana", "bo"}                             # capitalised inside a sentence, not a word
    clips = st._clips("My friend Ana eats.", np.random.default_rng(0))
    want = [lex.clip(lex.by_word[c][0], head=i == 0, tail=i == 2) for i, c in enumerate("ana")]
    assert len(clips) == 3 and all(np.array_equal(a, b) for a, b in zip(clips, want))
    x, text = st.sample(np.random.default_rng(1))
    assert x.ndim == 2 and x.shape[1] == poses.feature_dim(lex.pose_cfg) and np.isfinite(x).all()
    names = [w for w in text.rstrip(".").split() if w[0].isupper() and w not in ("My", "The")]
    assert names and all(w.isalpha() for w in names)


def test_stitch_keeps_order_and_moves_between_signs():
    """Two constant clips: the stitched sentence starts at the first, ends at the second, and the
    frames between move from one to the other; a point missing in either is missing between."""
    cfg = PoseConfig(layout="holistic")
    F, C = poses.feature_dim(cfg), poses.channels(cfg)
    a, b = np.zeros((10, F), np.float32), np.zeros((10, F), np.float32)
    a.reshape(10, -1, C)[..., -1] = b.reshape(10, -1, C)[..., -1] = 1     # every point present
    a.reshape(10, -1, C)[..., 0], b.reshape(10, -1, C)[..., 0] = -1, 1
    b.reshape(10, -1, C)[:, 30] = 0                                         # point 30 missing in b
    x = lexicon.stitch([a, b], 1.0, 10, cfg, np.random.default_rng(0)).reshape(-1, F // C, C)
    assert len(x) >= 15                                                     # ~20 frames, less a cross-fade
    left = x[..., 40, 0]                                                    # a hand point (not a place)
    assert left[0] < -.8 and left[-1] > .8 and np.all(np.diff(left) >= -1e-6)
    assert x[-1, 30, -1] == 0 and np.all(x[-1, 30] == 0)
    w = np.linspace(0, 1, 5)[1:-1, None]
    mid = lexicon._blend(a[:3], b[:3], w, cfg).reshape(3, -1, C)
    np.testing.assert_allclose(mid[:, 40, 0], [-.5, 0, .5])
    assert np.all(mid[:, 30] == 0)


def test_inflected_words_find_their_dictionary_word(asl):
    _, lex = asl
    lex = dataclasses_copy(lex, ["pay", "carry", "move", "drop", "wash", "bake", "news"])
    found = {w: lex.find(w) for w in ("pays", "carried", "carries", "moved", "dropped", "washes", "baking", "pay",
                                      "paid", "bus", "a", "as")}
    assert found == {"pays": "pay", "carried": "carry", "carries": "carry", "moved": "move", "dropped": "drop",
                     "washes": "wash", "baking": "bake", "pay": "pay", "paid": None, "bus": None, "a": "a",
                     "as": None}


def dataclasses_copy(lex, words):
    """The fixture's Lexicon with made-up extra words (each the clip of A) to test look-ups."""
    import copy
    out = copy.copy(lex)
    out.by_word = {**lex.by_word, **{w: lex.by_word["a"] for w in words}}
    return out


# ----------------------------------------------------------------------------- a folder -> a dictionary
def test_a_folder_of_pose_files_becomes_a_dictionary(tmp_path):
    src = tmp_path / "signs"
    src.mkdir()
    first, second = (ASL / r["path"] for r in asl_rows()[:2])
    for name, f in (("hello.pose", first), ("hello-2.pose", second), ("thank_you.pose", first)):
        shutil.copy(f, src / name)
    data.main(["lexicon", str(src), str(tmp_path / "lex")])
    with open(tmp_path / "lex" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["words"], r["glosses"], r["priority"], r["start"], r["end"]) for r in rows] == [
        ("poses/hello-2.pose", "hello", "HELLO", "1", "0", "0"), ("poses/hello.pose", "hello", "HELLO", "0", "0", "0"),
        ("poses/thank_you.pose", "thank you", "THANK-YOU", "0", "0", "0")]
    assert (tmp_path / "lex" / "poses" / "hello.pose").read_bytes() == first.read_bytes()
    cfg = data.DataConfig(data_dir=str(tmp_path / "c"), lexicon_dir=str(tmp_path / "lex"),
                          pose=PoseConfig(layout="holistic"))
    assert data.prepare(lexicon.lexicon_config(cfg), workers=1, progress=False)["ok"] == 3
