"""The task model: pose features -> soft tokens -> a prompted Qwen2 that writes the English.

    PoseEncoder         (B, frames, F) pose features -> (B, T', hidden) soft tokens
    splice_pose_tokens  those tokens in place of the pose placeholders of a chat prompt
    SignTranslator      encoder + Qwen2 (+ LoRA): the training loss, and translation
    build_model         the one place a trained model is assembled (train.py, eval.py, benchmarks/training.py)
    collate_fn, to_device, autocast   what every caller needs around a batch

References: SpaMo (Hwang et al. 2024, arXiv:2408.11915: a linear + temporal-conv adapter into a
frozen LLM); Sign2GPT (Wong et al. 2024, arXiv:2405.04164); QLoRA (Dettmers et al. 2023).

    model = build_model(cfg, tok, device)        # cfg: config.TrainConfig
    loss_sum, n_tokens = model(batch)             # batch from collate_fn(model, tok)
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import batches
import loader
import lora
import poses
import sharding
from model import Qwen2, Qwen2Config
from tokenizer import Tokenizer


# ----------------------------------------------------------------------------- pose encoder


class PoseEncoder(nn.Module):
    """(B, frames, F) pose features -> (B, T', hidden) soft tokens in the LLM's embedding space.

    0. Each point's coordinates standardised (set_input_stats, then trained).
    1. Per part (body, each hand, face: poses.part_slices), a Linear of the part's features and
       of their frame-to-frame differences (motion) to `width`; the parts' vectors are summed
       (GELU, LayerNorm, dropout). Each part has its own weights, so the face's many points do
       not drown a hand's, and a hand's shape and its place arrive together (Uni-Sign, Li et al.
       2025: per-part pose embeddings, the body's wrist added to each hand).
    2. 2 x [Conv1d(width, width, kernel 5, stride 2, padding 2) + GELU]: T' = ceil(ceil(T/2)/2)
       tokens, each seeing ~13 frames (SpaMo's temporal-conv adapter, Hwang et al. 2024).
    3. `layers` pre-norm residual blocks of Conv1d(kernel 5) over the T' tokens, dilated 1, 2,
       4, ...: three blocks let a token see ~29 tokens, ~4.6 s at 25 fps (a few signs). Each
       block starts as the identity (zero-initialised convolution), so adding blocks never makes
       the encoder worse to begin with.
    4. Projector Linear(width -> hidden) + GELU + Linear(hidden -> hidden), RMS-normalised and
       multiplied by `embed_scale` (the typical RMS of the LLM's embedding rows, so soft tokens
       have the magnitude the LLM expects of an input) times exp(log_gain), a trained scalar.
    Word head (aux_words > 0): Linear(width -> aux_words) on step 3's tokens, per-token logits
    of which vocabulary words are signed there (word_presence_loss).
    Padded frames are zeroed before each convolution and masked in attention, so a padded sample
    yields the tokens of the same sample unpadded."""

    def __init__(self, parts: dict[str, slice], channels: int, hidden_size: int, width: int = 256,
                 layers: int = 2, dropout: float = 0.1, aux_words: int = 0):
        super().__init__()
        self.parts, self.channels = parts, channels                # feature points per part, numbers per point
        points = max(sl.stop for sl in parts.values())
        # x' = x * in_scale + in_shift per point and coordinate (set_input_stats: the training
        # split's standardisation, then trained; present points only: a missing one stays 0)
        self.in_scale = nn.Parameter(torch.ones(points, channels - 1))
        self.in_shift = nn.Parameter(torch.zeros(points, channels - 1))
        self.embed = nn.ModuleDict({name: nn.Linear((2 * channels - 1) * (sl.stop - sl.start), width)
                                    for name, sl in parts.items()})
        self.frame = nn.Sequential(nn.GELU(), nn.LayerNorm(width), nn.Dropout(dropout))
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel_size=5, stride=2, padding=2) for _ in range(2))
        self.blocks = nn.ModuleList(TemporalBlock(width, 2**i, dropout) for i in range(layers))
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden_size), nn.GELU(),
                                  nn.Linear(hidden_size, hidden_size))
        self.words = nn.Linear(width, aux_words) if aux_words else None
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.register_buffer("embed_scale", torch.tensor(1.0))

    @torch.no_grad()
    def set_embed_scale(self, row_rms: Tensor) -> None:
        """embed_scale = the median RMS of the embedding rows (row_rms: embedding_rms of the whole
        table; the median, since unused vocabulary rows can be ~0)."""
        self.embed_scale.copy_(row_rms.median())

    @torch.no_grad()
    def set_input_stats(self, features: np.ndarray, sample_rows: int = 200_000) -> None:
        """Standardise the input from a (frames, F) array of training features (all the frames
        of a split, of which sample_rows rows spread evenly are read): per point and coordinate,
        the mean and std over the frames where the point is present (std at least 0.01, a few
        millimetres).

        Without it the encoder learns the words of some corpora very slowly or not at all: a hand
        shape moves its points by a few hundredths of a shoulder width around offsets of up to
        ~1, and AdamW's steps, about lr per weight whatever the gradient's size, would take tens
        of thousands of steps to grow weights that amplify such small differences."""
        rows = np.linspace(0, len(features) - 1, min(len(features), sample_rows)).astype(np.int64)
        p = torch.from_numpy(np.asarray(features[rows], np.float32)).view(len(rows), -1, self.channels)
        xy, present = p[..., :-1], p[..., -1:]                                # (N, K, C), (N, K, 1)
        n = present.sum(0).clamp(min=1)
        mean = (xy * present).sum(0) / n
        std = (((xy - mean) ** 2 * present).sum(0) / n).sqrt().clamp(min=0.01)
        self.in_scale.copy_(1 / std)
        self.in_shift.copy_(-mean / std)

    @staticmethod
    def output_lengths(frames: Tensor | int) -> Tensor | int:
        """Soft tokens for `frames` frames: each stride-2 conv maps n -> ceil(n / 2)."""
        for _ in range(2):
            frames = (frames + 1) // 2
        return frames

    def _frames(self, poses: Tensor) -> Tensor:
        """(B, T, F) features -> (B, T, width): each part's points and their motion, embedded and summed."""
        B, T, _ = poses.shape
        p = poses.view(B, T, -1, self.channels)                              # (B, T, K, C+1)
        present = p[..., -1:]
        xy = (p[..., :-1] * self.in_scale + self.in_shift) * present         # standardised; missing stays 0
        p = torch.cat((xy, present), -1)
        both = present[:, 1:] * present[:, :-1]                              # seen in this frame and the last
        motion = torch.cat((torch.zeros_like(xy[:, :1]), (xy[:, 1:] - xy[:, :-1]) * both), 1)   # (B, T, K, C)
        x = 0
        for name, sl in self.parts.items():
            part = torch.cat((p[:, :, sl].flatten(2), motion[:, :, sl].flatten(2)), -1)
            x = x + self.embed[name](part)
        return self.frame(x)

    def forward(self, poses: Tensor, pose_mask: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """poses (B, T, F), pose_mask (B, T) True on real frames (right padding) -> tokens
        (B, T', hidden), token_mask (B, T') bool, and word logits (B, T', aux_words) or None."""
        lengths = pose_mask.sum(1)  # (B,)
        x = self._frames(poses)  # (B, T, W)
        for conv in self.convs:
            keep = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T_i)
            x = x * keep[..., None]
            x = F.gelu(conv(x.transpose(1, 2)).transpose(1, 2))  # (B, ceil(T_i/2), W)
            lengths = (lengths + 1) // 2
        token_mask = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T')
        for block in self.blocks:
            x = block(x, token_mask)
        words = self.words(x) if self.words is not None else None
        x = self.proj(x)  # (B, T', hidden)
        x = F.rms_norm(x, (x.shape[-1],)) * (self.embed_scale * self.log_gain.exp())
        return x * token_mask[..., None], token_mask, words


class TemporalBlock(nn.Module):
    """x + Dropout(Conv1d(GELU(LayerNorm(x)))) over the tokens (B, T', W), kernel 5 with a
    dilation; padded tokens are zeroed before the convolution (they see only zeros past the end)."""

    def __init__(self, width: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel_size=5, padding=2 * dilation, dilation=dilation)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        h = F.gelu(self.norm(x)) * keep[..., None]                             # (B, T', W)
        return x + self.drop(self.conv(h.transpose(1, 2)).transpose(1, 2))


def word_presence_loss(logits: Tensor, token_mask: Tensor, targets: Tensor) -> Tensor:
    """Sum over the batch of a balanced binary cross-entropy of which words a clip signs.

    logits (B, T', V) per token; a word's clip-level logit is their log-mean-exp over the clip's
    tokens (a soft maximum: the word is there if some tokens say so; Sign2GPT's pseudo-gloss
    pretraining, Wong et al. 2024, trains an encoder on such word targets). targets (B, V): 1
    present, 0 absent, -1 no vocabulary word in that slot (a corpus with fewer than V words),
    left out. Per clip: the mean loss of its present words plus the mean loss of its absent ones,
    so the few present words weigh as much as the many absent."""
    n = token_mask.sum(1, keepdim=True).clamp(min=1)                         # (B, 1)
    pooled = logits.float().masked_fill(~token_mask[..., None], float("-inf")).logsumexp(1) - n.log()  # (B, V)
    present, absent = (targets == 1).float(), (targets == 0).float()
    bce = F.binary_cross_entropy_with_logits(pooled, present, reduction="none")
    return ((bce * present).sum(1) / present.sum(1).clamp(min=1)
            + (bce * absent).sum(1) / absent.sum(1).clamp(min=1)).sum()


def embedding_alignment_loss(tokens: Tensor, token_mask: Tensor, word_embeds: Tensor, targets: Tensor,
                             scale: float = 10.0) -> Tensor:
    """word_presence_loss on the cosine of each soft token with the LLM's input embedding of each
    vocabulary word: the clip's tokens are drawn towards the embeddings of the words it signs and
    away from the others, so that the soft tokens arrive in the frozen LLM as something like its
    own words (a bag of glosses), which it can read before any adapter has learned the poses.
    Visual tokens aligned to the language model's embeddings: SAGE (Low et al., ICCV workshops 2025,
    arXiv:2507.09266); word targets from the texts: Sign2GPT's pseudo-glosses.

    tokens (B, T', H) soft tokens, token_mask (B, T'), word_embeds (V, H), targets (B, V) as in
    word_presence_loss; `scale` maps the cosine in [-1, 1] to logits (a temperature of 0.1)."""
    cos = F.normalize(tokens.float(), dim=-1) @ F.normalize(word_embeds.float(), dim=-1).T  # (B, T', V)
    return word_presence_loss(scale * cos, token_mask, targets)


def isolated_word_loss(logits: Tensor, token_mask: Tensor, labels: Tensor) -> Tensor:
    """Sum over the batch of the cross-entropy of which ONE word each clip signs: isolated signs
    of a dictionary (lexicon.py) through the word head. logits (B, T', V) per token, pooled over
    each clip's tokens as word_presence_loss pools them; labels (B,) the word's slot. A softmax
    over every word makes each sign push the others away, as isolated-sign recognition is trained
    (e.g. WLASL, Li et al. 2020)."""
    n = token_mask.sum(1, keepdim=True).clamp(min=1)                         # (B, 1)
    pooled = logits.float().masked_fill(~token_mask[..., None], float("-inf")).logsumexp(1) - n.log()  # (B, V)
    return F.cross_entropy(pooled, labels, reduction="sum")


class WordHints(nn.Module):
    """The word head's `k` likeliest words of a clip, given to the LLM as text: k x span soft
    tokens after the pose tokens, each word's own tokens (its first `span`, a filler token after
    them) as the sum of their input embedding and their row of lm_head (scaled to the embedding's
    norm), times the head's probability of the word, in the order the clip signs them (where each
    word's logit peaks). A language model copies from its context: moving a token's lm_head row
    into the last position raises that token's logit, so copying a word works the same for every
    word, one written a few times or never as well as a frequent one, where the LLM would
    otherwise have to learn each rare word's sign from a handful of clips (docs/training.md, "The
    long tail"); the input embedding is the word as a pretrained LLM reads it. The choice is not
    trained through the LLM (detached): the word losses train the head.

    token_ids (V, span): the tokens of the head's V words (config aux_vocabulary)."""

    def __init__(self, token_ids: Tensor, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("token_ids", token_ids, persistent=False)

    @property
    def tokens(self) -> int:
        return self.k * self.token_ids.shape[1]

    def forward(self, logits: Tensor, token_mask: Tensor, embed: nn.Module, lm_head: nn.Module) -> Tensor:
        """logits (B, T', aux_words) per token, token_mask (B, T') -> hints (B, k * span, H)."""
        V, k = self.token_ids.shape[0], min(self.k, self.token_ids.shape[0])
        z = logits.detach().float()[..., :V].masked_fill(~token_mask[..., None], float("-inf"))   # (B, T', V)
        n = token_mask.sum(1, keepdim=True).clamp(min=1)
        p, top = (z.logsumexp(1) - n.log()).topk(k, dim=1)                  # (B, k): word_presence_loss's pooling
        order = z.argmax(1).gather(1, top).argsort(1)                      # by where each word peaks
        top, p = top.gather(1, order), p.gather(1, order)
        ids = self.token_ids[top]                                          # (B, k, span)
        e = embed(ids)                                                     # (B, k, span, H)
        out = lm_head.weight[ids].to(e.dtype)                              # the tokens' output rows, as long
        e = e + out * (e.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp(min=1e-6)).detach()
        e = (e * torch.sigmoid(p)[..., None, None].to(e.dtype)).flatten(1, 2)
        return F.pad(e, (0, 0, 0, self.tokens - e.shape[1]))               # fewer words than k: zeros


def hint_token_ids(words: list[str], tok: Tokenizer, span: int = 3) -> Tensor:
    """(V, span) the first `span` tokens of each word (" word"; "?" alone), the pad token after."""
    ids = [tok.encode(w if w == "?" else f" {w}")[:span] for w in words]
    return torch.tensor([i + [tok.pad_id] * (span - len(i)) for i in ids], dtype=torch.long)


def append_tokens(tokens: Tensor, token_mask: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T', H) right-padded tokens + (B, m, H) -> (B, T' + m, H) with each sample's m extra
    tokens right after its own, and the new mask."""
    B, T, H = tokens.shape
    m = extra.shape[1]
    lengths = token_mask.sum(1, keepdim=True)                              # (B, 1)
    where = (lengths + torch.arange(m, device=tokens.device))[..., None].expand(B, m, H)
    out = torch.cat((tokens, tokens.new_zeros(B, m, H)), 1).scatter(1, where, extra.to(tokens.dtype))
    return out, torch.arange(T + m, device=tokens.device) < lengths + m


def splice_pose_tokens(inputs_embeds: Tensor, input_ids: Tensor, pose_token_id: int, tokens: Tensor,
                       token_mask: Tensor) -> Tensor:
    """Put sample i's soft tokens (tokens[i][token_mask[i]], in order) at the pose_token_id
    positions of its prompt. inputs_embeds (B, T, H), input_ids (B, T), tokens (B, T', H)."""
    is_pose = input_ids == pose_token_id  # (B, T)
    wanted, have = is_pose.sum(1), token_mask.sum(1)
    if not torch.equal(wanted, have):
        i = int((wanted != have).nonzero()[0])
        raise ValueError(f"sample {i}: its prompt has {int(wanted[i])} pose placeholders (id {pose_token_id}) "
                         f"but its poses give {int(have[i])} soft tokens")
    # masked_scatter fills the True positions in row-major order: sample 0's placeholders first
    return inputs_embeds.masked_scatter(is_pose[..., None], tokens[token_mask].to(inputs_embeds.dtype))


# ----------------------------------------------------------------------------- the model

class Losses(NamedTuple):
    lm: Tensor           # summed cross-entropy over the answer tokens (0 when lm=False)
    tokens: Tensor       # answer tokens
    words: Tensor        # summed word_presence_loss over the clips, + align_weight x the embedding
                         # alignment's (0 without word targets)


class SignTranslator(nn.Module):
    """Pose encoder + Qwen2 (+ LoRA). Soft tokens replace the pose placeholders of the prompt.

    Parameter names ("llm.model.layers.0.self_attn.q_proj.lora_A.weight", "encoder.proj.1.weight")
    are the names in checkpoints."""

    def __init__(self, llm: Qwen2, encoder: PoseEncoder, pose_token_id: int, pad_id: int = 0,
                 answer_dropout: float = 0.0, hints: WordHints | None = None):
        super().__init__()
        self.llm, self.encoder, self.pose_token_id = llm, encoder, pose_token_id
        self.pad_id, self.answer_dropout, self.hints = pad_id, answer_dropout, hints
        self.align_ids: Tensor | None = None   # (V, L) token ids of each word-head word (set_alignment)
        self.align_weight = 0.0

    def tokens_per_clip(self, frames: Tensor | int) -> Tensor | int:
        """Soft tokens a clip of `frames` frames becomes: the encoder's, then the word hints."""
        return self.encoder.output_lengths(frames) + (self.hints.tokens if self.hints is not None else 0)

    def set_alignment(self, tok: Tokenizer, words: list[str], n_words: int, weight: float) -> None:
        """Train the soft tokens towards the LLM's embeddings of the words each clip signs
        (embedding_alignment_loss, added to the word loss at `weight`). words: the word head's
        vocabulary (batches.SignDataset.words), n_words slots; each word as it appears mid-sentence."""
        ids = [tok.encode(" " + w) for w in words[:n_words]] + [[]] * (n_words - len(words[:n_words]))
        width = max([1, *map(len, ids)])
        device = self.encoder.log_gain.device
        self.align_ids = torch.tensor([x + [-1] * (width - len(x)) for x in ids], device=device)
        self.align_weight = weight

    def word_embeddings(self) -> Tensor:
        """(V, H) the LLM's input embedding of each word (the mean over its tokens; 0 for an empty slot)."""
        have = self.align_ids >= 0                                           # (V, L)
        rows = self.llm.model.embed_tokens(self.align_ids.clamp(min=0))      # (V, L, H)
        return (rows * have[..., None]).sum(1) / have.sum(1, keepdim=True).clamp(min=1)

    def embed(self, batch: dict, encoded: tuple | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """Prompt (+ answer) embeddings with the soft pose tokens spliced in (B, T, H); the encoder's
        word logits (B, T', V) or None, and its token mask (B, T').

        Training with answer_dropout p: each answer token given as input (not as target) is the
        pad token with probability p, so the next word cannot always be guessed from the words
        before it and must come from the signs (word dropout, Bowman et al. 2016). `encoded`: the
        encoder's output for these poses when the caller has it already."""
        tokens, token_mask, words = encoded or self.encoder(batch["poses"], batch["pose_mask"])  # (B, T', H), (B, T')
        pose_mask = token_mask
        if self.hints is not None:
            hints = self.hints(words, token_mask, self.llm.model.embed_tokens, self.llm.lm_head)
            tokens, pose_mask = append_tokens(tokens, token_mask, hints)
        ids = batch["input_ids"]
        if self.training and self.answer_dropout > 0 and "labels" in batch:
            drop = (batch["labels"] != -100) & (torch.rand(ids.shape, device=ids.device) < self.answer_dropout)
            ids = ids.masked_fill(drop, self.pad_id)
        embeds = self.llm.model.embed_tokens(ids)  # (B, T, H)
        return splice_pose_tokens(embeds, ids, self.pose_token_id, tokens, pose_mask), words, token_mask

    def forward(self, batch: dict, lm: bool = True) -> Losses:
        """The language-model loss over the answer tokens, and the encoder's word loss when the
        batch has word targets (and isolated dictionary signs, iso_*: lexicon.MixedBatches).
        lm=False skips the LLM (the encoder's warm-up on words alone).

        The vocabulary projection runs only where a label is: (N, V) logits for N answer tokens
        instead of (B, T, V), which for Qwen's 152k vocabulary would dwarf everything else."""
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        at = targets != -100  # (B, T-1)
        encoded = self.encoder(batch["poses"], batch["pose_mask"])  # soft tokens, their mask, word logits
        if lm:
            embeds, words, token_mask = self.embed(batch, encoded)
            hidden = self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                              return_hidden=True)  # (B, T, H)
            logits = self.llm.lm_head(hidden[:, :-1][at]).float()  # (N, V)
            lm_sum = F.cross_entropy(logits, targets[at], reduction="sum")
        else:
            _, token_mask, words = encoded
            lm_sum = torch.zeros((), device=at.device)
        word_sum = torch.zeros((), device=at.device)
        if words is not None and "word_targets" in batch:
            word_sum = word_presence_loss(words, token_mask, batch["word_targets"])
        if self.align_ids is not None and "word_targets" in batch:
            word_sum = word_sum + self.align_weight * embedding_alignment_loss(
                encoded[0], token_mask, self.word_embeddings(), batch["word_targets"])
        if words is not None and "iso_word_label" in batch:   # a dictionary's signs, one word each
            _, iso_mask, iso_words = self.encoder(batch["iso_poses"], batch["iso_pose_mask"])
            word_sum = word_sum + isolated_word_loss(iso_words, iso_mask, batch["iso_word_label"])
        return Losses(lm_sum, at.sum(), word_sum)

    @torch.no_grad()
    def translate(self, batch: dict, tok: Tokenizer, max_new_tokens: int, num_beams: int = 1,
                  static: bool = False) -> list[str]:
        """Decode a left-padded generation batch (batches.collate(..., for_generation=True))."""
        new = self.llm.generate(inputs_embeds=self.embed(batch)[0], attention_mask=batch["attention_mask"],
                                max_new_tokens=max_new_tokens, eos_token_id=tok.eos_ids,
                                pad_token_id=tok.pad_id, num_beams=num_beams, static=static)  # (B, n_new)
        return [tok.decode(row).strip() for row in new.tolist()]


def build_model(cfg, tok: Tokenizer, device: torch.device, features: np.ndarray | None = None,
                random_shape: Qwen2Config | None = None, shard: bool = False) -> SignTranslator:
    """The one place a model is assembled (train.py, eval.py, benchmarks/training.py); cfg is a
    config.TrainConfig. The frozen base (model_dir's checkpoint, 4-bit by default; random weights
    of the model.Qwen2Config `random_shape` for benchmarks) -> LoRA -> the pose encoder, sized to
    the data's features, standardised to the training split's `features` (set_input_stats; None:
    a checkpoint brings them) and scaled to the embeddings (set_embed_scale). shard=True (--fsdp,
    under torchrun): the base stays on the meta device until FSDP has sharded the model over the
    processes; then each loads only its chunks (sharding.shard_and_load)."""
    dtype, base = base_dtype(device), dict(quantize=cfg.base_quantize, double_quant=cfg.double_quant,
                                           offload_embeddings=cfg.offload_embeddings)
    if shard:
        llm = loader.empty_model(random_shape or cfg.model_dir, dtype, **base)
    elif random_shape is not None:
        llm = loader.random_model(random_shape, dtype, device, **base)
    else:
        llm = loader.load_model(cfg.model_dir, dtype, device, quant_cache=cfg.quant_cache, **base)
    lora.apply_lora(llm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    targets=cfg.lora_targets, modules_to_save=cfg.modules_to_save, device=device)
    llm.gradient_checkpointing = cfg.gradient_checkpointing
    pcfg = cfg.data.pose
    encoder = PoseEncoder(poses.part_slices(pcfg), poses.channels(pcfg), llm.config.hidden_size,
                          width=cfg.encoder_width, layers=cfg.encoder_layers,
                          dropout=cfg.encoder_dropout, aux_words=cfg.word_head_size).to(device)
    if features is not None:  # before sharding: every rank the same
        encoder.set_input_stats(features)
    hints = None
    if cfg.word_hints and cfg.word_head_size and cfg.aux_vocabulary:   # the vocabulary: resolved where a run starts
        hints = WordHints(hint_token_ids(cfg.aux_vocabulary[:cfg.aux_words], tok), cfg.word_hints).to(device)
    model = SignTranslator(llm, encoder, tok.pose_token_id, tok.pad_id, cfg.answer_dropout, hints)
    for p in model.parameters():
        if p.requires_grad:  # AdamW updates would round away in a 16-bit trained tensor
            p.data = p.data.float()
    if shard:
        sharding.shard_and_load(model, llm, None if random_shape else cfg.model_dir, dtype, device,
                                cfg.fsdp_cpu_offload, cfg.quant_cache)
    encoder.set_embed_scale(sharding.whole(embedding_rms(llm.model.embed_tokens.weight)))
    return model


def embedding_rms(weight: Tensor) -> Tensor:
    """(vocab,) float32 RMS of each embedding row, without a float32 copy of the table (vocab x
    hidden x 4 bytes); of a table FSDP shards, this rank's rows (sharding.whole gathers them)."""
    return torch.linalg.vector_norm(weight, dim=-1, dtype=torch.float32) / weight.shape[-1] ** 0.5


def base_dtype(device: torch.device) -> torch.dtype:
    """The frozen base's 16-bit tensors: bf16 on GPUs, float32 on the CPU (its path is float32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def collate_fn(model: SignTranslator, tok: Tokenizer, for_generation: bool = False):
    """batches.collate with one pose placeholder expanded to the model's number of soft tokens."""
    return lambda items: batches.collate(items, tok, model.tokens_per_clip, for_generation=for_generation)


def autocast(device: torch.device):
    """bf16 autocast on GPUs; the CPU path runs in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
