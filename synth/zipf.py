"""A sign corpus with a long tail, and its dictionary: for rare-word checks with and without a lexicon.

What: `generate_corpus(out_dir, n, seed, vocab_seed)` writes, as synth/kinds.py does, OUT/train.csv,
val.csv, test.csv (split by video: one video is one signer, so test signers are never seen in
training), OUT/poses/{uid}.pose (MediaPipe Holistic, 576 points) and OUT/meta.json, and beside it a
sign dictionary, OUT/lexicon/index.csv + poses/ (`write_lexicon`), in the lexicon format of
sign-language-processing's spoken-to-signed-translation (docs/data.md, "Sign dictionaries").
  - ~330 English words with Zipfian frequencies (synth/zipf_grammar.py): a few frequent, most rare;
  - many signs differ in ONE parameter only: the lexicon is drawn in families, each member the
    first one with its hand shape, its place, its path or its palm orientation changed;
  - names are fingerspelled letter by letter (26 letter signs: hand shapes and palms at one place);
  - signer-specific variants: an eighth of the signs have a second form (another place or shape),
    and each signer uses it for each such word with probability 1/2;
  - negation and yes/no questions are marked by the face (a head shake; raised brows and a head
    tilt); in about half of those clips (`manual`) the manual NO or QUESTION sign is left out, so
    the face alone carries it; wh-questions add drawn brows to their WHO/WHAT sign;
  - signs blend into each other (coarticulation: synth/kinds.py's "mixed" signing).
The dictionary holds each word's citation form by one dictionary signer (standard body, slower,
rest before and after each sign, no coarticulation, the standard form: priority 0, and for half of
the variant words the variant too: priority 1), all 26 letters in ONE file with their start/end
times, and by default leaves out a tenth of the words (`coverage`), as real dictionaries do.

Why: a real corpus has an open vocabulary in which most words are rare (Zipf's law). This corpus
puts the rare words, names, signer variants and face-only markers where a model can be measured
on them (eval.py's word_recall_by_freq), with a dictionary to test what one adds.

Signs depend on (vocab_seed, word) only: corpora of other seeds share the lexicon; another
vocab_seed draws other signs AND other word frequencies (a corpus never tuned on).

Run:  python -m synth.zipf OUT_DIR --n 1500 --seed 1 [--vocab_seed 0] [--fps 25] [--size 1280x720]
                           [--manual 0.5] [--coverage 0.9] [--no-lexicon]

References: Zipf (1949) on word frequencies; sign phonology and minimal pairs: Stokoe (1960),
Battison (1978); non-manual markers of negation and questions: Zeshan (2004, "Interrogative and
negative constructions in sign languages"); the lexicon format: Moryossef et al. (2023,
spoken-to-signed-translation, arXiv:2305.17714).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from synth import demo
from synth import kinds as sk
from synth.zipf_grammar import LETTERS, SIGNS, Vocabulary

VARIANT_SHARE = .12       # words with a signer-specific second form
FAMILY = (.7, .22, .08)   # words drawn alone, in pairs, in threes that differ in one parameter
MOVE = 2.                 # a zipf sign's path: synth/kinds.py's "mixed" paths made this much larger
LETTER_PLACE = (-.2, .02, -.3)   # where the dominant hand spells, right-hand space (metres)
BROWS = [i for ids, *_ in sk.FACE_CONTOURS[8:12] for i in ids]
HEAD = list(range(11)) + list(range(33, 501))   # body head points and the face mesh


# ----------------------------------------------------------------------------- signs
def _rng(vocab_seed: int, *keys) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, ("synth_zipf/v3", vocab_seed, *keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def one_change(sign: sk.Sign, rng: np.random.Generator, what: str, word: str) -> sk.Sign:
    """`sign` with one parameter changed: its hand shape, its place, its path, or its palm."""
    if what == "shape":
        shape = sign.shape
        while np.abs(np.subtract(shape, sign.shape)).sum() < 1.5:
            shape = sk._tup(sk._random_shape(rng))
        end = shape if sign.end_shape == sign.shape else sk._tup(sk._random_shape(rng))
        return dataclasses.replace(sign, word=word, shape=shape, end_shape=end)
    if what == "place":
        step = sk._unit(rng.normal(size=3) * [1, 1, .3]) * rng.uniform(.1, .18)
        return dataclasses.replace(sign, word=word, path=sk._tup(sk._inside(np.array(sign.path) + step)))
    if what == "path":
        start = np.array(sign.path[0])
        return dataclasses.replace(sign, word=word, path=sk._tup(sk._inside(start + MOVE * .35 * sk._path_shape(rng))))
    palms = [p for p in sk.PALMS.values()]
    fingers, normal = sk._tilted(rng, *palms[int(rng.integers(len(palms)))])
    return dataclasses.replace(sign, word=word, fingers=sk._tup(fingers), normal=sk._tup(normal))


def lexicon_signs(vocab_seed: int) -> tuple[dict[str, sk.Sign], dict[str, sk.Sign]]:
    """Every gloss's standard sign (letters included) and the signer variants of some words.
    Words come in families of 1-3 (seeded order): the first a random sign, the others it with
    one parameter changed (minimal pairs)."""
    rng = _rng(vocab_seed, "families")
    order = [SIGNS[i] for i in rng.permutation(len(SIGNS))]
    signs, i = {}, 0
    while i < len(order):
        size = int(rng.choice([1, 2, 3], p=FAMILY))
        first = sk.mixed_sign(order[i], _rng(vocab_seed, "sign", order[i]), kind="zipf")
        path = np.array(first.path)
        first = dataclasses.replace(first, path=sk._tup(sk._inside(path[0] + MOVE * (path - path[0]))))
        signs[first.word] = first
        for word in order[i + 1:i + size]:
            what = str(rng.choice(["shape", "place", "path", "palm"]))
            signs[word] = one_change(first, _rng(vocab_seed, "sign", word), what, word)
        i += size
    signs.update(letter_signs(vocab_seed))
    variants = {}
    for word in SIGNS:
        r = _rng(vocab_seed, "variant", word)
        if r.random() < VARIANT_SHARE:
            variants[word] = one_change(signs[word], r, str(r.choice(["shape", "place"])), word)
    return signs, variants


def letter_signs(vocab_seed: int) -> dict[str, sk.Sign]:
    """26 letters: a hand shape and one of four palm orientations, held at one place, 0.3 s; two
    letters of one palm differ in at least two fingers (or the thumb and one finger)."""
    rng, out, seen = _rng(vocab_seed, "letters"), {}, []
    palms = [sk.PALMS[p] for p in ("up_fwd", "up_in", "fwd_down", "in_back")]
    for letter in LETTERS:
        while True:
            shape, palm = sk._random_shape(rng), int(rng.integers(len(palms)))
            if all(p != palm or np.abs(shape - s).sum() >= 1.5 for s, p in seen):
                break
        seen.append((shape, palm))
        fingers, normal = sk._tilted(rng, *palms[palm], by=.1)
        out[letter] = sk.Sign(letter, "zipf", (LETTER_PLACE,), sk._tup(shape), sk._tup(shape), sk._tup(fingers),
                              sk._tup(normal), 0., "one", .3)
    return out


def spell(glosses, signs: dict, own: dict) -> list[sk.Sign]:
    """Glosses -> the signer's signs: a word's own variant when this signer uses one, FS:NAME letter by letter."""
    out = []
    for g in glosses:
        out += [signs[c] for c in g[3:].upper()] if g.startswith("FS:") else [own.get(g, signs[g])]
    return out


# ----------------------------------------------------------------------------- the face
def face_marks(pts: np.ndarray, marker: str, k: float, fps: float) -> np.ndarray:
    """(T, 543, 3) body-space points with the sentence's non-manual marker over its signing:
    question: brows raised, head tilted forward; negation: a head shake; wh: brows lowered and drawn."""
    if not marker:
        return pts
    T = len(pts)
    t = np.arange(T) / fps
    on = np.clip(np.minimum(np.arange(T) - .12 * T, .95 * T - np.arange(T)) / (.2 * fps), 0, 1)   # (T,) fades
    pts = pts.copy()
    angles = np.zeros((T, 3))                                    # yaw, pitch, roll
    if marker == "question":
        pts[:, [33 + i for i in BROWS], 1] -= .012 * k * on[:, None]
        angles[:, 1] = .15 * on
    elif marker == "negation":
        angles[:, 0] = .3 * np.sin(2 * np.pi * 2.2 * t) * on
        pts[:, [33 + i for i in BROWS], 1] += .004 * k * on[:, None]
    else:                                                        # wh
        brows = [33 + i for i in BROWS]
        centre_x = pts[:, 33:501, 0].mean(1, keepdims=True)
        pts[:, brows, 1] += .008 * k * on[:, None]
        pts[:, brows, 0] -= .12 * (pts[:, brows, 0] - centre_x) * on[:, None]
    centre = pts[:, 33:501].mean(1, keepdims=True)               # (T, 1, 3)
    head = pts[:, HEAD] - centre
    pts[:, HEAD] = centre + np.einsum("tij,tpj->tpi", sk._rotations(angles), head)
    return pts


def render(signs: list[sk.Sign], marker: str, signer: sk.Signer, rng, fps: float, size, coart: bool):
    pts = face_marks(sk.skeleton(signs, "zipf", signer, rng, fps, coart), marker, signer.k, fps)
    return sk.camera(pts, signer, rng, fps, size)


# ----------------------------------------------------------------------------- corpus and dictionary
def generate_corpus(out_dir, n: int = 1500, seed: int = 0, vocab_seed: int = 0, fps: float = 25,
                    size: tuple[int, int] = (1280, 720), left_handed: float = .1, manual: float = .5,
                    lexicon: bool = True, coverage: float = .9) -> dict:
    """n clips (several per video, one signer per video) and, with `lexicon`, OUT/lexicon."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out, t0 = Path(out_dir), time.time()
    (out / "poses").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    demo.holistic_header(*size).write(buf)
    signs, variants = lexicon_signs(vocab_seed)
    vocab = Vocabulary(vocab_seed)
    clips, signers = [], []
    while len(clips) < n:
        video = len(signers)
        rng = np.random.default_rng([seed, video, 7])
        signer = sk.make_signer(rng, size, left_handed)
        own = {w: v for w, v in variants.items() if rng.random() < .5}     # this signer's variants
        signers.append({**dataclasses.asdict(signer), "variants": sorted(own)})
        for segment in range(min(int(rng.integers(4, 13)), max(1, n // 10), n - len(clips))):
            s = vocab.sentence(rng)
            glosses = s.glosses
            if s.marker in ("negation", "question") and rng.random() >= manual:
                glosses = glosses[:-1]                           # the face alone says it
            data, conf = render(spell(glosses, signs, own), s.marker, signer, rng, fps, size, True)
            uid = f"zipf{video:04d}--{segment}"
            demo.write_pose(out / "poses" / f"{uid}.pose", data, conf, buf.getvalue(), fps=fps)
            clips.append((video, uid, s.text, " ".join(glosses), s.marker))
    counts = np.bincount([c[0] for c in clips], minlength=len(signers)).tolist()
    which = sk._splits(counts, np.random.default_rng([seed, 1 << 20]))
    for split in ("train", "val", "test"):
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("uid", "text")] + [(u, t) for v, u, t, *_ in clips if which[v] == split])
    meta = {"vocab_seed": vocab_seed, "seed": seed, "fps": fps, "size": list(size), "manual": manual,
            "glosses": {u: g for _, u, _, g, _ in clips}, "markers": {u: m for _, u, _, _, m in clips},
            "signers": {f"zipf{v:04d}": {**s, "split": which[v]} for v, s in enumerate(signers)}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    summary = {"samples": len(clips), "videos": len(signers),
               "splits": {s: sum(c for c, w in zip(counts, which) if w == s) for s in ("train", "val", "test")},
               "seconds": round(time.time() - t0, 2), "out": str(out)}
    if lexicon:
        summary["lexicon"] = write_lexicon(out / "lexicon", vocab_seed, fps, size, coverage)
    return summary


def dictionary_signer(size: tuple[int, int]) -> sk.Signer:
    """One person records the whole dictionary: standard body, centred, slow and careful."""
    W, H = size
    return sk.Signer(k=1., ppm=.32 * H / .38, cx=W / 2, cy=.45 * H, roll=0., speed=.8, noise=.5, drop=0., amp=1.,
                     bias=(0., 0., 0.), left_handed=False, jitter=.3)


def write_lexicon(out_dir, vocab_seed: int = 0, fps: float = 25, size: tuple[int, int] = (1280, 720),
                  coverage: float = .9) -> dict:
    """OUT/index.csv (path,spoken_language,signed_language,start,end,words,glosses,priority) and
    OUT/poses/*.pose: each covered word's citation form (its variant too for half of the variant
    words, priority 1), and the 26 letters in one file, each with its start and end in ms."""
    out = Path(out_dir)
    (out / "poses").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    demo.holistic_header(*size).write(buf)
    signs, variants = lexicon_signs(vocab_seed)
    signer, pick = dictionary_signer(size), _rng(vocab_seed, "coverage")
    words = [w for w in SIGNS if pick.random() < coverage]
    rows = []
    for word in words:
        forms = [signs[word]] + ([variants[word]] if word in variants and _rng(vocab_seed, "listed", word).random() < .5
                                 else [])
        for priority, sign in enumerate(forms):
            rng = _rng(vocab_seed, "record", word, priority)
            data, conf = render([sign], "", signer, rng, fps, size, False)
            path = f"poses/{word}{'-' + str(priority + 1) if priority else ''}.pose"
            demo.write_pose(out / path, data, conf, buf.getvalue(), fps=fps)
            rows.append((path, "en", "qzs", 0, 0, word, word.upper(), priority))
    pieces, start = [], 0
    for letter in LETTERS:                                       # one recording, cut by times
        data, conf = render([signs[letter]], "", signer, _rng(vocab_seed, "record", letter), fps, size, False)
        pieces.append((data, conf))
        end = start + len(data)
        rows.append(("poses/fingerspelling.pose", "en", "qzs", round(1000 * start / fps), round(1000 * end / fps),
                     letter, letter, 0))
        start = end
    demo.write_pose(out / "poses" / "fingerspelling.pose", np.concatenate([d for d, _ in pieces]),
                    np.concatenate([c for _, c in pieces]), buf.getvalue(), fps=fps)
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "spoken_language", "signed_language", "start", "end", "words", "glosses",
                                  "priority"), *rows])
    return {"entries": len(rows), "words": len(words), "letters": len(LETTERS), "out": str(out)}


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a Zipfian-vocabulary sign corpus and its dictionary.")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=1500, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="signers and sentences")
    parser.add_argument("--vocab_seed", type=int, default=0, help="the signs and the words' frequencies")
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--size", type=_size, default=(1280, 720), help="frame size WxH, e.g. 640x480")
    parser.add_argument("--left_handed", type=float, default=.1)
    parser.add_argument("--manual", type=float, default=.5,
                        help="probability that a negation or yes/no question also has its manual sign")
    parser.add_argument("--coverage", type=float, default=.9, help="share of the words in the dictionary")
    parser.add_argument("--lexicon", action=argparse.BooleanOptionalAction, default=True,
                        help="also write the dictionary in OUT_DIR/lexicon")
    a = parser.parse_args()
    print(json.dumps(generate_corpus(a.out_dir, a.n, a.seed, a.vocab_seed, a.fps, a.size, a.left_handed, a.manual,
                                     a.lexicon, a.coverage)))
