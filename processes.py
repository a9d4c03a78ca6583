"""The processes of a training run: who is who in a torchrun job, the run's log, the few
collectives the loop needs, seeding, peak memory, and stopping on a signal at a step boundary.

    Dist, setup_distributed   rank, world size, local rank and device; torchrun sets RANK /
                              WORLD_SIZE / LOCAL_RANK, a plain `python train.py` is a world of one
                              (NCCL on GPUs, gloo on the CPU)
    setup_logging             OUT_DIR/logs/rank{r}.log on every rank; rank 0 also on the console
                              (but records logged with extra=FILE_ONLY)
    all_sum, gather           numbers summed over ranks, lists concatenated
    seed_everything           torch, numpy and Python's RNGs from one seed
    peak_memory_gb            the device's peak (CUDA allocator), else the process's peak RSS
    StopSignal                SIGTERM / SIGINT only ask the loop to stop at the next step boundary
    hold_lock                 one process at a time on a folder (a run directory, a pose cache)

References: PyTorch's torchrun and torch.distributed documentation (environment variables,
process groups, object collectives).

Used by train.py (and preflight.py, benchmarks/training.py, tests/shard_worker.py); knows nothing of the
model or the data. Tests: python -m pytest tests/test_resume.py tests/test_train.py
"""
import errno
import fcntl
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

log = logging.getLogger("train")  # the run's log: setup_logging gives it its handlers (curves.py logs here too)
FILE_ONLY = {"file_only": True}   # log.info(..., extra=FILE_ONLY): to the log files, not the console


@dataclass
class Dist:
    """This process's place in the job: global rank, world size, rank on its node, its device."""
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; plain `python train.py` is a world of one."""
    if "RANK" not in os.environ:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Dist(0, 1, 0, dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def setup_logging(out_dir: Path, proc: Dist) -> None:
    """Every rank logs to OUT_DIR/logs/rank{r}.log; rank 0 also to the console (above the bar)."""
    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record), file=sys.stderr)

    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(out_dir / "logs" / f"rank{proc.rank}.log")]
    if proc.main:
        handlers.append(TqdmHandler())
        handlers[-1].addFilter(lambda record: not getattr(record, "file_only", False))
    for h in list(log.handlers):  # a second run in the same process (tests) starts clean
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {proc.rank}] %(levelname)s %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)


def all_sum(values: list[float], proc: Dist) -> list[float]:
    """Sum a few numbers over ranks in one collective (float64 keeps token counts exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=proc.device)
    if proc.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather(rows: list, proc: Dist) -> list:
    """Every rank's list, concatenated (rank 0's first), on every rank."""
    if proc.world == 1:
        return rows
    parts = [None] * proc.world
    dist.all_gather_object(parts, rows)
    return [r for p in parts for r in p]


def peak_memory_gb(device: torch.device) -> float:
    """GiB: the CUDA allocator's peak on a GPU; on the CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def seed_everything(seed: int) -> None:
    """torch's (every device), numpy's global and Python's RNG, from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class StopSignal:
    """While entered, SIGTERM / SIGINT only set `signum`; the loop stops at the next step boundary
    (every rank agrees through train_step's all-reduce). Previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        log.warning(f"received {signal.Signals(signum).name}: stopping at the next step boundary")

    def __enter__(self) -> "StopSignal":
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def hold_lock(path: Path, wait: Callable[[str], None] | None = None) -> int | None:
    """The exclusive lock on `path` (flock; the file is created if missing), which then records
    who holds it. Returns its file descriptor: the lock lasts until os.close(fd) or the process's
    end, killed or not (the OS releases it: a lock is never left stale by a dead process). Held by
    another process: None, or with `wait`, wait(its holder) once and then wait for the lock. On a
    filesystem without locks (some network mounts) a warning, and the fd unlocked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                os.close(fd)
                return None
            wait(lock_holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
        print(f"warning: cannot lock {path} ({e.strerror}: the filesystem has no file locks); make sure no "
              "other process uses this folder at the same time", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    return fd


def lock_holder(path: Path) -> str:
    """Who holds the lock on `path`, as its holder wrote it ('pid N on HOST since TIME')."""
    try:
        return Path(path).read_text().strip() or "a process that has not written its name yet"
    except OSError:
        return "another process"
