"""train.py: the config system and its errors, early errors before any model is loaded, and a
tiny QLoRA run whose loss falls. Two-process DDP runs are in test_resume.py."""
import dataclasses
import json
import re
from pathlib import Path

import pytest

import config
import preflight
import train
import train_helpers
from train_helpers import ROOT, assets, metrics, tensors, tiny_args


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


def write_config(tmp_path, text):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


def test_config_file_and_overrides(tmp_path):
    cfg = config.load_config([write_config(tmp_path, "lr = 1\nbatch_size = 3\nimport math\n_private = 5\n"),
                             "--max_steps=7", "--lora_targets=('q_proj',)", "--fps=None", "--augment=false",
                             "--out_dir=runs/x"])
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.data.pose.fps, cfg.data.pose.augment) == (1.0, 3, 7, None, False)
    assert isinstance(cfg.lr, float) and cfg.lora_targets == ["q_proj"] and cfg.out_dir == "runs/x"
    # the tiny demo's random base belongs to its run (a tokenizer of that run's corpus)
    tiny = str(ROOT / "configs" / "tiny.py")
    assert config.load_config([tiny, "--out_dir=runs/mine"]).model_dir == str(Path("runs/mine") / "base")
    assert config.load_config([tiny, "--model_dir=some/base"]).model_dir == "some/base"


@pytest.mark.parametrize("text, argv, message", [
    ("lrr = 1e-4\n", [], "unknown config key 'lrr'"),
    ("", ["--batchsize=4"], "unknown config key 'batchsize'"),
    ("batch_size = 2.5\n", [], "'batch_size' must be int, got float"),
    ("", ["--lr=fast"], "config key 'lr': cannot parse 'fast'"),
    ("", ["--augment=1"], "'augment' must be bool, got int"),
    ("", ["--max_frames=1.5"], "'max_frames' must be int, got float"),   # a key of data.pose
    ("", ["max_steps=3"], "expected --key=value"),
])
def test_config_errors_name_the_key(tmp_path, text, argv, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load_config([write_config(tmp_path, text), *argv])


def test_impossible_batch_and_foreign_out_dir_are_early_errors(tmp_path):
    cfg = config.load_config(["--global_batch=12", "--batch_size=4"])
    assert preflight.accumulation(cfg, world=3) == 1
    with pytest.raises(config.ConfigError, match="global_batch=12 is not divisible by batch_size x world_size = 4 x 2"):
        preflight.accumulation(cfg, world=2)
    (tmp_path / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "lora_r": 64}))
    with pytest.raises(config.ConfigError, match="holds a run with a different config.*lora_r: 64 there, 16 now"):
        preflight.check_run_dir(cfg, tmp_path)
    cfg = config.load_config([f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(config.ConfigError, match="hf download Qwen/Qwen2.5-7B-Instruct --local-dir"):
        preflight.check_inputs(cfg)
    with pytest.raises(config.ConfigError, match="data_dir .*missing-data does not exist"):
        preflight.check_inputs(config.load_config([f"--data_dir={tmp_path / 'missing-data'}"]))


def test_tiny_run_learns(shared, tmp_path):
    out = tmp_path / "run"
    assert train.main(tiny_args(shared, out, max_steps=30, eval_every=30, save_every=30, grad_accum=1)) == 0
    losses = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert (out / "best").resolve() == out / "ckpt-000030"
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 30 and saved["lora_r"] == 4
    # the trained tensors are LoRA, the encoder and modules_to_save; the 4-bit base is not saved
    names = tensors(out / "ckpt-000030")
    assert any(".lora_A." in n for n in names) and any(n.startswith("encoder.") for n in names)
    assert not any(".base." in n for n in names)


def test_double_quant_quant_cache_and_offload_from_train_to_eval(shared, tmp_path, monkeypatch):
    """A run with double_quant, quant_cache and offload_embeddings writes the quantized base once;
    eval.py's rebuild of the run then reads it (quantizing again would fail) and gets the same
    8-bit-absmax layers and the embedding table in host memory."""
    import torch

    import quant
    import translator
    from tokenizer import Tokenizer

    out, cache = tmp_path / "run", tmp_path / "qcache"
    with pytest.raises(config.ConfigError, match="double_quant=True needs quantize='nf4'"):
        preflight.check_inputs(config.load_config(tiny_args(shared, out, quantize="none", double_quant=True)))
    with pytest.raises(config.ConfigError, match="cannot also be in modules_to_save"):
        preflight.check_inputs(config.load_config(tiny_args(shared, out, offload_embeddings=True,
                                                           modules_to_save=["embed_tokens"])))
    args = tiny_args(shared, out, max_steps=2, eval_every=2, save_every=2, grad_accum=1, double_quant=True,
                     quant_cache=str(cache), offload_embeddings=True, modules_to_save=["lm_head"])
    assert train.main(args) == 0
    assert [p.name.rsplit("-", 1)[0] for p in cache.iterdir()] == ["nf4-bs64-dq"]
    monkeypatch.setattr(quant.Linear4bit, "quantize_", lambda *a: pytest.fail("quant_cache not used"))
    cfg = config.load_run_config(out)
    model = translator.build_model(cfg, Tokenizer.from_dir(cfg.model_dir), torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, quant.Linear4bit)]
    assert layers and all(m.double_quant and m.absmax.dtype == torch.uint8 for m in layers)
    assert type(model.llm.model.embed_tokens).__name__ == "HostEmbedding"


def test_optimizer_is_adamw_with_two_learning_rates():
    """Two steps of make_optimizer (fused AdamW) against the AdamW update written out by hand
    (Loshchilov & Hutter: decoupled decay, bias-corrected moments), per group learning rate."""
    import torch
    from types import SimpleNamespace

    torch.manual_seed(0)
    lora_w, enc_w = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    model = SimpleNamespace(llm=torch.nn.ParameterList([lora_w, frozen]), encoder=torch.nn.ParameterList([enc_w]))
    cfg = config.TrainConfig(lr=1e-2, encoder_lr=3e-2, weight_decay=0.1)
    opt = train.make_optimizer(model, cfg)
    expected = {}
    for p, lr in ((lora_w, 1e-2), (enc_w, 3e-2)):
        w, m, v = p.detach().double().clone(), 0, 0
        for t, g in enumerate((torch.randn(p.shape).double(), torch.randn(p.shape).double()), start=1):
            w = w * (1 - lr * 0.1)
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            w = w - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            expected.setdefault(p, []).append(g.float())
        expected[p] = (expected[p], w)
    for step in range(2):
        for p in (lora_w, enc_w):
            p.grad = expected[p][0][step].clone()
        opt.step()
    for p in (lora_w, enc_w):
        torch.testing.assert_close(p.detach().double(), expected[p][1], rtol=1e-5, atol=1e-6)
    assert all(len(g["params"]) == 1 for g in opt.param_groups)  # the frozen tensor is left out


@pytest.mark.parametrize("path", sorted((train_helpers.ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = config.load_config([str(path)])
    assert cfg.batch_size * preflight.accumulation(cfg, world=4) >= 1 and cfg.model_dir and cfg.out_dir


@pytest.mark.parametrize("path", sorted((train_helpers.ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_config_files_set_only_what_differs_from_the_defaults(path):
    """A config restating a default hides which of its values are choices (as nanoGPT's, ours set
    only what differs; the defaults are config.TrainConfig's)."""
    import runpy
    import types
    default = config.flat(config.TrainConfig())
    values = {k: v for k, v in runpy.run_path(str(path)).items()
              if not k.startswith("_") and not isinstance(v, types.ModuleType)}
    restated = sorted(k for k, v in values.items() if default[k] == (list(v) if isinstance(v, tuple) else v))
    assert not restated, f"{path.name} restates the defaults of {restated}"
