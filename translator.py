"""The task model: pose features -> soft tokens -> a prompted Qwen2 that writes the English.

    PoseEncoder         (B, frames, F) pose features -> (B, T', hidden) soft tokens
    splice_pose_tokens  those tokens in place of the pose placeholders of a chat prompt
    SignTranslator      encoder + Qwen2 (+ LoRA): the training loss, and translation
    build_model         the one place a trained model is assembled (train.py, eval.py, bench.py)
    collate_fn, to_device, autocast   what every caller needs around a batch

References: SpaMo (Hwang et al. 2024, arXiv:2408.11915: a linear + temporal-conv adapter into a
frozen LLM); Sign2GPT (Wong et al. 2024, arXiv:2405.04164); QLoRA (Dettmers et al. 2023).

    model = build_model(cfg, tok, device)        # cfg: config.TrainConfig
    loss_sum, n_tokens = model(batch)             # batch from collate_fn(model, tok)
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import data
import loader
import lora
import poses
from model import Qwen2
from tokenizer import Tokenizer


# ----------------------------------------------------------------------------- pose encoder


class PoseEncoder(nn.Module):
    """(B, frames, F) pose features -> (B, T', hidden) soft tokens in the LLM's embedding space.

    per-frame Linear(F -> width) + GELU + LayerNorm
    -> 2 x [Conv1d(width, width, kernel 5, stride 2, padding 2) + GELU]: T' = ceil(ceil(T/2)/2)
    -> projector Linear(width -> hidden) + GELU + Linear(hidden -> hidden)
    -> RMS-normalised and multiplied by `embed_scale`, the typical RMS of the LLM's embedding
       rows, so soft tokens have the magnitude the frozen LLM expects of an input embedding.
    Padded frames are zeroed before each convolution, so a padded sample yields exactly the
    tokens of the same sample unpadded (a conv window past the end sees zeros either way)."""

    def __init__(self, in_features: int, hidden_size: int, width: int = 256, dropout: float = 0.1):
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(in_features, width), nn.GELU(), nn.LayerNorm(width), nn.Dropout(dropout))
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel_size=5, stride=2, padding=2) for _ in range(2))
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden_size), nn.GELU(),
                                  nn.Linear(hidden_size, hidden_size))
        self.register_buffer("embed_scale", torch.tensor(1.0))

    @torch.no_grad()
    def set_embed_scale(self, embedding_weight: Tensor) -> None:
        """embed_scale = median RMS of the embedding rows (median: unused vocab rows can be ~0)."""
        # the float32 norm of each row without a float32 copy of the table (1.45 GiB at 14B in bf16)
        hidden = embedding_weight.shape[-1]
        rms = torch.linalg.vector_norm(embedding_weight, dim=-1, dtype=torch.float32) / hidden**0.5
        self.embed_scale.copy_(loader.gathered(rms.median()))  # FSDP's table: only the rows' RMS are gathered

    @staticmethod
    def output_lengths(frames: Tensor | int) -> Tensor | int:
        """Soft tokens for `frames` frames: each stride-2 conv maps n -> ceil(n / 2)."""
        for _ in range(2):
            frames = (frames + 1) // 2
        return frames

    def forward(self, poses: Tensor, pose_mask: Tensor) -> tuple[Tensor, Tensor]:
        """poses (B, T, F), pose_mask (B, T) True on real frames (right padding) ->
        tokens (B, T', hidden) and token_mask (B, T') bool."""
        lengths = pose_mask.sum(1)  # (B,)
        x = self.frame(poses)  # (B, T, W)
        for conv in self.convs:
            keep = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T_i)
            x = x * keep[..., None]
            x = F.gelu(conv(x.transpose(1, 2)).transpose(1, 2))  # (B, ceil(T_i/2), W)
            lengths = (lengths + 1) // 2
        x = self.proj(x)  # (B, T', hidden)
        x = F.rms_norm(x, (x.shape[-1],)) * self.embed_scale
        token_mask = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
        return x * token_mask[..., None], token_mask


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

class SignTranslator(nn.Module):
    """Pose encoder + Qwen2 (+ LoRA). Soft tokens replace the pose placeholders of the prompt.

    Parameter names ("llm.model.layers.0.self_attn.q_proj.lora_A.weight", "encoder.frame.0.weight")
    are the names in checkpoints."""

    def __init__(self, llm: Qwen2, encoder: PoseEncoder, pose_token_id: int):
        super().__init__()
        self.llm, self.encoder, self.pose_token_id = llm, encoder, pose_token_id

    def embed(self, batch: dict) -> torch.Tensor:
        """Prompt (+ answer) embeddings with the soft pose tokens spliced in: (B, T, H)."""
        tokens, token_mask = self.encoder(batch["poses"], batch["pose_mask"])  # (B, T', H), (B, T')
        embeds = self.llm.model.embed_tokens(batch["input_ids"])  # (B, T, H)
        return splice_pose_tokens(embeds, batch["input_ids"], self.pose_token_id, tokens, token_mask)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the cross-entropy over answer tokens, number of answer tokens).

        The vocabulary projection runs only where a label is: (N, V) logits for N answer tokens
        instead of (B, T, V), which for Qwen's 152k vocabulary would dwarf everything else."""
        hidden = self.llm(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                          return_hidden=True)  # (B, T, H)
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        at = targets != -100  # (B, T-1)
        logits = self.llm.lm_head(hidden[:, :-1][at]).float()  # (N, V)
        return F.cross_entropy(logits, targets[at], reduction="sum"), at.sum()

    @torch.no_grad()
    def translate(self, batch: dict, tok: Tokenizer, max_new_tokens: int, num_beams: int = 1,
                  static: bool = False) -> list[str]:
        """Decode a left-padded generation batch (data.collate(..., for_generation=True))."""
        new = self.llm.generate(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                                max_new_tokens=max_new_tokens, eos_token_id=tok.eos_ids,
                                pad_token_id=tok.pad_id, num_beams=num_beams, static=static)  # (B, n_new)
        return [tok.decode(row).strip() for row in new.tolist()]


def build_model(cfg, tok: Tokenizer, device: torch.device, llm: Qwen2 | None = None) -> SignTranslator:
    """The one place a model is assembled (train.py, eval.py, bench.py): the frozen base (4-bit by
    default; or `llm`, already built) -> LoRA -> the pose encoder, sized to the data's features and
    scaled to the embeddings. cfg is a config.TrainConfig. An `llm` still on the meta device
    (train.py under FSDP: loaded after sharding) gets its adapters and encoder on `device`, and
    the encoder's embedding scale once the table is loaded (PoseEncoder.set_embed_scale)."""
    if llm is None:
        llm = loader.load_model(cfg.model_dir, dtype=base_dtype(device),
                                device=device, quantize=None if cfg.quantize == "none" else cfg.quantize,
                                double_quant=cfg.double_quant, quant_cache=cfg.quant_cache or None,
                                offload_embeddings=cfg.offload_embeddings)
    lora.apply_lora(llm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    targets=cfg.lora_targets, modules_to_save=cfg.modules_to_save, device=device)
    llm.gradient_checkpointing = cfg.gradient_checkpointing
    encoder = PoseEncoder(poses.feature_dim(cfg.data.pose), llm.config.hidden_size,
                          width=cfg.encoder_width, dropout=cfg.encoder_dropout).to(device)
    if not llm.model.embed_tokens.weight.is_meta:
        encoder.set_embed_scale(llm.model.embed_tokens.weight)
    model = SignTranslator(llm, encoder, tok.pose_token_id)
    for p in model.parameters():
        if p.requires_grad:  # AdamW updates would round away in a 16-bit trained tensor
            p.data = p.data.float()
    return model


def base_dtype(device: torch.device) -> torch.dtype:
    """The frozen base's 16-bit tensors: bf16 on GPUs, float32 on the CPU (its path is float32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def collate_fn(model: SignTranslator, tok: Tokenizer, for_generation: bool = False):
    """data.collate with one pose placeholder expanded to the encoder's number of soft tokens."""
    return lambda items: data.collate(items, tok, model.encoder.output_lengths, for_generation=for_generation)


def autocast(device: torch.device):
    """bf16 autocast on GPUs; the CPU path runs in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
