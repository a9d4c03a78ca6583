"""Fused Triton kernels for the decoder's small ops, RMSNorm and RoPE, each beside its reference.

Why. In PyTorch each of these is a handful of kernels: RMSNorm casts to float32, normalises,
casts back and scales (4 launches forward, more backward); RoPE negates, concatenates, multiplies
twice and adds, for q and again for k (10 launches); SwiGLU is 2 forward and 3 backward. A QLoRA step on one GPU is bound by the CPU
issuing launches (BENCHMARKS.md), and a decoding step replayed as a CUDA graph pays for every
node, so here each op is one kernel forward and one backward. The numerics are the reference's,
roundings included: RMSNorm rounds to the activations' dtype before the weight (as Hugging Face
does), RoPE rounds each product and the sum; the backward kernels round where autograd would.

    rms_norm_torch  <-> _rms_norm_fwd, _rms_norm_bwd    RMSNorm with a frozen weight (QLoRA)
    rope_torch      <-> _rope_kernel                     RoPE; backward = the rotation by -angle
    swiglu_torch    <-> _swiglu_fwd, _swiglu_bwd         silu(gate) * up, the MLP's gate

FUSED_OPS=triton|torch picks the path (default: triton for CUDA tensors when importable, torch
elsewhere); a norm weight that is being trained always takes the torch path. Tests run the kernels on the
CPU under Triton's interpreter against the references: python -m pytest tests/test_fused_ops.py
"""
import torch
import torch.nn.functional as F
from torch import Tensor

import triton_support
from triton_support import tl, triton

# ----------------------------------------------------------------------------- references


def rms_norm_torch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """weight * x / sqrt(mean(x^2) + eps), normalised in float32 and cast back *before* the weight."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rope_torch(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) by their angle: x*cos + rotate_half(x)*sin. x: (B, n, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def swiglu_torch(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's gate: silu(gate) * up (silu(g) = g * sigmoid(g))."""
    return F.silu(gate) * up


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _round(v, DTYPE: tl.constexpr):
    """v (float32) rounded to the activations' dtype, as a separate PyTorch op would store it."""
    return v.to(DTYPE).to(tl.float32)


@triton.jit
def _rms_norm_fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, H, eps, BLOCK: tl.constexpr):
    """One row: y = w * round(x * rstd), rstd = 1 / sqrt(mean(x^2) + eps) kept for backward."""
    row, cols = tl.program_id(0), tl.arange(0, BLOCK)
    ok = cols < H
    x = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.reduce(x * x, 0, triton_support.add) / H + eps)
    dtype = y_ptr.dtype.element_ty
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * H + cols, (w * _round(x * rstd, dtype)).to(dtype), mask=ok)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_norm_bwd(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, H, BLOCK: tl.constexpr):
    """One row: g = round(dy * w) (the product's gradient, in the activations' dtype), n = x * rstd,
    dx = rstd * (g - n * mean(g * n))."""
    row, cols = tl.program_id(0), tl.arange(0, BLOCK)
    ok = cols < H
    dtype = dx_ptr.dtype.element_ty
    dy = tl.load(dy_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row)
    g, n = _round(dy * w, dtype), x * rstd
    dx = rstd * (g - n * (tl.reduce(g * n, 0, triton_support.add) / H))
    tl.store(dx_ptr + row * H + cols, dx.to(dtype), mask=ok)


@triton.jit
def _rope_heads(x_ptr, o_ptr, c1, c2, s1, s2, b, t, T, sxb, sxh, sxt, NH: tl.constexpr, NH_P2: tl.constexpr,
                HALF: tl.constexpr):
    """Rotate the NH heads of x at (b, t) into o, laid out (B, T, NH, hd) contiguous."""
    h, d = tl.arange(0, NH_P2)[:, None], tl.arange(0, HALF)[None, :]
    ok = h < NH
    src = x_ptr + b * sxb + h * sxh + t * sxt + d
    x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)                          # (NH_P2, HALF)
    x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
    dtype = o_ptr.dtype.element_ty
    dst = o_ptr + ((b * T + t) * NH + h) * (2 * HALF) + d
    tl.store(dst, (_round(x1 * c1, dtype) + _round(-x2 * s1, dtype)).to(dtype), mask=ok)
    tl.store(dst + HALF, (_round(x2 * c2, dtype) + _round(x1 * s2, dtype)).to(dtype), mask=ok)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, T, sqb, sqh, sqt, skb, skh, skt, scb,
                 SIGN: tl.constexpr, NQ: tl.constexpr, NQ_P2: tl.constexpr, NK: tl.constexpr,
                 NK_P2: tl.constexpr, HALF: tl.constexpr):
    """Program (b, t): every q and k head at that position, one cos/sin row (stride scb over the
    batch: 0 when shared). SIGN -1 rotates back: the backward, whose products autograd rounds
    the same way (sin's two halves are equal, so rot^T(g * sin) = -rot(g) * sin)."""
    pid = tl.program_id(0)
    b, t = pid // T, pid % T
    d = tl.arange(0, HALF)[None, :]
    row = cos_ptr + b * scb + t * (2 * HALF) + d
    c1, c2 = tl.load(row).to(tl.float32), tl.load(row + HALF).to(tl.float32)
    srow = sin_ptr + b * scb + t * (2 * HALF) + d
    s1, s2 = SIGN * tl.load(srow).to(tl.float32), SIGN * tl.load(srow + HALF).to(tl.float32)
    _rope_heads(q_ptr, qo_ptr, c1, c2, s1, s2, b, t, T, sqb, sqh, sqt, NQ, NQ_P2, HALF)
    _rope_heads(k_ptr, ko_ptr, c1, c2, s1, s2, b, t, T, skb, skh, skt, NK, NK_P2, HALF)


@triton.jit
def _swiglu_fwd(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """y = round(round(silu(g)) * u): silu's output is stored in the activations' dtype first."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    g = tl.load(g_ptr + i, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + i, mask=ok, other=0.0).to(tl.float32)
    dtype = y_ptr.dtype.element_ty
    tl.store(y_ptr + i, (_round(g / (1.0 + tl.exp(-g)), dtype) * u).to(dtype), mask=ok)


@triton.jit
def _swiglu_bwd(dy_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    """du = round(dy * s), ds = round(dy * u), dg = ds * sigmoid(g) * (1 + g * (1 - sigmoid(g))),
    s = round(silu(g)): the products' gradients in the activations' dtype, as autograd's."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    dtype = dg_ptr.dtype.element_ty
    dy = tl.load(dy_ptr + i, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + i, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + i, mask=ok, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    tl.store(du_ptr + i, (dy * _round(g * sig, dtype)).to(dtype), mask=ok)
    ds = _round(dy * u, dtype)
    tl.store(dg_ptr + i, (ds * sig * (1.0 + g * (1.0 - sig))).to(dtype), mask=ok)


def _warps(block: int) -> int:
    return max(1, min(16, block // 512))


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        H = x.shape[-1]
        x2 = x.reshape(-1, H).contiguous()                                               # (rows, H)
        y, rstd = torch.empty_like(x2), torch.empty(x2.shape[0], device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(H)
        _rms_norm_fwd[(x2.shape[0],)](x2, weight, y, rstd, H, eps, BLOCK=block, num_warps=_warps(block))
        ctx.save_for_backward(x2, weight, rstd)  # x in its own dtype: half the reference's float32 copy
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        H = x2.shape[1]
        dx = torch.empty_like(x2)
        block = triton.next_power_of_2(H)
        _rms_norm_bwd[(x2.shape[0],)](dy.reshape(-1, H).contiguous(), x2, weight, rstd, dx, H, BLOCK=block,
                                      num_warps=_warps(block))
        return dx.view(dy.shape), None, None


def _rope_launch(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, sign: int) -> tuple[Tensor, Tensor]:
    """q (B, NQ, T, hd), k (B, NK, T, hd), any strides with the last dim contiguous; cos/sin
    (B or 1, 1, T, hd). Returns the rotated q, k as (B, n, T, hd) views of (B, T, n, hd) memory."""
    (B, NQ, T, hd), NK = q.shape, k.shape[1]
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    cos, sin = cos.contiguous(), sin.contiguous()
    qo = torch.empty(B, T, NQ, hd, device=q.device, dtype=q.dtype)
    ko = torch.empty(B, T, NK, hd, device=k.device, dtype=k.dtype)
    _rope_kernel[(B * T,)](q, k, cos, sin, qo, ko, T, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
                           k.stride(1), k.stride(2), T * hd if cos.shape[0] > 1 else 0, SIGN=sign, NQ=NQ,
                           NQ_P2=triton.next_power_of_2(NQ), NK=NK, NK_P2=triton.next_power_of_2(NK), HALF=hd // 2)
    return qo.transpose(1, 2), ko.transpose(1, 2)


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope_launch(q, k, cos, sin, 1)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = _rope_launch(dq, dk, cos, sin, -1)
        return dq, dk, None, None


_SWIGLU_BLOCK = 1024


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        y = torch.empty_like(gate)
        _swiglu_fwd[(triton.cdiv(gate.numel(), _SWIGLU_BLOCK),)](gate, up, y, gate.numel(), BLOCK=_SWIGLU_BLOCK)
        ctx.save_for_backward(gate, up)  # silu(gate) is recomputed in backward, not kept
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dg, du = torch.empty_like(gate), torch.empty_like(up)
        _swiglu_bwd[(triton.cdiv(gate.numel(), _SWIGLU_BLOCK),)](dy.contiguous(), gate, up, dg, du, gate.numel(),
                                                                 BLOCK=_SWIGLU_BLOCK)
        return dg, du


# ----------------------------------------------------------------------------- dispatch


def _fused(x: Tensor) -> bool:
    """FUSED_OPS=triton|torch; unset: triton for CUDA tensors when importable (triton_support)."""
    return triton_support.use_triton("FUSED_OPS", x)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm: the fused kernel when no gradient for the weight is wanted (frozen, or no_grad
    inference) and it has the activations' dtype, else the reference."""
    frozen = not (weight.requires_grad and torch.is_grad_enabled())
    if _fused(x) and frozen and weight.dtype == x.dtype:
        return _RMSNorm.apply(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """RoPE on q (B, nh, T, hd) and k (B, n_kv, T, hd) at once; cos/sin (B or 1, 1, T, hd)."""
    if _fused(q) and q.dtype == k.dtype == cos.dtype == sin.dtype:
        return _RoPE.apply(q, k, cos, sin)
    return rope_torch(q, cos, sin), rope_torch(k, cos, sin)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, one kernel each way when fused."""
    if _fused(gate) and gate.dtype == up.dtype and gate.shape == up.shape:
        return _SwiGLU.apply(gate, up)
    return swiglu_torch(gate, up)
