"""kernels/fused_ops.py: the fused RMSNorm, RoPE and SwiGLU kernels (Triton's interpreter on the CPU)
against their references, forward and backward, bit for bit where the rounding allows; and the
model's logits and LoRA gradients the same through either path."""
import pytest
import torch

from kernels import fused_ops
import loader
import lora
from model import Qwen2Config, rope_cos_sin
from kernels import triton_support

needs_triton = pytest.mark.skipif(not triton_support.AVAILABLE, reason="triton not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setenv("FUSED_OPS", "triton")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", fused_ops.VALIDATE_CASES["rms_norm"])  # 96, 200: not powers of two
def test_rms_norm_matches_reference(shape, dtype, fused):
    """fused_ops.validate: forward and dx against rms_norm_torch (TOLERANCE: float32 to 1e-6 / 1e-5;
    float16: the same roundings in the same places, but rsqrt and the sums may differ in the last
    float32 bit, which can move a rounding by one float16 step); and rms_norm dispatches to it."""
    x = torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()
    w = torch.ones(shape[-1], device=DEVICE).to(dtype)  # frozen, as in QLoRA
    assert fused_ops.rms_norm(x, w, 1e-6).grad_fn.name().endswith("_RMSNormBackward")
    rows = fused_ops.validate({"rms_norm": [shape]}, [dtype], DEVICE)
    assert [r["what"] for r in rows] == ["out0", "d0"] and all(r["ok"] for r in rows)


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
@pytest.mark.parametrize("case", fused_ops.VALIDATE_CASES["rope"], ids=str)
def test_rope_matches_reference(case, dtype, fused):
    """q and k as Attention makes them (transposed views of (B, T, n, hd)); cos/sin shared by the
    batch or per row (left-padded positions); GQA head counts that are not powers of two. The same
    roundings: bit for bit (TOLERANCE 0), outputs and gradients of both, same shapes."""
    B, NQ, NK, T, hd, shared = case
    positions = torch.arange(T, device=DEVICE)[None] if shared else torch.randint(0, 50, (B, T), device=DEVICE)
    cos, sin = rope_cos_sin(positions, hd, 1e4, dtype)  # the model's own tables go through the fused path
    q = torch.randn(B, T, NQ, hd, device=DEVICE).to(dtype).transpose(1, 2)
    k = torch.randn(B, T, NK, hd, device=DEVICE).to(dtype).transpose(1, 2).requires_grad_()
    assert all(t.grad_fn.name().endswith("_RoPEBackward") for t in fused_ops.rope(q, k, cos, sin))
    rows = fused_ops.validate({"rope": [case]}, [dtype], DEVICE)
    assert [r["what"] for r in rows] == ["out0", "out1", "d0", "d1"] and all(r["ok"] and r["err"] == 0 for r in rows)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", fused_ops.VALIDATE_CASES["swiglu"])  # 2500: more than one block, a partial one
def test_swiglu_matches_reference(shape, dtype, fused):
    """The same roundings in the same places; exp may differ in float32's last bit, which can move
    a float16 rounding by one step (TOLERANCE: 1e-6 float32, 1e-3 float16)."""
    gate = torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()
    up = torch.randn(shape, device=DEVICE).to(dtype)
    assert fused_ops.swiglu(gate, up).grad_fn.name().endswith("_SwiGLUBackward")
    rows = fused_ops.validate({"swiglu": [shape]}, [dtype], DEVICE)
    assert [r["what"] for r in rows] == ["out0", "d0", "d1"] and all(r["ok"] for r in rows)


@needs_triton
def test_validate_catches_a_wrong_kernel(monkeypatch):
    """The harness fails loudly: a kernel 1% off is named in the error."""
    monkeypatch.setattr(fused_ops._SwiGLU, "apply", lambda g, u: fused_ops.swiglu_torch(g, u) * 1.01)
    with pytest.raises(AssertionError, match=r"swiglu \(2, 3, 40\) torch.float16 out0"):
        fused_ops.validate({"swiglu": [(2, 3, 40)]}, [torch.float16], DEVICE)


def test_bench_fused_runs(capsys):
    """`python bench.py fused --quick` prints its table (on the CPU: the references only)."""
    import bench

    threads = torch.get_num_threads()
    try:
        bench.bench_fused(["--quick"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert all(op in out for op in ("rms_norm", "rope", "swiglu")) and "fwd+bwd ms" in out


@needs_triton
def test_model_logits_and_lora_grads_are_the_same_fused(monkeypatch):
    """A tiny NF4 + LoRA Qwen2 with gradient checkpointing: logits and adapter gradients through
    the fused kernels equal the reference path's (float32)."""
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = loader.random_model(config, quantize="nf4", std=0.1).to(DEVICE)
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
