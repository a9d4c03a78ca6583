"""translator.py: the pose encoder (lengths, padding, scale), splicing soft tokens into a prompt,
and the word objective against hand-computed values; data.py's word vocabulary."""
import math

import numpy as np
import pytest
import torch

import translator
import words

PARTS = {"body": slice(0, 2), "hand": slice(2, 4)}  # 4 feature points of 3 numbers: F = 12


def test_pose_encoder_lengths_and_padding():
    torch.manual_seed(0)
    enc = translator.PoseEncoder(PARTS, channels=3, hidden_size=32, width=16, layers=1, aux_words=5).eval()
    # each stride-2 stage maps n -> ceil(n / 2), computed by hand
    assert [enc.output_lengths(n) for n in (1, 2, 4, 5, 8, 9, 300)] == [1, 1, 1, 2, 2, 3, 75]
    assert enc.output_lengths(torch.tensor([9, 300])).tolist() == [3, 75]
    frames = [9, 23, 16]
    poses = torch.randn(3, 23, 12)
    pose_mask = torch.arange(23)[None] < torch.tensor(frames)[:, None]
    poses[~pose_mask] = 1e3  # garbage in the padding must not leak into real tokens
    with torch.no_grad():
        tokens, token_mask, words = enc(poses, pose_mask)
        assert tokens.shape == (3, 6, 32) and token_mask.sum(1).tolist() == [3, 6, 4] and words.shape == (3, 6, 5)
        for i, n in enumerate(frames):
            alone, alone_mask, alone_words = enc(poses[i:i + 1, :n], pose_mask[i:i + 1, :n])
            assert alone_mask.all()
            torch.testing.assert_close(tokens[i, token_mask[i]], alone[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(words[i, token_mask[i]], alone_words[0], rtol=0, atol=1e-5)


def test_pose_tokens_have_embedding_norm_and_splice_at_placeholders():
    torch.manual_seed(0)
    enc = translator.PoseEncoder(PARTS, channels=3, hidden_size=32, width=16).eval()
    embedding = 0.02 * torch.randn(100, 32)
    enc.set_embed_scale(translator.embedding_rms(embedding))
    tokens, token_mask, _ = enc(torch.randn(2, 8, 12), torch.tensor([[True] * 8, [True] * 4 + [False] * 4]))
    rms = tokens[token_mask].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, embedding.pow(2).mean(-1).sqrt().median().item()))

    P = 99  # pose placeholder id; sample 0 has 2 soft tokens, sample 1 has 1
    input_ids = torch.tensor([[5, P, P, 7, 8], [5, 6, P, 7, 8]])
    embeds = torch.randn(2, 5, 32)
    out = translator.splice_pose_tokens(embeds, input_ids, P, tokens, token_mask)
    assert torch.equal(out[0, 1:3], tokens[0, :2]) and torch.equal(out[1, 2], tokens[1, 0])
    keep = input_ids != P
    assert torch.equal(out[keep], embeds[keep])
    with pytest.raises(ValueError, match="sample 1: its prompt has 2 pose placeholders"):
        translator.splice_pose_tokens(embeds, torch.tensor([[5, P, P, 7, 8], [5, P, P, 7, 8]]), P, tokens, token_mask)



def test_word_presence_loss_by_hand():
    torch.manual_seed(0)
    logits, mask = torch.randn(2, 4, 4), torch.tensor([[True] * 4, [True, True, False, False]])
    targets = torch.tensor([[1.0, 0, 0, -1], [0, 1, 1, -1]])  # slot 3: no vocabulary word, left out
    want = 0.0
    for b in range(2):
        n = int(mask[b].sum())
        pooled = [math.log(sum(math.exp(logits[b, t, v]) for t in range(n)) / n) for v in range(3)]
        bce = [-math.log(1 / (1 + math.exp(-z))) if y else -math.log(1 - 1 / (1 + math.exp(-z)))
               for z, y in zip(pooled, targets[b, :3].tolist())]
        pos = [l for l, y in zip(bce, targets[b].tolist()) if y]
        neg = [l for l, y in zip(bce, targets[b].tolist()) if not y]
        want += sum(pos) / len(pos) + sum(neg) / len(neg)
    assert translator.word_presence_loss(logits, mask, targets).item() == pytest.approx(want, rel=1e-5)


def test_word_vocabulary_and_targets():
    texts = ["The girl eats a mango.", "The boy does not eat.", "A girl and a boy eat mangoes!"]
    assert words.words_of(texts[1]) == {"boy", "not", "eat"}
    # by count (girl 2, boy 2, eat 2), then alphabetically; stop words (the, a, does) left out
    assert words.word_vocabulary(texts, 4) == ["boy", "eat", "girl", "and"]
    # a question is a target of its own (the face may be all that says it); not a word of the text
    assert words.words_of("Does the boy eat?") == {"boy", "eat", "?"} and words.word_tokens("Does the boy eat?") == \
        ["boy", "eat"]


def test_answer_dropout_replaces_answer_inputs_only():
    """answer_dropout=1 in training: every answer token given as input becomes the pad token; the
    prompt (and its pose placeholders) and the labels stay; in eval mode nothing changes."""
    import loader
    from model import Qwen2Config

    torch.manual_seed(0)
    llm = loader.random_model(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2))
    enc = translator.PoseEncoder(PARTS, channels=3, hidden_size=32, width=16)
    model = translator.SignTranslator(llm, enc, pose_token_id=49, pad_id=0, answer_dropout=1.0).train()
    P = 49
    ids = torch.tensor([[5, P, P, 7, 11, 12, 13]])          # prompt 5 P P 7, answer 11 12 13
    labels = torch.tensor([[-100, -100, -100, -100, 11, 12, 13]])
    batch = {"input_ids": ids, "labels": labels, "poses": torch.randn(1, 8, 12),
             "pose_mask": torch.ones(1, 8, dtype=torch.bool)}
    embeds, _, _ = model.embed(batch)
    table = llm.model.embed_tokens.weight
    assert torch.equal(embeds[0, 4:], table[0].expand(3, -1))        # the answer inputs: padding
    assert torch.equal(embeds[0, [0, 3]], table[[5, 7]])             # the prompt's tokens: kept
    assert torch.equal(batch["labels"], labels)
    model.eval()
    assert torch.equal(model.embed(batch)[0][0, 4:], table[[11, 12, 13]])


def test_input_stats_standardise_present_points_and_leave_missing_ones_zero():
    """set_input_stats: per point and coordinate, mean and std over the frames where the point
    is present (computed here by hand); the encoder then sees (x - mean) / std, and 0 for a
    missing point whatever its stored value."""
    torch.manual_seed(0)
    enc = translator.PoseEncoder(PARTS, channels=3, hidden_size=32, width=16)
    feats = np.random.default_rng(0).normal(2.0, 0.5, (50, 4, 3)).astype(np.float32)
    feats[..., 2] = 1
    feats[::5, 1] = 0                        # point 1 missing in every fifth frame (zeros, presence 0)
    feats[:, 3, 1] = 0.5                     # point 3's y never moves: std floored at 0.01
    enc.set_input_stats(feats.reshape(50, 12))
    for k in range(4):
        seen = feats[:, k, 2] > 0
        mean, std = feats[seen, k, :2].mean(0), feats[seen, k, :2].std(0)
        std = np.maximum(std, 0.01)
        np.testing.assert_allclose(enc.in_scale[k].detach().numpy(), 1 / std, rtol=1e-4)
        np.testing.assert_allclose(enc.in_shift[k].detach().numpy(), -mean / std, rtol=1e-4, atol=1e-5)
    # what the first stage sees: standardised coordinates, missing points 0
    seen = {}
    enc.embed["body"].register_forward_hook(lambda m, inp, out: seen.update(body=inp[0]))  # returns None
    enc.eval()(torch.from_numpy(feats.reshape(1, 50, 12)), torch.ones(1, 50, dtype=torch.bool))
    body = seen["body"][0, :, :6].detach().reshape(50, 2, 3)  # points 0 and 1: x, y, present
    k1 = feats[:, 1, 2] > 0
    m1, s1 = feats[k1, 1, :2].mean(0), feats[k1, 1, :2].std(0)
    np.testing.assert_allclose(body[k1, 1, :2].numpy(), (feats[k1, 1, :2] - m1) / s1, rtol=1e-4, atol=1e-4)
    assert (body[~k1, 1] == 0).all()


def test_word_hints_hand_computed():
    """The clip's k likeliest words (word_presence_loss's pooling), in the order their logits peak,
    each word's token embeddings scaled by its probability; fewer words than k: zeros."""
    embed = torch.nn.Embedding(10, 2)
    with torch.no_grad():
        embed.weight.copy_(torch.arange(20.).view(10, 2))
    token_ids = torch.tensor([[1, 0], [2, 3], [4, 0], [5, 6]])          # 4 words of up to 2 tokens (0: filler)
    logits = torch.full((1, 3, 5), -9.)                                 # 3 tokens, a head of 5 slots
    logits[0, 2, 0], logits[0, 0, 3], logits[0, 1, 1] = 3., 2., -1.     # word 0 late, word 3 first, word 1 weak
    logits[0, :, 4] = 50.                                               # slot 4: past the vocabulary, never a hint
    mask = torch.ones(1, 3, dtype=torch.bool)
    head = torch.nn.Linear(2, 10, bias=False)
    with torch.no_grad():
        head.weight.copy_(-torch.arange(20.).view(10, 2) ** 2)
    hints = translator.WordHints(token_ids, k=2)
    got = hints(logits, mask, embed, head)
    pooled = torch.logsumexp(logits, 1) - math.log(3)                   # (1, 5)

    def word(w):   # input embedding + lm_head row at the embedding's length, times the word's probability
        e, o = embed.weight[token_ids[w]], head.weight[token_ids[w]]
        return (e + o * e.norm(dim=1, keepdim=True) / o.norm(dim=1, keepdim=True)) * torch.sigmoid(pooled[0, w])
    want = torch.cat([word(3), word(0)])                                # word 3 peaks first (token 0), then word 0
    assert hints.tokens == 4 and torch.allclose(got[0], want)
    got5 = translator.WordHints(token_ids, k=5)(logits, mask, embed, head)   # only 4 words: the rest zeros
    assert got5.shape == (1, 10, 2) and torch.all(got5[0, 8:] == 0)
    # appended right after each clip's own tokens, the padding after them
    tokens, tmask = torch.ones(2, 3, 2), torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out, omask = translator.append_tokens(tokens * tmask[..., None], tmask, torch.full((2, 2, 2), 7.))
    assert omask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out[:, :, 0].tolist() == [[1, 1, 1, 7, 7], [1, 7, 7, 0, 0]]
