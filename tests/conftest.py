"""Shared test helpers: tiny random Qwen2 checkpoints in the Hugging Face layout, and the
real pose fixtures.

transformers is a test-only dependency: it builds the reference model and writes the
checkpoint exactly as the Hub's files are laid out, so `load_model` is tested on the real
format rather than on files we wrote ourselves.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a set of top-level files, not a package

# The real .pose files shared by the project (read-only): ../shared/fixtures/poses
FIXTURES = Path(os.environ.get("POSE_FIXTURES", ROOT.parent / "shared" / "fixtures" / "poses"))


def make_hf_checkpoint(
    out_dir,
    *,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    max_shard_size=None,
    legacy_config=False,
    seed=0,
):
    """Build a random `Qwen2ForCausalLM`, save it as safetensors and return (path, hf_model).

    Every parameter is drawn at random (biases and norm weights included: the defaults of
    zero bias and unit norm would hide bugs). `max_shard_size` (e.g. "20KB") writes a sharded
    checkpoint with `model.safetensors.index.json`. `legacy_config=True` rewrites config.json
    the way the Qwen2.5 files on the Hub are written (`rope_theta` at the top level,
    `sliding_window`, `torch_dtype`), instead of the newest `rope_parameters` form.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        max_position_embeddings=512,
        bos_token_id=vocab_size - 3,
        eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 1,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    out_dir = Path(out_dir)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    if legacy_config:
        path = out_dir / "config.json"
        c = json.loads(path.read_text())
        rope = c.pop("rope_parameters", None) or {}
        c.pop("layer_types", None)
        c.update(
            architectures=["Qwen2ForCausalLM"],
            rope_theta=rope.get("rope_theta", rope_theta),
            sliding_window=131072,
            use_sliding_window=False,
            max_window_layers=28,
            torch_dtype="bfloat16",
            transformers_version="4.43.1",
        )
        path.write_text(json.dumps(c, indent=2))
    return out_dir, model


def bnb_dequantize(packed, state):
    """bitsandbytes' NF4 (and nested-absmax) dequantization through its portable torch code.

    bnb 0.50's native CPU kernel, which `bnb.functional.dequantize_4bit` and `matmul_4bit` call
    on AVX-512 machines, dequantizes row by row and returns wrong values when a row's length is
    not a multiple of the block size (blocks run over the flattened tensor). Its default backend
    computes the format's definition: code[nibble] * absmax[block], over the flattened tensor."""
    import bitsandbytes.functional as bnb_f
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = state.absmax
    if state.nested:
        absmax = bnb_f.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return _dequantize_4bit_compute(packed.reshape(-1).view(torch.uint8), absmax.float(), state.code.float(),
                                    state.blocksize, state.shape, state.dtype)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A 2-layer, 64-wide random Qwen2 (GQA 2:1, untied) in the Hugging Face layout."""
    return make_hf_checkpoint(tmp_path / "tiny")


@pytest.fixture
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"pose fixtures not found at {FIXTURES} (set POSE_FIXTURES)")
    return FIXTURES
