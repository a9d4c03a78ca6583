"""LoRA adapters around full-precision and 4-bit linears, saved in a format PEFT reads.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685)
freezes a pretrained linear y = x W^T + b and trains a low-rank update beside it. QLoRA
(Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314)
keeps W in 4-bit NF4 (`quant.Linear4bit`) and backpropagates through it into the adapter only.
Same initialisation, scaling and file layout as Hugging Face PEFT (`peft/tuners/lora/layer.py`),
module shape as torchtune's `LoRALinear`.

    model = load_model(path, quantize="nf4")                # model.py
    apply_lora(model, r=16, alpha=32, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    ... train (only LoRA and modules_to_save have gradients) ...
    save_peft_adapter(model, "adapter", base_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")
    load_peft_adapter(load_model(path, quantize="nf4"), "adapter")   # ours, or one PEFT wrote
    export_merged(model, "merged")      # HF checkpoint with W + (alpha/r) B A baked in

Names: a wrapped `q_proj` keeps its base at `q_proj.base.*` and adds `q_proj.lora_A.weight` and
`q_proj.lora_B.weight`. These are PEFT's adapter-file names without their `base_model.model.`
prefix, so saving and loading an adapter is a prefix swap, nothing more.
"""
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from quant import Linear4bit

PEFT_PREFIX = "base_model.model."  # what PeftModel puts in front of the wrapped model's names
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# PEFT options that change the maths; an adapter using any of them is refused, not misread.
PLAIN_LORA = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
              "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}}


class LoRALinear(nn.Module):
    """A frozen linear plus a trainable low-rank update:

        y = base(x) + (alpha / r) * B(A(dropout(x)))       A: (r, in),  B: (out, r)

    i.e. the effective weight is W + (alpha / r) B A, a rank-r change to the (out, in) matrix W.
    A starts Kaiming-uniform (a = sqrt(5), as nn.Linear and PEFT), B starts at zero, so a fresh
    adapter leaves the model's outputs exactly unchanged while A already carries gradient signal
    into B. Dividing by r keeps the update's size roughly independent of the rank, so alpha
    need not be retuned when r changes.

    `base` is an nn.Linear (any float dtype) or a quant.Linear4bit; A and B are float32 whatever
    the base, because AdamW updates to a 16-bit matrix would round away. `merge()` folds the
    update into a full-precision W (idempotent, tracked by `merged`); a 4-bit W cannot hold it,
    see export_merged.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, device=None):
        super().__init__()
        _check_hparams(r, alpha, dropout)
        self.base, self.r, self.alpha, self.dropout_p = base, r, alpha, dropout
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = device or base.weight.device  # default: where the base's weight is
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self.train(base.training)  # wrapping must not switch an eval-mode model to dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # the update is already inside base.weight
            return y
        if not torch.is_autocast_enabled(x.device.type):  # else autocast sets the matmuls' dtype: an
            x = x.to(self.lora_A.weight.dtype)           # upcast here would be cast straight back
        delta = self.lora_B(self.lora_A(self.dropout(x)))
        return torch.add(y, delta.to(y.dtype), alpha=self.scaling)  # y + scaling * delta, one kernel

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A: the (out, in) float32 matrix that merging adds to W."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A in float32, whatever the base stores (4-bit bases dequantized)."""
        if isinstance(self.base, Linear4bit):
            return self.base.dequantize(torch.float32) + self.delta_weight()
        w = self.base.weight.float()
        return w if self.merged else w + self.delta_weight()

    def check_mergeable(self) -> None:
        if not isinstance(self.base, nn.Linear):
            raise TypeError(f"cannot merge LoRA into a {type(self.base).__name__}: re-quantizing "
                            "would lose most of the update; use export_merged(model, out_dir) "
                            "to write a 16-bit merged checkpoint instead")

    @torch.no_grad()
    def merge(self) -> None:
        self.check_mergeable()
        if not self.merged:  # merging twice would add the update twice
            self.base.weight.copy_(self.merged_weight())  # one rounding to W's dtype
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Exact up to the rounding of W's dtype (a bf16 W does not round-trip bit for bit)."""
        if self.merged:
            w = self.base.weight
            w.copy_(w.float() - self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}"


def _check_hparams(r: int, alpha: float, dropout: float) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 \
            or not math.isfinite(alpha):
        raise ValueError(f"LoRA alpha must be a positive finite number, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _saved_module_names(model: nn.Module, modules_to_save) -> list[str]:
    """Full names of the modules matching `modules_to_save` (full name or last components)."""
    names = []
    for key in modules_to_save:
        found = [n for n, _ in model.named_modules() if n == key or n.endswith("." + key)]
        if not found:
            raise ValueError(f"modules_to_save entry {key!r} matches no module of {type(model).__name__}")
        frozen = [n for n in found if next(model.get_submodule(n).parameters(), None) is None]
        if frozen:  # e.g. model.HostEmbedding, whose table is a buffer in host memory
            raise ValueError(f"modules_to_save entry {key!r}: {frozen[0]} has no parameters to train "
                             f"({type(model.get_submodule(frozen[0])).__name__})")
        names += found
    return names


def _untie(model: nn.Module, saved: list[str]) -> None:
    """Give each module in `saved` its own copy of any parameter it shares with another module (a
    tied lm_head and embed_tokens). PEFT trains a copy of every module in modules_to_save, so a
    tie comes apart there too (its default, ensure_weight_tying=False): only the listed module
    learns, its former partner stays frozen."""
    owners: dict[int, set[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    for name in saved:
        module = model.get_submodule(name)
        for attr, p in list(module.named_parameters(recurse=False)):
            if len(owners[id(p)]) > 1:
                setattr(module, attr, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               targets=("q_proj", "k_proj", "v_proj", "o_proj"), modules_to_save=(), device=None) -> int:
    """Wrap, in place, every linear whose last name component is in `targets` (q_proj, k_proj,
    v_proj, o_proj, gate_proj, up_proj, down_proj for Qwen2), then freeze the rest of `model`
    except `modules_to_save` (e.g. "lm_head", "embed_tokens"). A module in modules_to_save that
    shares its weight (tied embeddings) gets its own copy, as in PEFT. The adapters are made on
    `device` (default: each base's; a base still on the meta device, which FSDP loads after
    sharding, gets them on the training device). Returns the number of trainable parameters."""
    _check_hparams(r, alpha, dropout)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    modules_to_save = (modules_to_save,) if isinstance(modules_to_save, str) else tuple(modules_to_save)
    if lora_modules(model):
        raise ValueError("model already has LoRA adapters (load_peft_adapter fills existing ones)")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Linear4bit))}
    chosen = {n: m for n, m in linears.items() if _short(n) in targets}
    # One unmatched target is a typo as surely as none matching; stop before training wrongly.
    unmatched = [t for t in targets if t not in {_short(n) for n in chosen}]
    if unmatched or not targets:
        available = sorted({_short(n) for n in linears})[:12]
        raise ValueError(f"LoRA targets {unmatched or list(targets)} match no linear layer of "
                         f"{type(model).__name__}; its linears are named {available}")
    saved = _saved_module_names(model, modules_to_save)
    _untie(model, saved)
    for name, linear in chosen.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(linear, r, alpha, dropout, device))

    # Freeze by module, not by parameter name: a tied lm_head shares its Parameter with
    # embed_tokens and appears under one name only in named_parameters().
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
        elif name in saved:
            module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def saved_modules(model: nn.Module) -> list[str]:
    """The modules_to_save of `model`, read from what apply_lora left trainable: the outermost
    modules outside the adapters (lora_A, lora_B) that have parameters, all of them trained."""
    adapters = {f"{n}.{ab}" for n in lora_modules(model) for ab in ("lora_A", "lora_B")}
    out = []
    for name, m in model.named_modules():
        params = list(m.parameters())
        if (name in adapters or isinstance(m, LoRALinear) or not params or any(name.startswith(o + ".") for o in out)
                or not all(p.requires_grad for p in params)):
            continue
        out.append(name)
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA A/B and modules_to_save tensors under the model's own names (the PEFT names without
    the `base_model.model.` prefix). The tensors share storage with the model, like state_dict."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"{name}.lora_B.weight"] = m.lora_B.weight.detach()
    for name in saved_modules(model):
        out.update(model.get_submodule(name).state_dict(prefix=name + "."))
    return out


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its full-precision W (all checked first: no half-merged model)."""
    modules = lora_modules(model).values()
    for m in modules:
        m.check_mergeable()
    for m in modules:
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def _to_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    # Own CPU copies: safetensors refuses tensors that share memory (a tied lm_head/embed_tokens).
    # "format": "pt" is the metadata transformers and PEFT expect in a safetensors file.
    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
              str(path), metadata={"format": "pt"})


ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
MERGED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")  # an index would win over ours


def refuse_overwrite(out_dir, names) -> None:
    """An export never replaces files: a run's config.json or a base model's weights are work."""
    held = [n for n in names if (Path(out_dir) / n).exists()]
    if held:
        raise FileExistsError(f"{out_dir} already holds {', '.join(held)}; export into a new or empty folder "
                              "(nothing was written)")


def save_peft_adapter(model: nn.Module, out_dir, base_model_name_or_path: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors as PEFT's save_pretrained does,
    so `peft.PeftModel.from_pretrained(hf_model, out_dir)` (and vLLM) load it unchanged. Files
    already there are an error, not overwritten."""
    refuse_overwrite(out_dir, ADAPTER_FILES)
    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has no LoRA adapters: call apply_lora first")
    first = next(iter(modules.values()))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": first.r, "lora_alpha": first.alpha, "lora_dropout": first.dropout_p,
        "target_modules": sorted({_short(n) for n in modules}),
        "modules_to_save": [_short(n) for n in saved_modules(model)] or None,
        "init_lora_weights": True, "inference_mode": True, **PLAIN_LORA,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    _to_file({PEFT_PREFIX + k: v for k, v in lora_state_dict(model).items()}, out / ADAPTER_WEIGHTS)
    return out


def _read_adapter(adapter_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG}; not a PEFT adapter directory")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}, only 'LORA' is supported")
    for key, plain in PLAIN_LORA.items():
        if config.get(key) not in (plain, None):
            raise ValueError(f"{config_path}: {key}={config[key]!r} is not plain LoRA; lora.py does not implement it")
    weights = adapter_dir / ADAPTER_WEIGHTS
    if weights.is_file():
        tensors = load_file(str(weights))
    elif (adapter_dir / "adapter_model.bin").is_file():  # adapters saved by older PEFT versions
        tensors = torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} (or adapter_model.bin)")
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}


def load_peft_adapter(model: nn.Module, adapter_dir) -> dict:
    """Load a PEFT LoRA adapter (ours or PEFT's) into `model`; returns its adapter_config.
    A model without adapters gets them first: the config's r / lora_alpha / lora_dropout /
    modules_to_save, on the modules that the file holds tensors for."""
    adapter_dir = Path(adapter_dir)
    config, tensors = _read_adapter(adapter_dir)
    r, alpha = config["r"], config["lora_alpha"]
    modules = lora_modules(model)
    if not modules:
        # The tensor names are the truth: target_modules may be a regex or "all-linear".
        targets = sorted({k.split(".")[-3] for k in tensors if k.split(".")[-2] in ("lora_A", "lora_B")})
        apply_lora(model, r=r, alpha=alpha, dropout=config.get("lora_dropout") or 0.0,
                   targets=targets, modules_to_save=config.get("modules_to_save") or ())
    else:
        for name, m in modules.items():
            if (m.r, m.alpha) != (r, alpha):
                raise ValueError(f"{adapter_dir}: adapter has r={r}, lora_alpha={alpha}, but the "
                                 f"model's {name} has r={m.r}, alpha={m.alpha}")
    own = model.state_dict(keep_vars=True)
    for key, tensor in tensors.items():  # check everything before changing anything
        if key not in own:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {PEFT_PREFIX + key} has no "
                             "counterpart in the model (adapter for another architecture?)")
        if own[key].shape != tensor.shape:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {PEFT_PREFIX + key} has shape "
                             f"{tuple(tensor.shape)} but the model's {key} has shape "
                             f"{tuple(own[key].shape)} (adapter for a different base model?)")
    with torch.no_grad():
        for key, tensor in tensors.items():
            own[key].copy_(tensor)
    return config


@torch.no_grad()
def export_merged(model: nn.Module, out_dir, dtype: torch.dtype | None = None) -> Path:
    """Write a plain Hugging Face checkpoint (config.json + model.safetensors, HF names) with every
    adapter folded in: W' = dequantize(W) + (alpha / r) B A for 4-bit bases, W + (alpha / r) B A
    otherwise; unwrapped 4-bit linears are dequantized. `dtype` defaults to the dtype of the
    model's embeddings (bf16 for a bf16-loaded model). Loads in loader.load_model and transformers.
    A folder that already holds a checkpoint's files is an error, not overwritten."""
    refuse_overwrite(out_dir, MERGED_FILES)
    tensors, replaced = {}, []
    for name, m in model.named_modules():
        if name.startswith(tuple(replaced)):
            continue  # the base inside a LoRALinear already written
        if isinstance(m, LoRALinear):
            weight, bias = m.merged_weight(), m.base.bias
        elif isinstance(m, Linear4bit):
            weight, bias = m.dequantize(torch.float32), m.bias
        else:
            continue
        tensors[f"{name}.weight"] = weight
        if bias is not None:
            tensors[f"{name}.bias"] = bias
        replaced.append(name + ".")
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(replaced))}
    dtype = dtype or next(v.dtype for v in rest.values() if v.is_floating_point())
    seen = set()
    for k, v in rest.items():
        if v.data_ptr() not in seen:  # tied lm_head: HF writes the shared tensor once, as embed_tokens
            seen.add(v.data_ptr())
            tensors[k] = v
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    config = model.config.to_dict()
    if config.get("tie_word_embeddings") and "lm_head.weight" in tensors:
        config["tie_word_embeddings"] = False  # modules_to_save untied lm_head (see _untie)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _to_file(tensors, out / "model.safetensors")
    return out
