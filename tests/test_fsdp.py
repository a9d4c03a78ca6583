"""--fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) on the CPU, in real two-process torchrun jobs
(gloo), checked against DDP runs of the same config, not against FSDP's own averaging (on gloo
its AVG reduce-scatter sums: pytorch issue 162338); exact resumption; checkpoints that DDP and
eval.py read; and sharded loading against a whole-model load (tests/shard_worker.py)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import config
import eval as ev
import loader
import quant
import sharding
import train
from conftest import make_hf_checkpoint
from test_resume import assert_same, copy_run
from train_helpers import ROOT, assets, metrics, tensors, tiny_args, torchrun

# Validation on 5 clips: 3 on rank 0, 2 on rank 1 (FSDP must keep them in step); a NaN loss on
# rank 1 at step 3, skipped by both; the test split decoded at the end.
RUN = dict(eval_samples=5, test_at_end=True)
NAN = {"TRAIN_TEST_NAN": "2:1"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


def run(shared, out, env=None, **overrides):
    res = torchrun(tiny_args(shared, out, **{**RUN, **overrides}), env={**NAN, **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ddp(shared, tmp_path_factory):
    return run(shared, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp(shared, tmp_path_factory):
    return run(shared, tmp_path_factory.mktemp("fsdp"), fsdp=True)


def log(run_dir, rank=0) -> str:
    return (run_dir / "logs" / f"rank{rank}.log").read_text()


def test_fsdp_and_ddp_end_with_the_same_trained_tensors_and_losses(ddp, fsdp):
    a, b = tensors(ddp / "ckpt-000012"), tensors(fsdp / "ckpt-000012")
    assert a.keys() == b.keys() and any(".lora_A." in k for k in a) and any(k.startswith("encoder.") for k in a)
    # The gradient norm (clipping) is summed in another order: float32 round-off, which AdamW's
    # m / sqrt(v) turns into ~1e-6 absolute in parameters whose gradients are tiny (a bias that
    # starts at 0 moves by up to lr = 3e-3 a step whatever its gradient's size)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = lambda r, key: [m[key] for m in metrics(r) if key in m]
    assert rows(fsdp, "skipped") == rows(ddp, "skipped") and rows(fsdp, "skipped")[-1] == 1
    for key in ("loss", "val_loss", "grad_norm"):  # grad_norm: AdamW and clipping would hide a sum for a mean
        torch.testing.assert_close(rows(fsdp, key), rows(ddp, key), rtol=1e-5, atol=0, equal_nan=True)
    for r in (0, 1):
        assert "step 2: non-finite loss" in log(fsdp, r)
    # (the test split's translations are checked against eval.py's in one process, below)


def test_each_rank_holds_half_the_model(ddp, fsdp):
    held = lambda r: int(re.search(r"local model bytes: (\d+)", log(r)).group(1))
    assert 0.45 < held(fsdp) / held(ddp) < 0.55  # the chunks of 2 ranks (and a few replicated buffers)
    assert re.search(r"planned per-cpu peak: .* = model .* \+ gathered for compute .*", log(fsdp))


def test_fsdp_resume_after_sigterm_is_bitwise(shared, fsdp, tmp_path):
    out = tmp_path / "preempted"
    run(shared, out, env={"TRAIN_TEST_SIGTERM": "4:1"}, fsdp=True)
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000005"]
    run(shared, out, fsdp=True, resume="auto")
    assert_same(tensors(out / "ckpt-000012"), tensors(fsdp / "ckpt-000012"))


def test_fsdp_checkpoint_resumes_under_ddp_on_one_process_and_evaluates(shared, fsdp, tmp_path, capsys):
    out = tmp_path / "one-process"
    copy_run(fsdp, out, ["ckpt-000006"])
    assert train.main(tiny_args(shared, out, **{**RUN, "test_at_end": False}, resume="auto")) == 0
    assert "was saved by 2 ranks, now 1" in log(out) and "resumed from" in log(out)
    assert [m["step"] for m in metrics(out) if "loss" in m][-1] == 12
    # eval.py, one process, on the FSDP run's best checkpoint: what the run decoded at its end, in
    # step over two ranks (and with shuffled poses too)
    capsys.readouterr()
    ev.main([str(fsdp), "--batch_size", "4", "--out", str(tmp_path / "predictions.jsonl")])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 6
    by_uid = lambda path: {r["uid"]: r for r in map(json.loads, path.read_text().splitlines())}
    (at_end,) = fsdp.glob("predictions-test-*.jsonl")  # train.py's test_at_end: rank by rank
    assert by_uid(tmp_path / "predictions.jsonl") == by_uid(at_end)


# ----------------------------------------------------------------------------- sharded loading

def load_in_shards(out, model_dir, **overrides) -> list[tuple[dict, dict]]:
    """tests/shard_worker.py on 2 ranks: each rank's local tensors and its record."""
    args = [f"--model_dir={model_dir}", *(f"--{k}={v}" for k, v in overrides.items())]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "shard_worker.py"), str(out), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return [(load_file(str(out / f"rank{r}.safetensors")), json.loads((out / f"rank{r}.json").read_text()))
            for r in (0, 1)]


def check_against_whole(shards, whole, offload_embeddings=False):
    """Every rank's chunk equals the matching rows (FSDP's torch.chunk split) of a whole-model load:
    the packed bytes, absmax, double-quant codes, scales and offset, norms, biases, embeddings."""
    nbytes = lambda t: t.numel() * t.element_size()
    base = {f"{name}.{k}" for name, m in whole.named_modules() if isinstance(m, quant.Linear4bit)
            for k in ("weight", "absmax", "absmax_scale")}
    half = sum(nbytes(t) for name, t in whole.state_dict().items() if name in base) / 2
    wrapped = "|".join(config.TrainConfig().lora_targets)   # shard_worker.py's: the default targets
    for r, (local, _) in enumerate(shards):
        held = 0
        for name, t in whole.state_dict().items():
            ours = local[re.sub(rf"({wrapped})\.", r"\1.base.", name)]  # LoRA-wrapped here
            whole_here = t.dim() == 0 or (offload_embeddings and "embed_tokens" in name)
            expected = t if whole_here else t[sharding.local_rows(len(t), r, 2)]
            assert ours.dtype == expected.dtype and torch.equal(ours, expected), (r, name)
            held += nbytes(ours) if name in base else 0
        # the frozen 4-bit base held per rank: half of the whole (chunks of ceil(n / 2): 1 element more or less)
        assert abs(held - half) <= 4 * len(base), (r, held, half)


def check_reads(shards):
    """Each rank reads its rows of every tensor (at most one more at each end, under a 4-bit
    chunk that starts or ends inside a row), never all of them, and makes no float tensor larger
    than its largest read: it never holds a 16-bit matrix it does not own."""
    for _, record in shards:
        for name, start, stop, rows, numel in record["reads"]:
            assert stop - start <= -(-rows // 2) + 2 < rows, (name, start, stop, rows)
        assert 0 < record["largest_float"] <= max(r[-1] for r in record["reads"])


def test_sharded_loading_equals_rows_of_whole_load_and_reads_only_them(tmp_path):
    """105 intermediate columns and a 129-row vocabulary: uneven chunks, and the NF4 blocks of the
    down projection (105 inputs) run across rows; then the same load from the per-rank quant cache
    (no projection read: only the 16-bit tensors); then double quantization with the embedding
    table in host memory (whole on each rank). The sharded model's logits are the whole one's."""
    path, _ = make_hf_checkpoint(tmp_path / "ckpt", intermediate_size=105, vocab_size=129)
    whole = loader.load_model(path, quantize="nf4")
    ids = torch.arange(12).reshape(2, 6) % 129
    with torch.no_grad():
        logits = whole(input_ids=ids)
    cache = tmp_path / "qcache"
    first = load_in_shards(tmp_path / "first", path, quant_cache=cache, modules_to_save="['lm_head']")
    check_against_whole(first, whole)
    check_reads(first)
    assert sorted(p.name.split("-")[-1] for p in cache.iterdir()) == ["shard0of2.safetensors", "shard1of2.safetensors"]
    for _, record in first:
        assert torch.equal(torch.tensor(record["logits"]), logits)
    again = load_in_shards(tmp_path / "again", path, quant_cache=cache, modules_to_save="['lm_head']")
    for (a, _), (b, record) in zip(first, again):
        assert_same(a, b)
        read = {name for name, *_ in record["reads"]}
        assert read and not any(name.endswith("_proj.weight") for name in read), sorted(read)
    dq_whole = loader.load_model(path, quantize="nf4", double_quant=True, offload_embeddings=True)
    dq = load_in_shards(tmp_path / "dq", path, double_quant=True, offload_embeddings=True)
    check_against_whole(dq, dq_whole, offload_embeddings=True)
    with torch.no_grad():
        dq_logits = dq_whole(input_ids=ids)
    for _, record in dq:
        assert torch.equal(torch.tensor(record["logits"]), dq_logits)


def test_sharded_loading_of_tied_embeddings_with_lm_head_trained(tmp_path):
    """A tied checkpoint (no lm_head.weight in the file) with lm_head in modules_to_save: LoRA unties
    it (as PEFT does), so each rank's lm_head chunk is a float32 copy of its embedding rows."""
    path, _ = make_hf_checkpoint(tmp_path / "ckpt", vocab_size=129, tie_word_embeddings=True)
    whole = loader.load_model(path, quantize="nf4")
    for r, (local, _) in enumerate(load_in_shards(tmp_path / "tied", path, modules_to_save="['lm_head']")):
        rows = whole.model.embed_tokens.weight[sharding.local_rows(129, r, 2)]
        assert torch.equal(local["model.embed_tokens.weight"], rows)
        assert local["lm_head.weight"].dtype == torch.float32 and torch.equal(local["lm_head.weight"], rows)


# ----------------------------------------------------------------------------- the large configs

QWEN_CONFIGS = ROOT.parent / "shared" / "fixtures" / "qwen_configs"  # published config.json files


@pytest.mark.parametrize("config_file, published", [
    ("qwen72b.py", "Qwen2.5-72B-Instruct.json"), ("qwen2_72b.py", "Qwen2-72B.json"),
    ("qwen2_7b.py", "Qwen2-7B.json"), ("qwen32b.py", "Qwen2.5-32B.json")])
def test_large_configs_load_a_real_layout_checkpoint_at_tiny_width(config_file, published, tmp_path):
    """The published config.json with its widths shrunk (same fields otherwise: eps, rope_theta,
    sliding-window keys, vocabulary), a checkpoint transformers writes for it (sharded, with an
    index, as on the Hub), then the config file's own load settings. Logits equal transformers'
    in 16 bits; the 4-bit load takes the config's quantize / double_quant / offload_embeddings."""
    from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM

    import config
    if not (QWEN_CONFIGS / published).is_file():
        pytest.fail(f"published Qwen configs not found in {QWEN_CONFIGS}")
    fields = json.loads((QWEN_CONFIGS / published).read_text())
    ratio = fields["num_attention_heads"] // fields["num_key_value_heads"]
    fields.update(hidden_size=16 * ratio, intermediate_size=48 * ratio, num_hidden_layers=2,
                  num_attention_heads=ratio, num_key_value_heads=1)  # head_dim 16, the GQA ratio kept
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(HFConfig(**fields)).eval()
    hf.save_pretrained(tmp_path, max_shard_size="20MB")
    (tmp_path / "config.json").write_text(json.dumps(fields))  # the published fields, not transformers' rewrite
    assert (tmp_path / "model.safetensors.index.json").is_file()
    cfg = config.load_config([str(ROOT / "configs" / config_file), f"--model_dir={tmp_path}"])
    ours = loader.load_model(tmp_path)
    assert (ours.config.rms_norm_eps, ours.config.rope_theta, ours.config.vocab_size) == \
        (fields["rms_norm_eps"], fields["rope_theta"], fields["vocab_size"])
    ids = torch.tensor([[1, 5, 9, 151643, 7]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids), hf(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        nf4 = loader.load_model(tmp_path, quantize=cfg.quantize, double_quant=cfg.double_quant,
                                offload_embeddings=cfg.offload_embeddings)
        assert torch.isfinite(nf4(input_ids=ids)).all()
    assert any(isinstance(m, quant.Linear4bit) for m in nf4.modules()) and cfg.offload_embeddings
    assert cfg.fsdp == (config_file != "qwen2_7b.py")
