"""Training batches from a sign corpus's cache: the chat prompt, one split as a dataset, length
buckets, padding, and an endless resumable stream.

What this is:
  - `build_prompt`: the chat prompt with ONE pose placeholder; `cap_answers`: answer + <|im_end|>.
  - `SignDataset`: one split of the cache data.py `prepare` builds (features memory-mapped).
  - `BucketSampler`: length buckets with DistributedSampler semantics, resumable mid-epoch.
  - `collate`: the placeholder expanded to the model's soft-token count, padding, label masks.
  - `SeededItems`, `Batches`: endless training micro-batches whose augmentation depends only on
    (seed, epoch, sample), so a resumed run sees the batches an unbroken one would.

Reference: torch.utils.data.DistributedSampler, whose rank split BucketSampler keeps.

Run: used by train.py and eval.py; `python bench.py data` measures it.
"""
import dataclasses
import json
from typing import Callable

import numpy as np
import torch

import poses
from data import DataConfig, cache_dir, damage, is_fresh, rebuild_command
from words import word_vocabulary, words_of


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
