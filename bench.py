"""Micro-benchmarks: each measures one piece of the system and prints a table.

    python bench.py kernels   # NF4 kernels (fused, dequantize + cuBLAS) vs bf16 matmul and bitsandbytes
    python bench.py fused     # fused RMSNorm, RoPE, SwiGLU kernels vs their PyTorch references
    python bench.py model     # hand-written Qwen2 vs transformers' Qwen2, same weights
    python bench.py data      # pose cache -> padded batches, and `prepare` files/s
    python bench.py train     # full QLoRA training steps at a config's shape
    python bench.py decode    # batch-1 greedy decoding, 16-bit vs NF4, share of memory bandwidth

Figures worth keeping go to BENCHMARKS.md with the machine, the date and the command.
This file is the command line and the benchmarks of single pieces; `train` is in benchmarks/training.py,
the shapes `train` and `decode` run at in benchmarks/shapes.py. They measure; they hold no logic the
product needs.
"""
import argparse
import sys

from benchmarks.shapes import GPU_PEAKS, QWEN25_SHAPES, bench_shape
from benchmarks.training import bench_train


def bench_kernels(args):
    """The NF4 kernels at Qwen2.5-7B/14B layer shapes (N = out, K = in) and M = batch x tokens rows:
    nf4_kernels.benchmark, whose docstring says what each row is and how it is timed (fused kernels,
    dequantize + cuBLAS, 16-bit cuBLAS, bitsandbytes). Peaks assumed for the % columns: H100 SXM
    3.35 TB/s and 989 dense bf16 TFLOP/s, H200 4.8 TB/s and 989 TFLOP/s (datasheets). On a CPU only
    the torch path runs, on one shape: that tests this script; its times say nothing about a GPU."""
    import os

    import torch

    from kernels import nf4_kernels

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="bench.py kernels")
    p.add_argument("--shapes", default="3584x3584,18944x3584,3584x18944,13824x5120" if cuda else "3584x3584",
                   help="comma-separated NxK (out x in)")
    p.add_argument("--m", default="1,2,16,512,4096" if cuda else "1,16", help="comma-separated row counts M")
    p.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true", help="smoke run: 256x512, M=1,16")
    a = p.parse_args(args)
    if a.quick:
        a.shapes, a.m = "256x512", "1,16"
    dtype = getattr(torch, a.dtype)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, 1 thread)"
    if not cuda:
        torch.set_num_threads(1)  # other jobs on a small machine make multi-threaded timings erratic
    peak = next((v for k, v in {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}.items() if k in name), None)
    print(f"device: {name}, {dtype}, torch {torch.__version__}, peak assumed: "
          + (f"{peak[0] / 1e12:.2f} TB/s, {peak[1] / 1e12:.0f} TFLOP/s" if peak else "unknown (no % columns)"))
    return nf4_kernels.benchmark([tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")],
                                 [int(v) for v in a.m.split(",")], dtype, peak)


def bench_fused(args):
    """The fused RMSNorm, RoPE and SwiGLU kernels against their PyTorch references at a layer's
    shape (default Qwen2.5-7B's, 4096 positions): fused_ops.benchmark, whose docstring says how.
    On a CPU only the references run, at a small shape: that tests this script."""
    import torch

    from kernels import fused_ops

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="bench.py fused")
    p.add_argument("--tokens", type=int, default=4096 if cuda else 256, help="positions (rows)")
    p.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quick", action="store_true", help="smoke run: 64 positions of a 256-wide layer")
    a = p.parse_args(args)
    if not cuda:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if cuda else "CPU (1 thread)"
    print(f"device: {name}, {a.dtype}, torch {torch.__version__}")
    shape = ({"tokens": 64, "hidden": 256, "intermediate": 512, "heads": (4, 2), "head_dim": 64} if a.quick
             else {"tokens": a.tokens})
    return fused_ops.benchmark(**shape, dtype=getattr(torch, a.dtype))


def bench_model(args):
    """Hand-written Qwen2 (model.py) vs transformers' Qwen2ForCausalLM (attn_implementation="sdpa"),
    same weights, float32 on the CPU: a forward, and a training step (forward + cross-entropy +
    backward) without and with a right-padded attention_mask (what training batches carry).
    Default shape (issue 2): 4 layers, hidden 512, 8 heads / 2 kv heads, intermediate 1376, vocab
    32000, batch 4 x 256, 2 threads. Times are medians over --reps, the two models interleaved so
    that load from other processes on the machine hits both alike."""
    import statistics
    import time

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM
    from transformers import Qwen2Config as HFConfig

    from model import Qwen2, Qwen2Config

    p = argparse.ArgumentParser(prog="bench.py model")
    for flag, default in [("layers", 4), ("hidden", 512), ("heads", 8), ("kv_heads", 2), ("intermediate", 1376),
                          ("vocab", 32000), ("batch", 4), ("seq", 256), ("threads", 2), ("reps", 10)]:
        p.add_argument(f"--{flag}", type=int, default=default)
    a = p.parse_args(args)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                 num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                 max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf_cfg = HFConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    theirs = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.float32).train()
    assert theirs.config._attn_implementation == "sdpa"
    ours = Qwen2(Qwen2Config(**shape, rope_theta=1e6)).train()
    ours.load_state_dict(theirs.state_dict())  # strict: same names, same weights

    ids = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = torch.randint(0, a.vocab, (a.batch, a.seq))
    padded = (torch.arange(a.seq)[None] < torch.linspace(a.seq // 2, a.seq, a.batch).long()[:, None]).long()
    runs = {"ours": lambda mask: ours(ids, attention_mask=mask),
            "transformers": lambda mask: theirs(ids, attention_mask=mask).logits}
    with torch.no_grad():
        diff = (runs["ours"](padded) - runs["transformers"](padded))[padded.bool()].abs().max().item()

    def forward(name, mask):
        with torch.no_grad():
            runs[name](mask)

    def train_step(name, mask):
        targets = labels if mask is None else labels.masked_fill(mask == 0, -100)  # no loss on pads
        F.cross_entropy(runs[name](mask).view(-1, a.vocab), targets.view(-1)).backward()
        (ours if name == "ours" else theirs).zero_grad(set_to_none=True)

    cases = [("forward", forward, None), ("train step", train_step, None),
             ("train step, right-padded mask", train_step, padded)]
    times = {(case, name): [] for case, _, _ in cases for name in runs}
    for rep in range(a.reps + 1):  # rep 0 warms up
        for case, fn, mask in cases:
            for name in runs:
                t0 = time.perf_counter()
                fn(name, mask)
                if rep:
                    times[case, name].append(time.perf_counter() - t0)

    print(f"Qwen2 {a.layers} layers, hidden {a.hidden}, heads {a.heads}/{a.kv_heads} kv, intermediate "
          f"{a.intermediate}, vocab {a.vocab}; batch {a.batch} x {a.seq}; float32, {a.threads} threads, "
          f"torch {torch.__version__}; max |logits diff| {diff:.1e}; median of {a.reps}")
    print(f"{'case':<32}{'ours ms':>10}{'transformers ms':>17}{'ours/theirs':>13}")
    for case, _, _ in cases:
        mine, ref = (statistics.median(times[case, n]) * 1e3 for n in runs)
        print(f"{case:<32}{mine:>10.1f}{ref:>17.1f}{mine / ref:>13.2f}")


def bench_data(args):
    """`prepare` files/s on iSign-like .pose files (576 points, 25 fps, 60..330 frames, cut and
    tiled from the real fixture), then samples/s from the cache into padded training batches."""
    import math
    import tempfile
    import time
    from functools import partial
    from pathlib import Path

    import numpy as np
    import torch
    from pose_format import Pose

    import batches
    import data
    import tokenizer

    p = argparse.ArgumentParser(prog="bench.py data")
    p.add_argument("--clips", type=int, default=300, help="pose files written and prepared")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4, help="passes over the cache per loader setting")
    fixture = Path(__file__).resolve().parent.parent / "shared/fixtures/poses/holistic_576.pose"
    p.add_argument("--fixture", default=str(fixture))
    a = p.parse_args(args)
    torch.set_num_threads(1)
    words = "the boy girl mother gives a red ball where is train station we will not go to school tomorrow".split()
    rng = np.random.default_rng(0)
    src = Pose.read(Path(a.fixture).read_bytes())
    lengths = rng.integers(60, 331, a.clips)   # iSign-like: mean ~195 after max_frames=300
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        (root / "poses").mkdir(parents=True)
        rows = []
        for k, n in enumerate(lengths):
            body = src.body.select_frames(list(np.arange(n) % src.body.data.shape[0]))
            with open(root / "poses" / f"v{k // 10:04d}--{k % 10}.pose", "wb") as f:
                Pose(src.header, body).write(f)
            rows.append(f"v{k // 10:04d}--{k % 10}," + " ".join(rng.choice(words, rng.integers(5, 16))))
        (root / "iSign_v1.1.csv").write_text("uid,text\n" + "\n".join(rows) + "\n")
        mb = sum(f.stat().st_size for f in (root / "poses").iterdir()) / 2**20
        print(f"corpus: {a.clips} files, {mb:.0f} MiB, mean {lengths.mean():.0f} frames")
        for workers in (1, 2):
            cfg = data.DataConfig(data_dir=str(root), cache_dir=f"{tmp}/cache{workers}", split_ratios=(1, 0, 0))
            t0 = time.perf_counter()
            s = data.prepare(cfg, workers=workers, progress=False)
            dt = time.perf_counter() - t0
            print(f"prepare  workers={workers}: {s['ok'] / dt:7.1f} files/s  ({s['ok']} files, {dt:.1f} s)")

        tok = tokenizer.train_bpe([" ".join(words)] * 10, 300, f"{tmp}/tok")
        def per_pose(t):   # PoseEncoder: two stride-2 convolutions
            return math.ceil(math.ceil(t / 2) / 2)
        for augment, num_workers in ((False, 0), (True, 0), (True, 2)):
            ds = batches.SignDataset(cfg, "train", tok, augment=augment)
            sampler = batches.BucketSampler(ds.lengths, a.batch_size, seed=0)
            loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                                                 persistent_workers=num_workers > 0,
                                                 collate_fn=partial(batches.collate, tokenizer=tok,
                                                                    tokens_per_pose=per_pose))
            n, t0 = 0, time.perf_counter()
            for epoch in range(a.epochs):
                sampler.set_epoch(epoch)
                for batch in loader:
                    n += len(batch["uids"])
            dt = time.perf_counter() - t0
            print(f"loader   augment={augment!s:5} num_workers={num_workers}: {n / dt:7.0f} samples/s "
                  f"(batch {a.batch_size}, poses {tuple(batch['poses'].shape)}, {n} samples)")


def weight_bytes_per_token(llm) -> int:
    """Bytes of weights one decoding step reads: every tensor once (a tied lm_head once), except the
    embedding matrix of an untied model, of which it reads one row per token."""
    tensors = list(llm.named_parameters()) + list(llm.named_buffers())  # a tied weight is listed once
    return sum(t.numel() * t.element_size() for name, t in tensors
               if name != "model.embed_tokens.weight" or llm.config.tie_word_embeddings)


def bench_decode(args):
    """Batch-1 greedy decoding with the KV cache (model.Qwen2.generate) at a config's shape (as
    bench.py train finds it; by default 7B on a GPU, 0.5B on the CPU) with random weights: NF4
    projections vs 16-bit.

        python bench.py decode --shape 7B

    --modes loop,static: the Python decoding loop, and generate(static=True) (StaticDecoder: one
    CUDA graph per call, replayed per token; eager on the CPU). ms per new token = (time(prompt +
    N new) - time(prompt + 2 new)) / (N - 2): the prefill and the graph's capture are left out.
    Bytes per token: weight_bytes_per_token (KV cache reads, < 1% at these lengths, not counted);
    bytes / time is the bandwidth achieved, shown as a share of the GPU's (GPU_PEAKS).
    bf16 on a GPU (medians of 3 runs), float32 on the CPU (tests only that the script works)."""
    import statistics
    import time

    import torch

    from config import load_config
    import loader

    p = argparse.ArgumentParser(prog="bench.py decode", allow_abbrev=False)
    p.add_argument("--config", help="a configs/*.py file (its model_dir / init_model / model_repo shape)")
    p.add_argument("--shape", help=f"a Qwen2.5 shape: {', '.join(QWEN25_SHAPES)} (default without --config: 7B on "
                   "a GPU, 0.5B on the CPU)")
    p.add_argument("--layers", type=int, help="keep only the first N layers")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens")
    p.add_argument("--quantize", default="none,nf4",
                   help="comma-separated: none (16-bit), nf4; the first is the baseline")
    p.add_argument("--modes", default="loop,static", help="comma-separated: loop (Python loop), static (CUDA graph)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    a, overrides = p.parse_known_args(args)
    if a.new < 3:
        raise SystemExit("bench.py decode: --new must be at least 3 (the time per token is a difference)")
    cfg = load_config(([a.config] if a.config else []) + overrides)
    default = "7B" if torch.cuda.is_available() else "0.5B"  # 7B in float32 would not fit a small CPU machine
    config, source = bench_shape(cfg, a.shape or (None if a.config else default), random_weights=True)
    if a.layers:
        config.num_hidden_layers = a.layers
    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    if not cuda:
        torch.set_num_threads(a.threads)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({a.threads} threads)"
    bandwidth = next((v[1] for k, v in GPU_PEAKS.items() if k in name), None) if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"device: {name}, {dtype}, torch {torch.__version__}; peak bandwidth assumed: "
          f"{f'{bandwidth / 1e12:.2f} TB/s' if bandwidth else 'unknown'}")
    print(f"model: {source}, {config.num_hidden_layers} layers, random weights; batch 1, greedy, prompt "
          f"{a.prompt} tokens, {a.new} new tokens")
    print(f"{'weights':<10}{'mode':<8}{'ms/token':>10}{'tokens/s':>10}{'GB/token':>10}{'GB/s':>8}{'%BW':>6}"
          f"{'speedup':>9}  (vs the first row)")
    first = None
    for q in a.quantize.split(","):
        torch.manual_seed(0)
        llm = loader.random_model(config, dtype, device, None if q == "none" else q)
        ids = torch.randint(0, config.vocab_size, (1, a.prompt), device=device)
        for mode in a.modes.split(","):
            def seconds(n: int, llm=llm, ids=ids, static: bool = mode == "static") -> float:
                times = []
                for _ in range(3 if cuda else 1):
                    sync()
                    t0 = time.perf_counter()
                    llm.generate(ids, max_new_tokens=n, eos_token_id=-1, static=static)  # -1: never stops
                    sync()
                    times.append(time.perf_counter() - t0)
                return statistics.median(times)

            seconds(3)  # warm-up: kernel autotuning, allocator
            per_token = (seconds(a.new) - seconds(2)) / (a.new - 2)
            nbytes = weight_bytes_per_token(llm)
            first = first or per_token
            share = f"{100 * nbytes / per_token / bandwidth:6.0f}" if bandwidth else f"{'-':>6}"
            print(f"{'NF4' if q == 'nf4' else '16-bit':<10}{mode:<8}{per_token * 1e3:10.2f}{1 / per_token:10.1f}"
                  f"{nbytes / 1e9:10.2f}{nbytes / per_token / 1e9:8.0f}{share}{first / per_token:8.2f}x")
        llm = None  # free the weights before the next model is built
        if cuda:
            torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = {"kernels": bench_kernels, "fused": bench_fused, "model": bench_model, "data": bench_data,
               "train": bench_train, "decode": bench_decode}
    parser.add_argument("what", choices=list(benches))
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in benches:  # the top-level help, or the error naming the choices
        parser.parse_args(argv)
    benches[argv[0]](argv[1:])  # its own parser: `bench.py model --help` shows the model options


if __name__ == "__main__":
    sys.exit(main())
