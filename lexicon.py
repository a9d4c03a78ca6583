"""Sign dictionaries: isolated signs named by word, read like a corpus, and the sentences stitched
from them that teach a model the words its corpus shows too rarely.

    lexicon_config   a run's dictionary as a data.DataConfig: its index.csv read by corpus.py, the
                     corpus's layout and features, its own cache (data.prepare) inside the corpus's
    Lexicon          the cached clips by word (variants; inflected forms found), trimmed to the signing
    Stitcher         a training text -> the same words signed by stitching the dictionary's clips at
                     the corpus's pace; some words swapped for other dictionary words, names spelled
    MixedItems, MixedBatches   the training stream, a share of each epoch's items stitched sentences,
                     annealed from lexicon_mix[0] in the first epoch to lexicon_mix[1] in the last
    head_vocabulary  the word head's words: the training texts' and the dictionary's
    write_index      a folder of .pose files or videos named by word -> a dictionary (data.py lexicon)

The format (sign-language-processing's spoken-to-signed-translation): DIR/index.csv with the
columns path,spoken_language,signed_language,start,end,words,glosses,priority; `path` relative
to DIR; start and end in milliseconds within the file (0 and 0, or an end past the clip: the
whole file); several rows for one word are its variants (priority: lower first; all are used).
Rows that cannot be used are skipped with their reason (CACHE/lexicon/skipped.jsonl).

Why stitching, and how the dictionary's forms are brought nearer to signs in sentences
(docs/training.md, "Sign dictionaries"): PoseStitch-SLT (Joshi et al., EMNLP 2025) pretrains on
sentences stitched from isolated-sign clips and anneals linearly into the real corpus; here the
stitched sentences are the corpus's own sentence frames (its training texts), each with one to three
words swapped for dictionary words of the same distributional class (seen after or before the
same word), the rarest most often, and names re-spelled from the dictionary's letters. The gap
between a dictionary and a corpus is met where the data shows it: the rest before and after each
citation form is trimmed (the hands' height, as spoken-to-signed-translation's trim_pose), the
clips are played at the corpus's pace (frames per word from the training clips, whatever the
dictionary's speed or frame rate), joined by interpolated transitions or cross-faded as
coarticulation blends signs (Walsh et al., "Sign Stitching", BMVC 2024), and each sentence gets a
signer of its own (places and hand sizes moved, then the corpus's augmentation).

    lex = Lexicon(lexicon_config(cfg.data))      # after data.ensure_cache(lexicon_config(cfg.data))
    x, text = Stitcher(lex, texts, lengths).sample(np.random.default_rng(0))
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import corpus
import batches
import data
import poses
import words

SWAP = 1.         # probability that a stitched sentence swaps words (1 to 3) for other dictionary words
RENAME = .5        # probability that a name of a stitched sentence becomes another name
TRANSITION = .2    # share of a word's frames spent moving between two signs
PACE = (.8, 1.4)   # a stitched sentence lasts this many times a corpus clip of as many words (log-uniform):
                   # trimmed citation forms keep their approach and return, so a little longer
_TOKEN = re.compile(r"[A-Za-z0-9']+")
INFLECTIONS = (("ies", "y"), ("ied", "y"), ("es", ""), ("s", ""), ("ed", ""), ("d", ""), ("ing", ""), ("ing", "e"))


def lexicon_config(cfg: data.DataConfig) -> data.DataConfig:
    """The dictionary of a run as a corpus: lexicon_dir/index.csv, the run's features (the layout
    the corpus resolved), cached in CACHE/lexicon (a dictionary folder may be read-only)."""
    return dataclasses.replace(cfg, data_dir=cfg.lexicon_dir, csv="index.csv", pose_dir=".", lexicon_dir="",
                               cache_dir=str(data.cache_dir(cfg) / "lexicon"))


# ----------------------------------------------------------------------------- the clips
def active_span(x: np.ndarray, cfg: poses.PoseConfig) -> tuple[int, int]:
    """(first, end) frames of a clip's signing: where a wrist is above its elbow, or well above
    its lowest place in the clip (a sign low in front of the body), with a frame of margin; the
    whole clip when no frame is."""
    names = poses.LAYOUTS[cfg.layout]["body"].points
    p = x.reshape(len(x), -1, poses.channels(cfg))[:, poses.part_slices(cfg)["body"]]   # (T, K, C+1)
    y, seen = p[..., 1], p[..., -1] > 0
    active = np.zeros(len(x), bool)
    for side in "LR":                                   # LEFT_WRIST / LWrist ...
        w = [i for i, n in enumerate(names) if n.upper().startswith(side) and "WRIST" in n.upper()]
        e = [i for i, n in enumerate(names) if n.upper().startswith(side) and "ELBOW" in n.upper()]
        if not (w and e) or not seen[:, w[0]].any():
            continue
        wy, ok = y[:, w[0]], seen[:, w[0]] & seen[:, e[0]]
        active |= ok & ((wy < y[:, e[0]]) | (wy < wy[ok].max() - .15))
    if not active.any():
        return 0, len(x)
    frames = np.flatnonzero(active)
    return max(0, frames[0] - 1), min(len(x), frames[-1] + 2)


class Lexicon:
    """A dictionary's cached clips: clip(k) trimmed to its signing; find(word) -> its clips."""

    def __init__(self, lcfg: data.DataConfig):
        root = data.cache_dir(lcfg)
        index = json.loads((root / "index.json").read_text())
        self.pose_cfg = dataclasses.replace(lcfg.pose, layout=index["layout"])
        self.features = np.load(root / "features.npy", mmap_mode="r")
        self.starts, self.lengths = np.array(index["start"]), np.array(index["length"])
        self.words = [" ".join(w.lower().split()) for w in index["text"]]
        self.spans = [active_span(np.asarray(self.features[s:s + n], np.float32), self.pose_cfg)
                      for s, n in zip(self.starts, self.lengths)]
        self.by_word: dict[str, list[int]] = {}
        for k, w in enumerate(self.words):
            self.by_word.setdefault(w, []).append(k)
        self.letters = {w: ks for w, ks in self.by_word.items() if len(w) == 1 and w.isalpha()}
        self.longest = max((len(w.split()) for w in self.by_word), default=1)

    def clip(self, k: int, head: bool = False, tail: bool = False) -> np.ndarray:
        """(T, F) float32 features of clip k, its rest trimmed (kept at the head / tail if asked)."""
        a, b = self.spans[k]
        s, n = self.starts[k], self.lengths[k]
        return np.asarray(self.features[s + (0 if head else a):s + (n if tail else b)], np.float32)

    def find(self, word: str) -> str | None:
        """The dictionary word for a text's (lowercased) word: itself, else the stem of a regular
        English inflection ('pays' -> 'pay', 'carried', 'moved', 'dropped', 'baking'); None if absent."""
        if word in self.by_word:
            return word
        if len(word) < 4:
            return None
        for end, add in INFLECTIONS:
            if word.endswith(end):
                stem = word[:-len(end)] + add
                for s in (stem, stem[:-1] if stem[-1:] * 2 == stem[-2:] else ""):
                    if s in self.by_word and s not in self.letters:
                        return s
        return None


# ----------------------------------------------------------------------------- stitched sentences
def names_of(texts: list[str], lex: Lexicon) -> set[str]:
    """Names (lowercased): words written capitalised inside a sentence that the dictionary lacks."""
    out = set()
    for t in texts:
        for m in list(_TOKEN.finditer(t))[1:]:
            w = m.group()
            if len(w) > 1 and w[0].isupper() and w[1:].islower() and lex.find(w.lower()) is None:
                out.add(w.lower())
    return out


def corpus_pace(texts: list[str], lengths) -> tuple[float, float]:
    """(frames, frames per word): a least-squares line of the training clips' frames over their
    words (words.word_tokens); the first is the rest before and after a sentence. A corpus whose
    clips hardly grow with their words: (0, mean frames per word)."""
    n = np.array([len(words.word_tokens(t)) for t in texts], float)
    frames = np.asarray(lengths, float)
    mean = float(frames.mean() / max(n.mean(), 1))
    slope, intercept = np.polyfit(n, frames, 1) if len(n) > 2 and n.std() > 0 else (0, 0)
    return (float(max(intercept, 0)), float(slope)) if slope > mean / 4 else (0., mean)


class Stitcher:
    """Training texts signed again from the dictionary's clips (module docstring: why and how).

    sample(rng) -> (features (T, F) float32, text): a training text, those with rare words the
    likelier; with probability SWAP one to three words the dictionary has swapped for dictionary
    words of the same distributional class (the rarest the likeliest); each name, with
    probability RENAME, another name; then signed word by word with the dictionary's clips (a
    random variant each, a name letter by letter, a word the dictionary lacks left unsigned as
    articles and copulas are), played at the corpus's pace by a signer of its own."""

    def __init__(self, lex: Lexicon, texts: list[str], lengths):
        self.lex, self.counts = lex, Counter(w for t in texts for w in words.word_tokens(t))
        self.names = names_of(texts, lex)
        self.texts = [t for t in texts if any(self._sign_of(m.group()) for m in _TOKEN.finditer(t))]
        if not self.texts:
            raise ValueError(f"no training text has a word of the dictionary ({len(lex.by_word)} words, e.g. "
                             f"{', '.join(sorted(lex.by_word)[:5])}): check its `words` column and spoken language")
        rarity = [max((1 / np.sqrt(1 + self.counts[m.group().lower()]) for m in _TOKEN.finditer(t)
                       if self._sign_of(m.group())), default=0.) for t in self.texts]
        self.p_text = np.array(rarity) / sum(rarity)
        self.swaps = self._swap_classes(texts)
        self.rest, self.pace = corpus_pace(texts, lengths)

    def _sign_of(self, token: str) -> list[int] | None:
        """The clips a text token is signed with: its dictionary word's variants, or its letters if a name."""
        w = token.lower()
        if w in self.names and self.lex.letters:
            return [] if not any(c in self.lex.letters for c in w) else [-1]
        found = self.lex.find(w)
        return self.lex.by_word[found] if found else None

    def _swap_classes(self, texts: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
        """For each dictionary word of the texts: the dictionary words that may take its place, those
        seen between the same two words if there are any, else with the same word before and the
        same after, else either; weights 1 / (1 + training count), the rarest most often. Words the
        texts never show may go anywhere, together a fifth of the weight (a big dictionary holds
        many words that the corpus never uses)."""
        ctx: dict[str, set] = {}
        for t in texts:
            toks = ["<s>"] + [m.group().lower() for m in _TOKEN.finditer(t)] + ["</s>"]
            for left, w, right in zip(toks, toks[1:], toks[2:]):
                ctx.setdefault(w, set()).update({("L", left), ("R", right), ("LR", left, right)})
        single = [w for w in self.lex.by_word if " " not in w and w not in self.lex.letters and w.isalpha()]
        seen, unseen = [w for w in single if w in ctx], [w for w in single if w not in ctx]
        out = {}
        for w in seen:
            shared = {v: {c[0] for c in ctx[v] & ctx[w]} for v in seen if v != w}
            tiers = ([v for v, s in shared.items() if "LR" in s], [v for v, s in shared.items() if {"L", "R"} <= s],
                     [v for v, s in shared.items() if s])
            cands = next((t for t in tiers if len(t) >= 2), tiers[-1])
            p = np.array([1 / (1 + self.counts[v]) for v in cands])
            p = np.concatenate([.8 * p / p.sum() if len(p) else p, np.full(len(unseen), .2 / max(len(unseen), 1))])
            if len(p):
                out[w] = cands + unseen, p / p.sum()
        return out

    def _edit(self, text: str, rng: np.random.Generator) -> str:
        """The text with words swapped (SWAP) and names renamed (RENAME)."""
        toks = list(_TOKEN.finditer(text))
        swappable = [m for m in toks if m.group().lower() in self.swaps and m.group().lower() not in self.names]
        chosen = set()
        if swappable and rng.random() < SWAP:
            chosen = {int(i) for i in rng.choice(len(swappable), min(len(swappable), int(rng.integers(1, 4))),
                                                 replace=False)}
        out, pos = [], 0
        for m in toks:
            w, new = m.group(), m.group()
            if any(m is swappable[i] for i in chosen):
                cands, p = self.swaps[w.lower()]
                new = cands[int(rng.choice(len(cands), p=p))]
                new = new.capitalize() if w[0].isupper() else new
            elif w.lower() in self.names and rng.random() < RENAME:
                new = self._new_name(rng)
            out += [text[pos:m.start()], new]
            pos = m.end()
        return "".join(out + [text[pos:]])

    def _new_name(self, rng: np.random.Generator) -> str:
        """Another name of the corpus, or a new one: the head of one joined to the tail of another."""
        pool = sorted(self.names)
        a, b = (pool[int(i)] for i in rng.integers(len(pool), size=2))
        if rng.random() < .5 or min(len(a), len(b)) < 3:
            return a.capitalize()
        return (a[:int(rng.integers(1, len(a)))] + b[int(rng.integers(1, len(b))):]).capitalize()

    def _clips(self, text: str, rng: np.random.Generator) -> list[np.ndarray]:
        """The dictionary clips that sign `text`, in its word order; phrases of several words first."""
        toks, out, i = [m.group() for m in _TOKEN.finditer(text)], [], 0
        pick = lambda ks: ks[int(rng.integers(len(ks)))]  # noqa: E731
        while i < len(toks):
            for n in range(min(self.lex.longest, len(toks) - i), 1, -1):
                phrase = " ".join(toks[i:i + n]).lower()
                if phrase in self.lex.by_word:
                    out.append(pick(self.lex.by_word[phrase]))
                    i += n
                    break
            else:
                ks = self._sign_of(toks[i])
                if ks == [-1]:
                    out += [pick(self.lex.letters[c]) for c in toks[i].lower() if c in self.lex.letters]
                elif ks:
                    out.append(pick(ks))
                i += 1
        return [self.lex.clip(k, head=j == 0, tail=j == len(out) - 1) for j, k in enumerate(out)]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        for _ in range(100):
            text = self._edit(self.texts[int(rng.choice(len(self.texts), p=self.p_text))], rng)
            clips = self._clips(text, rng)
            if clips:   # as long as a corpus clip of as many words, give or take (PACE)
                frames = (self.rest + self.pace * len(words.word_tokens(text))) * np.exp(rng.uniform(*np.log(PACE)))
                return stitch(clips, frames / sum(map(len, clips)), self.pace, self.lex.pose_cfg, rng), text
        raise RuntimeError("no stitched sentence in 100 tries")


def _blend(a: np.ndarray, b: np.ndarray, w: np.ndarray, cfg: poses.PoseConfig) -> np.ndarray:
    """Frames (n, F) between a and b (n, F) at weights w (n, 1): a point seen in both moves
    linearly, one missing in either is missing (zeros)."""
    C = poses.channels(cfg)
    pa, pb = a.reshape(len(a), -1, C), b.reshape(len(b), -1, C)
    both = (pa[..., -1:] > 0) & (pb[..., -1:] > 0)                          # (n, K, 1)
    out = np.where(both, (1 - w[:, :, None]) * pa + w[:, :, None] * pb, 0).astype(np.float32)
    out[..., -1:] = both
    return out.reshape(len(a), -1)


def place_points(cfg: poses.PoseConfig) -> list[int]:
    """Feature points that say where a hand (or the face) is: the last of each part but the body."""
    return [sl.stop - 1 for name, sl in poses.part_slices(cfg).items() if name != "body"] if cfg.place else []


def stitch(clips: list[np.ndarray], scale: float, pace: float, cfg: poses.PoseConfig,
           rng: np.random.Generator) -> np.ndarray:
    """Dictionary clips (T_i, F) -> one signed sentence (T, F): each clip resampled to `scale`
    times its frames, moved a little in signing space, joined to the next by an interpolated
    movement or a cross-fade (coarticulation) of about TRANSITION x pace frames; then one
    signer's places and hand sizes for the whole sentence. At most cfg.max_frames frames."""
    C, places = poses.channels(cfg), place_points(cfg)
    out: list[np.ndarray] = []
    for c in clips:
        n = max(2, round(len(c) * scale * rng.uniform(.9, 1.1)))
        c = c[np.linspace(0, len(c) - 1, n).round().astype(np.int64)].copy()
        p = c.reshape(n, -1, C)
        p[:, places, :2] += rng.normal(0, .02, (len(places), 2)) * (p[:, places, -1:] > 0)   # this sign's place
        m = max(1, round(TRANSITION * pace * rng.uniform(.5, 1.5)))
        if out and rng.random() < .5 and min(len(out[-1]), n) > 2 * m:   # cross-fade: the signs overlap
            w = ((np.arange(m) + 1) / (m + 1))[:, None]
            out[-1][-m:] = _blend(out[-1][-m:], c[:m], w, cfg)
            c = c[m:]
        elif out:                                                        # a movement from one to the next
            w = ((np.arange(m) + 1) / (m + 1))[:, None]
            out.append(_blend(np.repeat(out[-1][-1:], m, 0), np.repeat(c[:1], m, 0), w, cfg))
        out.append(c)
    x = np.concatenate(out)
    p = x.reshape(len(x), -1, C)
    seen = p[..., -1:] > 0
    shape = np.ones(p.shape[1], bool)
    shape[places] = False
    shape[poses.part_slices(cfg)["body"]] = False
    p[:, shape, :-1] *= rng.uniform(.9, 1.1)                             # hands and face of another size
    p[:, places, :-1] += rng.normal(0, .04, (len(places), C - 1))        # ... held elsewhere
    p[..., :-1] *= seen
    if len(x) > cfg.max_frames:
        x = x[np.linspace(0, len(x) - 1, cfg.max_frames).round().astype(np.int64)]
    return x


# ----------------------------------------------------------------------------- the training stream
def head_vocabulary(cfg: data.DataConfig, size: int) -> list[str]:
    """The word head's words, as the training texts write them (a name capitalised): the training
    texts' `size` most frequent (words.word_vocabulary), then a dictionary's other words (stitched
    sentences and isolated signs teach them), at most `size`. What config.aux_vocabulary holds."""
    texts = corpus.split_texts(cfg, "train")
    vocab = words.word_vocabulary(texts, size)
    if cfg.lexicon_dir:
        known = set(vocab)
        entries = {w for r in corpus.read_rows(lexicon_config(cfg)) if not r.problem and len(r.text) > 1
                   for w in words.word_tokens(r.text)}
        vocab += sorted(entries - known)
    written = Counter(m.group() for t in texts for m in list(_TOKEN.finditer(t))[1:])   # not sentence-initial
    cased = {}
    for w, _ in written.most_common():
        cased.setdefault(w.lower(), w)
    return [cased.get(w, w) for w in vocab[:size]]


class MixedItems(torch.utils.data.Dataset):
    """The training split where each item is, with probability share(), a stitched sentence
    instead (its text tokenised here; augmented as a clip of the corpus). The share goes linearly
    from mix[0] in the first epoch to mix[1] in epoch `epochs` - 1 (PoseStitch-SLT's annealing
    from stitched into real data); MixedBatches sets `epoch`. Drawn from torch's RNG, which
    batches.SeededItems seeds per (seed, epoch, item): a resumed run stitches the same sentences."""

    def __init__(self, real: batches.SignDataset, stitcher: Stitcher, tokenizer, mix: tuple, epochs: float):
        self.real, self.stitcher, self.tok = real, stitcher, tokenizer
        self.mix, self.epochs, self.epoch = mix, epochs, 0

    def share(self) -> float:
        progress = min(1.0, self.epoch / max(self.epochs - 1, 1))
        return self.mix[0] + (self.mix[1] - self.mix[0]) * progress

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, i: int) -> dict:
        if float(torch.rand(())) >= self.share():
            return self.real[i]
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        x, text = self.stitcher.sample(rng)
        if self.real.augment:
            x = poses.augment(x, self.real.pose_cfg, rng)
        answer, _ = batches.cap_answers([self.tok.encode(text)], self.real.cfg.max_answer_tokens, self.tok.im_end_id)
        return self.real.item(f"stitched-{i}", torch.from_numpy(x), text, answer[0])


class IsolatedSigns:
    """Batches of the dictionary's signs one at a time, for the word head alone
    (translator.isolated_word_loss): every entry whose word is one word of the head's vocabulary,
    drawn uniformly, trimmed, played at the corpus's pace of a word (give or take, PACE), moved and
    resized as a stitched sentence's signs are, augmented as the corpus's clips."""

    def __init__(self, stitcher: Stitcher, word_slot: dict[str, int], size: int, augment: bool):
        self.st, self.size, self.augment = stitcher, size, augment
        lex = stitcher.lex
        self.entries = [(k, word_slot[ws[0]]) for k, w in enumerate(lex.words) if w not in lex.letters
                        for ws in [words.word_tokens(w)] if len(ws) == 1 and ws[0] in word_slot]

    def batch(self, rng: np.random.Generator) -> dict:
        """{"iso_poses" (B, T, F), "iso_pose_mask" (B, T), "iso_word_label" (B,)}: what
        translator.SignTranslator.forward takes beside a training batch."""
        cfg, picks = self.st.lex.pose_cfg, rng.integers(len(self.entries), size=self.size)
        clips = []
        for i in picks:
            c = self.st.lex.clip(self.entries[i][0])
            x = stitch([c], self.st.pace * np.exp(rng.uniform(*np.log(PACE))) / len(c), self.st.pace, cfg, rng)
            clips.append(poses.augment(x, cfg, rng) if self.augment else x)
        frames = np.array([len(c) for c in clips])
        x = np.zeros((len(clips), frames.max(), clips[0].shape[1]), np.float32)
        for b, c in enumerate(clips):
            x[b, :len(c)] = c
        mask = np.arange(frames.max()) < frames[:, None]
        return {"iso_poses": torch.from_numpy(x), "iso_pose_mask": torch.from_numpy(mask),
                "iso_word_label": torch.tensor([self.entries[i][1] for i in picks])}


class MixedBatches(batches.Batches):
    """batches.Batches over MixedItems: each epoch tells the items which epoch it is (their share);
    each micro-batch carries a batch of IsolatedSigns too (seeded by its place in the stream)."""

    def __init__(self, items: MixedItems, isolated: IsolatedSigns | None, *args):
        super().__init__(items, *args)
        self.isolated = isolated

    def _start_epoch(self) -> None:
        self.items.dataset.epoch = self.epoch
        super()._start_epoch()

    def __next__(self) -> dict:
        batch = super().__next__()
        if self.isolated is not None and self.isolated.entries:
            batch.update(self.isolated.batch(np.random.default_rng([self.seed, self.rank, self.epoch, self.consumed])))
        return batch


def mixed_batches(train_ds: batches.SignDataset, sampler: batches.BucketSampler, collate, tokenizer, lex: Lexicon,
                  mix: tuple, micro_batches: int, seed: int, num_workers: int, rank: int) -> MixedBatches:
    """The training stream of a run with a dictionary: `micro_batches` per rank in the whole run;
    isolated signs beside each micro-batch when the run trains the word head."""
    stitcher = Stitcher(lex, train_ds.texts, train_ds.lengths)
    items = MixedItems(train_ds, stitcher, tokenizer, mix, epochs=micro_batches / max(len(sampler), 1))
    isolated = IsolatedSigns(stitcher, train_ds.word_slot, sampler.batch_size, train_ds.augment) if train_ds.n_words \
        else None
    return MixedBatches(items, isolated, sampler, collate, seed, num_workers, rank)


# ----------------------------------------------------------------------------- a folder -> a dictionary
_VARIANT = re.compile(r"^(.*?)(?:[-_ ]\(?(\d+)\)?)?$")


def write_index(src, out, spoken_language: str = "en", signed_language: str = "", progress: bool = True) -> dict:
    """A folder of .pose files or videos, each named by its word (`thank_you.pose`; a variant
    `hello-2.mp4`, priority 1), -> OUT/poses/*.pose and OUT/index.csv. Videos go through
    video.py (the optional extra: MediaPipe Holistic); one that fails is skipped with its reason."""
    import shutil
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    (out / "poses").mkdir(parents=True, exist_ok=True)
    skipped = []
    for f in sorted(src.iterdir()):
        if f.suffix.lower() == ".pose" and not (out / "poses" / f.name).exists():
            shutil.copy2(f, out / "poses" / f.name)
    import video   # its extra (mediapipe) is imported only when a video is read
    if any(f.suffix.lower() in video.VIDEO_SUFFIXES for f in src.iterdir()):
        skipped = video.videos_to_corpus(src, out, progress=progress)["skipped"]
        (out / video.CSV_NAME).unlink(missing_ok=True)    # a corpus's CSV: the index replaces it
    rows = []
    for f in sorted((out / "poses").glob("*.pose")):
        stem, number = _VARIANT.match(f.stem).groups()
        word = " ".join(stem.replace("_", " ").split())
        rows.append((f"poses/{f.name}", spoken_language, signed_language, 0, 0, word,
                     word.upper().replace(" ", "-"), int(number) - 1 if number else 0))
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([corpus.LEXICON_COLUMNS, *rows])
    return {"entries": len(rows), "words": len({r[5] for r in rows}), "skipped": skipped,
            "index": str(out / "index.csv")}

