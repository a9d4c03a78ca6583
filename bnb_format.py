"""bitsandbytes' 4-bit NF4 checkpoint layout, both ways: the tensors that transformers +
bitsandbytes save for a 4-bit projection, and the buffers of a quant.Linear4bit.

loader.py opens, reads and writes the files; this file is the layout and its checks, nothing else:

    is_bnb_4bit(config, source)      does config.json say bitsandbytes saved the weights in 4-bit NF4?
                                     (a quantization loader.py cannot read is an error naming it)
    from_bnb(m, prefix, read, files) one projection's stored tensors -> the buffers of Linear4bit m
    to_bnb(prefix, m)                Linear4bit m -> its tensors as bitsandbytes stores them
    quantization_config(m)           config.json's quantization_config for such a model

How bitsandbytes (through transformers' save_pretrained) stores a 4-bit projection P, in the
same safetensors files as the other tensors; config.json has a quantization_config:
    P.weight                            uint8 (n/2, 1)   packed NF4 codes: our Linear4bit.weight
    P.weight.absmax                     float32 (blocks,) one per 64 weights: our absmax
                                        (double quantization: uint8 (blocks,), our 8-bit codes)
    P.weight.quant_map                  float32 (16,)    the NF4 levels
    P.weight.nested_absmax              float32 (ceil(blocks/256),)   double quantization only: our absmax_scale
    P.weight.nested_quant_map           float32 (256,)   the signed 8-bit dynamic map
    P.weight.quant_state.bitsandbytes__nf4   uint8: UTF-8 JSON {"quant_type", "blocksize", "dtype",
                                        "shape", and nested_blocksize / nested_dtype / nested_offset
                                        (our absmax_offset)}
bitsandbytes dequantizes the absmax as nested_quant_map[code] * nested_absmax[block] + offset:
quant.dequantize_absmax, operation for operation. So the tensors are moved, never converted.

    python -m pytest -q tests/test_bnb_checkpoints.py   # against transformers + bitsandbytes
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import quant

BNB_STATE = "weight.quant_state.bitsandbytes__nf4"


def is_bnb_4bit(config: dict, source: str) -> bool:
    """True when config.json says bitsandbytes saved the checkpoint in 4-bit NF4; a quantization this
    loader cannot read (8-bit, FP4, another method or storage type) is an error naming it."""
    q = config.get("quantization_config")
    if q is None:
        return False
    supported = "only bitsandbytes 4-bit NF4 checkpoints and unquantized ones can be loaded"
    if q.get("quant_method") != "bitsandbytes" or not q.get("load_in_4bit"):
        kind = f"{q.get('quant_method')!r}" + (" 8-bit" if q.get("load_in_8bit") else "")
        raise ValueError(f"{source}: quantization_config is {kind}; {supported}")
    if q.get("bnb_4bit_quant_type", "fp4") != "nf4":  # bitsandbytes' own default is fp4
        raise ValueError(f"{source}: bnb_4bit_quant_type is {q.get('bnb_4bit_quant_type', 'fp4')!r}; {supported}")
    if q.get("bnb_4bit_quant_storage", "uint8") != "uint8":
        raise ValueError(f"{source}: bnb_4bit_quant_storage is {q['bnb_4bit_quant_storage']!r}, not 'uint8'; "
                         f"{supported}")
    return True


def from_bnb(m: quant.Linear4bit, prefix: str, read: Callable[[str], Tensor],
             files: dict[str, Path]) -> dict[str, Tensor]:
    """The buffers of projection m (attribute -> tensor, in host memory) from its bitsandbytes
    tensors (read(name) -> tensor; files: name -> the file that holds it, for errors), checked
    against the layout above. A double-quantized absmax goes to a module that keeps float32 absmax
    expanded exactly as bitsandbytes expands it; a float32 one to a double_quant module is quantized."""
    w, key = f"{prefix}.weight", f"{prefix}.{BNB_STATE}"

    def check(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"tensor {name} in {files[name]}: {what}; only bitsandbytes NF4 in blocks of "
                             f"{m.blocksize} (double quantization: of 256) is supported")

    state = json.loads(bytes(read(key).tolist()).decode())
    n, blocks, nested = m.in_features * m.out_features, m.absmax.numel(), "nested_offset" in state
    check(state.get("quant_type") == "nf4", key, f"quant_type is {state.get('quant_type')!r}")
    check(state.get("blocksize") == m.blocksize, key, f"blocksize is {state.get('blocksize')}")
    check(state.get("shape") == [m.out_features, m.in_features], key,
          f"shape is {state.get('shape')}, expected {[m.out_features, m.in_features]}")
    packed, levels, absmax = read(w), read(f"{w}.quant_map"), read(f"{w}.absmax")
    check(packed.dtype == torch.uint8 and packed.numel() == (n + 1) // 2, w,
          f"{packed.dtype} {tuple(packed.shape)}, expected uint8 ({(n + 1) // 2}, 1)")
    check(torch.equal(levels, quant.NF4_LEVELS), f"{w}.quant_map", "not the 16 NF4 levels")
    check(absmax.dtype == (torch.uint8 if nested else torch.float32) and absmax.shape == (blocks,), f"{w}.absmax",
          f"{absmax.dtype} {tuple(absmax.shape)}, expected ({blocks},) {'uint8' if nested else 'float32'}")
    if nested:
        scale, dyn = read(f"{w}.nested_absmax"), read(f"{w}.nested_quant_map")
        check(state.get("nested_blocksize") == 256, key, f"nested_blocksize is {state.get('nested_blocksize')}")
        check(scale.dtype == torch.float32 and scale.shape == (-(-blocks // 256),), f"{w}.nested_absmax",
              f"{scale.dtype} {tuple(scale.shape)}, expected ({-(-blocks // 256)},) float32")
        check(torch.equal(dyn, quant.DYNAMIC_MAP_8BIT), f"{w}.nested_quant_map", "not the signed 8-bit dynamic map")
        offset = torch.tensor(state["nested_offset"], dtype=torch.float32)  # the JSON float is the float32 exactly
        if not m.double_quant:
            absmax = quant.dequantize_absmax(absmax, scale, offset)
    buffers = {}
    if m.double_quant:
        absmax, scale, offset = (absmax, scale, offset) if nested else quant.quantize_absmax(absmax)
        buffers.update(absmax_scale=scale, absmax_offset=offset)
    return {**buffers, "weight": packed.reshape(-1), "absmax": absmax}


def to_bnb(prefix: str, m: quant.Linear4bit) -> dict[str, Tensor]:
    """One 4-bit projection as bitsandbytes saves it (the layout above), byte for byte. The
    tables are copied: safetensors refuses to write one tensor under several names."""
    w = f"{prefix}.weight"
    state = {"quant_type": "nf4", "blocksize": m.blocksize, "dtype": str(m.compute_dtype).removeprefix("torch."),
             "shape": [m.out_features, m.in_features]}
    out = {w: m.weight.reshape(-1, 1), f"{w}.absmax": m.absmax, f"{w}.quant_map": quant.NF4_LEVELS.clone()}
    if m.double_quant:
        state.update(nested_blocksize=256, nested_dtype="float32", nested_offset=m.absmax_offset.item())
        out.update({f"{w}.nested_absmax": m.absmax_scale, f"{w}.nested_quant_map": quant.DYNAMIC_MAP_8BIT.clone()})
    out[f"{prefix}.{BNB_STATE}"] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    return out


def quantization_config(m: quant.Linear4bit) -> dict:
    """config.json's quantization_config for a model whose projections are all like `m`."""
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": m.double_quant,
            "bnb_4bit_compute_dtype": str(m.compute_dtype).removeprefix("torch."),
            "bnb_4bit_quant_storage": "uint8", "llm_int8_skip_modules": ["lm_head"]}
