"""The project's one Triton set-up, shared by both kernel families (kernels/nf4_kernels.py, kernels/fused_ops.py).

What is here
    triton, tl       the real modules; where triton is not installed, one stand-in for both, enough
                     for the kernel files to define their kernels at module level (@triton.jit,
                     @triton.autotune, triton.Config, tl.constexpr annotations). Launching such a
                     kernel raises a RuntimeError that says what is missing; nothing else changes.
    AVAILABLE        triton imported
    INTERPRET        the kernels are built for Triton's interpreter (TRITON_INTERPRET=1, or no CUDA
                     device): decided once, here, at import, before any kernel is decorated
    use_triton       the backend an env var asks for: QUANT_BACKEND (4-bit matmuls), FUSED_OPS
                     (RMSNorm, RoPE, SwiGLU) = triton | torch; unset: triton for CUDA tensors
    check_launch     the errors a launch gets where it cannot run (no triton, a CPU tensor on a
                     machine whose kernels are built for the GPU)
    seconds          the time of a call, as the kernel files' benchmarks and first-use choices take it
    capturing        whether a CUDA graph is being captured (then nothing is timed)
    add              a + b, the combine function of the kernels' tl.reduce sums (see INTERPRET)

References
    Triton (github.com/triton-lang/triton): triton.jit / triton.autotune (runtime/jit.py,
    runtime/autotuner.py), the interpreter (runtime/interpreter.py, TRITON_INTERPRET=1),
    triton.knobs (the settings the interpreter reads).

How to run
    Nothing to run: the kernel files import it. Their checks: python -m pytest tests/test_quant.py
    tests/test_fused_ops.py tests/test_triton_support.py (on the CPU the kernels run interpreted).
"""
import os
import statistics
import time
from types import SimpleNamespace

import torch
from torch import Tensor

MISSING = ("triton is not installed (it is optional: pip install triton, Linux x86_64); the PyTorch "
           "paths need nothing else: QUANT_BACKEND=torch, FUSED_OPS=torch")

try:
    import triton
    import triton.language as tl
    AVAILABLE = True
except ImportError:
    AVAILABLE = False


class _Unlaunchable:
    """A kernel defined where triton is missing. It keeps its Python function (.fn: readable, and
    what a second autotuner over the same kernel wraps); launching or calling it raises."""

    def __init__(self, fn):
        self.fn = getattr(fn, "fn", fn)
        self.__name__, self.__doc__ = self.fn.__name__, self.fn.__doc__
        self.configs: list = []

    def __getitem__(self, grid):
        raise RuntimeError(f"{self.__name__}: {MISSING}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__}: {MISSING}")


class _NoTriton:
    """Stands in for both `triton` and `triton.language` where triton is missing: the names the
    kernel files use at import time, nothing more."""

    __version__ = None
    constexpr = "tl.constexpr"  # only ever read as an annotation

    @staticmethod
    def jit(fn=None, **options):
        return _Unlaunchable(fn) if fn is not None else _Unlaunchable

    @staticmethod
    def autotune(configs, key, **options):
        return _Unlaunchable

    @staticmethod
    def Config(kwargs, num_warps=4, num_stages=3, **options):
        return SimpleNamespace(kwargs=kwargs, num_warps=num_warps, num_stages=num_stages)

    @staticmethod
    def cdiv(a: int, b: int) -> int:
        return -(-a // b)

    @staticmethod
    def next_power_of_2(n: int) -> int:
        return 1 << max(0, n - 1).bit_length()


if not AVAILABLE:
    triton = tl = _NoTriton()

# Triton 3.x reads its interpreter setting when a function is decorated, i.e. when a kernel file
# is imported. Without a CUDA device the interpreter is the only way a kernel can run, so the
# kernels are built for it; the test suite can then import the kernel files in any order and still
# run them on the CPU. This file is imported before any kernel is decorated (each kernel file
# imports it first), which is why the decision is made here and only here. triton.language's own
# @jit helpers (tl.cdiv, tl.zeros, tl.sum, tl.interleave) may have been decorated for the GPU before
# this line, so the kernels use only builtins (tl.reduce with `add` below for a sum, tl.full).
INTERPRET = AVAILABLE and (os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available())
if INTERPRET:
    triton.knobs.runtime.interpret = True


def use_triton(env_var: str, x: Tensor) -> bool:
    """Whether the Triton kernels compute this op, as `env_var` (QUANT_BACKEND or FUSED_OPS) asks:
    "triton" or "torch"; unset: triton for CUDA tensors when triton imports, torch elsewhere (on
    the CPU the interpreter runs the kernels for the tests only: far too slow to compute with).
    A bad value is a ValueError; asking for triton where it is missing, a RuntimeError (never a
    silent fallback)."""
    backend = os.environ.get(env_var, "")
    if backend not in ("", "triton", "torch"):
        raise ValueError(f"{env_var}={backend!r}: expected 'triton' or 'torch' (or unset)")
    if backend == "triton" and not AVAILABLE:
        raise RuntimeError(f"{env_var}=triton, but {MISSING}")
    return backend == "triton" or (backend == "" and AVAILABLE and x.is_cuda)


def check_launch(x: Tensor, who: str) -> None:
    """Raise where a kernel launch on x's device cannot work."""
    if not AVAILABLE:
        raise RuntimeError(f"{who}: {MISSING}")
    if x.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(f"{who}: Triton on CPU tensors needs TRITON_INTERPRET=1, set before the kernel "
                           "files are imported (on a machine with a CUDA device the kernels are built for it)")


def capturing() -> bool:
    """A CUDA graph is being captured on the current stream: no timing (it would be recorded into the
    graph) and no allocation meant to outlive the graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def seconds(fn, rep_ms: int = 100) -> float:
    """Seconds per call of fn(): on a GPU the median of triton.testing.do_bench over about rep_ms
    milliseconds of calls (it flushes the L2 cache between them), elsewhere the median of 3 calls
    after a warm-up one."""
    if torch.cuda.is_available():
        import triton.testing
        return triton.testing.do_bench(fn, warmup=max(1, rep_ms // 4), rep=rep_ms, return_mode="median") * 1e-3
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@triton.jit
def add(a, b):
    """a + b: tl.reduce's combine function for a sum (see INTERPRET for why not tl.sum)."""
    return a + b
