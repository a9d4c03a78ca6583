"""Hugging Face checkpoints in and out of model.Qwen2, and the 4-bit conversion on the way in.

model.py is the architecture; this file is everything that touches files or changes what a
module stores (gpt-fast keeps quantization as a conversion step beside the model, likewise):

    load_model     config.json + safetensors (single file or sharded) -> an eval-mode Qwen2,
                   streamed tensor by tensor into a model built on the meta device; with
                   quantize="nf4" the seven projections of every layer become quant.Linear4bit
                   *before* loading, so the 16-bit weights never exist for the whole model at once
    quant_cache    the quantized tensors saved on the first load, read back by later ones
    fingerprint    a cheap identity of a checkpoint's files (a run's checkpoints refuse another base)
    offload_embeddings  the frozen input table kept in host memory (model.HostEmbedding)
    random_model   the same steps with random weights (benchmarks, the tiny demo)
    save_model     config.json + model.safetensors in the Hugging Face layout

Names are the Hugging Face names (model.layers.0.self_attn.q_proj.weight); loading is strict:
a missing, unexpected or misshapen tensor is an error that names it and its file.

    llm = load_model("checkpoints/Qwen2.5-7B-Instruct", dtype=torch.bfloat16, device="cuda", quantize="nf4")
    python -m pytest -q tests/test_model.py     # logits equal transformers' to 1e-5
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import quant
from model import HostEmbedding, Qwen2, Qwen2Config


def _checkpoint_index(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it, for a single-file or sharded checkpoint."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        where = {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        for file in sorted(set(where.values())):
            if not file.exists():
                raise FileNotFoundError(f"{index} lists shard {file.name}, which is missing from {path}")
        return where
    if single.exists():
        return _names_in(single)
    raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")


def fingerprint(path: str | Path, sample: int = 256) -> str:
    """A cheap identity of a base checkpoint, to tell a run's base from another of the same
    shapes (Qwen2.5-7B and 7B-Instruct have equal headers and file sizes): sha256 over the
    parsed config, tokenizer.json, and each tensor's name, dtype, shape and first `sample` bytes.
    Any fine-tune (a merged LoRA too) changes the first row of the matrices it changed; reading
    a few hundred bytes per tensor instead of 15 GB keeps this well under a second."""
    path = Path(path)
    h = hashlib.sha256(json.dumps(Qwen2Config.from_json(path / "config.json").to_dict(), sort_keys=True).encode())
    if (path / "tokenizer.json").is_file():
        h.update((path / "tokenizer.json").read_bytes())
    for file in sorted(set(_checkpoint_index(path).values())):
        with open(file, "rb") as f:  # safetensors: 8-byte header length, JSON header, then the data
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            for name, info in sorted((k, v) for k, v in header.items() if k != "__metadata__"):
                start, end = info["data_offsets"]
                f.seek(8 + n + start)
                h.update(json.dumps([name, info["dtype"], info["shape"]]).encode() + f.read(min(sample, end - start)))
    return h.hexdigest()[:16]


def _names_in(file: Path) -> dict[str, Path]:
    with safe_open(file, framework="pt") as f:
        return {name: file for name in f.keys()}


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold for this model (a tied lm_head is not stored)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def _set_tensor(model: nn.Module, name: str, t: Tensor) -> None:
    """Put a loaded tensor in place of the meta one. A float weight arriving at a 4-bit module is
    quantized (module.quantize_); anything else (e.g. cached packed weights) is assigned as is."""
    module_name, attr = name.rsplit(".", 1)
    module = model.get_submodule(module_name)
    if attr == "weight" and hasattr(module, "quantize_") and t.is_floating_point():
        module.quantize_(t)
    elif attr in module._parameters:
        module._parameters[attr] = nn.Parameter(t, requires_grad=module._parameters[attr].requires_grad)
    else:
        module._buffers[attr] = t


def _stream_into(model: nn.Module, where: dict[str, Path], expected: dict[str, tuple[int, ...]],
                 dtype: torch.dtype | None, device) -> None:
    """Check names and shapes against `expected` strictly, then load tensors one at a time (peak
    memory ~ one copy). dtype=None keeps the stored dtypes (the nf4 cache: uint8 + fp32 absmax)."""
    unexpected = sorted(set(where) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected tensor {unexpected[0]} in {where[unexpected[0]]} "
                         f"({len(unexpected)} unexpected in all: {unexpected[:5]})")
    missing = sorted(set(expected) - set(where))
    if missing:
        files = sorted({p.name for p in where.values()})
        raise ValueError(f"missing tensor {missing[0]} ({len(missing)} missing in all: {missing[:5]}) in {files}")
    by_file = defaultdict(list)
    for name, file in where.items():
        by_file[file].append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt", device="cpu") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise ValueError(f"tensor {name} is not in {file}, although the index says so")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ValueError(f"tensor {name} in {file} has shape {shape}, expected {expected[name]}")
                t, home = f.get_tensor(name), _home(model, name, device)
                t = t.to(home, dtype) if dtype is not None and t.is_floating_point() else t.to(home)
                _set_tensor(model, name, t)
    model.tie_weights()


def _home(model: nn.Module, name: str, device) -> torch.device | str:
    """Where tensor `name` is loaded: host memory for a HostEmbedding's table, else `device`."""
    return "cpu" if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), HostEmbedding) else device


def _swap_in_host_embedding(model: Qwen2, source: str) -> None:
    """Replace the (meta) input embedding by a HostEmbedding before loading (offload_embeddings)."""
    if model.config.tie_word_embeddings:
        raise ValueError(f"{source}: offload_embeddings needs untied embeddings, but tie_word_embeddings is "
                         "true: lm_head shares the table and reads all of it every step, so it stays on the device")
    model.model.embed_tokens = HostEmbedding(torch.empty_like(model.model.embed_tokens.weight))


def _swap_in_nf4(model: Qwen2, dtype: torch.dtype, double_quant: bool = False) -> None:
    """Replace the seven projections of every layer by (meta) 4-bit linears, as gpt-fast does
    before loading: the full-precision weights never exist for the whole model at once."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                setattr(parent, name, quant.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                                       compute_dtype=dtype, device="meta", double_quant=double_quant))


def _quant_cache_file(path: Path, where: dict[str, Path], dtype: torch.dtype, double_quant: bool,
                      cache_dir: Path) -> Path:
    """The cache file name: a hash of the checkpoint's path, files (size, mtime), dtype and format."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(set(where.values()))]
    fmt = "nf4-bs64" + ("-dq" if double_quant else "")
    key = json.dumps([str(path.resolve()), stats, str(dtype), fmt])
    return cache_dir / f"{fmt}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def _check_quantize(quantize: str | None, double_quant: bool) -> None:
    if quantize not in (None, "nf4"):
        raise ValueError(f"quantize={quantize!r}: only None and 'nf4' are supported")
    if double_quant and quantize is None:
        raise ValueError("double_quant=True needs quantize='nf4'")


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", quantize: str | None = None,
               double_quant: bool = False, quant_cache: str | Path | None = None,
               offload_embeddings: bool = False) -> Qwen2:
    """Load a Hugging Face Qwen2 directory (config.json + safetensors) into an eval-mode Qwen2.

    quantize="nf4" stores the seven projections of every layer in 4 bits (blocks of 64; with
    double_quant their absmax in 8 bits too, QLoRA's "DQ": 4.127 instead of 4.5 bits per weight);
    lm_head, embeddings and norms stay in `dtype`. quant_cache=DIR saves the quantized tensors
    there on the first load and reads them back on later loads of the same (unchanged) checkpoint.
    offload_embeddings=True keeps the (frozen) input embedding table in host memory (HostEmbedding;
    untied models only)."""
    _check_quantize(quantize, double_quant)
    path = Path(path)
    config = Qwen2Config.from_json(path / "config.json")
    where = _checkpoint_index(path)
    if config.tie_word_embeddings:
        where.pop("lm_head.weight", None)  # some tied checkpoints store the shared matrix twice
    with torch.device("meta"):
        model = Qwen2(config)
    hf_shapes = _expected_shapes(model)  # before any swap: the checkpoint holds full weights
    if offload_embeddings:
        _swap_in_host_embedding(model, str(path / "config.json"))
    cached = None
    if quantize == "nf4":
        _swap_in_nf4(model, dtype, double_quant)
        if quant_cache is not None:
            cached = _quant_cache_file(path, where, dtype, double_quant, Path(quant_cache))
    if cached is not None and cached.exists():
        _stream_into(model, _names_in(cached), _expected_shapes(model), None, device)
    else:
        _stream_into(model, where, hf_shapes, dtype, device)
        if cached is not None:
            _save_state(model, cached)
    return model.eval()


def init_weight_(name: str, t: Tensor, std: float = 0.02) -> Tensor:
    """Fill t in place as transformers initialises a Qwen2 tensor: matrices N(0, std), RMSNorm
    weights 1, biases 0 (name tells the last two apart)."""
    if t.dim() > 1:
        return t.normal_(0, std)
    return t.fill_(1.0 if name.endswith("norm.weight") else 0.0)


@torch.no_grad()
def random_model(config: Qwen2Config, dtype: torch.dtype = torch.float32, device="cpu", quantize: str | None = None,
                 double_quant: bool = False, std: float = 0.02, offload_embeddings: bool = False) -> Qwen2:
    """An eval-mode Qwen2 with random weights (init_weight_), built by load_model's own steps: on
    the meta device, projections swapped for 4-bit linears (quantize="nf4"), then each tensor made
    on `device` and quantized as soon as it exists, so a large model never exists whole in 16 bits.
    The values drawn depend only on the seed, not on quantize: the NF4 model is the 16-bit one,
    quantized. For benchmarks (speed and memory do not depend on the values) and the tiny demo."""
    _check_quantize(quantize, double_quant)
    with torch.device("meta"):
        model = Qwen2(config)
    shapes = _expected_shapes(model)  # the 16-bit shapes, taken before the 4-bit swap
    if offload_embeddings:
        _swap_in_host_embedding(model, "random_model")
    if quantize == "nf4":
        _swap_in_nf4(model, dtype, double_quant)
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype, device=_home(model, name, device))
        _set_tensor(model, name, init_weight_(name, t, std))
    model.tie_weights()
    return model.eval()


def _save_state(model: Qwen2, file: Path) -> None:
    """model.state_dict() (without a tied lm_head) as one safetensors file, written atomically."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)  # readers never see a half-written file


def save_model(model: Qwen2, out_dir: str | Path) -> None:
    """Write config.json + model.safetensors in the Hugging Face layout (full-precision models only)."""
    with torch.device("meta"):
        names = set(_expected_shapes(Qwen2(model.config)))
    extra = sorted(set(_expected_shapes(model)) ^ names)
    if extra:
        raise ValueError(f"save_model writes plain Qwen2 checkpoints, but this model has other tensors ({extra[:3]}, "
                         "4-bit or LoRA modules?); use lora.export_merged for those")
    out_dir = Path(out_dir)
    _save_state(model, out_dir / "model.safetensors")
    dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps({**model.config.to_dict(), "dtype": dtype}, indent=2))
