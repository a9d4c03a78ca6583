"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node 2` (gloo): build a model with
build_model(..., shard=True), the --fsdp path (the base on the meta device, fully_shard per layer
and the root, then sharding.load_shards), with every read of the checkpoint recorded and the largest
floating-point tensor that load_shards makes tracked. Each rank writes OUT/rank{r}.safetensors (its
local chunk of every tensor of the base) and OUT/rank{r}.json (the reads, the largest tensor,
the logits of a fixed batch through the sharded model).

    python -m torch.distributed.run --nproc_per_node 2 tests/shard_worker.py OUT --key=value ...
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config  # noqa: E402
import processes  # noqa: E402
import sharding  # noqa: E402
import translator  # noqa: E402


class LargestFloat(TorchDispatchMode):
    """The most elements of any floating-point tensor an op makes (DTensors' local parts included;
    not views of an input: safetensors' get_slice views the whole mapped tensor, then copies rows)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if type(t) is torch.Tensor}
        for t in tree_leaves(out):
            if type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_floating_point() and not t.is_meta \
                    and t.untyped_storage().data_ptr() not in inputs:
                self.numel = max(self.numel, t.numel())
        return out


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = config.load_config(["--fsdp=True", "--layout=holistic", *overrides])  # no corpus to detect it from
    proc = processes.setup_distributed()
    reads, read_rows = [], sharding._read_rows

    def recorded(f, name, rows):
        t = read_rows(f, name, rows)
        total = f.get_slice(name).get_shape()[0]
        reads.append([name, *(rows.indices(total)[:2] if rows is not None else (0, total)), total, t.numel()])
        return t

    largest, load_shards = LargestFloat(), sharding.load_shards

    def tracked(*args, **kwargs):
        with largest:
            load_shards(*args, **kwargs)

    sharding._read_rows, sharding.load_shards = recorded, tracked
    tok = SimpleNamespace(pose_token_id=0, pad_id=0)  # build_model reads the pose token id only
    model = translator.build_model(cfg, tok, proc.device, shard=True)
    model.eval()
    ids = torch.arange(12).reshape(2, 6) % model.llm.config.vocab_size
    with torch.no_grad(), sharding.decoding_together(model, proc):
        logits = model.llm(input_ids=ids)
    tensors = {name: (t.to_local() if isinstance(t, DTensor) else t).contiguous()
               for name, t in model.llm.state_dict().items() if ".lora_" not in name}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / f"rank{proc.rank}.safetensors"))
    (out / f"rank{proc.rank}.json").write_text(json.dumps(
        {"reads": reads, "largest_float": largest.numel, "logits": logits.tolist(),
         "embed_scale": float(model.encoder.embed_scale)}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
