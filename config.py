"""The configuration of a training run: one dataclass tree, filled from a config file and the command line.

    TrainConfig                  model, LoRA, encoder, optimisation, evaluation, checkpoints
      .data: data.DataConfig     the corpus, its splits and the chat prompt
        .pose: poses.PoseConfig  the features of one .pose file and their augmentation

A config file (configs/*.py) is plain Python that is *run* (as nanoGPT's are): every top-level
name it assigns must be a config key; names starting with `_` are its own helpers and are
ignored. Keys are flat: every field of the tree has a name of its own, so `data_dir = ...` in a
file or `--data_dir=...` / `--fps=30` on the command line set cfg.data.data_dir and
cfg.data.pose.fps. Values are type-checked (ints are accepted for floats); `--key=value` is
parsed as a Python literal unless the field is a string.

A run saves its config as OUT_DIR/config.json (nested, as the tree) and everything that reads a
run (eval.py, --resume) loads it back as the same TrainConfig (`load_run_config`). Fields marked
`runtime` (where files are, how often to log or save) may change between a run and its
resumption; any other difference means another run, and train.py refuses to mix them (except
max_steps, which may grow: a finished run is extended by resuming it with a larger one).
`check` tests every value that can be wrong before anything is loaded (load_config calls it).

    cfg = load_config(["configs/tiny.py", "--max_steps=200"])
    cfg.data.pose.max_frames, flat(cfg)["max_frames"]        # the same value
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import runpy
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from data import DataConfig
from poses import LAYOUTS


def runtime(default, **kw):
    """A field that may change when a run is resumed (where files are, how often to log)."""
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata={"runtime": True}, **kw)
    return field(default=default, metadata={"runtime": True}, **kw)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    # first use: the CPU demo makes its own corpus and base model
    synth_n: int = 0                 # > 0 and data_dir missing: generate a synthetic corpus there
    synth_seed: int = 0
    init_model: dict = field(default_factory=dict)  # non-empty and model_dir missing: create a random
                                                    # Qwen2 of these sizes + a BPE tokenizer there; with
                                                    # model_dir "" that is out_dir/base: every run, and so
                                                    # every corpus, gets a tokenizer of its own texts
    # model
    model_dir: str = runtime("checkpoints/Qwen2.5-7B-Instruct")
    model_repo: str = "Qwen/Qwen2.5-7B-Instruct"  # named in the download hint if model_dir is missing
    quantize: str = "nf4"            # "nf4" (QLoRA) or "none" (LoRA on a 16-bit base)
    double_quant: bool = False       # NF4 absmax in 8 bits too (QLoRA's DQ): -0.37 bit per weight; costs a
                                     # float32 expansion of the absmax in every 4-bit call
    quant_cache: str = runtime("")   # directory: the quantized base is saved there on first load
                                     # and read back by later runs and eval.py ("" = quantize each time)
    offload_embeddings: bool = runtime(False)  # keep the frozen input embedding table in host memory
                                     # (untied models, 7B and up): vocab x hidden x 2 bytes less GPU memory
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    # The defaults are the recipe that makes a frozen, pretrained LLM read the signs (docs/training.md,
    # "The real recipe"): LoRA+ on all seven projections, a faster encoder, soft tokens aligned.
    lora_targets: list = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    modules_to_save: list = field(default_factory=list)  # e.g. ["embed_tokens", "lm_head"]
    encoder_width: int = 512
    encoder_layers: int = 2          # dilated residual conv blocks over the downsampled frames (translator.PoseEncoder)
    encoder_dropout: float = 0.1
    answer_dropout: float = 0.0      # training: answer tokens given as input replaced by padding (translator)
    # the encoder's word objective (translator.word_presence_loss): which words of the training
    # texts (the aux_words most frequent, stop words left out) a clip signs
    aux_words: int = 1024
    aux_weight: float = 1.0          # weight of the word loss beside the language-model loss (0: off)
    aux_only_steps: int = 0          # first steps: the encoder learns the words alone (no LLM)
    align_weight: float = 1.0        # > 0: the word loss also draws the soft tokens towards the LLM's input
                                     # embeddings of the signed words (translator.embedding_alignment_loss)
    word_hints: int = 8              # the head's likeliest words given to the LLM as text (translator.WordHints)
    aux_vocabulary: list = runtime(lambda: [])   # the head's words as the texts write them: resolved where a run
                                     # starts (lexicon.head_vocabulary), saved in config.json for eval.py
    gradient_checkpointing: bool = False
    fsdp: bool = runtime(False)      # shard the model over all processes (FSDP2) instead of a whole copy on
                                     # each (DDP): for models larger than one GPU (docs/training.md). Checkpoints
                                     # are the same either way: a run may resume with the other
    fsdp_cpu_offload: bool = runtime(False)  # FSDP: keep the shards, their gradients and AdamW in host
                                     # memory, copied to the GPU per layer (CPUOffloadPolicy); slower
    # optimisation: samples per step = batch_size x grad_accum x world_size
    # batch_size and grad_accum are runtime: a resumed run may split its steps into other
    # micro-batches (after an out-of-memory step: half the batch, twice the accumulation)
    batch_size: int = runtime(4)     # clips per micro-batch per process
    grad_accum: int = runtime(8)
    global_batch: int = 0            # > 0: grad_accum = global_batch / (batch_size x world_size)
    max_steps: int = 3000
    lr: float = 1e-3                 # LoRA (and modules_to_save)
    lora_plus_ratio: float = 16.0    # LoRA+: the B matrices learn at lr x this (train.make_optimizer)
    encoder_lr: float = 3e-3
    align_steps: int = 0             # first steps: the encoder alone learns, through the frozen LLM (the
                                     # adapters start after them, with their own warmup)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1        # cosine decays to lr x this
    grad_clip: float = 1.0
    max_bad_steps: int = runtime(20)  # non-finite losses in a row before the run stops
    # evaluation, checkpoints, logging
    eval_every: int = runtime(500)
    eval_samples: int = runtime(200)  # validation subset for val loss and BLEU
    eval_batch_size: int = runtime(16)
    max_new_tokens: int = runtime(64)
    test_at_end: bool = runtime(False)  # evaluate the best checkpoint on the test split at the end
    save_every: int = runtime(500)
    keep_last: int = runtime(3)
    log_every: int = runtime(10)
    tensorboard: bool = runtime(False)  # also write metrics.jsonl's numbers as TensorBoard events in
                                     # out_dir/tb/ (needs `pip install tensorboard`)
    out_dir: str = runtime("runs/default")
    resume: str = runtime("")        # "auto": newest good checkpoint in out_dir; or a ckpt path
    seed: int = 0
    num_workers: int = runtime(2)    # data loader processes per rank (0: in the main process)
    cpu_threads: int = runtime(0)    # > 0: torch threads of a CPU run (0: torch's default)

    # What the code needs from the keys above, decided here once for every caller (properties:
    # not keys, not saved in config.json).
    @property
    def base_quantize(self) -> str | None:
        """quantize as loader.py takes it: "nf4", or None for the 16-bit base (quantize="none")."""
        return None if self.quantize == "none" else self.quantize

    @property
    def word_head_size(self) -> int:
        """Words the encoder's word head scores: aux_words while the word objective is on
        (aux_weight or aux_only_steps), else 0: no head and no word targets."""
        return self.aux_words if self.aux_weight > 0 or self.aux_only_steps > 0 else 0


class ConfigError(ValueError):
    pass


# ----------------------------------------------------------------------------- the flat key space

@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]   # ("data", "pose", "fps")
    type: object            # the annotation, e.g. float | None
    runtime: bool


def _keys(cls=TrainConfig, prefix: tuple[str, ...] = ()) -> dict[str, Key]:
    """Every leaf field of the tree by its own name; nested dataclasses are walked, not keys."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = _keys(hints[f.name], prefix + (f.name,))
            clash = sorted(set(inner) & set(out))
            if clash:
                raise TypeError(f"config keys {clash} are defined twice in the TrainConfig tree")
            out.update(inner)
        else:
            if f.name in out:
                raise TypeError(f"config key {f.name!r} is defined twice in the TrainConfig tree")
            out[f.name] = Key(prefix + (f.name,), hints[f.name], bool(f.metadata.get("runtime")))
    return out


KEYS = _keys()


def flat(cfg: TrainConfig) -> dict:
    """{key: value} over every leaf of the tree (JSON-ready: tuples become lists)."""
    out = {}
    for name, key in KEYS.items():
        v = cfg
        for part in key.path:
            v = getattr(v, part)
        out[name] = list(v) if isinstance(v, tuple) else v
    return out


def check_value(key: str, value, typ):
    """Type-check one config value (ints are accepted for floats, tuples and lists for each other)."""
    if typing.get_args(typ) and type(None) in typing.get_args(typ):  # `float | None`
        if value is None:
            return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (list, tuple) and isinstance(value, (list, tuple)):
        return typ(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(values: dict) -> TrainConfig:
    """A TrainConfig from flat {key: value} (unknown keys are errors), defaults elsewhere."""
    cfg = TrainConfig()
    for name, value in values.items():
        if name not in KEYS:
            raise ConfigError(f"unknown config key {name!r}")
        key = KEYS[name]
        target = cfg
        for part in key.path[:-1]:
            target = getattr(target, part)
        setattr(target, key.path[-1], check_value(name, value, key.type))
    return cfg


def parse_override(arg: str) -> tuple[str, object]:
    """'--key=value' -> (key, value); value parsed as a Python literal unless the field is a str."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"expected --key=value, got {arg!r}")
    name, raw = arg[2:].split("=", 1)
    if name not in KEYS:
        raise ConfigError(f"unknown config key {name!r} (in {arg!r})")
    typ = KEYS[name].type
    if typ is str or (typ == (str | None) and raw != "None"):
        return name, raw
    if typ is bool and raw.lower() in ("true", "false"):
        return name, raw.lower() == "true"
    try:
        return name, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ConfigError(f"config key {name!r}: cannot parse {raw!r} as {typ}") from None


def load_config(argv: list[str]) -> TrainConfig:
    """[CONFIG.py] [--key=value ...] -> TrainConfig."""
    values = {}
    if argv and not argv[0].startswith("--"):
        path, argv = argv[0], argv[1:]
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} not found")
        for k, v in runpy.run_path(path).items():
            if k.startswith("_") or isinstance(v, types.ModuleType):
                continue
            if k not in KEYS:
                raise ConfigError(f"{path}: unknown config key {k!r}")
            values[k] = v
    values.update(parse_override(a) for a in argv)
    cfg = build(values)
    if cfg.init_model and not cfg.model_dir:
        cfg.model_dir = str(Path(cfg.out_dir) / "base")
    check(cfg)
    return cfg


# ----------------------------------------------------------------------------- values checked before loading

def _positive(v) -> bool:
    return math.isfinite(v) and v > 0


def _fraction(v) -> bool:
    return 0 <= v < 1


# key -> (test, what it must be): every value that can be wrong is caught here, before a model
# or a corpus is loaded, instead of as a ZeroDivisionError one step into training.
RULES = {
    **{k: (lambda v: v >= 1, ">= 1") for k in (
        "batch_size", "grad_accum", "max_steps", "max_bad_steps", "eval_every", "eval_batch_size",
        "max_new_tokens", "save_every", "log_every", "lora_r", "encoder_width", "max_answer_tokens",
        "max_frames", "min_frames")},
    **{k: (lambda v: v >= 0, ">= 0") for k in (
        "global_batch", "warmup_steps", "align_steps", "eval_samples", "num_workers", "cpu_threads", "synth_n",
        "weight_decay", "grad_clip", "encoder_lr", "align_weight", "aug_rotate_deg", "aug_scale", "aug_shear",
        "aug_shift", "aug_noise")},
    **{k: (_fraction, "in [0, 1)") for k in ("lora_dropout", "encoder_dropout", "aug_speed", "aug_frame_drop")},
    "lr": (_positive, "> 0"),
    "lora_alpha": (_positive, "> 0"),
    "lora_plus_ratio": (_positive, "> 0"),
    "max_pose_mb": (_positive, "> 0"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fps": (lambda v: v is None or _positive(v), "None or > 0"),
    "split_ratios": (lambda v: len(v) == 3 and all(x >= 0 for x in v) and sum(v) > 0,
                     "three numbers >= 0 (train, val, test) with a positive sum"),
    "quantize": (lambda v: v in ("nf4", "none"), "'nf4' or 'none'"),
    "lexicon_mix": (lambda v: len(v) == 2 and all(0 <= x <= 1 for x in v), "two shares in [0, 1] (first, last epoch)"),
}


def check(cfg: TrainConfig) -> None:
    """Every value (and combination) that can be checked without loading anything; load_config
    calls it, so a bad --key=value stops the run before its first file is read."""
    values = flat(cfg)
    for key, (ok, rule) in RULES.items():
        if not ok(values[key]):
            raise ConfigError(f"config key {key!r} must be {rule}, got {values[key]!r}")
    if cfg.data.pose.min_frames > cfg.data.pose.max_frames:
        raise ConfigError(f"min_frames ({cfg.data.pose.min_frames}) is above max_frames ({cfg.data.pose.max_frames})")
    if cfg.data.pose.layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"config key 'layout' must be 'auto' or one of {', '.join(LAYOUTS)}, "
                          f"got {cfg.data.pose.layout!r}")
    if cfg.double_quant and cfg.quantize != "nf4":
        raise ConfigError("double_quant=True needs quantize='nf4'")
    if cfg.fsdp_cpu_offload and not cfg.fsdp:
        raise ConfigError("fsdp_cpu_offload=True offloads FSDP's shards; it needs fsdp=True")
    if cfg.offload_embeddings and any(m.split(".")[-1] == "embed_tokens" for m in cfg.modules_to_save):
        raise ConfigError("offload_embeddings=True keeps embed_tokens frozen in host memory; it cannot "
                          "also be in modules_to_save (trained)")


# ----------------------------------------------------------------------------- a run's saved config

def save_run_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


NESTED = {part for key in KEYS.values() for part in key.path[:-1]}  # "data", "pose"


def _leaves(d: dict) -> dict:
    """Nested config.json -> flat {key: value} (the nesting is the dataclass tree's)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in NESTED:
            out.update(_leaves(v))
        else:
            out[k] = v
    return out


def load_run_config(path: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with, from its config.json; `path` is that file, the run
    directory, or one of the run's checkpoint directories."""
    path = Path(path)
    if path.is_dir():
        path = (path if (path / "config.json").is_file() else path.resolve().parent) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run directory's saved config is needed")
    try:
        return build(_leaves(json.loads(path.read_text())))
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{path}: not a config this version can read ({e})") from None


GROWS = {"max_steps"}  # may be raised when a run is resumed (a finished run is extended), never lowered


def differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """The non-runtime keys whose values differ, as 'key: old there, new now' lines."""
    a, b = flat(old), flat(new)
    return [f"{k}: {a[k]!r} there, {b[k]!r} now" for k in KEYS
            if not KEYS[k].runtime and a[k] != b[k] and not (k in GROWS and b[k] > a[k])]
