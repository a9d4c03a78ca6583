"""bench.py train: QLoRA training steps at a config's shape, ours (translator.build_model) vs
transformers + PEFT + bitsandbytes, with the counts the table reports (tokens, train_flops) and
the CPU's stand-in for peak GPU memory (cpu_peak). bench_train's docstring says what is measured.

    python bench.py train --config configs/tiny.py --random-weights --steps 2   # CPU smoke run
"""
import argparse
from dataclasses import dataclass

from benchmarks.shapes import GPU_PEAKS, QWEN25_SHAPES, bench_shape


def ours_qlora(cfg, config, random_weights: bool, device):
    """(SignTranslator, tokenizer) from translator.build_model, the product's one assembly (base ->
    LoRA -> pose encoder), with random weights of `config`'s shape if random_weights. Under FSDP
    (cfg.fsdp, a torchrun job) each rank loads, or draws, only its chunks of the base."""
    from types import SimpleNamespace

    import loader
    import translator
    from tokenizer import Tokenizer

    if random_weights:
        tok = SimpleNamespace(pose_token_id=config.vocab_size - 1, pad_id=0)  # all batches.collate reads
    else:
        tok = Tokenizer.from_dir(loader.model_path(cfg.model_dir))
    return translator.build_model(cfg, tok, device, random_shape=config if random_weights else None,
                                  shard=cfg.fsdp), tok


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
    """A training batch as batches.collate makes it: clip lengths spread over frames +-10% and answers over
    text_tokens (+ an end token) across the batch (a bucketed batch: similar lengths), random poses
    and token ids. The prompt holds one pose placeholder, expanded to the encoder's token count."""
    import torch

    import batches
    import translator
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch_size):
        s = i / (batch_size - 1) if batch_size > 1 else 0.5
        n_frames = round(frames * (0.9 + 0.2 * s))
        n_text = round(text_tokens[0] + s * (text_tokens[1] - text_tokens[0]))
        answer = torch.randint(1, vocab_size - 1, (n_text + 1,), generator=g).tolist()
        items.append(dict(uid=str(i), text="", poses=torch.randn(n_frames, feature_dim, generator=g),
                          prompt_ids=prompt_ids, answer_ids=answer))
    return batches.collate(items, tok, translator.PoseEncoder.output_lengths)


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
                # (a DTensor: its local part)
                if type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu":
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


def time_steps(model, cfg, batch: dict, steps: int, warmup: int, device, profile: int = 0, proc=None) -> dict:
    """train.train_step (forward + backward + clip + AdamW) on the same micro-batch: median seconds
    of `steps` steps after `warmup` untimed ones (Triton autotuning, allocator warm-up), and the
    peak memory: on a GPU max_memory_allocated over the timed steps (AdamW's moments, made by the
    first step, are in it; one-off warm-up buffers such as the autotuner's are not), on the CPU
    the tensor bytes of one more step counted by cpu_peak. proc: this process's processes.Dist in a
    torchrun job (FSDP)."""
    import statistics
    import time

    import torch

    import processes
    import train
    proc = proc or processes.Dist(0, 1, 0, device)
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
        out = train.train_step(model, [batch], opt, cfg, step, proc, False)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak, at = torch.cuda.max_memory_allocated(device), ""
    else:
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        peak, at = cpu_peak(lambda: train.train_step(model, [batch], opt, cfg, warmup + steps, proc, False),
                            local_tensors([*model.parameters(), *model.buffers(), *state]))
    if profile:  # one more step under the profiler: where the time goes, by kernel
        with torch.profiler.profile() as prof:
            train.train_step(model, [batch], opt, cfg, warmup + steps + 1, proc, False)
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
    a, cfg = parse_args(args)
    job = start(a, cfg)
    config, source = bench_shape(cfg, a.shape, a.random_weights)
    if a.layers:
        config.num_hidden_layers = a.layers
    if cfg.data.pose.layout == "auto":  # synthetic batches: the features of iSign's files
        cfg.data.pose.layout = "holistic"
    print_setup(job, a, cfg, config, source)
    results, rows = {}, []
    for stack in a.stacks.split(","):
        for size, r in time_stack(stack, job, a, cfg, config).items():
            results.setdefault(stack, {})[size] = r
            rows.append((r["label"], size, r))
    if rows:
        print_table(job, rows, results)
    if job.proc:  # leave together (a rank tearing down gloo early can abort the others)
        import torch
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results


def parse_args(args: list[str]):
    """bench.py train's options, and the config (a --config file and --key=value overrides)."""
    from config import load_config

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
    p.add_argument("--profile", type=int, default=0,
                   help="after timing, profile one step and print the N costliest ops")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model over the processes (FSDP2)")
    a, overrides = p.parse_known_args(args)
    return a, load_config(([a.config] if a.config else []) + overrides)


@dataclass
class Job:
    """Where bench.py train runs: the device, this process in a torchrun job (--fsdp), the steps."""
    device: object              # torch.device
    cuda: bool
    proc: object | None         # processes.Dist under --fsdp, else None
    world: int
    sizes: list[int]            # the micro-batch sizes timed
    steps: int
    warmup: int
    peak_flops: float | None    # the GPU's dense bf16 peak (GPU_PEAKS), None: no MFU


def start(a, cfg) -> Job:
    """The device; under --fsdp the torchrun job (rank 0 alone prints); the CPU's threads."""
    import contextlib
    import io
    import os

    import torch

    import processes

    cuda = torch.cuda.is_available()
    device, proc, world = torch.device("cuda" if cuda else "cpu"), None, 1
    if a.fsdp:
        if "RANK" not in os.environ:
            raise SystemExit("bench.py train --fsdp: start it with "
                             "torchrun --nproc_per_node N bench.py train --fsdp ...")
        cfg.fsdp, a.stacks = True, "ours"
        proc = processes.setup_distributed()
        device, world = proc.device, proc.world
        if not proc.main:  # one table: rank 0's
            contextlib.redirect_stdout(io.StringIO()).__enter__()
    if not cuda:
        torch.set_num_threads(a.threads)
    name = torch.cuda.get_device_name() if cuda else ""
    return Job(device, cuda, proc, world, [int(b) for b in a.batch.split(",")] if a.batch else [cfg.batch_size],
               a.steps or (10 if cuda else 3), a.warmup if a.warmup is not None else (3 if cuda else 1),
               next((v[0] for k, v in GPU_PEAKS.items() if k in name), None) if cuda else None)


def print_setup(job: Job, a, cfg, config, source: str) -> None:
    """The device, the peak MFU is computed against, and the model (shape, weights, LoRA)."""
    import os

    import torch

    name = torch.cuda.get_device_name() if job.cuda else f"CPU ({os.cpu_count()} cores, {a.threads} threads)"
    peak = f"{job.peak_flops / 1e12:.0f} dense bf16 TFLOP/s" if job.peak_flops else "unknown (no MFU)"
    print(f"device: {name}, torch {torch.__version__}, {'bf16 autocast' if job.cuda else 'float32'}; "
          f"peak assumed: {peak}")
    print(f"model: {source}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, intermediate "
          f"{config.intermediate_size}, heads {config.num_attention_heads}/{config.num_key_value_heads} kv, "
          f"vocab {config.vocab_size}, {'random' if a.random_weights else 'checkpoint'} weights, "
          f"base {cfg.quantize}; LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {','.join(cfg.lora_targets)}"
          f"{'; modules_to_save ' + ','.join(cfg.modules_to_save) if cfg.modules_to_save else ''}; "
          f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")


def time_stack(stack: str, job: Job, a, cfg, config) -> dict[int, dict]:
    """One stack ("ours" or "hf") built once and timed at every micro-batch size: {size: the
    measures of time_steps, with the counts and the row's label}; a size out of GPU memory is
    reported and left out."""
    import gc
    from types import SimpleNamespace

    import torch

    import batches
    import poses

    gc.collect()  # the previous stack's model, before this one is measured
    if job.cuda:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(job.device)
    torch.manual_seed(0)
    feature_dim = poses.feature_dim(cfg.data.pose)
    if stack == "ours":
        model, tok = ours_qlora(cfg, config, a.random_weights, job.device)
        sharded = f", FSDP x{job.world}" if job.proc else ""
        label = f"ours ({'NF4' if cfg.quantize == 'nf4' else '16-bit'} + LoRA{sharded})"
    elif stack == "hf":
        try:
            model = hf_qlora(cfg, config, config.vocab_size - 1, feature_dim, job.device)
        except ImportError as e:
            print(f"transformers + PEFT + bitsandbytes: skipped: {e}")
            return {}
        tok = SimpleNamespace(pose_token_id=config.vocab_size - 1, pad_id=0)
        label = "transformers+PEFT+bnb NF4"
    else:
        raise SystemExit(f"bench.py train: unknown stack {stack!r} (ours, hf)")
    prompt = (batches.build_prompt(tok, cfg.data) if hasattr(tok, "chat") else
              [1 + k % (config.vocab_size - 2) for k in range(a.prompt_tokens)])
    if not hasattr(tok, "chat"):
        prompt[a.prompt_tokens // 2] = tok.pose_token_id  # where the pose sits in the ChatML prompt
    model_gib = ((torch.cuda.memory_allocated(job.device) - before) if job.cuda else
                 storage_bytes(local_tensors([*model.parameters(), *model.buffers()]))) / 2**30
    results = {}
    for size in job.sizes:  # the same model at every size; a fresh optimizer and peak count for each
        cfg.batch_size = size
        batch = synthetic_batch(tok, prompt, feature_dim, size, a.frames, (20, 40), config.vocab_size)
        try:
            r = time_steps(model, cfg, batch, job.steps, job.warmup, job.device,
                           a.profile if size == job.sizes[-1] else 0, job.proc)
        except torch.cuda.OutOfMemoryError:
            print(f"{label}, batch {size}: out of memory")
            batch = None
            gc.collect()
            torch.cuda.empty_cache()
            continue
        # train_step counts the job's tokens: every rank steps on this batch
        r.update(label=label, model_gib=model_gib, label_tokens=job.world * int((batch["labels"][:, 1:] != -100).sum()),
                 batch=tuple(batch["input_ids"].shape))
        r["flops"] = train_flops(config, cfg, r["tokens"], r["label_tokens"])
        r["mfu"] = r["flops"] / r["step_s"] / job.peak_flops if job.peak_flops else None
        results[size] = r
    if stack == "ours" and cfg.quantize == "nf4":
        import quant
        for what, chosen in quant.dispatch_choices().items():  # empty without a GPU: nothing is timed
            for key, value in chosen.items():
                print(f"{label}: first-use choice {what} {tuple(str(k) for k in key)}: {value}")
    return results


def print_table(job: Job, rows: list[tuple], results: dict) -> None:
    """One line per stack and size; on the CPU where the peak was reached; ours against theirs."""
    ranks = f" on each of {job.world} ranks (tokens, labels, TFLOP, samples/s: the job's)" if job.proc else ""
    print(f"per step: one micro-batch of `batch` clips{ranks}, input_ids (clips, positions), tokens = every position "
          f"(labels: answer tokens); TFLOP: train_flops; median of {job.steps} steps after {job.warmup} warm-up")
    print(f"{'stack':<28}{'batch':>6}{'input_ids':>12}{'tokens':>8}{'labels':>7}{'TFLOP':>8}{'step ms':>10}"
          f"{'tokens/s':>10}{'samples/s':>11}{'peak GiB':>10}{'model GiB':>11}{'MFU':>7}{'loss':>8}")
    for label, size, r in rows:
        mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else f"{'-':>7}"
        print(f"{label:<28}{size:>6}{'x'.join(map(str, r['batch'])):>12}{r['tokens']:>8}{r['label_tokens']:>7}"
              f"{r['flops'] / 1e12:8.3f}{r['step_s'] * 1e3:10.1f}{r['tokens'] / r['step_s']:10.0f}"
              f"{size * job.world / r['step_s']:11.2f}{r['peak_gib']:10.2f}{r['model_gib']:11.2f}{mfu}{r['loss']:8.3f}")
    if not job.cuda:
        print("CPU memory: tensor bytes (benchmarks/training.py cpu_peak); peak reached in " +
              "; ".join(f"{label.split(' ')[0]} batch {size}: {r['peak_at']}" for label, size, r in rows))
    if len(results) == 2:
        ours, theirs = results.values()
        for size in sorted(set(ours) & set(theirs)):
            print(f"batch {size}: ours / theirs {theirs[size]['step_s'] / ours[size]['step_s']:.2f}x tokens/s, "
                  f"{ours[size]['peak_gib'] / theirs[size]['peak_gib']:.2f}x peak memory")
