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
the decoding side, which is what the kernels compute, is in nf4_kernels.py beside them (the level
tables, dequantize_nf4, dequantize_absmax; re-exported here).

Compute. Linear4bit's y = x @ W^T + b and its input gradient run the fused Triton kernels of
nf4_kernels.py (W never in 16 bits) or their pure-torch references (dequantize, then matmul).
QUANT_BACKEND=triton|torch picks the path (default: triton for CUDA tensors, torch elsewhere;
without a CUDA device the kernels run in Triton's interpreter: tests only). Speeds: BENCHMARKS.md,
"NF4 kernels".

How to run: python -m pytest tests/test_quant.py; python bench.py kernels
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nf4_kernels
import triton_support
from nf4_kernels import (  # noqa: F401 (the format's API)
    DYNAMIC_MAP_8BIT,
    NF4_LEVELS,
    dequantize_absmax,
    dequantize_nf4,
    dynamic_map_8bit,
    nf4_matmul_dx_torch,
    nf4_matmul_torch,
)

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


# ----------------------------------------------------------------------------- module


def _use_triton(x: Tensor, in_features: int, blocksize: int) -> bool:
    """QUANT_BACKEND=triton|torch; unset: triton for CUDA tensors when importable. Shapes the
    kernels do not take (nf4_kernels.fused_shape_ok) always run the torch path."""
    return triton_support.use_triton("QUANT_BACKEND", x) and nf4_kernels.fused_shape_ok(in_features, blocksize)


_GEMV_PLAN: dict[tuple, str] = {}  # (device, N, K, dtype) -> the faster GEMV plan


def _gemv_plan(x: Tensor, packed: Tensor, absmax: Tensor, shape: tuple[int, int], blocksize: int) -> str:
    """The faster of the GEMV kernel's two plans (nf4_kernels.nf4_matmul_triton) for this device,
    shape and dtype. It depends on both, so on a GPU both plans are timed whole on first use (each
    after its own autotuning) and the faster is kept. Where nothing can be timed (the interpreter;
    a CUDA graph capture, which would record the timing loop) it is "split", not remembered."""
    key = (x.device, *shape, x.dtype)
    if key not in _GEMV_PLAN:
        if triton_support.INTERPRET or torch.cuda.is_current_stream_capturing():
            return "split"
        t = {plan: triton_support.seconds(partial(nf4_kernels.nf4_matmul_triton, x, packed, absmax, None, shape,
                                                  blocksize, plan)) for plan in ("split", "direct")}
        _GEMV_PLAN[key] = min(t, key=t.get)
    return _GEMV_PLAN[key]


def _fused_matmul(x, packed, absmax, bias, shape, blocksize):
    plan = _gemv_plan(x, packed, absmax, shape, blocksize) if x.shape[0] == 1 else "split"
    return nf4_kernels.nf4_matmul_triton(x, packed, absmax, bias, shape, blocksize, plan)


class _NF4Linear(torch.autograd.Function):
    """y = x @ W^T + b with W frozen in NF4. Only the packed bytes and absmax are saved for the
    backward (no 16-bit W kept between forward and backward); dx is computed from them again."""

    @staticmethod
    def forward(ctx, x, packed, absmax, bias, shape, blocksize, triton_path):
        ctx.save_for_backward(packed, absmax)
        ctx.shape, ctx.blocksize, ctx.triton_path = shape, blocksize, triton_path
        matmul = _fused_matmul if triton_path else nf4_matmul_torch
        return matmul(x, packed, absmax, bias, shape, blocksize)

    @staticmethod
    def backward(ctx, dy):
        packed, absmax = ctx.saved_tensors
        dy = dy.contiguous()
        dx = db = None
        if ctx.needs_input_grad[0]:
            matmul_dx = nf4_kernels.nf4_matmul_dx_triton if ctx.triton_path else nf4_matmul_dx_torch
            dx = matmul_dx(dy, packed, absmax, ctx.shape, ctx.blocksize)
        if ctx.needs_input_grad[3]:  # bias is frozen by default; honour it if someone unfreezes it
            db = dy.sum(0)
        return dx, None, None, db, None, None, None


class Linear4bit(nn.Module):
    """nn.Linear with its weight frozen in NF4 (bitsandbytes layout).

    state_dict: "weight" packed uint8 (ceil(out*in/2),), "absmax" float32 (ceil(out*in/blocksize),)
    (double_quant=True: "absmax" uint8 codes, "absmax_scale" float32 per 256, "absmax_offset"),
    "bias" frozen, compute_dtype. The input is cast to compute_dtype and the output back to the
    input's dtype. Casting the module with .to(dtype) would also cast the absmax: don't."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, blocksize: int = 64,
                 compute_dtype: torch.dtype = torch.float32, device=None, double_quant: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.blocksize = in_features, out_features, blocksize
        self.compute_dtype, self.double_quant = compute_dtype, double_quant
        n = in_features * out_features
        blocks = -(-n // blocksize)
        self.register_buffer("weight", torch.zeros((n + 1) // 2, dtype=torch.uint8, device=device))
        self.register_buffer("absmax", torch.zeros(blocks, dtype=torch.uint8 if double_quant else torch.float32,
                                                   device=device))
        if double_quant:
            self.register_buffer("absmax_scale", torch.zeros(-(-blocks // 256), dtype=torch.float32, device=device))
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
        """Fill the buffers from a full (out, in) weight; they move to the weight's device (and a
        module built on "meta" gets real tensors)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"Linear4bit.quantize_: weight {tuple(weight.shape)} does not match "
                             f"(out_features, in_features) = {(self.out_features, self.in_features)}")
        self.weight, absmax = quantize_nf4(weight, self.blocksize)
        if self.double_quant:
            self.absmax, self.absmax_scale, self.absmax_offset = quantize_absmax(absmax)
        else:
            self.absmax = absmax

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
