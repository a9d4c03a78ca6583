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
  - Batches: `SignDataset` (chat prompt with ONE pose placeholder, answer + <|im_end|>),
    `BucketSampler` (length buckets, DistributedSampler semantics, resumable mid-epoch),
    `collate` (placeholder expanded to the pose encoder's token count, padding, label masks) and
    `Batches` (endless, resumable training micro-batches whose augmentation depends only on
    (seed, epoch, sample)).

Run:
    python data.py synth data/synth --n 500 --seed 0       # synthetic corpus (synth/demo.py)
    python data.py prepare data/synth --workers 2          # cache; last line: JSON summary
    python data.py videos my_videos data/mine              # videos -> .pose files + CSV (video.py)
    python data.py import how2sign SRC OUT; python data.py show CLIP.pose --out clip.gif   # importers/, show.py
"""
import argparse
import dataclasses
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
import torch
from tqdm import tqdm

import importers
import poses
import processes
import show
from corpus import DataError, Row, read_rows, resolve_layout, source_files, splits_source
from poses import PoseConfig, PoseError
from words import word_vocabulary, words_of

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


# ----------------------------------------------------------------------------- text and batches
def build_prompt(tokenizer, cfg: DataConfig) -> list[int]:
    """The chat prompt up to the assistant's answer, holding ONE pose placeholder token:
    <|im_start|>system ... <|im_end|> <|im_start|>user <pose> Translate ... <|im_end|> <|im_start|>assistant"""
    user = cfg.user_prompt.format(pose=tokenizer.pose_token, language=cfg.source_language)
    ids = tokenizer.chat([{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}],
                         add_generation_prompt=True)
    if ids.count(tokenizer.pose_token_id) != 1:
        raise ValueError(f"DataConfig.user_prompt {cfg.user_prompt!r} must hold '{{pose}}' exactly once")
    return ids


def cap_answers(texts_ids: list[list[int]], limit: int, end_id: int) -> tuple[list[list[int]], int]:
    """The answers as the model learns them: each text's tokens + the end of the turn. A text of
    more than `limit` tokens keeps its first `limit` and no end token (nothing teaches the model
    to stop there), so one outlier cannot set the memory of every batch it falls in. Returns the
    answers and how many were cut; references for the metrics stay the whole texts."""
    return [ids + [end_id] if len(ids) <= limit else ids[:limit] for ids in texts_ids], \
        sum(len(ids) > limit for ids in texts_ids)


class SignDataset(torch.utils.data.Dataset):
    """One split of the cache. Item: dict(uid, poses (T, F) float32, text, prompt_ids, answer_ids,
    and with n_words > 0 word_targets (n_words,) float32: 1 for each word of `words` in the text, 0
    for the others, -1 past the end of `words`;
    `words` defaults to word_vocabulary(this split's texts, n_words)); answer_ids end with
    <|im_end|>, the end of the assistant's turn, unless cut to max_answer_tokens (`truncated`
    counts those, see cap_answers)."""

    def __init__(self, cfg: DataConfig, split: str, tokenizer, augment: bool = False, n_words: int = 0,
                 words: list[str] | None = None):
        if not is_fresh(cfg):
            why = damage(cfg)
            raise FileNotFoundError(f"{cache_dir(cfg)}: pose cache damaged ({why}); build it again with "
                                    f"`{rebuild_command(cfg)}`" if why else
                                    f"{cache_dir(cfg)}: pose cache missing or stale; run "
                                    f"`python data.py prepare {cfg.data_dir}` (or ensure_cache)")
        index = json.loads((cache_dir(cfg) / "index.json").read_text())
        rows = [k for k, s in enumerate(index["split"]) if s == split]
        self.cfg, self.augment = cfg, augment
        self.pose_cfg = dataclasses.replace(cfg.pose, layout=index["layout"])   # "auto" resolved by prepare
        self.features = np.load(cache_dir(cfg) / "features.npy", mmap_mode="r")   # (all frames, F) float16
        self.uids = [index["uid"][k] for k in rows]
        self.texts = [index["text"][k] for k in rows]
        self.starts = np.array([index["start"][k] for k in rows], np.int64)
        self.lengths = np.array([index["length"][k] for k in rows], np.int64)   # frames: the bucketing cost
        self.prompt_ids = build_prompt(tokenizer, cfg)
        self.answer_ids, self.truncated = cap_answers(tokenizer.encode_batch(self.texts), cfg.max_answer_tokens,
                                                      tokenizer.im_end_id)
        self.n_words, self.words = n_words, []
        if n_words:
            self.words = words if words is not None else word_vocabulary(self.texts, n_words)
        self.word_slot = {w: k for k, w in enumerate(self.words[:n_words])}

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict:
        s = self.starts[i]
        x = torch.from_numpy(np.array(self.features[s:s + self.lengths[i]])).float()   # (T, F); torch: faster fp16 cast
        if self.augment:   # seeded from torch, so DataLoader workers differ and runs repeat
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            x = torch.from_numpy(poses.augment(x.numpy(), self.pose_cfg, rng))
        return self.item(self.uids[i], x, self.texts[i], self.answer_ids[i])

    def item(self, uid: str, x: torch.Tensor, text: str, answer_ids: list[int]) -> dict:
        """One sample's dict (also for clips made elsewhere: lexicon.MixedItems' stitched sentences)."""
        item = {"uid": uid, "poses": x, "text": text, "prompt_ids": self.prompt_ids, "answer_ids": answer_ids}
        if self.n_words:
            item["word_targets"] = np.full(self.n_words, -1, np.float32)   # -1: no word in that slot
            item["word_targets"][:len(self.words)] = 0
            item["word_targets"][[self.word_slot[w] for w in words_of(text) if w in self.word_slot]] = 1
        return item


class BucketSampler:
    """Batches of similar length, with DistributedSampler semantics.

    Each epoch (seeded by seed + epoch, the same on every rank): shuffle, sort windows of 64
    batches by length, cut into batches, shuffle the batches. Rank r takes batches r, r+R, ...;
    when the batch count is not a multiple of R, the first batches are repeated (drop_last=False)
    or the last ones dropped (drop_last=True), so that every rank runs the same number of steps.
    Resumable: load_state_dict({"epoch": e, "batches_consumed": k}) skips this rank's first k
    batches of epoch e. shuffle=False sorts the whole set by length (evaluation).
    """

    def __init__(self, lengths, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"BucketSampler: rank {rank} not in [0, {num_replicas})")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.batches_consumed, self._skip = 0, 0, 0

    def _all_batches(self) -> list[list[int]]:
        n, bs, R = len(self.lengths), self.batch_size, self.num_replicas
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            window = 64 * bs
            order = np.concatenate([w[np.argsort(self.lengths[w], kind="stable")]
                                    for w in np.split(order, range(window, n, window))])
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[i:i + bs].tolist() for i in range(0, n, bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.drop_last:
            return batches[:len(batches) // R * R]
        return batches + [batches[k % len(batches)] for k in range(-len(batches) % R)] if batches else []

    def __len__(self) -> int:
        return len(self._all_batches()[self.rank::self.num_replicas])

    def __iter__(self):
        mine = self._all_batches()[self.rank::self.num_replicas]
        skip, self._skip = self._skip, 0
        self.batches_consumed = skip
        for batch in mine[skip:]:
            self.batches_consumed += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:    # a resumed epoch keeps its skip
            self.epoch, self._skip, self.batches_consumed = epoch, 0, 0

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Pass the number of steps the trainer really finished this epoch when a DataLoader
        prefetches batches ahead of it; the default counts the batches yielded so far."""
        k = self.batches_consumed if batches_consumed is None else batches_consumed
        return {"epoch": self.epoch, "batches_consumed": k, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = state["epoch"], state.get("seed", self.seed)
        self._skip = self.batches_consumed = state["batches_consumed"]


def collate(batch: list[dict], tokenizer, tokens_per_pose: Callable[[int], int], for_generation: bool = False) -> dict:
    """Pad a list of SignDataset items into tensors.

    The single pose placeholder of each prompt becomes tokens_per_pose(frames) copies of it (the
    pose encoder's output length). Training: prompt + answer, right-padded, labels -100 except on
    the answer (+ <|im_end|>). Generation: the prompt alone, left-padded (as generate expects).
    Always: poses (B, Tmax, F) zero-padded, pose_mask (B, Tmax) bool, uids, texts; word_targets
    (B, V) when the items have them.
    """
    # built in numpy and wrapped once: torch.tensor(list) and many small torch copies cost far more
    pid, B = tokenizer.pose_token_id, len(batch)
    frames = [len(s["poses"]) for s in batch]
    poses = np.zeros((B, max(frames), batch[0]["poses"].shape[1]), np.float32)    # (B, Tmax, F)
    seqs, n_prompt = [], []
    for b, s in enumerate(batch):
        poses[b, :frames[b]] = s["poses"].numpy()
        k = s["prompt_ids"].index(pid)
        prompt = s["prompt_ids"][:k] + [pid] * int(tokens_per_pose(frames[b])) + s["prompt_ids"][k + 1:]
        seqs.append(prompt if for_generation else prompt + s["answer_ids"])
        n_prompt.append(len(prompt))
    L = max(map(len, seqs))
    input_ids = np.full((B, L), tokenizer.pad_id, np.int64)
    attention_mask = np.zeros((B, L), np.int64)
    labels = np.full((B, L), -100, np.int64)
    for b, ids in enumerate(seqs):
        start = L - len(ids) if for_generation else 0          # generation: left padding
        input_ids[b, start:start + len(ids)] = ids
        attention_mask[b, start:start + len(ids)] = 1
        labels[b, start + n_prompt[b]:start + len(ids)] = ids[n_prompt[b]:]
    out = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
           "poses": torch.from_numpy(poses),
           "pose_mask": torch.from_numpy(np.arange(max(frames)) < np.array(frames)[:, None]),   # (B, Tmax)
           "uids": [s["uid"] for s in batch], "texts": [s["text"] for s in batch]}
    if not for_generation:
        out["labels"] = torch.from_numpy(labels)
    if "word_targets" in batch[0]:
        out["word_targets"] = torch.from_numpy(np.stack([s["word_targets"] for s in batch]))   # (B, V)
    return out


class SeededItems(torch.utils.data.Dataset):
    """dataset[i] with torch's RNG seeded from (seed, epoch, i) around it: the augmentation of a
    sample then depends on nothing else (not on loader workers, nor on where a resumed run
    started), and the global RNG that dropout draws from is left untouched."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):  # default_generator: the CPU one, not CUDA's
            seed = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]
            torch.default_generator.manual_seed(int(seed))
            return self.dataset[i]


class Batches:
    """Endless training micro-batches of this rank, epoch after epoch; state_dict() is the
    position after the last batch handed out (a DataLoader prefetches further ahead)."""

    def __init__(self, dataset, sampler: BucketSampler, collate, seed: int, num_workers: int, rank: int):
        self.items, self.sampler, self.collate = SeededItems(dataset, seed), sampler, collate
        self.seed, self.num_workers, self.rank = seed, num_workers, rank
        self.epoch, self.consumed, self.it = 0, 0, None

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["batches_consumed"]
        self.sampler.load_state_dict(state)

    def state_dict(self) -> dict:
        return self.sampler.state_dict(batches_consumed=self.consumed)

    def _start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.items.epoch = self.epoch
        # A generator of our own: the loader draws its workers' base seed from it, not from the
        # global RNG (which would shift dropout whenever an epoch starts at another moment).
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch * 101 + self.rank)
        self.it = iter(torch.utils.data.DataLoader(self.items, batch_sampler=self.sampler, collate_fn=self.collate,
                                                   num_workers=self.num_workers, generator=gen))

    def __next__(self) -> dict:
        if self.it is None:
            self._start_epoch()
        batch = next(self.it, None)
        if batch is None:  # epoch over
            self.epoch, self.consumed = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self.it)
        self.consumed += 1
        return batch


# ----------------------------------------------------------------------------- command line
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
