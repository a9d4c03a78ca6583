"""model_dir as a Hub repo id: loader.model_path finds the snapshot in a local Hugging Face cache
laid out as huggingface_hub lays it out (models--OWNER--NAME/refs/main, snapshots/<commit>/ of
symlinks into blobs/), with no hub client and no network; train.py and eval.py read the model
and the tokenizer from there; a repo id that is not cached gets the download hint."""
import hashlib
import json
import os

import pytest
import torch

import config
import loader
import preflight
import train
from train_helpers import assets, tiny_args


def fake_cache(hub, repo: str, files_from, commit: str = "c0ffee" * 6 + "beef") -> object:
    """A cache entry for `repo` whose main snapshot holds the files of folder `files_from`, plus an
    older snapshot without config.json that refs/main does not point at. Returns the snapshot."""
    root = hub / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(files_from.iterdir()):
        if f.is_file():
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (root / "snapshots" / "0ld").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)  # huggingface_hub writes the hash without a newline
    return snapshot


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME", "HOME"])
def test_repo_id_resolves_to_the_cached_snapshot(tiny_checkpoint, tmp_path, monkeypatch, env):
    path, hf = tiny_checkpoint
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    hub = {"HF_HUB_CACHE": tmp_path / "hub", "HF_HOME": tmp_path / "hf" / "hub",
           "HOME": tmp_path / "home" / ".cache" / "huggingface" / "hub"}[env]
    monkeypatch.setenv(env, str({"HF_HUB_CACHE": hub, "HF_HOME": hub.parent, "HOME": tmp_path / "home"}[env]))
    snapshot = fake_cache(hub, "tiny-org/Tiny-Qwen2", path)
    monkeypatch.chdir(tmp_path)
    assert loader.hub_cache() == hub and loader.model_path("tiny-org/Tiny-Qwen2") == snapshot
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loader.load_model("tiny-org/Tiny-Qwen2")(ids), hf(ids).logits, rtol=0, atol=1e-5)
    # a folder of that name comes first; an uncached repo id and a plain path stay as given
    (tmp_path / "tiny-org" / "Tiny-Qwen2").mkdir(parents=True)
    assert loader.model_path("tiny-org/Tiny-Qwen2") == loader.Path("tiny-org/Tiny-Qwen2")
    assert str(loader.model_path("tiny-org/Other")) == "tiny-org/Other"
    assert loader.model_path(path) == path


def test_uncached_repo_id_gets_the_download_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    cfg = config.load_config([f"--data_dir={tmp_path}", "--model_dir=Qwen/Qwen2.5-7B-Instruct"])
    with pytest.raises(config.ConfigError, match=r"model_dir Qwen/Qwen2.5-7B-Instruct holds no checkpoint .*nor is "
                                                 rf"it in the Hugging Face cache {tmp_path / 'hub'}\. Download it "
                                                 r"with: hf download Qwen/Qwen2.5-7B-Instruct  \("):
        preflight.check_inputs(cfg)
    cfg = config.load_config([f"--data_dir={tmp_path}", "--model_dir=checkpoints/Qwen2.5-7B-Instruct"])
    with pytest.raises(config.ConfigError, match="hf download Qwen/Qwen2.5-7B-Instruct --local-dir checkpoints/"):
        preflight.check_inputs(cfg)


def test_train_and_eval_read_model_and_tokenizer_from_the_cache(tmp_path_factory, tmp_path, monkeypatch):
    """A tiny run whose model_dir is a repo id: train.py (check, tokenizer, model) and eval.py
    (the run's saved config names the repo id) both find the cached snapshot."""
    import eval as ev

    shared = assets(tmp_path_factory)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # were the repo id taken as a folder, the first-use model would land here
    fake_cache(tmp_path / "hub", "tiny-org/tiny-base", shared / "base")
    out = tmp_path / "run"
    assert train.main(tiny_args(shared, out, model_dir="tiny-org/tiny-base", max_steps=2, eval_every=2,
                                save_every=2, grad_accum=1)) == 0
    assert json.loads((out / "config.json").read_text())["model_dir"] == "tiny-org/tiny-base"
    assert not (tmp_path / "tiny-org").exists()
    assert ev.main([str(out), "--split", "test", "--batch_size", "4"]) == 0
    (predictions,) = out.glob("predictions-test-*.jsonl")
    assert predictions.read_text().count("\n") > 0
