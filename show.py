"""A clip as a picture: its skeleton as in the file and as the pose encoder sees it, animated;
given a trained run, what the model reads from it.

    python data.py show CLIP.pose --out clip.gif                   # or clip.mp4
    python data.py show CLIP.pose --out clip.mp4 --run runs/tiny   # + the translation and the words

Left, "as in the file": the layout's parts (body, both hands, face) of the signer in the file's
own coordinates (pixels; the whole component: all 33 body points, the whole face mesh as dots,
limbs from the file's header). Right, "as the encoder sees it": the features poses.load_pose
gives (each part normalised on its anchor, its place added back, in shoulder widths; the same
points the model reads). A point missing in a frame is not drawn, and a part with no point in a
frame is named under the panel ("missing: right hand"), so a hand that MediaPipe or OpenPose
lost shows as lost. With --run, below: the translation, and along a timeline of the clip the word
head's strongest word per encoder token (translator.PoseEncoder.words; the run's
config.aux_vocabulary) with its probability, and a cursor at the
frame shown. Hands: left blue, right vermilion (Okabe & Ito's colour-blind-safe palette).

Drawn with matplotlib; .gif written with Pillow (matplotlib's own dependency), .mp4 (H.264) with
imageio-ffmpeg, which ships its own ffmpeg: pip install -r requirements-formats.txt.
References: pose-format (its header's limbs); MediaPipe Holistic and OpenPose keypoint layouts.
"""
import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import poses
from poses import PoseConfig, PoseError

COLORS = {"body": "#555555", "face": "#009e73", "left_hand": "#0072b2", "right_hand": "#d55e00"}
CURSOR, PROBABILITY = "#cc79a7", "#999999"
WIDTH, HEIGHT, TIMELINE, DPI = 800, 400, 160, 100   # pixels (multiples of 16 for H.264); with a run, + TIMELINE
MAX_LIMBS = 200        # a component with more limbs (the face mesh's 2,556) is drawn as dots


class ShowExtraMissing(RuntimeError):
    """matplotlib (or imageio-ffmpeg, for .mp4) is not installed."""


@dataclass
class Track:
    """One part in one panel over time: points (T, n, 2), NaN where missing, and its limbs."""
    xy: np.ndarray
    limbs: list


@dataclass
class Panel:
    title: str
    tracks: dict[str, Track]

    def missing(self, t: int) -> list[str]:
        return [name for name, tr in self.tracks.items() if not np.isfinite(tr.xy[t]).all(-1).any()]

    def bounds(self) -> tuple[float, float, float, float]:
        """x0, x1, y0, y1 holding every part over all frames (each part's 0.5-99.5 percentiles: a
        tracking glitch does not shrink the rest, and the face's many points do not crop an arm)."""
        boxes = []
        for tr in self.tracks.values():
            pts = tr.xy.reshape(-1, 2)
            pts = pts[np.isfinite(pts).all(-1)]
            if len(pts):
                boxes += [np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)]
        if not boxes:
            return 0.0, 1.0, 0.0, 1.0
        (x0, y0), (x1, y1) = np.min(boxes, axis=0), np.max(boxes, axis=0)
        pad = 0.08 * max(x1 - x0, y1 - y0, 1e-6)
        return x0 - pad, x1 + pad, y0 - pad, y1 + pad


@dataclass
class Reading:
    """What a trained run reads from the clip: its translation, and per encoder token its time
    (s), the word head's strongest word and that word's probability."""
    translation: str
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    words: list = field(default_factory=list)
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0))


# ----------------------------------------------------------------------------- the two views
def _limbs(component, names: list[str]) -> list[tuple[int, int]]:
    """The header's limbs of a component between two of `names`, as indices into names."""
    where = {n: i for i, n in enumerate(names)}
    pairs = [(component.points[a], component.points[b]) for a, b in component.limbs]
    return [(where[a], where[b]) for a, b in pairs if a in where and b in where]


def file_panel(header, body, cfg: PoseConfig) -> Panel:
    """The signer's points of each layout part's component, in the file's coordinates."""
    coords, conf = np.asarray(body.data.data), np.asarray(body.confidence)    # (T, P, N, D), (T, P, N)
    person = poses.signer(header, coords, conf, cfg)
    comps, start, offset = {c.name: c for c in header.components}, {}, 0
    for c in header.components:
        start[c.name], offset = offset, offset + len(c.points)
    tracks = {}
    for name, part in poses.LAYOUTS[cfg.layout].items():
        comp = comps[part.component]
        sl = slice(start[comp.name], start[comp.name] + len(comp.points))
        xy = coords[:, person, sl, :2].astype(np.float32)
        seen = (conf[:, person, sl] > 0) & np.isfinite(xy).all(-1)
        limbs = _limbs(comp, list(comp.points)) if len(comp.limbs) <= MAX_LIMBS else []
        tracks[name] = Track(np.where(seen[..., None], xy, np.nan), limbs)
    return Panel("as in the file (pixels)", tracks)


def encoder_panel(header, body, cfg: PoseConfig, path: str) -> Panel:
    """The features the encoder reads (poses.normalise), each part drawn where it is: its shape
    plus its place (cfg.place), in shoulder widths from the shoulders' midpoint."""
    xyz, present = poses.select_points(header, body, cfg, path)
    T, channels = len(xyz), poses.channels(cfg)
    feats = poses.normalise(xyz, present, cfg, path).reshape(T, -1, channels)    # (T, K, C+1)
    comps, tracks = {c.name: c for c in header.components}, {}
    for name, sl in poses.part_slices(cfg).items():
        part = poses.LAYOUTS[cfg.layout][name]
        shape = feats[:, sl.start:sl.start + len(part.points)]
        xy, seen = shape[..., :2].copy(), shape[..., -1] > 0
        if name != "body" and cfg.place:
            place = feats[:, sl.stop - 1]
            xy += place[:, None, :2]
            seen &= place[:, None, -1] > 0
        tracks[name] = Track(np.where(seen[..., None], xy, np.nan), _limbs(comps[part.component], list(part.points)))
    return Panel("as the encoder sees it (shoulder widths)", tracks)


# ----------------------------------------------------------------------------- drawing
def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ShowExtraMissing("data.py show draws with matplotlib: pip install -r requirements-formats.txt") from e
    return Figure, FigureCanvasAgg, LineCollection


class Picture:
    """The figure, drawn once and updated frame by frame; `frame(t)` is an (H, W, 3) uint8 image.
    `axes` are the panels' matplotlib axes (their transData maps a panel's points to pixels)."""

    def __init__(self, panels: list[Panel], fps: float, layout: str, reading: Reading | None = None):
        Figure, FigureCanvasAgg, LineCollection = _matplotlib()
        self.panels, self.fps, self.layout, self.reading = panels, fps, layout, reading
        self.frames = len(next(iter(panels[0].tracks.values())).xy)
        self.height = HEIGHT + (TIMELINE if reading else 0)
        self.fig = Figure(figsize=(WIDTH / DPI, self.height / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.fig)   # draws into memory: no display, no pyplot state
        self.axes, self.artists, self.labels = [], [], []
        bottom = self.height - HEIGHT                           # pixels: the panels fill the top HEIGHT
        for k, panel in enumerate(panels):
            ax = self.fig.add_axes([0.01 + 0.5 * k, (bottom + 24) / self.height, 0.48, (HEIGHT - 56) / self.height],
                                   frameon=False)
            x0, x1, y0, y1 = panel.bounds()
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)                                 # image coordinates: y down
            ax.set_aspect("equal", adjustable="box")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(panel.title, fontsize=9)
            parts = {}
            for name, tr in panel.tracks.items():
                size = 1.0 if name == "face" else 2.5
                lines = LineCollection([], colors=COLORS[name], linewidths=1.5, antialiaseds=False)
                ax.add_collection(lines)
                dots, = ax.plot([], [], "o", color=COLORS[name], markersize=size, antialiased=False)
                parts[name] = (lines, dots)
            self.axes.append(ax)
            self.artists.append(parts)
            self.labels.append(self.fig.text(0.25 + 0.5 * k, (bottom + 6) / self.height, "", ha="center",
                                             fontsize=8, color="black"))
        self.counter = self.fig.text(0.5, 0.995, "", ha="center", va="top", fontsize=8, color="black")
        self.cursor = self._timeline() if reading else None

    def _timeline(self):
        r = self.reading
        ax = self.fig.add_axes([0.06, 32 / self.height, 0.9, (TIMELINE - 58) / self.height])
        ax.set_xlim(0, max(self.frames / self.fps, 1e-3))
        ax.set_ylim(0, 1.45)
        ax.set_yticks([0, 1])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds", fontsize=7, labelpad=1)
        text = r.translation if len(r.translation) <= 110 else r.translation[:107] + "..."
        ax.set_title(f"translation: {text}", fontsize=8, loc="left")
        if len(r.times):
            ax.plot(r.times, r.probs, color=PROBABILITY, linewidth=1)
            last = None
            for t, w, p in zip(r.times, r.words, r.probs):
                if p >= 0.5 and w != last:   # the strongest word where the head is sure of it, once per run
                    ax.text(t, min(p, 1.0) + 0.05, w, fontsize=7, rotation=30, color="black")
                last = w if p >= 0.5 else None
        else:
            ax.text(0.5, 0.5, "no word head in this run", transform=ax.transAxes, ha="center", fontsize=8)
        return ax.axvline(0, color=CURSOR, linewidth=2, antialiased=False)

    def frame(self, t: int) -> np.ndarray:
        for panel, parts, label in zip(self.panels, self.artists, self.labels):
            for name, tr in panel.tracks.items():
                lines, dots = parts[name]
                xy = tr.xy[t]
                ok = np.isfinite(xy).all(-1)
                lines.set_segments([xy[[a, b]] for a, b in tr.limbs if ok[a] and ok[b]])
                dots.set_data(xy[ok, 0], xy[ok, 1])
            gone = [name.replace("_", " ") for name in panel.missing(t)]
            label.set_text(f"missing: {', '.join(gone)}" if gone else "")
        self.counter.set_text(f"frame {t + 1} / {self.frames}   {t / self.fps:.2f} s")
        if self.cursor is not None:
            self.cursor.set_xdata([t / self.fps, t / self.fps])
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------- writing
def _palette():
    """GIF frames share one palette: white, greys for text, and the drawing's exact colours."""
    from PIL import Image
    colors = [(255, 255, 255), (0, 0, 0)] + [(g, g, g) for g in range(8, 256, 8)]
    colors += [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (*COLORS.values(), CURSOR, PROBABILITY)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([v for c in colors for v in c] + [255] * (768 - 3 * len(colors)))
    return pal


def write_gif(frames, out: Path, fps: float) -> None:
    from PIL import Image
    pal = _palette()
    images = [Image.fromarray(f).quantize(palette=pal, dither=Image.Dither.NONE) for f in frames]
    tmp = out.with_name(out.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    tmp.replace(out)


def write_mp4(frames, out: Path, fps: float) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ShowExtraMissing(".mp4 needs imageio-ffmpeg (it ships ffmpeg): pip install -r requirements-formats.txt "
                               "(or write a .gif)") from e
    tmp = out.with_name(out.stem + ".tmp.mp4")
    writer = None
    for f in frames:
        if writer is None:
            writer = imageio_ffmpeg.write_frames(str(tmp), (f.shape[1], f.shape[0]), fps=fps, codec="libx264",
                                                 pix_fmt_out="yuv420p", quality=8, macro_block_size=16,
                                                 ffmpeg_log_level="error")
            writer.send(None)
        writer.send(np.ascontiguousarray(f))
    writer.close()
    tmp.replace(out)


def picture(pose_path, cfg: PoseConfig, reading: Reading | None = None) -> Picture:
    """The picture of a clip: its two panels (layout "auto": the file's own) and the reading."""
    header, body = poses.read_pose(pose_path)
    if cfg.layout == "auto":
        cfg = dataclasses.replace(cfg, layout=poses.detect_layout(header, pose_path))
    panels = [file_panel(header, body, cfg), encoder_panel(header, body, cfg, str(pose_path))]
    return Picture(panels, float(body.fps) or 25.0, cfg.layout, reading)


def show(pose_path, out, run=None, layout: str = "auto", model_dir: str | None = None) -> dict:
    """Write the picture of pose_path to out (.gif or .mp4); returns a summary."""
    out = Path(out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--out {out}: write a .gif or an .mp4")
    _matplotlib()
    reading, cfg = read_with_run(run, pose_path, model_dir) if run else (None, PoseConfig(layout=layout))
    pic = picture(pose_path, cfg, reading)
    (write_gif if out.suffix.lower() == ".gif" else write_mp4)((pic.frame(t) for t in range(pic.frames)), out, pic.fps)
    summary = {"out": str(out), "frames": pic.frames, "fps": pic.fps, "size": [WIDTH, pic.height], "layout": pic.layout}
    if reading:
        summary.update(translation=reading.translation, words=sorted({w for w, p in zip(reading.words, reading.probs)
                                                                       if p >= 0.5}))
    return summary


# ----------------------------------------------------------------------------- a trained run
def read_with_run(run, pose_path, model_dir: str | None = None) -> tuple[Reading, PoseConfig]:
    """The run's translation of the clip and its word head's strongest word per encoder token."""
    import torch

    import checkpoints
    import config
    import eval as run_eval
    ckpt = checkpoints.pick(Path(run))
    cfg = config.load_run_config(ckpt)
    cfg.model_dir = model_dir or cfg.model_dir
    pcfg = cfg.data.pose
    # the features first: a file of another layout is an error before any model is loaded
    feats = torch.from_numpy(poses.load_pose(pose_path, pcfg))[None]                     # (1, T', F)
    base_dir = run_eval.check_base(ckpt, cfg)
    tok, model, device = run_eval.load_run_model(ckpt, cfg, base_dir)
    translation = run_eval.translate_file(model, tok, cfg.data, str(pose_path), cfg.max_new_tokens, 1, device)
    feats = feats.to(device)
    with torch.no_grad():
        _, _, logits = model.encoder(feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=device))
    if logits is None:
        return Reading(translation), pcfg
    vocab = cfg.aux_vocabulary   # the head's words, saved with the run (lexicon.head_vocabulary)
    probs = torch.sigmoid(logits[0, :, :len(vocab)].float()).cpu().numpy()                  # (tokens, words)
    _, body = poses.read_pose(pose_path)
    kept = poses.frame_indices(len(body.data), float(body.fps), pcfg)                       # the encoder's frames
    centre = np.minimum(4 * np.arange(len(probs)) + 2, len(kept) - 1)                        # 4 frames per token
    return Reading(translation, kept[centre] / float(body.fps), [vocab[i] for i in probs.argmax(1)],
                   probs.max(1)), pcfg


# ----------------------------------------------------------------------------- command line
def add_command(sub) -> None:
    """`data.py show CLIP.pose --out clip.gif [--run RUN]` on data.py's subcommands."""
    p = sub.add_parser("show", help="a clip as an animated picture (.gif, .mp4): as in the file, as the encoder "
                                    "sees it, and with --run what a trained model reads (show.py)")
    p.add_argument("pose", help="a .pose file")
    p.add_argument("--out", required=True, help="clip.gif or clip.mp4")
    p.add_argument("--run", help="a trained run (or one of its checkpoints): add its translation and words")
    p.add_argument("--layout", default="auto", choices=["auto", *poses.LAYOUTS], help="without --run (default: auto)")
    p.add_argument("--model_dir", help="with --run: the run's base model, if it moved")
    p.set_defaults(command=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        summary = show(args.pose, args.out, args.run, args.layout, args.model_dir)
    except (PoseError, ShowExtraMissing, ValueError, OSError) as e:   # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
