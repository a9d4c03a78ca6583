"""Fused Triton kernels for the decoder's small ops, RMSNorm, RoPE and SwiGLU, each beside its
PyTorch reference, with the harness that checks and times them.

Why. In PyTorch each of these is a handful of kernels: RMSNorm casts to float32, normalises,
casts back and scales (4 launches forward, more backward); RoPE negates, concatenates, multiplies
twice and adds, for q and again for k (10 launches); SwiGLU is 2 forward and 3 backward. A QLoRA
step on one GPU is bound by the CPU issuing launches (BENCHMARKS.md, "QLoRA training at full
size"), and a decoding step replayed as a CUDA graph pays for every node, so here each op is one
kernel forward and one backward. The numerics are the reference's, roundings included: RMSNorm
rounds to the activations' dtype before the weight (as Hugging Face does), RoPE rounds each
product and the sum; the backward kernels round where autograd would.

    rms_norm_torch  <-> _rms_norm_fwd, _rms_norm_bwd    RMSNorm with a frozen weight (QLoRA)
    rope_torch      <-> _rope_kernel                     RoPE; backward = the rotation by -angle
    swiglu_torch    <-> _swiglu_fwd, _swiglu_bwd         silu(gate) * up, the MLP's gate
    rms_norm, rope, swiglu                               what the model calls: kernel or reference

One program per row (RMSNorm), per position (RoPE: all q and k heads) or per block of 1024
elements (SwiGLU).

FUSED_OPS=triton|torch picks the path (triton_support.use_triton: default triton for CUDA tensors
when importable, torch elsewhere); a norm weight that is being trained always takes the torch path.

References
    RMSNorm: Zhang and Sennrich 2019, arXiv:1910.07467; RoPE: Su et al. 2021, arXiv:2104.09864;
    SwiGLU: Shazeer 2020, arXiv:2002.05202; the numerics: transformers' models/qwen2/modeling_qwen2.py.

How to run
    validate(...)   every kernel against its reference, forward and backward (on the CPU in
                    Triton's interpreter): python -m pytest tests/test_fused_ops.py
    benchmark(...)  kernel vs reference at a layer's shape: python bench.py fused
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import triton_support
from kernels.triton_support import tl, triton

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


# ----------------------------------------------------------------------------- harness: validate, benchmark

# The cases tests/test_fused_ops.py runs under the interpreter. rms_norm, x's shape: 96 and 200
# are not powers of two. rope, (B, NQ, NK, T, hd, cos/sin shared by the batch): GQA head counts
# that are not powers of two; per-row positions (left padding). swiglu: 2500 elements, more than
# one block and a partial one.
VALIDATE_CASES = {"rms_norm": [(2, 5, 64), (3, 96), (1, 1, 200)],
                  "rope": [(2, 4, 2, 5, 16, True), (2, 6, 3, 3, 8, False), (1, 7, 1, 1, 32, False)],
                  "swiglu": [(2, 3, 40), (1, 2500)]}
# (output, gradients): |kernel - reference| <= tol + tol |reference|. The same roundings in the
# same places; rsqrt, exp and float32 sums may differ in their last bit, which can move a 16-bit
# rounding by one step. RoPE: bit for bit.
TOLERANCE = {"rms_norm": {torch.float32: (1e-6, 1e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)},
             "rope": {torch.float32: (0, 0), torch.float16: (0, 0), torch.bfloat16: (0, 0)},
             "swiglu": {torch.float32: (1e-6, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}}


def _case(op: str, case: tuple, dtype: torch.dtype, device) -> tuple:
    """(reference, kernel, inputs, which inputs get gradients, output gradients) for one case."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    if op == "rms_norm":
        x, w = randn(*case, scale=3.0), (1 + 0.1 * torch.randn(case[-1], generator=g)).to(device, dtype)  # frozen
        return ((lambda x, w: rms_norm_torch(x, w, 1e-6)), (lambda x, w: _RMSNorm.apply(x, w, 1e-6)),
                [x, w], [0], [randn(*case)])
    if op == "rope":
        B, NQ, NK, T, hd, shared = case
        positions = torch.arange(T)[None] if shared else torch.randint(0, 50, (B, T), generator=g)
        angles = positions[..., None].double() / 1e4 ** (torch.arange(0, hd, 2).double() / hd)   # (B or 1, T, hd/2)
        cos, sin = (f(torch.cat([angles, angles], -1))[:, None].to(device, dtype) for f in (torch.cos, torch.sin))
        q, k = randn(B, T, NQ, hd).transpose(1, 2), randn(B, T, NK, hd).transpose(1, 2)  # as Attention makes them
        return ((lambda q, k, c, s: (rope_torch(q, c, s), rope_torch(k, c, s))), _RoPE.apply, [q, k, cos, sin],
                [0, 1], [randn(*q.shape), randn(*k.shape)])
    if op == "swiglu":
        return swiglu_torch, _SwiGLU.apply, [randn(*case, scale=3.0), randn(*case)], [0, 1], [randn(*case)]
    raise ValueError(f"fused_ops.validate: unknown op {op!r}")


def validate(cases: dict | None = None, dtypes=(torch.float16, torch.float32), device=None) -> list[dict]:
    """Every kernel against its reference, forward and backward, on `cases` (VALIDATE_CASES' form;
    default those) in each dtype, on `device` (default CUDA if present, else the CPU: Triton's
    interpreter). Returns one row per output and gradient (op, case, dtype, what, err = max |got -
    want|, ok); raises an AssertionError listing every row outside TOLERANCE."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for dtype in dtypes:
        for op, op_cases in (VALIDATE_CASES if cases is None else cases).items():
            for case in op_cases:
                reference, kernel, inputs, grad_of, dys = _case(op, case, dtype, device)
                results = []
                for fn in (reference, kernel):
                    args = [t.detach().requires_grad_(i in grad_of) for i, t in enumerate(inputs)]
                    out = fn(*args)
                    out = out if isinstance(out, tuple) else (out,)
                    results.append(out + torch.autograd.grad(out, [args[i] for i in grad_of], dys))
                names = [f"out{i}" for i in range(len(results[0]) - len(grad_of))] + [f"d{i}" for i in grad_of]
                for name, want, got in zip(names, *results):
                    tol = TOLERANCE[op][dtype][name.startswith("d")]
                    err = (got.float() - want.float()).abs()
                    ok = got.shape == want.shape and bool((err <= tol + tol * want.float().abs()).all())
                    rows.append({"op": op, "case": case, "dtype": dtype, "what": name, "err": err.max().item(),
                                 "ok": ok})
    failed = [r for r in rows if not r["ok"]]
    if failed:
        raise AssertionError("fused_ops.validate: " + "; ".join(
            f"{r['op']} {r['case']} {r['dtype']} {r['what']}: err {r['err']:.1e}" for r in failed))
    return rows


def _forward_backward(fn, args: list, grad_of: list, dys: list) -> None:
    out = fn(*args)
    torch.autograd.grad(out if isinstance(out, tuple) else (out,), [args[i] for i in grad_of], dys)


def benchmark(tokens: int = 4096, hidden: int = 3584, intermediate: int = 18944, heads: tuple[int, int] = (28, 4),
              head_dim: int = 128, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Time each op, reference and kernel, forward and forward + backward, at a layer's shape
    (default Qwen2.5-7B's, `tokens` positions as one row of a batch), and print a table (`python
    bench.py fused`). GB/s: the bytes a pass must move at least (inputs read, outputs written;
    forward + backward counted as three times the forward's), over the time; speedup: the
    reference's forward + backward time over this row's. On the CPU only the references run (the interpreter is
    far too slow to time): that tests the script. Times: triton_support.seconds."""
    cuda = torch.cuda.is_available()
    device, (nq, nk) = ("cuda" if cuda else "cpu"), heads
    cases = {"rms_norm": (tokens, hidden), "rope": (1, nq, nk, tokens, head_dim, True),
             "swiglu": (tokens, intermediate)}
    print(f"{'op':<10}{'shape':>26}{'path':>8}{'fwd ms':>10}{'GB/s':>8}{'fwd+bwd ms':>12}{'GB/s':>8}{'speedup':>9}")
    rows = []
    for op, case in cases.items():
        reference, kernel, inputs, grad_of, dys = _case(op, case, dtype, device)
        nbytes = sum(t.numel() * t.element_size() for t in inputs[:2] + dys)  # x (q, k; gate, up) read, y written
        first = None
        for path, fn in [("torch", reference)] + ([("triton", kernel)] if cuda else []):
            args = [t.detach().requires_grad_(i in grad_of) for i, t in enumerate(inputs)]
            fwd = triton_support.seconds(partial(fn, *args))
            fwd_bwd = triton_support.seconds(partial(_forward_backward, fn, args, grad_of, dys))
            first = first or fwd_bwd
            shape = "x".join(map(str, case[:5] if op == "rope" else case))
            print(f"{op:<10}{shape:>26}{path:>8}{fwd * 1e3:10.3f}{nbytes / fwd / 1e9:8.1f}{fwd_bwd * 1e3:12.3f}"
                  f"{3 * nbytes / fwd_bwd / 1e9:8.1f}{first / fwd_bwd:8.2f}x")
            rows.append({"op": op, "path": path, "fwd_s": fwd, "fwd_bwd_s": fwd_bwd})
    return rows
