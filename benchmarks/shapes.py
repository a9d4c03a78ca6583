"""The model shapes and GPU peaks that the whole-model benchmarks run at (bench.py decode,
benchmarks/training.py): Qwen2.5's published shapes, NVIDIA's datasheet peaks, and `bench_shape`, which
finds a config's shape (checkpoint, init_model, model_repo or --shape)."""


# Qwen2.5 shapes (the config.json of each size on the Hugging Face hub; an -Instruct model has its
# base's shape): hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings, rms_norm_eps.
QWEN25_SHAPES = {
    "0.5B": (896, 4864, 24, 14, 2, 151936, True, 1e-6),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True, 1e-6),
    "3B": (2048, 11008, 36, 16, 2, 151936, True, 1e-6),
    "7B": (3584, 18944, 28, 28, 4, 152064, False, 1e-6),
    "14B": (5120, 13824, 48, 40, 8, 152064, False, 1e-5),
    "32B": (5120, 27648, 64, 40, 8, 152064, False, 1e-5),
}
# Dense bf16 tensor-core FLOP/s (no sparsity) and HBM bytes/s from NVIDIA's datasheets; the first
# name contained in torch.cuda.get_device_name() wins. Other devices: no MFU / bandwidth share.
GPU_PEAKS = {"H100 PCIe": (756e12, 2.0e12), "H100 NVL": (835e12, 3.9e12), "H100": (989e12, 3.35e12),
             "H200": (989e12, 4.8e12)}


def qwen25_config(size: str):
    from model import Qwen2Config
    if size not in QWEN25_SHAPES:
        raise SystemExit(f"bench.py: no Qwen2.5 shape {size!r}; known: {', '.join(QWEN25_SHAPES)}")
    h, i, n, nh, nkv, v, tied, eps = QWEN25_SHAPES[size]
    return Qwen2Config(vocab_size=v, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                            num_attention_heads=nh, num_key_value_heads=nkv, max_position_embeddings=32768,
                            rope_theta=1e6, rms_norm_eps=eps, tie_word_embeddings=tied)


def bench_shape(cfg, size: str | None, random_weights: bool):
    """(Qwen2Config, where it came from): --shape, else model_dir/config.json, else the config's
    init_model (tiny CPU configs), else the size named in model_repo ("Qwen/Qwen2.5-7B-Instruct")."""
    import re

    import loader
    from model import Qwen2Config
    ckpt = loader.model_path(cfg.model_dir) / "config.json"
    if not random_weights:
        if size or not ckpt.is_file():
            raise SystemExit(f"bench.py train: {ckpt} not found (or --shape given): pass --random-weights "
                             "to measure a random model of that shape")
        return Qwen2Config.from_json(ckpt), str(ckpt)
    if size:
        return qwen25_config(size), f"Qwen2.5-{size} shape (--shape)"
    if ckpt.is_file():
        return Qwen2Config.from_json(ckpt), str(ckpt)
    if cfg.init_model:
        spec = {k: v for k, v in cfg.init_model.items() if k != "initializer_range"}
        return Qwen2Config(**spec), "the config's init_model"
    found = re.search(r"-(\d+(?:\.\d+)?B)\b", cfg.model_repo)
    if not found:
        raise SystemExit(f"bench.py train: no checkpoint in {cfg.model_dir} and no size in model_repo "
                         f"{cfg.model_repo!r}: pass --shape ({', '.join(QWEN25_SHAPES)})")
    return qwen25_config(found.group(1)), f"Qwen2.5-{found.group(1)} shape (from model_repo)"
