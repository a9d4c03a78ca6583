"""Checkpoints on disk: what train.py writes and eval.py / train.py --resume read.

    OUT_DIR/config.json           the run's resolved config (train.py writes it at the start)
    OUT_DIR/ckpt-000600/
        trained.safetensors       the trained tensors only (LoRA, pose encoder), by parameter name
        optimizer.safetensors     AdamW's state by parameter name: 'NAME:exp_avg', ':exp_avg_sq', ':step'
        state.json                step, world size, data position, every rank's RNG state, ...
        meta.json                 written last: step, time, the base model's fingerprint, and every
                                  file's size and sha256
    OUT_DIR/best -> ckpt-000600   relative link to the best checkpoint by validation BLEU
    OUT_DIR/.lock                 held by the run's rank 0 while it runs (own): one run at a time

A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed: a
half-written one is never seen under its name. meta.json lets a reader check each file, so a
truncated or corrupt checkpoint is recognised (problem) and skipped. The frozen base is never
saved: a checkpoint is a few MB to a few hundred MB whatever the base model's size.

One format for DDP and FSDP: the tensors are whole. Under FSDP each rank holds a dim-0 chunk of
every trained tensor and of its AdamW moments; `consolidated` gathers them for rank 0 to write,
and loading gives each rank its chunk again (sharding.local_part), so a checkpoint resumes with any
world size, under FSDP or DDP, and eval.py reads it in one process.
"""
import base64
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import loader
import sharding
from processes import hold_lock, lock_holder

TRAINED, OPTIMIZER, STATE, META = "trained.safetensors", "optimizer.safetensors", "state.json", "meta.json"


# ----------------------------------------------------------------------------- reading

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def problem(ckpt: Path) -> str | None:
    """Why a checkpoint directory cannot be used (None if it can): meta.json is written last,
    and lists every file with its size and sha256, so half-written or damaged files show."""
    try:
        meta = json.loads((ckpt / META).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable {META} ({e.__class__.__name__}: {e})"
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("files"), dict):
        return f"{META} has no step or file list (damaged, or not written by checkpoints.save)"
    unlisted = [name for name in (TRAINED, OPTIMIZER, STATE) if name not in meta["files"]]
    if unlisted:
        return f"{META} does not list {', '.join(unlisted)}"
    for name, want in meta["files"].items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {META} says {want['bytes']} (truncated?)"
        if sha256(path) != want["sha256"]:
            return f"{name} does not match its sha256 in {META} (corrupt)"
    return None


def listed(run_dir: Path) -> list[Path]:
    """ckpt-NNNNNN directories, oldest first (six-digit steps sort as text)."""
    return sorted(p for p in Path(run_dir).glob("ckpt-[0-9]*") if p.is_dir())


def pick(path: Path) -> Path:
    """A checkpoint directory as given, else a run's best checkpoint, else its newest good one."""
    path = Path(path)
    if (path / META).exists() or path.name.startswith("ckpt-"):
        candidates = [path]
    else:
        best = path / "best"
        candidates = ([best.resolve()] if best.exists() else []) + listed(path)[::-1]
    for ckpt in candidates:
        why = problem(ckpt)
        if why is None:
            return ckpt
        print(f"warning: skipping {ckpt}: {why}", file=sys.stderr)
    raise FileNotFoundError(f"{path}: no usable checkpoint (expected ckpt-NNNNNN/ with {META})")


def base_identity(model_dir: str, files: Path) -> dict:
    """What a checkpoint records of its base model and base_mismatch compares: model_dir as the
    run names it, and the fingerprint of its files (`files`: loader.model_path(model_dir))."""
    return {"model_dir": model_dir, "fingerprint": loader.fingerprint(files)}


def base_mismatch(ckpt: Path, base: dict) -> str | None:
    """Why `base` (base_identity) is not the base model the
    checkpoint was trained on (None if it is). A base of the same shapes (Qwen2.5-7B for
    7B-Instruct) would load without an error and quietly give other results."""
    saved = json.loads((ckpt / META).read_text()).get("base")
    if saved is None:
        print(f"warning: {ckpt / META} holds no base fingerprint (an older checkpoint): the base model "
              "cannot be checked", file=sys.stderr)
        return None
    if saved["fingerprint"] == base["fingerprint"]:
        return None
    return (f"{ckpt} was trained on the base model in {saved['model_dir']} (fingerprint {saved['fingerprint']}), "
            f"but model_dir {base['model_dir']} holds another one (fingerprint {base['fingerprint']}); "
            f"pass --model_dir=DIR of the base it was trained on")


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of a model: its parameters that require grad, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trained(model: nn.Module, ckpt: Path) -> None:
    """Copy a checkpoint's trained tensors into the model; every trained tensor must be there."""
    tensors = load_file(str(ckpt / TRAINED))
    own = trained_tensors(model)
    if set(tensors) != set(own):
        diff = sorted(set(tensors) ^ set(own))
        raise ValueError(f"{ckpt / TRAINED}: tensors do not match the model built from the run's "
                         f"config ({len(diff)} differ, e.g. {diff[:3]})")
    for name, p in own.items():
        if tensors[name].shape != p.shape:
            raise ValueError(f"{ckpt / TRAINED}: tensor {name} has shape {tuple(tensors[name].shape)} there, "
                             f"{tuple(p.shape)} in the model built from the run's config (another lora_r, "
                             "encoder_width or base?)")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(sharding.local_part(p, tensors[name]))


def load(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Trained tensors and optimizer state into model and opt; returns state.json's contents."""
    load_trained(model, ckpt)
    moments = load_file(str(ckpt / OPTIMIZER))
    for name, p in trained_tensors(model).items():
        state = {k.split(":", 1)[1]: v for k, v in moments.items() if k.split(":", 1)[0] == name}
        if state:  # the moments are laid out as their parameter; fused AdamW keeps step on its device too
            opt.state[p] = {k: sharding.local_part(p, v) if v.shape == p.shape else v.to(p.device)
                            for k, v in state.items()}
    return json.loads((ckpt / STATE).read_text())


# ----------------------------------------------------------------------------- RNG state (state.json)

def rng_state() -> dict:
    """Every generator this process draws from (dropout, augmentation), JSON-ready."""
    np_state = np.random.get_state()
    return {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "cuda": [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def set_rng_state(s: dict) -> None:
    def tensor(b64):
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)
    torch.set_rng_state(tensor(s["torch"]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(x) for x in s["cuda"]])
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


def consolidated(model: nn.Module, opt: torch.optim.Optimizer, keep: bool) -> tuple[dict, dict]:
    """What a checkpoint holds: the trained tensors, and AdamW's state as 'NAME:exp_avg' etc., whole
    and in host memory. Under FSDP each is gathered from every rank's chunk, one at a time, so
    every rank must call this; only where `keep` (rank 0, which writes) are they kept."""
    tensors, moments = {}, {}
    for name, p in trained_tensors(model).items():
        for key, t in [("", p.detach()), *((f":{k}", v) for k, v in opt.state.get(p, {}).items())]:
            full = sharding.whole(t)
            if keep:
                (moments if key else tensors)[name + key] = full.cpu()
    return tensors, moments


# ----------------------------------------------------------------------------- the run directory's owner

_owned: dict[Path, int] = {}  # run directory -> the fd that holds its lock, in this process


def own(out_dir: Path) -> str | None:
    """Make this process the owner of out_dir (rank 0, for the run's life: until release() or the
    process's end, a kill included). None when it is; else who owns it, e.g. 'pid 4242 on node7
    since 2026-01-02 10:00:00': two runs writing one directory would mix their metrics, logs
    and checkpoints. Raises OSError when the folder cannot be written."""
    out_dir = Path(out_dir).resolve()
    if out_dir in _owned:
        return None
    fd = hold_lock(out_dir / ".lock")
    if fd is None:
        return lock_holder(out_dir / ".lock")
    _owned[out_dir] = fd
    return None


def run_dir_of(path: Path) -> Path | None:
    """The run directory that path is in (or is), None if none: the nearest folder at or above it
    with a run's config.json beside its metrics, logs or checkpoints."""
    for p in (Path(path).resolve(), *Path(path).resolve().parents):
        if (p / "config.json").is_file() and ((p / "metrics.jsonl").is_file() or (p / "logs").is_dir() or listed(p)):
            return p
    return None


def release(out_dir: Path) -> None:
    """The run is over: another may own out_dir."""
    fd = _owned.pop(Path(out_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


# ----------------------------------------------------------------------------- writing (rank 0)

def _write(path: Path, write) -> None:
    """Write one file through `write(path)` and fsync it: after the rename it must be on disk."""
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f"ckpt-{step:06d}"


def clean(out_dir: Path) -> list[Path]:
    """Remove the .tmp-ckpt-* directories that killed saves left; returns them. Only where no
    other process writes into out_dir (rank 0, at the start of a run)."""
    left = sorted(p for p in Path(out_dir).glob(".tmp-ckpt-*") if p.is_dir())
    for path in left:
        shutil.rmtree(path)
    return left


def save(out_dir: Path, step: int, tensors: dict, moments: dict, state: dict, base: dict) -> Path:
    """Write OUT_DIR/ckpt-STEP atomically: trained tensors and AdamW state (from consolidated),
    `state` (JSON), meta.json (with `base`, the base model's {"model_dir", "fingerprint"}). A
    failed write (disk full) removes its temporary directory and leaves every earlier checkpoint
    as it was."""
    final = step_dir(out_dir, step)
    tmp = out_dir / f".tmp-{final.name}"  # never matched by ckpt-* while incomplete
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(tmp, step, tensors, moments, state, base)
    except Exception as e:  # safetensors reports a full disk as its own SafetensorError, not an OSError
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(out_dir).free / 2**30
        raise OSError(f"could not write checkpoint {final} ({type(e).__name__}: {e}); {free:.2f} GiB free in "
                      f"{out_dir}. Earlier checkpoints are untouched: free some space, then --resume=auto") from e
    if final.exists():  # a re-save of the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(out_dir)
    return final


def _write_checkpoint(tmp: Path, step: int, tensors: dict, moments: dict, state: dict, base: dict) -> None:
    tmp.mkdir(parents=True)
    _write(tmp / TRAINED, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p)))
    _write(tmp / OPTIMIZER, lambda p: save_file({k: v.contiguous() for k, v in moments.items()}, str(p)))
    _write(tmp / STATE, lambda p: p.write_text(json.dumps(state)))
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(tmp.iterdir())}
    meta = {"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "base": base, "files": files}
    _write(tmp / META, lambda p: p.write_text(json.dumps(meta, indent=1)))
    _fsync_dir(tmp)


def prune(out_dir: Path, keep_last: int) -> None:
    """Bound disk use: keep the newest keep_last checkpoints and the best one (keep_last <= 0: all)."""
    if keep_last <= 0:
        return
    best = (out_dir / "best").resolve() if (out_dir / "best").exists() else None
    for ckpt in listed(out_dir)[:-keep_last]:
        if ckpt.resolve() != best:
            shutil.rmtree(ckpt)


def point_best(out_dir: Path, ckpt: Path) -> None:
    """OUT_DIR/best -> ckpt-STEP, replaced atomically (relative, so the run dir can move)."""
    tmp = out_dir / ".best.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(ckpt.name, tmp)
    os.replace(tmp, out_dir / "best")
