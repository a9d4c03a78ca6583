"""What changes in a training run when FSDP2 shards the model (train.py --fsdp), besides the wrapping.

    share, root_gathered   evaluation in step over the ranks: under FSDP every call of a layer
                           all-gathers its weights (a collective), so all ranks must make the same
                           calls (train.answer_loss, decode_both), and decoding calls the root's own
                           modules outside its forward
    average_whole_grads    the gradients of the scalar parameters FSDP leaves whole
    memory_plan, describe  the bytes of model tensors a rank holds, and the per-device peak they
                           plan (train.py logs both at the start of a run)

train.py's `shard` does the wrapping (fully_shard per decoder layer, then the root) and
loader.load_shards the loading; checkpoints.py keeps one format for DDP and FSDP.
"""
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import quant


def share(indices: list[int], rank: int, world: int, lockstep: bool) -> tuple[list[int], int]:
    """This rank's part of `indices` (every world-th), and how many clips it processes: under FSDP
    (lockstep) as many as rank 0, whose part is the longest; a rank short of clips repeats the
    first and drops the result."""
    mine = indices[rank::world]
    return mine, (len(indices[0::world]) if lockstep else len(mine))


@contextmanager
def root_gathered(model: nn.Module):
    """Decoding calls the encoder, the embeddings and lm_head outside the model's forward: under
    FSDP the root's own tensors are gathered for it (each layer gathers its own as it runs)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def average_whole_grads(model: nn.Module, world: int) -> None:
    """FSDP2 shards along dim 0, so a scalar parameter (the encoder's log_gain) stays whole on every
    rank, outside FSDP (train.shard's ignored_params): its gradient is averaged here, as DDP
    averages, once per step after the last micro-step's backward."""
    for p in model.parameters():
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def memory_plan(model: nn.Module, layers: list[nn.Module], device: torch.device, world: int, fsdp: bool,
                cpu_offload: bool, accum: int) -> dict[str, int]:
    """Bytes, by arithmetic (not a measurement): "held", the model tensors this rank holds
    (parameters and buffers; under FSDP its chunks), "host" of them in host memory, and the peak
    they plan on the device: "model" (what of them is on it) + "gathered" (on a GPU quant.py's
    dequantization buffer, the largest projection in 16 bits; FSDP: the root's own tensors, kept
    through forward and backward, and two layers whole, the one running and the next,
    prefetched) + "states" (the trained tensors' float32 gradients and AdamW's two moments;
    DDP keeps one more gradient copy in its buckets; FSDP with grad_accum > 1 keeps the unsharded
    gradients between micro-steps). Activations are not in it: they depend on the batch."""
    local = [_local(t) for t in (*model.parameters(), *model.buffers())]
    held, on_device = _nbytes(local), _nbytes(t for t in local if t.device.type == device.type)
    trained = [p for p in model.parameters() if p.requires_grad]
    gathered, extra = 0, _nbytes(trained) if world > 1 else 0
    nf4 = [m for m in model.modules() if isinstance(m, quant.Linear4bit)]
    if nf4 and device.type == "cuda":  # quant.py's dequantization buffer: the largest projection in 16 bits
        gathered = max(m.in_features * m.out_features * m.compute_dtype.itemsize for m in nf4)
    if fsdp:
        whole = [_nbytes(layer.parameters()) for layer in layers]
        gathered += _nbytes(model.parameters()) - sum(whole) + 2 * max(whole)
        extra = _nbytes(trained) if accum > 1 else 0
    states = 0 if cpu_offload else 3 * _nbytes(_local(p) for p in trained) + extra
    return {"held": held, "host": held - on_device, "model": on_device, "gathered": gathered, "states": states}


def describe(plan: dict[str, int], device: torch.device) -> str:
    """memory_plan's numbers as train.py logs them (the first line starts "local model bytes: N")."""
    size = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
    peak = plan["model"] + plan["gathered"] + plan["states"]
    return (f"local model bytes: {plan['held']} ({size(plan['held'])}, {size(plan['host'])} of it in host memory)\n"
            f"planned per-{device.type} peak: {size(peak)} = model {size(plan['model'])} + gathered for compute "
            f"{size(plan['gathered'])} + gradients and AdamW moments {size(plan['states'])}, plus activations")
