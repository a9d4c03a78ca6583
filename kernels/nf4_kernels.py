"""NF4 compute: the pure-torch definition of each product with a 4-bit NF4 weight, the Triton
kernels that compute it, each beside its reference, and the harness that checks and times them.

quant.py holds the format's encoder (quantize_nf4, double quantization) and the Linear4bit module
that dispatches to what is here; kernels/nf4_format.py the decoding every kernel computes (the level
tables, dequantize_nf4, dequantize_absmax); this file the products:

    reference (pure torch)      Triton                      what for
    dequantize_nf4 (+ absmax)   _nf4_dequantize_kernel      W to 16 bits for cuBLAS (many rows)
    nf4_matmul_torch            _nf4_matmul_kernel          y = x W^T + b, M > 16, fused
                                _nf4_matmul_decode          2 <= M <= 16: split-K configs
                                _nf4_gemv_kernel            M = 1: split-K or direct plan
    nf4_matmul_dx_torch         _nf4_matmul_dx_kernel       dx = dy W (the input's gradient)

"Fused": W is never written out in 16 bits; a kernel loads a tile of packed bytes, turns it into
16-bit values in registers (nibble -> level -> * absmax) and feeds them to the tensor cores. Why
each kernel is as it is, is said beside it; the versions tried and the measured figures are in
BENCHMARKS.md ("NF4 kernels").

References
    QLoRA (Dettmers et al. 2023, arXiv:2305.14314): the NF4 levels, blockwise absmax, double quant.
    bitsandbytes (github.com/bitsandbytes-foundation/bitsandbytes), backends/default/ops.py: the
    layout and the dequantization rule, bit for bit.
    Triton's matmul tutorial (grouped tile order, autotuning) and split-K.

How to run
    validate(...)   every kernel against its reference: python -m pytest tests/test_quant.py
                    (no GPU: the kernels run in Triton's interpreter on the CPU, kernels/triton_support.py)
    benchmark(...)  times against 16-bit cuBLAS and bitsandbytes: python bench.py kernels
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import triton_support
from kernels.nf4_format import (BYTE_TO_LEVELS, DYNAMIC_MAP_8BIT, NF4_LEVELS, dequantize_absmax, dequantize_nf4,
                                on_device)
from kernels.triton_support import INTERPRET, tl, triton


# ----------------------------------------------------------------------------- references (pure torch)


def nf4_matmul_torch(x: Tensor, packed: Tensor, absmax: Tensor, bias: Tensor | None, shape: tuple[int, int],
                     blocksize: int) -> Tensor:
    """y = x @ W^T (+ bias), x (M, K), W (N, K) = shape: dequantize W to x.dtype for this call only."""
    return F.linear(x, dequantize_nf4(packed, absmax, shape, blocksize, x.dtype), bias)


def nf4_matmul_dx_torch(dy: Tensor, packed: Tensor, absmax: Tensor, shape: tuple[int, int],
                        blocksize: int) -> Tensor:
    """dx = dy @ W, dy (M, N) -> (M, K): the gradient of x @ W^T with respect to x."""
    return dy @ dequantize_nf4(packed, absmax, shape, blocksize, dy.dtype)


# ----------------------------------------------------------------------------- Triton kernels


# The dequantization kernel: W written out once in 16 bits (or 32) for cuBLAS. Where many rows of x
# share W (training, prefill), that and a cuBLAS matmul beat the fused kernels below (quant.py's
# _path and its arithmetic). Memory-bound: per weight it reads 0.5 + 4/64 bytes (1/64 + a little
# with double quant) and writes 2 (bf16, fp16) or 4 (fp32). The flattened weight in tiles of
# DEQUANT_BLOCK; no loop, so no pipelining: plain tl.load gathers of the levels and the absmax
# (which the matmul kernels could not use, see _nf4_level) are fine here.
DEQUANT_BLOCK = 1024  # weights per program: 8 per thread of 4 warps (one 16-byte store in bf16)


@triton.jit
def _nf4_dequantize_kernel(w_ptr, absmax_ptr, scale_ptr, offset_ptr, levels_ptr, map_ptr, out_ptr, n,
                           BS: tl.constexpr, GROUP: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = level[nibble i] * absmax[i // BS] for BLOCK consecutive weights i < n of the flattened
    W, rounded once to out's dtype: dequantize_nf4's arithmetic, so the same bits. DOUBLE: the
    absmax is stored in 8 bits and is map[code] * scale[block // GROUP] + offset, as dequantize_absmax
    computes it (a product, then a sum: the launcher turns FMA contraction off, which would round
    the two once instead of twice)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    byte = tl.load(w_ptr + i // 2, mask=ok, other=0)          # each byte for both its weights (L1 the 2nd time)
    code = tl.where(i % 2 == 0, byte >> 4, byte & 15)          # the first weight in the high nibble
    block = i // BS
    if DOUBLE:
        q = tl.load(absmax_ptr + block, mask=ok, other=0)      # uint8 code of the block's absmax
        absmax = tl.load(map_ptr + q) * tl.load(scale_ptr + block // GROUP, mask=ok, other=0.0)
        absmax = absmax + tl.load(offset_ptr)
    else:
        absmax = tl.load(absmax_ptr + block, mask=ok, other=0.0)
    tl.store(out_ptr + i, (tl.load(levels_ptr + code) * absmax).to(out_ptr.dtype.element_ty), mask=ok)



def _configs(interpreted: dict, gpu: list[tuple], keys=("BLOCK_M", "BLOCK_N", "SPLIT_K", "SWAP"),
             **fixed) -> list:
    """One small config under the interpreter (autotuning there would run every config on the
    CPU), else the GPU list: tuples of the `keys` values, then num_warps and num_stages."""
    if INTERPRET:
        return [triton.Config(interpreted)]
    return [triton.Config({**dict(zip(keys, c[:-2])), **fixed}, num_warps=c[-2], num_stages=c[-1]) for c in gpu]


# The matmul kernels (forward, decode, dx). A k-step is exactly one quantization block (BS = 64
# weights), so a row of a W tile has one absmax, a (BN,) vector load instead of a gather (_nf4_tile);
# the level table is read with ld.global.nc in inline PTX, which Triton's pipeliner leaves alone
# (_nf4_level); SWAP configs compute y^T = W x^T, so that the dequantized tile is wgmma's register
# operand (no shared-memory round trip) and a few rows of x are the MMA's narrow side (decode).
# Where these kernels lose to dequantize + cuBLAS (many rows of x), quant.py's dispatch takes that
# path instead (_nf4_dequantize_kernel below). Their earlier version, what was tried and what not
# yet, with the speeds: BENCHMARKS.md, "NF4 kernels".
#
# H100/H200 choices, (BLOCK_M, BLOCK_N, SPLIT_K, SWAP, num_warps, num_stages). The k-step is
# always one quantization block (BS = 64 weights), so that a row of a W tile has one absmax.
# Large M: 128-256 x 128 output tiles amortise the dequantization of a W tile (ALU and L1 work
# the tensor cores do not share) over many rows of x.
GEMM_CONFIGS = [(128, 128, 1, False, 8, 3), (128, 256, 1, False, 8, 3), (256, 128, 1, False, 8, 3),
                (128, 128, 1, True, 8, 3), (128, 128, 1, True, 4, 4), (256, 128, 1, True, 8, 3),
                (64, 128, 1, True, 4, 4), (128, 64, 1, False, 4, 4)]
# dx: the output tile is BLOCK_M x BS (one block of K), the sum runs over N in BLOCK_N steps.
DX_CONFIGS = [(128, 64, 1, False, 4, 4), (128, 128, 1, False, 8, 3), (256, 64, 1, False, 8, 3),
              (256, 128, 1, False, 8, 3), (64, 128, 1, False, 4, 4), (128, 64, 1, True, 4, 4),
              (128, 128, 1, True, 8, 3), (256, 64, 1, True, 8, 3)]
# Few rows (decode): memory bound. BLOCK_M = 16 (x padded by the mask); with SWAP the W tile
# is wgmma's 64- or 128-row side. Split-K gives every SM several CTAs streaming packed bytes.
DECODE_CONFIGS = [(16, 64, 1, True, 4, 4), (16, 64, 2, True, 4, 4), (16, 64, 4, True, 4, 4),
                  (16, 128, 2, True, 4, 4), (16, 64, 8, True, 4, 5), (16, 32, 1, False, 4, 4),
                  (16, 32, 4, False, 4, 4), (16, 64, 4, False, 4, 4)]
_TINY = {"BLOCK_M": 16, "BLOCK_N": 32, "SPLIT_K": 1, "SWAP": False, "GROUP_M": 2}


@triton.jit
def _nf4_level(codes, levels_ptr, ASM: tl.constexpr):
    """The NF4 level (float32) of each 4-bit code, from the 16-entry table: 64 bytes, one L1 line,
    so a warp's 32 lookups are served at once. On a GPU the load is written in PTX because
    inside a tl.dot loop Triton's sm_90 pipeliner turns a tl.load gather into one 4-byte async
    copy per element through shared memory (seen in the TTGIR of an earlier version: BENCHMARKS.md,
    "NF4 kernels"). `ld.global.nc` (the read-only data path) is an
    instruction the pipeliner does not touch. The interpreter cannot run PTX: it takes tl.load."""
    if ASM:
        return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$1];", "=f,l", [levels_ptr + codes],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return tl.load(levels_ptr + codes)


@triton.jit
def _nf4_tile(w_ptr, absmax_ptr, levels_ptr, offs_n, k0, N, K, BS: tl.constexpr, ASM: tl.constexpr):
    """W[offs_n, k0 : k0 + BS] dequantized -> (len(offs_n), BS) float32. K % BS == 0 and k0 % BS
    == 0, so the tile is one quantization block per row: one absmax per row, loaded as a
    (BN,) vector (a per-weight absmax gather would be pipelined like the levels, see above)."""
    row_ok = offs_n < N
    byte = tl.load(w_ptr + offs_n[:, None] * (K // 2) + (k0 // 2 + tl.arange(0, BS // 2))[None, :],
                   mask=row_ok[:, None], other=0)                                 # (BN, BS/2) uint8
    scale = tl.load(absmax_ptr + offs_n * (K // BS) + k0 // BS, mask=row_ok, other=0.0)[:, None]  # (BN, 1)
    hi = _nf4_level(byte >> 4, levels_ptr, ASM) * scale                        # W[n, k0 + 2j]
    lo = _nf4_level(byte & 15, levels_ptr, ASM) * scale                        # W[n, k0 + 2j + 1]
    return tl.reshape(tl.join(hi, lo), (hi.shape[0], 2 * hi.shape[1]))      # (BN, BS): hi0 lo0 hi1 lo1 ...


@triton.autotune(configs=_configs(_TINY, GEMM_CONFIGS, GROUP_M=8), key=["M_BUCKET", "N", "K"])
@triton.jit
def _nf4_matmul_kernel(x_ptr, w_ptr, absmax_ptr, levels_ptr, bias_ptr, y_ptr, M, N, K, M_BUCKET,
                       stride_xm, stride_ym, BS: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                       PRECISION: tl.constexpr, ASM: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, SWAP: tl.constexpr, GROUP_M: tl.constexpr):
    """y (M, N) = x (M, K) @ W (N, K)^T (+ bias). Program (tile, split): one BLOCK_M x BLOCK_N
    tile of y over the quantization blocks split, split + SPLIT_K, ... of K. With ATOMIC the
    fp32 y is added into (split-K: y zeroed by the caller), else stored in y's dtype."""
    pid, split = tl.program_id(0), tl.program_id(1)
    # Grouped ordering: GROUP_M row-tiles run side by side, so the W tiles they share stay in L2.
    tiles_m, tiles_n = (M + BLOCK_M - 1) // BLOCK_M, (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % size_m
    pid_n = (pid % (GROUP_M * tiles_n)) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # SWAP computes the transposed tile y^T = W x^T: the dequantized W is then the MMA's first
    # operand, which Hopper's wgmma reads from registers (the second is staged in shared memory),
    # and a few rows of x (decode) become the MMA's narrow N side instead of a padded M side.
    acc = tl.full((BLOCK_N, BLOCK_M) if SWAP else (BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(split * BS, K, BS * SPLIT_K):
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + tl.arange(0, BS))[None, :],
                    mask=offs_m[:, None] < M, other=0.0)                           # (BM, BS)
        w = _nf4_tile(w_ptr, absmax_ptr, levels_ptr, offs_n, k0, N, K, BS, ASM).to(x.dtype)  # (BN, BS)
        if SWAP:
            acc = tl.dot(w, tl.trans(x), acc, input_precision=PRECISION)          # (BN, BS) @ (BS, BM)
        else:
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)          # (BM, BS) @ (BS, BN)
    if SWAP:
        acc = tl.trans(acc)                                                       # (BM, BN)
    if HAS_BIAS:  # noqa: SIM102 (a constexpr branch: without a bias the inner one is not compiled)
        if split == 0:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if ATOMIC:
        tl.atomic_add(y_ptrs, acc, mask=mask)
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


# The same kernel with the decode configs: a second autotuner over the same jit function.
_nf4_matmul_decode = triton.autotune(configs=_configs({**_TINY, "BLOCK_N": 16, "SPLIT_K": 2}, DECODE_CONFIGS,
                                                      GROUP_M=8),
                                     key=["M_BUCKET", "N", "K"], reset_to_zero=["y_ptr"])(_nf4_matmul_kernel.fn)


@triton.jit
def _nf4_pair(byte, pairs_ptr, ASM: tl.constexpr):
    """(level of byte >> 4, level of byte & 15), float32, from the 256 x 2 table BYTE_TO_LEVELS
    (2 KiB, L1-resident): one 8-byte lookup per byte instead of one 4-byte lookup per nibble,
    which halves the load instructions of the M = 1 kernel, whose L1 traffic would otherwise
    be the limit (the arithmetic: BENCHMARKS.md, "M=1 GEMV kernel"). PTX as in _nf4_level."""
    pair = pairs_ptr + 2 * byte.to(tl.int32)
    if ASM:
        return tl.inline_asm_elementwise("ld.global.nc.v2.f32 {$0, $1}, [$2];", "=f,=f,l", [pair],
                                         dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    return tl.load(pair), tl.load(pair + 1)


# The GEMV kernel (M = 1, batch-1 decoding): no tensor cores, whose tl.dot would pad the single
# row of x to a 16-row MMA tile; NB quantization blocks x 32 contiguous bytes of BLOCK_N rows per
# step; both nibbles of a byte from one 8-byte lookup (_nf4_pair); each block's sum scaled by its
# absmax once. Two plans, timed whole on first use (quant._gemv_plan): split-K and direct, the
# latter one kernel, which matters inside a CUDA graph, where each node costs.
#
# M = 1 configs: (BLOCK_N rows, NB quantization blocks per step, SPLIT_K, warps,
# stages). Each row's step is NB x 32 contiguous bytes; enough CTAs in flight to cover the
# HBM latency matter more than the tile shape. Not tuned on a GPU yet (BENCHMARKS.md, "M=1 GEMV kernel").
# Split-K: more CTAs for short rows, partial sums added into a zeroed float32 y (three kernels
# with the zeroing and the cast). Direct: a CTA sums whole rows and writes y itself (one kernel).
GEMV_SPLIT_CONFIGS = [(64, 2, 1, 4, 3), (32, 4, 1, 4, 3), (16, 8, 1, 4, 3), (64, 2, 4, 4, 3),
                      (32, 4, 2, 4, 3), (128, 1, 2, 4, 3), (64, 4, 2, 8, 3), (16, 4, 8, 4, 4)]
GEMV_DIRECT_CONFIGS = [(8, 16, 1, 4, 3), (4, 32, 1, 4, 3), (16, 8, 1, 4, 3), (8, 32, 1, 8, 3),
                       (4, 16, 1, 4, 3), (16, 16, 1, 8, 3), (32, 4, 1, 4, 3), (2, 32, 1, 4, 3)]


@triton.autotune(configs=_configs({"BLOCK_N": 16, "NB": 2, "SPLIT_K": 2}, GEMV_SPLIT_CONFIGS,
                                  ("BLOCK_N", "NB", "SPLIT_K")), key=["N", "KB"], reset_to_zero=["y_ptr"])
@triton.jit
def _nf4_gemv_kernel(x_ptr, w_ptr, absmax_ptr, pairs_ptr, bias_ptr, y_ptr, N, KB, BS: tl.constexpr,
                     HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr,
                     NB: tl.constexpr, SPLIT_K: tl.constexpr):
    """y (N,) = W (N, K) @ x (K,) (+ bias), for one row x: no tensor cores, no padding of x to
    an MMA tile. K = KB blocks of BS. Program (rows, split): BLOCK_N rows over the block steps
    split, split + SPLIT_K, ... of NB blocks each. Per byte: one pair lookup, two FMAs with x;
    the absmax multiplies each block's sum (once per BS weights, not per weight). ATOMIC: y is
    float32, zeroed by the caller, and the splits meet in it by atomic adds; else (SPLIT_K = 1)
    y is stored in its own dtype."""
    pid_n, split = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nb, jb = tl.arange(0, NB), tl.arange(0, BS // 2)   # block within the step, byte within the block
    row_ok = offs_n < N
    acc = tl.full((BLOCK_N, NB), 0.0, tl.float32)  # summed over NB after the loop: no shuffles inside
    for b0 in range(split * NB, KB, NB * SPLIT_K):
        blk = b0 + nb                                                              # (NB,) block index in the row
        ok = row_ok[:, None] & (blk < KB)[None, :]                                 # (BN, NB)
        # a row is KB * BS / 2 bytes: written so that the compiler sees 32-byte aligned blocks
        byte = tl.load(w_ptr + offs_n[:, None, None] * (KB * (BS // 2)) + blk[None, :, None] * (BS // 2)
                       + jb[None, None, :], mask=ok[:, :, None], other=0)          # (BN, NB, BS/2) uint8
        xs = tl.load(x_ptr + blk[:, None] * BS + tl.arange(0, BS)[None, :], mask=(blk < KB)[:, None],
                     other=0.0).to(tl.float32)                                     # (NB, BS), contiguous
        x_even, x_odd = tl.split(tl.reshape(xs, (NB, BS // 2, 2)))                 # (NB, BS/2) each
        hi, lo = _nf4_pair(byte, pairs_ptr, ASM)                                   # W[n, 2j], W[n, 2j+1] / absmax
        block_sum = tl.reduce(hi * x_even[None, :, :] + lo * x_odd[None, :, :], 2, triton_support.add)  # (BN, NB)
        scale = tl.load(absmax_ptr + offs_n[:, None] * KB + blk[None, :], mask=ok, other=0.0)  # (BN, NB)
        acc += block_sum * scale
    y = tl.reduce(acc, 1, triton_support.add)                                      # (BN,)
    if HAS_BIAS:  # noqa: SIM102 (as in _nf4_matmul_kernel)
        if split == 0:
            y += tl.load(bias_ptr + offs_n, mask=row_ok, other=0.0).to(tl.float32)
    if ATOMIC:
        tl.atomic_add(y_ptr + offs_n, y, mask=row_ok)
    else:
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=row_ok)


# The same kernel with the direct configs: a second autotuner over the same jit function.
_nf4_gemv_direct = triton.autotune(configs=_configs({"BLOCK_N": 16, "NB": 2, "SPLIT_K": 1}, GEMV_DIRECT_CONFIGS,
                                                    ("BLOCK_N", "NB", "SPLIT_K")),
                                   key=["N", "KB"])(_nf4_gemv_kernel.fn)


@triton.autotune(configs=_configs(_TINY, DX_CONFIGS, GROUP_M=8), key=["M_BUCKET", "N", "K"])
@triton.jit
def _nf4_matmul_dx_kernel(dy_ptr, w_ptr, absmax_ptr, levels_ptr, dx_ptr, M, N, K, M_BUCKET,
                          stride_dym, stride_dxm, BS: tl.constexpr, PRECISION: tl.constexpr,
                          ASM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          SPLIT_K: tl.constexpr, SWAP: tl.constexpr, GROUP_M: tl.constexpr):
    """dx (M, K) = dy (M, N) @ W (N, K). Program: one BLOCK_M x BS tile of dx (one block of K),
    summing over N in BLOCK_N steps; W tiles are read in their natural (n, k) order."""
    pid = tl.program_id(0)
    tiles_m, tiles_k = (M + BLOCK_M - 1) // BLOCK_M, K // BS
    group = pid // (GROUP_M * tiles_k)
    first_m = group * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_k)) % size_m
    k0 = (pid % (GROUP_M * tiles_k)) // size_m * BS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.full((BS, BLOCK_M) if SWAP else (BLOCK_M, BS), 0.0, tl.float32)     # SWAP: as in the forward
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :],
                     mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0)  # (BM, BN)
        w = _nf4_tile(w_ptr, absmax_ptr, levels_ptr, offs_n, k0, N, K, BS, ASM).to(dy.dtype)  # (BN, BS)
        if SWAP:
            acc = tl.dot(tl.trans(w), tl.trans(dy), acc, input_precision=PRECISION)  # (BS, BN) @ (BN, BM)
        else:
            acc = tl.dot(dy, w, acc, input_precision=PRECISION)                    # (BM, BN) @ (BN, BS)
    if SWAP:
        acc = tl.trans(acc)                                                       # (BM, BS)
    offs_k = k0 + tl.arange(0, BS)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=offs_m[:, None] < M)


# ----------------------------------------------------------------------------- launchers


def fused_shape_ok(in_features: int, blocksize: int) -> bool:
    """Whether the matmul kernels take this shape. They step through K one quantization block at a
    time (a tl.dot of >= 16, a power of two), so each row must hold whole blocks: true of every
    Qwen2 projection (K is a multiple of 64)."""
    return blocksize >= 16 and blocksize & (blocksize - 1) == 0 and in_features % blocksize == 0


def _launch_args(a: Tensor, shape: tuple[int, int], blocksize: int) -> tuple:
    """Checks shared by the matmul launchers; returns the NF4 table on a's device and the dot precision."""
    triton_support.check_launch(a, "nf4_kernels")
    if math.prod(shape) >= 2**31:
        raise ValueError(f"nf4_kernels: weight {shape} too large for the kernels' int32 offsets")
    if not fused_shape_ok(shape[1], blocksize):
        raise ValueError(f"nf4_kernels: the fused kernels need in_features ({shape[1]}) to be a multiple of "
                         f"the blocksize ({blocksize}, a power of two >= 16); use the torch path")
    levels = on_device(a.device, NF4_LEVELS)
    # float32 inputs: exact float32 products (tf32 would lose 13 mantissa bits); ignored for 16-bit.
    return levels, ("ieee" if a.dtype == torch.float32 else "tf32")


def dequantize_nf4_triton(packed: Tensor, absmax: Tensor, shape, blocksize: int = 64,
                          dtype: torch.dtype = torch.float32, absmax_scale: Tensor | None = None,
                          absmax_offset: Tensor | None = None, absmax_blocksize: int = 256,
                          out: Tensor | None = None) -> Tensor:
    """Triton version of dequantize_nf4, one kernel: the weight of `shape` in `dtype`, equal to the
    reference bit for bit. With absmax_scale / absmax_offset, `absmax` holds double quantization's
    uint8 codes and the kernel decodes them too (dequantize_absmax, same bits). `out`: a contiguous
    buffer of `dtype` with at least prod(shape) elements to write into (quant.py's scratch buffer);
    the result is a view of it. Any shape and any even blocksize: the kernel works on the flattened
    weight, as the format does."""
    n = math.prod(shape)
    triton_support.check_launch(packed, "nf4_kernels")
    if n >= 2**31 or blocksize % 2:
        raise ValueError(f"nf4_kernels: weight {tuple(shape)} / blocksize {blocksize}: int32 offsets and an "
                         "even blocksize needed")
    if out is None:
        out = torch.empty(n, device=packed.device, dtype=dtype)
    elif out.dtype != dtype or out.device != packed.device or out.numel() < n or not out.is_contiguous():
        raise ValueError(f"nf4_kernels: out buffer {out.dtype} {tuple(out.shape)} on {out.device} does not fit "
                         f"{n} weights of {dtype} on {packed.device}")
    double = absmax_scale is not None
    _nf4_dequantize_kernel[(triton.cdiv(n, DEQUANT_BLOCK),)](
        packed, absmax, absmax_scale if double else absmax, absmax_offset if double else absmax,
        on_device(packed.device, NF4_LEVELS), on_device(packed.device, DYNAMIC_MAP_8BIT), out, n, BS=blocksize,
        GROUP=absmax_blocksize, DOUBLE=double, BLOCK=DEQUANT_BLOCK, num_warps=4, enable_fp_fusion=False)
    return out.view(-1)[:n].view(shape)


def nf4_matmul_triton(x: Tensor, packed: Tensor, absmax: Tensor, bias: Tensor | None, shape: tuple[int, int],
                      blocksize: int, gemv_plan: str = "split") -> Tensor:
    """Triton version of nf4_matmul_torch: x (M, K) -> y (M, N) in x.dtype. M = 1 takes the GEMV
    kernel by one of its two plans: "split" (split-K: more CTAs, but y is zeroed, summed in float32
    and cast: three kernels) or "direct" (a CTA sums whole rows and writes y: one kernel); which is
    faster depends on the shape and the GPU (quant.py times both). 2 <= M <= 16 takes the decode
    configs of the matmul. Split-K partial sums meet in a float32 y by atomic adds."""
    (N, K), M = shape, x.shape[0]
    levels, precision = _launch_args(x, shape, blocksize)
    if gemv_plan not in ("split", "direct"):
        raise ValueError(f"nf4_matmul_triton: gemv_plan {gemv_plan!r}: expected 'split' or 'direct'")
    atomic = M <= 16 and not (M == 1 and gemv_plan == "direct")
    y = torch.zeros(M, N, device=x.device, dtype=torch.float32) if atomic else x.new_empty(M, N)
    b = bias if bias is not None else x
    if M == 1:
        gemv = _nf4_gemv_kernel if atomic else _nf4_gemv_direct
        gemv[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])](
            x, packed, absmax, on_device(x.device, BYTE_TO_LEVELS), b, y, N, K // blocksize, BS=blocksize,
            HAS_BIAS=bias is not None, ATOMIC=atomic, ASM=not INTERPRET)
    else:
        kernel = _nf4_matmul_decode if atomic else _nf4_matmul_kernel
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])
        kernel[grid](x, packed, absmax, levels, b, y, M, N, K, max(16, triton.next_power_of_2(M)), x.stride(0),
                     y.stride(0), BS=blocksize, HAS_BIAS=bias is not None, ATOMIC=atomic, PRECISION=precision,
                     ASM=not INTERPRET)
    return y.to(x.dtype)


def nf4_matmul_dx_triton(dy: Tensor, packed: Tensor, absmax: Tensor, shape: tuple[int, int],
                         blocksize: int) -> Tensor:
    """Triton version of nf4_matmul_dx_torch: dy (M, N) -> dx (M, K) in dy.dtype."""
    (N, K), M = shape, dy.shape[0]
    levels, precision = _launch_args(dy, shape, blocksize)
    dx = dy.new_empty(M, K)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * (K // blocksize),)
    _nf4_matmul_dx_kernel[grid](dy, packed, absmax, levels, dx, M, N, K, max(16, triton.next_power_of_2(M)),
                                dy.stride(0), dx.stride(0), BS=blocksize, PRECISION=precision, ASM=not INTERPRET)
    return dx


# ----------------------------------------------------------------------------- harness: validate, benchmark

# The cases tests/test_quant.py runs under the interpreter (so: small). dequantize (N, K, double
# quant): rows that are not whole blocks, an odd count (the last byte half used), 293 tiles of
# DEQUANT_BLOCK (the last partial) and a partial group of 256 absmax codes. matmul (M, N, K): M = 1
# the GEMV kernel, both plans (split-K there: 2 blocks per step, split 2, so K = 192 ends in a half
# step); M = 5 the decode matmul; 33 and 19 not multiples of the 16-row tile; N = 37 odd, 40 not a
# multiple of the column tile; K of 1 to 3 blocks of 64.
VALIDATE_CASES = {"dequantize": [(37, 128, False), (5, 70, True), (7, 9, False), (300, 1000, True)],
                  "matmul": [(1, 37, 128), (1, 40, 192), (5, 40, 192), (33, 37, 128), (19, 64, 64)]}
# The products: the same maths in another summation order, rounded once to the output's dtype,
# so |out - ref| <= tol + tol |ref| elementwise. The dequantization: the same bits.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_nf4(N: int, K: int, blocksize: int = 64, double_quant: bool = False, device=None,
               seed: int = 0) -> tuple:
    """(packed, absmax, absmax_scale, absmax_offset) of a random (N, K) NF4 weight: every byte is a
    valid pair of codes, and an absmax of (2..3) / sqrt(K), about that of 64 N(0, 1/K) weights, keeps
    x @ W^T of order 1. double_quant: absmax as uint8 codes with a float32 scale per 256 and an offset."""
    g = torch.Generator().manual_seed(seed)
    n, blocks = N * K, -(-N * K // blocksize)
    packed = torch.randint(0, 256, ((n + 1) // 2,), generator=g, dtype=torch.uint8)
    if not double_quant:
        return packed.to(device), ((2 + torch.rand(blocks, generator=g)) / K**0.5).to(device), None, None
    codes = torch.randint(0, 256, (blocks,), generator=g, dtype=torch.uint8)
    scale = (0.5 + torch.rand(-(-blocks // 256), generator=g)) / K**0.5
    return packed.to(device), codes.to(device), scale.to(device), torch.tensor(2.5 / K**0.5, device=device)


def validate(cases: dict | None = None, dtypes=(torch.float16, torch.float32), device=None,
             blocksize: int = 64) -> list[dict]:
    """Every kernel of this file against its reference, on `cases` (VALIDATE_CASES' form; default
    those) in each dtype, on `device` (default CUDA if present, else the CPU: the interpreter).
    The dequantization kernel must give the reference's bits, the products TOLERANCE. Returns one
    row per check (kernel, case, dtype, err = max |out - ref| / max |ref|, ok); raises an
    AssertionError that lists every failed row."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases, rows = VALIDATE_CASES if cases is None else cases, []

    def check(kernel, case, dtype, out, ref, exact=False):
        err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-30)).item()
        tol = TOLERANCE[dtype]
        ok = torch.equal(out, ref) if exact else bool(((out.float() - ref).abs() <= tol + tol * ref.abs()).all())
        rows.append({"kernel": kernel, "case": case, "dtype": dtype, "err": err, "ok": ok and out.shape == ref.shape})

    for dtype in dtypes:
        for N, K, double in cases.get("dequantize", ()):
            packed, absmax, scale, offset = random_nf4(N, K, blocksize, double, device)
            absmax32 = dequantize_absmax(absmax, scale, offset) if double else absmax
            ref = dequantize_nf4(packed, absmax32, (N, K), blocksize, dtype)
            out = dequantize_nf4_triton(packed, absmax, (N, K), blocksize, dtype, scale, offset)
            check("dequantize" + (" (double quant)" if double else ""), (N, K), dtype, out, ref, exact=True)
        for M, N, K in cases.get("matmul", ()):
            packed, absmax, _, _ = random_nf4(N, K, blocksize, False, device)
            g = torch.Generator().manual_seed(1)
            x, dy, bias = (torch.randn(*s, generator=g).to(device, dtype) for s in ((M, K), (M, N), (N,)))
            w = dequantize_nf4(packed, absmax, (N, K), blocksize, torch.float32)  # the reference's exact weights
            for b in (bias, None):
                ref = nf4_matmul_torch(x.float(), packed, absmax, None if b is None else b.float(), (N, K), blocksize)
                for plan in ("split", "direct") if M == 1 else ("split",):
                    y = nf4_matmul_triton(x, packed, absmax, b, (N, K), blocksize, plan)
                    name = f"gemv {plan}" if M == 1 else "matmul" if M > 16 else "matmul decode"
                    check(name + (" + bias" if b is not None else ""), (M, N, K), dtype, y, ref)
            check("matmul dx", (M, N, K), dtype, nf4_matmul_dx_triton(dy, packed, absmax, (N, K), blocksize),
                  dy.float() @ w)
    failed = [r for r in rows if not r["ok"]]
    if failed:
        raise AssertionError("nf4_kernels.validate: " + "; ".join(
            f"{r['kernel']} {r['case']} {r['dtype']}: err {r['err']:.1e}" for r in failed))
    return rows


def _after(matmul, a: Tensor, dequantize) -> Tensor:
    """matmul(a, dequantize()): the two-kernel path as the benchmark times it."""
    return matmul(a, dequantize())


def benchmark(shapes=((3584, 3584), (18944, 3584), (3584, 18944), (13824, 5120)), ms=(1, 2, 16, 512, 4096),
              dtype: torch.dtype = torch.bfloat16, peak: tuple[float, float] | None = None) -> list[dict]:
    """Time the kernels at Qwen2.5-7B/14B layer shapes (N = out, K = in) for M rows of x and print a
    table (`python bench.py kernels`). Rows on a GPU: "16-bit fwd / dx" (cuBLAS on the 16-bit W: the
    baseline), "fused nf4 fwd / dx" (nf4_matmul_triton: M = 1 GEMV, M <= 16 split-K decode; and
    nf4_matmul_dx_triton), "nf4 dequantize" (alone, into a preallocated buffer), "dequant+cuBLAS
    fwd / dx" (quant.py's two-kernel path) and "bnb matmul_4bit fwd" (bitsandbytes, if it imports;
    at M >= 16 it dequantizes, then cuBLAS). On the CPU the torch path ("torch nf4") stands in for
    the Triton rows (interpreted kernels are far too slow to time): that only tests the script.
    Times: triton_support.seconds. err: |out - ref| / |ref| against the same product in float64 on
    the dequantized weight (16-bit outputs land near 1e-3). Bytes: packed weight + absmax (NF4; the
    two-kernel path adds the 16-bit W written and read again) or the 16-bit W, plus x and y.
    speedup: the 16-bit row's time / this row's. peak: (bytes/s, FLOP/s) for the % columns."""
    cuda = torch.cuda.is_available()
    device, bnb = ("cuda" if cuda else "cpu"), None
    if cuda:  # bitsandbytes' 4-bit matmul is a GPU kernel; on the CPU it dequantizes like ours
        try:
            import bitsandbytes as bnb
            import bitsandbytes.functional as bnb_f
        except ImportError:
            pass
    print(f"{'kernel':<20}{'N x K':>12}{'M':>6}{'ms':>10}{'TFLOP/s':>9}{'GB/s':>8}{'%BW':>6}{'%FLOP':>7}{'err':>9}"
          f"{'speedup':>9}")
    rows = []
    for n, k in shapes:
        packed, absmax, _, _ = random_nf4(n, k, device=device)  # the speed does not depend on the values
        w16 = dequantize_nf4(packed, absmax, (n, k), 64, dtype)
        buf = torch.empty(n * k, device=device, dtype=dtype)  # the two-kernel path's scratch buffer
        nf4, dense = packed.numel() + 4 * absmax.numel(), dtype.itemsize * n * k
        if bnb is not None:
            bnb_packed, bnb_state = bnb_f.quantize_4bit(w16, blocksize=64, quant_type="nf4")  # ~ the same W

        dequant = partial(dequantize_nf4_triton, packed, absmax, (n, k), 64, dtype, out=buf)
        for m in ms:
            x, dy = torch.randn(m, k, device=device, dtype=dtype), torch.randn(m, n, device=device, dtype=dtype)
            act = dtype.itemsize * m * (n + k)
            ref = {"fwd": x.double() @ w16.double().T, "dx": dy.double() @ w16.double(), "W": w16.double()}
            # (label, call, bytes moved, the product it computes, the 16-bit row it is compared with)
            runs = [("16-bit fwd", partial(F.linear, x, w16), dense + act, "fwd", None),
                    ("16-bit dx", partial(torch.matmul, dy, w16), dense + act, "dx", None)]
            if cuda:
                runs += [("fused nf4 fwd", partial(nf4_matmul_triton, x, packed, absmax, None, (n, k), 64),
                          nf4 + act, "fwd", "16-bit fwd"),
                         ("fused nf4 dx", partial(nf4_matmul_dx_triton, dy, packed, absmax, (n, k), 64),
                          nf4 + act, "dx", "16-bit dx"),
                         ("nf4 dequantize", dequant, nf4 + dense, "W", None),
                         ("dequant+cuBLAS fwd", partial(_after, F.linear, x, dequant), nf4 + 2 * dense + act, "fwd",
                          "16-bit fwd"),
                         ("dequant+cuBLAS dx", partial(_after, torch.matmul, dy, dequant), nf4 + 2 * dense + act,
                          "dx", "16-bit dx")]
                if bnb is not None:
                    runs.append(("bnb matmul_4bit fwd", partial(bnb.matmul_4bit, x, bnb_packed.t(), bnb_state),
                                 nf4 + act, "fwd", "16-bit fwd"))
            else:
                runs += [("torch nf4 fwd", partial(nf4_matmul_torch, x, packed, absmax, None, (n, k), 64), nf4 + act,
                          "fwd", "16-bit fwd"),
                         ("torch nf4 dx", partial(nf4_matmul_dx_torch, dy, packed, absmax, (n, k), 64), nf4 + act,
                          "dx", "16-bit dx")]
            seconds = {}
            for label, call, nbytes, product, baseline in runs:
                out = call()
                err = ((out.double() - ref[product]).norm() / ref[product].norm()).item()
                t = seconds[label] = triton_support.seconds(call)
                flops, bw = (0 if product == "W" else 2 * m * n * k / t), nbytes / t
                pct = f"{100 * bw / peak[0]:6.0f}{100 * flops / peak[1]:7.1f}" if peak else f"{'-':>6}{'-':>7}"
                speedup = seconds[baseline] / t if baseline else None
                print(f"{label:<20}{f'{n}x{k}':>12}{m:>6}{t * 1e3:10.3f}{flops / 1e12:9.3f}{bw / 1e9:8.1f}{pct}"
                      f"{err:9.1e}{f'{speedup:8.2f}x' if speedup else ''}")
                rows.append({"kernel": label, "N": n, "K": k, "M": m, "seconds": t, "err": err, "speedup": speedup})
    return rows
