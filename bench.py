"""Micro-benchmarks: each measures one piece of the system and prints a table.

    python bench.py kernels   # NF4 kernels (fused, dequantize + cuBLAS) vs bf16 matmul and bitsandbytes
    python bench.py fused     # fused RMSNorm, RoPE, SwiGLU kernels vs their PyTorch references
    python bench.py model     # hand-written Qwen2 vs transformers' Qwen2, same weights
    python bench.py data      # pose cache -> padded batches, and `prepare` files/s
    python bench.py train     # full QLoRA training steps at a config's shape
    python bench.py decode    # batch-1 greedy decoding, 16-bit vs NF4, share of memory bandwidth

Figures worth keeping go to BENCHMARKS.md with the machine, the date and the command.
This file measures; it holds no logic the product needs.
"""
import argparse
import sys


def bench_kernels(args):
    """The NF4 kernels at Qwen2.5-7B/14B layer shapes (N = out, K = in) and M = batch x tokens rows:
    nf4_kernels.benchmark, whose docstring says what each row is and how it is timed (fused kernels,
    dequantize + cuBLAS, 16-bit cuBLAS, bitsandbytes). Peaks assumed for the % columns: H100 SXM
    3.35 TB/s and 989 dense bf16 TFLOP/s, H200 4.8 TB/s and 989 TFLOP/s (datasheets). On a CPU only
    the torch path runs, on one shape: that tests this script; its times say nothing about a GPU."""
    import os

    import torch

    import nf4_kernels

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

    import fused_ops

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


# Qwen2.5 shapes (the config.json of each size on the Hugging Face hub; an -Instruct model has its
# base's shape): hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings, rms_norm_eps.
QWEN25_SHAPES = {
    "0.5B": (896, 4864, 24, 14, 2, 151936, True, 1e-6),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True, 1e-6),
    "3B": (2048, 11008, 36, 16, 2, 151936, True, 1e-6),
    "7B": (3584, 18944, 28, 28, 4, 152064, False, 1e-6),
    "14B": (5120, 13824, 48, 40, 8, 152064, False, 1e-5),
    "32B": (5120, 27648, 64, 40, 8, 152064, False, 1e-5),
}
# Dense bf16 tensor-core FLOP/s (no sparsity) and HBM bytes/s from NVIDIA's datasheets; the first
# name contained in torch.cuda.get_device_name() wins. Other devices: no MFU / bandwidth share.
GPU_PEAKS = {"H100 PCIe": (756e12, 2.0e12), "H100 NVL": (835e12, 3.9e12), "H100": (989e12, 3.35e12),
             "H200": (989e12, 4.8e12)}


def qwen25_config(size: str):
    import model as qwen
    if size not in QWEN25_SHAPES:
        raise SystemExit(f"bench.py: no Qwen2.5 shape {size!r}; known: {', '.join(QWEN25_SHAPES)}")
    h, i, n, nh, nkv, v, tied, eps = QWEN25_SHAPES[size]
    return qwen.Qwen2Config(vocab_size=v, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                            num_attention_heads=nh, num_key_value_heads=nkv, max_position_embeddings=32768,
                            rope_theta=1e6, rms_norm_eps=eps, tie_word_embeddings=tied)


def bench_shape(cfg, size: str | None, random_weights: bool):
    """(Qwen2Config, where it came from): --shape, else model_dir/config.json, else the config's
    init_model (tiny CPU configs), else the size named in model_repo ("Qwen/Qwen2.5-7B-Instruct")."""
    import re
    from pathlib import Path

    import loader
    import model as qwen
    ckpt = loader.model_path(cfg.model_dir) / "config.json"
    if not random_weights:
        if size or not ckpt.is_file():
            raise SystemExit(f"bench.py train: {ckpt} not found (or --shape given): pass --random-weights "
                             "to measure a random model of that shape")
        return qwen.Qwen2Config.from_json(ckpt), str(ckpt)
    if size:
        return qwen25_config(size), f"Qwen2.5-{size} shape (--shape)"
    if ckpt.is_file():
        return qwen.Qwen2Config.from_json(ckpt), str(ckpt)
    if cfg.init_model:
        spec = {k: v for k, v in cfg.init_model.items() if k != "initializer_range"}
        return qwen.Qwen2Config(**spec), "the config's init_model"
    found = re.search(r"-(\d+(?:\.\d+)?B)\b", cfg.model_repo)
    if not found:
        raise SystemExit(f"bench.py train: no checkpoint in {cfg.model_dir} and no size in model_repo "
                         f"{cfg.model_repo!r}: pass --shape ({', '.join(QWEN25_SHAPES)})")
    return qwen25_config(found.group(1)), f"Qwen2.5-{found.group(1)} shape (from model_repo)"


def ours_qlora(cfg, config, random_weights: bool, device, d=None):
    """(SignTranslator, tokenizer) from translator.build_model, the product's one assembly (base ->
    LoRA -> pose encoder); with random weights its base is loader.random_model, built with the
    dtype / quantization that build_model would load. Under FSDP (d: train.Dist) train.shard builds
    it, each rank loading (or drawing) only its chunks."""
    from types import SimpleNamespace

    import torch

    import loader
    import train
    import translator
    from tokenizer import Tokenizer

    if not random_weights:
        tok = Tokenizer.from_dir(loader.model_path(cfg.model_dir))
        return (train.shard(cfg, tok, d) if cfg.fsdp else translator.build_model(cfg, tok, device)), tok
    tok = SimpleNamespace(pose_token_id=config.vocab_size - 1, pad_id=0)  # all data.collate reads
    if cfg.fsdp:
        return train.shard(cfg, tok, d, random_shape=config), tok
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    llm = loader.random_model(config, dtype, device, None if cfg.quantize == "none" else cfg.quantize,
                              cfg.double_quant, offload_embeddings=cfg.offload_embeddings)
    return translator.build_model(cfg, tok, device, llm=llm), tok


def hf_qlora(cfg, config, pose_token_id: int, feature_dim: int, device):
    """The usual recipe on the same shape: transformers' Qwen2ForCausalLM (sdpa) with its linears in
    bitsandbytes 4-bit NF4 (blocksize 64, no double quantization, as ours; compute bf16 on GPUs,
    fp32 on the CPU), peft.prepare_model_for_kbit_training (which upcasts every non-4-bit weight,
    embeddings and lm_head included, to fp32), a PEFT LoRA of the same r / alpha / dropout /
    targets, and a linear pose projector. from_pretrained(quantization_config=...) needs a file
    of 16-bit weights, so the model is built as it builds one: on meta, linears replaced by
    transformers' replace_with_bnb_linear, then each weight created on the device and quantized
    by Params4bit(...).to(device), as transformers' Bnb4bitQuantize does while loading."""
    import bitsandbytes as bnb
    import torch
    import torch.nn.functional as F
    import transformers
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from torch import nn
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    import loader
    import translator

    class LinearPoseProjector(nn.Module):
        """The simple baseline encoder: 4 consecutive frames concatenated -> one linear -> a soft
        token; a clip gives ceil(T/4) tokens, as many as model.PoseEncoder (same sequence lengths)."""

        def __init__(self, in_features: int, hidden_size: int):
            super().__init__()
            self.proj = nn.Linear(4 * in_features, hidden_size)

        def forward(self, poses, pose_mask):
            B, T, Fd = poses.shape
            tokens = self.proj(F.pad(poses, (0, 0, 0, -T % 4)).reshape(B, -1, 4 * Fd))  # (B, ceil(T/4), H)
            mask = torch.arange(tokens.shape[1], device=poses.device) < (pose_mask.sum(1)[:, None] + 3) // 4
            return tokens * mask[..., None], mask

    class HFSignTranslator(nn.Module):
        """translator.SignTranslator's interface (forward(batch) -> translator.Losses; .llm, .encoder)
        over the PEFT model, so train.make_optimizer and train.train_step run both stacks alike.
        The loss is transformers' own: logits at every position, mean cross-entropy over labels."""

        def __init__(self, llm, encoder, pose_token_id: int):
            super().__init__()
            self.llm, self.encoder, self.pose_token_id = llm, encoder, pose_token_id

        def forward(self, batch, lm: bool = True):
            tokens, mask = self.encoder(batch["poses"], batch["pose_mask"])
            embeds = self.llm.get_input_embeddings()(batch["input_ids"])  # (B, T, H)
            embeds = translator.splice_pose_tokens(embeds, batch["input_ids"], self.pose_token_id, tokens, mask)
            out = self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"],
                           use_cache=False)
            n = (batch["labels"][:, 1:] != -100).sum()
            return translator.Losses(out.loss * n, n, torch.zeros((), device=n.device))

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=False)
    hf_config = transformers.Qwen2Config.from_dict(config.to_dict())
    with torch.device("meta"):
        llm = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa", dtype=dtype)
    replace_with_bnb_linear(llm, modules_to_not_convert=["lm_head"], quantization_config=quant)
    for module in llm.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            t = loader.init_weight_(name, torch.empty(p.shape, dtype=dtype, device=device))
            module._parameters[name] = (bnb.nn.Params4bit(t, requires_grad=False, **p.__dict__).to(device)
                                        if isinstance(p, bnb.nn.Params4bit) else nn.Parameter(t, requires_grad=False))
    if config.tie_word_embeddings:
        llm.lm_head.weight = llm.model.embed_tokens.weight
    llm.model.rotary_emb = Qwen2RotaryEmbedding(hf_config).to(device)  # its buffers were on meta
    llm.is_loaded_in_4bit = True  # what transformers' bnb quantizer sets; PEFT reads it
    llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                          gradient_checkpointing_kwargs={"use_reentrant": True})  # as ours
    llm = get_peft_model(llm, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                         target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM",
                                         modules_to_save=list(cfg.modules_to_save) or None))
    encoder = LinearPoseProjector(feature_dim, config.hidden_size).to(device)
    return HFSignTranslator(llm, encoder, pose_token_id)


def synthetic_batch(tok, prompt_ids: list[int], feature_dim: int, batch_size: int, frames: int,
                    text_tokens: tuple[int, int], vocab_size: int) -> dict:
    """A training batch as data.collate makes it: clip lengths spread over frames +-10% and answers over
    text_tokens (+ an end token) across the batch (a bucketed batch: similar lengths), random poses
    and token ids. The prompt holds one pose placeholder, expanded to the encoder's token count."""
    import torch

    import data
    import translator
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch_size):
        s = i / (batch_size - 1) if batch_size > 1 else 0.5
        n_frames, n_text = round(frames * (0.9 + 0.2 * s)), round(text_tokens[0] + s * (text_tokens[1] - text_tokens[0]))
        answer = torch.randint(1, vocab_size - 1, (n_text + 1,), generator=g).tolist()
        items.append(dict(uid=str(i), text="", poses=torch.randn(n_frames, feature_dim, generator=g),
                          prompt_ids=prompt_ids, answer_ids=answer))
    return data.collate(items, tok, translator.PoseEncoder.output_lengths)


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of the seven projections of one Qwen2 layer."""
    h, q, kv, i = config.hidden_size, config.num_attention_heads * config.head_dim, \
        config.num_key_value_heads * config.head_dim, config.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def train_flops(config, cfg, tokens: int, label_tokens: int) -> float:
    """Model FLOPs of one training step. A weight matrix of N entries applied to a token costs 2N
    in the forward, 2N for the input's gradient, and 2N more for its own gradient when it is
    trained: 4N per token for the frozen base's projections (4-bit or not), 6N for LoRA's A and B
    (r x (in + out) per wrapped projection), and lm_head (H x V, 4 or 6 if trained) at the label
    positions only. Not counted: attention scores (~4 T H per token per layer, < 1% at T ~ 130),
    the pose encoder (< 1%), embeddings (a lookup), and gradient checkpointing's recomputed forward
    (MFU counts the work the step needs, not the work done). Both stacks use this same count."""
    shapes = projection_shapes(config)
    frozen = sum(i * o for i, o in shapes.values()) * config.num_hidden_layers
    lora = sum(cfg.lora_r * (i + o) for n, (i, o) in shapes.items() if n in cfg.lora_targets) * config.num_hidden_layers
    head = config.hidden_size * config.vocab_size * (6 if "lm_head" in cfg.modules_to_save else 4)
    return tokens * (4 * frozen + 6 * lora) + label_tokens * head


def local_tensors(tensors) -> list:
    """What this process holds of each tensor: its chunk of one that FSDP shards (a DTensor)."""
    return [t.to_local() if hasattr(t, "device_mesh") else t for t in tensors]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights counted once)."""
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.device.type != "meta"}
    return sum(seen.values())


def cpu_peak(step, tensors) -> tuple[int, str]:
    """The CPU stand-in for torch.cuda.max_memory_allocated: run step() under a TorchDispatchMode
    that counts each tensor storage when an op first returns it and uncounts it when it is freed
    (weakref on the storage), starting from the storages of `tensors` (model, optimizer state).
    Returns (peak bytes, the op that reached the peak). Python per op: for one step, not timing."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = storage_bytes(tensors)
            self.seen = {t.untyped_storage().data_ptr() for t in tensors}
            self.at = "before the step"

        def _free(self, ptr: int, n: int) -> None:
            self.seen.discard(ptr)
            self.live -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu":  # a DTensor: its local part
                    storage = t.untyped_storage()
                    ptr, n = storage.data_ptr(), storage.nbytes()
                    if n and ptr not in self.seen:
                        self.seen.add(ptr)
                        self.live += n
                        weakref.finalize(storage, self._free, ptr, n)
                        if self.live > self.peak:
                            self.peak, self.at = self.live, str(func)
            return out

    with Live() as live:
        step()
    return live.peak, live.at


def time_steps(model, cfg, batch: dict, steps: int, warmup: int, device, profile: int = 0, d=None) -> dict:
    """train.train_step (forward + backward + clip + AdamW) on the same micro-batch: median seconds
    of `steps` steps after `warmup` untimed ones (Triton autotuning, allocator warm-up), and the
    peak memory: on a GPU max_memory_allocated over the timed steps (AdamW's moments, made by the
    first step, are in it; one-off warm-up buffers such as the autotuner's are not), on the CPU
    the tensor bytes of one more step counted by cpu_peak. d: the train.Dist of a torchrun job (FSDP)."""
    import statistics
    import time

    import torch

    import train
    d = d or train.Dist(0, 1, 0, device)
    opt = train.make_optimizer(model, cfg)
    model.train()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for step in range(warmup + steps):
        if step == warmup and cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        out = train.train_step(model, [batch], opt, cfg, step, d, False)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak, at = torch.cuda.max_memory_allocated(device), ""
    else:
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        peak, at = cpu_peak(lambda: train.train_step(model, [batch], opt, cfg, warmup + steps, d, False),
                            local_tensors([*model.parameters(), *model.buffers(), *state]))
    if profile:  # one more step under the profiler: where the time goes, by kernel
        with torch.profiler.profile() as prof:
            train.train_step(model, [batch], opt, cfg, warmup + steps + 1, d, False)
            sync()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=profile, max_name_column_width=60))
    return {"step_s": statistics.median(times), "loss": out["loss"], "tokens": int(out["tokens"]),
            "peak_gib": peak / 2**30, "peak_at": at}


def bench_train(args):
    """QLoRA training steps at a config's real shape, ours vs transformers + PEFT + bitsandbytes.

        python bench.py train --config configs/qwen7b_instruct.py --random-weights --batch 4,8,16,32 \\
            --gradient_checkpointing=True          # any --key=value overrides a config field
        python bench.py train --config configs/tiny.py --random-weights --steps 2   # CPU smoke run

    The model is the config's (LoRA r / alpha / targets, encoder, gradient checkpointing), its
    shape from model_dir/config.json, else (--random-weights) init_model or the Qwen2.5 size in
    model_repo or --shape; --layers N keeps the first N layers. Weights are the checkpoint's, or
    random ones quantized one matrix at a time on the device (speed and memory do not depend on
    the values). Batches: --frames pose frames (+-10%, iSign's mean is ~215), 20..40 answer
    tokens, a --prompt_tokens ChatML prompt (with a tokenizer in model_dir: the real prompt).
    A step is train.train_step on one micro-batch (bf16 autocast on GPUs, float32 on the CPU) of
    each --batch size in turn, the model built once per stack (a size that runs out of GPU memory
    is reported and skipped; --profile profiles the last size). Reported per stack and size:
    median step time, tokens/s (all sequence positions, as train.py logs), samples/s, peak
    memory during the steps (GPU: max_memory_allocated; CPU: tensor bytes, cpu_peak), the
    model's own memory (its tensors), and MFU = train_flops / step time / peak.

        torchrun --nproc_per_node 4 bench.py train --fsdp --config configs/qwen72b.py --random-weights

    --fsdp: the model sharded over the job's processes as train.py --fsdp shards it (random weights:
    each rank draws its own chunks); every rank steps on the same synthetic batch; tokens, labels
    and samples/s are the job's, memory is rank 0's (its local shards, and its peak); ours only."""
    import gc
    import os
    from types import SimpleNamespace

    import torch

    import config as configs
    import data
    import poses

    p = argparse.ArgumentParser(prog="bench.py train", allow_abbrev=False)
    p.add_argument("--config", help="a configs/*.py file (default: config.TrainConfig's defaults)")
    p.add_argument("--random-weights", action="store_true", help="random weights of the config's shape")
    p.add_argument("--shape", help=f"force a Qwen2.5 shape: {', '.join(QWEN25_SHAPES)}")
    p.add_argument("--layers", type=int, help="keep only the first N layers (profiling on the CPU)")
    p.add_argument("--batch", help="clips per step, or a comma-separated list (4,8,16,32): each stack is built "
                   "once and timed at every size (default: the config's batch_size)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on GPU, 1 on CPU)")
    p.add_argument("--frames", type=int, default=215, help="mean pose frames per clip")
    p.add_argument("--prompt_tokens", type=int, default=38, help="synthetic prompt length (no tokenizer)")
    p.add_argument("--stacks", default="ours,hf", help="ours, hf (transformers + PEFT + bitsandbytes)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--profile", type=int, default=0, help="after timing, profile one step and print the N costliest ops")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model over the processes (FSDP2)")
    a, overrides = p.parse_known_args(args)
    cfg = configs.load_config(([a.config] if a.config else []) + overrides)
    sizes = [int(b) for b in a.batch.split(",")] if a.batch else [cfg.batch_size]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    d, world = None, 1
    if a.fsdp:
        import contextlib
        import io

        import train
        if "RANK" not in os.environ:
            raise SystemExit("bench.py train --fsdp: start it with torchrun --nproc_per_node N bench.py train --fsdp ...")
        cfg.fsdp, a.stacks = True, "ours"
        d = train.setup_distributed()
        device, world = d.device, d.world
        if not d.main:  # one table: rank 0's
            contextlib.redirect_stdout(io.StringIO()).__enter__()
    steps, warmup = a.steps or (10 if cuda else 3), a.warmup if a.warmup is not None else (3 if cuda else 1)
    if not cuda:
        torch.set_num_threads(a.threads)
    config, source = bench_shape(cfg, a.shape, a.random_weights)
    if a.layers:
        config.num_hidden_layers = a.layers
    if cfg.data.pose.layout == "auto":  # synthetic batches: the features of iSign's files
        cfg.data.pose.layout = "holistic"
    feature_dim = poses.feature_dim(cfg.data.pose)

    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {a.threads} threads)"
    peak_flops = next((v[0] for k, v in GPU_PEAKS.items() if k in name), None) if cuda else None
    print(f"device: {name}, torch {torch.__version__}, {'bf16 autocast' if cuda else 'float32'}; "
          f"peak assumed: {f'{peak_flops / 1e12:.0f} dense bf16 TFLOP/s' if peak_flops else 'unknown (no MFU)'}")
    print(f"model: {source}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, intermediate "
          f"{config.intermediate_size}, heads {config.num_attention_heads}/{config.num_key_value_heads} kv, "
          f"vocab {config.vocab_size}, {'random' if a.random_weights else 'checkpoint'} weights, "
          f"base {cfg.quantize}; LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {','.join(cfg.lora_targets)}"
          f"{'; modules_to_save ' + ','.join(cfg.modules_to_save) if cfg.modules_to_save else ''}; "
          f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")

    results = {}
    rows = []
    for stack in a.stacks.split(","):
        gc.collect()  # the previous stack's model, before this one is measured
        if cuda:
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
        torch.manual_seed(0)
        if stack == "ours":
            model, tok = ours_qlora(cfg, config, a.random_weights, device, d)
            label = f"ours ({'NF4' if cfg.quantize == 'nf4' else '16-bit'} + LoRA{f', FSDP x{world}' if d else ''})"
        elif stack == "hf":
            try:
                model = hf_qlora(cfg, config, config.vocab_size - 1, feature_dim, device)
            except ImportError as e:
                print(f"transformers + PEFT + bitsandbytes: skipped: {e}")
                continue
            tok = SimpleNamespace(pose_token_id=config.vocab_size - 1, pad_id=0)
            label = "transformers+PEFT+bnb NF4"
        else:
            raise SystemExit(f"bench.py train: unknown stack {stack!r} (ours, hf)")
        prompt = (data.build_prompt(tok, cfg.data) if hasattr(tok, "chat") else
                  [1 + k % (config.vocab_size - 2) for k in range(a.prompt_tokens)])
        if not hasattr(tok, "chat"):
            prompt[a.prompt_tokens // 2] = tok.pose_token_id  # where the pose sits in the ChatML prompt
        model_gib = ((torch.cuda.memory_allocated(device) - before) if cuda else
                     storage_bytes(local_tensors([*model.parameters(), *model.buffers()]))) / 2**30
        for size in sizes:  # the same model at every size; a fresh optimizer and peak count for each
            cfg.batch_size = size
            batch = synthetic_batch(tok, prompt, feature_dim, size, a.frames, (20, 40), config.vocab_size)
            try:
                r = time_steps(model, cfg, batch, steps, warmup, device, a.profile if size == sizes[-1] else 0, d)
            except torch.cuda.OutOfMemoryError:
                print(f"{label}, batch {size}: out of memory")
                batch = None
                gc.collect()
                torch.cuda.empty_cache()
                continue
            # train_step counts the job's tokens: every rank steps on this batch
            r.update(model_gib=model_gib, label_tokens=world * int((batch["labels"][:, 1:] != -100).sum()),
                     batch=tuple(batch["input_ids"].shape))
            r["flops"] = train_flops(config, cfg, r["tokens"], r["label_tokens"])
            r["mfu"] = r["flops"] / r["step_s"] / peak_flops if peak_flops else None
            results.setdefault(stack, {})[size] = r
            rows.append((label, size, r))
        if stack == "ours" and cfg.quantize == "nf4":
            import quant
            for what, chosen in quant.dispatch_choices().items():  # empty without a GPU: nothing is timed
                for key, value in chosen.items():
                    print(f"{label}: first-use choice {what} {tuple(str(k) for k in key)}: {value}")
        del model
    if not rows:
        return results
    ranks = f" on each of {world} ranks (tokens, labels, TFLOP, samples/s: the job's)" if d else ""
    print(f"per step: one micro-batch of `batch` clips{ranks}, input_ids (clips, positions), tokens = every position "
          f"(labels: answer tokens); TFLOP: train_flops; median of {steps} steps after {warmup} warm-up")
    print(f"{'stack':<28}{'batch':>6}{'input_ids':>12}{'tokens':>8}{'labels':>7}{'TFLOP':>8}{'step ms':>10}"
          f"{'tokens/s':>10}{'samples/s':>11}{'peak GiB':>10}{'model GiB':>11}{'MFU':>7}{'loss':>8}")
    for label, size, r in rows:
        mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else f"{'-':>7}"
        print(f"{label:<28}{size:>6}{'x'.join(map(str, r['batch'])):>12}{r['tokens']:>8}{r['label_tokens']:>7}"
              f"{r['flops'] / 1e12:8.3f}{r['step_s'] * 1e3:10.1f}{r['tokens'] / r['step_s']:10.0f}"
              f"{size * world / r['step_s']:11.2f}{r['peak_gib']:10.2f}{r['model_gib']:11.2f}{mfu}{r['loss']:8.3f}")
    if not cuda:
        print("CPU memory: tensor bytes (bench.cpu_peak); peak reached in " +
              "; ".join(f"{label.split(' ')[0]} batch {size}: {r['peak_at']}" for label, size, r in rows))
    if len(results) == 2:
        ours, theirs = results.values()
        for size in sorted(set(ours) & set(theirs)):
            print(f"batch {size}: ours / theirs {theirs[size]['step_s'] / ours[size]['step_s']:.2f}x tokens/s, "
                  f"{ours[size]['peak_gib'] / theirs[size]['peak_gib']:.2f}x peak memory")
    if d:  # leave together (a rank tearing down gloo early can abort the others)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results


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

    import config as configs
    import loader

    p = argparse.ArgumentParser(prog="bench.py decode", allow_abbrev=False)
    p.add_argument("--config", help="a configs/*.py file (its model_dir / init_model / model_repo shape)")
    p.add_argument("--shape", help=f"a Qwen2.5 shape: {', '.join(QWEN25_SHAPES)} (default without --config: 7B on "
                   "a GPU, 0.5B on the CPU)")
    p.add_argument("--layers", type=int, help="keep only the first N layers")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens")
    p.add_argument("--quantize", default="none,nf4", help="comma-separated: none (16-bit), nf4; the first is the baseline")
    p.add_argument("--modes", default="loop,static", help="comma-separated: loop (Python loop), static (CUDA graph)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    a, overrides = p.parse_known_args(args)
    if a.new < 3:
        raise SystemExit("bench.py decode: --new must be at least 3 (the time per token is a difference)")
    cfg = configs.load_config(([a.config] if a.config else []) + overrides)
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
            def seconds(n: int) -> float:
                times = []
                for _ in range(3 if cuda else 1):
                    sync()
                    t0 = time.perf_counter()
                    llm.generate(ids, max_new_tokens=n, eos_token_id=-1, static=mode == "static")  # -1: never stops
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
