"""Shared by test_train.py, test_eval.py and test_resume.py: a 40-clip synthetic corpus and a
one-layer random Qwen2 (made once per test session through train.py's own first-use path:
preflight.create_first_use_assets), and the command-line arguments of a tiny run on them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, vocab_size=600)


def assets(tmp_path_factory) -> Path:
    """Directory with corpus/ (40 clips, cache prepared) and base/ (tiny Qwen2 + BPE), once per session."""
    import config
    import data
    import preflight

    shared = tmp_path_factory.getbasetemp() / "tiny-assets"
    if not (shared / "base" / "config.json").is_file():
        cfg = config.load_config(tiny_args(shared, shared / "unused-run"))
        preflight.create_first_use_assets(cfg)
        data.ensure_cache(cfg.data)
    return shared


def tiny_args(shared: Path, out_dir: Path, **overrides) -> list[str]:
    """configs/tiny.py shrunk for tests: 1-layer 64-wide model, 2 x 4-clip micro-batches, 4-clip
    validation subset, short decoding. LoRA and encoder dropout stay on: resume must restore RNG.
    Gradient checkpointing is on, as in the GPU configs: DDP and exact resumption are tested
    through its recomputation (which must redraw the same dropout masks)."""
    values = dict(data_dir=str(shared / "corpus"), model_dir=str(shared / "base"), out_dir=str(out_dir),
                  synth_n=40, synth_seed=1, init_model=SMALL_MODEL,
                  split_ratios=(0.6, 0.2, 0.2), lora_r=4, lora_dropout=0.1,
                  encoder_width=32, batch_size=4, grad_accum=2, max_steps=12, warmup_steps=2, lr=3e-3,
                  encoder_lr=3e-3, eval_every=6, eval_samples=4, eval_batch_size=4, max_new_tokens=6,
                  save_every=6, keep_last=0, log_every=1, test_at_end=False, num_workers=0, cpu_threads=0,
                  gradient_checkpointing=True)
    values.update(overrides)
    return [str(ROOT / "configs" / "tiny.py")] + [f"--{k}={v}" for k, v in values.items()]


def torchrun(args: list[str], nproc: int = 2, env: dict | None = None,
             timeout: int = 180) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N train.py ARGS` on the CPU (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py"), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trained tensors and optimizer state, read straight from the files."""
    return {**load_file(str(ckpt / "trained.safetensors")),
            **{"opt/" + k: v for k, v in load_file(str(ckpt / "optimizer.safetensors")).items()}}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
