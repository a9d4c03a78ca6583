"""The NF4 format's decoding, in pure torch: what every kernel of kernels/nf4_kernels.py computes.

    NF4_LEVELS, BYTE_TO_LEVELS   the 16 levels a 4-bit code stands for; the two of each byte
    dynamic_map_8bit             bitsandbytes' 8-bit map, in which double quantization stores the absmax
    dequantize_nf4               packed codes x absmax per block -> the weight, as bitsandbytes decodes it
    dequantize_absmax            double quantization's 8-bit absmax -> float32
    on_device                    a constant table on a device, copied there once

quant.py holds the encoder (quantize_nf4, quantize_absmax) and re-exports these; the bit-exact
comparisons with bitsandbytes are in tests/test_quant.py.
References: QLoRA (Dettmers et al. 2023, arXiv:2305.14314); bitsandbytes' backends/default/ops.py.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- the format's tables

# The 16 NF4 levels (QLoRA appendix; bitsandbytes `get_4bit_type("nf4")`): quantiles of N(0, 1)
# scaled to [-1, 1], with an exact 0. Asymmetric (7 negative, 8 positive) so that 0 is a level.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)

# byte b -> (level of its high nibble b >> 4, level of its low nibble b & 15): one lookup per byte.
BYTE_TO_LEVELS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)  # (256, 2)


def dynamic_map_8bit() -> Tensor:
    """bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`), used to store the absmax
    in double quantization: 1 sign bit, a run of zeros giving the decimal exponent 10^-6..10^0,
    the remaining bits a linear fraction in [0.1, 1]. 256 sorted float32 values in [-0.993, 1]."""
    data = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist() + (-(10 ** (-6 + i)) * means).tolist()
    return torch.tensor(sorted(data + [0.0, 1.0]), dtype=torch.float32)


DYNAMIC_MAP_8BIT = dynamic_map_8bit()
ON_DEVICE: dict[tuple[int, torch.device], Tensor] = {}


def on_device(device: torch.device, table: Tensor) -> Tensor:
    """One of this file's constant tables on `device`, copied there once per process. A copy per
    call would cost more than its bytes: a host-to-device copy from pageable memory first waits
    for the CUDA stream to drain, so the CPU could never run ahead of the GPU."""
    key = (id(table), torch.device(device))
    if key not in ON_DEVICE:
        ON_DEVICE[key] = table.to(device)
    return ON_DEVICE[key]


# ----------------------------------------------------------------------------- decoding (pure torch)

def _scale_blocks(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    """values (n,) float32 * the absmax of each one's block -> (n,) float32 (the last block may be partial).
    Whole blocks (every weight matrix of a real model) are scaled in place: `values` must be a
    fresh tensor the caller owns; that saves a padded copy and a product the size of W."""
    n = values.numel()
    pad = -n % blocksize
    if pad == 0:
        return values.view(-1, blocksize).mul_(absmax[:, None]).view(-1)
    return (F.pad(values, (0, pad)).view(-1, blocksize) * absmax[:, None]).view(-1)[:n]


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape, blocksize: int = 64,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of quant.quantize_nf4: level * absmax in float32, then rounded once to `dtype` (as bnb).
    packed (ceil(n/2),) uint8, absmax (ceil(n/blocksize),) float32, n = prod(shape): any shape."""
    n = math.prod(shape)
    # index_select with int32 indices rather than indexing with packed.long(), whose int64 copy
    # alone is 8 bytes per byte read (the CPU timings before and after: docs/benchmark-log.md,
    # "CPU: model, kernels, data, training steps"). A fresh (n/2, 2) tensor, scaled in place.
    values = on_device(packed.device, BYTE_TO_LEVELS).index_select(0, packed.int()).view(-1)[:n]  # (n,) high first
    return _scale_blocks(values, absmax.float(), blocksize).view(shape).to(dtype)


def dequantize_absmax(codes: Tensor, scale: Tensor, offset: Tensor, blocksize: int = 256) -> Tensor:
    """Inverse of quant.quantize_absmax (double quantization): codes (b,) uint8, scale float32 per
    `blocksize` codes, offset () -> absmax float32 (b,) = map[code] * scale + offset."""
    values = on_device(codes.device, DYNAMIC_MAP_8BIT)[codes.long()]
    return _scale_blocks(values, scale, blocksize) + offset
