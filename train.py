"""Training: QLoRA fine-tuning of Qwen2 to translate sign-language poses into English.

    python train.py configs/tiny.py                                   # CPU demo, no download
    python train.py configs/tiny.py --max_steps=200 --out_dir=runs/t2  # any field: --key=value
    torchrun --nproc_per_node 4 train.py configs/qwen7b_instruct.py --data_dir=data/isign
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        train.py configs/qwen14b.py --resume=auto                      # several machines

What is trained: the pose encoder (translator.PoseEncoder) fully, and LoRA adapters (lora.py) on
a frozen Qwen2 whose projections are 4-bit NF4 (quant.py): QLoRA. translator.build_model assembles
it; its soft tokens replace the pose placeholder of a ChatML prompt, the answer is the English
text. The config (config.py) is a plain-Python file plus --key=value overrides.

One optimizer step = grad_accum micro-batches of batch_size clips on each of the world_size
processes. The loss is the mean cross-entropy over every answer token of the whole step, logits
computed only at those positions. DDP averages gradients over processes once per step (no_sync
on the other micro-steps). AdamW (separate learning rates for LoRA and encoder), linear warmup
then cosine decay, gradient clipping; bf16 autocast on GPUs, float32 on the CPU.

--fsdp=True: for models larger than one GPU, FSDP2 (torch.distributed.fsdp.fully_shard) instead
of DDP. Each decoder layer, then the root, is sharded over all processes: a rank keeps a dim-0
chunk of every tensor (the 4-bit base too: quant.Linear4bit), all-gathers a layer just before it
runs, and reduce-scatters the gradients (once per step). No rank ever loads the whole model
(sharding.shard_and_load); checkpoints hold whole tensors, as under DDP (checkpoints.py).

Surviving long runs (OUT_DIR/ckpt-000600/ every save_every steps, and best -> the best val BLEU):
- a checkpoint holds the trained tensors only, optimizer state, step, data position and the RNG
  state of every rank; rank 0 writes it atomically, with every file's size and sha256 and the
  base model's fingerprint in meta.json (checkpoints.py); a damaged one is skipped with a
  warning by --resume=auto (all of them damaged: an error, never a fresh start over them).
  keep_last bounds disk use (best is always kept; a tie in val BLEU goes to the later one).
- --resume=auto continues from the newest good checkpoint, of the same config (max_steps may
  grow: a finished run is extended) and the same base; on the CPU with the same world size the
  result is bit for bit that of a run that never stopped.
- SIGTERM / SIGINT: every rank stops at the next step boundary, rank 0 saves, exit code 0.
- A non-finite loss or gradient skips the step on all ranks; max_bad_steps in a row stop the run.

Beside this file: preflight.py checks everything that can fail before the model is loaded (and
makes the tiny demo's first-use assets); processes.py holds the process set-up (torchrun ranks,
logs, collectives, seeding, the signal handler). This file is the model's set-up, the step, the
validation and the loop.

References: QLoRA (Dettmers et al. 2023, arXiv:2305.14314); SpaMo (Hwang et al. 2024,
arXiv:2408.11915); Sign2GPT (Wong et al. 2024, arXiv:2405.04164); nanoGPT's train.py.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import checkpoints
import config
import corpus
import curves
import batches
import eval as ev
import lexicon
import preflight
import sharding
from config import ConfigError, TrainConfig
from processes import Dist, StopSignal, all_sum, gather, peak_memory_gb, seed_everything, setup_distributed
from tokenizer import Tokenizer
from translator import SignTranslator, autocast, build_model, collate_fn, to_device

log = logging.getLogger("train")


# ----------------------------------------------------------------------------- schedule, optimizer

def lr_factor(step: int, cfg: TrainConfig, start: int = 0) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr_ratio at max_steps. A group that
    starts later (the LLM's after align_steps) is at 0 until `start`, then warms up from there."""
    step -= start
    if step < 0:
        return 0.0
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - start - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: SignTranslator, cfg: TrainConfig) -> torch.optim.AdamW:
    """Parameter groups: the encoder learns from scratch and takes a larger rate than the LLM's
    adapters, and from step 0; the adapters start after align_steps (the encoder's alignment stage,
    LLaVA's stage 1: the encoder alone learns to speak to the frozen LLM), and their B matrices learn
    at lr x lora_plus_ratio (LoRA+, Hayou et al. 2024: B, of width `out`, needs a larger rate
    than A for its features to learn as fast; the other tensors, A and modules_to_save, at lr).

    fused=True: one kernel updates every tensor in place. The default (foreach) implementation
    makes a temporary the size of all trained weights (sqrt of the second moments), which can be
    the step's memory peak (docs/memory.md)."""
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    llm = [(n, p) for n, p in model.llm.named_parameters() if p.requires_grad]
    b = [p for n, p in llm if n.endswith("lora_B.weight")]
    rest = [p for n, p in llm if not n.endswith("lora_B.weight")]
    lr_b = cfg.lr * cfg.lora_plus_ratio
    groups = [{"params": rest, "lr": cfg.lr, "base_lr": cfg.lr, "start": cfg.align_steps},
              {"params": b, "lr": lr_b, "base_lr": lr_b, "start": cfg.align_steps},
              {"params": enc, "lr": cfg.encoder_lr, "base_lr": cfg.encoder_lr, "start": 0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay,
                             betas=(0.9, 0.999), fused=True)


# ----------------------------------------------------------------------------- checkpoints (format: checkpoints.py)

def weights_digest(model: SignTranslator) -> str:
    """sha256 of the trained tensors: every rank logs it at the end, and DDP replicas must agree."""
    h = hashlib.sha256()
    for name, p in sorted(checkpoints.trained_tensors(model).items()):
        h.update(name.encode())
        h.update(sharding.whole(p.detach()).cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint's state.json and restored on resume."""
    step: int = 0
    best_bleu: float = -1.0          # validation BLEU-4 of the best checkpoint so far
    best_step: int | None = None
    skipped: int = 0                 # steps skipped for a non-finite loss or gradient
    bad_in_row: int = 0
    tokens: int = 0
    seconds: float = 0.0             # training time, summed over resumptions


def save_checkpoint(out_dir: Path, model: SignTranslator, opt: torch.optim.Optimizer, state: LoopState, sampler: dict,
                    base: dict, proc: Dist) -> Path:
    """All ranks call this (every rank's RNG state is gathered, and FSDP's shards); rank 0 writes ckpt-STEP."""
    rngs = gather([checkpoints.rng_state()], proc)
    tensors, moments = checkpoints.consolidated(model, opt, keep=proc.main)
    if proc.main:
        checkpoints.save(out_dir, state.step, tensors, moments,
                         {**asdict(state), "sampler": sampler, "world_size": proc.world, "rng": rngs}, base)
        log.info(f"saved {checkpoints.step_dir(out_dir, state.step)}")
    return checkpoints.step_dir(out_dir, state.step)


def load_checkpoint(ckpt: Path, model: SignTranslator, opt: torch.optim.Optimizer,
                    proc: Dist) -> tuple[LoopState, dict]:
    """Trained tensors, optimizer state and this rank's RNG; returns the loop state and the
    data position."""
    saved = checkpoints.load(ckpt, model, opt)
    if saved["world_size"] == proc.world:
        checkpoints.set_rng_state(saved["rng"][proc.rank])
    else:  # data order and dropout then differ from the uninterrupted run
        log.warning(f"{ckpt} was saved by {saved['world_size']} ranks, now {proc.world}: "
                    "training continues, but not bit-exactly")
    names = {f.name for f in dataclasses.fields(LoopState)}
    return LoopState(**{k: v for k, v in saved.items() if k in names}), saved["sampler"]


def subset(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (a fixed validation subset)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n))}) if n else []


# ----------------------------------------------------------------------------- steps

def fault_injected(name: str, step: int, rank: int) -> bool:
    """Fault injection for the tests only: TRAIN_TEST_NAN / TRAIN_TEST_SIGTERM / TRAIN_TEST_OOM =
    "STEP:RANK" make that rank's loss NaN, send it SIGTERM, or raise CUDA's out-of-memory error
    (after the first micro-batch's backward), at that step. Unset in real runs."""
    return os.environ.get(f"TRAIN_TEST_{name}") == f"{step}:{rank}"


def grad_sync(model: torch.nn.Module, last: bool) -> AbstractContextManager:
    """Gradients are averaged over the processes on a step's last micro-batch only: DDP's no_sync()
    on the others; FSDP does no reduce-scatter there (its unsharded gradients accumulate)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last)
    return model.no_sync() if isinstance(model, DDP) and not last else nullcontext()


def train_step(ddp: torch.nn.Module, micro: list[dict], opt: torch.optim.Optimizer, cfg: TrainConfig, step: int,
               proc: Dist, stop_requested: bool) -> dict:
    """Forward/backward over the micro-batches, then one optimizer step unless the loss or the
    gradient is non-finite anywhere (decided from all-reduced numbers: every rank agrees).

    The step's loss: the mean cross-entropy over every answer token of the step, plus aux_weight
    x the mean word loss over its clips (translator.word_presence_loss); during the first
    aux_only_steps the word loss alone, without running the LLM."""
    lm = step >= cfg.aux_only_steps
    word_weight = cfg.aux_weight if lm else 1.0
    n_local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    clips = sum(len(b["uids"]) + len(b.get("iso_word_label", ())) for b in micro)   # iso_*: lexicon.MixedBatches
    n_global, clips_global = all_sum([n_local, clips], proc)
    sums = torch.zeros(2, dtype=torch.float64, device=proc.device)  # LM and word loss, on the device: one sync a step
    for i, batch in enumerate(micro):
        with grad_sync(ddp, last=i == len(micro) - 1), autocast(proc.device):
            out = ddp(to_device(batch, proc.device), lm=lm)
            loss = out.lm / n_global + word_weight * out.words / clips_global
            if fault_injected("NAN", step, proc.rank):
                loss = loss * float("nan")
            # Each rank scales by world: the average over ranks (DDP's; FSDP's sum / world) then
            # yields the sums over every rank divided by the global counts, however tokens and
            # clips fall on micro-batches.
            (loss * proc.world).backward()
            if fault_injected("OOM", step, proc.rank):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. (TRAIN_TEST_OOM)")
        sums += torch.stack((out.lm.detach(), out.words.detach())).double()
    if isinstance(ddp, FSDPModule):
        sharding.average_whole_grads(ddp, proc.world)
    lm_local, words_local = sums.tolist()
    tokens = sum(int(b["attention_mask"].sum()) for b in micro)
    lm_sum, word_sum, bad, stop, tokens = all_sum(
        [lm_local, words_local, not math.isfinite(lm_local + words_local), stop_requested, tokens], proc)
    params = [p for g in opt.param_groups for p in g["params"]]
    norm = float("nan") if bad else float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
    skipped = bool(bad) or not math.isfinite(norm)  # the norm is of the all-reduced grads: same on every rank
    if skipped:
        log.warning(f"step {step}: non-finite loss or gradient (loss {lm_sum / n_global:.4g}, word loss "
                    f"{word_sum / clips_global:.4g}, grad norm {norm:.4g}); step skipped on all ranks")
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": lm_sum / n_global if lm else None, "word_loss": word_sum / clips_global, "grad_norm": norm,
            "skipped": skipped, "stop": bool(stop), "tokens": tokens}


@torch.no_grad()
def validate(model: SignTranslator, val_ds: batches.SignDataset, indices: list[int], tok: Tokenizer, cfg: TrainConfig,
             proc: Dist, train_counts: Counter) -> dict:
    """Validation loss and translation metrics on a fixed subset, sharded over the ranks: with each
    clip's own poses, and with shuffled poses (a model that uses the signs does much worse there);
    the recall of the references' words by their count in the training texts (eval.word_recall_by_freq)."""
    model.eval()
    shuffled_from = ev.shuffled_sources(indices)
    losses = [answer_loss(model, tok, val_ds, indices, src, cfg, proc) for src in (indices, shuffled_from or indices)]
    (loss, n, loss_shuffled, _) = all_sum([*losses[0], *losses[1]], proc)
    rows, shuffled = decode_both(model, tok, val_ds, indices, shuffled_from, cfg, proc)
    model.train()
    m = ev.score(rows, shuffled, train_counts)
    return {"val_loss": loss / max(n, 1), "val_loss_shuffled": loss_shuffled / max(n, 1),
            **{f"val_{k}": v for k, v in m.items() if k != "signature"}, "example": rows[0] if rows else None}


def answer_loss(model: SignTranslator, tok: Tokenizer, ds: batches.SignDataset, indices: list[int],
                poses_from: list[int], cfg: TrainConfig, proc: Dist) -> tuple[float, int]:
    """(summed cross-entropy, answer tokens) of this rank's share of ds[indices], clip k given the
    poses of poses_from[k]. Under FSDP every rank runs as many batches (sharding.share): one short
    of clips runs its last on indices[0] and drops the result."""
    mine, count = sharding.share(indices, proc.rank, proc.world, lockstep=isinstance(model, FSDPModule))
    src = poses_from[proc.rank::proc.world]
    collate, loss, n = collate_fn(model, tok), 0.0, 0
    for k in range(0, count, cfg.eval_batch_size):
        chunk = list(zip(mine[k:k + cfg.eval_batch_size], src[k:k + cfg.eval_batch_size]))
        batch = collate([{**ds[i], "poses": ds[j]["poses"]} if i != j else ds[i] for i, j in chunk] or [ds[indices[0]]])
        with autocast(proc.device):
            out = model(to_device(batch, proc.device))
        if chunk:
            loss, n = loss + out.lm.item(), n + int(out.tokens)
    return loss, n


def decode_both(model: SignTranslator, tok: Tokenizer, ds: batches.SignDataset, indices: list[int],
                shuffled_from: list[int], cfg: TrainConfig, proc: Dist) -> tuple[list[dict], list[dict]]:
    """Greedy translations of ds[indices], and of the same clips with the poses of shuffled_from
    (eval.shuffled_sources; [] for none), sharded over the ranks and gathered on every rank."""
    mine, count = sharding.share(indices, proc.rank, proc.world, lockstep=isinstance(model, FSDPModule))
    pad = indices[:1] * (count - len(mine))  # FSDP: as many clips on every rank, the extra one dropped

    def decode(poses_from: list[int] | None = None) -> list[dict]:
        with sharding.decoding_together(model, proc):
            rows = ev.decode(model, tok, ds, mine + pad, cfg.eval_batch_size, cfg.max_new_tokens, 1, proc.device,
                             poses_from=poses_from and poses_from + pad)
        return gather(rows[:len(mine)], proc)

    return decode(), decode(shuffled_from[proc.rank::proc.world]) if shuffled_from else []


# ----------------------------------------------------------------------------- the run

def mean_losses(losses: list[tuple[float | None, float]], words: bool) -> dict:
    """{"loss": mean LM loss (None in the word warm-up), "word_loss": mean word loss (with words)}."""
    lm = [a for a, _ in losses if a is not None]
    out = {"loss": sum(lm) / len(lm) if lm else None}
    if words:
        out["word_loss"] = sum(w for _, w in losses) / max(len(losses), 1)
    return out


def tested_checkpoint(out_dir: Path, cfg: TrainConfig) -> Path:
    """The checkpoint test_at_end evaluates: the best by validation BLEU-4, else the last."""
    best = out_dir / "best"
    return best.resolve() if best.exists() else checkpoints.step_dir(out_dir, cfg.max_steps)


def evaluate_test(model: SignTranslator, tok: Tokenizer, cfg: TrainConfig, out_dir: Path, proc: Dist,
                  train_counts: Counter) -> dict | None:
    """test_at_end: the best checkpoint's weights (else the last one's, in the model) on the test
    split, as eval.py reports them (predictions file included)."""
    best = out_dir / "best"
    ckpt = tested_checkpoint(out_dir, cfg)
    if best.exists():
        checkpoints.load_trained(model, ckpt)
    test_ds = batches.SignDataset(cfg.data, "test", tok)
    every = list(range(len(test_ds)))
    rows, shuffled = decode_both(model, tok, test_ds, every, ev.shuffled_sources(every), cfg, proc)
    if not proc.main:
        return None
    metrics = ev.score(rows, shuffled, train_counts)
    out = ev.predictions_path(out_dir, "test", ckpt, num_beams=1)
    ev.write_predictions(rows, out)
    log.info(f"test split, {'best' if best.exists() else 'last'} checkpoint {ckpt.name}; predictions in {out}")
    return metrics


@dataclass
class Run:
    """What the loop works on (one object instead of a dozen arguments)."""
    cfg: TrainConfig
    proc: Dist
    out_dir: Path
    accum: int
    tok: Tokenizer
    model: SignTranslator
    ddp: torch.nn.Module          # the model, wrapped in DDP when world_size > 1 (FSDP shards it in place)
    opt: torch.optim.AdamW
    batches: batches.Batches
    val_ds: batches.SignDataset
    val_idx: list[int]
    state: LoopState
    stop: StopSignal
    tb: object | None             # torch.utils.tensorboard.SummaryWriter on rank 0 with tensorboard=True
    base: dict                    # the base model's fingerprint, saved in every checkpoint
    train_counts: Counter         # words of the training texts: eval.word_recall_by_freq's bins


def setup(cfg: TrainConfig, proc: Dist) -> Run:
    """Checks, data, model, optimizer, and the checkpoint to resume from (if any)."""
    prepared = preflight.prepare_run(cfg, proc)
    out_dir, accum, ckpt = prepared.out_dir, prepared.grad_accum, prepared.resume
    tok = Tokenizer.from_dir(prepared.base_dir)
    lex = lexicon.Lexicon(lexicon.lexicon_config(cfg.data)) if cfg.data.lexicon_dir else None
    train_ds = batches.SignDataset(cfg.data, "train", tok, augment=cfg.data.pose.augment,
                                n_words=cfg.word_head_size, words=[w.lower() for w in cfg.aux_vocabulary] or None)
    val_ds = batches.SignDataset(cfg.data, "val", tok)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if ds.truncated and proc.main:
            log.warning(f"{name} split: {ds.truncated} answers longer than max_answer_tokens="
                        f"{cfg.data.max_answer_tokens} are cut to that length")
    sampler = batches.BucketSampler(train_ds.lengths, cfg.batch_size, proc.world, proc.rank, seed=cfg.seed,
                                    drop_last=True)
    if len(sampler) == 0:
        raise ConfigError(f"the train split has {len(train_ds)} clips, fewer than batch_size x world_size "
                          f"= {cfg.batch_size} x {proc.world}: lower batch_size or use more data")
    seed_everything(cfg.seed)  # the same initial weights on every rank
    # the encoder standardised to the training split, the same on every rank (a resume loads the trained stats)
    model = build_model(cfg, tok, proc.device, features=train_ds.features, shard=cfg.fsdp)
    if cfg.align_weight and cfg.word_head_size:
        model.set_alignment(tok, train_ds.words, cfg.aux_words, cfg.align_weight)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    log.info(f"trained parameters: LLM {count(model.llm):,} (LoRA and modules_to_save), "
             f"encoder {count(model.encoder):,}")
    opt = make_optimizer(model, cfg)
    plan = sharding.memory_plan(model, list(model.llm.model.layers), proc.device, proc.world, cfg.fsdp,
                                cfg.fsdp_cpu_offload, accum)
    if proc.main:
        log.info(sharding.describe(plan, proc.device))
    if lex:   # a share of stitched sentences (lexicon.py)
        stream = lexicon.mixed_batches(train_ds, sampler, collate_fn(model, tok), tok, lex, cfg.data.lexicon_mix,
                                       cfg.max_steps * accum, cfg.seed, cfg.num_workers, proc.rank)
    else:
        stream = batches.Batches(train_ds, sampler, collate_fn(model, tok), cfg.seed, cfg.num_workers, proc.rank)
    seed_everything(cfg.seed + 1 + proc.rank)  # dropout differs between ranks
    state = LoopState()
    if ckpt is not None:
        state, position = load_checkpoint(ckpt, model, opt, proc)
        stream.load_state_dict(position)
        log.info(f"resumed from {ckpt} at step {state.step}")
    if proc.main:
        curves.trim(out_dir, state.step)
    ddp = model
    if proc.world > 1 and not cfg.fsdp:
        for p in model.parameters():  # instead of DDP's init sync, which would also send the frozen base
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
        # find_unused_parameters: the LLM takes no part in the encoder's word warm-up (aux_only_steps)
        ddp = DDP(model, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None, init_sync=False,
                  forward_sync_buffers=False, find_unused_parameters=cfg.aux_only_steps > 0)
    model.train()
    tb = curves.tensorboard_writer(out_dir, state.step) if proc.main and cfg.tensorboard else None
    return Run(cfg, proc, out_dir, accum, tok, model, ddp, opt, stream, val_ds, subset(len(val_ds), cfg.eval_samples),
               state, StopSignal(), tb, prepared.base, ev.training_counts(train_ds.texts))


def maybe_validate(run: Run) -> bool:
    """Validate every eval_every steps and at the end; True when val BLEU-4 is a new best."""
    cfg, state = run.cfg, run.state
    if not run.val_idx or (state.step % cfg.eval_every and state.step != cfg.max_steps):
        return False
    m = validate(run.model, run.val_ds, run.val_idx, run.tok, cfg, run.proc, run.train_counts)
    example = m.pop("example")
    log.info(f"step {state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if not isinstance(v, dict)) +
             f"\n  word recall by training count: {ev.recall_line(m['val_word_recall_by_freq'])}" +
             (f"\n  {example['reference']!r}\n  -> {example['hypothesis']!r}" if example else ""))
    if run.proc.main:
        curves.record(run.out_dir, {"step": state.step, **m}, run.tb)
    if m["val_bleu4"] < state.best_bleu:  # a tie goes to the later checkpoint, trained longer
        return False
    state.best_bleu, state.best_step = m["val_bleu4"], state.step
    return True


def train_loop(run: Run) -> int:
    """Steps until max_steps, a signal (exit code 0) or divergence (exit code 1)."""
    cfg, proc, state, opt = run.cfg, run.proc, run.state, run.opt
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not proc.main, desc="train", dynamic_ncols=True)
    losses, t_start = [], time.time() - state.seconds
    while state.step < cfg.max_steps:
        step = state.step
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, cfg, g["start"])
        if fault_injected("SIGTERM", step, proc.rank):
            os.kill(os.getpid(), signal.SIGTERM)
        t0 = time.time()
        position = run.batches.state_dict()  # before this step's batches: where a checkpoint of `step` resumes
        micro = [next(run.batches) for _ in range(run.accum)]
        try:
            out = train_step(run.ddp, micro, opt, cfg, step, proc, run.stop.signum is not None)
        except torch.OutOfMemoryError as e:
            bar.close()
            state.seconds = time.time() - t_start
            return out_of_memory(run, e, position)
        state.step = step = step + 1
        state.skipped += out["skipped"]
        state.bad_in_row = state.bad_in_row + 1 if out["skipped"] else 0
        state.tokens += int(out["tokens"])
        losses += [] if out["skipped"] else [(out["loss"], out["word_loss"])]
        row = {"step": step, "lr": opt.param_groups[0]["lr"], "grad_norm": out["grad_norm"],
               "tokens_per_s": out["tokens"] / (time.time() - t0), "peak_mem_gb": peak_memory_gb(proc.device),
               "skipped": state.skipped}
        bar.update(1)
        shown = {"loss": out["loss"]} if out["loss"] is not None else {"word_loss": out["word_loss"]}
        bar.set_postfix(**{k: f"{v:.3f}" for k, v in shown.items()}, lr=f"{row['lr']:.2e}",
                        tok_s=f"{row['tokens_per_s']:.0f}", mem=f"{row['peak_mem_gb']:.1f}G")
        if proc.main and (step % cfg.log_every == 0 or step == cfg.max_steps):
            # the mean losses since the last row
            curves.record(run.out_dir, {**row, **mean_losses(losses, cfg.word_head_size > 0)}, run.tb)
            losses = []
        new_best = maybe_validate(run)
        diverged = state.bad_in_row >= cfg.max_bad_steps
        state.seconds = time.time() - t_start
        if step % cfg.save_every == 0 or step == cfg.max_steps or out["stop"] or new_best or diverged:
            ckpt = save_checkpoint(run.out_dir, run.model, opt, state, run.batches.state_dict(), run.base, proc)
            if proc.main:
                if new_best:
                    checkpoints.point_best(run.out_dir, ckpt)
                checkpoints.prune(run.out_dir, cfg.keep_last)
        if out["stop"]:
            bar.close()
            log.info(f"stopped by a signal at step {step}; continue with --resume=auto")
            return 0
        if diverged:
            bar.close()
            log.error(f"{cfg.max_bad_steps} steps in a row had a non-finite loss or gradient: the run is "
                      f"diverging; stopped at step {step} (checkpoint saved). Lower lr or check the data.")
            return 1
    bar.close()
    return 0


def out_of_memory(run: Run, error: torch.OutOfMemoryError, position: dict) -> int:
    """A step ran out of GPU memory: save the last completed step unless it is saved already, then
    stop with one message saying what to change (exit code 1). With several processes the others
    wait in a collective that this one will never join, so nothing can be saved consistently: it
    leaves at once (torchrun then stops the others), and the newest checkpoint is where to go on."""
    cfg, proc, state = run.cfg, run.proc, run.state
    run.opt.zero_grad(set_to_none=True)  # the failed step's partial gradients
    peak = peak_memory_gb(proc.device)
    if proc.device.type == "cuda":
        torch.cuda.empty_cache()
    ckpt = checkpoints.step_dir(run.out_dir, state.step)
    if proc.world == 1 and state.step > 0 and not ckpt.exists():
        save_checkpoint(run.out_dir, run.model, run.opt, state, position, run.base, proc)
    newest = checkpoints.listed(run.out_dir)[-1:]
    message = oom_message(cfg, run.accum, proc.world, state.step + 1, peak, error, newest[0] if newest else None)
    log.error(message)
    if proc.world == 1:
        return 1
    if not proc.main:  # only rank 0 logs to the console
        print(f"error (rank {proc.rank}): {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(1)


def oom_message(cfg: TrainConfig, accum: int, world: int, step: int, peak_gb: float, error: Exception,
                ckpt: Path | None) -> str:
    """What ran out, with which settings, and what to change, first what costs nothing: half the
    batch_size with twice the grad_accum is the same optimizer step in smaller micro-batches."""
    asked = re.search(r"Tried to allocate [\d.]+ \w+", str(error))
    b, frames = cfg.batch_size, cfg.data.pose.max_frames
    # with global_batch set, grad_accum follows batch_size by itself
    changes = [f"--batch_size={b // 2}" + ("" if cfg.global_batch else f" --grad_accum={accum * 2}")
               + (f" (the same {b * accum * world} samples per step)" if b % 2 == 0 else "")] if b > 1 else []
    changes += ["--gradient_checkpointing=True"] if not cfg.gradient_checkpointing else []
    changes += [f"--max_frames={frames // 2}", "offload_embeddings=True or a smaller base model"]
    return "\n".join([
        f"step {step} ran out of GPU memory ({asked.group(0) if asked else error.__class__.__name__}) with "
        f"batch_size={b}, grad_accum={accum}, max_frames={frames}, gradient_checkpointing="
        f"{cfg.gradient_checkpointing}; peak memory so far {peak_gb:.2f} GB.",
        f"Change first: {changes[0]}; then {', then '.join(changes[1:])}.",
        f"To go on from {ckpt.name}: the same command with the new values and --resume={ckpt} --out_dir=NEW_DIR "
        "(this out_dir keeps its config)." if ckpt else "No checkpoint was saved: start again with the new values."])


def train(cfg: TrainConfig, proc: Dist) -> int:
    run = setup(cfg, proc)
    # Signal handlers only now: processes forked earlier (the cache's pool) must keep the default
    # ones, or Pool.terminate()'s SIGTERM would be caught and ignored by them.
    with run.stop:
        exit_code = train_loop(run)
    if run.tb is not None:
        run.tb.close()
    state = run.state
    log.info(f"done: step {state.step}/{cfg.max_steps} in {state.seconds / 60:.1f} min, "
             f"{state.tokens / max(state.seconds, 1e-9):.0f} tokens/s, {state.skipped} skipped steps, "
             f"peak memory {peak_memory_gb(proc.device):.2f} GB (rank {proc.rank}); " +
             (f"best val BLEU-4 {state.best_bleu:.2f} at step {state.best_step}" if state.best_step is not None
              else "no validation yet") + f"; weights digest {weights_digest(run.model)}")
    if cfg.test_at_end and state.step == cfg.max_steps:
        metrics = evaluate_test(run.model, run.tok, cfg, run.out_dir, proc, run.train_counts)
        if proc.main:
            print(json.dumps(metrics), flush=True)
    if proc.main and state.step == cfg.max_steps:
        clip = Path(cfg.data.data_dir) / cfg.data.pose_dir / f"{run.val_ds.uids[0] if len(run.val_ds) else 'CLIP'}.pose"
        tested = ev.predictions_path(run.out_dir, "test", tested_checkpoint(run.out_dir, cfg), num_beams=1)
        log.info(ev.next_steps(run.out_dir, tested, clip))
    if proc.world > 1:  # leave together: a rank tearing down gloo while rank 0 still saves can abort
        dist.barrier()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = config.load_config(sys.argv[1:] if argv is None else argv)
        proc = setup_distributed()
        if cfg.cpu_threads and proc.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        try:
            return train(cfg, proc)
        finally:
            checkpoints.release(Path(cfg.out_dir))   # the run is over: another may own out_dir
            if proc.world > 1:
                dist.destroy_process_group()
    except (ConfigError, corpus.DataError, FileNotFoundError) as e:
        if rank0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        if not log.handlers:  # before the run's log exists: Python's own report
            raise
        log.exception("the run stopped on an error")  # the traceback in logs/rank{r}.log (and on the console)
        return 1


if __name__ == "__main__":
    sys.exit(main())
