"""quant.py against bitsandbytes (format), against the pure-torch reference (Triton kernels, run by
Triton's interpreter when there is no GPU) and against transformers (a whole quantized model).

On a CUDA machine the same kernel tests run compiled on the GPU, in bfloat16 as well."""

import pytest
import torch
import torch.nn.functional as F

import quant
from conftest import bnb_dequantize

bnb_f = pytest.importorskip("bitsandbytes.functional")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter has no bfloat16 arithmetic; a GPU runs all three.
KERNEL_DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
needs_triton = pytest.mark.skipif(quant.triton is None, reason="triton is not installed")


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
    ours, theirs = (normed[differ] - levels[codes[differ].long()]).abs(), (normed[differ] - levels[state.absmax[differ].long()]).abs()
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


def _close(out, ref):
    """Same maths in a different summation order, rounded once to out.dtype."""
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[out.dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


@pytest.fixture(params=[False, True], ids=["direct", "swap"])
def one_config(request, monkeypatch):
    """Each kernel runs one config (its first), with SWAP as given: both code paths get tested,
    where the GPU autotuner would pick one of them per shape."""
    for tuner in (quant._nf4_matmul_kernel, quant._nf4_matmul_decode, quant._nf4_matmul_dx_kernel):
        c = tuner.configs[0]
        config = quant.triton.Config({**c.kwargs, "SWAP": request.param}, num_warps=c.num_warps,
                                     num_stages=c.num_stages)
        monkeypatch.setattr(tuner, "configs", [config])
        monkeypatch.setattr(tuner, "cache", {})


@needs_triton
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("M,N,K", [(1, 37, 128), (1, 40, 192), (5, 40, 192), (33, 37, 128), (19, 64, 64)])
def test_triton_forward_and_dx_match_reference(M, N, K, dtype, one_config, monkeypatch):
    # M=1 takes the GEMV kernel, both plans (split-K: 2 blocks per step, split 2, so K=192 ends in
    # a half step; direct: one program per 16 rows), M=5 the split-K decode matmul; 33 and 19 are
    # not multiples of the 16-row tile; N=37 is odd and 40 not a multiple of the column tile; K
    # runs over 1 to 3 blocks of 64.
    packed, absmax = _weights(N, K, DEVICE)
    x = torch.randn(M, K, device=DEVICE).to(dtype)
    dy = torch.randn(M, N, device=DEVICE).to(dtype)
    bias = torch.randn(N, device=DEVICE).to(dtype)
    w = quant.dequantize_nf4(packed, absmax, (N, K), 64, dtype).float()     # the reference's exact weights
    for split in ((True, False) if M == 1 else (None,)):
        monkeypatch.setitem(quant._GEMV_SPLIT, (x.device, N, K, dtype), split)
        _close(quant.nf4_matmul_triton(x, packed, absmax, bias, (N, K), 64), F.linear(x.float(), w, bias.float()))
        _close(quant.nf4_matmul_triton(x, packed, absmax, None, (N, K), 64), F.linear(x.float(), w))
    _close(quant.nf4_matmul_dx_triton(dy, packed, absmax, (N, K), 64), dy.float() @ w)


@needs_triton
def test_triton_needs_whole_blocks_per_row(monkeypatch):
    """K = 96 is 1.5 blocks of 64: the kernels refuse it clearly, and Linear4bit takes the torch path."""
    packed, absmax = _weights(8, 96, DEVICE)
    with pytest.raises(ValueError, match="multiple of the blocksize"):
        quant.nf4_matmul_triton(torch.randn(2, 96, device=DEVICE), packed, absmax, None, (8, 96), 64)
    monkeypatch.setenv("QUANT_BACKEND", "triton")
    lin = torch.nn.Linear(96, 8).to(DEVICE)
    x = torch.randn(3, 96, device=DEVICE)
    q = quant.Linear4bit.from_linear(lin)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), q.bias), rtol=1e-5, atol=1e-5)


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
    tables = (quant.NF4_LEVELS, quant._BYTE_TO_LEVELS, quant.DYNAMIC_MAP_8BIT)
    copies, to = [], torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.extend(t for t in tables if self is t)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    monkeypatch.setattr(quant, "_ON_DEVICE", {})
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
