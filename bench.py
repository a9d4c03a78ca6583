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
    raise NotImplementedError("bench.py kernels: not written yet")


def bench_model(args):
    raise NotImplementedError("bench.py model: not written yet")


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
