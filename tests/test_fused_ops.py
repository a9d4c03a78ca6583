"""fused_ops.py: the fused RMSNorm, RoPE and SwiGLU kernels (Triton's interpreter on the CPU)
against their references, forward and backward, bit for bit where the rounding allows; and the
model's logits and LoRA gradients the same through either path."""
import pytest
import torch

import fused_ops
import lora
import model as M
import triton_support

needs_triton = pytest.mark.skipif(not triton_support.AVAILABLE, reason="triton not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setenv("FUSED_OPS", "triton")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 5, 64), (3, 96), (1, 1, 200)])  # 96, 200: not powers of two
def test_rms_norm_matches_reference(shape, dtype, fused):
    torch.manual_seed(0)
    x = (3 * torch.randn(shape, device=DEVICE)).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], device=DEVICE)).to(dtype)  # frozen, as in QLoRA
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    want = fused_ops.rms_norm_torch(x, w, 1e-6)
    (want_dx,) = torch.autograd.grad(want, x, dy)
    got = fused_ops.rms_norm(x, w, 1e-6)
    (got_dx,) = torch.autograd.grad(got, x, dy)
    assert got.grad_fn.name().endswith("_RMSNormBackward")
    # float16: the same roundings in the same places; rsqrt and the sums may differ in the last
    # float32 bit, which can move a rounding by one float16 step
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got, want, **(tol if dtype != torch.float32 else dict(rtol=1e-6, atol=1e-6)))
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5 if dtype == torch.float32 else 2e-3,
                               atol=1e-5 if dtype == torch.float32 else 2e-3)


@needs_triton
def test_rms_norm_fused_unless_its_weight_is_trained(fused, monkeypatch):
    calls = []
    monkeypatch.setattr(fused_ops._RMSNorm, "apply", lambda *a: calls.append(1) or fused_ops.rms_norm_torch(*a))
    x, w = torch.randn(2, 8, device=DEVICE), torch.ones(8, device=DEVICE, requires_grad=True)
    fused_ops.rms_norm(x, w, 1e-6)
    assert calls == []  # w would get no gradient from the kernel
    with torch.no_grad():  # inference: a weight that requires grad gets none anyway
        fused_ops.rms_norm(x, w, 1e-6)
    fused_ops.rms_norm(x, w.detach(), 1e-6)
    assert calls == [1, 1]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,NQ,NK,T,hd,shared", [(2, 4, 2, 5, 16, True), (2, 6, 3, 3, 8, False), (1, 7, 1, 1, 32, False)])
def test_rope_matches_reference(B, NQ, NK, T, hd, shared, dtype, fused):
    """q and k as Attention makes them (transposed views of (B, T, n, hd)); cos/sin shared by the
    batch or per row (left-padded positions); GQA head counts that are not powers of two."""
    torch.manual_seed(1)
    positions = torch.arange(T, device=DEVICE)[None] if shared else torch.randint(0, 50, (B, T), device=DEVICE)
    cos, sin = M.rope_cos_sin(positions, hd, 1e4, dtype)
    q = torch.randn(B, T, NQ, hd, device=DEVICE).to(dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(B, T, NK, hd, device=DEVICE).to(dtype).transpose(1, 2).requires_grad_()
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    want = fused_ops.rope_torch(q, cos, sin), fused_ops.rope_torch(k, cos, sin)
    want_grads = torch.autograd.grad(want, (q, k), (dq, dk))
    got = fused_ops.rope(q, k, cos, sin)
    got_grads = torch.autograd.grad(got, (q, k), (dq, dk))
    for a, b in zip(got + got_grads, want + want_grads):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same roundings: bit for bit


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 40), (1, 2500)])  # 2500: more than one block, a partial one
def test_swiglu_matches_reference(shape, dtype, fused):
    torch.manual_seed(2)
    gate = (3 * torch.randn(shape, device=DEVICE)).to(dtype).requires_grad_()
    up = torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    want = fused_ops.swiglu_torch(gate, up)
    want_grads = torch.autograd.grad(want, (gate, up), dy)
    got = fused_ops.swiglu(gate, up)
    got_grads = torch.autograd.grad(got, (gate, up), dy)
    assert got.grad_fn.name().endswith("_SwiGLUBackward")
    # the same roundings in the same places; exp may differ in float32's last bit, which can
    # move a float16 rounding by one step
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    for a, b in zip((got, *got_grads), (want, *want_grads)):
        torch.testing.assert_close(a, b, **tol)


@needs_triton
def test_model_logits_and_lora_grads_are_the_same_fused(monkeypatch):
    """A tiny NF4 + LoRA Qwen2 with gradient checkpointing: logits and adapter gradients through
    the fused kernels equal the reference path's (float32)."""
    config = M.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = M.random_model(config, quantize="nf4", std=0.1).to(DEVICE)
    lora.apply_lora(model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "k_proj", "gate_proj", "down_proj"])
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    model.train().gradient_checkpointing = True
    ids, mask = torch.randint(0, 90, (2, 9), device=DEVICE), torch.ones(2, 9, dtype=torch.long, device=DEVICE)
    mask[1, :3] = 0  # left padding: per-row positions

    def run(backend):
        monkeypatch.setenv("FUSED_OPS", backend)
        model.zero_grad()
        logits = model(ids, attention_mask=mask)
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (ref, ref_grads), (got, got_grads) = run("torch"), run("triton")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
