"""Micro-benchmarks: each measures one piece of the system and prints a table.

    python bench.py kernels   # NF4 matmul kernels vs bf16 matmul (and bitsandbytes if present)
    python bench.py model     # hand-written Qwen2 vs transformers' Qwen2, same weights
    python bench.py data      # pose cache -> padded batches, and `prepare` files/s
    python bench.py train     # full QLoRA training steps at a config's shape

Figures worth keeping go to BENCHMARKS.md with the machine, the date and the command.
This file measures; it holds no logic the product needs.
"""
import argparse
import sys


def bench_kernels(args):
    """NF4 matmuls at Qwen2.5-7B/14B layer shapes (N = out, K = in) and M = batch x tokens rows:
    the NF4 forward (Triton on a GPU; M <= 16 takes the split-K decode kernel) and backward dx,
    against the 16-bit matmul on the dequantized weight (cuBLAS on a GPU) and bitsandbytes'
    matmul_4bit when installed. GPU times: medians of triton.testing.do_bench (L2 flushed between
    runs). Bytes: packed weight + absmax (NF4) or the 16-bit weight, plus x and y. Peaks assumed:
    H100 SXM 3.35 TB/s and 989 dense bf16 TFLOP/s, H200 4.8 TB/s and 989 TFLOP/s. On a CPU only the
    torch path runs, on one shape: that tests this script; its times say nothing about a GPU."""
    import os
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    import quant

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="bench.py kernels")
    p.add_argument("--shapes", default="3584x3584,18944x3584,3584x18944,13824x5120" if cuda else "3584x3584",
                   help="comma-separated NxK (out x in)")
    p.add_argument("--m", default="1,16,512,4096" if cuda else "1,16", help="comma-separated row counts M")
    p.add_argument("--quick", action="store_true", help="smoke run: 256x512, M=1,16")
    a = p.parse_args(args)
    if a.quick:
        a.shapes, a.m = "256x512", "1,16"
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, 1 thread)"
    if not cuda:
        torch.set_num_threads(1)  # other jobs on a small machine make multi-threaded timings erratic
    peak = next((v for k, v in {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}.items() if k in name), None)
    bnb = None
    if cuda:  # bitsandbytes' 4-bit matmul is a GPU kernel; on the CPU it dequantizes like ours
        try:
            import bitsandbytes as bnb
            import bitsandbytes.functional as bnb_f
        except ImportError:
            pass

    def timed(fn) -> float:
        """Seconds per call (median)."""
        if cuda:
            import triton.testing
            return triton.testing.do_bench(fn, return_mode="median") * 1e-3
        fn()  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    print(f"device: {name}, {dtype}, torch {torch.__version__}, peak assumed: "
          + (f"{peak[0] / 1e12:.2f} TB/s, {peak[1] / 1e12:.0f} TFLOP/s" if peak else "unknown (no % columns)"))
    print(f"{'kernel':<20}{'N x K':>12}{'M':>6}{'ms':>10}{'TFLOP/s':>9}{'GB/s':>8}{'%BW':>6}{'%FLOP':>7}{'speedup':>9}")
    for n, k in [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]:
        torch.manual_seed(0)
        w = torch.randn(n, k, device=device, dtype=dtype) * 0.02
        packed, absmax = quant.quantize_nf4(w)
        w16 = quant.dequantize_nf4(packed, absmax, (n, k), 64, dtype)
        nf4, dense = packed.numel() + 4 * absmax.numel(), dtype.itemsize * n * k
        if bnb is not None:
            bnb_packed, bnb_state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
        matmul, matmul_dx = ((quant.nf4_matmul_triton, quant.nf4_matmul_dx_triton) if cuda
                             else (quant.nf4_matmul_torch, quant.nf4_matmul_dx_torch))
        backend = "triton" if cuda else "torch"
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.randn(m, k, device=device, dtype=dtype)
            dy = torch.randn(m, n, device=device, dtype=dtype)
            act = dtype.itemsize * m * (n + k)
            # (label, call, bytes moved, the 16-bit run it is compared with)
            runs = [("16-bit fwd", lambda: F.linear(x, w16), dense + act, None),
                    ("16-bit dx", lambda: dy @ w16, dense + act, None),
                    (f"{backend} nf4 fwd", lambda: matmul(x, packed, absmax, None, (n, k), 64), nf4 + act, "16-bit fwd"),
                    (f"{backend} nf4 dx", lambda: matmul_dx(dy, packed, absmax, (n, k), 64), nf4 + act, "16-bit dx")]
            if bnb is not None:
                runs.append(("bnb matmul_4bit fwd", lambda: bnb.matmul_4bit(x, bnb_packed.t(), bnb_state),
                             nf4 + act, "16-bit fwd"))
            seconds = {}
            for label, call, nbytes, baseline in runs:
                t = seconds[label] = timed(call)
                flops, bw = 2 * m * n * k / t, nbytes / t
                pct = f"{100 * bw / peak[0]:6.0f}{100 * flops / peak[1]:7.1f}" if peak else f"{'-':>6}{'-':>7}"
                speedup = f"{seconds[baseline] / t:8.2f}x" if baseline else ""
                print(f"{label:<20}{f'{n}x{k}':>12}{m:>6}{t * 1e3:10.3f}{flops / 1e12:9.3f}{bw / 1e9:8.1f}{pct}{speedup}")


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

    import model as M

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
    ours = M.Qwen2(M.Qwen2Config(**shape, rope_theta=1e6)).train()
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

    import data
    import tokenizer

    p = argparse.ArgumentParser(prog="bench.py data")
    p.add_argument("--clips", type=int, default=300, help="pose files written and prepared")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4, help="passes over the cache per loader setting")
    p.add_argument("--fixture", default=str(Path(__file__).resolve().parent.parent / "shared/fixtures/poses/holistic_576.pose"))
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
            ds = data.SignDataset(cfg, "train", tok, augment=augment)
            sampler = data.BucketSampler(ds.lengths, a.batch_size, seed=0)
            loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                                                 persistent_workers=num_workers > 0,
                                                 collate_fn=partial(data.collate, tokenizer=tok, tokens_per_pose=per_pose))
            n, t0 = 0, time.perf_counter()
            for epoch in range(a.epochs):
                sampler.set_epoch(epoch)
                for batch in loader:
                    n += len(batch["uids"])
            dt = time.perf_counter() - t0
            print(f"loader   augment={augment!s:5} num_workers={num_workers}: {n / dt:7.0f} samples/s "
                  f"(batch {a.batch_size}, poses {tuple(batch['poses'].shape)}, {n} samples)")


def bench_train(args):
    raise NotImplementedError("bench.py train: not written yet")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["kernels", "model", "data", "train"])
    args, rest = parser.parse_known_args(argv)
    {"kernels": bench_kernels, "model": bench_model, "data": bench_data, "train": bench_train}[args.what](rest)


if __name__ == "__main__":
    sys.exit(main())
