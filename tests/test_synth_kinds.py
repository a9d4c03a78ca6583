"""synth/kinds.py: corpora in the iSign layout whose signs differ by path, hand shape, or a mix.

Cheap (a few seconds): small corpora, and the generator's internals for the claims about signs."""
import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pose_format import Pose

import corpus
import data
import poses
from synth import kinds as sk
from synth import kinds_grammar as grammar

ROOT = Path(__file__).resolve().parents[1]
CASES = {"path": dict(fps=30, size=(640, 480)), "shape": dict(fps=50, size=(1920, 1080)),
         "mixed": dict(fps=25, size=(1280, 720))}
MIRROR = np.array([-1, 1, 1])


def still_signer(**kw) -> sk.Signer:
    """A signer without noise, dropouts or per-instance variation (shoulders 0.38 m apart)."""
    args = dict(k=1., ppm=800., cx=640., cy=330., roll=0., speed=1., noise=0., drop=0., amp=1., bias=(0, 0, 0),
                left_handed=False, jitter=0.)
    return sk.Signer(**{**args, **kw})


def real_signer(seed: int = 7, **kw) -> sk.Signer:
    """A varied signer as generate_corpus draws one (size, amplitude, bias, speed, instance jitter)."""
    s = sk.make_signer(np.random.default_rng(seed), (1280, 720), 0.)
    for key, value in kw.items():
        setattr(s, key, value)
    return s


def perform(word: str, kind: str, signer: sk.Signer, seed: int = 0, fps: float = 50):
    return sk.perform(sk.sign_for(word, kind), signer, np.random.default_rng(seed), fps)


def render(glosses, kind: str, signer: sk.Signer, seed: int = 0, fps: float = 50, coart: bool = False):
    """(T, 576, 3) pixels and (T, 576) confidence of one clip, from a fixed generator."""
    rng = np.random.default_rng(seed)
    return sk.camera(sk.skeleton(glosses, kind, signer, rng, fps, coart), signer, rng, fps, (1280, 720))


def normalised_wrist(pixels: np.ndarray, wrist: int = 16) -> np.ndarray:
    """(T, 2) a body wrist relative to the shoulder midpoint, in shoulder widths (as poses.py does)."""
    ls, rs = pixels[:, 11, :2], pixels[:, 12, :2]
    return (pixels[:, wrist, :2] - (ls + rs) / 2) / np.linalg.norm(ls - rs, axis=1, keepdims=True)


def local_hand(ch: np.ndarray) -> np.ndarray:
    """(n, 21, 3) a hand's points relative to its wrist."""
    pts = sk.hand_points(ch, 1.)
    return pts - pts[:, :1]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    out = {}
    for kind, kw in CASES.items():
        d = tmp_path_factory.mktemp(kind)
        out[kind] = d, sk.generate_corpus(d, kind, n=24, seed=3, left_handed=.5, **kw)
    return out


# ----------------------------------------------------------------------------- files and splits
@pytest.mark.parametrize("kind", list(CASES))
def test_corpus_files_split_by_video_and_read(corpora, kind):
    d, summary = corpora[kind]
    fps, (W, H) = CASES[kind]["fps"], CASES[kind]["size"]
    assert summary["samples"] == 24 and summary["fps"] == fps and summary["size"] == [W, H]
    splits = {}
    for split in ("train", "val", "test"):
        with open(d / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and set(rows[0]) == {"uid", "text"}, f"{split}.csv is empty or has other columns"
        splits[split] = {r["uid"] for r in rows}
        assert all(r["text"].strip() for r in rows)
    videos = {s: {corpus.video_id(u) for u in uids} for s, uids in splits.items()}
    assert not (videos["train"] & videos["val"] or videos["train"] & videos["test"] or videos["val"] & videos["test"])
    files = {p.stem for p in (d / "poses").glob("*.pose")}
    assert set().union(*splits.values()) == files and len(files) == 24
    assert all(u.startswith(kind) and "--" in u for u in files)
    cfg = data.DataConfig(data_dir=str(d))
    rows = corpus.read_rows(cfg)                                  # as the training pipeline reads them
    assert {(r.uid, r.split) for r in rows} == {(u, s) for s, uids in splits.items() for u in uids}
    feature_dim = None
    for r in rows[:8]:
        pose = Pose.read(Path(r.pose).read_bytes())
        assert (pose.header.dimensions.width, pose.header.dimensions.height) == (W, H)
        assert pose.body.fps == pytest.approx(fps)
        assert pose.body.data.shape[1:] == (1, 576, 3) and pose.header.total_points() == 576
        conf = pose.body.confidence[:, 0]
        assert np.all(conf[:, 33:501] == 1)                     # the face is always found
        hands = conf[:, 501:543]
        assert set(np.unique(hands)) <= {0., 1.}
        assert np.all(pose.body.data.data[:, 0, 501:543][hands == 0] == 0)   # a lost hand is zeros
        load = getattr(data, "load_pose", None)
        x = load(r.pose, cfg) if load else poses.load_pose(r.pose, cfg.pose)
        assert np.isfinite(x).all() and x.ndim == 2 and len(x) >= cfg.pose.min_frames
        feature_dim = feature_dim or x.shape[1]
        assert x.shape[1] == feature_dim
    # durations are in seconds: a clip lasts 2-10 s whatever the frame rate
    assert 2 < summary["mean_seconds"] < 10


def test_frame_rate_changes_frames_not_seconds():
    glosses = ("LATER", "BOX", "HEAVY", "GIRL", "CARRY")
    for kind in sk.KINDS:
        T = {fps: len(sk.timeline(glosses, kind, real_signer(), np.random.default_rng(1), fps, kind == "mixed")[0])
             for fps in (25, 50)}
        assert 1.9 < T[50] / T[25] < 2.1
        assert abs(T[50] / 50 - T[25] / 25) < .2


def test_splits_keep_every_split_and_whole_videos():
    which = sk._splits([2] * 12, np.random.default_rng(0))
    assert which.count("test") == which.count("val") == 2 and which.count("train") == 8
    assert sk._splits([5], np.random.default_rng(0)) == ["train"]


# ----------------------------------------------------------------------------- grammar
def test_grammar_is_deterministic_and_in_time_topic_comment_order():
    s = grammar.clause("WORKER", "PAINT", "DOOR", "RED", "LAST-NIGHT", "negative")
    assert s.text == "The workers did not paint the red door last night."
    assert s.glosses == ("LAST-NIGHT", "DOOR", "RED", "WORKER", "PLURAL", "PAINT", "NO")
    assert grammar.clause("BOY", "FIND", "KEY", form="yes_no").text == "Does the boy find the key?"
    assert grammar.clause("NURSE", "OPEN", "WINDOW", time_="LATER", form="who").glosses == \
        ("LATER", "WINDOW", "OPEN", "WHO")
    assert grammar.description("CUP", "WET", "yes_no").text == "Is the cup wet?"
    rng = np.random.default_rng(0)
    sentences = [grammar.random_sentence(rng) for _ in range(400)]
    by_glosses = {}
    for s in sentences:                   # one gloss sequence, one English sentence (and back)
        assert by_glosses.setdefault(s.glosses, s.text) == s.text
        assert set(s.glosses) <= set(grammar.LEXICON)
    assert len({s.text for s in sentences}) == len(by_glosses) > 250
    assert len({g for s in sentences for g in s.glosses}) == len(grammar.LEXICON)


# ----------------------------------------------------------------------------- signs: what carries identity
def test_every_kind_gives_every_word_its_own_sign():
    for kind in sk.KINDS:
        signs = [sk.sign_for(w, kind) for w in grammar.LEXICON]
        keys = {(s.path, s.shape, s.end_shape, s.fingers, s.normal, s.turn, s.hands, s.seconds) for s in signs}
        assert len(keys) == len(grammar.LEXICON), kind


def test_path_words_differ_only_by_wrist_path():
    signer = real_signer()
    dom = {w: perform(w, "path", signer, seed=5) for w in grammar.LEXICON}   # the same generator for every word
    first = dom[grammar.LEXICON[0]]
    for w in grammar.LEXICON[1:]:
        a, b = dom[w]
        assert a.shape == first[0].shape                        # one duration for every word
        np.testing.assert_allclose(local_hand(a), local_hand(first[0]), atol=1e-12)   # one hand shape
        np.testing.assert_allclose(a[:, 3:9], first[0][:, 3:9], atol=1e-12)           # one orientation
        np.testing.assert_allclose(b, first[1], atol=1e-12)     # the other hand idles the same way
    tracks = {w: dom[w][0][:, :3] for w in grammar.LEXICON}
    gaps = [np.linalg.norm(tracks[a] - tracks[b], axis=1).mean() for a, b in itertools.combinations(grammar.LEXICON, 2)]
    assert min(gaps) > .03 * signer.k                           # every pair of paths > 3 cm apart on average
    # ... and that survives the camera: normalised wrist tracks of two one-word clips
    x, y = (normalised_wrist(render([w], "path", still_signer())[0]) for w in ("RED", "BOX"))
    assert x.shape == y.shape and np.abs(x - y).max() > .3


def test_path_passes_through_its_control_points():
    """Hand-computed expectation: a still signer's wrist starts at the first control point, ends
    at the last, and passes within 3 mm of every other one (Catmull-Rom interpolates them)."""
    signer = still_signer(k=1.1, bias=(.01, -.02, 0))
    for w in ("BOY", "CARRY", "QUESTION", "WET"):
        sign = sk.sign_for(w, "path")
        points = signer.k * (np.array(sign.path) + signer.bias)
        track = perform(w, "path", signer, fps=200)[0][:, :3]
        np.testing.assert_allclose(track[0], points[0], atol=1e-9)
        np.testing.assert_allclose(track[-1], points[-1], atol=1e-9)
        assert np.linalg.norm(track[:, None] - points[None], axis=2).min(0).max() < .003


def test_shape_words_differ_only_by_hand_shape_and_place():
    signer = real_signer()
    by_place = {}
    for w in grammar.LEXICON:
        by_place.setdefault(sk.sign_for(w, "shape").path, []).append(w)
    assert len(by_place) == len(sk.LOCATIONS) and max(map(len, by_place.values())) >= 2
    clips = {w: perform(w, "shape", signer, seed=9) for w in grammar.LEXICON}
    for words in by_place.values():
        for a, b in itertools.combinations(words, 2):           # same place: same wrist, other fingers
            (da, oa), (db, ob) = clips[a], clips[b]
            np.testing.assert_allclose(da[:, :9], db[:, :9], atol=1e-12)   # wrist track and orientation
            np.testing.assert_allclose(oa, ob, atol=1e-12)
            assert np.abs(local_hand(da) - local_hand(db)).max() > .015 * signer.k
    places = list(by_place)
    for pa, pb in itertools.combinations(places, 2):            # other places: wrists > 5 cm apart
        gap = np.linalg.norm(clips[by_place[pa][0]][0][:, :3] - clips[by_place[pb][0]][0][:, :3], axis=1)
        assert gap.min() > .05 * signer.k
    # held: a still signer's wrist stays within the common bounce of its place (hand-computed)
    still = still_signer()
    for w in grammar.LEXICON[:10]:
        track = perform(w, "shape", still)[0][:, :3]
        assert np.abs(track - sk.sign_for(w, "shape").path[0]).max() <= sk.BOUNCE + 1e-12
    # through the camera: two same-place words have the same normalised wrist, frame by frame
    a, b = next(ws for ws in by_place.values() if len(ws) >= 2)[:2]
    (pa, _), (pb, _) = render([a], "shape", still), render([b], "shape", still)
    np.testing.assert_allclose(normalised_wrist(pa), normalised_wrist(pb), atol=1e-4)
    assert np.abs(pa[:, 522:543] - pb[:, 522:543]).max() > 5          # the right hand's fingers differ (pixels)


def test_mixed_words_vary_in_many_properties():
    signs = [sk.sign_for(w, "mixed") for w in grammar.LEXICON]
    assert {s.hands for s in signs} >= {"one", "mirror", "base"}
    assert len({s.shape for s in signs}) > 30 and sum(s.shape != s.end_shape for s in signs) >= 5
    assert len({s.fingers for s in signs}) > 30 and sum(s.turn != 0 for s in signs) >= 5
    assert max(s.seconds for s in signs) - min(s.seconds for s in signs) > .3
    assert sum(len(s.path) > 1 for s in signs) >= 20 and sum(len(s.path) == 1 for s in signs) >= 5
    for s in signs:                                             # two hands never share one place
        if s.hands in ("mirror", "alt"):
            assert max(p[0] for p in s.path) <= -.06


def test_coarticulation_blends_signs_without_returning_home():
    glosses = ("EVERY-DAY", "CAR", "DRIVER", "WASH")
    signer = still_signer()
    on = sk.timeline(glosses, "mixed", signer, np.random.default_rng(2), 50, True)
    off = sk.timeline(glosses, "mixed", signer, np.random.default_rng(2), 50, False)
    assert len(on[0]) < len(off[0])
    for (_, end), (start, _) in zip(on[2], on[2][1:]):
        assert start < end                                      # each sign's head overlaps the last one's tail
    home = signer.home()
    for (_, end), (start, _) in zip(off[2], off[2][1:]):
        assert start - end >= 3 and np.abs(off[0][end:start] - home).sum(1).min() < 1e-9   # a pause at home
    assert np.abs(on[0][on[2][0][0]:on[2][-1][1], :3] - home[:3]).sum(1).min() > 1e-3


# ----------------------------------------------------------------------------- signer
def test_left_handed_signer_mirrors_the_signing():
    glosses = ("SOON", "LETTER", "AUNT", "THROW")
    right = sk.skeleton(glosses, "shape", still_signer(), np.random.default_rng(4), 25, False)
    left = sk.skeleton(glosses, "shape", still_signer(left_handed=True), np.random.default_rng(4), 25, False)
    rel = lambda pts, sl: pts[:, sl] - pts[:, [11, 12]].mean(1, keepdims=True)  # noqa: E731 (sway removed)
    np.testing.assert_allclose(rel(left, slice(501, 522)), rel(right, slice(522, 543)) * MIRROR, atol=1e-9)
    np.testing.assert_allclose(rel(left, slice(522, 543)), rel(right, slice(501, 522)) * MIRROR, atol=1e-9)


@pytest.mark.parametrize("left_handed", [0., 1.])
def test_dominant_wrist_moves_more_in_pose_files(tmp_path, left_handed):
    sk.generate_corpus(tmp_path, "path", n=4, seed=1, left_handed=left_handed)
    for p in sorted((tmp_path / "poses").glob("*.pose")):
        xy = Pose.read(p.read_bytes()).body.data.data[:, 0, :, :2]
        travel = {w: np.linalg.norm(np.diff(xy[:, w], axis=0), axis=1).sum() for w in (15, 16)}
        lead, idle = (15, 16) if left_handed else (16, 15)      # body LEFT_WRIST 15, RIGHT_WRIST 16
        assert travel[lead] > 2 * travel[idle]
    signers = json.loads((tmp_path / "meta.json").read_text())["signers"].values()
    assert all(s["left_handed"] == bool(left_handed) for s in signers)


def test_body_is_consistent():
    signer = real_signer()
    pts = sk.skeleton(("LATER", "BICYCLE", "FIX", "WHO"), "mixed", signer, np.random.default_rng(3), 25, True)
    for shoulder, el, wrist in ((11, 13, 15), (12, 14, 16)):    # the arm keeps its bone lengths
        np.testing.assert_allclose(np.linalg.norm(pts[:, el] - pts[:, shoulder], axis=1), .29 * signer.k, rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(pts[:, wrist] - pts[:, el], axis=1), .25 * signer.k, rtol=1e-6)
    np.testing.assert_allclose(pts[:, 15], pts[:, 501])       # body wrists are the hands' wrists
    np.testing.assert_allclose(pts[:, 16], pts[:, 522])
    np.testing.assert_allclose(pts[:, 0], pts[:, 33 + 1])      # body nose = face mesh nose tip (1)


# ----------------------------------------------------------------------------- hand and face models
def test_hand_model_hand_computed():
    up, palm_fwd = (0, -1, 0), (0, 0, -1)
    flat = np.r_[0, 0, 0, up, palm_fwd, np.zeros(11)][None]
    p = sk.hand_points(flat, 1.)[0]
    # straight middle finger (no fan) points up from its knuckle; the thumb side is +x
    np.testing.assert_allclose(p[12], [sk.KNUCKLE[1, 0], -(sk.KNUCKLE[1, 1] + sk.PHALANX[1].sum()), 0], atol=1e-12)
    assert p[4, 0] > p[20, 0]
    np.testing.assert_allclose(sk.hand_points(flat, 1.3)[0], 1.3 * p, atol=1e-12)
    fist = np.r_[0, 0, 0, up, palm_fwd, np.ones(8), 0, .3, 1][None]
    q = sk.hand_points(fist, 1.)[0]
    for f in range(4):                                          # bending keeps every bone's length ...
        chain = q[[0, 5 + 4 * f, 6 + 4 * f, 7 + 4 * f, 8 + 4 * f]]
        np.testing.assert_allclose(np.linalg.norm(np.diff(chain[1:], axis=0), axis=1), sk.PHALANX[f], rtol=1e-9)
        assert np.linalg.norm(q[8 + 4 * f]) < .7 * np.linalg.norm(p[8 + 4 * f])   # ... and folds the tip in
    assert (q[8:21:4, 2] < 0).all()                             # towards the palm's side (the camera)


def test_face_keypoints_in_place():
    f = sk.FACE
    x, y = f[:, 0], f[:, 1]
    assert x[33] < x[133] < x[1] < x[362] < x[263]              # right eye, nose, left eye (image left to right)
    assert x[61] < x[13] < x[291] and y[13] < y[14]             # lips
    assert max(y[[70, 105, 300, 334]]) < min(y[[33, 133, 263, 362]]) < y[1] < y[13]   # brows, eyes, nose, mouth
    assert f[1, 2] == f[:, 2].min()                             # the nose tip is nearest the camera
    assert (x ** 2 / .5 ** 2 + (y + .02) ** 2 / .64 ** 2 <= 1 + 1e-9).all()   # every point inside the oval


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes(tmp_path):
    a, b, c = (sk.generate_corpus(tmp_path / name, "mixed", n=5, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1)))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 + 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_signs_do_not_depend_on_seed_or_process():
    """Before signer variation a sign is its word's: the corpus generator changes nothing, and a
    fresh interpreter (another PYTHONHASHSEED) draws the same lexicon."""
    for kind in sk.KINDS:
        a = perform("FISH", kind, still_signer(), seed=0)
        b = perform("FISH", kind, still_signer(), seed=123)
        np.testing.assert_array_equal(a[0], b[0])
    code = ("import json; from synth import kinds as sk; "
            "print(json.dumps([[list(map(str, vars(sk.sign_for(w, k)).values())) "
            "for w in ('BOX', 'NO', 'LAST-NIGHT')] for k in sk.KINDS]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    here = [[list(map(str, vars(sk.sign_for(w, k)).values())) for w in ("BOX", "NO", "LAST-NIGHT")] for k in sk.KINDS]
    assert json.loads(out.stdout) == here
