"""model.py against transformers' Qwen2ForCausalLM (the reference), on tiny random checkpoints
written by transformers itself (conftest.make_hf_checkpoint), in float32 on the CPU."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import loader
from model import HostEmbedding, KVCache, Qwen2Config, StaticDecoder
from conftest import bnb_dequantize, make_hf_checkpoint

TOL = 1e-5
PAD = 127  # the tiny checkpoints' pad id (vocab 128); non-zero, as transformers' beam search wants


def _ids(batch, length, seed=0, vocab=120):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _left_mask(lengths, T):
    return (torch.arange(T)[None] >= T - torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("kwargs", [
    dict(),                                                                   # GQA 2:1, untied, rope_parameters
    dict(tie_word_embeddings=True, legacy_config=True, rope_theta=1e6),      # Qwen2.5 Hub style config.json
    dict(num_key_value_heads=4, max_shard_size="20KB"),                      # MHA 1:1, sharded
    dict(hidden_size=112, num_attention_heads=7, num_key_value_heads=1,      # GQA 7:1, sharded and tied
         tie_word_embeddings=True, max_shard_size="30KB"),
    dict(hidden_size=112, num_attention_heads=14, num_key_value_heads=2, legacy_config=True),  # 7:1, head_dim 8
], ids=["gqa2-untied", "tied-legacy", "mha-sharded", "gqa7-sharded-tied", "gqa7-14:2"])
def test_logits_match_transformers(tmp_path, kwargs):
    path, hf = make_hf_checkpoint(tmp_path / "ckpt", **kwargs)
    ours = loader.load_model(path)
    ids = _ids(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=TOL)
        hidden = hf.model(ids).last_hidden_state
        torch.testing.assert_close(ours(ids, return_hidden=True), hidden, rtol=0, atol=TOL)
    if kwargs.get("tie_word_embeddings"):
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_unpadded(tiny_checkpoint, side):
    path, hf = tiny_checkpoint
    ours = loader.load_model(path)
    lengths, T = [5, 9, 12], 12
    mask = _left_mask(lengths, T) if side == "left" else _left_mask(lengths, T).flip(1)
    ids = _ids(3, T).masked_fill(mask == 0, PAD)
    with torch.no_grad():
        padded = ours(ids, attention_mask=mask)
        for i in range(3):
            real = mask[i].bool()
            alone = hf(ids[i, real][None]).logits[0]  # the reference, one unpadded sample
            torch.testing.assert_close(padded[i, real], alone, rtol=0, atol=TOL)


def test_cached_decoding_equals_full_recompute(tiny_checkpoint):
    path, _ = tiny_checkpoint
    ours = loader.load_model(path)
    ids, mask = _ids(2, 14), _left_mask([14, 9], 14)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask)
        cache = KVCache(ours.config, 2, 14, torch.float32, "cpu")
        parts = [ours(ids[:, :8], attention_mask=mask[:, :8], kv_cache=cache)]  # prefill 8, then 2, 1, 1, ...
        for start, end in [(8, 10)] + [(t, t + 1) for t in range(10, 14)]:
            parts.append(ours(ids[:, start:end], attention_mask=mask[:, :end], kv_cache=cache))
    real = mask.bool()
    torch.testing.assert_close(torch.cat(parts, 1)[real], full[real], rtol=0, atol=TOL)


def _stopping_prompt():
    """A left-padded batch and stop tokens that end some rows early (so stopping is exercised)."""
    ids, mask = _ids(3, 7, seed=1, vocab=60), _left_mask([4, 7, 6], 7)
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("static", [False, True], ids=["loop", "static"])
def test_greedy_generate_matches_transformers(tmp_path, static):
    path, hf = make_hf_checkpoint(tmp_path / "ckpt", vocab_size=128)
    ours = loader.load_model(path)
    ids, mask = _stopping_prompt()
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[], pad_token_id=PAD)
    eos = [int(free[0, 3]), int(free[2, 5])]  # tokens the greedy rows do emit
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD,
                        static=static)
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD,
                       do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(got, want), (got, want)
    assert (got == PAD).any(), "the case should stop some rows early"


@pytest.mark.parametrize("sharpen, n_stop, length_penalty", [(3.0, 15, 1.0), (3.0, 15, 1.5), (1.0, 8, 0.5),
                                                              (1.0, 8, -0.5)])
def test_beam_search_matches_transformers(tmp_path, sharpen, n_stop, length_penalty):
    """Cases where beam search's stopping rule matters: confident predictions (lm_head x3) make
    some longer hypotheses score better than shorter finished ones, and many stop tokens end
    beams often. (Dropping the early-stop test of the running beams changes the output here.)"""
    path, hf = make_hf_checkpoint(tmp_path / "ckpt", vocab_size=64, seed=2)
    with torch.no_grad():
        hf.lm_head.weight.mul_(sharpen)
    hf.save_pretrained(path)
    ours = loader.load_model(path)
    ids, mask = _ids(3, 7, seed=2, vocab=60), _left_mask([4, 7, 6], 7)
    ids = ids.masked_fill(mask == 0, 63)
    kw = dict(attention_mask=mask, max_new_tokens=14, eos_token_id=list(range(0, 4 * n_stop, 4)), pad_token_id=63,
              num_beams=3, length_penalty=length_penalty)
    got = ours.generate(ids, **kw)
    want = hf.generate(ids, do_sample=False, **kw)[:, ids.shape[1]:]
    assert torch.equal(got, want), (got, want)
    assert (got[:, 1:] == 63).any(), "the case should finish some rows, not all, before max_new_tokens"


def test_static_decoder_steps_equal_the_growing_cache(tiny_checkpoint):
    """StaticDecoder (fixed shapes: every cache slot attended, unwritten ones masked; slot and
    position advanced on the device) gives the logits of the ordinary step, here on an NF4 model
    with its embedding table in host memory; beam search refuses static=True."""
    path, _ = tiny_checkpoint
    model = loader.load_model(path, quantize="nf4", offload_embeddings=True)
    ids, mask = _stopping_prompt()
    with torch.no_grad():
        caches = [KVCache(model.config, 3, 7 + 5, torch.float32, "cpu") for _ in range(2)]
        first = [model._next_logits(mask, c, input_ids=ids) for c in caches]
        step, token, grown = StaticDecoder(model, caches[1], mask), first[0].argmax(-1), mask
        for _ in range(4):
            grown = torch.cat((grown, grown.new_ones(3, 1)), dim=1)
            want = model._next_logits(grown, caches[0], input_ids=token[:, None])
            got = step(token)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            token = want.argmax(-1)
    with pytest.raises(ValueError, match="static=True decodes greedily"):
        model.generate(ids, attention_mask=mask, num_beams=2, static=True)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_from_embeds_equals_from_ids(tiny_checkpoint, num_beams):
    path, _ = tiny_checkpoint
    ours = loader.load_model(path)
    ids, mask = _stopping_prompt()
    kw = dict(attention_mask=mask, max_new_tokens=6, eos_token_id=[5], pad_token_id=PAD, num_beams=num_beams)
    from_ids = ours.generate(ids, **kw)
    from_embeds = ours.generate(inputs_embeds=ours.model.embed_tokens(ids), **kw)
    assert torch.equal(from_ids, from_embeds)


def test_gradient_checkpointing_same_grads(tiny_checkpoint):
    path, _ = tiny_checkpoint
    ours = loader.load_model(path).train()
    ids, mask = _ids(2, 10), _left_mask([10, 6], 10).flip(1)

    def grads(checkpointing):
        ours.gradient_checkpointing = checkpointing
        ours.zero_grad()
        ours(ids, attention_mask=mask).logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in ours.named_parameters()}

    plain, recomputed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_lora_on_a_frozen_base():
    """LoRA with dropout on a frozen base (embeddings included, so no input of a layer requires a
    gradient): recomputation in backward gives the same adapter gradients, same dropout masks."""
    import lora

    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = loader.random_model(config, quantize="nf4")
    lora.apply_lora(model, r=4, alpha=8, dropout=0.3, targets=["q_proj", "v_proj", "down_proj"])
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)  # B = 0 would give A no gradient
    model.train()
    ids = _ids(2, 10, vocab=90)

    def grads(checkpointing):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in both runs
        model(ids).logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = grads(False), grads(True)
    assert len(plain) == 12 and all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=1e-6, msg=name)


def test_save_model_loads_in_transformers(tiny_checkpoint, tmp_path):
    from transformers import Qwen2ForCausalLM

    path, hf = tiny_checkpoint
    loader.save_model(loader.load_model(path), tmp_path / "out")
    again = Qwen2ForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = _ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, rtol=0, atol=0)
    assert Qwen2Config.from_json(tmp_path / "out" / "config.json") == Qwen2Config.from_json(path / "config.json")


# ----------------------------------------------------------------------------- broken inputs


def _rewrite_single_file(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_shard(tmp_path):
    path, _ = make_hf_checkpoint(tmp_path / "ckpt", max_shard_size="20KB")
    (path / "model-00003-of-00014.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00003-of-00014.safetensors"):
        loader.load_model(path)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(3, 64)}),
     r"model.layers.1.mlp.up_proj.weight in .*model.safetensors has shape \(3, 64\), expected \(160, 64\)"),
    (lambda t: t.update({"model.layers.0.self_attn.rotary.weight": torch.zeros(2)}),
     "unexpected tensor model.layers.0.self_attn.rotary.weight in .*model.safetensors"),
    (lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"), "missing tensor model.layers.1.self_attn.k_proj.bias"),
    (lambda t: t.pop("lm_head.weight"), "missing tensor lm_head.weight"),  # untied: the head must be stored
], ids=["wrong-shape", "unexpected", "missing", "missing-head"])
def test_broken_checkpoint_names_the_tensor(tiny_checkpoint, edit, message):
    path, _ = tiny_checkpoint
    _rewrite_single_file(path, edit)
    with pytest.raises(ValueError, match=message):
        loader.load_model(path)


def test_tied_checkpoint_that_stores_the_head_too(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "ckpt", tie_word_embeddings=True)
    _rewrite_single_file(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    ids = torch.randint(0, 128, (1, 9))
    torch.testing.assert_close(loader.load_model(path)(ids), hf(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_unsupported_config(tiny_checkpoint, change, message):
    path, _ = tiny_checkpoint
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        loader.load_model(path)


# ----------------------------------------------------------------------------- 4-bit loading


def test_nf4_load_matches_bitsandbytes_dequantized_reference(tiny_checkpoint, tmp_path, monkeypatch):
    import bitsandbytes.functional as bnbf
    import quant

    path, hf = tiny_checkpoint
    ours = loader.load_model(path, quantize="nf4", quant_cache=tmp_path / "qcache")
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert sum(isinstance(m, quant.Linear4bit) for m in ours.modules()) == 7 * ours.config.num_hidden_layers
    assert not any(isinstance(m, torch.nn.Linear) and n.endswith(names) for n, m in ours.named_modules())
    with torch.no_grad():  # the reference: transformers with each projection NF4-rounded by bitsandbytes
        for name, p in hf.named_parameters():
            if name.endswith(tuple(f"{n}.weight" for n in names)):
                q, state = bnbf.quantize_4bit(p.data, blocksize=64, quant_type="nf4")
                p.copy_(bnb_dequantize(q, state))
        ids = _ids(2, 11)
        want = hf(ids).logits
        torch.testing.assert_close(ours(ids), want, rtol=0, atol=1e-4)

        # a second load reads the cache: quantizing again would fail here
        assert len(list((tmp_path / "qcache").glob("nf4-*.safetensors"))) == 1
        monkeypatch.setattr(quant.Linear4bit, "quantize_", lambda *a: pytest.fail("cache not used"))
        cached = loader.load_model(path, quantize="nf4", quant_cache=tmp_path / "qcache")
        torch.testing.assert_close(cached(ids), want, rtol=0, atol=1e-4)
    import lora  # a 4-bit model saves in bitsandbytes' layout (test_bnb_checkpoints); a LoRA one does not
    lora.apply_lora(cached, r=2)
    with pytest.raises(ValueError, match="export_merged"):
        loader.save_model(cached, tmp_path / "nope")


def test_nf4_double_quant_load_matches_bitsandbytes_nested_quantization(tiny_checkpoint, tmp_path, monkeypatch):
    """double_quant=True stores each absmax in 8 bits (bnb's compress_statistics=True) and keeps
    the two formats apart in the cache. Reference: transformers with every projection rounded by
    bnb's nested quantization. bnb's CPU kernel picks a non-nearest 8-bit level for a few absmax
    (test_quant); those blocks' weights then differ by one 8-bit step of their absmax, so the codes
    must agree on >= 99% of blocks and the logits to 3e-3 (they are of order 1)."""
    import bitsandbytes.functional as bnbf
    import quant

    path, hf = tiny_checkpoint
    plain = loader.load_model(path, quantize="nf4", quant_cache=tmp_path / "qcache")
    dq = loader.load_model(path, quantize="nf4", double_quant=True, quant_cache=tmp_path / "qcache")
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "qcache").iterdir()) == ["nf4-bs64", "nf4-bs64-dq"]
    params, same, blocks = dict(hf.named_parameters()), 0, 0
    with torch.no_grad():
        for name, m in dq.named_modules():
            if isinstance(m, quant.Linear4bit):
                q, state = bnbf.quantize_4bit(params[f"{name}.weight"].data, blocksize=64, quant_type="nf4",
                                              compress_statistics=True)
                assert m.double_quant and m.absmax.dtype == torch.uint8
                same, blocks = same + (m.absmax == state.absmax).sum().item(), blocks + m.absmax.numel()
                params[f"{name}.weight"].copy_(bnb_dequantize(q, state))
        ids = _ids(2, 11)
        torch.testing.assert_close(dq(ids), hf(ids).logits, rtol=0, atol=3e-3)
        assert same >= 0.99 * blocks
        # 8-bit absmax + a float32 scale per 256 blocks, instead of a float32 absmax per block
        nbytes = lambda model: sum(t.numel() * t.element_size()
                                   for n, t in model.state_dict().items() if "layers." in n)
        n_blocks = sum(m.absmax.numel() for m in dq.modules() if isinstance(m, quant.Linear4bit))
        n_linears = sum(isinstance(m, quant.Linear4bit) for m in dq.modules())
        assert nbytes(plain) - nbytes(dq) == 3 * n_blocks - n_linears * (4 + 4)  # one scale + offset each here
        monkeypatch.setattr(quant.Linear4bit, "quantize_", lambda *a: pytest.fail("cache not used"))
        cached = loader.load_model(path, quantize="nf4", double_quant=True, quant_cache=tmp_path / "qcache")
        torch.testing.assert_close(cached(ids), dq(ids), rtol=0, atol=0)
    with pytest.raises(ValueError, match="double_quant=True needs quantize='nf4'"):
        loader.load_model(path, double_quant=True)


@pytest.mark.parametrize("tied", [False, True])
def test_random_model_init_and_nf4_is_the_same_draws_quantized(tied):
    """transformers' Qwen2 init rule (matrices N(0, initializer_range), biases 0, norms 1), and the
    NF4 model of one seed is the 16-bit model of that seed, quantized."""
    import quant

    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    full = loader.random_model(config, std=0.05)
    torch.manual_seed(0)
    nf4 = loader.random_model(config, quantize="nf4", std=0.05)
    for name, t in full.state_dict().items():
        if t.dim() > 1:
            assert abs(t.std().item() - 0.05) < 0.005 and abs(t.mean().item()) < 0.005, name
        else:
            assert (t == (1.0 if name.endswith("norm.weight") else 0.0)).all(), name
    assert (full.lm_head.weight is full.model.embed_tokens.weight) == tied
    for layer in (0, 1):
        w = full.model.layers[layer].mlp.down_proj.weight
        packed, absmax = quant.quantize_nf4(w)
        q = nf4.model.layers[layer].mlp.down_proj
        assert isinstance(q, quant.Linear4bit) and torch.equal(q.weight, packed) and torch.equal(q.absmax, absmax)
    assert torch.equal(nf4.lm_head.weight, full.lm_head.weight)  # lm_head and embeddings stay 16-bit


def test_offloaded_embeddings_stay_on_the_host_and_change_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    """offload_embeddings: the input table is a buffer in host memory (no parameter, so DDP and the
    optimizer never see it) under its usual name; logits still match transformers, decoding is
    unchanged, and a quant cache written without offloading is read by an offloaded load."""
    import lora
    import quant

    path, hf = tiny_checkpoint
    ours = loader.load_model(path, offload_embeddings=True)
    assert isinstance(ours.model.embed_tokens, HostEmbedding)
    assert "model.embed_tokens.weight" in ours.state_dict()
    assert "model.embed_tokens.weight" not in dict(ours.named_parameters())
    ids, mask = _ids(2, 11), _left_mask([11, 6], 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=TOL)
    plain = loader.load_model(path, quantize="nf4", quant_cache=tmp_path / "qc")
    monkeypatch.setattr(quant.Linear4bit, "quantize_", lambda *a: pytest.fail("quant cache not used"))
    offloaded = loader.load_model(path, quantize="nf4", quant_cache=tmp_path / "qc", offload_embeddings=True)
    assert torch.equal(offloaded.model.embed_tokens.weight, plain.model.embed_tokens.weight)
    assert torch.equal(offloaded.generate(ids, attention_mask=mask, max_new_tokens=5),
                       plain.generate(ids, attention_mask=mask, max_new_tokens=5))
    with pytest.raises(ValueError, match="embed_tokens has no parameters to train"):
        lora.apply_lora(offloaded, modules_to_save=["embed_tokens"])


def test_offloaded_embeddings_placement_and_refusal_when_tied():
    """Built for a device (meta stands in for the GPU here), every tensor goes there except the
    embedding table, which stays on the CPU. A tied model cannot offload: lm_head reads it all."""
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    model = loader.random_model(config, device="meta", quantize="nf4", offload_embeddings=True)
    where = {name: t.device.type for name, t in model.state_dict().items()}
    assert where.pop("model.embed_tokens.weight") == "cpu" and set(where.values()) == {"meta"}
    config.tie_word_embeddings = True
    with pytest.raises(ValueError, match="offload_embeddings needs untied embeddings"):
        loader.random_model(config, offload_embeddings=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the table on the host, the model on it")
def test_offloaded_embeddings_on_a_gpu(tiny_checkpoint):
    path, hf = tiny_checkpoint
    ours = loader.load_model(path, device="cuda", offload_embeddings=True)
    assert ours.model.embed_tokens.weight.device.type == "cpu" and ours.lm_head.weight.is_cuda
    ids = _ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids.cuda()).cpu(), hf(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA graph capture")
@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_cuda_graph_decoding_equals_the_loop_on_a_gpu(tiny_checkpoint, quantize):
    path, _ = tiny_checkpoint
    model = loader.load_model(path, device="cuda", quantize=quantize)
    ids, mask = (t.cuda() for t in _stopping_prompt())
    kw = dict(attention_mask=mask, max_new_tokens=8, eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(model.generate(ids, static=True, **kw), model.generate(ids, **kw))
