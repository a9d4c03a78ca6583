"""NF4 4-bit weights: the format, Triton kernels that compute with it, and the Linear4bit module.

References
- QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314):
  the NormalFloat-4 levels, blockwise absmax scaling, double quantization of the absmax.
- bitsandbytes (github.com/bitsandbytes-foundation/bitsandbytes), `functional.quantize_4bit` and
  `backends/default/ops.py`: the byte layout this file reproduces exactly, so that quantized
  checkpoints interoperate.

Format. W (out, in) is flattened row-major and cut into blocks of `blocksize` (64) weights; each
block stores absmax = max|w| (float32) and, per weight, the index (0..15) of the NF4 level nearest
to w / absmax. Two indices per byte, the first element in the high nibble. 4 bits + 32/64 bits
per weight = 4.5 bits; double quantization stores the absmax in 8 bits (blocks of 256) instead:
4 + 8/64 + 32/(64*256) ~ 4.127 bits.

Compute. `y = x @ W^T + b` never builds the 16-bit W in GPU memory: the Triton kernels load a tile
of packed bytes, one quantization block of K at a time, turn it into 16-bit values in registers
(nibble -> level -> * absmax) and feed it to the tensor cores. Each kernel sits beside the
pure-torch reference it is tested against:
    _nf4_tile                  <-> dequantize_nf4
    _nf4_matmul_kernel         <-> nf4_matmul_torch      (forward, and split-K decode for M <= 16)
    _nf4_gemv_kernel           <-> nf4_matmul_torch      (forward for one row: batch-1 decoding,
                                                          split-K or direct, whichever is faster)
    _nf4_matmul_dx_kernel      <-> nf4_matmul_dx_torch   (backward for the input: dx = dy @ W)
QUANT_BACKEND=triton|torch picks the path (default: triton for CUDA tensors, torch elsewhere).
Without a CUDA device the kernels are built for Triton's interpreter, so QUANT_BACKEND=triton
runs them on CPU tensors (slowly: tests only). Run the tests: python -m pytest tests/test_quant.py
Speed on an H200 (BENCHMARKS.md, `python bench.py kernels`): 0.27-0.39x bf16 cuBLAS at M=4096,
0.17-0.39x at M=1 (the split-K matmul, before the GEMV kernel, which is not timed yet); far from
what the format allows, and the next thing to work on.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path needs nothing else
    triton = None

# The 16 NF4 levels (QLoRA appendix; bitsandbytes `get_4bit_type("nf4")`): quantiles of N(0, 1)
# scaled to [-1, 1], with an exact 0. Asymmetric (7 negative, 8 positive) so that 0 is a level.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)

# byte b -> (level of its high nibble b >> 4, level of its low nibble b & 15): one lookup per byte.
_BYTE_TO_LEVELS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)  # (256, 2)


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
_ON_DEVICE: dict[tuple[int, torch.device], Tensor] = {}


def _on(device: torch.device, table: Tensor) -> Tensor:
    """One of this file's constant tables on `device`, copied there once per process. A copy per
    call would cost more than its bytes: a host-to-device copy from pageable memory first waits
    for the CUDA stream to drain, so the CPU could never run ahead of the GPU."""
    key = (id(table), torch.device(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = table.to(device)
    return _ON_DEVICE[key]


# ----------------------------------------------------------------------------- format (pure torch)


def _blockwise_codes(a: Tensor, levels: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """Flat float32 a (n,) -> (index of the nearest level to a / absmax (n,) int32, absmax (blocks,)).

    Exactly bitsandbytes' reference rule (backends/default/ops.py), bit for bit: full blocks are
    scaled by the reciprocal 1/absmax, the last partial block is divided by its absmax; "nearest"
    means bucketize against the float32 midpoints of the sorted levels, so a value exactly on a
    midpoint takes the lower level. Full blocks keep absmax 0 when all-zero, the partial block
    stores its absmax clamped to 1e-38 (bnb does the same)."""
    n = a.numel()
    full = n - n % blocksize
    absmax = a[:full].view(-1, blocksize).abs().amax(dim=1)                              # (full/bs,)
    scaled = (a[:full].view(-1, blocksize) * (1.0 / absmax.clamp(min=1e-38))[:, None]).view(-1)
    if full < n:
        last = a[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last[None]])
        scaled = torch.cat([scaled, a[full:] / last])
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled.clamp(-1, 1), midpoints.to(a.device), out_int32=True), absmax


def _scale_blocks(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    """values (n,) float32 * the absmax of each one's block -> (n,) float32 (the last block may be partial).
    Whole blocks (every weight matrix of a real model) are scaled in place: `values` must be a
    fresh tensor the caller owns; that saves a padded copy and a product the size of W."""
    n = values.numel()
    pad = -n % blocksize
    if pad == 0:
        return values.view(-1, blocksize).mul_(absmax[:, None]).view(-1)
    return (F.pad(values, (0, pad)).view(-1, blocksize) * absmax[:, None]).view(-1)[:n]


def quantize_nf4(w: Tensor, blocksize: int = 64) -> tuple[Tensor, Tensor]:
    """Any-shape float tensor -> (packed uint8 (ceil(numel/2),), absmax float32 (ceil(numel/blocksize),)).

    Byte-identical to bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4") (whose
    packed tensor is shaped (n/2, 1)). fp16/bf16 inputs are converted to float32 exactly first."""
    if not w.is_floating_point():
        raise TypeError(f"quantize_nf4: expected a float tensor, got {w.dtype}")
    if blocksize < 2 or blocksize % 2:
        raise ValueError(f"quantize_nf4: blocksize must be even (two weights per byte), got {blocksize}")
    codes, absmax = _blockwise_codes(w.reshape(-1).float(), NF4_LEVELS, blocksize)
    codes = F.pad(codes, (0, codes.numel() % 2), value=7).to(torch.uint8)  # odd numel: bnb pads with 0.0 = level 7
    return (codes[0::2] << 4) | codes[1::2], absmax


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape, blocksize: int = 64,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of quantize_nf4: level * absmax in float32, then rounded once to `dtype` (as bnb)."""
    n = math.prod(shape)
    # index_select with int32 indices: on the CPU ~2x faster than indexing with packed.long(),
    # whose int64 copy alone is 8 bytes per byte read. A fresh (n/2, 2) tensor, scaled in place.
    values = _on(packed.device, _BYTE_TO_LEVELS).index_select(0, packed.int()).view(-1)[:n]  # (n,) high nibble first
    return _scale_blocks(values, absmax.float(), blocksize).view(shape).to(dtype)


def quantize_absmax(absmax: Tensor, blocksize: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Double quantization (QLoRA section 3): absmax (b,) float32 -> (codes uint8 (b,), scale float32
    (ceil(b/256),), offset float32 ()). The absmax are all positive, so their mean is subtracted
    first to use both halves of the signed 8-bit dynamic map (bnb `compress_statistics=True`).

    Same rule as bitsandbytes' reference `quantize_blockwise`; bnb's C kernel on the CPU agrees on
    all but a few codes, where it picks a level that is not the nearest (see tests)."""
    offset = absmax.float().mean()
    codes, scale = _blockwise_codes(absmax.float() - offset, DYNAMIC_MAP_8BIT, blocksize)
    return codes.to(torch.uint8), scale, offset


def dequantize_absmax(codes: Tensor, scale: Tensor, offset: Tensor, blocksize: int = 256) -> Tensor:
    """Inverse of quantize_absmax -> absmax float32 (b,)."""
    values = _on(codes.device, DYNAMIC_MAP_8BIT)[codes.long()]
    return _scale_blocks(values, scale, blocksize) + offset


# ----------------------------------------------------------------------------- matmul references (pure torch)


def nf4_matmul_torch(x: Tensor, packed: Tensor, absmax: Tensor, bias: Tensor | None, shape: tuple[int, int],
                     blocksize: int) -> Tensor:
    """y = x @ W^T (+ bias), x (M, K), W (N, K) = shape: dequantize W to x.dtype for this call only."""
    return F.linear(x, dequantize_nf4(packed, absmax, shape, blocksize, x.dtype), bias)


def nf4_matmul_dx_torch(dy: Tensor, packed: Tensor, absmax: Tensor, shape: tuple[int, int],
                        blocksize: int) -> Tensor:
    """dx = dy @ W, dy (M, N) -> (M, K): the gradient of x @ W^T with respect to x."""
    return dy @ dequantize_nf4(packed, absmax, shape, blocksize, dy.dtype)


# ----------------------------------------------------------------------------- Triton kernels

if triton is not None:
    # Triton 3.x reads TRITON_INTERPRET when a function is decorated, i.e. at import. Without a
    # CUDA device the interpreter is the only way the kernels can run, so build them for it; the
    # test suite can then import this file in any order and still run the kernels on the CPU.
    # triton.language's own @jit helpers (tl.cdiv, tl.zeros, tl.sum, tl.interleave) may have been
    # decorated for the GPU before this line, so the kernels below use only builtins (tl.reduce with
    # their own _add for a sum).
    INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
    if INTERPRET:
        triton.knobs.runtime.interpret = True

    def _configs(interpreted: dict, gpu: list[tuple], keys=("BLOCK_M", "BLOCK_N", "SPLIT_K", "SWAP"),
                 **fixed) -> list:
        """One small config under the interpreter (autotuning there would run every config on the
        CPU), else the GPU list: tuples of the `keys` values, then num_warps and num_stages."""
        if INTERPRET:
            return [triton.Config(interpreted)]
        return [triton.Config({**dict(zip(keys, c[:-2])), **fixed}, num_warps=c[-2], num_stages=c[-1]) for c in gpu]

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
    _TINY = dict(BLOCK_M=16, BLOCK_N=32, SPLIT_K=1, SWAP=False, GROUP_M=2)

    @triton.jit
    def _nf4_level(codes, levels_ptr, ASM: tl.constexpr):
        """The NF4 level (float32) of each 4-bit code, from the 16-entry table: 64 bytes, one L1 line,
        so a warp's 32 lookups are served at once. On a GPU the load is written in PTX because
        inside a tl.dot loop Triton's sm_90 pipeliner turns a tl.load gather into one 4-byte async
        copy per element through shared memory (seen in the TTGIR of the first version, which ran
        20-30x slower than cuBLAS on an H200). The interpreter cannot run PTX: it takes tl.load."""
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
        if HAS_BIAS:
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
    def _add(a, b):
        return a + b

    @triton.jit
    def _nf4_pair(byte, pairs_ptr, ASM: tl.constexpr):
        """(level of byte >> 4, level of byte & 15), float32, from the 256 x 2 table _BYTE_TO_LEVELS
        (2 KiB, L1-resident): one 8-byte lookup per byte instead of one 4-byte lookup per nibble,
        which halves the load instructions of the M = 1 kernel, whose L1 traffic would otherwise
        be the limit (~36 weights per clock per SM at the H200's bandwidth). PTX as in _nf4_level."""
        pair = pairs_ptr + 2 * byte.to(tl.int32)
        if ASM:
            return tl.inline_asm_elementwise("ld.global.nc.v2.f32 {$0, $1}, [$2];", "=f,=f,l", [pair],
                                             dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
        return tl.load(pair), tl.load(pair + 1)

    # M = 1 (batch-1 decoding): (BLOCK_N rows, NB quantization blocks per step, SPLIT_K, warps,
    # stages). Each row's step is NB x 32 contiguous bytes; enough CTAs in flight to cover the
    # HBM latency matter more than the tile shape. Never tuned on a GPU yet (BENCHMARKS.md).
    # Split-K: more CTAs for short rows, partial sums added into a zeroed float32 y (three kernels
    # with the zeroing and the cast). Direct: a CTA sums whole rows and writes y itself (one kernel).
    GEMV_SPLIT_CONFIGS = [(64, 2, 1, 4, 3), (32, 4, 1, 4, 3), (16, 8, 1, 4, 3), (64, 2, 4, 4, 3),
                          (32, 4, 2, 4, 3), (128, 1, 2, 4, 3), (64, 4, 2, 8, 3), (16, 4, 8, 4, 4)]
    GEMV_DIRECT_CONFIGS = [(8, 16, 1, 4, 3), (4, 32, 1, 4, 3), (16, 8, 1, 4, 3), (8, 32, 1, 8, 3),
                           (4, 16, 1, 4, 3), (16, 16, 1, 8, 3), (32, 4, 1, 4, 3), (2, 32, 1, 4, 3)]

    @triton.autotune(configs=_configs(dict(BLOCK_N=16, NB=2, SPLIT_K=2), GEMV_SPLIT_CONFIGS,
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
            block_sum = tl.reduce(hi * x_even[None, :, :] + lo * x_odd[None, :, :], 2, _add)  # (BN, NB)
            scale = tl.load(absmax_ptr + offs_n[:, None] * KB + blk[None, :], mask=ok, other=0.0)  # (BN, NB)
            acc += block_sum * scale
        y = tl.reduce(acc, 1, _add)                                                    # (BN,)
        if HAS_BIAS:
            if split == 0:
                y += tl.load(bias_ptr + offs_n, mask=row_ok, other=0.0).to(tl.float32)
        if ATOMIC:
            tl.atomic_add(y_ptr + offs_n, y, mask=row_ok)
        else:
            tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    # The same kernel with the direct configs: a second autotuner over the same jit function.
    _nf4_gemv_direct = triton.autotune(configs=_configs(dict(BLOCK_N=16, NB=2, SPLIT_K=1), GEMV_DIRECT_CONFIGS,
                                                        ("BLOCK_N", "NB", "SPLIT_K")), key=["N", "KB"])(_nf4_gemv_kernel.fn)

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


def _launch_args(a: Tensor, shape: tuple[int, int], blocksize: int) -> tuple:
    """Checks shared by both launchers; returns the NF4 table on a's device and the dot precision."""
    if triton is None:
        raise RuntimeError("quant.py: QUANT_BACKEND=triton but triton is not installed")
    if a.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("quant.py: Triton on CPU tensors needs TRITON_INTERPRET=1 (set before importing quant)")
    if math.prod(shape) >= 2**31:
        raise ValueError(f"quant.py: weight {shape} too large for the kernels' int32 offsets")
    if not _kernel_shape_ok(shape[1], blocksize):
        raise ValueError(f"quant.py: the Triton kernels need in_features ({shape[1]}) to be a multiple of "
                         f"the blocksize ({blocksize}, a power of two >= 16); use the torch path")
    levels = _on(a.device, NF4_LEVELS)
    # float32 inputs: exact float32 products (tf32 would lose 13 mantissa bits); ignored for 16-bit.
    return levels, ("ieee" if a.dtype == torch.float32 else "tf32")


def nf4_matmul_triton(x: Tensor, packed: Tensor, absmax: Tensor, bias: Tensor | None, shape: tuple[int, int],
                      blocksize: int) -> Tensor:
    """Triton version of nf4_matmul_torch: x (M, K) -> y (M, N) in x.dtype. M = 1 takes the GEMV
    kernel, 2 <= M <= 16 the decode configs of the matmul; both meet their split-K partial sums in
    a float32 y by atomic adds."""
    (N, K), M = shape, x.shape[0]
    levels, precision = _launch_args(x, shape, blocksize)
    if M == 1:
        return _gemv(x, packed, absmax, bias, shape, blocksize)
    decode = M <= 16
    y = torch.zeros(M, N, device=x.device, dtype=torch.float32) if decode else x.new_empty(M, N)
    kernel = _nf4_matmul_decode if decode else _nf4_matmul_kernel
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])
    kernel[grid](x, packed, absmax, levels, bias if bias is not None else x, y, M, N, K,
                 max(16, triton.next_power_of_2(M)), x.stride(0), y.stride(0), BS=blocksize,
                 HAS_BIAS=bias is not None, ATOMIC=decode, PRECISION=precision, ASM=not INTERPRET)
    return y.to(x.dtype)


_GEMV_SPLIT: dict[tuple, bool] = {}  # (device, N, K, dtype) -> the split-K plan is the faster


def _gemv(x: Tensor, packed: Tensor, absmax: Tensor, bias: Tensor | None, shape: tuple[int, int],
          blocksize: int) -> Tensor:
    """x (1, K) -> y (1, N) in x.dtype by one of two plans: split-K (more CTAs, but y is zeroed,
    summed in float32 and cast: three kernels) or direct (one kernel writes y). Which is faster
    depends on the shape and the GPU, so on a GPU both are timed whole on first use (each after
    its own autotuning); the interpreter takes split-K unless _GEMV_SPLIT says otherwise."""
    (N, K), pairs = shape, _on(x.device, _BYTE_TO_LEVELS)
    args = (x, packed, absmax, pairs, bias if bias is not None else x)

    def split() -> Tensor:
        y = torch.zeros(1, N, device=x.device, dtype=torch.float32)
        _nf4_gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])](
            *args, y, N, K // blocksize, BS=blocksize, HAS_BIAS=bias is not None, ATOMIC=True, ASM=not INTERPRET)
        return y.to(x.dtype)

    def direct() -> Tensor:
        y = x.new_empty(1, N)
        _nf4_gemv_direct[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), 1)](
            *args, y, N, K // blocksize, BS=blocksize, HAS_BIAS=bias is not None, ATOMIC=False, ASM=not INTERPRET)
        return y

    key = (x.device, N, K, x.dtype)
    if key not in _GEMV_SPLIT:
        if INTERPRET:  # nothing to time
            _GEMV_SPLIT[key] = True
        else:
            from triton.testing import do_bench
            _GEMV_SPLIT[key] = do_bench(split) <= do_bench(direct)
    return split() if _GEMV_SPLIT[key] else direct()


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


# ----------------------------------------------------------------------------- module


def _frozen(t: Tensor) -> nn.Parameter:
    """A 4-bit tensor of Linear4bit: a parameter without gradient (so that FSDP shards it)."""
    return nn.Parameter(t, requires_grad=False)


def _kernel_shape_ok(in_features: int, blocksize: int) -> bool:
    """The kernels step through K one quantization block at a time (a tl.dot of >= 16, a power of
    two), so each row must hold whole blocks: true of every Qwen2 projection (K is a multiple of 64)."""
    return blocksize >= 16 and blocksize & (blocksize - 1) == 0 and in_features % blocksize == 0


def _use_triton(x: Tensor, in_features: int, blocksize: int) -> bool:
    """QUANT_BACKEND=triton|torch; unset: triton for CUDA tensors when importable. Shapes the
    kernels do not take (_kernel_shape_ok) always run the torch path."""
    backend = os.environ.get("QUANT_BACKEND", "")
    if backend not in ("", "triton", "torch"):
        raise ValueError(f"QUANT_BACKEND={backend!r}: expected 'triton' or 'torch'")
    if backend == "torch" or not _kernel_shape_ok(in_features, blocksize):
        return False
    return backend == "triton" or (triton is not None and x.is_cuda)


class _NF4Linear(torch.autograd.Function):
    """y = x @ W^T + b with W frozen in NF4. Only the packed bytes and absmax are saved for the
    backward (no 16-bit W kept between forward and backward); dx is computed from them again."""

    @staticmethod
    def forward(ctx, x, packed, absmax, bias, shape, blocksize, triton_path):
        ctx.save_for_backward(packed, absmax)
        ctx.shape, ctx.blocksize, ctx.triton_path = shape, blocksize, triton_path
        matmul = nf4_matmul_triton if triton_path else nf4_matmul_torch
        return matmul(x, packed, absmax, bias, shape, blocksize)

    @staticmethod
    def backward(ctx, dy):
        packed, absmax = ctx.saved_tensors
        dy = dy.contiguous()
        dx = db = None
        if ctx.needs_input_grad[0]:
            matmul_dx = nf4_matmul_dx_triton if ctx.triton_path else nf4_matmul_dx_torch
            dx = matmul_dx(dy, packed, absmax, ctx.shape, ctx.blocksize)
        if ctx.needs_input_grad[3]:  # bias is frozen by default; honour it if someone unfreezes it
            db = dy.sum(0)
        return dx, None, None, db, None, None, None


def quantize_nf4_part(read_rows, shape: tuple[int, int], blocksize: int, packed: slice,
                      absmax: slice) -> tuple[Tensor, Tensor]:
    """Bytes `packed` of quantize_nf4(W)[0] and blocks `absmax` of its absmax, computed from only the
    rows of W (out, in) that they cover: read_rows(r0, r1) returns W[r0:r1] (any float dtype).

    Blocks run over the flattened W, so the elements needed form whole blocks [lo, hi), and
    quantizing just those gives exactly the bytes of the whole (the only partial block is W's last,
    in both). When in_features % blocksize == 0 (every Qwen2 projection) each block lies within one
    row: rows quantize independently, and a piece that starts or ends inside a row reads that row.
    Otherwise a block can run on into the next row, which is then read too: still exact, at most
    one extra row at each end. FSDP's sharded loading (loader.load_shards) calls this per rank."""
    n, cols = shape[0] * shape[1], shape[1]
    spans = [(2 * p.start, min(n, 2 * p.stop)) for p in (packed,) if p.stop > p.start]
    spans += [(blocksize * a.start, min(n, blocksize * a.stop)) for a in (absmax,) if a.stop > a.start]
    if not spans:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0)
    lo = min(s for s, _ in spans) // blocksize * blocksize
    hi = min(n, -(-max(e for _, e in spans) // blocksize) * blocksize)
    r0, r1 = lo // cols, -(-hi // cols)
    w = read_rows(r0, r1).reshape(-1)[lo - r0 * cols:hi - r0 * cols]  # elements [lo, hi) of the flat W
    part, part_absmax = quantize_nf4(w, blocksize)  # byte j is element lo + 2j, block k is lo / blocksize + k
    return (part[packed.start - lo // 2:packed.stop - lo // 2],
            part_absmax[absmax.start - lo // blocksize:absmax.stop - lo // blocksize])


class Linear4bit(nn.Module):
    """nn.Linear with its weight frozen in NF4 (bitsandbytes layout).

    state_dict: "weight" packed uint8 (ceil(out*in/2),), "absmax" float32 (ceil(out*in/blocksize),)
    (double_quant=True: "absmax" uint8 codes, "absmax_scale" float32 per 256, "absmax_offset"),
    "bias" frozen, compute_dtype. The input is cast to compute_dtype and the output back to the
    input's dtype. Casting the module with .to(dtype) would also cast the absmax: don't.

    weight, absmax and absmax_scale are frozen nn.Parameters (requires_grad=False), not buffers,
    for one reason: FSDP2 (torch.distributed.fsdp.fully_shard) shards parameters and leaves
    buffers whole on every rank. As parameters, each rank holds a dim-0 chunk of the flat packed
    bytes and absmax, and before the layer runs FSDP all-gathers them back into these same flat
    tensors: forward and dequantize see the whole weight and need no code of their own for it.
    (A tensor subclass with FSDP's fsdp_pre/post_all_gather hooks, as torchtune's NF4Tensor, would
    be the way if the gathered form had to differ from the sharded one; here it does not.) The
    absmax_offset scalar stays a buffer: one number, replicated."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, blocksize: int = 64,
                 compute_dtype: torch.dtype = torch.float32, device=None, double_quant: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.blocksize = in_features, out_features, blocksize
        self.compute_dtype, self.double_quant = compute_dtype, double_quant
        n = in_features * out_features
        blocks = -(-n // blocksize)
        self.weight = _frozen(torch.zeros((n + 1) // 2, dtype=torch.uint8, device=device))
        self.absmax = _frozen(torch.zeros(blocks, dtype=torch.uint8 if double_quant else torch.float32, device=device))
        if double_quant:
            self.absmax_scale = _frozen(torch.zeros(-(-blocks // 256), dtype=torch.float32, device=device))
            self.register_buffer("absmax_offset", torch.zeros((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = False) -> "Linear4bit":
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, blocksize, w.dtype, w.device,
                double_quant)
        m.quantize_(w.detach())
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach())
        return m

    @torch.no_grad()
    def quantize_(self, weight: Tensor) -> None:
        """Fill the 4-bit tensors from a full (out, in) weight; they move to the weight's device (and
        a module built on "meta" gets real tensors)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"Linear4bit.quantize_: weight {tuple(weight.shape)} does not match "
                             f"(out_features, in_features) = {(self.out_features, self.in_features)}")
        packed, absmax = quantize_nf4(weight, self.blocksize)
        self.weight = _frozen(packed)
        if self.double_quant:
            codes, scale, self.absmax_offset = quantize_absmax(absmax)
            self.absmax, self.absmax_scale = _frozen(codes), _frozen(scale)
        else:
            self.absmax = _frozen(absmax)

    @torch.no_grad()
    def quantize_part(self, read_rows, parts: dict[str, slice], gather_absmax=None) -> dict[str, Tensor]:
        """FSDP's sharded loading: the elements parts[name] of "weight", "absmax" (and with
        double_quant "absmax_scale"), as quantize_ would make them, from only the rows of W that
        they cover (read_rows(r0, r1) -> W[r0:r1], see quantize_nf4_part); with double_quant also
        the whole "absmax_offset". The offset is the mean of every absmax of W, so then
        gather_absmax(mine) must return the whole float32 absmax, put together from every rank's
        `mine` (its parts["absmax"] blocks): 4 bytes per 64 weights, not the weights."""
        shape = (self.out_features, self.in_features)
        packed, absmax = quantize_nf4_part(read_rows, shape, self.blocksize, parts["weight"], parts["absmax"])
        if not self.double_quant:
            return {"weight": packed, "absmax": absmax}
        codes, scale, offset = quantize_absmax(gather_absmax(absmax))
        return {"weight": packed, "absmax": codes[parts["absmax"]], "absmax_scale": scale[parts["absmax_scale"]],
                "absmax_offset": offset}

    def _absmax_f32(self) -> Tensor:
        if self.double_quant:
            return dequantize_absmax(self.absmax, self.absmax_scale, self.absmax_offset)
        return self.absmax.float()

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The (out, in) weight in `dtype` (default compute_dtype), for merging and export."""
        shape = (self.out_features, self.in_features)
        return dequantize_nf4(self.weight, self._absmax_f32(), shape, self.blocksize, dtype or self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        y = _NF4Linear.apply(x2, self.weight, self._absmax_f32(), self.bias, (self.out_features, self.in_features),
                             self.blocksize, _use_triton(x2, self.in_features, self.blocksize))
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")
