"""What changes in a training run when FSDP2 shards the model (train.py --fsdp), besides the model itself.

    shard_and_load        the wrapping: fully_shard per decoder layer, then the root, over all
                          processes, and only then the base loaded, each rank reading and
                          quantizing only the rows it holds (load_shards; random_shards for
                          benchmarks), so no rank ever holds the whole model
    local_rows, local_part, whole   a tensor as FSDP lays it out over the ranks (checkpoints.py
                          writes whole tensors and loads each rank's rows back)
    share, decoding_together   evaluation in step over the ranks: under FSDP every call of a layer
                          all-gathers its weights (a collective), so all ranks must make the same
                          calls (train.answer_loss, decode_both), and decoding calls the root's own
                          modules outside its forward
    average_whole_grads   the gradients of the scalar parameters FSDP leaves whole
    memory_plan, describe the bytes of model tensors a rank holds, and the per-device peak they
                          plan (train.py logs both at the start of a run)

translator.build_model hands the model to shard_and_load when asked to shard (train.py under
--fsdp) and gathers the embedding rows' RMS through `whole`: that is all it knows of FSDP; model.py
and lora.py know nothing of it. Tests: tests/test_fsdp.py (2 processes, gloo).
"""
import json
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

import bnb_format
import loader
import quant
from model import HostEmbedding, Qwen2, Qwen2Config
from processes import Dist, all_sum


# ----------------------------------------------------------------------------- wrapping and loading

def shard_and_load(model: nn.Module, llm: Qwen2, source: str | None, dtype: torch.dtype, device: torch.device,
                   cpu_offload: bool = False, quant_cache: str = "") -> None:
    """FSDP2 over all processes, in place: each decoder layer of `llm`, the base, then the root
    `model` (the encoder, embeddings, final norm, lm_head), sharded by fully_shard while the base
    is still on the meta device; then this rank's chunks of the base read from checkpoint `source`
    (load_shards), or drawn at random where source is None (benchmarks: `python bench.py train
    --random-weights --fsdp`). cpu_offload: the shards, their gradients and AdamW in host memory
    (CPUOffloadPolicy), copied to the device per layer."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    scalars = {p for p in model.parameters() if p.dim() == 0}  # FSDP2 shards dim 0: these stay whole
    for module in (*llm.model.layers, model):
        fully_shard(module, mesh=mesh, offload_policy=offload, ignored_params=scalars)
        # SUM, then / world_size: what every backend does alike (FSDP2's AVG on gloo was reported to
        # sum, pytorch issue 162338; tests/test_fsdp.py checks the gradients against DDP's)
        module.set_force_sum_reduction_for_comms(True)
    home = "cpu" if cpu_offload else device
    if source is None:
        random_shards(llm, dtype, home)
    else:
        load_shards(llm, source, dtype, home, quant_cache)
    # FSDP2 finds its root at the root's first forward; decoding may come first and never runs
    # that forward (the encoder, then llm.generate), so the root is made the root now (no public
    # call does this in torch 2.13)
    fully_shard.state(model)._lazy_init()


# ----------------------------------------------------------------------------- a tensor over the ranks

def local_rows(n: int, rank: int, world: int) -> slice:
    """The dim-0 rows of an n-row tensor that FSDP2 gives `rank`: torch.chunk's split, ceil(n / world)
    rows each, so the last ranks may hold fewer or none."""
    c = -(-n // world)
    return slice(min(n, rank * c), min(n, (rank + 1) * c))


def _rows_held(t: Tensor) -> slice | None:
    """The rows of t this rank holds if FSDP sharded it (a DTensor); None: t is whole here."""
    if not isinstance(t, DTensor):
        return None
    return local_rows(t.shape[0], t.device_mesh.get_local_rank(), t.device_mesh.size())


def local_part(target: Tensor, full: Tensor) -> Tensor:
    """`full` (a whole tensor) laid out as `target` is: this rank's rows of it as a DTensor if FSDP
    sharded target, else `full` itself (a checkpoint's tensors into a sharded model, checkpoints.load)."""
    rows = _rows_held(target)
    if rows is None:
        return full
    return DTensor.from_local(full[rows].to(target.to_local().device), target.device_mesh, target.placements,
                              run_check=False, shape=target.shape, stride=target.stride())


def whole(t: Tensor) -> Tensor:
    """t whole: FSDP's chunks of it all-gathered from every rank (all must call), else t itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _gather_chunks(mine: Tensor, n: int) -> Tensor:
    """Every rank's chunk (local_rows) of an n-long 1-D tensor, put back together on every rank."""
    world = dist.get_world_size()
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(-(-n // world), dtype=mine.dtype, device=comm)
    padded[:len(mine)] = mine
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    return torch.cat(chunks)[:n].to(mine.device)


def _put(module: nn.Module, attr: str, t: Tensor) -> None:
    """loader.put_tensor, where FSDP has sharded that parameter (a DTensor) with t this rank's
    chunk of it, wrapped as a DTensor of the same layout first."""
    old = getattr(module, attr)
    if isinstance(old, DTensor):
        if t.shape != old.to_local().shape:
            raise ValueError(f"{type(module).__name__}.{attr}: a chunk of shape {tuple(t.shape)} for a rank that "
                             f"holds {tuple(old.to_local().shape)} of {tuple(old.shape)}")
        t = DTensor.from_local(t, old.device_mesh, old.placements, run_check=False, shape=old.shape,
                               stride=old.stride())
    loader.put_tensor(module, attr, t)


# ----------------------------------------------------------------------------- each rank loads its rows

def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds checkpoint tensor `name`, and its attribute; a projection that LoRA
    wraps (lora.LoRALinear) keeps it at NAME.base."""
    module_name, attr = name.rsplit(".", 1)
    module = model.get_submodule(module_name)
    return getattr(module, "base", module), attr


def _read_rows(f, name: str, rows: slice | None) -> Tensor:
    """Rows of tensor `name` from an open safetensors file (None: all of it); only those are read."""
    return f.get_tensor(name) if rows is None else f.get_slice(name)[rows]


def _fill_shards(model: nn.Module, readers: dict, dtype: torch.dtype, device, cache: Path | None) -> None:
    """Each checkpoint tensor (name -> read(rows)) into `model`, as this rank holds it. A 4-bit
    projection's chunks come from the cache file if there is one, else from quantize_part."""
    cached = safe_open(cache, framework="pt", device="cpu") if cache is not None and cache.exists() else None
    pieces = {}
    for name, read in readers.items():
        module, attr = _owner(model, name)
        if isinstance(module, quant.Linear4bit) and attr == "weight":
            prefix = name.rsplit(".", 1)[0]
            if cached is not None:
                got = {k.rsplit(".", 1)[1]: cached.get_tensor(k) for k in cached.keys() if k.startswith(prefix + ".")}
            else:
                parts = {k: _rows_held(p) for k, p in module.named_parameters(recurse=False) if k != "bias"}
                parts = {k: rows if rows is not None else slice(0, len(getattr(module, k)))
                         for k, rows in parts.items()}
                # the callbacks run inside quantize_part; the defaults bind this iteration's read and module
                got = module.quantize_part(lambda r0, r1, read=read: read(slice(r0, r1)).to(device, dtype), parts,
                                           lambda mine, module=module: _gather_chunks(mine, len(module.absmax)))
                pieces.update({f"{prefix}.{k}": t for k, t in got.items()})
            for k, t in got.items():
                _put(module, k, t.to(device))
        else:
            target = getattr(module, attr)
            t = read(_rows_held(target)).to("cpu" if isinstance(module, HostEmbedding) else device, dtype)
            _put(module, attr, t.to(target.dtype) if target.requires_grad else t)  # trained: float32 (build_model)
    if cached is None and cache is not None:
        loader.save_tensors(pieces, cache)


@torch.no_grad()
def load_shards(model: nn.Module, path: str | Path, dtype: torch.dtype, device,
                quant_cache: str | Path | None = None) -> None:
    """FSDP's loading, without the whole model on any rank. `model` is an empty_model (LoRA may wrap
    its projections) whose parameters fully_shard has made DTensors, still on the meta device; each
    gets this rank's dim-0 chunk (local_rows), read from the checkpoint with
    safe_open(...).get_slice, so only those rows are read. A 4-bit projection reads the rows under
    its chunks of the packed bytes and absmax and quantizes them (Linear4bit.quantize_part: the
    same bytes as quantizing the whole; double_quant all-gathers each matrix's float32 absmax for
    its offset). Buffers (a HostEmbedding's table) are loaded whole. Peak memory: this rank's
    chunks (on `device`) plus one tensor's rows in host memory. quant_cache=DIR: the 4-bit chunks are saved there on
    the first load, one file per rank (...-shard{r}of{world}), and read back by later loads with
    the same world size. Names and shapes are checked strictly, as by load_model."""
    path = loader.model_path(path)
    raw = json.loads((path / "config.json").read_text())
    config = Qwen2Config.from_dict(raw, source=str(path / "config.json"))
    if bnb_format.is_bnb_4bit(raw, str(path / "config.json")):
        raise ValueError(f"{path / 'config.json'}: a checkpoint bitsandbytes saved in 4 bits cannot be loaded "
                         "sharded (--fsdp) yet; use the 16-bit checkpoint, which each rank quantizes in part")
    with torch.device("meta"):
        expected = loader.expected_shapes(Qwen2(config))
    where = loader.checkpoint_index(path, config)
    cache, nf4 = None, [m for m in model.modules() if isinstance(m, quant.Linear4bit)]
    if quant_cache and nf4:
        file = loader.quant_cache_file(path, where, dtype, nf4[0].double_quant, Path(quant_cache))
        cache = file.with_name(f"{file.stem}-shard{dist.get_rank()}of{dist.get_world_size()}{file.suffix}")
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, cache.exists())
        if not all(found):  # all ranks quantize, or none: double_quant's absmax gather is a collective
            cache.unlink(missing_ok=True)
    with ExitStack() as files:
        opened = {}
        for file, names in loader.check_names(where, expected).items():
            opened[file] = files.enter_context(safe_open(file, framework="pt", device="cpu"))
            for name in names:
                loader.check_shape(opened[file], file, name, expected)
        readers = {name: partial(_read_rows, opened[file], name) for name, file in where.items()}
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        if config.tie_word_embeddings and not tied:  # lm_head untied to be trained (lora._untie): a copy
            # (cloned: safetensors returns views of the mapped file, and both would be the same memory)
            readers["lm_head.weight"] = lambda rows: readers["model.embed_tokens.weight"](rows).clone()
        _fill_shards(model, readers, dtype, device, cache)
    if tied:
        model.tie_weights()


@torch.no_grad()
def random_shards(model: nn.Module, dtype: torch.dtype, device, std: float = 0.02) -> None:
    """load_shards with random rows (init_weight_) instead of a checkpoint: each rank draws its own
    chunks, so a model too large for one device can be benchmarked (bench.py train --fsdp)."""
    with torch.device("meta"):
        shapes = loader.expected_shapes(Qwen2(model.config))

    def read(name: str, shape: tuple[int, ...], rows: slice | None) -> Tensor:
        n = len(range(*rows.indices(shape[0]))) if rows is not None else shape[0]
        return loader.init_weight_(name, torch.empty((n, *shape[1:]), device=device), std)

    _fill_shards(model, {name: partial(read, name, shape) for name, shape in shapes.items()}, dtype, device, None)
    model.tie_weights()



# ----------------------------------------------------------------------------- steps in lockstep, memory

def share(indices: list[int], rank: int, world: int, lockstep: bool) -> tuple[list[int], int]:
    """This rank's part of `indices` (every world-th), and how many clips it processes: under FSDP
    (lockstep) as many as rank 0, whose part is the longest; a rank short of clips repeats the
    first and drops the result."""
    mine = indices[rank::world]
    return mine, (len(indices[0::world]) if lockstep else len(mine))


@contextmanager
def decoding_together(model: nn.Module, proc: Dist):
    """Decoding under FSDP (`model` a translator.SignTranslator). It calls the encoder, the
    embeddings and lm_head outside the model's forward: the root's own tensors are gathered for
    it (each layer gathers its own as it runs). And every call of a layer is a collective, so
    each rank takes as many steps as the one with the longest answers: generation stops when
    every rank is done (model.Qwen2.stop_together). Without FSDP nothing changes."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    model.llm.stop_together = lambda done: all_sum([not done], proc)[0] == 0
    try:
        yield
    finally:
        model.llm.stop_together = None
        model.reshard()


def average_whole_grads(model: nn.Module, world: int) -> None:
    """FSDP2 shards along dim 0, so a scalar parameter (the encoder's log_gain) stays whole on every
    rank, outside FSDP (shard_and_load's ignored_params): its gradient is averaged here, as DDP
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
        per_layer = [_nbytes(layer.parameters()) for layer in layers]
        gathered += _nbytes(model.parameters()) - sum(per_layer) + 2 * max(per_layer)
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
