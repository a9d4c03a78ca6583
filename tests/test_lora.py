"""lora.py against Hugging Face PEFT as the oracle, on a tiny random Qwen2 (CPU, float32).

The reference side is always transformers' Qwen2ForCausalLM with PEFT's LoRA; our side is
loader.load_model + lora.apply_lora. Adapter weights are made random (a fresh B is zero and
would hide every bug in the update path) and moved between the two with PEFT's documented
names, written out here rather than through lora.py's own mapping.
"""
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import Qwen2ForCausalLM

import loader
import lora
import quant
from conftest import make_hf_checkpoint

R, ALPHA = 4, 8
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = torch.randint(0, 125, (2, 9), generator=torch.Generator().manual_seed(0))
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("lora") / "tiny")[0]


def hf_model(path) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logits(m: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return m(input_ids=IDS).logits


def ours(path, quantize=None) -> nn.Module:
    return loader.load_model(path, dtype=torch.float32, quantize=quantize).eval()


def our_logits(m: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return m(IDS)


def randomize(named_params, seed: int) -> None:
    """Random values for every LoRA / modules_to_save parameter in (name, param) pairs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(named_params, key=lambda kv: kv[0]):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def peft_model(path, targets=ALL, modules_to_save=None, seed=1) -> PeftModel:
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(targets),
                     modules_to_save=modules_to_save, task_type="CAUSAL_LM")
    pm = get_peft_model(hf_model(path), cfg).eval()
    randomize([(n, p) for n, p in pm.named_parameters() if p.requires_grad], seed)
    return pm


def peft_to_our_name(name: str) -> str:
    """PEFT's live parameter name -> the name in an adapter file, minus `base_model.model.`."""
    return (name.removeprefix("base_model.model.").replace(".default.", ".")
            .replace(".modules_to_save.", "."))


def test_fresh_adapter_changes_nothing(ckpt):
    m = ours(ckpt)
    before = our_logits(m)
    lora.apply_lora(m, r=R, alpha=ALPHA, dropout=0.05, targets=ALL)
    assert torch.equal(our_logits(m), before)  # B = 0: the update is exactly zero
    a = m.model.layers[0].self_attn.q_proj.lora_A.weight
    assert a.abs().max() <= 1 / a.shape[1] ** 0.5  # Kaiming-uniform(a=sqrt 5) bound: 1/sqrt(fan_in)
    assert a.std() > 0


def test_outputs_match_peft(ckpt):
    pm = peft_model(ckpt)
    m = ours(ckpt)
    lora.apply_lora(m, r=R, alpha=ALPHA, dropout=0.0, targets=ALL)
    own = dict(m.named_parameters())
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad:
                own[peft_to_our_name(name)].copy_(p)
    ref = hf_logits(pm)
    assert (ref - hf_logits(hf_model(ckpt))).abs().max() > 1e-3  # the adapters do change outputs
    torch.testing.assert_close(our_logits(m), ref, **TOL)


def test_autocast_computes_the_update_in_bf16_and_trains_float32():
    """Under bf16 autocast the update runs in bf16 with no float32 round trip of x (PEFT upcasts x,
    autocast casts it straight back); A and B stay float32 and get float32 gradients."""
    torch.manual_seed(0)
    base = nn.Linear(32, 16).to(torch.bfloat16)
    m = lora.LoRALinear(base, r=4, alpha=8)
    nn.init.normal_(m.lora_B.weight)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    a, b = m.lora_A.weight.detach().bfloat16(), m.lora_B.weight.detach().bfloat16()
    with torch.no_grad():
        want = base(x) + (x @ a.T) @ b.T * 2.0
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.float().sum().backward()
    assert m.lora_A.weight.grad.dtype == m.lora_B.weight.grad.dtype == torch.float32


def test_merge_unmerge(ckpt):
    m = ours(ckpt)
    lora.apply_lora(m, r=R, alpha=ALPHA, targets=ALL)
    randomize([(n, p) for n, p in m.named_parameters() if p.requires_grad], seed=2)
    w0 = m.model.layers[1].mlp.down_proj.base.weight.clone()
    unmerged = our_logits(m)
    lora.merge_lora(m)
    merged_w = m.model.layers[1].mlp.down_proj.base.weight.clone()
    torch.testing.assert_close(our_logits(m), unmerged, **TOL)
    lora.merge_lora(m)  # idempotent: the update is not added twice
    assert torch.equal(m.model.layers[1].mlp.down_proj.base.weight, merged_w)
    torch.testing.assert_close(our_logits(m), unmerged, **TOL)
    lora.unmerge_lora(m)
    torch.testing.assert_close(m.model.layers[1].mlp.down_proj.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(our_logits(m), unmerged, **TOL)


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_only_adapters_train(ckpt, quantize):
    m = ours(ckpt, quantize)
    n = lora.apply_lora(m, r=R, alpha=ALPHA, targets=("q_proj", "down_proj"), modules_to_save=("lm_head",))
    expected = {n for n, _ in m.named_parameters()
                if ".lora_" in n or n.startswith("lm_head.")}
    assert {n for n, p in m.named_parameters() if p.requires_grad} == expected
    assert n == sum(p.numel() for name, p in m.named_parameters() if name in expected)
    assert len([k for k in expected if k.endswith("lora_B.weight")]) == 2 * 2  # 2 layers x 2 targets
    if quantize:
        assert isinstance(m.model.layers[0].self_attn.q_proj.base, quant.Linear4bit)
        with pytest.raises(TypeError, match="export_merged"):
            lora.merge_lora(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    loss = m(IDS).float().square().mean()
    loss.backward()
    opt.step()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == (name in expected), name
    after = m.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v) != (k in expected), k  # frozen: bit-identical; trained: moved


@pytest.mark.parametrize("safe", [True, False])
def test_loads_peft_written_adapter(ckpt, tmp_path, safe):
    pm = peft_model(ckpt, targets=("q_proj", "v_proj", "up_proj"), modules_to_save=["lm_head"])
    pm.save_pretrained(tmp_path, safe_serialization=safe)
    m = ours(ckpt)
    config = lora.load_peft_adapter(m, tmp_path)
    assert config["r"] == R and len(lora.lora_modules(m)) == 2 * 3
    torch.testing.assert_close(our_logits(m), hf_logits(pm), **TOL)


def test_save_load_round_trip_exact(ckpt, tmp_path):
    m = ours(ckpt)
    lora.apply_lora(m, r=R, alpha=ALPHA, dropout=0.1, targets=("k_proj", "o_proj"), modules_to_save=("lm_head",))
    randomize([(n, p) for n, p in m.named_parameters() if p.requires_grad], seed=3)
    lora.save_peft_adapter(m, tmp_path, base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (R, ALPHA, 0.1)
    assert config["target_modules"] == ["k_proj", "o_proj"] and config["modules_to_save"] == ["lm_head"]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight" in saved
    fresh = ours(ckpt)
    lora.load_peft_adapter(fresh, tmp_path)
    a, b = lora.lora_state_dict(m), lora.lora_state_dict(fresh)
    assert a.keys() == b.keys() and "lm_head.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(our_logits(fresh.eval()), our_logits(m.eval()))


def test_saved_adapter_loads_in_peft(ckpt, tmp_path):
    m = ours(ckpt)
    lora.apply_lora(m, r=R, alpha=ALPHA, targets=ALL, modules_to_save=("lm_head", "embed_tokens"))
    randomize([(n, p) for n, p in m.named_parameters() if p.requires_grad], seed=4)
    lora.save_peft_adapter(m, tmp_path, base_model_name_or_path=str(ckpt))
    pm = PeftModel.from_pretrained(hf_model(ckpt), tmp_path).eval()
    torch.testing.assert_close(hf_logits(pm), our_logits(m), **TOL)


@pytest.mark.parametrize("quantize,tied", [(None, False), ("nf4", False), ("nf4", True)])
def test_export_merged(ckpt, tmp_path, quantize, tied):
    """The export holds exactly dequantize(W) + (alpha/r) B A in float32. The NF4 rounding error
    (up to half an NF4 level gap times the block's absmax: measured up to 0.024 on these
    weights of std 0.05) is on both sides, not between them. What is left is float32 rounding:
    summation order (x W'^T versus x W^T + s B(A x)) and transformers' kernels versus ours,
    measured 1e-6 on logits of size ~1.6, hence 1e-5."""
    if tied:
        ckpt = make_hf_checkpoint(tmp_path / "tied", tie_word_embeddings=True)[0]
    m = ours(ckpt, quantize)
    lora.apply_lora(m, r=R, alpha=ALPHA, targets=ALL)
    randomize([(n, p) for n, p in m.named_parameters() if p.requires_grad], seed=5)
    expected = our_logits(m)
    lora.export_merged(m, tmp_path)
    torch.testing.assert_close(hf_logits(hf_model(tmp_path)), expected, **TOL)
    torch.testing.assert_close(our_logits(ours(tmp_path)), expected, **TOL)
    lora.export_merged(m, tmp_path / "bf16", dtype=torch.bfloat16)
    tensors = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}
    assert tensors.keys() == load_file(ckpt / "model.safetensors").keys()  # HF names, nothing else


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT: the default we match
def test_tied_lm_head_in_modules_to_save_comes_apart_as_in_peft(tmp_path):
    """PEFT trains a copy of each module in modules_to_save: with tied embeddings, lm_head then
    learns alone and embed_tokens stays the base's. Same outputs as PEFT, an adapter file PEFT
    reads back, frozen embeddings after a training step, a merged export transformers loads untied."""
    path = make_hf_checkpoint(tmp_path / "tied", tie_word_embeddings=True)[0]
    pm = peft_model(path, targets=("q_proj",), modules_to_save=["lm_head"])
    m = ours(path)
    lora.apply_lora(m, r=R, alpha=ALPHA, dropout=0.0, targets=("q_proj",), modules_to_save=("lm_head",))
    own = dict(m.named_parameters())
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad:
                own[peft_to_our_name(name)].copy_(p)
    torch.testing.assert_close(our_logits(m), hf_logits(pm), **TOL)
    lora.save_peft_adapter(m, tmp_path / "adapter", base_model_name_or_path=str(path))
    loaded = PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter").eval()
    torch.testing.assert_close(hf_logits(loaded), our_logits(m), **TOL)
    embed = m.model.embed_tokens.weight.detach().clone()
    assert not m.model.embed_tokens.weight.requires_grad and m.lm_head.weight.requires_grad
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m(IDS).square().mean().backward()
    opt.step()
    assert torch.equal(m.model.embed_tokens.weight, embed)
    expected = our_logits(m)
    lora.export_merged(m, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    torch.testing.assert_close(hf_logits(hf_model(tmp_path / "merged")), expected, **TOL)


def test_errors(ckpt, tmp_path):
    m = ours(ckpt)
    with pytest.raises(ValueError, match=r"q_projj.*match no linear.*'q_proj'"):
        lora.apply_lora(m, targets=("q_projj", "v_proj"))
    for bad in (dict(r=0), dict(r=-2), dict(r=2.5), dict(alpha=0), dict(alpha=float("nan")), dict(dropout=1.0)):
        with pytest.raises(ValueError, match="must be"):
            lora.apply_lora(m, **bad)
    assert not lora.lora_modules(m)  # nothing was wrapped by the failed calls
    with pytest.raises(ValueError, match="matches no module"):
        lora.apply_lora(m, modules_to_save=("no_such_head",))
    lora.apply_lora(m, r=R, alpha=ALPHA)
    lora.save_peft_adapter(m, tmp_path / "a")
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.apply_lora(m)

    wider = make_hf_checkpoint(tmp_path / "wide", hidden_size=96)[0]  # same layout, other widths
    name = r"base_model\.model\.model\.layers\.0\.self_attn\.[qkvo]_proj\.lora_A\.weight"
    with pytest.raises(ValueError, match=rf"{name} has shape \(4, 64\) but .* has shape \(4, 96\)"):
        lora.load_peft_adapter(ours(wider), tmp_path / "a")
    other_rank = ours(ckpt)
    lora.apply_lora(other_rank, r=2 * R, alpha=ALPHA)
    with pytest.raises(ValueError, match=r"adapter has r=4"):
        lora.load_peft_adapter(other_rank, tmp_path / "a")
