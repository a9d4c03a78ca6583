"""Synthetic sign corpora whose signs differ IN KIND from synth/demo.py's: identity in the path, the
hand shape, or a mix, signed with coarticulation.

What: `generate_corpus(out_dir, kind)` writes OUT/train.csv, val.csv, test.csv (uid,text; split by
video, one video = one signer, 80/10/10), OUT/poses/{uid}.pose (MediaPipe Holistic, 576 points,
XYZC, pixel coordinates: the iSign layout of synth/demo.py, through `demo.holistic_header` and
`demo.write_pose`) and OUT/meta.json (each clip's glosses, each video's signer). The kinds:
  - "path":  a word is ONLY the path of the dominant wrist (a smooth curve through 2-9 control
             points: free curves, zigzags, spirals, arcs, hooked lines) from a start in signing
             space; one flat hand shape and one palm orientation for every word;
  - "shape": a word is ONLY a hand shape (each finger straight, bent, hooked, curled or half
             closed; thumb out, along or across; spread or not) held at one of 8 places, with the
             same small bounce for every word;
  - "mixed": a random combination per word (one- or two-handed: mirrored, alternating or on a
             still base hand; location; palm orientation and turn; shape and shape change; a small
             path) and a duration of its own, signed with strong coarticulation: no return
             between signs, the end of one sign blends straight into the start of the next.
A sign depends on its word and kind only (a generator seeded by a hash of kind + word), so corpora
of different seeds share one lexicon. Sentences come from a grammar of their own
(synth/kinds_grammar.py: subjects, verbs with the objects they take, adjectives, time words,
negation, yes/no and wh-questions) and are signed in time-topic-comment order:
TIME OBJECT(ADJ) SUBJECT(PLURAL) VERB (NO) (QUESTION|WHO|WHAT).

Why: a model that learns synth/demo.py's corpus could be fitted to how synth/demo.py builds signs (hand
shape + location + one of 8 movements, rest between signs). These corpora put a word's identity
somewhere else, so a pipeline that learns all three is learning signs, not synth/demo.py.

Conventions (as synth/demo.py): body space in metres, origin between the shoulders, x to the image's
right (the signer's left), y down, z away from the camera; a reference signer has shoulders 0.38 m
apart. Signs are described for a right-dominant signer in "right-hand space"; the other hand's
values are mirrored (x -> -x) when drawn, and a left-handed signer mirrors the whole signing.

References: MediaPipe Holistic (Grishchenko & Bazarevsky 2020) and its face-mesh contour indices
(mediapipe face_mesh_connections); pose-format (Moryossef & Mueller 2021); Catmull & Rom (1974)
splines; sign phonology: Stokoe (1960) handshape / location / movement, Battison (1978) two-handed
sign types; coarticulation in signing: Ormel & Crasborn (2012).

Run:  python -m synth.kinds OUT_DIR --kind path --n 1200 --seed 0 [--fps 30] [--size 640x480]
                                    [--left_handed 0.2] [--coarticulation | --no-coarticulation]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from synth import demo
from synth.demo import FACE_OVAL, _drift, _smooth, _unit  # the maths both generators share
from synth.kinds_grammar import LEXICON, random_sentence

KINDS = ("path", "shape", "mixed")
SALT = "synth_kinds/v1"     # change it to draw a new lexicon for every kind

# ----------------------------------------------------------------------------- signs
CH = 20   # hand channels per frame: wrist 3, finger direction 3, palm normal 3, shape 11
# shape: knuckle (MCP) bend of index..pinky 4, middle-joint (PIP, DIP) curl 4, spread, thumb out, thumb fold
FINGER_STATES = ((0, 0), (1, 0), (0, 1), (1, 1), (.5, .5))   # straight, bent, hooked, curled, half
THUMB_STATES = ((1, 0), (.3, .3), (.3, 1))                  # out to the side, along the palm, across it
FLAT = (.1,) * 4 + (.15,) * 4 + (.15, .3, .25)               # the relaxed flat hand of every "path" sign
LOCATIONS = {  # the wrist (right-hand space, metres) when the palm is at the place, fingers up
    "forehead": (-.03, -.22, -.2), "cheek": (-.1, -.11, -.16), "chin": (-.02, -.04, -.2),
    "chest": (-.04, .17, -.16), "other_shoulder": (.11, .1, -.14), "stomach": (-.05, .33, -.18),
    "neutral": (-.13, .2, -.33), "side": (-.3, .12, -.2)}
PALMS = {  # (finger direction, palm normal)
    "up_fwd": ((0, -1, 0), (0, 0, -1)), "up_in": ((0, -1, 0), (1, 0, 0)), "up_back": ((0, -1, 0), (0, 0, 1)),
    "fwd_down": ((0, 0, -1), (0, 1, 0)), "fwd_up": ((0, 0, -1), (0, -1, 0)), "in_down": ((1, 0, 0), (0, 1, 0)),
    "in_back": ((1, 0, 0), (0, 0, 1))}
PATH_PALM = ((.3, -.4, -.85), (1, .2, .25))    # every "path" sign: fingers forward-up, palm in
SHAPE_PALM = ((.15, -1, -.1), (0, 0, -1))      # every "shape" sign: fingers up, palm to the camera
SPACE = np.array([[-.42, -.42, -.5], [.22, .42, -.1]])   # signing space a path is kept inside
SHOULDER, REACH = np.array([-.19, 0, 0]), .48   # the dominant (right) shoulder; metres
SIGN_SECONDS = .56     # the one duration of every "path" and "shape" sign (identity is not time)
BOUNCE = .01           # metres: the common small lift of a held sign


@dataclass(frozen=True)
class Sign:
    word: str
    kind: str
    path: tuple        # (K, 3) wrist control points, right-hand space, metres; K = 1: held in place
    shape: tuple       # (11,) at the start and the end of the sign
    end_shape: tuple
    fingers: tuple     # (3,) finger direction and palm normal
    normal: tuple
    turn: float        # radians the palm turns about the finger axis during the sign
    hands: str         # "one"; two-handed: "mirror", "alt" (opposite phase), "base" (on a still hand)
    seconds: float     # duration for a signer of speed 1


def _tup(a) -> tuple:
    return tuple(np.round(np.asarray(a, float), 5).ravel().tolist()) if np.ndim(a) < 2 else \
        tuple(tuple(np.round(r, 5).tolist()) for r in np.asarray(a, float))


def _path_shape(rng: np.random.Generator) -> np.ndarray:
    """(K, 3) displacements from a path's start (row 0 is zero): one of five families."""
    d = _unit(rng.normal(size=3) * [1, 1, .4])               # main direction, mostly facing the camera
    e = _unit(np.cross(d, [0, 0, 1]) if abs(d[2]) < .9 else np.cross(d, [0, 1, 0]))
    e *= rng.choice([-1, 1])
    family = int(rng.integers(5))
    if family == 0:                                          # free curve: 3 random steps
        steps = _unit(rng.normal(size=(3, 3)) * [1, 1, .4]) * rng.uniform(.07, .14, (3, 1))
        return np.vstack([np.zeros(3), np.cumsum(steps, 0)])
    if family == 1:                                          # zigzag along d
        m, length, width = int(rng.integers(3, 5)), rng.uniform(.15, .25), rng.uniform(.03, .06)
        i = np.arange(m + 1)
        return (i / m * length)[:, None] * d + (width * (-1.) ** i * (i > 0))[:, None] * e
    if family == 2:                                          # spiral opening outwards
        a = np.linspace(0, 2 * np.pi * rng.uniform(1, 1.6), 9)
        r = np.linspace(rng.uniform(.02, .04), rng.uniform(.07, .11), 9)[:, None]
        ring = r * (np.cos(a)[:, None] * d + np.sin(a)[:, None] * e)
        return ring - ring[0]
    if family == 3:                                          # half circle from the start, bulging to e
        a, r = np.linspace(0, np.pi, 5)[:, None], rng.uniform(.06, .11)
        return r * (1 - np.cos(a)) * d + r * np.sin(a) * e
    length = rng.uniform(.12, .22)                           # straight line ending in a hook
    return np.array([np.zeros(3), length * d, length * d + rng.uniform(.04, .07) * e])


def _inside(path: np.ndarray) -> np.ndarray:
    """The path moved (not bent) into the signing space and within reach of the right shoulder
    (arm .54 m; .48 leaves room for a signer's larger movements), so elbows stay consistent."""
    path = path + np.maximum(SPACE[0] - path.min(0), 0) + np.minimum(SPACE[1] - path.max(0), 0)
    for _ in range(100):
        far = np.linalg.norm(path - SHOULDER, axis=1).max()
        if far <= REACH:
            break
        path = path + .01 * _unit(SHOULDER - path.mean(0))
    return path


def _random_shape(rng: np.random.Generator) -> np.ndarray:
    fingers = np.array([FINGER_STATES[i] for i in rng.choice(5, 4, p=[.3, .15, .15, .3, .1])])   # (4, 2)
    return np.r_[fingers[:, 0], fingers[:, 1], rng.integers(2), THUMB_STATES[int(rng.integers(3))]]


def _tilted(rng: np.random.Generator, fingers, normal, by: float = .3) -> tuple[np.ndarray, np.ndarray]:
    """A palm orientation turned by a small random rotation (Rodrigues' formula)."""
    axis, angle = _unit(rng.normal(size=3)), rng.uniform(-by, by)
    rot = lambda v: (v * np.cos(angle) + np.cross(axis, v) * np.sin(angle)  # noqa: E731
                     + axis * (axis @ v) * (1 - np.cos(angle)))
    return rot(np.array(fingers, float)), rot(np.array(normal, float))


@lru_cache(maxsize=None)
def sign_for(word: str, kind: str) -> Sign:
    """The sign of a word: drawn from a generator seeded by a hash of kind and word (never by
    Python's hash(), which changes between runs), so every seed of a kind shares one lexicon."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    digest = hashlib.sha256(f"{SALT}:{kind}:{word}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    if kind == "path":
        start = rng.uniform([-.26, -.08, -.36], [.02, .28, -.2])
        path = _inside(start + _path_shape(rng))
        return Sign(word, kind, _tup(path), FLAT, FLAT, *PATH_PALM, 0., "one", SIGN_SECONDS)
    if kind == "shape":
        shape = _random_shape(rng)
        where = LOCATIONS[list(LOCATIONS)[int(rng.integers(len(LOCATIONS)))]]
        return Sign(word, kind, (tuple(where),), _tup(shape), _tup(shape), *SHAPE_PALM, 0., "one", SIGN_SECONDS)
    return mixed_sign(word, rng)


def mixed_sign(word: str, rng: np.random.Generator, kind: str = "mixed") -> Sign:
    """A sign of random properties (the "mixed" kind; synth/zipf.py draws its lexicon with it):
    one or two hands, a place, a palm orientation and turn, a shape and shape change, a small
    path, a duration of its own."""
    hands = ["one", "mirror", "alt", "base"][int(rng.choice(4, p=[.55, .2, .1, .15]))]
    where = np.array(LOCATIONS[list(LOCATIONS)[int(rng.integers(len(LOCATIONS)))]]) + rng.normal(0, .02, 3)
    path = where + (.35 * _path_shape(rng) if rng.random() < .75 else np.zeros((1, 3)))
    if hands in ("mirror", "alt"):                  # two hands cannot share a place: each to its side
        path = path - [max(path[:, 0].max() + .07, 0), 0, 0]
    if hands == "base":                             # the dominant hand works 7 cm above the still one
        path = path - path[0] + [.04, float(np.clip(where[1], .1, .3)) - .07, -.28]
    shape = _random_shape(rng)
    end = _random_shape(rng) if rng.random() < .3 else shape
    fingers, normal = _tilted(rng, *PALMS[list(PALMS)[int(rng.integers(len(PALMS)))]])
    turn = float(rng.choice([0, 0, 0, np.pi / 2, -np.pi / 2]))
    return Sign(word, kind, _tup(_inside(path)), _tup(shape), _tup(end), _tup(fingers), _tup(normal), turn,
                hands, round(float(rng.uniform(.3, .8)), 3))


def _spline(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Uniform Catmull-Rom curve through (K, 3) control points at progress s (T,) in 0..1 -> (T, 3).
    It passes through every control point; the ends are padded by continuing the end segments."""
    K = len(points)
    if K == 1:
        return np.repeat(points, len(s), 0)
    pad = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])   # (K + 2, 3)
    u = np.clip(s, 0, 1) * (K - 1)
    i = np.minimum(u.astype(int), K - 2)                    # segment of each frame
    f = (u - i)[:, None]
    p0, p1, p2, p3 = pad[i], pad[i + 1], pad[i + 2], pad[i + 3]
    return .5 * (2 * p1 + (p2 - p0) * f + (2 * p0 - 5 * p1 + 4 * p2 - p3) * f ** 2
                 + (3 * p1 - p0 - 3 * p2 + p3) * f ** 3)


# ----------------------------------------------------------------------------- signers
@dataclass
class Signer:
    """One video's signer and camera."""
    k: float               # body size (1: shoulders 0.38 m apart)
    ppm: float             # image pixels per metre
    cx: float              # shoulder midpoint in the image (pixels)
    cy: float
    roll: float            # camera roll (radians)
    speed: float           # signing speed (1: the lexicon's durations)
    noise: float           # tracking noise level
    drop: float            # fraction of frames a hand is lost in
    amp: float             # size of this signer's movements
    bias: tuple            # (3,) where this signer places signs (metres, added to every start)
    left_handed: bool
    jitter: float = 1.     # the per-instance variation of a sign (0: every instance the same)

    def channels(self, where, fingers, normal, shape=FLAT) -> np.ndarray:
        return np.r_[self.k * np.asarray(where, float), _unit(np.asarray(fingers, float)),
                     _unit(np.asarray(normal, float)), shape]

    def rest(self) -> np.ndarray:    # (20,) arms hanging, palm to the thigh: before and after a clip
        return self.channels((-.2, .47, -.02), (0, 1, -.15), (1, 0, 0))

    def ready(self) -> np.ndarray:   # the idle hand during one-handed signs, at the waist
        return self.channels((-.13, .34, -.16), (.6, 0, -1), (0, -1, 0))

    def home(self) -> np.ndarray:    # where the dominant hand pauses between signs (no coarticulation)
        return self.channels((-.09, .25, -.24), (.4, -.2, -1), (.3, 1, -.2))


def make_signer(rng: np.random.Generator, size: tuple[int, int], left_handed: float) -> Signer:
    W, H = size
    k = rng.uniform(.88, 1.12)
    shoulders_px = min(rng.uniform(.28, .4) * H, .3 * W)    # fits tall and wide frames alike
    return Signer(k=k, ppm=shoulders_px / (.38 * k), cx=rng.uniform(.42, .58) * W, cy=rng.uniform(.42, .5) * H,
                  roll=rng.uniform(-.06, .06), speed=rng.uniform(.8, 1.25), noise=rng.uniform(.5, 1.5),
                  drop=rng.uniform(0, .08), amp=rng.uniform(.88, 1.12), bias=tuple(rng.normal(0, .01, 3)),
                  left_handed=bool(rng.random() < left_handed))


# ----------------------------------------------------------------------------- performing
def perform(sign: Sign, signer: Signer, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """One instance of a sign: (n, 20) channels of the dominant hand and of the other hand.
    The draws from rng are the same in number for every sign, so two words performed from equal
    generators differ only in what their Sign says."""
    wobble = signer.jitter * np.r_[rng.uniform(-1, 1), rng.standard_normal(3), rng.uniform(-1, 1, 11)]
    n = max(3, round(sign.seconds * fps / signer.speed * (1 + .08 * wobble[0])))
    t = np.linspace(0, 1, n)
    path = np.array(sign.path)
    start = path[0] + signer.bias + .005 * wobble[1:4]
    track = start + signer.amp * (_spline(path, _smooth(t)) - path[0])          # (n, 3)
    if len(path) == 1:                               # held: the same small lift for every word
        track[:, 1] -= BOUNCE * np.sin(np.pi * t)
    shape = np.array(sign.shape) + _smooth(t)[:, None] * (np.array(sign.end_shape) - sign.shape)
    shape = np.clip(shape + .02 * wobble[4:], 0, 1)                               # (n, 11)
    fingers, normal = _unit(np.array(sign.fingers)), _unit(np.array(sign.normal))
    a = (sign.turn * _smooth(t))[:, None]            # the palm turns about the finger axis
    normal = np.cos(a) * normal + np.sin(a) * np.cross(fingers, normal)          # (n, 3)
    dom = np.concatenate([signer.k * track, np.broadcast_to(fingers, (n, 3)), normal, shape], 1)
    if sign.hands == "mirror":
        return dom, dom
    if sign.hands == "alt":                          # the same movement, in opposite phase
        return dom, np.concatenate([dom[::-1, :3], dom[:, 3:]], 1)
    if sign.hands == "base":                         # a still flat hand, palm up, under the moving one
        base = np.array(sign.path[0]) * [-1, 1, 1] + [0, .07, 0]
        return dom, np.repeat(signer.channels(base, (.3, 0, -1), (0, -1, 0))[None], n, 0)
    return dom, np.repeat(signer.ready()[None], n, 0)


def _blend(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(n, 20) frames of movement from channel row a to row b, both ends excluded."""
    w = _smooth(np.linspace(0, 1, n + 2)[1:-1])[:, None]
    return a + w * (b - a)


def timeline(glosses, kind: str, signer: Signer, rng: np.random.Generator, fps: float, coarticulation: bool):
    """Both hands over a clip: rest, the signs, rest. Without coarticulation the dominant hand
    pauses at home between signs; with it, each sign's last frames blend into the next sign's first.
    Returns dom (T, 20), other (T, 20) and each sign's (first, end) frame."""
    frames = lambda lo, hi: max(1, round(rng.uniform(lo, hi) * fps / signer.speed))  # noqa: E731 (seconds)
    dom, other, spans = [signer.rest()[None].repeat(frames(.12, .3), 0)], [], []
    other.append(dom[0].copy())

    def move(to_dom: np.ndarray, to_other: np.ndarray, n: int) -> None:
        dom.append(_blend(dom[-1][-1], to_dom, n))
        other.append(_blend(other[-1][-1], to_other, n))

    for i, gloss in enumerate(glosses):   # a gloss, or a Sign of its own (synth/zipf.py)
        a, b = perform(gloss if isinstance(gloss, Sign) else sign_for(gloss, kind), signer, rng, fps)
        m = 0
        if i == 0:
            move(a[0], b[0], frames(.24, .36))
        elif coarticulation:     # overlap: the previous sign's tail crossfades into this one's head
            m = min(frames(.1, .16), len(a) // 2, len(dom[-1]) // 2)
            w = _smooth(np.linspace(0, 1, m + 2)[1:-1])[:, None]                  # (m, 1)
            dom[-1][-m:] = (1 - w) * dom[-1][-m:] + w * a[:m]
            other[-1][-m:] = (1 - w) * other[-1][-m:] + w * b[:m]
        else:
            move(signer.home(), signer.ready(), frames(.12, .18))
            pause = frames(.05, .1)                  # _blend stops short of its target: pause on it
            dom.append(signer.home()[None].repeat(pause, 0))
            other.append(signer.ready()[None].repeat(pause, 0))
            move(a[0], b[0], frames(.12, .18))
        first = sum(map(len, dom)) - m
        dom.append(a[m:].copy())
        other.append(b[m:].copy())
        spans.append((first, first + len(a)))
    hold, n, rest = frames(0, .08), frames(.24, .36), frames(.12, .3)
    for hand in (dom, other):
        hand.append(hand[-1][-1:].repeat(hold, 0))
    move(signer.rest(), signer.rest(), n)
    for hand in (dom, other):
        hand.append(signer.rest()[None].repeat(rest, 0))
    return np.concatenate(dom), np.concatenate(other), spans


# ----------------------------------------------------------------------------- skeleton
# A reference right hand (metres) in its own frame (towards the thumb, along the fingers, out of
# the palm): each finger's knuckle and its three phalanges, index..pinky; fingers fan out when spread.
KNUCKLE = np.array([[.025, .085], [.005, .09], [-.014, .085], [-.031, .075]])
PHALANX = np.array([[.042, .025, .019], [.047, .029, .021], [.043, .027, .020], [.034, .020, .018]])
FAN = np.radians([10, 0, -10, -20])
BEND = np.radians([90, 95, 65])          # knuckle, middle and end joint angles when fully bent
THUMB_ROOT, THUMB_BONES = np.array([.022, .025]), np.array([.038, .032, .027])


def _hand_frame(fingers: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """(T, 3) finger directions and palm normals -> (T, 3, 3) rotations whose columns are the
    hand's axes (thumb side, along, normal) in body space; a normal parallel to the fingers (a
    blend through a palm flip) falls back to any perpendicular."""
    along = _unit(fingers)
    n = normal - (normal * along).sum(1, keepdims=True) * along
    fallback = np.cross(along, [0, 0, 1]) + np.cross(along, [1e-3, 1, 0]) * 1e-3
    n = _unit(np.where(np.linalg.norm(n, axis=1, keepdims=True) < 1e-3, fallback, n))
    return np.stack([np.cross(along, n), along, n], -1)


def hand_points(ch: np.ndarray, k: float) -> np.ndarray:
    """(T, 20) channels -> (T, 21, 3) MediaPipe hand landmarks of a right hand, body space.
    A finger bends towards the palm: phalanx j points along cos(a) d + sin(a) n, where d is the
    finger's direction in the palm plane and a the sum of its joint angles up to j."""
    T, shape = len(ch), ch[:, 9:]
    local = np.zeros((T, 21, 3))                          # (thumb side, along, normal) coordinates
    up = np.array([0., 0., 1.])
    for f in range(4):
        theta = (.25 + .75 * shape[:, 8:9]) * FAN[f]      # (T, 1) fan angle in the palm plane
        d = np.concatenate([np.sin(theta), np.cos(theta), 0 * theta], 1)
        angle = np.cumsum(shape[:, [f, 4 + f, 4 + f]] * BEND, 1)                 # (T, 3)
        p = np.broadcast_to(np.r_[KNUCKLE[f], 0], (T, 3)) * k
        local[:, 5 + 4 * f] = p
        for j in range(3):
            a = angle[:, j:j + 1]
            p = p + k * PHALANX[f, j] * (np.cos(a) * d + np.sin(a) * up)
            local[:, 6 + 4 * f + j] = p
    out = np.radians(20 + 45 * shape[:, 9:10])            # thumb: away from the index ...
    d = _unit(np.concatenate([np.sin(out), np.cos(out), .4 + 0 * out], 1))
    across = _unit(np.array([-1, 0, .5]) - (d @ [-1, 0, .5])[:, None] * d)       # ... folding across
    angle = np.cumsum(shape[:, 10:11] * np.radians([30, 40, 50]), 1)
    p = np.broadcast_to(np.r_[THUMB_ROOT, 0], (T, 3)) * k
    local[:, 1] = p
    for j in range(3):
        a = angle[:, j:j + 1]
        p = p + k * THUMB_BONES[j] * (np.cos(a) * d + np.sin(a) * across)
        local[:, 2 + j] = p
    frame = _hand_frame(ch[:, 3:6], ch[:, 6:9])
    return ch[:, None, :3] + local @ frame.transpose(0, 2, 1)   # rows: R @ p for every point


def elbow(shoulder: np.ndarray, wrist: np.ndarray, k: float, outward: float) -> np.ndarray:
    """Two-bone inverse kinematics: (T, 3) elbows with the upper arm and forearm lengths kept,
    bending down, a little out (outward: +1 for the left arm, -1 for the right) and back."""
    upper, fore = .29 * k, .25 * k
    reach = wrist - shoulder
    dist = np.clip(np.linalg.norm(reach, axis=1, keepdims=True), .02 * k, upper + fore - 1e-6)
    u = reach / dist
    along = (upper ** 2 - fore ** 2 + dist ** 2) / (2 * dist)    # law of cosines: foot of the elbow
    hint = np.array([.6 * outward, 1, .3])
    side = _unit(hint - (u @ hint)[:, None] * u)
    return shoulder + along * u + np.sqrt(np.maximum(upper ** 2 - along ** 2, 0)) * side


def _rotations(angles: np.ndarray) -> np.ndarray:
    """(T, 3) small yaw, pitch, roll (radians) -> (T, 3, 3) rotations Ry @ Rx @ Rz."""
    c, s = np.cos(angles), np.sin(angles)
    T, one, zero = len(angles), np.ones(len(angles)), np.zeros(len(angles))
    ry = np.stack([c[:, 0], zero, s[:, 0], zero, one, zero, -s[:, 0], zero, c[:, 0]], 1).reshape(T, 3, 3)
    rx = np.stack([one, zero, zero, zero, c[:, 1], -s[:, 1], zero, s[:, 1], c[:, 1]], 1).reshape(T, 3, 3)
    rz = np.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).reshape(T, 3, 3)
    return ry @ rx @ rz


# The face: a template in face widths about the face centre (x to the image's right, y down). Key
# points of the MediaPipe mesh sit where they belong; contours are laid as bulging polylines from a
# to b; the other mesh points are scattered inside the oval. (indices, a, b, bulge)
FACE_CONTOURS = [
    ([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291], (-.19, .35), (.19, .35), .08),    # lips outer
    ([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291], (-.19, .35), (.19, .35), -.06),
    ([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308], (-.15, .355), (.15, .355), .015),  # lips inner
    ([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308], (-.15, .355), (.15, .355), -.01),
    ([33, 7, 163, 144, 145, 153, 154, 155, 133], (-.34, -.17), (-.13, -.17), .04),          # right eye
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], (-.34, -.17), (-.13, -.17), -.04),
    ([263, 249, 390, 373, 374, 380, 381, 382, 362], (.34, -.17), (.13, -.17), .04),         # left eye
    ([263, 466, 388, 387, 386, 385, 384, 398, 362], (.34, -.17), (.13, -.17), -.04),
    ([70, 63, 105, 66, 107], (-.42, -.3), (-.1, -.33), -.05), ([46, 53, 52, 65, 55], (-.4, -.27), (-.11, -.29), -.03),
    ([300, 293, 334, 296, 336], (.42, -.3), (.1, -.33), .05), ([276, 283, 282, 295, 285], (.4, -.27), (.11, -.29), .03),
    ([168, 6, 197, 195, 5, 4, 1], (0, -.17), (0, .12), 0), ([1, 19, 94, 2], (0, .12), (0, .2), 0)]
NOSE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327]
FACE_WIDTH, FACE_CENTRE = .15, np.array([0, -.24, -.08])    # metres; the centre in body space (k = 1)


def face_template() -> np.ndarray:
    """(468, 3) face points in face widths about the face centre; z: a rounded face and a nose."""
    rng = np.random.default_rng(468)
    r, phi = np.sqrt(rng.uniform(0, .8, 468)), rng.uniform(0, 2 * np.pi, 468)
    pts = np.stack([.46 * r * np.cos(phi), -.02 + .6 * r * np.sin(phi), np.zeros(468)], 1)
    for ids, a, b, bulge in FACE_CONTOURS:
        u = np.linspace(0, 1, len(ids))[:, None]
        pts[ids, :2] = np.array(a) + u * (np.subtract(b, a)) + bulge * np.sin(np.pi * u) * [0, 1]
    angle = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    pts[FACE_OVAL, 0], pts[FACE_OVAL, 1] = .5 * np.sin(angle), -.02 - .64 * np.cos(angle)
    pts[[98, 327], :2] = [[-.1, .18], [.1, .18]]          # nose wings
    pts[:, 2] = .35 * ((pts[:, 0] / .5) ** 2 + ((pts[:, 1] + .02) / .64) ** 2)   # edges lie further back
    pts[NOSE, 2] -= .2 * np.clip(1 - np.abs(pts[NOSE, 1] - .12) / .3, 0, 1)        # the nose: its tip (1) the most
    return pts


FACE = face_template()


def skeleton(glosses, kind: str, signer: Signer, rng: np.random.Generator, fps: float,
             coarticulation: bool) -> np.ndarray:
    """(T, 543, 3) body 33, face 468, left hand 21, right hand 21 in body space (metres)."""
    dom, other, _ = timeline(glosses, kind, signer, rng, fps, coarticulation)
    T, k, mirror = len(dom), signer.k, np.array([-1, 1, 1])
    right, left = hand_points(dom, k), hand_points(other, k) * mirror
    if signer.left_handed:           # mirror the whole signing: the left hand leads
        right, left = left * mirror, right * mirror
    every = max(1, round(.5 * fps))
    head = _rotations(_drift(rng, T, 3, .03, every))                            # yaw, pitch, roll
    face = k * (FACE_CENTRE + FACE_WIDTH * FACE @ head.transpose(0, 2, 1))     # (T, 468, 3)
    body = np.zeros((T, 33, 3))
    for i, (x, y, z) in {11: (.19, 0, 0), 12: (-.19, 0, 0), 23: (.15, .52, .02), 24: (-.15, .52, .02),
                         25: (.14, .98, 0), 26: (-.14, .98, 0), 27: (.13, 1.4, .04), 28: (-.13, 1.4, .04),
                         29: (.13, 1.45, .08), 30: (-.13, 1.45, .08), 31: (.15, 1.47, -.06),
                         32: (-.15, 1.47, -.06)}.items():
        body[:, i] = k * np.array([x, y, z])
    eye = lambda upper, lower: (face[:, upper] + face[:, lower]) / 2  # noqa: E731
    body[:, :11] = np.stack([face[:, 1], face[:, 362], eye(386, 374), face[:, 263], face[:, 133], eye(159, 145),
                             face[:, 33], face[:, 454] + k * np.array([.01, 0, .05]),
                             face[:, 234] + k * np.array([-.01, 0, .05]), face[:, 291], face[:, 61]], 1)
    body[:, 13], body[:, 14] = elbow(body[:, 11], left[:, 0], k, 1), elbow(body[:, 12], right[:, 0], k, -1)
    # wrist, pinky, index and thumb of the pose model come from the hands (knuckles, thumb MCP)
    body[:, 15:23] = np.stack([hand[:, j] for j in (0, 17, 5, 2) for hand in (left, right)], 1)
    sway = _drift(rng, T, 3, .005 * k, every)[:, None]                          # (T, 1, 3)
    return np.concatenate([body, face, left, right], 1) + sway


NOISE = np.r_[np.full(33, .0025), np.full(468, .001), np.full(42, .0018)][:, None]   # metres


def camera(pts: np.ndarray, signer: Signer, rng: np.random.Generator, fps: float,
           size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Body-space points (T, 543, 3) -> what MediaPipe Holistic writes: (T, 576, 3) and (T, 576)
    confidence. x, y in pixels; z in image widths from each part's origin (hips, face, wrist);
    world landmarks in metres from the hip centre, x and y times width and height (as pose-format's
    reader stores them, and synth/demo.py)."""
    W, H = size
    T = len(pts)
    pts = pts + signer.noise * NOISE * rng.standard_normal(pts.shape, dtype=np.float32)
    shake = rng.standard_normal((T, 2, 1, 3)) * .003 * signer.noise               # a hand shakes whole
    pts[:, 501:] += np.broadcast_to(shake, (T, 2, 21, 3)).reshape(T, 42, 3)
    hips = pts[:, [23, 24]].mean(1, keepdims=True)
    world = pts[:, :33] - hips
    depth = pts[..., 2].copy()
    for lo, hi, origin in ((0, 33, hips[..., 2]), (33, 501, depth[:, 33:501].mean(1, keepdims=True)),
                           (501, 522, depth[:, 501:502]), (522, 543, depth[:, 522:523])):
        pts[:, lo:hi, 2] = depth[:, lo:hi] - origin
    c, s = np.cos(signer.roll), np.sin(signer.roll)
    project = signer.ppm * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1 / W]])    # roll, pixels per metre
    image = pts @ project.T + [signer.cx, signer.cy, 0]
    x, y = image[..., 0], image[..., 1]
    inside = (x > 0) & (x < W) & (y > 0) & (y < H)
    conf = np.ones((T, 576))
    conf[:, :33] = conf[:, 543:] = np.where(inside[:, :33], 1, .03)              # off the frame: low visibility
    run = lambda: max(1, round(rng.uniform(.04, .2) * fps))  # noqa: E731 (a lost hand: .04-.2 s)
    for wrist in (501, 522):
        seen = inside[:, wrist] & (y[:, wrist] < .97 * H)
        for start in np.flatnonzero(rng.random(T) < signer.drop / (.12 * fps)):
            seen[start:start + run()] = False
        image[~seen, wrist:wrist + 21] = 0           # as MediaPipe writes a hand it did not find
        conf[~seen, wrist:wrist + 21] = 0
    data = np.concatenate([image, world * [W, H, 1]], 1)
    return data.astype(np.float32), conf.astype(np.float32)


# ----------------------------------------------------------------------------- corpus
def _splits(counts: list[int], rng: np.random.Generator) -> list[str]:
    """Whole videos to splits: in a seeded order, test until it holds 10% of the clips, then val
    until 10%, then train (so val and test are never empty when there are 3 videos or more)."""
    total, which, filled = sum(counts), [""] * len(counts), {"test": 0, "val": 0, "train": 0}
    order = rng.permutation(len(counts))
    for i, v in enumerate(order):
        split = next((s for s in ("test", "val") if filled[s] < .1 * total), "train")
        if i == len(order) - 1 and not filled["train"]:
            split = "train"                          # the last video trains if none has yet
        which[v] = split
        filled[split] += counts[v]
    return which


def generate_corpus(out_dir, kind: str, n: int = 1200, seed: int = 0, fps: float = 25,
                    size: tuple[int, int] = (1280, 720), left_handed: float = .2,
                    coarticulation: bool | None = None) -> dict:
    """Write n clips of one kind (several per video, one signer per video); returns a summary.
    coarticulation None: on for "mixed", off for "path" and "shape"."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    coart = kind == "mixed" if coarticulation is None else bool(coarticulation)
    size = (int(size[0]), int(size[1]))
    out, t0 = Path(out_dir), time.time()
    (out / "poses").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    demo.holistic_header(*size).write(buf)
    header = buf.getvalue()
    clips, signers, frames = [], [], []              # clips: (video, uid, text, glosses)
    while len(clips) < n:
        video = len(signers)
        rng = np.random.default_rng([seed, video])
        signer = make_signer(rng, size, left_handed)
        signers.append(signer)
        per_video = min(int(rng.integers(4, 13)), max(1, n // 10), n - len(clips))   # small corpora: more videos
        for segment in range(per_video):
            sentence = random_sentence(rng)
            pts = skeleton(sentence.glosses, kind, signer, rng, fps, coart)
            data, conf = camera(pts, signer, rng, fps, size)
            uid = f"{kind}{video:04d}--{segment}"
            demo.write_pose(out / "poses" / f"{uid}.pose", data, conf, header, fps=fps)
            clips.append((video, uid, sentence.text, " ".join(sentence.glosses)))
            frames.append(len(data))
    counts = np.bincount([c[0] for c in clips], minlength=len(signers)).tolist()
    which = _splits(counts, np.random.default_rng([seed, 1 << 20]))
    for split in ("train", "val", "test"):
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("uid", "text")] + [(u, t) for v, u, t, _ in clips if which[v] == split])
    meta = {"kind": kind, "seed": seed, "fps": fps, "size": list(size), "coarticulation": coart,
            "glosses": {u: g for _, u, _, g in clips},
            "signers": {f"{kind}{v:04d}": {**asdict(s), "split": which[v]} for v, s in enumerate(signers)}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"kind": kind, "samples": len(clips), "videos": len(signers), "signs": len(LEXICON),
            "splits": {s: sum(c for c, w in zip(counts, which) if w == s) for s in ("train", "val", "test")},
            "left_handed_videos": sum(s.left_handed for s in signers), "fps": fps, "size": list(size),
            "coarticulation": coart, "mean_seconds": round(float(np.mean(frames)) / fps, 2),
            "seconds": round(time.time() - t0, 2), "out": str(out)}


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a synthetic sign corpus whose signs differ by path, "
                                                 "hand shape, or a coarticulated mix.")
    parser.add_argument("out_dir")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--n", type=int, default=1200, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="signers and sentences (the signs never change)")
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--size", type=_size, default=(1280, 720), help="frame size WxH, e.g. 640x480")
    parser.add_argument("--left_handed", type=float, default=.2, help="probability a video's signer is left-handed")
    parser.add_argument("--coarticulation", action=argparse.BooleanOptionalAction, default=None,
                        help="blend adjacent signs (default: on for mixed only)")
    a = parser.parse_args()
    print(json.dumps(generate_corpus(a.out_dir, a.kind, a.n, a.seed, a.fps, a.size, a.left_handed, a.coarticulation)))
