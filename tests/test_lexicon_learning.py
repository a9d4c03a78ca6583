"""A sign dictionary raises the recall of rare words, checked cheaply on the word head alone.

A small synth/zipf.py corpus (most of its words seen twice or less in training) and its
dictionary; the pose encoder's word head trained for a few hundred steps on the training clips
alone, and again with the dictionary as train.py uses it (lexicon.mixed_batches: stitched
sentences in the batches, isolated signs beside them). On the test split (signers never seen),
the words a clip signs are its k likeliest (k its number of words): with the dictionary the
rare words are found far more often. The LLM is left out (it would cost minutes); the full runs,
with BLEU and eval.py's word_recall_by_freq, are in BENCHMARKS.md, "The long tail"."""
import dataclasses

import numpy as np
import pytest
import torch

import corpus
import batches
import data
import eval as ev
import lexicon
import poses
import words
from synth import zipf
from translator import PoseEncoder, isolated_word_loss, word_presence_loss

STEPS, BATCH = 300, 16


class NoText:
    """What batches.SignDataset and batches.collate need of a tokenizer when no LLM is trained."""
    pose_token, pose_token_id, pad_id, im_end_id = "<pose>", 1, 0, 2

    def encode(self, text):
        return [3]

    def encode_batch(self, texts):
        return [[3] for _ in texts]

    def chat(self, messages, add_generation_prompt):
        return [1]


def train_head(cfg: data.DataConfig, with_lexicon: bool) -> tuple[PoseEncoder, batches.SignDataset]:
    torch.manual_seed(0)
    tok = NoText()
    vocab = lexicon.head_vocabulary(cfg if with_lexicon else dataclasses.replace(cfg, lexicon_dir=""), 512)
    train = batches.SignDataset(cfg, "train", tok, augment=True, n_words=512, words=[w.lower() for w in vocab])
    enc = PoseEncoder(poses.part_slices(train.pose_cfg), poses.channels(train.pose_cfg), 32, width=96, layers=1,
                      aux_words=512)
    enc.set_input_stats(train.features)
    sampler = batches.BucketSampler(train.lengths, BATCH, seed=0, drop_last=True)
    collate = lambda items: batches.collate(items, tok, enc.output_lengths)  # noqa: E731
    if with_lexicon:
        stream = lexicon.mixed_batches(train, sampler, collate, tok, lexicon.Lexicon(lexicon.lexicon_config(cfg)),
                                       cfg.lexicon_mix, STEPS, 0, 0, 0)
    else:
        stream = batches.Batches(train, sampler, collate, 0, 0, 0)
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    for _ in range(STEPS):
        b = next(stream)
        _, mask, logits = enc(b["poses"], b["pose_mask"])
        loss = word_presence_loss(logits, mask, b["word_targets"])
        if "iso_word_label" in b:
            _, iso_mask, iso_logits = enc(b["iso_poses"], b["iso_pose_mask"])
            loss = loss + isolated_word_loss(iso_logits, iso_mask, b["iso_word_label"])
        opt.zero_grad()
        (loss / BATCH).backward()
        opt.step()
    return enc.eval(), train


@torch.no_grad()
def rare_recall(enc: PoseEncoder, train: batches.SignDataset, cfg: data.DataConfig) -> float:
    """Share of the test references' words seen at most twice in training that are among their
    clip's k likeliest words (k = the clip's number of words)."""
    counts = ev.training_counts(train.texts)
    test = batches.SignDataset(cfg, "test", NoText())
    found = total = 0
    for i in range(len(test)):
        item = test[i]
        _, mask, logits = enc(item["poses"][None], torch.ones(1, len(item["poses"]), dtype=torch.bool))
        pooled = logits[0].logsumexp(0)[:len(train.words)]
        ref = set(words.word_tokens(item["text"]))
        top = {train.words[j] for j in pooled.topk(len(ref)).indices.tolist()}
        rare = [w for w in ref if counts[w] <= 2]
        found, total = found + sum(w in top for w in rare), total + len(rare)
    assert total >= 50, total
    return found / total


@pytest.mark.timeout(300)
def test_a_dictionary_raises_rare_word_recall(tmp_path):
    zipf.generate_corpus(tmp_path / "z", n=260, seed=5, vocab_seed=3, fps=12.5, size=(640, 480))
    z = tmp_path / "z"
    cfg = corpus.resolve_layout(data.DataConfig(data_dir=str(z), lexicon_dir=str(z / "lexicon")))
    data.prepare(cfg, workers=1, progress=False)
    data.prepare(lexicon.lexicon_config(cfg), workers=1, progress=False)
    without = rare_recall(*train_head(cfg, False), cfg)
    with_lexicon = rare_recall(*train_head(cfg, True), cfg)
    assert with_lexicon > without + 0.15 and with_lexicon > 2 * without, (without, with_lexicon)
    np.testing.assert_(0 <= without <= 1)
