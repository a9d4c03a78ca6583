"""NF4 4-bit weights: the format (byte-identical to bitsandbytes) and the Linear4bit module.

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
4 + 8/64 + 32/(64*256) ~ 4.127 bits. This file holds the encoder (quantize_nf4, quantize_absmax);
the decoding side, which is what the kernels compute, is in kernels/nf4_format.py beside them (the
level tables, dequantize_nf4, dequantize_absmax; re-exported here).

Compute. Linear4bit's y = x @ W^T + b and its input gradient dy @ W each run one of three paths,
chosen by `_path` (the reason for each branch is there): the pure-torch reference (dequantize,
then matmul: CPU tensors, QUANT_BACKEND=torch), the fused Triton kernels of kernels/nf4_kernels.py (W never
in 16 bits: decoding, few rows), or one Triton kernel that dequantizes W into a scratch buffer
shared by every layer, then cuBLAS (many rows, where the fused kernels lose; the crossover is timed
per shape on first use on a GPU). QUANT_BACKEND=triton|torch (default: Triton for CUDA tensors;
without a CUDA device Triton runs in its interpreter: tests only). Speeds: BENCHMARKS.md, "NF4
kernels".

How to run: python -m pytest tests/test_quant.py; python bench.py kernels
"""
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import nf4_kernels
from kernels import triton_support
from kernels.nf4_format import (  # noqa: F401 (the format's API: its decoding, beside the kernels)
    DYNAMIC_MAP_8BIT,
    NF4_LEVELS,
    dequantize_absmax,
    dequantize_nf4,
    dynamic_map_8bit,
)
from kernels.nf4_kernels import nf4_matmul_dx_torch, nf4_matmul_torch

# ----------------------------------------------------------------------------- format: the encoder (pure torch)


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


def quantize_absmax(absmax: Tensor, blocksize: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Double quantization (QLoRA section 3): absmax (b,) float32 -> (codes uint8 (b,), scale float32
    (ceil(b/256),), offset float32 ()). The absmax are all positive, so their mean is subtracted
    first to use both halves of the signed 8-bit dynamic map (bnb `compress_statistics=True`).

    Same rule as bitsandbytes' reference `quantize_blockwise`; bnb's C kernel on the CPU agrees on
    all but a few codes, where it picks a level that is not the nearest (see tests)."""
    offset = absmax.float().mean()
    codes, scale = _blockwise_codes(absmax.float() - offset, DYNAMIC_MAP_8BIT, blocksize)
    return codes.to(torch.uint8), scale, offset


# ----------------------------------------------------------------------------- dispatch: which path computes


class NF4Weight(NamedTuple):
    """A frozen 4-bit weight as the compute paths take it (Linear4bit's buffers)."""
    packed: Tensor               # (out * in / 2,) uint8: two NF4 codes per byte
    absmax: Tensor               # (blocks,) float32, or with double quantization its 8-bit codes
    scale: Tensor | None         # double quantization: float32 scale per 256 blocks of absmax, else None
    offset: Tensor | None        # double quantization: the absmax's mean, else None

    def float_absmax(self) -> Tensor:
        """The float32 absmax per block, what the fused kernels and the torch path take."""
        return self.absmax if self.scale is None else dequantize_absmax(self.absmax, self.scale, self.offset)


def _path(a: Tensor, nf4: NF4Weight, shape: tuple[int, int], blocksize: int, direction: str) -> str:
    """Which implementation computes a product with this 4-bit weight: direction "fwd" is a @ W^T (a = x), "dx" is
    a @ W (a = dy), both with M = a.shape[0] rows.
        "torch"    QUANT_BACKEND=torch, or unset and `a` is not on a GPU: the pure-torch reference
                   (dequantize, then matmul; without a GPU Triton has only its interpreter, for tests)
        "dequant"  the fused kernels do not take this shape (rows of K that are not whole blocks), or
                   M is at or above the crossover: one Triton kernel writes W in 16 bits into the
                   shared scratch buffer, then cuBLAS multiplies at its full tensor-core rate;
                   with many rows that pays for writing W once
        "fused"    fewer rows (decoding, small batches): the fused kernels read only the packed
                   bytes (0.56 byte per weight) and never write W, where the other path moves 4.56"""
    if not triton_support.use_triton("QUANT_BACKEND", a):
        return "torch"
    if not nf4_kernels.fused_shape_ok(shape[1], blocksize):
        return "dequant"
    return "dequant" if _two_kernels_faster(a, nf4, shape, blocksize, direction) else "fused"


# The crossover in rows where nothing can be timed (the interpreter; a CUDA graph capture, which
# would record the timing loop): about where the fused kernels, compute-bound, start to lose to
# cuBLAS, still bound by reading W (the arithmetic: BENCHMARKS.md, "Dequantize + cuBLAS for many rows").
CROSSOVER_M = 128
_TWO_KERNELS: dict[tuple, bool] = {}  # (device, N, K, dtype, M bucket, direction) -> two kernels are faster


def _two_kernels_faster(a: Tensor, nf4: NF4Weight, shape: tuple[int, int], blocksize: int, direction: str) -> bool:
    """Whether dequantize + cuBLAS beats the fused kernels at a's M rows. On a GPU both are timed
    whole on first use per (device, shape, dtype, M bucket, direction), the fused one after its
    autotuning, and the faster is kept. Buckets as the kernels' autotuner keys them (M = 1; then
    powers of two from 16), so no M is timed that the fused kernels would not also tune for. Else
    M >= CROSSOVER_M, not remembered."""
    M = a.shape[0]
    key = (a.device, *shape, a.dtype, 1 if M == 1 else max(16, 1 << (M - 1).bit_length()), direction)
    if key not in _TWO_KERNELS:
        if triton_support.INTERPRET or triton_support.capturing():
            return M >= CROSSOVER_M
        run = partial(_matmul, bias=None) if direction == "fwd" else _matmul_dx
        t = {path: triton_support.seconds(partial(run, path, a, nf4, shape=shape, blocksize=blocksize), rep_ms=25)
             for path in ("fused", "dequant")}
        _TWO_KERNELS[key] = t["dequant"] < t["fused"]
    return _TWO_KERNELS[key]


_SCRATCH: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # (device, dtype) -> the dequantization buffer


def _scratch(device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
    """The one buffer of the two-kernel path per (device, dtype), grown to the largest projection
    seen and shared by every layer (e.g. 3584 x 18944 x 2 bytes = 136 MB at 7B in bf16, 5120 x
    13824 x 2 = 141 MB at 14B: arithmetic). Its contents live from the dequantization kernel to
    the matmul queued after it on the same stream, so the next layer may overwrite them: nothing
    may keep a dequantized W (the backward dequantizes again). Inside a CUDA graph capture a buffer
    too small is not grown (memory allocated there belongs to the graph): a temporary is used."""
    buf = _SCRATCH.get((device, dtype))
    if buf is None or buf.numel() < numel:
        if triton_support.capturing():
            return torch.empty(numel, device=device, dtype=dtype)
        _SCRATCH.pop((device, dtype), None)  # freed before the larger one is allocated
        buf = _SCRATCH[(device, dtype)] = torch.empty(numel, device=device, dtype=dtype)
    return buf


def _dequantized(nf4: NF4Weight, shape: tuple[int, int], blocksize: int, dtype: torch.dtype) -> Tensor:
    """W in `dtype`, in the scratch buffer: valid until the next layer's dequantization."""
    out = _scratch(nf4.packed.device, dtype, shape[0] * shape[1])
    return nf4_kernels.dequantize_nf4_triton(nf4.packed, nf4.absmax, shape, blocksize, dtype, nf4.scale, nf4.offset,
                                             out=out)


_GEMV_PLAN: dict[tuple, str] = {}  # (device, N, K, dtype) -> the faster GEMV plan


def _gemv_plan(x: Tensor, packed: Tensor, absmax: Tensor, shape: tuple[int, int], blocksize: int) -> str:
    """The faster of the GEMV kernel's two plans (nf4_kernels.nf4_matmul_triton) for this device,
    shape and dtype. It depends on both, so on a GPU both plans are timed whole on first use (each
    after its own autotuning) and the faster is kept. Where nothing can be timed (the interpreter;
    a CUDA graph capture) it is "split", not remembered."""
    key = (x.device, *shape, x.dtype)
    if key not in _GEMV_PLAN:
        if triton_support.INTERPRET or triton_support.capturing():
            return "split"
        t = {plan: triton_support.seconds(partial(nf4_kernels.nf4_matmul_triton, x, packed, absmax, None, shape,
                                                  blocksize, plan)) for plan in ("split", "direct")}
        _GEMV_PLAN[key] = min(t, key=t.get)
    return _GEMV_PLAN[key]


def dispatch_choices() -> dict[str, dict]:
    """What the first-use timings have chosen so far in this process, for reports (bench.py train):
    "dequant" maps (device, N, K, dtype, M bucket, direction) to whether dequantize + cuBLAS won,
    "gemv_plan" maps (device, N, K, dtype) to the GEMV plan kept."""
    return {"dequant": dict(_TWO_KERNELS), "gemv_plan": dict(_GEMV_PLAN)}


def _matmul(path: str, x: Tensor, nf4: NF4Weight, bias: Tensor | None, shape: tuple[int, int],
            blocksize: int) -> Tensor:
    """y = x @ W^T (+ bias) by `path` (see _path)."""
    if path == "dequant":
        w = _dequantized(nf4, shape, blocksize, x.dtype)
        if torch.is_autocast_enabled(x.device.type):  # the product in x's dtype, as on the other paths
            with torch.autocast(x.device.type, enabled=False):
                return F.linear(x, w, bias)
        return F.linear(x, w, bias)
    packed, absmax = nf4.packed, nf4.float_absmax()
    if path == "fused":
        plan = _gemv_plan(x, packed, absmax, shape, blocksize) if x.shape[0] == 1 else "split"
        return nf4_kernels.nf4_matmul_triton(x, packed, absmax, bias, shape, blocksize, plan)
    return nf4_matmul_torch(x, packed, absmax, bias, shape, blocksize)


def _matmul_dx(path: str, dy: Tensor, nf4: NF4Weight, shape: tuple[int, int], blocksize: int) -> Tensor:
    """dx = dy @ W by `path`."""
    if path == "dequant":
        return dy @ _dequantized(nf4, shape, blocksize, dy.dtype)
    packed, absmax = nf4.packed, nf4.float_absmax()
    if path == "fused":
        return nf4_kernels.nf4_matmul_dx_triton(dy, packed, absmax, shape, blocksize)
    return nf4_matmul_dx_torch(dy, packed, absmax, shape, blocksize)


class _NF4Linear(torch.autograd.Function):
    """y = x @ W^T + b with W frozen in NF4. Only the packed bytes and the absmax (float32, or double
    quantization's codes with their scale and offset) are saved for the backward, never a 16-bit
    W: the fused kernels read the packed bytes again, and the two-kernel path dequantizes again
    into the scratch buffer, which other layers have overwritten since the forward. The path is
    chosen per direction (_path): the forward's and dx's kernels cross over at different M."""

    @staticmethod
    def forward(ctx, x, packed, absmax, scale, offset, bias, shape, blocksize):
        ctx.save_for_backward(packed, absmax, scale, offset)
        ctx.shape, ctx.blocksize = shape, blocksize
        nf4 = NF4Weight(packed, absmax, scale, offset)
        return _matmul(_path(x, nf4, shape, blocksize, "fwd"), x, nf4, bias, shape, blocksize)

    @staticmethod
    def backward(ctx, dy):
        nf4, (shape, blocksize) = NF4Weight(*ctx.saved_tensors), (ctx.shape, ctx.blocksize)
        dy = dy.contiguous()
        dx = db = None
        if ctx.needs_input_grad[0]:
            dx = _matmul_dx(_path(dy, nf4, shape, blocksize, "dx"), dy, nf4, shape, blocksize)
        if ctx.needs_input_grad[5]:  # bias is frozen by default; honour it if someone unfreezes it
            db = dy.sum(0)
        return dx, None, None, None, None, db, None, None


def _frozen(t: Tensor) -> nn.Parameter:
    """A 4-bit tensor of Linear4bit: a parameter without gradient (so that FSDP shards it)."""
    return nn.Parameter(t, requires_grad=False)


def quantize_nf4_part(read_rows, shape: tuple[int, int], blocksize: int, packed: slice,
                      absmax: slice) -> tuple[Tensor, Tensor]:
    """Bytes `packed` of quantize_nf4(W)[0] and blocks `absmax` of its absmax, computed from only the
    rows of W (out, in) that they cover: read_rows(r0, r1) returns W[r0:r1] (any float dtype).

    Blocks run over the flattened W, so the elements needed form whole blocks [lo, hi), and
    quantizing just those gives exactly the bytes of the whole (the only partial block is W's last,
    in both). When in_features % blocksize == 0 (every Qwen2 projection) each block lies within one
    row: rows quantize independently, and a piece that starts or ends inside a row reads that row.
    Otherwise a block can run on into the next row, which is then read too: still exact, at most
    one extra row at each end. FSDP's sharded loading (sharding.load_shards) calls this per rank."""
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
        scale, offset = (self.absmax_scale, self.absmax_offset) if self.double_quant else (None, None)
        y = _NF4Linear.apply(x2, self.weight, self.absmax, scale, offset, self.bias,
                             (self.out_features, self.in_features), self.blocksize)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")
