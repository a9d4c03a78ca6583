"""Sign corpora: rows of (pose file, text, split) -> a float16 feature cache -> training batches.

What this is:
  - Rows: corpus.py reads the corpus (an iSign CSV or a JSONL manifest) and its splits
    (`corpus.read_rows`); bad rows keep their problem for `prepare` to skip.
  - Features of one file: poses.py (`poses.load_pose`, `PoseConfig` inside DataConfig.pose).
  - Cache: `prepare` converts every row once, in parallel, into features.npy (all frames, float16,
    memory-mapped) + index.json (offsets, texts, splits). Resumable (rows are committed in
    shards), one builder at a time (CACHE/.lock), rebuilt when the CSV or a pose file changes or
    its files are not what DONE recorded (a damaged cache), never replaced by a build of other
    settings without force=True (DataError), and never stopped by a bad row or file: skipped
    rows (a malformed CSV/JSONL row too) go to skipped.jsonl with their reason.
  - Batches from the cache: batches.py.

Run:
    python data.py synth data/synth --n 500 --seed 0       # synthetic corpus (synth/demo.py)
    python data.py prepare data/synth --workers 2          # cache; last line: JSON summary
    python data.py videos my_videos data/mine              # videos -> .pose files + CSV (video.py)
    python data.py import how2sign SRC OUT; python data.py show CLIP.pose --out clip.gif   # importers/, show.py
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

import importers
import poses
import processes
import show
from corpus import DataError, Row, read_rows, resolve_layout, source_files, splits_source
from poses import PoseConfig, PoseError

FEATURE_VERSION = 2  # bump when the feature computation changes: every cache becomes stale
SHARD_ROWS = 256     # rows per committed shard while preparing (the unit of resumption)


@dataclass
class DataConfig:
    """Which corpus (corpus.py reads its rows), the cache, the chat prompt and the features."""
    data_dir: str = field(default="data/synth", metadata={"runtime": True})
    csv: str = "iSign_v1.1.csv"      # columns uid,text; or a .jsonl manifest {"pose","text","split"}
    pose_dir: str = "poses"          # {data_dir}/{pose_dir}/{uid}.pose
    cache_dir: str | None = field(default=None, metadata={"runtime": True})   # default {data_dir}/cache
    split_ratios: tuple = (0.8, 0.1, 0.1)   # train/val/test, by video, when no split CSVs exist
    split_seed: int = 0
    system_prompt: str = "You are a sign language interpreter. You translate sign language into English."
    user_prompt: str = "{pose}\nTranslate this {language} into English."   # {pose}: the placeholder
    source_language: str = "Indian Sign Language"
    max_answer_tokens: int = 128     # longer answers are cut to this many tokens (SignDataset.truncated)
    lexicon_dir: str = field(default="", metadata={"runtime": True})   # a sign dictionary, DIR/index.csv (lexicon.py)
    lexicon_mix: tuple = (0.5, 0.1)  # with one: share of stitched sentences in the first and the last epoch
    pose: PoseConfig = field(default_factory=PoseConfig)   # features of one file (poses.py)


# ----------------------------------------------------------------------------- the cache
def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.data_dir) / "cache"


def signature(cfg: DataConfig) -> dict:
    """What the cache depends on: the feature settings (the layout resolved: prepare, or the
    run's config) and the corpus files (size, mtime)."""
    if cfg.pose.layout == "auto":
        raise ValueError("signature: layout 'auto' must be resolved first (corpus.resolve_layout)")
    keys = ("csv", "pose_dir", "split_ratios", "split_seed")
    settings = {k: getattr(cfg, k) for k in keys}
    settings.update({k: getattr(cfg.pose, k) for k in ("layout", "use_z", "place", "fps", "max_frames", "min_frames")})
    settings["split_ratios"] = list(settings["split_ratios"])
    settings["version"] = FEATURE_VERSION
    sources = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in source_files(cfg)]
    return {"settings": settings, "sources": sources,
            "hash": hashlib.sha1(json.dumps([settings, sources]).encode()).hexdigest()[:16]}


def is_fresh(cfg: DataConfig) -> bool:
    """True when the cache is complete, undamaged and built from the current corpus and settings.
    A run passes its resolved layout; "auto" from other callers is resolved here, from the corpus."""
    done = cache_dir(cfg) / "DONE"
    try:
        same = json.loads(done.read_text())["hash"] == signature(resolve_layout(cfg))["hash"]
    except (FileNotFoundError, ValueError, KeyError):
        return False
    return same and damage(cfg) is None


CACHE_FILES = ("features.npy", "index.json", "skipped.jsonl", "poses.json")   # their sizes are in DONE


def damage(cfg: DataConfig) -> str | None:
    """What is wrong with a complete cache's files (None: nothing seen): a size other than DONE
    recorded (a full disk, a copy cut short), or a features.npy shorter than its own header says
    (a cache too old to record sizes). Cheap: a few stat calls and one header read."""
    out = cache_dir(cfg)
    try:
        recorded = json.loads((out / "DONE").read_text()).get("files", {})
        for name, size in recorded.items():
            if (out / name).stat().st_size != size:
                return f"{out / name} has {(out / name).stat().st_size} bytes, {out / 'DONE'} records {size}"
        np.load(out / "features.npy", mmap_mode="r")   # maps the file: shorter than its header says fails
    except FileNotFoundError as e:
        return f"{e.filename} is missing" if (out / "DONE").is_file() else None
    except (OSError, ValueError) as e:
        return f"{out / 'features.npy'}: {e}"
    return None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:                   # np.save(path) would append ".npy" to "x.npy.tmp"
        np.save(f, arr)


def _stat(path: str) -> list[int]:
    """[size, mtime_ns] of a file, [] when there is none: what tells that a pose file was replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def _convert(item: tuple[int, str, tuple | None], cfg: DataConfig):
    """Worker: (row number, pose path, window in ms or None) -> (row number, float16 features or
    None, reason, detail, the file's stat before it was read)."""
    i, path, window = item
    stat = _stat(path)
    try:
        x = poses.load_pose(path, cfg.pose) if window is None else poses.load_pose(path, cfg.pose, window)
    except PoseError as e:
        return i, None, e.kind, str(e), stat
    except Exception as e:  # a bug or an odd file must not stop a 118k-file run: report it
        return i, None, "unreadable pose file", f"{path}: {type(e).__name__}: {e}", stat
    with np.errstate(over="ignore"):
        f16 = x.astype(np.float16)
    if not np.isfinite(f16).all():  # beyond float16's 65504 the cache would hold inf, and every batch a NaN loss
        return i, None, "value too large", (f"{path}: a feature reaches {np.abs(x).max():.3g}, beyond the "
                                            "float16 cache's 65504 (a coordinate far outside the frame?)"), stat
    return i, f16, "", "", stat


def _commit_shard(shards: Path, results: list) -> None:
    """Write one shard: its frames (.npy) first, then its row list (.json), the commit marker."""
    if not results:
        return
    k = len(list(shards.glob("shard-*.json")))
    feats = [f for _, f, *_ in results if f is not None]
    arr = np.concatenate(feats) if feats else np.zeros((0, 0), np.float16)
    _write_atomic(shards / f"shard-{k:06d}.npy", lambda p: _save_npy(p, arr))
    rows = [[i, 0 if f is None else len(f), reason, detail, stat] for i, f, reason, detail, stat in results]
    _write_atomic(shards / f"shard-{k:06d}.json", lambda p: p.write_text(json.dumps(rows)))
    results.clear()


def _refuse_other_settings(out: Path, sig: dict) -> None:
    """A cache (complete or unfinished) of other settings may be hours of work: only force replaces it."""
    for path, what in ((out / "DONE", "a pose cache"), (out / "shards" / "signature.json", "an unfinished pose cache")):
        try:
            there = json.loads(path.read_text())["settings"]
        except (OSError, ValueError, KeyError):
            continue
        diff = [f"{k}: {there.get(k)!r} there, {v!r} now" for k, v in sig["settings"].items() if there.get(k) != v]
        if diff:
            raise DataError(f"{out} holds {what} built with other settings ({'; '.join(diff)}). To keep it, "
                            "build this one in another folder (train.py --cache_dir=DIR, data.py prepare --cache "
                            "DIR); to replace it, run data.py prepare with --force, or delete the folder")


def changed_poses(cfg: DataConfig, rows: list[Row] | None = None) -> list[str]:
    """Pose files replaced, added or removed (size or mtime) since the complete cache read them."""
    path = cache_dir(cfg) / "poses.json"
    if not path.is_file():
        return []
    then = json.loads(path.read_text())
    rows = read_rows(cfg) if rows is None else rows
    return [r.pose for r, s in zip(rows, then) if s is not None and s != _stat(r.pose)]


def _usable(summary: dict, out: Path) -> dict:
    """The summary, unless no row at all could be used: then the first reason, as an error."""
    if summary["ok"]:
        return summary
    lines = (out / "skipped.jsonl").read_text().splitlines()
    example = f"; e.g. {json.loads(lines[0])['detail']}" if lines else ""
    raise DataError(f"no row of the corpus could be used ({summary['reasons'] or 'it has no rows'}{example}); "
                    f"every skipped row and its reason is in {out / 'skipped.jsonl'}")


def rebuild_command(cfg: DataConfig) -> str:
    """The command that builds this cache again from scratch."""
    args = [cfg.data_dir]
    args += ["--cache", cfg.cache_dir] if cfg.cache_dir else []
    args += ["--csv", cfg.csv] if cfg.csv != DataConfig.csv else []
    args += ["--layout", cfg.pose.layout] if cfg.pose.layout != "auto" else []
    return f"python data.py prepare {' '.join(map(str, args))} --force"


def prepare(cfg: DataConfig, workers: int | None = None, progress: bool = True, force: bool = False) -> dict:
    """Build (or finish) the cache; returns {"ok": N, "skipped": M, "reasons": {...}, ...}.

    Built again when the corpus files changed, or a pose file did (size or mtime); a cache of
    other settings is refused (DataError) unless force=True, which also rebuilds in any case.
    One builder at a time: the others wait for it (OUT/.lock), then find the cache done."""
    out = cache_dir(cfg)
    source_files(cfg)                              # no corpus there: an error before any folder is made
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = processes.hold_lock(out / ".lock", wait=lambda holder: print(
            f"waiting: another process is building the pose cache in {out} ({holder}; lock file {out / '.lock'}); "
            "this one goes on when it is done", file=sys.stderr, flush=True))
    except OSError as e:
        raise DataError(f"cannot write in the pose cache folder {out} ({e.strerror or e}); build the cache in "
                        "a folder you can write: data.py prepare --cache DIR, train.py --cache_dir=DIR") from None
    try:
        return _build(cfg, workers, progress, force)
    finally:
        os.close(lock)


def _build(cfg: DataConfig, workers: int | None, progress: bool, force: bool) -> dict:
    """prepare's work, under the cache's lock."""
    t0, out, rows = time.time(), cache_dir(cfg), read_rows(cfg)
    cfg = resolve_layout(cfg, rows)   # "auto": decided here, once, and recorded in the cache
    sig = signature(cfg)
    if not force:
        _refuse_other_settings(out, sig)
        if is_fresh(cfg):
            changed = changed_poses(cfg, rows)
            if not changed:
                return _usable(json.loads((out / "DONE").read_text())["summary"], out)
            print(f"{len(changed)} pose files changed since the cache was built (e.g. {changed[0]}): "
                  "building it again", file=sys.stderr)
        elif why := damage(cfg):
            print(f"the pose cache in {out} is damaged ({why}): building it again", file=sys.stderr)
    shards = out / "shards"
    progress_file = shards / "signature.json"
    if shards.exists() and (force or not progress_file.is_file()
                            or json.loads(progress_file.read_text())["hash"] != sig["hash"]):
        shutil.rmtree(shards)                     # left by an older corpus, or forced: start over
    shards.mkdir(parents=True, exist_ok=True)
    progress_file.write_text(json.dumps(sig))
    (out / "DONE").unlink(missing_ok=True)
    done = {r[0] for f in shards.glob("shard-*.json") for r in json.loads(f.read_text())}
    first, results, todo = {}, [], []             # first: uid -> the row that used it first
    for i, r in enumerate(rows):
        duplicate = not r.problem and r.uid in first
        if not r.problem:
            first.setdefault(r.uid, r)
        if i in done:
            continue
        if r.problem:
            results.append((i, None, "bad corpus row", r.problem, None))
        elif not r.text:
            results.append((i, None, "empty text", f"{r.uid}: empty text", None))
        elif duplicate:
            results.append((i, None, "duplicate uid", f"{r.where}: uid {r.uid!r} is already used by "
                                                      f"{first[r.uid].where}; give each clip its own uid", None))
        else:
            todo.append((i, r.pose, r.window))
    workers = workers or os.cpu_count() or 1
    pool = Pool(workers) if workers > 1 and len(todo) > 1 else None
    try:
        it = pool.imap_unordered(partial(_convert, cfg=cfg), todo, chunksize=4) if pool else (
            _convert(item, cfg) for item in todo)
        for res in tqdm(it, total=len(todo), desc="prepare", unit="file", disable=not progress, file=sys.stderr):
            results.append(res)
            if len(results) >= SHARD_ROWS:
                _commit_shard(shards, results)
    finally:                                      # interrupted or not, keep what was converted
        if pool:
            pool.terminate()
        _commit_shard(shards, results)
    summary = _merge(cfg, rows, shards, out)
    summary.update(seconds=round(time.time() - t0, 2), converted=len(todo),
                   files_per_s=round(len(todo) / max(time.time() - t0, 1e-9), 1))
    sig["summary"] = summary
    sig["files"] = {name: (out / name).stat().st_size for name in CACHE_FILES}
    _write_atomic(out / "DONE", lambda p: p.write_text(json.dumps(sig)))
    shutil.rmtree(shards)
    return _usable(summary, out)


def _merge(cfg: DataConfig, rows: list[Row], shards: Path, out: Path) -> dict:
    """Copy the shards' frames, in corpus order, into features.npy; write index.json,
    skipped.jsonl and poses.json (each row's pose file stat). Returns the summary."""
    kept, skipped, stats = [], [], {}             # kept: (row, shard file, start in shard, frames)
    counted = Counter()
    for f in sorted(shards.glob("shard-*.json")):
        start = 0
        for i, n, reason, detail, *stat in json.loads(f.read_text()):   # no stat: a shard of an older version
            stats[i] = stat[0] if stat else None
            counted[i] += 1
            if reason:
                skipped.append({"uid": rows[i].uid, "pose": rows[i].pose, "reason": reason, "detail": detail})
            else:
                kept.append((i, f.with_suffix(".npy"), start, n))
                start += n
    if len(counted) != len(rows) or max(counted.values(), default=1) > 1:   # e.g. two builders at once
        raise DataError(f"{out}: the build holds {sum(counted.values())} rows for a corpus of {len(rows)} (did "
                        f"another process write into it?); nothing was marked done. Build it again: "
                        f"{rebuild_command(cfg)}")
    kept.sort()
    lengths = np.array([n for *_, n in kept], np.int64)
    starts = np.cumsum(lengths) - lengths
    by_shard = {}
    for k, (_, shard, start, n) in enumerate(kept):
        by_shard.setdefault(shard, []).append((starts[k], start, n))

    def write_features(p: Path):
        shape = (int(lengths.sum()), poses.feature_dim(cfg.pose))
        feats = np.lib.format.open_memmap(p, mode="w+", dtype=np.float16, shape=shape)
        for shard, pieces in by_shard.items():    # one shard in memory at a time
            arr = np.load(shard)
            for dst, src, n in pieces:
                feats[dst:dst + n] = arr[src:src + n]
        feats.flush()
    _write_atomic(out / "features.npy", write_features)
    index = {"feature_dim": poses.feature_dim(cfg.pose), "layout": cfg.pose.layout,
             "uid": [rows[i].uid for i, *_ in kept], "text": [rows[i].text for i, *_ in kept],
             "split": [rows[i].split for i, *_ in kept],
             "start": starts.tolist(), "length": lengths.tolist()}
    _write_atomic(out / "index.json", lambda p: p.write_text(json.dumps(index)))
    _write_atomic(out / "skipped.jsonl", lambda p: p.write_text("".join(json.dumps(s) + "\n" for s in skipped)))
    _write_atomic(out / "poses.json", lambda p: p.write_text(json.dumps([stats.get(i) for i in range(len(rows))])))
    return {"ok": len(kept), "skipped": len(skipped), "layout": cfg.pose.layout,
            "reasons": dict(Counter(s["reason"] for s in skipped)),
            "splits": dict(Counter(index["split"])), "frames": int(lengths.sum()), "cache": str(out)}


def split_sizes(cfg: DataConfig) -> dict[str, int]:
    """Clips per split in the complete cache (0 for an empty split)."""
    counts = json.loads((cache_dir(cfg) / "DONE").read_text())["summary"]["splits"]
    return {s: counts.get(s, 0) for s in ("train", "val", "test")}


def ensure_cache(cfg: DataConfig, rank: int = 0, world_size: int = 1, timeout_s: float = 24 * 3600,
                 poll_s: float = 5.0) -> Path:
    """Rank 0 builds the cache when missing or stale; the other ranks wait for its DONE file
    (no torch.distributed needed). Pass the node-local rank when each node has its own disk."""
    if rank == 0:
        if not is_fresh(cfg):
            print(json.dumps(prepare(cfg)), file=sys.stderr)
        elif changed := changed_poses(cfg):
            print(f"warning: {len(changed)} pose files changed since the cache was built (e.g. {changed[0]}); "
                  f"it holds the old ones. Delete {cache_dir(cfg) / 'DONE'} to have it rebuilt", file=sys.stderr)
        return cache_dir(cfg)
    t0 = time.time()
    while not is_fresh(cfg):
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"rank {rank}/{world_size}: no fresh cache at {cache_dir(cfg)} after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return cache_dir(cfg)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a synthetic corpus in the iSign layout")
    s.add_argument("out_dir")
    s.add_argument("--n", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("prepare", help="build the pose cache of DATA_DIR")
    p.add_argument("data_dir")
    p.add_argument("--cache", default=None, help="cache folder (default DATA_DIR/cache)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--csv", default=DataConfig.csv, help="CSV (uid,text) or .jsonl manifest in DATA_DIR")
    p.add_argument("--layout", default=PoseConfig.layout, choices=["auto", *poses.LAYOUTS],
                   help="keypoint layout (default: auto, the first that the corpus's first readable file fits)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch, even over a cache of other settings")
    p.add_argument("--max_pose_mb", type=float, default=PoseConfig.max_pose_mb,
                   help="larger .pose files are skipped unread (memory per worker: docs/data.md)")
    x = sub.add_parser("lexicon", help="a folder of .pose files or videos named by word -> a sign dictionary "
                                       "(index.csv; lexicon.py)")
    x.add_argument("src")
    x.add_argument("out_dir")
    v = sub.add_parser("videos", help="a folder of videos -> a corpus in the iSign layout (video.py; "
                                      "pip install -r requirements-video.txt)")
    v.add_argument("video_dir")
    v.add_argument("out_dir")
    v.add_argument("--texts", default=None, help="CSV uid,text (uid: a video's file name without extension; "
                                                 "default VIDEO_DIR/texts.csv if present)")
    for command in (importers, show):   # data.py import ..., data.py show ...: each file holds its command line
        command.add_command(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "command"):
        sys.exit(args.command(args))
    if args.cmd == "lexicon":
        import lexicon
        print(json.dumps(lexicon.write_index(args.src, args.out_dir)))
    elif args.cmd == "videos":   # video.py's own command line, which reports skipped videos and counts
        import video
        sys.exit(video.main(["--dir", args.video_dir, args.out_dir] + (["--texts", args.texts] if args.texts else [])))
    elif args.cmd == "synth":
        from synth import demo   # the generator lives in its own folder; only this command needs it
        demo.generate_corpus(args.out_dir, n=args.n, seed=args.seed)
        print(json.dumps({"out_dir": args.out_dir, "n": args.n, "seed": args.seed}))
    else:
        cfg = DataConfig(data_dir=args.data_dir, cache_dir=args.cache, csv=args.csv,
                         pose=PoseConfig(layout=args.layout, max_pose_mb=args.max_pose_mb))
        try:
            summary = prepare(cfg, workers=args.workers, force=args.force)
            print(splits_source(cfg, summary["splits"]), file=sys.stderr)
            print(json.dumps(summary))
        except (DataError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)


if __name__ == "__main__":
    main()
