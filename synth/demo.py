"""A synthetic sign-language corpus in the iSign layout: real .pose files, made-up signs.

What: `generate_corpus(out_dir, n, seed)` writes `OUT_DIR/iSign_v1.1.csv` (columns uid,text)
and `OUT_DIR/poses/{uid}.pose`, pose-format files in the MediaPipe Holistic layout of the iSign
corpus: POSE_LANDMARKS 33, FACE_LANDMARKS 468, LEFT/RIGHT_HAND_LANDMARKS 21 + 21 and
POSE_WORLD_LANDMARKS 33 points (576, XYZC), 25 fps, pixel coordinates of a 1280x720 video.
uids are `{video}--{segment}` (e.g. `synv0007--3`): one video is one signer, so splitting by
video keeps a signer out of the other splits, as in iSign.

Why: the real corpus (iSign, 118k clips, ~170 GB of poses) cannot be downloaded here, and a
newcomer needs something that runs end to end in minutes. The corpus is made to be learnable
by a tiny model, so that a demo run shows real translation, not noise:
- every English word of a ~70-word lexicon is its own sign: a hand shape (finger flexions on a
  hand skeleton), a palm orientation, a location near the face, body or in neutral space, a
  movement (line, arc, circle, shake, tap, wave, twist, hold), one- or two-handed. A sign
  depends on its word only (seeded by a hash of the gloss), so every seed shares one lexicon
  and a model trained on one seed's corpus can be tested on another's;
- sentences come from a small grammar (synth/demo_grammar.py) and are signed as glosses in the order
  of Indian Sign Language (time first, subject-object-verb, no articles or copula, negation and
  wh-words sentence-final); yes/no questions are marked only by raised brows and a held last
  sign, wh-questions by lowered brows, as non-manual markers are in ISL;
- each video has its own signer: body size, place and scale in the frame, a slight rotation,
  signing speed, tracking noise and dropped hand frames (zero coordinates and confidence, as
  MediaPipe writes a hand it did not find). Elbows follow from the wrists by two-bone IK;
  the face is a coarse parametric mesh whose contour points (lips, eyes, brows, nose, oval)
  sit at the MediaPipe indices, so that keypoints selected by index land in the right place.

Deliberate quirk kept from pose-format's MediaPipe reader: world landmarks are metres times
(width, height) for x, y and metres for z, exactly as they are stored in iSign files.
The header is built in code (pose-format's holistic utilities need mediapipe); it matches the
real files except that the face's limbs are the mesh contours, not the full tessellation.

Run:  python -m synth.demo OUT_DIR [--n 600] [--seed 0]     (or: python data.py synth OUT_DIR ...)

References: MediaPipe Holistic (Grishchenko & Bazarevsky, Google AI Blog 2020; landmark
layout and index lists from mediapipe's face_mesh_connections / pose_connections);
pose-format (Moryossef & Müller, 2021); iSign (Joshi et al., Findings of ACL 2024); ISL
grammar: Zeshan, "Sign Language in Indo-Pakistan" (2000), SOV order and sentence-final
wh-words and negation.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pose_format.numpy.pose_body import NumPyPoseBody
from pose_format.pose_header import VERSION, PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils.openpose import hand_colors

from synth.demo_grammar import LEXICON, Sentence, random_sentence

FPS, WIDTH, HEIGHT = 25, 1280, 720

# ----------------------------------------------------------------------------- signs
# Body space: metres, origin between the shoulders, x to the image's right (the signer's left),
# y down, z away from the camera; a reference signer has shoulders 0.38 m apart. Hands are
# described in "right-hand space": the left hand's values are mirrored (x -> -x) when drawn,
# so a symmetric two-handed sign gives both hands the same values.
ANCHORS = {  # where the palm centre of the dominant (right) hand starts a sign
    "forehead": (0, -.31, -.16), "eye": (-.04, -.27, -.17), "nose": (0, -.22, -.19),
    "mouth": (0, -.18, -.18), "chin": (0, -.13, -.17), "cheek": (-.07, -.2, -.15),
    "temple": (-.09, -.3, -.12), "ear": (-.11, -.24, -.07), "above_head": (-.05, -.37, -.12),
    "neck": (0, -.06, -.12), "chest": (0, .1, -.14), "chest_side": (-.1, .1, -.13),
    "shoulder": (.14, .02, -.12), "stomach": (0, .3, -.16), "neutral": (-.05, .18, -.32),
    "neutral_side": (-.2, .15, -.3), "neutral_high": (-.1, -.05, -.35), "neutral_low": (-.05, .32, -.28),
    "side": (-.32, .05, -.18)}
DIRECTIONS = {"up": (0, -1, 0), "down": (0, 1, 0), "out": (-1, 0, 0), "across": (1, 0, 0),
              "forward": (0, 0, -1), "back": (0, 0, 1), "out_down": (-.71, .71, 0),
              "across_up": (.71, -.71, 0)}
MOVES = ["line", "arc", "circle", "shake", "tap", "wave", "twist", "hold"]
PALMS = {  # (finger direction, palm normal) before a sign's own small tilt
    "palm_fwd": ((0, -1, 0), (0, 0, -1)), "palm_back": ((0, -1, 0), (0, 0, 1)),
    "palm_in": ((0, -1, 0), (1, 0, 0)), "palm_down": ((0, 0, -1), (0, 1, 0)),
    "palm_up": ((0, 0, -1), (0, -1, 0)), "fingers_in": ((1, 0, 0), (0, 0, -1)),
    "fingers_in_down": ((1, 0, 0), (0, 1, 0)), "fingers_in_back": ((1, 0, 0), (0, 0, 1))}
SHAPES = {  # flexion 0..1 at the knuckle (MCP) and middle joints (PIP, DIP) of index..pinky;
    # finger spread 0..1; thumb abduction 0..1 and flexion across the palm 0..1
    "flat": ((0, 0, 0, 0), (0, 0, 0, 0), 0, .1, .4), "five": ((0, 0, 0, 0), (0, 0, 0, 0), 1, 1, 0),
    "fist": ((1, 1, 1, 1), (1, 1, 1, 1), 0, .2, .9), "point": ((0, 1, 1, 1), (0, 1, 1, 1), 0, .2, .9),
    "v": ((0, 0, 1, 1), (0, 0, 1, 1), 1, .2, .9), "w": ((0, 0, 0, 1), (0, 0, 0, 1), 1, .2, .9),
    "y": ((1, 1, 1, 0), (1, 1, 1, 0), .5, 1, 0), "l": ((0, 1, 1, 1), (0, 1, 1, 1), 0, 1, 0),
    "i": ((1, 1, 1, 0), (1, 1, 1, 0), 0, .2, .9), "c": ((.4,) * 4, (.5,) * 4, .2, .7, .3),
    "o": ((.6,) * 4, (.8,) * 4, 0, .6, .7), "claw": ((.1,) * 4, (.9,) * 4, 1, .8, .4),
    "bent": ((.9,) * 4, (0,) * 4, 0, .1, .3), "thumb": ((1, 1, 1, 1), (1, 1, 1, 1), 0, .3, 0),
    "horns": ((0, 1, 1, 0), (0, 1, 1, 0), .6, .2, .9), "hook": ((0, 1, 1, 1), (.9, 1, 1, 1), 0, .2, .9)}
RELAXED = ((.2,) * 4, (.3,) * 4, .2, .3, .3)


@dataclass(frozen=True)
class Sign:
    gloss: str
    hands: str          # "one", "sym" (mirrored), "alt" (mirrored, opposite phase), "base"
    location: str       # in ANCHORS; for a "base" sign, the height of the still hand
    movement: str
    direction: str      # of the movement; the plane normal for a circle
    size: float         # metres
    shape: str
    end_shape: str      # a sign may change its hand shape as it moves
    palm: str
    tilt: tuple         # small rotation (radians) that makes two same-palm signs differ
    base_shape: str     # the still hand of a "base" sign
    base_palm: str
    frames: int         # duration at 25 fps for a signer of speed 1


@lru_cache(maxsize=None)
def sign_for(gloss: str) -> Sign:
    """The sign of a word: drawn from a generator seeded by the word itself, so that every
    corpus, whatever its seed, shares one lexicon."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(gloss.encode()).digest()[:8], "little"))
    choose = lambda xs: str(xs[rng.integers(len(xs))])  # noqa: E731
    hands = choose(["one"] * 11 + ["sym"] * 4 + ["alt"] * 2 + ["base"] * 3)
    location, movement, direction = choose(list(ANCHORS)), choose(MOVES), choose(list(DIRECTIONS))
    size, shape, end_shape = float(rng.uniform(.08, .15)), choose(list(SHAPES)), choose(list(SHAPES))
    palm, tilt = choose(list(PALMS)), tuple(float(a) for a in rng.uniform(-.25, .25, 3).round(3))
    base_shape, base_palm = choose(["flat", "fist", "five", "c"]), choose(["palm_up", "palm_in", "palm_back"])
    if movement != "hold" and rng.random() < .7:   # most signs keep one hand shape
        end_shape = shape
    return Sign(gloss, hands, location, movement, direction, size, shape, end_shape, palm, tilt,
                base_shape, base_palm, int(rng.integers(11, 18)))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """(..., 3) yaw (about y), pitch (about x), roll (about z) -> (..., 3, 3) Ry @ Rx @ Rz."""
    (cy, cx, cz), (sy, sx, sz) = np.moveaxis(np.cos(angles), -1, 0), np.moveaxis(np.sin(angles), -1, 0)
    one, zero = np.ones_like(cy), np.zeros_like(cy)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*cy.shape, 3, 3)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(*cy.shape, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(*cy.shape, 3, 3)
    return ry @ rx @ rz


def _movement(sign: Sign, t: np.ndarray) -> np.ndarray:
    """(T,) progress 0..1 -> (T, 3) displacement of the hand from its start location."""
    d, s, size = np.array(DIRECTIONS[sign.direction]), _smooth(t)[:, None], sign.size
    side = _unit(np.cross(d, (0, 0, 1)) if abs(d[2]) < .9 else np.cross(d, (0, 1, 0)))
    if sign.movement == "line":
        return s * d * size
    if sign.movement == "arc":
        return s * d * size + np.sin(np.pi * s) * side * .4 * size
    if sign.movement == "circle":   # in the plane normal to d, starting where the sign starts
        return .5 * size * ((np.cos(2 * np.pi * s) - 1) * side + np.sin(2 * np.pi * s) * np.cross(d, side))
    if sign.movement == "shake":
        return .3 * size * np.sin(4 * np.pi * t)[:, None] * d
    if sign.movement == "tap":      # two contacts, along d
        return .3 * size * np.abs(np.sin(2 * np.pi * t))[:, None] * d
    if sign.movement == "wave":
        return .3 * size * (np.sin(4 * np.pi * t)[:, None] * np.array([1, 0, 0]) + s * np.array([0, 1, 0]))
    return .1 * size * s * d         # twist (the palm turns) and hold (the shape changes)


def _shape(spec: tuple) -> np.ndarray:
    """A SHAPES entry -> (11,) vector: MCP 4, PIP 4, spread, thumb abduction, thumb flexion."""
    mcp, pip, spread, abduct, flex = spec
    return np.array([*mcp, *pip, spread, abduct, flex], float)


def _hand(T: int, *parts) -> np.ndarray:
    """Per-frame hand channels (T, 20): palm centre 3, finger direction 3, palm normal 3, shape 11.
    Parts are per frame (T, n) or constant (n,)."""
    return np.concatenate([np.broadcast_to(np.asarray(p, float), (T, np.shape(p)[-1])) for p in parts], 1)


def _orientation(sign: Sign, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) finger direction and palm normal; a "twist" turns the palm a quarter turn."""
    turn = _rotation(np.array(sign.tilt))
    fingers, normal = (turn @ np.array(v, float) for v in PALMS[sign.palm])
    angle = (np.pi / 2 * np.sign(sign.tilt[0]) * _smooth(t) if sign.movement == "twist" else 0 * t)[:, None]
    normal = np.cos(angle) * normal + np.sin(angle) * np.cross(fingers, normal)   # about the finger axis
    return np.broadcast_to(fingers, (len(t), 3)), normal


# ----------------------------------------------------------------------------- signers
@dataclass
class Signer:
    """One video's signer and camera."""
    k: float            # body size (1: shoulders 0.38 m apart)
    ppm: float          # image pixels per metre
    cx: float           # shoulder midpoint in the image (pixels)
    cy: float
    roll: float         # camera roll and body yaw (radians)
    yaw: float
    speed: float        # signing speed (1: the lexicon's durations)
    noise: float        # tracking noise level
    drop: float         # rate of hand-tracking dropouts
    amp: float          # size of this signer's movements
    bias: np.ndarray    # where this signer places signs (metres, added to every location)

    def rest(self) -> np.ndarray:     # hands hanging down, before and after a sentence
        return _hand(1, self.k * np.array([-.17, .53, -.03]), _unit(np.array([0, 1, -.3])),
                     [1, 0, 0], _shape(RELAXED))[0]

    def ready(self) -> np.ndarray:    # the idle hand during one-handed signs, at the waist
        return _hand(1, self.k * np.array([-.12, .33, -.2]), _unit(np.array([.5, 0, -1])),
                     [0, 1, 0], _shape(RELAXED))[0]


def make_signer(rng: np.random.Generator) -> Signer:
    k = rng.uniform(.88, 1.12)
    shoulders_px = rng.uniform(.16, .23) * WIDTH
    return Signer(k=k, ppm=shoulders_px / (.38 * k), cx=rng.uniform(.42, .58) * WIDTH,
                  cy=rng.uniform(.44, .54) * HEIGHT, roll=rng.uniform(-.05, .05), yaw=rng.uniform(-.09, .09),
                  speed=rng.uniform(.85, 1.2), noise=rng.uniform(.6, 1.4), drop=rng.uniform(0, .06),
                  amp=rng.uniform(.9, 1.1), bias=rng.normal(0, .008, 3))


def _perform(sign: Sign, signer: Signer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sign by one signer: (n, 20) channels of the dominant and the other hand."""
    n = max(7, round(sign.frames / signer.speed * rng.uniform(.9, 1.1)))
    t = np.linspace(0, 1, n)
    anchor = np.array(ANCHORS[sign.location], float)
    base = np.array([-.03, np.clip(anchor[1], .05, .3), -.3])   # the still hand, in front of the body
    if sign.hands == "base":     # the moving hand works just above the still one
        anchor = base * [-1, 1, 1] - [0, .08, 0]
    if sign.hands in ("sym", "alt"):   # two hands cannot share a place: move each to its side
        anchor[0] = min(anchor[0], 0) - .07
    anchor += signer.bias + rng.normal(0, .006, 3)
    start, end = _shape(SHAPES[sign.shape]), _shape(SHAPES[sign.end_shape])
    shape = np.clip(start + _smooth(t)[:, None] * (end - start) + rng.uniform(-.04, .04, 11), 0, 1)
    fingers, normal = _orientation(sign, t)
    place = lambda progress: signer.k * (anchor + signer.amp * _movement(sign, progress))  # noqa: E731
    dom = _hand(n, place(t), fingers, normal, shape)
    if sign.hands == "sym":
        return dom, dom
    if sign.hands == "alt":
        return dom, _hand(n, place(1 - t), fingers, normal, shape)
    if sign.hands == "base":
        return dom, _hand(n, signer.k * base, *PALMS[sign.base_palm], _shape(SHAPES[sign.base_shape]))
    return dom, _hand(n, signer.ready())


def _blend(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """n frames of movement between channel rows a and b (ends excluded)."""
    w = _smooth(np.linspace(0, 1, n + 2)[1:-1])[:, None]
    out = a + w * (b - a)
    flip = max(0.0, -float(a[6:9] @ b[6:9]))   # a palm turning over turns through its thumb side
    out[:, 6:9] += flip * np.sin(np.pi * w) * np.cross(a[3:6], a[6:9])
    return out


def _timeline(sentence: Sentence, signer: Signer, rng: np.random.Generator):
    """Both hands' channels over the whole clip: rest, signs joined by transitions, rest.
    Returns (dom (T, 20), other (T, 20), (first, last) frame of the signing)."""
    frames = lambda lo, hi: max(1, round(rng.uniform(lo, hi) / signer.speed))  # noqa: E731
    rest = signer.rest()[None].repeat(frames(3, 8), 0)
    dom, other = [rest], [rest]
    for i, gloss in enumerate(sentence.glosses):
        a, b = _perform(sign_for(gloss), signer, rng)
        n = frames(6, 9) if i == 0 else frames(4, 7)
        dom += [_blend(dom[-1][-1], a[0], n), a]
        other += [_blend(other[-1][-1], b[0], n), b]
        if i == 0:
            first = sum(map(len, dom)) - len(a)
    last = sum(map(len, dom))
    hold = frames(5, 8) if sentence.marker == "yes_no" else frames(0, 2)   # a question waits
    n, rest = frames(6, 9), signer.rest()[None].repeat(frames(2, 6), 0)
    for hand in (dom, other):
        hand += [hand[-1][-1:].repeat(hold, 0), _blend(hand[-1][-1], rest[0], n), rest]
    return np.concatenate(dom), np.concatenate(other), (first, last)


# ----------------------------------------------------------------------------- skeleton
# A 19 cm right hand (metres), in the hand's frame: (thumb side, along the fingers) of each
# finger's knuckle, and its three bone lengths. Index, middle, ring, pinky.
KNUCKLES = np.array([[.024, .09], [.004, .094], [-.014, .089], [-.03, .08]])
BONES = np.array([[.04, .024, .02], [.045, .028, .022], [.042, .026, .021], [.032, .019, .018]])
SPLAY = np.radians([8, 0, -8, -16])                   # each finger's angle at full spread
THUMB_BASE, THUMB_BONES = (.02, .022), (.035, .03, .027)
FLEX = np.radians([90, 100, 70])                      # MCP, PIP, DIP angles at full flexion


def _hand_points(ch: np.ndarray, k: float) -> np.ndarray:
    """(T, 20) channels -> (T, 21, 3) MediaPipe hand landmarks of a right hand (body space).
    A finger bends in the plane of its direction and the palm normal, so each bone points
    along cos(a) d + sin(a) n, a the summed flexion of the joints before it."""
    along = _unit(ch[:, 3:6])
    normal = _unit(ch[:, 6:9] - (ch[:, 6:9] * along).sum(1, keepdims=True) * along)
    side = np.cross(along, normal)                    # towards the thumb
    pts = np.empty((len(ch), 21, 3))
    pts[:, 0] = wrist = ch[:, :3] - .05 * k * along   # the palm centre is 5 cm from the wrist
    for i in range(4):
        spread = ((.15 + ch[:, 17]) * SPLAY[i])[:, None]
        d = np.cos(spread) * along + np.sin(spread) * side
        angles = np.cumsum(ch[:, [9 + i, 13 + i, 13 + i]] * FLEX, axis=1)
        pts[:, 5 + 4 * i] = p = wrist + k * (KNUCKLES[i, 0] * side + KNUCKLES[i, 1] * along)
        for j in range(3):
            a = angles[:, j:j + 1]
            pts[:, 6 + 4 * i + j] = p = p + k * BONES[i, j] * (np.cos(a) * d + np.sin(a) * normal)
    abduct = np.radians(15 + 50 * ch[:, 18:19])       # thumb: out from the index, a little forward
    d = _unit(np.cos(abduct) * along + np.sin(abduct) * side + .35 * normal)
    across = _unit(-side + .6 * normal)                # ... and it folds across the palm
    across = _unit(across - (across * d).sum(1, keepdims=True) * d)
    angles = np.cumsum(ch[:, 19:20] * np.radians([25, 45, 60]), axis=1)
    pts[:, 1] = p = wrist + k * (THUMB_BASE[0] * side + THUMB_BASE[1] * along)
    for j in range(3):
        a = angles[:, j:j + 1]
        pts[:, 2 + j] = p = p + k * THUMB_BONES[j] * (np.cos(a) * d + np.sin(a) * across)
    return pts


def _elbow(shoulder: np.ndarray, wrist: np.ndarray, k: float, out: float) -> np.ndarray:
    """Two-bone IK: the elbow (T, 3) given shoulder and wrist, bending down, out and back."""
    upper, fore = .3 * k, .26 * k
    reach = wrist - shoulder
    dist = np.clip(np.linalg.norm(reach, axis=1, keepdims=True), 1e-6, upper + fore - 1e-6)
    u = reach / dist
    along = (upper ** 2 - fore ** 2 + dist ** 2) / (2 * dist)   # law of cosines
    pole = np.array([.7 * out, 1, .2])
    bend = _unit(pole - (u @ pole)[:, None] * u)
    return shoulder + along * u + np.sqrt(np.maximum(upper ** 2 - along ** 2, 0)) * bend


def _drift(rng: np.random.Generator, T: int, dims: int, scale: float, every: int = 12) -> np.ndarray:
    """Slow random wandering (T, dims): knots every `every` frames, linearly joined."""
    knots = rng.normal(0, scale, (T // every + 2, dims))
    x = np.arange(T) / every
    return np.stack([np.interp(x, np.arange(len(knots)), knots[:, d]) for d in range(dims)], 1)


# ----------------------------------------------------------------------------- face
# MediaPipe face-mesh contours (indices from mediapipe's face_mesh_connections), each laid on a
# half-ellipse of a template face: (indices, x from, x to, y, bulge) in face widths from the
# nose tip, x to the image's right, y down. The mesh's other points are scattered inside.
FACE_ARCS = [
    ([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291], -.17, .17, .235, .075),   # lips, outer
    ([291, 409, 270, 269, 267, 0, 37, 39, 40, 185, 61], .17, -.17, .235, -.075),
    ([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308], -.15, .15, .235, .01),     # lips, inner
    ([308, 415, 310, 311, 312, 13, 82, 81, 80, 191, 78], .15, -.15, .235, -.01),
    ([33, 7, 163, 144, 145, 153, 154, 155, 133], -.33, -.13, -.285, .03),           # right eye
    ([133, 173, 157, 158, 159, 160, 161, 246, 33], -.13, -.33, -.285, -.03),
    ([263, 249, 390, 373, 374, 380, 381, 382, 362], .33, .13, -.285, .03),          # left eye
    ([362, 398, 384, 385, 386, 387, 388, 466, 263], .13, .33, -.285, -.03),
    ([46, 53, 52, 65, 55], -.43, -.1, -.38, -.03), ([70, 63, 105, 66, 107], -.45, -.12, -.42, -.03),
    ([276, 283, 282, 295, 285], .43, .1, -.38, -.03), ([300, 293, 334, 296, 336], .45, .12, -.42, -.03)]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
NOSE_LINE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2]    # bridge to tip (1) to below the tip
NOSTRILS = [98, 327]
BROWS = [i for arc in FACE_ARCS[8:] for i in arc[0]]
LIDS = [i for arc in (FACE_ARCS[5], FACE_ARCS[7]) for i in arc[0][1:-1]]   # upper eyelids
RIGHT_EYE, LEFT_EYE = FACE_ARCS[4][0] + FACE_ARCS[5][0], FACE_ARCS[6][0] + FACE_ARCS[7][0]


def _face_template() -> np.ndarray:
    """(468, 3) face mesh in face widths, nose tip at the origin, z away from the camera."""
    rng = np.random.default_rng(468)
    r, a = np.sqrt(rng.uniform(0, .85, 468)), rng.uniform(0, 2 * np.pi, 468)
    pts = np.stack([.5 * r * np.cos(a), -.065 + .635 * r * np.sin(a), np.zeros(468)], 1)
    for ids, x0, x1, y, bulge in FACE_ARCS:
        phi = np.linspace(0, np.pi, len(ids))
        pts[ids, 0], pts[ids, 1] = (x0 + x1) / 2 + (x0 - x1) / 2 * np.cos(phi), y + bulge * np.sin(phi)
    a = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    pts[FACE_OVAL, 0], pts[FACE_OVAL, 1] = .5 * np.sin(a), -.065 - .635 * np.cos(a)
    pts[NOSE_LINE, 0], pts[NOSE_LINE, 1] = 0, [-.32, -.27, -.22, -.17, -.12, -.05, 0, .03, .04, .05]
    pts[NOSTRILS, 0], pts[NOSTRILS, 1] = [-.12, .12], .04
    pts[:, 2] = .4 * ((pts[:, 0] / .5) ** 2 + ((pts[:, 1] + .065) / .635) ** 2)   # a rounded face
    pts[NOSE_LINE, 2] -= .18 * np.clip(1 - np.abs(pts[NOSE_LINE, 1]) / .35, 0, 1)  # and a nose
    return pts - pts[1]


FACE = _face_template()


def _face(T: int, signer: Signer, marker: str, span: tuple[int, int], rng) -> np.ndarray:
    """(T, 468, 3) face points in body space: the template on a slowly moving head, with
    blinks and the question markers (raised brows and a forward tilt; lowered, drawn brows)."""
    pts = np.repeat(FACE[None], T, 0)
    on = np.zeros(T)
    on[span[0]:span[1]] = 1
    on = np.convolve(on, np.ones(5) / 5, "same")[:, None]   # markers fade in and out
    nod, frown = on * (marker == "yes_no"), on * (marker == "wh")
    pts[:, BROWS, 1] += .04 * frown - .1 * nod      # face widths
    pts[:, BROWS, 0] *= 1 - .12 * frown
    for start in rng.integers(0, T, rng.integers(0, 3)):
        pts[start:start + 3, LIDS, 1] = -.275        # a blink: upper lids down for 3 frames
    angles = _drift(rng, T, 3, .03)                  # head yaw, pitch, roll (radians)
    angles[:, 1] += .2 * nod[:, 0]
    nose = signer.k * (np.array([0, -.22, -.1]) + nod * [0, .02, -.02])   # the head leans forward
    return .165 * signer.k * pts @ _rotation(angles).transpose(0, 2, 1) + nose[:, None]


# ----------------------------------------------------------------------------- pose files
BODY_POINTS = """NOSE LEFT_EYE_INNER LEFT_EYE LEFT_EYE_OUTER RIGHT_EYE_INNER RIGHT_EYE RIGHT_EYE_OUTER
    LEFT_EAR RIGHT_EAR MOUTH_LEFT MOUTH_RIGHT LEFT_SHOULDER RIGHT_SHOULDER LEFT_ELBOW RIGHT_ELBOW
    LEFT_WRIST RIGHT_WRIST LEFT_PINKY RIGHT_PINKY LEFT_INDEX RIGHT_INDEX LEFT_THUMB RIGHT_THUMB LEFT_HIP
    RIGHT_HIP LEFT_KNEE RIGHT_KNEE LEFT_ANKLE RIGHT_ANKLE LEFT_HEEL RIGHT_HEEL LEFT_FOOT_INDEX
    RIGHT_FOOT_INDEX""".split()
BODY_LIMBS = [(15, 21), (16, 20), (18, 20), (3, 7), (14, 16), (23, 25), (28, 30), (11, 23), (27, 31),
              (6, 8), (15, 17), (24, 26), (16, 22), (4, 5), (5, 6), (29, 31), (12, 24), (23, 24), (0, 1),
              (9, 10), (1, 2), (0, 4), (11, 13), (30, 32), (28, 32), (15, 19), (16, 18), (25, 27),
              (26, 28), (12, 14), (17, 19), (2, 3), (11, 12), (27, 29), (13, 15)]
HAND_POINTS = ["WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP"] + [
    f"{finger}_{joint}" for finger in ("INDEX_FINGER", "MIDDLE_FINGER", "RING_FINGER", "PINKY")
    for joint in ("MCP", "PIP", "DIP", "TIP")]
HAND_LIMBS = [(3, 4), (0, 5), (17, 18), (0, 17), (13, 14), (13, 17), (18, 19), (5, 6), (5, 9), (14, 15), (0, 1),
              (9, 10), (1, 2), (9, 13), (10, 11), (19, 20), (6, 7), (15, 16), (2, 3), (11, 12), (7, 8)]
FACE_LIMBS = [(a, b) for ids in [arc[0] for arc in FACE_ARCS] + [FACE_OVAL + FACE_OVAL[:1], NOSE_LINE]
              for a, b in zip(ids, ids[1:])]
# the still parts of a reference body (metres): shoulders 11, 12 and hips to feet 23..32
TORSO = {11: (.19, 0, 0), 12: (-.19, 0, 0), 23: (.15, .52, .02), 24: (-.15, .52, .02), 25: (.14, .98, 0),
         26: (-.14, .98, 0), 27: (.13, 1.4, .04), 28: (-.13, 1.4, .04), 29: (.13, 1.45, .08),
         30: (-.13, 1.45, .08), 31: (.15, 1.47, -.06), 32: (-.15, 1.47, -.06)}


def holistic_header(width: int = WIDTH, height: int = HEIGHT) -> PoseHeader:
    """The header of a MediaPipe Holistic .pose file as pose-format writes it (576 points)."""
    def part(name, points, limbs, colors):
        return PoseHeaderComponent(name, points, limbs, colors, "XYZC")
    return PoseHeader(VERSION, PoseHeaderDimensions(width, height, 0), [
        part("POSE_LANDMARKS", BODY_POINTS, BODY_LIMBS, [(255, 0, 0)]),
        part("FACE_LANDMARKS", [str(i) for i in range(468)], FACE_LIMBS, [(128, 0, 0)]),
        part("LEFT_HAND_LANDMARKS", HAND_POINTS, HAND_LIMBS, hand_colors),
        part("RIGHT_HAND_LANDMARKS", HAND_POINTS, HAND_LIMBS, hand_colors),
        part("POSE_WORLD_LANDMARKS", BODY_POINTS, BODY_LIMBS, [(255, 0, 0)])])


def _skeleton(sentence: Sentence, signer: Signer, rng: np.random.Generator) -> np.ndarray:
    """(T, 543, 3) body, face, left hand, right hand in body space (metres)."""
    dom, other, span = _timeline(sentence, signer, rng)
    T, k = len(dom), signer.k
    right, left = _hand_points(dom, k), _hand_points(other, k) * [-1, 1, 1]   # right is dominant
    face = _face(T, signer, sentence.marker, span, rng)
    body = np.zeros((T, 33, 3))
    body[:, list(TORSO)] = k * np.array(list(TORSO.values()))
    ears = face[:, [454, 234]] + .12 * (face[:, [454, 234]] - face[:, [234, 454]]) + [0, 0, .05 * k]
    eyes = [face[:, LEFT_EYE].mean(1), face[:, RIGHT_EYE].mean(1)]
    body[:, :11] = np.stack([face[:, 1], face[:, 362], eyes[0], face[:, 263], face[:, 133], eyes[1],
                             face[:, 33], ears[:, 0], ears[:, 1], face[:, 291], face[:, 61]], 1)
    body[:, 13], body[:, 14] = _elbow(body[:, 11], left[:, 0], k, 1), _elbow(body[:, 12], right[:, 0], k, -1)
    # wrists, pinkies, index fingers and thumbs of the body model, from the hands
    body[:, 15:23] = np.stack([hand[:, j] for j in (0, 17, 5, 3) for hand in (left, right)], 1)
    sway = _drift(rng, T, 3, .006 * k)[:, None]
    return np.concatenate([body, face, left, right], 1) + sway


NOISE = np.r_[np.full(33, .0025), np.full(468, .001), np.full(42, .002)][:, None]  # metres: body, face, hands


def _camera(pts: np.ndarray, signer: Signer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body-space points -> what MediaPipe Holistic writes: (T, 576, 3) and (T, 576) confidence.
    Image x, y in pixels; z in image widths from each part's origin (hip centre, face centre,
    wrist); world landmarks in metres from the hip centre (x, y times width, height, see top)."""
    T = len(pts)
    pts = pts @ _rotation(np.array([signer.yaw, 0, 0])).T      # the signer stands a little turned
    pts += signer.noise * NOISE * rng.standard_normal(pts.shape)   # tracking noise; and each
    jitter = rng.standard_normal((T, 2, 1, 3)).repeat(21, 2).reshape(T, 42, 3)   # hand shakes whole
    pts[:, 501:] += signer.noise * .003 * jitter
    hips = pts[:, [23, 24]].mean(1, keepdims=True)
    world = pts[:, :33] - hips
    depth = pts[..., 2].copy()
    for lo, hi, origin in ((0, 33, hips[..., 2]), (33, 501, depth[:, 33:501].mean(1, keepdims=True)),
                           (501, 522, depth[:, 501:502]), (522, 543, depth[:, 522:523])):
        pts[:, lo:hi, 2] = depth[:, lo:hi] - origin
    c, s = np.cos(signer.roll), np.sin(signer.roll)
    camera = signer.ppm * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1 / WIDTH]])   # roll and scale
    image = pts @ camera.T + [signer.cx, signer.cy, 0]
    conf = np.ones((T, 576))
    x, y = image[..., 0], image[..., 1]
    inside = (x > 0) & (x < WIDTH) & (y > 0) & (y < HEIGHT)
    visible = np.where(inside[:, :33], rng.uniform(.95, 1, (T, 33)), rng.uniform(0, .1, (T, 33)))
    conf[:, :33] = conf[:, 543:] = visible   # MediaPipe's visibility: low outside the frame
    for wrist in (501, 522):   # a hand MediaPipe did not find: zeros, zero confidence
        seen = inside[:, wrist] & (y[:, wrist] < .97 * HEIGHT)
        for start in np.flatnonzero(rng.random(T) < signer.drop / 2.5):
            seen[start:start + rng.integers(1, 5)] = False
        image[~seen, wrist:wrist + 21] = 0
        conf[~seen, wrist:wrist + 21] = 0
    data = np.concatenate([image, world * [WIDTH, HEIGHT, 1]], 1)
    return data.astype(np.float32), conf.astype(np.float32)


def render(sentence: Sentence, signer: Signer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A signed sentence -> (T, 576, 3) points and (T, 576) confidences of a Holistic .pose file."""
    return _camera(_skeleton(sentence, signer, rng), signer, rng)


def write_pose(path: Path, data: np.ndarray, conf: np.ndarray, header: bytes, fps: float = FPS) -> None:
    """One .pose file as pose-format's Pose.write writes it: the header, serialised once per
    corpus because writing its 576 point names is a good part of the cost, then the body."""
    mask = np.repeat((conf == 0)[:, None, :, None], 3, axis=3)
    body = NumPyPoseBody(fps=fps, data=np.ma.masked_array(data[:, None], mask=mask), confidence=conf[:, None])
    with open(path, "wb") as f:
        f.write(header)
        body.write(VERSION, f)


def generate_corpus(out_dir, n: int = 600, seed: int = 0) -> dict:
    """Write n clips (several per video, one signer per video) and the CSV; returns a summary."""
    if n < 1:
        raise ValueError(f"synth: --n must be at least 1, got {n}")
    out = Path(out_dir)
    (out / "poses").mkdir(parents=True, exist_ok=True)
    header = io.BytesIO()
    holistic_header().write(header)
    rows, frames, video, t0 = [], [], 0, time.time()
    while len(rows) < n:
        rng = np.random.default_rng([seed, video])
        signer = make_signer(rng)
        for segment in range(min(int(rng.integers(4, 13)), n - len(rows))):
            sentence = random_sentence(rng)
            data, conf = render(sentence, signer, rng)
            uid = f"synv{video:04d}--{segment}"
            write_pose(out / "poses" / f"{uid}.pose", data, conf, header.getvalue())
            rows.append((uid, sentence.text))
            frames.append(len(data))
        video += 1
    with open(out / "iSign_v1.1.csv", "w", newline="") as f:
        csv.writer(f).writerows([("uid", "text"), *rows])
    return {"samples": len(rows), "videos": video, "signs": len(LEXICON),
            "mean_frames": round(float(np.mean(frames)), 1), "seconds": round(time.time() - t0, 2),
            "csv": str(out / "iSign_v1.1.csv")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a synthetic sign corpus in the iSign layout.")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=600, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="signers and sentences (the signs never change)")
    args = parser.parse_args()
    print(json.dumps(generate_corpus(args.out_dir, n=args.n, seed=args.seed)))
