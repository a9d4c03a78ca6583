"""Checkpoints in bitsandbytes' 4-bit layout, both ways: loader.load_model reads what transformers +
bitsandbytes saved (the `*-bnb-4bit` repositories) as stored, and loader.save_model writes a
4-bit model that transformers + bitsandbytes load. The references are bitsandbytes' own files,
its dequantization (conftest.bnb_dequantize) and transformers' forward on its modules.

Every in_features here is a multiple of 64: bitsandbytes 0.50's CPU kernels are wrong otherwise
(conftest.bnb_dequantize). Its eval-mode CPU forward also takes a bf16 shortcut on AVX-512 machines,
so its models are run in train mode (Qwen2 has no dropout by default): float32 dequantize + matmul.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import loader
import quant
from conftest import bnb_dequantize, make_hf_checkpoint

NESTED = ("absmax", "nested_absmax", "nested_quant_map")


def bnb_checkpoint(tmp_path, double_quant: bool, tied: bool = False, quant_type: str = "nf4"):
    """(16-bit checkpoint dir, the dir transformers + bitsandbytes saved it to in 4 bits)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path, _ = make_hf_checkpoint(tmp_path / "fp32", intermediate_size=128, tie_word_embeddings=tied)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                           bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(path, quantization_config=q).save_pretrained(tmp_path / "bnb")
    return path, tmp_path / "bnb"


def transformers_bnb(path):
    """transformers' model of a bitsandbytes 4-bit directory, and its 4-bit modules by name."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path).train()  # train mode: see the module docstring
    return hf, {n: m for n, m in hf.named_modules() if hasattr(getattr(m, "weight", None), "quant_state")}


def ids():
    return torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))


def bnb_absmax(state):
    """bitsandbytes' float32 absmax of a quant state: its nested dequantization when nested."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax


@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-dq"])
def test_prequantized_checkpoint_loads_as_stored(tmp_path, monkeypatch, double_quant):
    """The packed bytes, absmax (codes, scale, offset) are the file's; the dequantized weights and
    absmax equal bitsandbytes' exactly; the logits equal transformers + bitsandbytes'. Nothing is
    quantized on the way in."""
    _, bnb_dir = bnb_checkpoint(tmp_path, double_quant)
    monkeypatch.setattr(quant, "quantize_nf4", lambda *a: pytest.fail("re-quantized"))
    monkeypatch.setattr(quant, "quantize_absmax", lambda *a: pytest.fail("re-quantized"))
    ours = loader.load_model(bnb_dir, quantize="nf4", double_quant=double_quant)
    hf, hf4 = transformers_bnb(bnb_dir)
    file = load_file(bnb_dir / "model.safetensors")
    mine = {n: m for n, m in ours.named_modules() if isinstance(m, quant.Linear4bit)}
    assert sorted(mine) == sorted(hf4) and len(mine) == 14
    for name, m in mine.items():
        state = hf4[name].weight.quant_state
        assert state.nested == m.double_quant == double_quant
        assert torch.equal(m.weight, file[f"{name}.weight"].reshape(-1))
        assert torch.equal(m.absmax, file[f"{name}.weight.absmax"])
        if double_quant:
            assert torch.equal(m.absmax_scale, file[f"{name}.weight.nested_absmax"])
            assert m.absmax_offset.item() == state.offset.item()
        assert torch.equal(m._absmax_f32(), bnb_absmax(state))  # dequantize_absmax is bitsandbytes' own
        assert torch.equal(m.dequantize(), bnb_dequantize(hf4[name].weight.data, state))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()), hf(ids()).logits, rtol=0, atol=1e-5)


def test_prequantized_into_the_other_absmax_format(tmp_path):
    """A double-quantized file into float32 absmax: bitsandbytes' dequantized absmax, exactly.
    A float32-absmax file into double_quant=True: the absmax in 8 bits as bitsandbytes' nested
    quantization of the 16-bit weights stores them (but for its CPU kernel's few non-nearest codes)."""
    import bitsandbytes.functional as bnbf

    _, dq_dir = bnb_checkpoint(tmp_path / "dq", double_quant=True)
    path, plain_dir = bnb_checkpoint(tmp_path / "plain", double_quant=False)
    expanded = loader.load_model(dq_dir, quantize="nf4", double_quant=False)
    hf, hf4 = transformers_bnb(dq_dir)
    for name, m in expanded.named_modules():
        if isinstance(m, quant.Linear4bit):
            assert m.absmax.dtype == torch.float32 and torch.equal(m.absmax, bnb_absmax(hf4[name].weight.quant_state))
    with torch.no_grad():
        torch.testing.assert_close(expanded(ids()), hf(ids()).logits, rtol=0, atol=1e-5)
    compressed, weights, same, blocks = loader.load_model(plain_dir, quantize="nf4", double_quant=True), \
        load_file(path / "model.safetensors"), 0, 0
    for name, m in compressed.named_modules():
        if isinstance(m, quant.Linear4bit):
            packed, state = bnbf.quantize_4bit(weights[f"{name}.weight"], blocksize=64, quant_type="nf4",
                                               compress_statistics=True)
            assert m.double_quant and torch.equal(m.weight, packed.reshape(-1))
            assert torch.equal(m.absmax_scale, state.state2.absmax) and m.absmax_offset.item() == state.offset.item()
            same, blocks = same + (m.absmax == state.absmax).sum().item(), blocks + m.absmax.numel()
    assert same >= 0.97 * blocks


def test_projection_kept_in_16_bits_is_quantized_on_load(tmp_path):
    """A file may keep some projections unquantized (llm_int8_skip_modules, as the "dynamic" 4-bit
    repositories do): those are quantized on the way in (as bitsandbytes would), the others read as stored."""
    import bitsandbytes.functional as bnbf

    path, bnb_dir = bnb_checkpoint(tmp_path, double_quant=False)
    down = "model.layers.0.mlp.down_proj.weight"
    full = load_file(path / "model.safetensors")[down]
    _edit_file(bnb_dir, lambda t: [t.pop(k) for k in list(t) if k.startswith(down + ".")] and t.update({down: full}))
    ours = loader.load_model(bnb_dir, quantize="nf4")
    packed, state = bnbf.quantize_4bit(full, blocksize=64, quant_type="nf4")
    m = ours.get_submodule(down.removesuffix(".weight"))
    assert torch.equal(m.weight, packed.reshape(-1)) and torch.equal(m.absmax, state.absmax)


def _edit_file(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path, **change):
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"].update(change)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_state(key, **change):
    def edit(tensors):
        state = json.loads(bytes(tensors[key].tolist()).decode())
        tensors[key] = torch.tensor(list(json.dumps({**state, **change}).encode()), dtype=torch.uint8)
    return edit


Q = "model.layers.1.self_attn.q_proj.weight"


@pytest.mark.parametrize("break_it, message", [
    (lambda p: _edit_config(p, bnb_4bit_quant_type="fp4"), r"config.json: bnb_4bit_quant_type is 'fp4'"),
    (lambda p: _edit_config(p, load_in_4bit=False, load_in_8bit=True), r"config.json: quantization_config is "
                                                                        r"'bitsandbytes' 8-bit"),
    (lambda p: _edit_config(p, bnb_4bit_quant_storage="bfloat16"), r"bnb_4bit_quant_storage is 'bfloat16'"),
    (lambda p: _edit_file(p, _edit_state(f"{Q}.quant_state.bitsandbytes__nf4", blocksize=128)),
     rf"tensor {Q}.quant_state.bitsandbytes__nf4 in .*model.safetensors: blocksize is 128"),
    (lambda p: _edit_file(p, _edit_state(f"{Q}.quant_state.bitsandbytes__nf4", nested_blocksize=128)),
     rf"tensor {Q}.quant_state.bitsandbytes__nf4 in .*model.safetensors: nested_blocksize is 128"),
    (lambda p: _edit_file(p, lambda t: t.pop(f"{Q}.nested_absmax")), rf"missing tensor {Q}.nested_absmax"),
    (lambda p: _edit_file(p, lambda t: t.update({f"{Q}.quant_map": t[f"{Q}.quant_map"].flip(0)})),
     rf"tensor {Q}.quant_map in .*model.safetensors: not the 16 NF4 levels"),
    (lambda p: _edit_file(p, lambda t: t.update({f"{Q}.absmax": t[f"{Q}.absmax"][:-1].clone()})),
     rf"tensor {Q}.absmax in .*: torch.uint8 \(63,\), expected \(64,\) uint8"),
], ids=["fp4-config", "8-bit", "storage", "blocksize", "nested-blocksize", "missing", "levels", "absmax"])
def test_unsupported_bnb_checkpoints_are_refused_by_name(tmp_path, break_it, message):
    _, bnb_dir = bnb_checkpoint(tmp_path, double_quant=True)
    break_it(bnb_dir)
    with pytest.raises(ValueError, match=message):
        loader.load_model(bnb_dir, quantize="nf4", double_quant=True)


def test_fp4_tensors_and_a_16_bit_load_are_refused(tmp_path):
    _, bnb_dir = bnb_checkpoint(tmp_path, double_quant=False, quant_type="fp4")
    with pytest.raises(ValueError, match="bnb_4bit_quant_type is 'fp4'"):
        loader.load_model(bnb_dir, quantize="nf4")
    _edit_config(bnb_dir, bnb_4bit_quant_type="nf4")  # a config that lies: the tensors still say fp4
    with pytest.raises(ValueError, match=r"tensor model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__fp4 "
                                         r"in .*model.safetensors: bitsandbytes fp4 weights are not supported"):
        loader.load_model(bnb_dir, quantize="nf4")
    with pytest.raises(ValueError, match="bitsandbytes 4-bit NF4.*load it with quantize='nf4'"):
        loader.load_model(bnb_dir)


@pytest.mark.parametrize("double_quant, tied", [(False, False), (True, True)], ids=["nf4", "nf4-dq-tied"])
def test_saved_4bit_model_is_what_bitsandbytes_writes_and_transformers_loads(tmp_path, double_quant, tied):
    """save_model of a 4-bit model against the file transformers + bitsandbytes write from the same
    16-bit checkpoint: the same tensor names, dtypes and shapes, the same packed bytes and quant
    states (bitsandbytes' CPU kernel picks a non-nearest 8-bit absmax code in a few blocks, see
    test_quant); transformers loads it into its 4-bit modules with our logits; load_model reads it
    back as it was."""
    path, bnb_dir = bnb_checkpoint(tmp_path, double_quant, tied)
    ours = loader.load_model(path, quantize="nf4", double_quant=double_quant)
    loader.save_model(ours, tmp_path / "out")
    mine, theirs = load_file(tmp_path / "out" / "model.safetensors"), load_file(bnb_dir / "model.safetensors")
    assert sorted(mine) == sorted(theirs)
    same, blocks = 0, 0
    for name, t in mine.items():
        assert (t.dtype, t.shape) == (theirs[name].dtype, theirs[name].shape), name
        if double_quant and name.endswith(".weight.absmax"):
            same, blocks = same + (t == theirs[name]).sum().item(), blocks + t.numel()
        else:
            assert torch.equal(t, theirs[name]), name
    assert same >= 0.97 * blocks
    hf, hf4 = transformers_bnb(tmp_path / "out")
    assert len(hf4) == 14 and all(m.weight.quant_state.nested == double_quant for m in hf4.values())
    with torch.no_grad():
        torch.testing.assert_close(hf(ids()).logits, ours(ids()), rtol=0, atol=1e-5)
        again = loader.load_model(tmp_path / "out", quantize="nf4", double_quant=double_quant)
        torch.testing.assert_close(again(ids()), ours(ids()), rtol=0, atol=0)
