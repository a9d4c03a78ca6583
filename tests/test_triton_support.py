"""kernels/triton_support.py: the one Triton set-up. Where triton is not installed, the project still
imports and runs its PyTorch paths, and a kernel launch or QUANT_BACKEND / FUSED_OPS=triton says
what is missing; bad values of the switches are refused."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import triton_support

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed
import torch, torch.nn.functional as F
import quant, model
from kernels import triton_support, nf4_kernels, fused_ops
assert not triton_support.AVAILABLE and not triton_support.INTERPRET
assert nf4_kernels._nf4_matmul_decode.fn is nf4_kernels._nf4_matmul_kernel.fn  # kernels defined at module level
lin, x = quant.Linear4bit.from_linear(torch.nn.Linear(64, 8)), torch.randn(3, 64)
torch.testing.assert_close(lin(x), F.linear(x, lin.dequantize(), lin.bias))  # the torch path
torch.testing.assert_close(fused_ops.rms_norm(x, torch.ones(64), 1e-6),
                           fused_ops.rms_norm_torch(x, torch.ones(64), 1e-6))
errors = []
for env, call in [("QUANT_BACKEND", lambda: lin(x)), ("FUSED_OPS", lambda: fused_ops.swiglu(x, x)),
                  (None, lambda: nf4_kernels._nf4_dequantize_kernel[(1,)]()),
                  (None, lambda: nf4_kernels.dequantize_nf4_triton(lin.weight, lin.absmax, (8, 64)))]:
    if env:
        import os
        os.environ[env] = "triton"
    try:
        call()
    except RuntimeError as e:
        errors.append(str(e))
    if env:
        del os.environ[env]
assert len(errors) == 4 and all("triton is not installed" in e for e in errors), errors
print("ok")
"""


def test_without_triton_the_project_imports_and_runs_the_torch_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("QUANT_BACKEND", "FUSED_OPS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=False, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("env", ["QUANT_BACKEND", "FUSED_OPS"])
def test_backend_switches(env, monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv(env, raising=False)
    assert not triton_support.use_triton(env, cpu)  # unset: triton only for CUDA tensors
    monkeypatch.setenv(env, "torch")
    assert not triton_support.use_triton(env, cpu)
    monkeypatch.setenv(env, "cuda")
    with pytest.raises(ValueError, match=f"{env}='cuda'"):
        triton_support.use_triton(env, cpu)
    if triton_support.AVAILABLE:
        monkeypatch.setenv(env, "triton")
        assert triton_support.use_triton(env, cpu)


def test_interpreter_without_a_cuda_device():
    """The kernels are built for the interpreter exactly when no CUDA device is there (or asked)."""
    if triton_support.AVAILABLE:
        want = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
        assert triton_support.INTERPRET == want
