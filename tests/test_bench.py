"""bench.py train and decode run end to end on the CPU at the tiny config's shape, so CI knows the
GPU scripts work. Their times are not checked (speed targets live in BENCHMARKS.md); the token and
FLOP counts they report are checked against counts made by hand."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
from benchmarks import shapes
from benchmarks import training
import loader

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")
HF_STACK = all(importlib.util.find_spec(m) for m in ("transformers", "peft", "bitsandbytes"))


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_train_tiny_both_stacks(tmp_path, capsys, restore_threads):
    """2 timed steps of ours and of transformers + PEFT + bitsandbytes on configs/tiny.py's shape
    (hidden 128, 2 layers, vocab 1024, LoRA r16 on all seven projections, embed/lm_head trained)."""
    results = training.bench_train(["--config", TINY, "--random-weights", "--steps", "2", "--warmup", "0",
                                 "--batch", "2,1", "--frames", "64", f"--model_dir={tmp_path / 'none'}",
                                 "--stacks", "ours,hf" if HF_STACK else "ours"])
    out = capsys.readouterr().out
    assert "the config's init_model: 2 layers, hidden 128" in out
    # By hand: clips of 58 and 70 frames (64 +-10%) give ceil(T/4) = 15 and 18 soft tokens in place of
    # the 38-token prompt's one placeholder; answers of 20 and 40 tokens, each + an end token.
    tokens, labels = (37 + 15 + 21) + (37 + 18 + 41), 21 + 41
    # Per layer: q, o 128x128; k, v 128x64; gate, up, down 128x384. LoRA r16 on all: 16 x (in + out).
    frozen = 2 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 384)
    lora = 2 * 16 * (2 * 256 + 2 * 192 + 3 * 512)
    flops = tokens * (4 * frozen + 6 * lora) + labels * 6 * 128 * 1024  # lm_head is trained here
    # Batch 1: one clip of 64 frames (16 soft tokens) and 30 answer tokens + the end token.
    tokens1, labels1 = 37 + 16 + 31, 31
    flops1 = tokens1 * (4 * frozen + 6 * lora) + labels1 * 6 * 128 * 1024
    for stack in ("ours", "hf") if HF_STACK else ("ours",):
        assert list(results[stack]) == [2, 1], stack  # one model, both sizes
        r = results[stack][2]
        assert (r["tokens"], r["label_tokens"], r["flops"]) == (tokens, labels, flops), stack
        assert r["step_s"] > 0 and r["peak_gib"] > 0 and 0 < r["loss"] < 10, (stack, r)
        r = results[stack][1]
        assert (r["tokens"], r["label_tokens"], r["flops"], r["batch"]) == (tokens1, labels1, flops1, (1, 84)), stack
    assert "ours (NF4 + LoRA)" in out and ("transformers+PEFT+bnb NF4" in out) == HF_STACK
    assert ("batch 2: ours / theirs" in out) == HF_STACK


def test_bench_decode_tiny(tmp_path, capsys, restore_threads):
    bench.bench_decode(["--config", TINY, f"--model_dir={tmp_path / 'none'}", "--prompt", "8", "--new", "3"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("NF4", "16-bit"))]
    # times unchecked: 3 tokens on a busy CPU can even read < 0
    assert [r[:2] for r in rows] == [["16-bit", "loop"], ["16-bit", "static"], ["NF4", "loop"], ["NF4", "static"]]


def test_weight_bytes_per_token():
    """Qwen2.5-7B's shape: 16-bit projections 2 bytes per weight; NF4 half a byte plus a float32 absmax
    per 64 weights; lm_head (untied) 2 bytes per weight; the embedding matrix not read; norms and
    q/k/v biases 2 bytes each (built on meta: no memory is used)."""
    config = shapes.qwen25_config("7B")
    h, i, v, L, kv = 3584, 18944, 152064, 28, 512
    proj = h * h * 2 + h * kv * 2 + 3 * h * i
    small = L * (2 * h + h + 2 * kv) + h  # two norms and q, k, v biases per layer; the final norm
    for quantize, per_weight in ((None, 2), ("nf4", 0.5 + 4 / 64)):
        with torch.device("meta"):
            llm = loader.random_model(config, torch.bfloat16, "meta", quantize)
        assert bench.weight_bytes_per_token(llm) == L * proj * per_weight + h * v * 2 + small * 2


def test_cpu_peak_counts_live_storages():
    """training.cpu_peak by hand: a 1 MiB tensor, then x + 1 (another MiB, both alive), then a view
    (no new storage) and an in-place add (none either); the model's 4 KiB and a tied copy once."""
    weight = torch.zeros(1024)
    tied = weight.view(32, 32)

    def step():
        x = torch.ones(1024, 256)
        y = x + 1
        y.view(-1).add_(1)
        del x, y
        torch.ones(10)  # after the peak: 40 bytes, freed at once

    peak, at = training.cpu_peak(step, [weight, tied])
    assert peak == 4096 + 2 * 2**20 and at == "aten.add.Tensor"


def test_bench_train_fsdp_under_torchrun(tmp_path):
    """bench.py train --fsdp on 2 processes (gloo): the model sharded as train.py --fsdp shards it,
    random weights drawn per rank; both ranks step on the batch of the single-process test above,
    so the job's tokens and labels per step are twice its hand counts."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "bench.py", "train",
           "--fsdp", "--config", TINY, "--random-weights", "--steps", "1", "--warmup", "0", "--batch", "2",
           "--frames", "64", f"--model_dir={tmp_path / 'none'}"]
    res = subprocess.run(cmd, cwd=Path(TINY).parents[1], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = re.findall(r"ours \(NF4 \+ LoRA, FSDP x2\)\s+2\s+2x\d+\s+(\d+)\s+(\d+)", res.stdout)
    assert rows == [("338", "124")], res.stdout[-2000:]  # rank 0's table only
