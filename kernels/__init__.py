"""The Triton kernels, each beside its pure-torch reference with a `validate` and a `benchmark`.

    triton_support.py   the one Triton set-up both families share (a stand-in where triton is missing)
    nf4_format.py       the NF4 format's decoding in pure torch (level tables, dequantize_nf4): what they compute
    nf4_kernels.py      products with a 4-bit NF4 weight: dequantize, fused matmul, GEMV, dx (quant.py calls them)
    fused_ops.py        RMSNorm, RoPE and SwiGLU, forward and backward (model.py calls them)

Leaves of the project: they import torch and triton, nothing of the model. Checked by
tests/test_quant.py, tests/test_fused_ops.py and tests/test_triton_support.py (interpreted on the
CPU); timed by `python bench.py kernels` and `python bench.py fused`.
"""
