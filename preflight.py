"""Before training loads the model: everything about a run that can fail early, checked first,
and what the run needs created on first use.

    accumulation              micro-steps per optimizer step (global_batch split over the ranks)
    keep_run_layout           a run out_dir already holds keeps the layout it resolved
    claim_out_dir             out_dir writable, and this run its one owner while it runs
    check_run_dir             an out_dir holding another run is an error, never overwritten
    check_inputs              the corpus and the base checkpoint exist (with how to get them)
    check_splits              what an empty split means for the run, said before the model loads
    create_first_use_assets   the CPU demo's synthetic corpus and random tiny Qwen2 + BPE tokenizer
    find_resume               the checkpoint to resume from (--resume=auto|PATH), checked
    prepare_run               all of the above in order, the layout resolved, the pose cache built,
                              the resolved config saved: what train.setup runs first

Every check raises config.ConfigError (or corpus.DataError, FileNotFoundError) saying what to
change; train.main prints it as one line and exits with code 2, before any weights are read.

Used by train.py; tests: python -m pytest tests/test_train.py tests/test_robust.py
"""
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import checkpoints
import config
import corpus
import data
import lexicon
import loader
from config import ConfigError, TrainConfig
from processes import FILE_ONLY, Dist, all_sum, setup_logging

log = logging.getLogger("train")  # the run's log (processes.setup_logging)


def accumulation(cfg: TrainConfig, world: int) -> int:
    """Micro-steps per optimizer step; global_batch (if set) must split evenly over the ranks."""
    if not cfg.global_batch:
        return cfg.grad_accum
    per_round = cfg.batch_size * world
    if cfg.global_batch % per_round:
        raise ConfigError(f"global_batch={cfg.global_batch} is not divisible by batch_size x world_size "
                          f"= {cfg.batch_size} x {world}; pick a global_batch that is a multiple of {per_round}")
    return cfg.global_batch // per_round


def keep_run_layout(cfg: TrainConfig, out_dir: Path) -> None:
    """Layout "auto" is decided once per run, when the run starts: a run that out_dir already
    holds keeps the layout its config.json records; a new run's is resolved from its corpus
    (corpus.resolve_layout in prepare_run, once the corpus exists)."""
    saved = out_dir / "config.json"
    if cfg.data.pose.layout == "auto" and saved.is_file():
        cfg.data.pose.layout = config.load_run_config(saved).data.pose.layout


def check_run_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """An out_dir that holds another run is an error, not something to overwrite or mix with."""
    saved = out_dir / "config.json"
    if saved.is_file():
        old = config.load_run_config(saved)
        diff = config.differences(old, cfg)
        if diff:
            raise ConfigError(f"{out_dir} holds a run with a different config ({'; '.join(diff[:5])}); "
                              "use another --out_dir, or the same config to resume")
    if not cfg.resume and checkpoints.listed(out_dir):
        raise ConfigError(f"{out_dir} already holds checkpoints; pass --resume=auto to continue that "
                          "run, or choose another --out_dir")


def claim_out_dir(out_dir: Path) -> str | None:
    """Rank 0, before anything is written there: out_dir created, writable, and owned by this run
    for its life (checkpoints.own). None, or why the run cannot have it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):  # a file can be made there (the lock's may exist already)
            pass
        holder = checkpoints.own(out_dir)
    except OSError as e:
        return (f"out_dir {out_dir} cannot be written ({e.strerror or e}); choose a folder you can write "
                "with --out_dir=DIR")
    if holder:
        return (f"{out_dir} is in use by another run ({holder}; lock file {out_dir / '.lock'}); wait for it to "
                "end (then --resume=auto continues it), or choose another --out_dir")
    return None


def check_inputs(cfg: TrainConfig) -> Path:
    """Data and base checkpoint exist (before anything heavy is loaded); returns where the base's
    files are (loader.model_path: model_dir, or a Hub repo id's snapshot in the local cache)."""
    base_dir = loader.model_path(cfg.model_dir)
    if not Path(cfg.data.data_dir).is_dir():
        raise ConfigError(f"data_dir {cfg.data.data_dir} does not exist (getting iSign: docs/training.md, "
                          "\"iSign, step by step\"; or `python data.py synth DIR` for a synthetic corpus)")
    lexicon_dir = cfg.data.lexicon_dir
    if lexicon_dir and not (Path(lexicon_dir) / "index.csv").is_file():
        raise ConfigError(f"lexicon_dir {lexicon_dir} holds no index.csv (a sign dictionary: docs/data.md, "
                          "\"Sign dictionaries\"; `python data.py lexicon FOLDER OUT` makes one from a folder)")
    if not (base_dir / "config.json").is_file():
        searched = (f", nor is it in the Hugging Face cache {loader.hub_cache()}"
                    if loader.REPO_ID.fullmatch(cfg.model_dir) else "")
        where = "" if cfg.model_dir == cfg.model_repo else f" --local-dir {cfg.model_dir}"  # a repo id: the cache
        raise ConfigError(f"model_dir {cfg.model_dir} holds no checkpoint (config.json missing){searched}. Download "
                          f"it with: hf download {cfg.model_repo}{where}  "
                          "(pip install huggingface_hub; older versions: huggingface-cli download)")
    return base_dir


def check_splits(cfg: TrainConfig, sizes: dict[str, int], main: bool) -> None:
    """What an empty split means for this run, said before the model loads: no train split is an
    error; no validation split, no validation (and no `best`); no test split, no test_at_end
    (turned off here: the run must not fail at its end, nor a requeued run at every end)."""
    source = corpus.splits_source(cfg.data)
    if main:
        log.info(corpus.splits_source(cfg.data, sizes))
    if not sizes["train"]:
        raise ConfigError(f"the train split of {cfg.data.data_dir} has no clips ({source}); give the corpus a "
                          "train split (train.csv, or split_ratios when it has one CSV)")
    if not sizes["val"] and main:
        log.warning(f"no validation split in {cfg.data.data_dir} ({source}): no validation runs, no `best` "
                    "checkpoint is chosen, and test_at_end tests the last one (give the corpus a val.csv, or "
                    "split_ratios with a val share, to have one)")
    if not sizes["test"] and cfg.test_at_end:
        cfg.test_at_end = False
        if main:
            log.warning(f"no test split in {cfg.data.data_dir} ({source}): test_at_end is skipped (the run's "
                        "checkpoints are evaluated with `python eval.py OUT_DIR --split val`)")


def create_first_use_assets(cfg: TrainConfig) -> None:
    """The CPU demo needs no download: a synthetic corpus and a random tiny Qwen2 (+ BPE
    tokenizer trained on the corpus's training texts) are made on first use."""
    data_dir = cfg.data.data_dir
    if cfg.synth_n and not Path(data_dir).exists():
        from synth import demo
        log.info(f"generating a synthetic corpus of {cfg.synth_n} clips in {data_dir} (once)")
        tmp = Path(f"{data_dir}.tmp")  # renamed when complete: an interrupted run starts over
        shutil.rmtree(tmp, ignore_errors=True)
        demo.generate_corpus(tmp, n=cfg.synth_n, seed=cfg.synth_seed)
        os.rename(tmp, data_dir)
    if cfg.init_model and not (loader.model_path(cfg.model_dir) / "config.json").exists():
        create_random_model(cfg)


def create_random_model(cfg: TrainConfig) -> None:
    """A BPE tokenizer trained on the training texts, and a Qwen2 of init_model's sizes
    initialised as transformers does (N(0, initializer_range), zero biases, unit norms)."""
    import tokenizer
    from model import Qwen2Config
    dcfg = cfg.data
    texts = [r.text for r in corpus.read_rows(dcfg) if r.split == "train"]
    if dcfg.lexicon_dir:   # a dictionary's words may be signed in stitched sentences: they get merges too
        texts += [r.text for r in corpus.read_rows(lexicon.lexicon_config(dcfg)) if not r.problem]
    # Every training sequence also holds the prompt: its words get merges as often as they occur.
    prompt = [dcfg.system_prompt, dcfg.user_prompt.format(pose="", language=dcfg.source_language),
              "system user assistant"]
    spec = dict(cfg.init_model)
    vocab, std = spec.pop("vocab_size", 1024), spec.pop("initializer_range", 0.02)
    tok = tokenizer.train_bpe(texts + prompt * len(texts), vocab, cfg.model_dir)
    torch.manual_seed(cfg.seed)
    llm = loader.random_model(Qwen2Config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_ids[0], **spec), std=std)
    loader.save_model(llm, cfg.model_dir)
    log.info(f"created a random Qwen2 {spec} with a {tok.vocab_size}-token BPE in {cfg.model_dir}")


def find_resume(cfg: TrainConfig, out_dir: Path, base: dict) -> Path | None:
    """The checkpoint to resume from: --resume=PATH, or for "auto" the newest in out_dir that passes
    its checks (damaged ones skipped; all damaged is an error, not a fresh start over them). It
    must come from a run of this config (max_steps may grow) and on this base model."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        saved, problems, ckpt = checkpoints.listed(out_dir), {}, None
        for c in reversed(saved):
            problems[c] = checkpoints.problem(c)
            if problems[c] is None:
                ckpt = c
                break
            log.warning(f"skipping checkpoint {c}: {problems[c]}")
        if ckpt is None and saved:
            raise ConfigError(f"--resume=auto: none of the {len(saved)} checkpoints in {out_dir} can be used "
                              f"({'; '.join(f'{c.name}: {why}' for c, why in problems.items())}); nothing was "
                              "changed. Move them away to train from step 0, or --resume=PATH a copy of a good one")
        if ckpt is None:  # nothing saved yet (or a mistyped out_dir): say so, it starts over
            log.info(f"--resume=auto: no checkpoint in {out_dir} yet, so the run starts from step 0")
            return None
    else:
        ckpt = Path(cfg.resume)
        problem = checkpoints.problem(ckpt)
        if problem:
            raise ConfigError(f"cannot resume from {ckpt}: {problem}")
        diff = config.differences(config.load_run_config(ckpt), cfg)
        if diff:
            raise ConfigError(f"cannot resume from {ckpt}: its run has another config ({'; '.join(diff[:5])}); "
                              "resume with that run's config (max_steps may be larger)")
    mismatch = checkpoints.base_mismatch(ckpt, base)
    if mismatch:
        raise ConfigError(f"cannot resume: {mismatch}")
    return ckpt


@dataclass(frozen=True)
class Prepared:
    """What prepare_run decided about a run, besides the config it resolved (train.setup's input)."""
    out_dir: Path
    grad_accum: int       # micro-steps per optimizer step (accumulation)
    base_dir: Path        # the base checkpoint's files (check_inputs)
    base: dict            # its identity, saved in every checkpoint (checkpoints.base_identity)
    resume: Path | None   # the checkpoint to resume from (find_resume), None: from step 0


def prepare_run(cfg: TrainConfig, proc: Dist) -> Prepared:
    """Everything that can fail before the model is loaded: batch arithmetic, out_dir, first-use
    assets, data and base checkpoint present, the checkpoint to resume from and its base, the pose
    cache. Resolves cfg in place (the layout) and saves it as the run's config.json."""
    out_dir = Path(cfg.out_dir)
    accum = accumulation(cfg, proc.world)
    if cfg.fsdp and not dist.is_initialized():
        raise ConfigError("fsdp=True shards the model over the processes of a torchrun job: start it with "
                          "torchrun --nproc_per_node N train.py ... (N >= 1)")
    keep_run_layout(cfg, out_dir)
    refused = claim_out_dir(out_dir) if proc.main else None
    if all_sum([refused is not None], proc)[0]:   # every rank leaves, only rank 0 knows why
        raise ConfigError(refused or f"rank 0 could not claim out_dir {out_dir} (its reason is on its console)")
    check_run_dir(cfg, out_dir)
    setup_logging(out_dir, proc)
    if proc.main:
        for left in checkpoints.clean(out_dir):
            log.info(f"removed {left}, left by an interrupted save")
        create_first_use_assets(cfg)
    if proc.world > 1:
        dist.barrier()
    base_dir = check_inputs(cfg)
    if cfg.data.pose.layout == "auto":  # a new run: the layout its files have, recorded in its config
        cfg.data = corpus.resolve_layout(cfg.data)
        log.info(f"layout 'auto': {cfg.data.pose.layout} (the first layout the corpus's pose files fit)")
    base = checkpoints.base_identity(cfg.model_dir, base_dir)
    ckpt = find_resume(cfg, out_dir, base)  # every rank: each reads the same files, the same answer
    data.ensure_cache(cfg.data, proc.rank, proc.world)
    if cfg.data.lexicon_dir:   # the dictionary's clips: the corpus's features, a cache of its own
        data.ensure_cache(lexicon.lexicon_config(cfg.data), proc.rank, proc.world)
    check_splits(cfg, data.split_sizes(cfg.data), proc.main)
    if cfg.word_head_size and not cfg.aux_vocabulary:   # the word head's words, saved for eval.py
        cfg.aux_vocabulary = lexicon.head_vocabulary(cfg.data, cfg.aux_words)
    if proc.main:
        log.info("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in config.flat(cfg).items()), extra=FILE_ONLY)
        log.info(f"the resolved config: {out_dir / 'config.json'} (and {out_dir / 'logs' / 'rank0.log'})")
        log.info(f"{proc.world} process(es) on {proc.device.type}; samples per step = batch_size {cfg.batch_size} "
                 f"x grad_accum {accum} x world_size {proc.world} = {cfg.batch_size * accum * proc.world}")
        config.save_run_config(cfg, out_dir / "config.json")
    return Prepared(out_dir, accum, base_dir, base, ckpt)
