"""synth/demo.py: the synthetic corpus has the iSign layout, real MediaPipe Holistic .pose files
and the grammar it promises. References: the real pose fixture (its header and face mesh),
hand-written English/gloss pairs, and physical invariants (bone lengths, file sizes)."""
import csv
import re
import struct

import numpy as np
import pytest
from pose_format import Pose

from synth import demo
from synth import demo_grammar as grammar


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = demo.generate_corpus(out, n=16, seed=0)
    return out, summary


def read(path):
    return Pose.read(path.read_bytes())


def rows(out):
    with open(out / "iSign_v1.1.csv", newline="") as f:
        return list(csv.reader(f))


def limb_set(component):
    return {tuple(sorted(map(int, limb))) for limb in component.limbs}


def test_header_matches_the_real_holistic_file(corpus, fixtures_dir):
    out, _ = corpus
    real = read(fixtures_dir / "holistic_576.pose").header
    ours = read(next((out / "poses").iterdir())).header
    assert [(c.name, c.points, c.format) for c in ours.components] == \
        [(c.name, c.points, c.format) for c in real.components]
    assert sum(len(c.points) for c in ours.components) == 576
    assert (ours.dimensions.width, ours.dimensions.height) == (1280, 720)
    for name in ("POSE_LANDMARKS", "LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS", "POSE_WORLD_LANDMARKS"):
        a, b = (next(c for c in h.components if c.name == name) for h in (ours, real))
        assert limb_set(a) == limb_set(b), name
        assert np.array_equal(np.asarray(a.colors), np.asarray(b.colors)), name
    # the face draws contours only, but every contour edge is an edge of MediaPipe's mesh
    face_ours, face_real = ours.components[1], real.components[1]
    assert len(face_ours.limbs) > 100 and limb_set(face_ours) <= limb_set(face_real)


def test_face_template_is_shaped_like_the_real_face(fixtures_dir):
    """Contour points (lips, eyes, brows, nose, oval), least-squares fitted onto the fixture's
    mean face by scale and shift, land within a few percent of a face width."""
    real = read(fixtures_dir / "holistic_576.pose").body.data.data[:, 0, 33:501, :2].mean(0)
    ids = sorted({i for arc in demo.FACE_ARCS for i in arc[0]} | set(demo.FACE_OVAL)
                 | set(demo.NOSE_LINE) | set(demo.NOSTRILS))
    ours, real = demo.FACE[ids, :2], real[ids]
    ours, real = ours - ours.mean(0), real - real.mean(0)
    scale = (ours * real).sum() / (ours * ours).sum()
    width = np.ptp(real[:, 0])
    assert np.abs(scale * ours - real).mean() / width < 0.05


def test_csv_layout_and_files(corpus):
    out, summary = corpus
    table = rows(out)
    assert table[0] == ["uid", "text"] and len(table) == 17 == summary["samples"] + 1
    videos = set()
    for uid, text in table[1:]:
        assert re.fullmatch(r"synv\d{4}--\d+", uid), uid
        assert (out / "poses" / f"{uid}.pose").is_file()
        assert 2 <= len(text.split()) <= 8 and text[0].isupper() and text[-1] in ".?", text
        videos.add(uid.split("--")[0])
    assert 2 <= len(videos) < 16   # several segments per video, as in iSign


def test_pose_data_is_sane(corpus):
    out, _ = corpus
    lengths = []
    for path in sorted((out / "poses").iterdir()):
        pose = read(path)
        data, conf = pose.body.data.data[:, 0], pose.body.confidence[:, 0]
        T = len(data)
        lengths.append(T)
        assert pose.body.fps == 25 and data.shape == (T, 576, 3)
        # the file is exactly header + fps, frames, people + float32 data and confidence
        header_bytes = path.read_bytes().index(struct.pack("<f", 25.0) + struct.pack("<I", T))
        assert path.stat().st_size == header_bytes + 10 + T * 576 * 4 * 4
        assert np.isfinite(data).all() and np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1
        shoulders = data[:, 11:13, :2]
        assert (shoulders > 0).all() and (shoulders[..., 0] < 1280).all() and (shoulders[..., 1] < 720).all()
        assert (shoulders[:, 0, 0] > shoulders[:, 1, 0]).all()   # LEFT is the image's right, as in MediaPipe
        for hand, wrist in ((501, 15), (522, 16)):                # the hand's wrist is the body's wrist
            seen = conf[:, hand] > 0
            assert np.abs(data[seen, hand, :2] - data[seen, wrist, :2]).max() < 30
        width = np.linalg.norm(shoulders[:, 0] - shoulders[:, 1], axis=1)
        assert 0.12 * 1280 < width.mean() < 0.26 * 1280
        # world landmarks: metres x (width, height) for x, y (pose-format's reader); a rigid
        # forearm keeps its length through the clip
        world = data[:, 543:] / [1280, 720, 1]
        assert 0.3 < np.linalg.norm(world[:, 11] - world[:, 12], axis=1).mean() < 0.5
        forearm = np.linalg.norm(world[:, 14] - world[:, 16], axis=1)
        assert forearm.std() < 0.1 * forearm.mean()
    assert 40 <= min(lengths) and max(lengths) <= 200 and 60 <= np.mean(lengths) <= 150


def test_dropped_hands_are_zero_with_zero_confidence(corpus):
    out, _ = corpus
    dropped = seen = 0
    for path in (out / "poses").iterdir():
        pose = read(path)
        data, conf, mask = pose.body.data.data[:, 0], pose.body.confidence[:, 0], pose.body.data.mask[:, 0]
        for start in (501, 522):
            hand, c = data[:, start:start + 21], conf[:, start:start + 21]
            gone = c.max(1) == 0
            assert ((c == 0) == gone[:, None]).all()          # a hand is all there or all gone
            assert (hand[gone] == 0).all() and mask[gone, start:start + 21].all()
            assert (np.abs(hand[~gone, :, :2]) > 0).all()
            dropped, seen = dropped + gone.sum(), seen + (~gone).sum()
        assert conf[:, 33:501].min() == 1   # the face is always found
    assert dropped > 0 and seen > 3 * dropped


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    def make(name, seed):
        demo.generate_corpus(tmp_path / name, n=5, seed=seed)
        files = sorted((tmp_path / name / "poses").iterdir())
        return rows(tmp_path / name), [f.read_bytes() for f in files]

    a, b, c = make("a", 7), make("b", 7), make("c", 8)
    assert a == b
    assert a[0] != c[0] and a[1][0] != c[1][0]


def test_a_word_is_signed_alike_by_every_signer():
    """The dominant hand's shape (relative to the wrist, in shoulder widths) mid-sign, by
    signers from two seeds: each word is nearer its own sign than any other word's."""
    words = ["WATER", "MOTHER", "GO", "WANT", "TOMORROW", "WHAT", "BOOK", "HAPPY"]
    assert demo.sign_for.__wrapped__("WATER") == demo.sign_for("WATER")

    def shape(word, seed):
        rng = np.random.default_rng(seed)
        data, conf = demo.render(grammar.Sentence(word, (word,)), demo.make_signer(rng), rng)
        hand = data[:, 522:543, :2]
        width = np.linalg.norm(data[:, 11, :2] - data[:, 12, :2], axis=1)[:, None, None]
        rel = ((hand - hand[:, :1]) / width)[conf[:, 522] > 0]
        return rel[len(rel) // 2].ravel()

    ref = np.stack([shape(w, 1) for w in words])
    for i, w in enumerate(words):
        assert np.linalg.norm(ref - shape(w, 2), axis=1).argmin() == i, w
    # and no two words share hands, place, movement, hand shapes and palm
    looks = {(s.hands, s.location, s.movement, s.shape, s.end_shape, s.palm)
             for s in map(demo.sign_for, grammar.LEXICON)}
    assert len(looks) == len(grammar.LEXICON)


def test_glosses_follow_isl_order():
    s = grammar.transitive(("MY", "MOTHER"), "BUY", ("BOOK",), "YESTERDAY")
    assert s.text == "My mother bought a book yesterday."
    assert s.glosses == ("YESTERDAY", "MY", "MOTHER", "BOOK", "BUY")   # time first, then S O V
    s = grammar.intransitive(("MY", "MOTHER"), "GO", "MARKET", "TOMORROW")
    assert (s.text, s.glosses) == ("My mother is going to the market tomorrow.",
                                   ("TOMORROW", "MY", "MOTHER", "MARKET", "GO"))
    s = grammar.transitive(("I",), "WANT", ("WATER",))
    assert (s.text, s.glosses) == ("I want water.", ("I", "WATER", "WANT"))
    s = grammar.transitive(("SHE",), "LIKE", ("TEA",), form="negative")
    assert (s.text, s.glosses) == ("She does not like tea.", ("SHE", "TEA", "LIKE", "NOT"))
    s = grammar.transitive(("YOUR", "SISTER"), "EAT", ("APPLE",), form="yes_no")
    assert (s.text, s.glosses, s.marker) == ("Does your sister eat an apple?",
                                             ("YOUR", "SISTER", "APPLE", "EAT"), "yes_no")
    s = grammar.wh_question("WHERE", ("YOU",), "GO")
    assert (s.text, s.glosses, s.marker) == ("Where are you going?", ("YOU", "GO", "WHERE"), "wh")
    assert grammar.state(("I",), "TIRED", "NOW").text == "I am tired now."
    assert grammar.describe(None, "TEA", "HOT") == grammar.Sentence("The tea is hot.", ("TEA", "HOT"))


def test_random_sentences_are_translatable():
    """Signs (plus the non-manual marker) determine the English; the lexicon is all used;
    the verb follows its object in the signing but precedes it in English."""
    rng = np.random.default_rng(0)
    sentences = [grammar.random_sentence(rng) for _ in range(3000)]
    english = {}
    for s in sentences:
        english.setdefault((s.glosses, s.marker), set()).add(s.text)
        assert set(s.glosses) <= set(grammar.LEXICON)
        assert 2 <= len(s.text.split()) <= 8, s.text
    assert all(len(texts) == 1 for texts in english.values())
    assert {g for s in sentences for g in s.glosses} == set(grammar.LEXICON)
    assert 60 <= len(grammar.LEXICON) <= 120
    for s in sentences:
        if s.glosses[-1] in grammar.OBJECTS_OF and s.glosses[-2] in grammar.OBJECTS and not s.marker:
            words = s.text.lower().rstrip(".").split()
            verb = next(i for i, w in enumerate(words) if w in grammar.VERBS[s.glosses[-1]])
            assert verb < words.index(s.glosses[-2].lower()), s
