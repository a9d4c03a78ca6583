"""Hugging Face checkpoints in and out of model.Qwen2, and the 4-bit conversion on the way in.

model.py is the architecture; this file is everything that touches files or changes what a
module stores (gpt-fast keeps quantization as a conversion step beside the model, likewise):

    model_path     model_dir as given, or a Hub repo id's snapshot in the local Hugging Face cache
    load_model     config.json + safetensors (single file or sharded) -> an eval-mode Qwen2,
                   streamed tensor by tensor into a model built on the meta device; with
                   quantize="nf4" the seven projections of every layer become quant.Linear4bit
                   *before* loading, so the 16-bit weights never exist for the whole model at once;
                   a checkpoint that bitsandbytes saved in 4 bits (`*-bnb-4bit`) is read as stored
    quant_cache    the quantized tensors saved on the first load, read back by later ones
    fingerprint    a cheap identity of a checkpoint's files (a run's checkpoints refuse another base)
    offload_embeddings  the frozen input table kept in host memory (model.HostEmbedding)
    random_model   the same steps with random weights (benchmarks, the tiny demo)
    save_model     config.json + model.safetensors in the Hugging Face layout; a 4-bit model in
                   bitsandbytes' layout, which transformers' from_pretrained loads (that layout,
                   tensor by tensor, and its checks: bnb_format.py)
    empty_model    the model as load_model builds it, left on the meta device: FSDP shards it, then
                   each rank reads and quantizes only the rows it holds (no rank has the whole)

Names are the Hugging Face names (model.layers.0.self_attn.q_proj.weight); loading is strict:
a missing, unexpected or misshapen tensor is an error that names it and its file.

    llm = load_model("checkpoints/Qwen2.5-7B-Instruct", dtype=torch.bfloat16, device="cuda", quantize="nf4")
    llm = load_model("Qwen/Qwen2.5-7B-Instruct", ...)              # a repo id: its Hugging Face cache snapshot
    llm = load_model("unsloth/Qwen2.5-7B-Instruct-bnb-4bit", ..., quantize="nf4")   # 4-bit as stored
    save_model(llm, "my-bnb-4bit")              # transformers + bitsandbytes load it
    python -m pytest -q tests/test_model.py tests/test_bnb_checkpoints.py   # against transformers, bitsandbytes
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import bnb_format
import quant
from model import HostEmbedding, Qwen2, Qwen2Config


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # "Qwen/Qwen2.5-7B-Instruct"


def hub_cache() -> Path:
    """The Hugging Face cache, found as huggingface_hub finds it: HF_HUB_CACHE, else HF_HOME/hub,
    else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser() / "hub"


def model_path(model_dir: str | Path) -> Path:
    """Where a model's files are: model_dir itself when it is a folder; for a Hub repo id that is
    not a folder, the snapshot of its main branch in the local Hugging Face cache (what `hf
    download` or transformers' from_pretrained left there: models--OWNER--NAME/refs/main names the
    snapshots/<commit>/ folder), found without the hub client or the network; else model_dir
    unchanged, for the callers' "not found" errors to name."""
    path = Path(model_dir)
    if path.is_dir() or not REPO_ID.fullmatch(str(model_dir)):
        return path
    repo = hub_cache() / ("models--" + str(model_dir).replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    return path


def checkpoint_index(path: Path, config: Qwen2Config) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it, for a single-file or sharded checkpoint."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        where = {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        for file in sorted(set(where.values())):
            if not file.exists():
                raise FileNotFoundError(f"{index} lists shard {file.name}, which is missing from {path}")
    elif single.exists():
        where = _names_in(single)
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    if config.tie_word_embeddings:
        where.pop("lm_head.weight", None)  # some tied checkpoints store the shared matrix twice
    return where


def fingerprint(path: str | Path, sample: int = 256) -> str:
    """A cheap identity of a base checkpoint, to tell a run's base from another of the same
    shapes (Qwen2.5-7B and 7B-Instruct have equal headers and file sizes): sha256 over the
    parsed config, tokenizer.json, and each tensor's name, dtype, shape and first `sample` bytes.
    Any fine-tune (a merged LoRA too) changes the first row of the matrices it changed; reading
    a few hundred bytes per tensor instead of 15 GB keeps this well under a second."""
    path = Path(path)
    config = Qwen2Config.from_json(path / "config.json")
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    if (path / "tokenizer.json").is_file():
        h.update((path / "tokenizer.json").read_bytes())
    for file in sorted(set(checkpoint_index(path, config).values())):
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


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold for this model (a tied lm_head is not stored)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def put_tensor(module: nn.Module, attr: str, t: Tensor) -> None:
    """Install t as module.attr in place of the (meta) tensor there, a parameter keeping its
    requires_grad (sharding.py first wraps an FSDP rank's chunk as its DTensor)."""
    old = getattr(module, attr)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(t, requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = t


def _set_tensor(model: nn.Module, name: str, t: Tensor) -> None:
    """Put a loaded tensor in place of the meta one. A float weight arriving at a 4-bit module is
    quantized (module.quantize_); anything else (e.g. cached packed weights) is assigned as is."""
    module_name, attr = name.rsplit(".", 1)
    module = model.get_submodule(module_name)
    if attr == "weight" and hasattr(module, "quantize_") and t.is_floating_point():
        module.quantize_(t)
    else:
        put_tensor(module, attr, t)


def check_names(where: dict[str, Path], expected: dict[str, tuple[int, ...]]) -> dict[Path, list[str]]:
    """Names against `expected`, strictly; returns the names by the file that holds them."""
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
    return by_file


def check_shape(f, file: Path, name: str, expected: dict[str, tuple[int, ...]]) -> None:
    if name not in f.keys():
        raise ValueError(f"tensor {name} is not in {file}, although the index says so")
    shape = tuple(f.get_slice(name).get_shape())
    if shape != expected[name]:
        raise ValueError(f"tensor {name} in {file} has shape {shape}, expected {expected[name]}")


def _stream_into(model: nn.Module, where: dict[str, Path], expected: dict[str, tuple[int, ...]],
                 dtype: torch.dtype | None, device) -> None:
    """Check names and shapes against `expected` strictly, then load tensors one at a time (peak
    memory ~ one copy). dtype=None keeps the stored dtypes (the nf4 cache: uint8 + fp32 absmax)."""
    for file, names in check_names(where, expected).items():
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in names:
                check_shape(f, file, name, expected)
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


def quant_cache_file(path: Path, where: dict[str, Path], dtype: torch.dtype, double_quant: bool,
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


def _skeleton(config: Qwen2Config, source: str, dtype: torch.dtype, quantize: str | None, double_quant: bool,
              offload_embeddings: bool) -> tuple[Qwen2, dict[str, tuple[int, ...]]]:
    """The model on the meta device with the swaps of load_model, and the 16-bit shapes a
    checkpoint holds for it (taken before the 4-bit swap)."""
    _check_quantize(quantize, double_quant)
    with torch.device("meta"):
        model = Qwen2(config)
    shapes = expected_shapes(model)
    if offload_embeddings:
        _swap_in_host_embedding(model, source)
    if quantize == "nf4":
        _swap_in_nf4(model, dtype, double_quant)
    return model, shapes


# ----------------------------------------------------------------------------- bitsandbytes 4-bit checkpoints
# The layout, its checks and its conversion to Linear4bit's buffers are in bnb_format.py.


def _load_bnb_4bit(model: nn.Module, where: dict[str, Path], device) -> set[str]:
    """Fill every projection that the checkpoint stores in bitsandbytes' 4-bit layout, as stored.
    Removes the tensors it reads from `where`; returns the names of the weights it filled."""
    modules, files, filled = dict(model.named_modules()), dict(where), set()
    with ExitStack() as stack:
        opened = {}

        def read(name: str) -> Tensor:
            if name not in where:
                prefix = name.split(".weight")[0]
                raise ValueError(f"missing tensor {name}: {prefix} has a bitsandbytes quant_state (in "
                                 f"{files[f'{prefix}.{bnb_format.BNB_STATE}']}) but not this part of it")
            file = where.pop(name)
            if file not in opened:
                opened[file] = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
            return opened[file].get_tensor(name)

        for key in sorted(k for k in where if ".quant_state.bitsandbytes__" in k):
            prefix = key.rsplit(".weight.quant_state.", 1)[0]
            if not key.endswith(bnb_format.BNB_STATE):
                raise ValueError(f"tensor {key} in {files[key]}: bitsandbytes {key.rsplit('__', 1)[1]} weights are "
                                 "not supported, only nf4 (quantize with bnb_4bit_quant_type='nf4')")
            module = modules.get(prefix)
            if not isinstance(module, quant.Linear4bit):
                raise ValueError(f"tensor {key} in {files[key]}: {prefix} is stored in 4 bits, but only the "
                                 "seven projections of each layer can be 4-bit here")
            for attr, t in bnb_format.from_bnb(module, prefix, read, files).items():
                put_tensor(module, attr, t.to(device))
            filled.add(f"{prefix}.weight")
    return filled


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu", quantize: str | None = None,
               double_quant: bool = False, quant_cache: str | Path | None = None,
               offload_embeddings: bool = False) -> Qwen2:
    """Load a Hugging Face Qwen2 directory (config.json + safetensors) into an eval-mode Qwen2.
    `path` may also be a Hub repo id already in the local Hugging Face cache (model_path).

    quantize="nf4" stores the seven projections of every layer in 4 bits (blocks of 64; with
    double_quant their absmax in 8 bits too, QLoRA's "DQ": 4.127 instead of 4.5 bits per weight);
    lm_head, embeddings and norms stay in `dtype`. A checkpoint that bitsandbytes saved in 4-bit
    NF4 (a quantization_config in config.json, e.g. the `*-bnb-4bit` repositories) needs
    quantize="nf4" and is read as stored, with no round trip through 16 bits. quant_cache=DIR saves
    the quantized tensors there on the first load of a 16-bit checkpoint and reads them back on
    later loads of the same (unchanged) one (None or "": no cache). offload_embeddings=True keeps the (frozen) input
    embedding table in host memory (HostEmbedding; untied models only)."""
    path = model_path(path)
    raw = json.loads((path / "config.json").read_text())
    config = Qwen2Config.from_dict(raw, source=str(path / "config.json"))
    model, hf_shapes = _skeleton(config, str(path / "config.json"), dtype, quantize, double_quant, offload_embeddings)
    prequantized = bnb_format.is_bnb_4bit(raw, str(path / "config.json"))
    if prequantized and quantize != "nf4":
        raise ValueError(f"{path / 'config.json'}: this checkpoint is in bitsandbytes 4-bit NF4 "
                         "(quantization_config); load it with quantize='nf4', or load the 16-bit one")
    where = checkpoint_index(path, config)
    cached = None
    if quantize == "nf4" and quant_cache and not prequantized:
        cached = quant_cache_file(path, where, dtype, double_quant, Path(quant_cache))
    if cached is not None and cached.exists():
        _stream_into(model, _names_in(cached), expected_shapes(model), None, device)
        return model.eval()
    if prequantized:  # the 4-bit projections first, then everything else as in a 16-bit checkpoint
        filled = _load_bnb_4bit(model, where, device)
        hf_shapes = {k: v for k, v in hf_shapes.items() if k not in filled}
    _stream_into(model, where, hf_shapes, dtype, device)
    if cached is not None:
        save_tensors(_state(model), cached)
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
    model, shapes = _skeleton(config, "random_model", dtype, quantize, double_quant, offload_embeddings)
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype, device=_home(model, name, device))
        _set_tensor(model, name, init_weight_(name, t, std))
    model.tie_weights()
    return model.eval()


# ----------------------------------------------------------------------------- FSDP: each rank loads its rows

def empty_model(source: str | Path | Qwen2Config, dtype: torch.dtype = torch.float32, quantize: str | None = None,
                double_quant: bool = False, offload_embeddings: bool = False) -> Qwen2:
    """The model of checkpoint directory `source` (or of a Qwen2Config) as load_model builds it, left
    on the meta device: FSDP shards it (fully_shard) before anything is loaded, then
    sharding.load_shards (or random_shards) fills this rank's chunks."""
    if isinstance(source, Qwen2Config):
        return _skeleton(source, "empty_model", dtype, quantize, double_quant, offload_embeddings)[0]
    file = model_path(source) / "config.json"
    return _skeleton(Qwen2Config.from_json(file), str(file), dtype, quantize, double_quant, offload_embeddings)[0]


def _state(model: Qwen2) -> dict[str, Tensor]:
    """model.state_dict() without a tied lm_head (a checkpoint stores the shared matrix once)."""
    return {k: v for k, v in model.state_dict().items()
            if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}


def save_tensors(state: dict[str, Tensor], file: Path) -> None:
    """Tensors as one safetensors file, written atomically."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)  # readers never see a half-written file


def save_model(model: Qwen2, out_dir: str | Path) -> None:
    """Write config.json + model.safetensors in the Hugging Face layout. A model loaded with
    quantize="nf4" is written as bitsandbytes writes one (its 4-bit tensors as they are, a
    quantization_config in config.json): transformers' from_pretrained loads it with bitsandbytes
    installed, and load_model reads it back as stored. LoRA models: lora.export_merged."""
    four_bit = {name: m for name, m in model.named_modules() if isinstance(m, quant.Linear4bit)}
    state = {k: v for k, v in _state(model).items() if k.rsplit(".", 1)[0] not in four_bit or k.endswith(".bias")}
    for name, m in four_bit.items():
        state.update(bnb_format.to_bnb(name, m))
    with torch.device("meta"):
        names = set(expected_shapes(Qwen2(model.config)))
    extra = sorted(k for k in set(state) ^ names if k.rsplit(".weight", 1)[0] not in four_bit)
    if extra:
        raise ValueError(f"save_model writes Qwen2 checkpoints, 16-bit or 4-bit, but this model has other tensors "
                         f"({extra[:3]}, LoRA modules?); use lora.export_merged for those")
    out_dir = Path(out_dir)
    save_tensors(state, out_dir / "model.safetensors")
    config = {**model.config.to_dict(), "dtype": str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")}
    if four_bit:
        config["quantization_config"] = bnb_format.quantization_config(next(iter(four_bit.values())))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
