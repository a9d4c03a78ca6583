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
    raise NotImplementedError("bench.py data: not written yet")


def bench_train(args):
    raise NotImplementedError("bench.py train: not written yet")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["kernels", "model", "data", "train"])
    args, rest = parser.parse_known_args(argv)
    {"kernels": bench_kernels, "model": bench_model, "data": bench_data, "train": bench_train}[args.what](rest)


if __name__ == "__main__":
    sys.exit(main())
