"""One .pose file -> normalised keypoint features (T, F), and their training-time augmentation.

    PoseConfig    which points, which channels, how many frames; augmentation magnitudes
    LAYOUTS       the keypoint layouts read (by component and point NAME from the file's header)
    load_pose     read (pose-format) -> select points -> normalise -> frames kept: (T, F) float32
    augment       rotation, scale, shear, shift, noise, speed jitter, frame drop
    PoseError     a file this pipeline cannot use, with the reason `prepare` reports

Features: keypoints chosen by component and point name (upper body, both hands, a face subset),
each part normalised (body: shoulder midpoint and width; hands: wrist; face: nose; all scaled by
the shoulder width), x, y (optionally z) plus a presence channel: a point with zero confidence is
all zeros, never NaN. fps from the file, optional subsampling to a target fps, at most
`max_frames` frames (uniform subsampling beyond).

References:
  - pose-format (sign-language-processing/pose): the .pose binary format and its reader.
  - MediaPipe Holistic (Lugaresi et al. 2019; Grishchenko & Bazarevsky 2020): the 33 body,
    468 face-mesh and 2 x 21 hand landmarks; face points are named by mesh index "0".."467".
  - OpenPose BODY_25 + face 70 + hands 21: the `openpose` layout.

    x = load_pose("clip.pose", PoseConfig())      # (T, F) float32; raises PoseError
"""
import dataclasses
import math
import os
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader
from pose_format.utils.reader import BufferReader


@dataclass
class PoseConfig:
    layout: str = "auto"             # a key of LAYOUTS, or "auto": the first that fits (fitting_layouts)
    use_z: bool = False              # x, y (+ z) per point, then the presence channel
    place: bool = True               # each hand's (and the face's) place beside its shape: see part_slices
    fps: float | None = None         # subsample to at most this frame rate (None: keep the file's)
    max_frames: int = 300            # longer clips are subsampled uniformly to this length
    min_frames: int = 4              # shorter clips are skipped ("too few frames")
    # larger .pose files are skipped unread ("pose file too large"): a bound on what one file
    # costs a prepare worker's memory (docs/data.md, "Memory per worker")
    max_pose_mb: float = field(default=128.0, metadata={"runtime": True})
    # augmentation (train only): maximum magnitudes, each drawn uniformly per sample
    augment: bool = True
    aug_rotate_deg: float = 10.0
    aug_scale: float = 0.1
    aug_shear: float = 0.1
    aug_shift: float = 0.05          # points measured from the body (body_frame), not the shapes
    aug_noise: float = 0.01          # std of Gaussian noise on present points
    aug_speed: float = 0.2           # play 0.8x .. 1.2x as fast
    aug_frame_drop: float = 0.05     # probability of dropping each frame


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Part:
    component: str           # header component name
    points: tuple            # point names within the component, in feature order
    anchor: tuple            # points whose mean is the part's origin (body: the two shoulders)


MP_HAND = ("WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP",
           "INDEX_FINGER_DIP", "INDEX_FINGER_TIP", "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP",
           "MIDDLE_FINGER_TIP", "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
           "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP")
# MediaPipe face-mesh indices (mediapipe/python/solutions/face_mesh_connections.py):
MP_FACE = tuple(str(i) for i in (
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,   # outer lips: corners, every other point
    78, 81, 13, 311, 308, 402, 14, 178,                   # inner lips
    70, 63, 105, 66, 107, 300, 293, 334, 296, 336,        # eyebrows (right, left)
    33, 159, 133, 145, 263, 386, 362, 374,                # eyes: corners, upper and lower lid
    1, 2, 98, 327, 168))                                  # nose: tip, base, wings, bridge
OP_HAND = ("BASE", "T_STT", "T_BCMC", "T_MCP", "T_IP", "I_CMC", "I_MCP", "I_PIP", "I_DIP", "M_CMC", "M_MCP",
           "M_PIP", "M_DIP", "R_CMC", "R_MCP", "R_PIP", "R_DIP", "P_CMC", "P_MCP", "P_PIP", "P_DIP")
OP_FACE = tuple([f"FEB_{i}" for i in range(17, 27)] + [f"FE_{i}" for i in range(36, 48)]
                + [f"FN_{i}" for i in (27, 30, 31, 33, 35)] + [f"FLO_{i}" for i in range(48, 60)]
                + [f"FLI_{i}" for i in range(60, 68)])
LAYOUTS = {
    # MediaPipe Holistic (iSign's 576 points; the 543 of Google's Kaggle sets, without the world
    # landmarks; the 586 of a refined face mesh, whose first 468 points are the same): 9 + 21 + 21 + 43
    "holistic": {
        "body": Part("POSE_LANDMARKS", ("LEFT_SHOULDER", "RIGHT_SHOULDER", "NOSE", "LEFT_ELBOW", "RIGHT_ELBOW",
                                        "LEFT_WRIST", "RIGHT_WRIST", "LEFT_HIP", "RIGHT_HIP"),
                     ("LEFT_SHOULDER", "RIGHT_SHOULDER")),
        "left_hand": Part("LEFT_HAND_LANDMARKS", MP_HAND, ("WRIST",)),
        "right_hand": Part("RIGHT_HAND_LANDMARKS", MP_HAND, ("WRIST",)),
        "face": Part("FACE_LANDMARKS", MP_FACE, ("1",)),
    },
    # pose-format's reduce_holistic (POSE 8, FACE 128, hands: 178 points), as several sign-language
    # corpora and tools ship poses: no NOSE in the body, no nose in the face, so the face is
    # anchored between the inner eye corners. 8 + 21 + 21 + 38 points.
    "holistic_reduced": {
        "body": Part("POSE_LANDMARKS", ("LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW",
                                        "LEFT_WRIST", "RIGHT_WRIST", "LEFT_HIP", "RIGHT_HIP"),
                     ("LEFT_SHOULDER", "RIGHT_SHOULDER")),
        "left_hand": Part("LEFT_HAND_LANDMARKS", MP_HAND, ("WRIST",)),
        "right_hand": Part("RIGHT_HAND_LANDMARKS", MP_HAND, ("WRIST",)),
        "face": Part("FACE_LANDMARKS", MP_FACE[:-5], ("133", "362")),
    },
    "openpose": {   # OpenPose BODY_25 + face 70 + hands: 9 + 21 + 21 + 47 points
        "body": Part("pose_keypoints_2d", ("LShoulder", "RShoulder", "Nose", "LElbow", "RElbow", "LWrist", "RWrist",
                                           "LHip", "RHip"), ("LShoulder", "RShoulder")),
        "left_hand": Part("hand_left_keypoints_2d", OP_HAND, ("BASE",)),
        "right_hand": Part("hand_right_keypoints_2d", OP_HAND, ("BASE",)),
        "face": Part("face_keypoints_2d", OP_FACE, ("FN_30",)),
    },
}


class PoseError(ValueError):
    """A pose file this pipeline cannot use; `kind` is the reason reported by `prepare`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _layout(cfg: PoseConfig) -> dict:
    if cfg.layout not in LAYOUTS:
        known = ", ".join(LAYOUTS)
        raise ValueError(f"PoseConfig.layout={cfg.layout!r}: known layouts are {known}" +
                         (" (resolve 'auto' from a file first: fitting_layouts)" if cfg.layout == "auto" else ""))
    return LAYOUTS[cfg.layout]


def _point_index(header) -> dict[tuple[str, str], int]:
    """(component, point name) -> index among all the file's points."""
    offset, index = 0, {}
    for comp in header.components:
        index.update({(comp.name, p): offset + i for i, p in enumerate(comp.points)})
        offset += len(comp.points)
    return index


def fitting_layouts(header) -> list[str]:
    """The layouts whose every point the header has, in LAYOUTS order ("auto" takes the first)."""
    index = _point_index(header)
    return [name for name, lay in LAYOUTS.items()
            if all((part.component, p) in index for part in lay.values() for p in part.points)]


def part_slices(cfg: PoseConfig) -> dict[str, slice]:
    """Each part's slice of the feature points, in feature order: its layout points (its shape,
    relative to its anchor), then, for every part but the body when cfg.place, one more point:
    its anchor relative to the body's (where the part is)."""
    out, start = {}, 0
    for name, part in _layout(cfg).items():
        n = len(part.points) + (cfg.place and name != "body")
        out[name] = slice(start, start + n)
        start += n
    return out


def num_points(cfg: PoseConfig) -> int:
    return max(sl.stop for sl in part_slices(cfg).values())


def channels(cfg: PoseConfig) -> int:
    """Numbers per feature point: x, y (+ z), then presence (1 or 0)."""
    return 3 + cfg.use_z


def feature_dim(cfg: PoseConfig) -> int:
    """F = feature points * channels."""
    return num_points(cfg) * channels(cfg)


def body_frame(cfg: PoseConfig) -> np.ndarray:
    """(feature points,) bool: the points measured from the body's origin (the body part and the
    place points), which a shift of the whole signer moves; the others are relative to their part."""
    mask = np.zeros(num_points(cfg), bool)
    for name, sl in part_slices(cfg).items():
        if name == "body":
            mask[sl] = True
        elif cfg.place:
            mask[sl.stop - 1] = True
    return mask


# ----------------------------------------------------------------------------- one file -> features
def read_pose(path, max_mb: float | None = None):
    """Read a .pose file with pose-format; any failure is a PoseError naming the file. A file over
    max_mb is refused from its size and header before its body is read: reading costs memory in
    proportion to the file's size (docs/data.md, "Memory per worker")."""
    path = Path(path)
    size = _regular_file(path).st_size
    try:
        with open(path, "rb") as f:
            if max_mb and size > max_mb * 2**20:
                mb = f"{size / 2**20:.1f}" if size < 10 * 2**20 else f"{size / 2**20:,.0f}"
                raise PoseError("pose file too large", (
                    f"{path}: {mb} MB{_body_shape(f.read(1 << 20), size)}, beyond max_pose_mb="
                    f"{max_mb:g}, so not read (reading a file takes memory in proportion to its size, in each "
                    "prepare worker: docs/data.md, \"Memory per worker\"); raise max_pose_mb (data.py prepare "
                    "--max_pose_mb N, train.py --max_pose_mb=N) if the machine has that memory, or cut the clip"))
            reader = BufferReader(f.read())
        header = PoseHeader.read(reader)
        body = NumPyPoseBody.read(header, reader)
    except PoseError:
        raise
    except Exception as e:
        raise PoseError("unreadable pose file", f"{path}: not a readable .pose file ({type(e).__name__}: {e})") from e
    # pose-format v0.1 infers the frame count from the bytes left, so a truncated file "parses"
    # with the confidences read out of coordinate data; leftover bytes give it away.
    if reader.bytes_left():
        raise PoseError("unreadable pose file", f"{path}: {reader.bytes_left()} bytes after the last frame "
                                                "(truncated or corrupt file)")
    return header, body


def _regular_file(path: Path) -> os.stat_result:
    """The stat of the file path names (links followed); PoseError when it is missing or is not a
    regular file (a FIFO or a device would block a reader, or never end)."""
    link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PoseError("missing pose file", f"{path}: no such file{link}") from None
    except OSError as e:
        raise PoseError("unreadable pose file", f"{path}{link}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        what = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise PoseError("not a regular file", f"{path}{link}: {what}, not a regular file")
    if st.st_size == 0:
        raise PoseError("unreadable pose file", f"{path}{link}: empty file")
    return st


def _body_shape(head: bytes, size: int) -> str:
    """' (N frames x P people x K points)' from a file's first bytes (its header, and the body's
    first fields) and its size, as pose-format counts them (v0.1's frame count is a ushort that
    may have wrapped: the bytes left say it); '' when the header does not fit in `head`."""
    try:
        reader = BufferReader(head)
        header = PoseHeader.read(reader)
        points, dims, version = header.total_points(), header.num_dims(), round(header.version, 3)
        if version == 0.2:
            _, frames, people = reader.unpack_f("f"), reader.unpack_f("I"), reader.unpack_f("H")
        elif version == 0.1:
            _, _, people = reader.unpack_f("HHH")
            frames = (size - reader.read_offset) // max(people * points * (dims + 1) * 4, 1)
        else:
            return ""
    except Exception:  # only a description: the size alone refuses the file
        return ""
    who = "1 person" if people == 1 else f"{people} people"
    return f" ({frames:,} frames x {who} x {points} points)" if people and points else ""


def select_points(header, body, cfg: PoseConfig, path="<pose>") -> tuple[np.ndarray, np.ndarray]:
    """The layout's points by name, of the signer: coords (T, K, C) float32, present (T, K) bool.
    The signer is the person whose two shoulders (the body anchor) show in the most frames, the
    first one on a tie: a file may hold an empty first person beside the one who signs."""
    index = _point_index(header)
    wanted = [(part.component, p) for part in _layout(cfg).values() for p in part.points]
    missing = [w for w in wanted if w not in index]
    if missing:
        comps, by_comp = [c.name for c in header.components], {}
        for comp, p in missing:
            by_comp.setdefault(comp, []).append(p)
        names = "; ".join(f"{c}: {', '.join(ps)}" if c in comps else f"{c} (no such component)"
                          for c, ps in by_comp.items())
        fits = fitting_layouts(header)
        hint = f"; layout={fits[0]!r} fits it" if fits else ""
        raise PoseError("layout lacks points", f"{path}: layout {cfg.layout!r} needs points this file lacks: "
                                               f"{names} [file components: {', '.join(comps)}{hint}]")
    coords, conf = np.asarray(body.data.data), np.asarray(body.confidence)   # (T, P, N, D), (T, P, N)
    if coords.ndim != 4 or coords.shape[1] == 0:
        raise PoseError("too few frames", f"{path}: no person in the file (data shape {coords.shape})")
    dims = 3 if cfg.use_z else 2
    if coords.shape[-1] < dims:
        raise PoseError("layout lacks points", f"{path}: use_z needs 3-D points, the file has {coords.shape[-1]}-D")
    idx = np.array([index[w] for w in wanted])
    person = signer(header, coords, conf, cfg)
    xyz = coords[:, person, idx, :dims].astype(np.float32)                 # (T, K, C)
    present = (conf[:, person, idx] > 0) & np.isfinite(xyz).all(-1)        # (T, K)
    return xyz, present


def signer(header, coords: np.ndarray, conf: np.ndarray, cfg: PoseConfig) -> int:
    """The person (of coords (T, P, N, D), conf (T, P, N)) whose two shoulders, the layout's
    body anchor, show in the most frames; the first one on a tie."""
    index, body = _point_index(header), _layout(cfg)["body"]
    anchors = [index[(body.component, p)] for p in body.anchor]
    shown = ((conf[:, :, anchors] > 0) & np.isfinite(coords[:, :, anchors]).all(-1)).all(-1).sum(0)  # (P,)
    return int(np.argmax(shown))


def detect_layout(header, path="<pose>") -> str:
    """The first layout that fits the header; PoseError when none does."""
    fits = fitting_layouts(header)
    if not fits:
        comps = ", ".join(f"{c.name} ({len(c.points)})" for c in header.components)
        raise PoseError("layout lacks points", f"{path}: no known layout fits its points [components: {comps}; "
                                               f"known layouts: {', '.join(LAYOUTS)}]")
    return fits[0]


def frame_indices(n: int, fps: float, cfg: PoseConfig) -> np.ndarray:
    """Frames kept: every (fps / cfg.fps)-th when the file is faster than cfg.fps, then at most
    cfg.max_frames spread uniformly."""
    step = fps / cfg.fps if cfg.fps and fps and fps > cfg.fps else 1.0
    idx = np.floor(np.arange(0, n, step)).astype(np.int64)
    if len(idx) > cfg.max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, cfg.max_frames).round().astype(np.int64)]
    return idx


def normalise(xyz: np.ndarray, present: np.ndarray, cfg: PoseConfig, path="<pose>") -> np.ndarray:
    """(T, K, C) layout points + (T, K) presence -> (T, F) features (part_slices' order): each part
    relative to its anchor, the place of each part but the body (its anchor relative to the
    shoulder midpoint), all divided by the median shoulder width. A point is zeros when it, or an
    anchor it is measured from, is missing in that frame."""
    T, K, C = xyz.shape
    layout, slices = _layout(cfg), part_slices(cfg)
    body = layout["body"]
    ls, rs = (body.points.index(a) for a in body.anchor)       # the body is the first part
    both = present[:, ls] & present[:, rs]
    width = np.linalg.norm(xyz[:, ls, :2] - xyz[:, rs, :2], axis=-1)       # (T,)
    scale = float(np.median(width[both])) if both.any() else 0.0
    if not scale > 0:   # also catches NaN
        raise PoseError("too few frames", f"{path}: no frame shows both shoulders (cannot normalise)")
    body_origin = (xyz[:, ls] + xyz[:, rs])[:, None] / 2                    # (T, 1, C)
    out = np.zeros((T, num_points(cfg), C + 1), np.float32)
    start = 0                                                              # into the layout points
    for name, part in layout.items():
        src = slice(start, start + len(part.points))
        start = src.stop
        a = [src.start + part.points.index(p) for p in part.anchor]
        origin, origin_ok = xyz[:, a].mean(1, keepdims=True), present[:, a].all(1, keepdims=True)   # (T, 1, C|1)
        dst = slices[name]
        shape = slice(dst.start, dst.start + len(part.points))
        ok = present[:, src] & origin_ok                                   # (T, k)
        out[:, shape, :C] = np.where(ok[..., None], (xyz[:, src] - origin) / scale, 0.0)
        out[:, shape, C] = ok
        if name != "body" and cfg.place:
            ok = origin_ok & both[:, None]                                 # (T, 1)
            out[:, dst.stop - 1, :C] = np.where(ok, (origin - body_origin)[:, 0] / scale, 0.0)
            out[:, dst.stop - 1, C] = ok[:, 0]
    return out.reshape(T, -1)


def window_frames(n: int, fps: float, window_ms: tuple[int, int], path="<pose>") -> slice:
    """The frames of a clip's window (start, end) in ms: from floor(start * fps / 1000) to
    ceil(end * fps / 1000); an end of 0, or past the clip, is the clip's end (as a sign
    dictionary's index.csv means them). A start past the clip is a PoseError."""
    start, end = window_ms
    first = math.floor(start * fps / 1000) if fps > 0 else 0
    stop = n if end <= 0 or fps <= 0 else min(n, math.ceil(end * fps / 1000))
    if first >= stop:
        raise PoseError("window outside the clip", f"{path}: window {start}-{end} ms is past the clip's end "
                                                   f"({n} frames at {fps:g} fps)")
    return slice(first, stop)


def load_pose(path, cfg: PoseConfig, window_ms: tuple[int, int] | None = None) -> np.ndarray:
    """One .pose file -> normalised features (T, F) float32, T <= cfg.max_frames. Raises PoseError.
    With layout "auto" the file's own first fitting layout is used (a corpus resolves it once:
    corpus.resolve_layout). window_ms: only that part of the file (window_frames), as a sign
    dictionary's row names it."""
    header, body = read_pose(path, cfg.max_pose_mb)
    if cfg.layout == "auto":
        cfg = dataclasses.replace(cfg, layout=detect_layout(header, path))
    xyz, present = select_points(header, body, cfg, path)
    if window_ms is not None:
        keep = window_frames(len(xyz), float(body.fps), window_ms, path)
        xyz, present = xyz[keep], present[keep]
    idx = frame_indices(len(xyz), float(body.fps), cfg)
    if len(idx) < cfg.min_frames:
        raise PoseError("too few frames", f"{path}: {len(idx)} frames, need at least {cfg.min_frames}")
    return normalise(xyz, present, cfg, path)[idx]   # the scale is a median over all frames


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32)


def _noise(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Unit Gaussian noise: a random window of a fixed bank of 2**20 draws. Fresh draws would
    cost more than the rest of `augment` together (BENCHMARKS.md, "Data loading")."""
    bank, n = _noise_bank(), math.prod(shape)
    o = int(rng.integers(0, len(bank) - n))
    return bank[o:o + n].reshape(shape)


def augment(x: np.ndarray, cfg: PoseConfig, rng: np.random.Generator) -> np.ndarray:
    """Training-time augmentation of features (T, F): speed jitter and frame drop in time; one
    random rotation + shear + scale of every part, a shift of the body, noise in space."""
    T = len(x)
    n = int(np.clip(round(T / rng.uniform(1 - cfg.aug_speed, 1 + cfg.aug_speed)), 1, cfg.max_frames))
    idx = np.linspace(0, T - 1, n).round().astype(np.int64)
    keep = rng.random(n) >= cfg.aug_frame_drop
    if keep.sum() >= max(cfg.min_frames, n // 2):
        idx = idx[keep]
    x = x[idx]                                                             # (T', F), a copy
    p = x.reshape(len(idx), -1, channels(cfg))                             # (T', K, C+1) view
    X, Y, present = p[..., 0], p[..., 1], p[..., -1]                       # (T', K) views
    th = math.radians(rng.uniform(-cfg.aug_rotate_deg, cfg.aug_rotate_deg))
    shear = rng.uniform(-cfg.aug_shear, cfg.aug_shear)
    s = 1 + rng.uniform(-cfg.aug_scale, cfg.aug_scale)
    (a, b), (c, d) = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ [[1, shear], [0, 1]]
    # one plane per coordinate: numpy is several times slower on (..., 2)-shaped broadcasts
    X2, Y2 = np.float32(a) * X + np.float32(b) * Y, np.float32(c) * X + np.float32(d) * Y
    body = body_frame(cfg)
    dx, dy = rng.uniform(-cfg.aug_shift, cfg.aug_shift, 2)
    X2[:, body] += np.float32(dx)
    Y2[:, body] += np.float32(dy)
    X2 += np.float32(cfg.aug_noise) * _noise(rng, X2.shape)
    Y2 += np.float32(cfg.aug_noise) * _noise(rng, Y2.shape)
    p[..., 0], p[..., 1] = X2 * present, Y2 * present                     # missing points stay zero
    return x.reshape(len(idx), -1)
