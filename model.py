"""Qwen2 / Qwen2.5 decoder written from scratch, and its generation (KV cache, greedy, beam search).

What is here
    Qwen2Config      the Hugging Face config.json keys we support (both rope_theta styles)
    Qwen2            RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU, x N layers;
                     state_dict names are exactly the Hugging Face names
    HostEmbedding    a frozen input-embedding table kept in host memory (offload_embeddings)
    KVCache          preallocated keys/values for incremental decoding
    StaticKVCache    the same, written at a slot held on the device (fixed shapes, CUDA graphs)
    Qwen2.generate   batched greedy decoding (left padding, stop tokens) and beam search
    StaticDecoder    greedy steps on fixed shapes, one CUDA graph per call (generate(static=True))

Reading and writing checkpoints, and the 4-bit conversion, are in loader.py; the pose encoder
and the prompt splicing in translator.py. This file knows no files, no training, no poses.

References
    Qwen2 technical report, https://arxiv.org/abs/2407.10671
    Hugging Face transformers, models/qwen2/modeling_qwen2.py (the numerics we match)
    RoFormer / RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864
    GQA, Ainslie et al. 2023, https://arxiv.org/abs/2305.13245

How to run
    model = loader.load_model("Qwen2.5-0.5B-Instruct", dtype=torch.bfloat16, quantize="nf4")
    new_tokens = model.generate(input_ids, attention_mask=mask, eos_token_id=[151645])
    new_tokens = model.generate(input_ids, attention_mask=mask, static=True)  # GPU: one CUDA graph
    python -m pytest -q tests/test_model.py     # matches transformers to 1e-5
    python bench.py model                       # speed vs transformers on this CPU
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kernels import fused_ops

# ----------------------------------------------------------------------------- config


@dataclass
class Qwen2Config:
    """The config.json keys of Qwen2ForCausalLM that change the computation (HF names and defaults)."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> Qwen2Config:
        """Read a Hugging Face config dict; raise ValueError naming anything we would compute wrongly."""

        def fail(problem: str):
            raise ValueError(f"{source}: {problem}; this loader supports plain Qwen2/Qwen2.5 decoders")

        if d.get("model_type") != "qwen2":
            fail(f"model_type is {d.get('model_type')!r}, not 'qwen2'")
        if d.get("hidden_act", "silu") != "silu":
            fail(f"hidden_act {d['hidden_act']!r} is not 'silu'")
        if d.get("use_sliding_window", False):
            fail("use_sliding_window is true (sliding-window attention is not implemented)")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            fail(f"rope_type {rope_type!r} is not 'default' (no RoPE scaling is implemented)")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in d]
        if missing:
            fail(f"missing keys {missing}")
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in fields})  # harmless extra keys are ignored
        cfg.rope_theta = float(rope.get("rope_theta", d.get("rope_theta", cls.rope_theta)))
        if "num_key_value_heads" not in d or d["num_key_value_heads"] is None:
            cfg.num_key_value_heads = cfg.num_attention_heads  # the HF default: plain multi-head
        if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
            fail(f"hidden_size {cfg.hidden_size}, heads {cfg.num_attention_heads} and kv heads "
                 f"{cfg.num_key_value_heads} do not divide evenly")
        if d.get("head_dim") not in (None, cfg.head_dim):
            fail(f"head_dim {d['head_dim']} != hidden_size / num_attention_heads = {cfg.head_dim}")
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen2Config:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))

    def to_dict(self) -> dict:
        """A config.json that transformers loads: new-style rope_parameters, and rope_theta at the
        top level too so that older transformers releases read the same frequency."""
        d = dataclasses.asdict(self)
        d.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                 use_sliding_window=False,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        return d


# ----------------------------------------------------------------------------- decoder


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in fp32 and cast back *before* the weight (as HF).
    One fused kernel on a GPU (fused_ops.rms_norm), else fused_ops.rms_norm_torch."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return fused_ops.rms_norm(x, self.weight, self.eps)


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (B, 1, T, head_dim).

    Angles are computed in fp32 (bf16 cannot even represent position 257) and cast to the
    activations' dtype afterwards, exactly as HF does, so bf16 runs match the reference."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
    angles = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, hd): rotate-half layout
    return angles.cos().to(dtype), angles.sin().to(dtype)



class KVCache:
    """Keys and values of every layer, preallocated: k[i], v[i] are (B, n_kv, max_len, hd).

    All rows share one `length`: prompts are left-padded, so every row's next token goes to
    the same slot and the padding is hidden by the attention mask."""

    def __init__(self, config: Qwen2Config, batch_size: int, max_len: int, dtype: torch.dtype, device):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0  # filled slots

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's k, v (B, n_kv, T, hd); return all keys/values so far (B, n_kv, S, hd)."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int) -> None:
        """Called by Qwen2.forward after the last layer has written its T new positions."""
        self.length += T

    def reorder(self, rows: Tensor) -> None:
        """Keep/duplicate batch rows (beam search): row i becomes old row rows[i]."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


class StaticKVCache(KVCache):
    """A KVCache whose write position is a tensor on the device (`slot`, shape (1,)), for decoding
    one token at a time on fixed shapes: update() writes at the slot and returns all max_len
    slots (the attention mask hides those not written yet), advance() moves the slot on the
    device. No step changes a shape or reads a number back to the host, so the whole step can
    be recorded once as a CUDA graph and replayed (StaticDecoder)."""

    def __init__(self, cache: KVCache):
        self.k, self.v, self.length = cache.k, cache.v, cache.length
        self.slot = torch.full((1,), cache.length, dtype=torch.long, device=cache.k[0].device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k[layer].index_copy_(2, self.slot, k)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer], self.v[layer]

    def advance(self, T: int) -> None:
        self.slot += T


class Attention(nn.Module):
    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.layer_idx = layer_idx
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = fused_ops.rope(q, k, cos, sin)  # rotate pairs (x[i], x[i + hd/2]) by their angle
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, n_kv, S, hd), S = past + T
        if T == 1:
            # Decoding: the nh/n_kv query heads of a kv head become that head's query rows (one
            # position, one mask row for all), so no GQA support is needed: on a GPU the masked
            # step can then take the memory-efficient kernel instead of the unfused math path.
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, -1, self.head_dim), k, v, attn_mask=mask)
            y = y.reshape(B, self.n_heads, 1, self.head_dim)  # (B, nh, 1, hd)
        elif mask is None:
            # Plain causal (training batches are right-padded). enable_gqa lets the kernel share
            # each kv head among nh/n_kv query heads without materialising copies.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        else:
            # A mask (a left-padded prompt): no fused GPU kernel takes a mask with unequal head
            # counts, so give each query head its kv head's copy; the memory-efficient kernel can
            # then run instead of the math path, which would build all (T, S) scores.
            g = self.n_heads // self.n_kv
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                               attn_mask=mask)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(fused_ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class HostEmbedding(nn.Module):
    """A frozen token-embedding table kept in host (CPU) memory while the model runs on a GPU.

    An untied LLM reads only the B x T rows of its input table that a step needs, so the table
    (vocab x hidden x 2 bytes in bf16: 152064 x 3584 = 1.02 GiB at 7B) need not take GPU memory:
    the rows are gathered where the table is and only they (B, T, H) are copied to the device of
    the ids. The table is a buffer named "weight": frozen, left alone by DDP (which would refuse
    parameters on two kinds of device), and the state_dict name stays model.embed_tokens.weight."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids.to(self.weight.device), self.weight).to(ids.device)  # (B, T, H)


def mask_and_positions(attention_mask: Tensor | None, past: int, T: int, device) -> tuple[Tensor | None, Tensor]:
    """The boolean attention mask (B, 1, T, past+T) or None for plain causal, and position_ids (B|1, T).

    attention_mask (B, past+T) marks real tokens with 1 (HF convention: it covers the cache too).
    Positions count real tokens only, so a left-padded prompt gets the same positions as unpadded."""
    if attention_mask is None:
        positions = torch.arange(past, past + T, device=device)[None]
        if past == 0 or T == 1:
            return None, positions
        keep = torch.ones(1, past + T, dtype=torch.bool, device=device)
    else:
        keep = attention_mask.bool()  # (B, S)
        positions = (keep.cumsum(-1) - 1).clamp(min=0)[:, -T:]
        # Right padding without a cache: causality already hides the trailing pads from every real
        # token, so drop the mask and let SDPA use its fast causal kernel (pad rows are never read).
        if past == 0 and bool((keep[:, 1:] <= keep[:, :-1]).all()):
            return None, positions
    q_idx = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
    k_idx = torch.arange(past + T, device=device)[None]  # (1, S)
    return (k_idx <= q_idx) & keep[:, None, None, :], positions  # (B, 1, T, S)


class Qwen2(nn.Module):
    """Qwen2ForCausalLM with the same module tree, so state_dict names are the Hugging Face names."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        # Decoding stops when this process's rows are done (None), or, where several processes must
        # take as many steps (their layers run collectives), when stop_together(done) says that
        # every process is done (sharding.decoding_together sets it for the time of a decoding).
        self.stop_together = None
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                kv_cache: KVCache | None = None, return_hidden: bool = False) -> Tensor:
        """Logits (B, T, V), or the final-normed hidden states (B, T, H) when return_hidden."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        T = x.shape[1]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.bool()  # (B, 1, T, S), given whole (as transformers takes a 4-D mask)
            positions = position_ids
        else:
            past = kv_cache.length if kv_cache is not None else 0
            mask, positions = mask_and_positions(attention_mask, past, T, x.device)
        if position_ids is not None:
            positions = position_ids
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if recompute and not x.requires_grad:
            # Reentrant checkpointing computes no gradient at all for a layer none of whose inputs
            # requires one, which is the case under LoRA with a frozen embedding and no pose encoder
            # (the price: the first layer's input gradient, computed for nothing).
            x = x.detach().requires_grad_()
        for layer in self.model.layers:
            if recompute:  # keep only each layer's input; recompute its activations in backward
                # Reentrant: the first forward runs without autograd (no graph, no saved-tensor
                # hooks), which costs less CPU time per step than use_reentrant=False (BENCHMARKS.md,
                # "CPU work per training step"); a GPU training step is bound by that CPU time.
                x = checkpoint(layer, x, cos, sin, mask, kv_cache, use_reentrant=True)
            else:
                x = layer(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x)

    # ------------------------------------------------------------------------- generation

    def _next_logits(self, mask: Tensor, cache: KVCache, **inputs) -> Tensor:
        """fp32 logits (B, V) of the last position; the vocab projection runs on that position only."""
        hidden = self(**inputs, attention_mask=mask, kv_cache=cache, return_hidden=True)
        return self.lm_head(hidden[:, -1]).float()

    @torch.no_grad()
    def generate(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                 attention_mask: Tensor | None = None, max_new_tokens: int = 64,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
                 num_beams: int = 1, length_penalty: float = 1.0, static: bool = False) -> Tensor:
        """New tokens only, (B, n_new), pad_token_id after a row's stop token. Prompts are LEFT-padded.

        Greedy equals transformers' generate(do_sample=False); beam search equals its
        num_beams / length_penalty search with the default early_stopping=False. static=True
        (greedy only) runs the steps after the prompt through StaticDecoder: fixed shapes, and on
        a GPU one CUDA graph replayed per token instead of a few thousand kernel launches."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if static and num_beams > 1:
            raise ValueError("static=True decodes greedily; beam search (num_beams > 1) reorders the cache")
        kind, prompt = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        B, T = prompt.shape[:2]
        mask = (attention_mask if attention_mask is not None
                else torch.ones(B, T, dtype=torch.long, device=prompt.device))
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        stop = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=prompt.device)
        if num_beams > 1:
            return self._beam_search(kind, prompt, mask, max_new_tokens, stop, pad_token_id, num_beams, length_penalty)
        cache = KVCache(self.config, B, T + max_new_tokens, self.model.embed_tokens.weight.dtype, prompt.device)
        logits = self._next_logits(mask, cache, **{kind: prompt})
        step = StaticDecoder(self, cache, mask) if static and max_new_tokens > 1 else None
        done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        out = []
        for _ in range(max_new_tokens):
            token = logits.argmax(-1).masked_fill(done, pad_token_id)  # (B,)
            out.append(token)
            done |= torch.isin(token, stop)
            if self._all_done(bool(done.all())) or len(out) == max_new_tokens:
                break
            if step is not None:
                logits = step(token)
            else:
                mask = torch.cat((mask, mask.new_ones(B, 1)), dim=1)
                logits = self._next_logits(mask, cache, input_ids=token[:, None])
        return torch.stack(out, dim=1)

    def _all_done(self, done: bool) -> bool:
        return done if self.stop_together is None else self.stop_together(done)

    def _beam_search(self, kind: str, prompt: Tensor, mask: Tensor, max_new_tokens: int, stop: Tensor,
                     pad_token_id: int, K: int, length_penalty: float) -> Tensor:
        """Beam search as transformers does it (early_stopping=False).

        Each step takes the best 2K (more with several stop tokens) continuations of the K live
        beams. Those among the top K that end in a stop token (or reach max_new_tokens) become
        finished hypotheses scored sum(logprob) / n_tokens**length_penalty, and a row keeps its K
        best; the K best continuations that did not stop stay live. A row is done when it holds K
        hypotheses and its best live beam, scored at its current length, cannot beat the worst."""
        B, T = prompt.shape[:2]
        rows = torch.arange(B, device=prompt.device).repeat_interleave(K)  # row b*K+j is beam j of b
        prompt, mask = prompt[rows], mask[rows]
        cache = KVCache(self.config, B * K, T + max_new_tokens, self.model.embed_tokens.weight.dtype, prompt.device)
        logits = self._next_logits(mask, cache, **{kind: prompt})  # (B*K, V)
        V = logits.shape[-1]
        scores = torch.zeros(B, K, device=prompt.device)
        scores[:, 1:] = -1e9  # all beams start identical: let only the first one expand
        tokens = torch.zeros(B, K, 0, dtype=torch.long, device=prompt.device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        n_keep = max(2, 1 + len(stop)) * K
        for step in range(max_new_tokens):
            n_tokens = step + 1
            logp = F.log_softmax(logits, dim=-1).view(B, K, V) + scores[..., None]
            top, idx = logp.view(B, K * V).topk(n_keep)  # (B, n_keep), best first
            beam, token = idx // V, idx % V
            seqs = torch.cat((tokens.gather(1, beam[..., None].expand(-1, -1, step)), token[..., None]), dim=2)
            stops = torch.isin(token, stop) | (n_tokens == max_new_tokens)
            top_k, stops_k = top[:, :K].tolist(), stops[:, :K].tolist()  # only the top K may finish
            for b in (b for b in range(B) if not done[b]):
                finished[b] += [(top_k[b][r] / n_tokens**length_penalty, seqs[b, r].tolist())
                                for r in range(K) if stops_k[b][r]]
                finished[b] = sorted(finished[b], key=lambda h: -h[0])[:K]  # best first
            live = top.masked_fill(stops, -1e9).topk(K)[1]  # (B, K) best continuations that go on
            scores, beam = top.gather(1, live), beam.gather(1, live)
            tokens = seqs.gather(1, live[..., None].expand(-1, -1, n_tokens))  # (B, K, n_tokens)
            for b in range(B):
                best_live = scores[b, 0].item() / n_tokens**length_penalty
                done[b] = done[b] or (len(finished[b]) == K and best_live <= finished[b][-1][0])
            if self._all_done(all(done)) or n_tokens == max_new_tokens:
                break
            rows = (beam + torch.arange(B, device=beam.device)[:, None] * K).flatten()  # source row of each new beam
            cache.reorder(rows)
            mask = torch.cat((mask[rows], mask.new_ones(B * K, 1)), dim=1)
            logits = self._next_logits(mask, cache, input_ids=tokens[:, :, -1].reshape(B * K, 1))
        best = [max(hyps, key=lambda h: h[0])[1] for hyps in finished]
        out = torch.full((B, max(map(len, best))), pad_token_id, dtype=torch.long, device=prompt.device)
        for b, seq in enumerate(best):
            out[b, :len(seq)] = torch.tensor(seq)
        return out


class StaticDecoder:
    """Greedy decoding steps on fixed-shape tensors, captured once as a CUDA graph on a GPU.

    Decoding one token launches a few kernels per layer (norms, RoPE, attention, each projection),
    thousands per token for a 7B model; each costs microseconds of Python and driver time, far
    more than its GPU time at batch 1, so a Python decoding loop is bound by the CPU. Here every
    tensor a step touches has a fixed shape and address: the token's embedding (B, 1, H, looked
    up before the graph, as the table may be in host memory: HostEmbedding), its RoPE position
    (B, 1), the cache slot it goes to (a StaticKVCache), the mask of visible slots (B, 1, 1,
    max_len), and the step attends over all max_len slots of the cache (the mask hides the ones
    not written yet). The step advances slot and position itself, so on a GPU it is recorded once (torch.cuda.graph,
    after one warm-up run that also lets Triton pick its kernels) and each token is one replay.
    Elsewhere the same step runs eagerly: that is what the CPU tests check against generate."""

    def __init__(self, model: Qwen2, cache: KVCache, mask: Tensor):
        B, S = mask.shape  # the prompt's mask (B, S): its tokens are in cache slots 0..S-1
        max_len, device = cache.k[0].shape[2], mask.device
        self.model, self.cache = model, StaticKVCache(cache)
        table = model.model.embed_tokens.weight  # looked up outside the graph: it may be in host memory
        self.embeds = torch.zeros(B, 1, table.shape[1], dtype=table.dtype, device=device)
        self.keep = torch.zeros(B, 1, 1, max_len, dtype=torch.bool, device=device)  # visible slots
        self.keep[:, 0, 0, :S] = mask.bool()
        self.position = mask.sum(-1, keepdim=True)  # (B, 1): real tokens so far = the next position
        self.graph = None
        if device.type == "cuda":
            state = [t.clone() for t in (self.keep, self.position, self.cache.slot)]
            side = torch.cuda.Stream()  # warm-up off the capturing stream, as torch.cuda.graph asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step()  # compiles and autotunes every kernel; writes a slot that is rewritten later
            torch.cuda.current_stream().wait_stream(side)
            for t, saved in zip((self.keep, self.position, self.cache.slot), state):
                t.copy_(saved)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()

    def _step(self) -> Tensor:
        """Token -> fp32 logits (B, V); the cache's slot and the position move on: device work only."""
        self.keep.index_fill_(3, self.cache.slot, True)
        hidden = self.model(inputs_embeds=self.embeds, attention_mask=self.keep, position_ids=self.position,
                            kv_cache=self.cache, return_hidden=True)  # the cache advances its slot
        self.position += 1
        return self.model.lm_head(hidden[:, -1]).float()

    def __call__(self, token: Tensor) -> Tensor:
        """token (B,) -> fp32 logits (B, V) of the next position."""
        self.embeds.copy_(self.model.model.embed_tokens(token[:, None]))
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits
