"""quant.py against bitsandbytes (format), against the pure-torch reference (Triton kernels, run by
Triton's interpreter when there is no GPU) and against transformers (a whole quantized model).

On a CUDA machine the same kernel tests run compiled on the GPU, in bfloat16 as well."""

import pytest
import torch
import torch.nn.functional as F
from conftest import bnb_dequantize

from kernels import nf4_format, nf4_kernels
import quant
from kernels import triton_support

bnb_f = pytest.importorskip("bitsandbytes.functional")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter has no bfloat16 arithmetic; a GPU runs all three.
KERNEL_DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
needs_triton = pytest.mark.skipif(not triton_support.AVAILABLE, reason="triton is not installed")


# ----------------------------------------------------------------------------- format vs bitsandbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 128), (10, 70), (7, 9), (1, 1), (3, 5, 33)])
def test_bytes_and_absmax_identical_to_bitsandbytes(shape, dtype):
    # (7, 9): 63 weights: one partial block and an odd count (half-filled last byte).
    torch.manual_seed(0)
    w = (torch.randn(shape) * 0.05).to(dtype)
    packed, absmax = quant.quantize_nf4(w, blocksize=64)
    ref_packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert packed.dtype == torch.uint8 and packed.shape == ((w.numel() + 1) // 2,)
    assert torch.equal(packed, ref_packed.view(-1))
    assert torch.equal(absmax, state.absmax)
    out = quant.dequantize_nf4(packed, absmax, w.shape, 64, dtype)
    ref = bnb_dequantize(ref_packed, state)
    assert out.dtype == ref.dtype == dtype and torch.equal(out, ref)


def test_ties_zeros_and_other_blocksizes_identical_to_bitsandbytes():
    # Values exactly on the midpoints between levels (each block's absmax is 1, so w / absmax is the
    # midpoint itself), exact levels, an all-zero block, and a partial last block.
    levels = quant.NF4_LEVELS
    mids = (levels[:-1] + levels[1:]) / 2
    block = torch.cat([torch.ones(1), mids, levels, -mids, torch.zeros(64 - 1 - 15 - 16 - 15)])
    w = torch.cat([block, torch.zeros(64), block[:40] * 3.0])
    for blocksize in (64, 128, 32):
        packed, absmax = quant.quantize_nf4(w, blocksize)
        ref_packed, state = bnb_f.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        assert torch.equal(packed, ref_packed.view(-1)) and torch.equal(absmax, state.absmax)


def test_dequantize_error_within_half_the_widest_nf4_gap():
    # Hand-computed bound: a weight lands on the nearest level, so |w - w_hat| <= absmax * (widest
    # gap / 2) = absmax * (1 - 0.6961928) / 2 (between the two most negative levels).
    torch.manual_seed(0)
    w = torch.randn(96, 128)
    packed, absmax = quant.quantize_nf4(w)
    err = (quant.dequantize_nf4(packed, absmax, w.shape) - w).abs().view(-1, 64) / absmax[:, None]
    assert err.max() <= (1 - 0.6961928009986877) / 2 + 1e-6


def test_double_quant_matches_bitsandbytes_and_error_bound():
    torch.manual_seed(0)
    w = torch.randn(300, 1000) * 0.02
    _, absmax = quant.quantize_nf4(w)                                   # 4688 blocks -> 19 groups of 256
    codes, scale, offset = quant.quantize_absmax(absmax)
    _, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(quant.dynamic_map_8bit(), bnb_f.create_dynamic_map())
    assert torch.equal(scale, state.state2.absmax) and torch.equal(offset, state.offset)
    # bnb's C kernel on the CPU picks a non-nearest level for a few values; ours is never farther.
    levels = quant.dynamic_map_8bit()
    shifted = absmax - offset
    normed = shifted / scale.repeat_interleave(256)[: absmax.numel()]
    differ = codes != state.absmax
    assert differ.float().mean() < 0.01
    ours = (normed[differ] - levels[codes[differ].long()]).abs()
    theirs = (normed[differ] - levels[state.absmax[differ].long()]).abs()
    assert (ours <= theirs + 1e-7).all()
    # Round trip: nearest of 256 levels whose widest gap is 0.9789-0.9648 = 0.0140625 (linspace(0.1, 1, 65)
    # step) -> |error| <= scale * 0.0140625 / 2 per group.
    back = quant.dequantize_absmax(codes, scale, offset)
    bound = scale.repeat_interleave(256)[: absmax.numel()] * 0.0140625 / 2
    assert ((back - absmax).abs() <= bound * (1 + 1e-4) + 1e-9).all()


# ----------------------------------------------------------------------------- Triton kernels vs torch reference


def _weights(n, k, device, seed=0):
    torch.manual_seed(seed)
    packed, absmax = quant.quantize_nf4(torch.randn(n, k) / k**0.5)
    return packed.to(device), absmax.to(device)


@pytest.fixture(params=[False, True], ids=["direct", "swap"])
def one_config(request, monkeypatch):
    """Each kernel runs one config (its first), with SWAP as given: both code paths get tested,
    where the GPU autotuner would pick one of them per shape."""
    for tuner in (nf4_kernels._nf4_matmul_kernel, nf4_kernels._nf4_matmul_decode, nf4_kernels._nf4_matmul_dx_kernel):
        c = tuner.configs[0]
        config = triton_support.triton.Config({**c.kwargs, "SWAP": request.param}, num_warps=c.num_warps,
                                              num_stages=c.num_stages)
        monkeypatch.setattr(tuner, "configs", [config])
        monkeypatch.setattr(tuner, "cache", {})


@needs_triton
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("M,N,K", nf4_kernels.VALIDATE_CASES["matmul"])
def test_triton_forward_and_dx_match_reference(M, N, K, dtype, one_config):
    """nf4_kernels.validate on one case (VALIDATE_CASES says what each case covers): the forward
    with and without bias (M = 1: both GEMV plans) and dx against the torch references on the
    same weights, within the tolerance of one rounding to the output's dtype (TOLERANCE)."""
    rows = nf4_kernels.validate({"matmul": [(M, N, K)]}, [dtype], DEVICE)
    kernels = {r["kernel"] for r in rows}
    assert "matmul dx" in kernels and len(rows) == (5 if M == 1 else 3) and all(r["ok"] for r in rows)
    assert kernels >= ({"gemv split", "gemv direct + bias"} if M == 1 else {"matmul" if M > 16 else "matmul decode"})


@needs_triton
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_validate_dequantize_and_catches_a_wrong_kernel(dtype, monkeypatch):
    rows = nf4_kernels.validate({"dequantize": nf4_kernels.VALIDATE_CASES["dequantize"]}, [dtype], DEVICE)
    assert len(rows) == 4 and all(r["ok"] and r["err"] == 0 for r in rows)
    right = nf4_kernels.nf4_matmul_dx_triton
    monkeypatch.setattr(nf4_kernels, "nf4_matmul_dx_triton",
                        lambda *a: right(*a) * (1 + 5 * nf4_kernels.TOLERANCE[dtype]))
    with pytest.raises(AssertionError, match=r"matmul dx \(33, 37, 128\)"):
        nf4_kernels.validate({"matmul": [(33, 37, 128)]}, [dtype], DEVICE)


@needs_triton
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize", [((37, 128), 64), ((5, 70), 64), ((7, 9), 64), ((300, 1000), 64),
                                             ((1, 1), 64), ((33, 96), 32), ((9, 250), 128)])
def test_dequantize_kernel_bit_for_bit(shape, blocksize, double_quant, dtype):
    """The dequantization kernel equals quant.dequantize_nf4 bit for bit. 4736 weights: five tiles of
    1024, the last partial; (5, 70): rows that are not whole quantization blocks (blocks run over
    the flattened weight) in one partial tile; (7, 9): an odd count (the last byte half used);
    (300, 1000): 293 tiles and 4688 blocks, whose 8-bit absmax codes end in a partial group of 256."""
    torch.manual_seed(0)
    packed, absmax = quant.quantize_nf4(torch.randn(shape) * 0.05, blocksize)
    scale = offset = None
    if double_quant:
        codes, scale, offset = quant.quantize_absmax(absmax)
        ref = quant.dequantize_nf4(packed, quant.dequantize_absmax(codes, scale, offset), shape, blocksize, dtype)
        absmax, scale, offset = codes.to(DEVICE), scale.to(DEVICE), offset.to(DEVICE)
    else:
        ref = quant.dequantize_nf4(packed, absmax, shape, blocksize, dtype)
    out = nf4_kernels.dequantize_nf4_triton(packed.to(DEVICE), absmax.to(DEVICE), shape, blocksize, dtype,
                                            scale, offset)
    assert out.dtype == dtype and out.shape == shape and torch.equal(out.cpu(), ref)
    buffer = torch.full((out.numel() + 7,), float("nan"), dtype=dtype, device=DEVICE)  # a larger scratch buffer
    into = nf4_kernels.dequantize_nf4_triton(packed.to(DEVICE), absmax.to(DEVICE), shape, blocksize, dtype, scale,
                                             offset, out=buffer)
    assert into.data_ptr() == buffer.data_ptr() and torch.equal(into.cpu(), ref) and buffer[-7:].isnan().all()


@needs_triton
def test_triton_needs_whole_blocks_per_row(monkeypatch):
    """K = 96 is 1.5 blocks of 64: the kernels refuse it clearly, and Linear4bit takes the torch path."""
    packed, absmax = _weights(8, 96, DEVICE)
    with pytest.raises(ValueError, match="multiple of the blocksize"):
        nf4_kernels.nf4_matmul_triton(torch.randn(2, 96, device=DEVICE), packed, absmax, None, (8, 96), 64)
    monkeypatch.setenv("QUANT_BACKEND", "triton")
    lin = torch.nn.Linear(96, 8).to(DEVICE)
    x = torch.randn(3, 96, device=DEVICE)
    q = quant.Linear4bit.from_linear(lin)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), q.bias), rtol=1e-5, atol=1e-5)


@pytest.fixture
def paths_run(monkeypatch):
    """The Triton entry points quant.py's dispatch calls, each call recorded by name in order."""
    ran = []

    def spy(name, real):
        def call(*args, **kwargs):
            ran.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("nf4_matmul_triton", "nf4_matmul_dx_triton", "dequantize_nf4_triton"):
        monkeypatch.setattr(nf4_kernels, name, spy(name, getattr(nf4_kernels, name)))
    return ran


@needs_triton
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax", "double-quant"])
def test_fused_and_two_kernel_paths_agree_and_follow_m(dtype, double_quant, paths_run, monkeypatch):
    """A 4-bit linear inside lora.LoRALinear gives the same output, input gradient and LoRA
    gradients through the fused kernels and through dequantize + matmul (a tiny crossover forced:
    8 rows), and which path runs follows M: below the crossover the fused forward and dx kernels,
    at or above it one dequantization per direction (the backward dequantizes again)."""
    import lora

    monkeypatch.setenv("QUANT_BACKEND", "triton")
    torch.manual_seed(0)
    layer = lora.LoRALinear(quant.Linear4bit.from_linear(torch.nn.Linear(128, 40).to(DEVICE, dtype),
                                                         double_quant=double_quant), r=4, alpha=8)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]

    def run(M, crossover):
        monkeypatch.setattr(quant, "CROSSOVER_M", crossover)
        paths_run.clear()
        layer.zero_grad()
        x = torch.randn(M, 128, generator=torch.Generator().manual_seed(M)).to(DEVICE, dtype).requires_grad_()
        y = layer(x)
        (y.float() * torch.linspace(-1, 1, 40, device=DEVICE)).sum().backward()
        grads = [y, x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
        return [g.detach().float().clone() for g in grads], list(paths_run)

    for M in (1, 5, 33):
        fused, ran_fused = run(M, 10**6)
        assert ran_fused == ["nf4_matmul_triton", "nf4_matmul_dx_triton"], M
        two, ran_two = run(M, 8)
        assert ran_two == (ran_fused if M < 8 else ["dequantize_nf4_triton"] * 2), M
        monkeypatch.setenv("QUANT_BACKEND", "torch")
        ref, ran_ref = run(M, 8)
        monkeypatch.setenv("QUANT_BACKEND", "triton")
        assert ran_ref == []  # QUANT_BACKEND=torch forces the torch path at any M
        for a, b, c in zip(fused, two, ref):
            torch.testing.assert_close(a, c, rtol=tol, atol=tol)
            torch.testing.assert_close(b, c, rtol=tol, atol=tol)
    if DEVICE == "cpu":  # the interpreter times nothing: the choice came from CROSSOVER_M, and is not kept
        assert quant.dispatch_choices()["dequant"] == {}


@needs_triton
def test_two_kernel_backward_dequantizes_again(paths_run, monkeypatch):
    """The scratch buffer is one per (device, dtype), shared by every layer and grown to the largest
    weight seen. Two layers of 96 x 64 weights: by the time layer 1's backward runs, layer 2's
    weight has been written over layer 1's in the buffer. The input gradient is still right,
    because the backward dequantizes again (four dequantizations for two layers)."""
    monkeypatch.setenv("QUANT_BACKEND", "triton")
    monkeypatch.setattr(quant, "CROSSOVER_M", 1)
    monkeypatch.setattr(quant, "_SCRATCH", {})
    torch.manual_seed(0)
    l1, l2 = (quant.Linear4bit.from_linear(torch.nn.Linear(i, o).to(DEVICE)) for i, o in ((64, 96), (96, 64)))
    x = torch.randn(3, 64, device=DEVICE, requires_grad=True)
    l2(l1(x)).square().sum().backward()
    assert paths_run == ["dequantize_nf4_triton"] * 4
    (buf,) = quant._SCRATCH.values()
    assert buf.numel() == 96 * 64 and buf.dtype == torch.float32
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(F.linear(x_ref, l1.dequantize(), l1.bias), l2.dequantize(), l2.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        quant.Linear4bit.from_linear(torch.nn.Linear(96, 128).to(DEVICE))(torch.randn(2, 96, device=DEVICE))
    (grown,) = quant._SCRATCH.values()
    assert grown.numel() == 96 * 128  # grown to the larger projection, still one buffer


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_linear4bit_gradient_to_input_only(backend, monkeypatch):
    monkeypatch.setenv("QUANT_BACKEND", backend)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24).to(DEVICE)
    q = quant.Linear4bit.from_linear(lin)
    x = torch.randn(2, 3, 64, device=DEVICE, requires_grad=True)
    y = q(x)
    (y * torch.arange(24, device=DEVICE)).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (F.linear(x_ref, q.dequantize(), q.bias) * torch.arange(24, device=DEVICE)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in q.parameters())                   # bias frozen
    assert q.weight.grad is None and q.absmax.grad is None and not q.weight.requires_grad
    q.bias.requires_grad_(True)                                                # unfrozen on purpose: gets dy.sum
    q(x.detach()).sum().backward()
    torch.testing.assert_close(q.bias.grad, torch.full((24,), 6.0, device=DEVICE))


def test_linear4bit_from_linear_matches_bitsandbytes_matmul():
    # Independent oracle: the weight bnb quantized itself, dequantized by bnb (conftest.bnb_dequantize:
    # bnb.matmul_4bit's CPU kernel is wrong when in_features is not a multiple of 64, as here).
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    q = quant.Linear4bit.from_linear(lin)
    x = torch.randn(7, 96)
    ref_packed, state = bnb_f.quantize_4bit(lin.weight.detach(), blocksize=64, quant_type="nf4")
    with torch.no_grad():
        torch.testing.assert_close(q(x), F.linear(x, bnb_dequantize(ref_packed, state), lin.bias),
                                   rtol=1e-5, atol=1e-5)
        # and within NF4's error of the original layer: |x| |w - w_hat| summed over 96 inputs
        assert (q(x) - lin(x)).abs().max() < 0.15 * (x.abs() @ lin.weight.abs().T).max()
    assert "blocksize=64" in repr(q)


def test_linear4bit_meta_state_dict_and_double_quant():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, dtype=torch.bfloat16)
    for dq in (False, True):
        q = quant.Linear4bit.from_linear(lin, double_quant=dq)
        empty = quant.Linear4bit(64, 48, bias=True, compute_dtype=torch.bfloat16, device="meta", double_quant=dq)
        assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in q.state_dict().items()}
        empty.load_state_dict(q.state_dict(), assign=True)                     # a saved quantized cache
        x = torch.randn(3, 64, dtype=torch.bfloat16)
        assert torch.equal(empty(x), q(x)) and empty(x).dtype == torch.bfloat16
        ref_packed, state = bnb_f.quantize_4bit(lin.weight.detach(), blocksize=64, quant_type="nf4",
                                                compress_statistics=dq)
        assert torch.equal(q.weight, ref_packed.view(-1))
        if dq:  # bnb's CPU kernel is off by one code on a few absmax (see above); at most that much
            assert (q.dequantize(torch.float32) - bnb_dequantize(ref_packed, state).float()).abs().max() < 1e-3
        else:
            assert torch.equal(q.dequantize(torch.bfloat16), bnb_dequantize(ref_packed, state))
    with pytest.raises(ValueError, match="does not match"):
        q.quantize_(torch.zeros(64, 48))


def test_backend_env_is_checked(monkeypatch):
    monkeypatch.setenv("QUANT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="QUANT_BACKEND"):
        quant.Linear4bit.from_linear(torch.nn.Linear(8, 8))(torch.randn(1, 8))


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_quantized_tiny_model_logits(tmp_path, backend, monkeypatch):
    """Bound 1 (exact): our NF4 model equals transformers' model whose seven projections per layer
    hold bitsandbytes' dequantized weights, up to float32 summation order (1e-4): the bytes are
    identical, so the weights are. Bound 2 (sanity): vs the 16-bit model the logits move by what
    NF4 costs: ~9% relative weight error per matrix (Gaussian weights, blocks of 64), which the
    two random layers carry to ~20% of the logits' norm; 0.35 only catches gross errors."""
    from conftest import make_hf_checkpoint

    loader = pytest.importorskip("loader")
    monkeypatch.setenv("QUANT_BACKEND", backend)
    path, hf = make_hf_checkpoint(tmp_path / "tiny")
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        logits16 = hf(ids).logits
        for name, module in hf.named_modules():
            if name.endswith("_proj"):
                packed, state = bnb_f.quantize_4bit(module.weight, blocksize=64, quant_type="nf4")
                module.weight.copy_(bnb_dequantize(packed, state))
        ref = hf(ids).logits
        qmodel = loader.load_model(path, quantize="nf4", device=DEVICE)
        ours = qmodel(ids.to(DEVICE)).cpu()
    assert isinstance(qmodel.model.layers[0].mlp.down_proj, quant.Linear4bit)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours - logits16).norm() / logits16.norm() < 0.35


def test_bench_kernels_runs(capsys):
    """`python bench.py kernels --quick` prints its table (on the CPU: the torch path)."""
    import bench

    threads = torch.get_num_threads()
    try:
        bench.bench_kernels(["--quick"])
    finally:
        torch.set_num_threads(threads)  # the CPU bench times one thread
    out = capsys.readouterr().out
    assert "nf4 fwd" in out and "nf4 dx" in out and out.count("256x512") >= 8   # 4 rows x 2 M, + bnb on a GPU


def test_constant_tables_reach_a_device_once(monkeypatch):
    """The NF4 and 8-bit tables are copied to a device once, not per call: a CPU -> GPU copy from
    pageable memory also waits for the CUDA stream to drain, which per linear layer would keep the
    CPU from ever running ahead of the GPU. Counted on the meta device (no GPU needed)."""
    tables = (nf4_format.NF4_LEVELS, nf4_format.BYTE_TO_LEVELS, nf4_format.DYNAMIC_MAP_8BIT)
    copies, to = [], torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.extend(t for t in tables if self is t)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    monkeypatch.setattr(nf4_format, "ON_DEVICE", {})
    meta = torch.device("meta")
    for _ in range(3):
        quant.dequantize_nf4(torch.zeros(32, dtype=torch.uint8, device=meta), torch.ones(1, device=meta), (8, 8))
        quant.dequantize_absmax(torch.zeros(4, dtype=torch.uint8, device=meta), torch.ones(1, device=meta),
                                torch.zeros((), device=meta))
    assert len(copies) == 2


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", [(40, 128), (40, 96), (7, 33)])
def test_quantize_part_equals_the_rows_of_bitsandbytes_whole_quantization(shape, double_quant):
    """FSDP's sharded loading: each of 3 ranks quantizes only the rows under its dim-0 chunks of the
    packed bytes and absmax (torch.chunk's split, as fully_shard's, uneven here) and gets exactly
    bnb's bytes and absmax of the whole matrix there; 96 and 33 columns: blocks cross rows. With
    double_quant the absmax gathered from every rank's piece gives the same codes, scales, offset."""
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.05
    ref_packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    whole = quant.Linear4bit(shape[1], shape[0], double_quant=double_quant)
    whole.quantize_(w)
    names = ["weight", "absmax"] + (["absmax_scale"] if double_quant else [])
    world = 3

    def chunk(n: int, r: int) -> slice:  # torch.chunk(range(n), world)[r], empty past the end
        c = -(-n // world)
        return slice(min(n, r * c), min(n, (r + 1) * c))

    parts = [{name: chunk(getattr(whole, name).numel(), r) for name in names} for r in range(world)]
    read = []
    absmax_pieces = [quant.quantize_nf4_part(lambda a, b: w[a:b], shape, 64, slice(0, 0), parts[r]["absmax"])[1]
                     for r in range(world)]  # what each rank contributes to the gather
    for r in range(world):
        def read_rows(r0, r1):
            read.append(r1 - r0)
            return w[r0:r1]
        got = whole.quantize_part(read_rows, parts[r], gather_absmax=lambda mine: torch.cat(absmax_pieces))
        assert torch.equal(got["weight"], ref_packed.view(-1)[parts[r]["weight"]])
        if double_quant:  # our absmax codes are bnb's reference rule (its CPU kernel differs on a few)
            for name in names[1:]:
                assert torch.equal(got[name], getattr(whole, name)[parts[r][name]]), name
            assert torch.equal(got["absmax_offset"], whole.absmax_offset)
            torch.testing.assert_close(got["absmax_offset"], state.offset)
        else:
            assert torch.equal(got["absmax"], state.absmax[parts[r]["absmax"]])
    if shape[0] >= 40:  # (7 x 33 has 4 blocks: a rank's absmax chunk is half of them, whatever its rows)
        assert max(read) <= -(-shape[0] // world) + 2  # its rows, and at most one more at each end
