"""Issue 15, "nothing lost, nothing silent": each numbered case of the issue, as a user meets it.
Where work could be lost the old data must stay as it was; where input is bad the message must
name the file, row or field and say what to do.

    1 exports never overwrite      5 float16 overflow         9 answer length cap       13 eval.py errors
    2 all checkpoints damaged      6 base fingerprint        10 ties in val BLEU        14 zero intervals
    3 cache of other settings      7 corpus rows, stale poses 11 signer, uid paths      15 disk full, resume
    4 predictions files            8 values checked early    12 CSV/JSONL encodings     16 small ones
"""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import checkpoints
import config
import corpus
import curves
import batches
import data
import eval as ev
import loader
import lora
import poses
import train
from test_data import good_rows, make_corpus, read_fixture, write_clip, write_csv
from tokenizer import train_bpe
from train_helpers import ROOT, assets, metrics, tiny_args


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


@pytest.fixture(scope="module")
def run_dir(shared, tmp_path_factory):
    """A finished tiny run of 4 steps, checkpoints at 2 and 4. Tests that change it copy it."""
    out = tmp_path_factory.mktemp("robust") / "run"
    assert train.main(tiny_args(shared, out, max_steps=4, grad_accum=1, eval_every=2, save_every=2)) == 0
    return out


def copy_run(run_dir, dst):
    shutil.copytree(run_dir, dst, symlinks=True)
    return dst


def snapshot(folder, but=None):
    """Every file's bytes under a folder (but the subfolder `but`, and .lock, which names the last
    process that held the folder), to show that nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] != but and p.name != ".lock"}


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


# ----------------------------------------------------------------------------- 1. exports

def test_1_exports_refuse_a_folder_that_holds_a_run_or_a_model(shared, run_dir, tmp_path, capsys):
    run, base = copy_run(run_dir, tmp_path / "run"), tmp_path / "base"
    shutil.copytree(shared / "base", base)
    before_run, before_base = snapshot(run), snapshot(base)
    assert ev.main([str(run), "--export_merged", str(run)]) == 2
    assert "already holds config.json" in error_line(capsys)
    assert ev.main([str(run), "--export_merged", str(base)]) == 2
    assert "new or empty folder" in error_line(capsys)
    assert snapshot(run) == before_run and snapshot(base) == before_base
    # the library functions refuse as well, before writing anything
    llm = loader.load_model(base)
    lora.apply_lora(llm, r=2, alpha=4, targets=("q_proj",))
    with pytest.raises(FileExistsError, match="config.json, model.safetensors"):
        lora.export_merged(llm, base)
    lora.save_peft_adapter(llm, tmp_path / "adapter")
    with pytest.raises(FileExistsError, match="adapter_config.json"):
        lora.save_peft_adapter(llm, tmp_path / "adapter")
    assert snapshot(base) == before_base


# ----------------------------------------------------------------------------- 2. every checkpoint damaged

def test_2_resume_auto_with_every_checkpoint_damaged_refuses_and_keeps_them(shared, run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    for ckpt in checkpoints.listed(run):
        (ckpt / "trained.safetensors").write_bytes(b"damaged")
    before = snapshot(run, but="logs")
    assert train.main(tiny_args(shared, run, max_steps=4, grad_accum=1, eval_every=2, save_every=2,
                                resume="auto")) == 2
    line = error_line(capsys)
    assert "none of the 2 checkpoints" in line and "ckpt-000004: trained.safetensors" in line
    assert "Move them away" in line and snapshot(run, but="logs") == before


def test_2_a_start_at_step_0_forgets_the_metrics_of_an_attempt_that_saved_nothing(shared, tmp_path, monkeypatch,
                                                                                  capsys):
    """Also 10 (a tie in validation BLEU-4 goes to the later checkpoint) and 16 (stdout: nothing
    but results)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 99.0}\n')
    flat = {"val_loss": 1.0, "val_bleu1": 0.0, "val_bleu2": 0.0, "val_bleu3": 0.0, "val_bleu4": 0.0,
            "val_rougeL": 0.0, "val_chrf": 0.0, "val_n": 4, "val_word_recall_by_freq": {}, "example": None}
    monkeypatch.setattr(train, "validate", lambda *a: dict(flat))
    assert train.main(tiny_args(shared, out, max_steps=4, grad_accum=1, eval_every=2, save_every=2)) == 0
    rows = [m for m in metrics(out) if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4] and all(m["loss"] != 99.0 for m in rows)
    assert (out / "best").resolve().name == "ckpt-000004"        # 0.0 at step 2 and at step 4: the later one
    assert capsys.readouterr().out == ""                          # the LoRA summary went to the log


# ----------------------------------------------------------------------------- 3. a cache of other settings

def test_3_prepare_with_other_settings_keeps_the_cache_unless_forced(fixtures_dir, tmp_path, capsys):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(4))
    cfg = data.DataConfig(data_dir=str(root))
    data.prepare(cfg, workers=1, progress=False)
    before = snapshot(root / "cache")
    with pytest.raises(SystemExit) as e:
        data.main(["prepare", str(root), "--layout", "openpose", "--workers", "1"])
    assert e.value.code == 2
    line = error_line(capsys)
    assert "layout: 'holistic' there, 'openpose' now" in line and "--force" in line and "--cache" in line
    assert snapshot(root / "cache") == before and data.is_fresh(cfg)
    # asked for: replaced; a build that keeps no row at all is an error, not "ok": 0 and exit 0
    with pytest.raises(SystemExit):
        data.main(["prepare", str(root), "--layout", "openpose", "--workers", "1", "--force"])
    line = error_line(capsys)
    assert "no row of the corpus could be used" in line and "layout lacks points" in line and "skipped.jsonl" in line
    assert not data.is_fresh(cfg)


# ----------------------------------------------------------------------------- 4. predictions

def test_4_predictions_are_per_split_and_checkpoint_and_never_half_written(run_dir, tmp_path, monkeypatch, capsys):
    # --out into a missing folder: an error before any decoding, not after it
    monkeypatch.setattr(ev, "decode", lambda *a, **k: pytest.fail("decoded before checking --out"))
    assert ev.main([str(run_dir), "--out", str(tmp_path / "nowhere" / "p.jsonl")]) == 2
    assert "cannot write in" in error_line(capsys)
    # a write that fails (disk full) leaves the earlier file as it was
    path = tmp_path / "p.jsonl"
    path.write_text('{"uid": "old"}\n')
    real = type(path).write_text

    def full_disk(self, text, *a, **k):
        real(self, text[:5])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(path), "write_text", full_disk)
    with pytest.raises(OSError):
        ev.write_predictions([{"uid": "new", "reference": "a", "hypothesis": "b"}], path)
    monkeypatch.undo()
    assert path.read_text() == '{"uid": "old"}\n' and [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]
    # the default file names the split and the checkpoint: evaluating val does not replace test's
    ckpt = checkpoints.pick(run_dir)
    assert ev.predictions_path(run_dir, "val", ckpt, 1) == run_dir / f"predictions-val-{ckpt.name}.jsonl"
    assert ev.predictions_path(run_dir, "test", ckpt, 4).name == f"predictions-test-{ckpt.name}-beams4.jsonl"


# ----------------------------------------------------------------------------- 5. float16 overflow

def test_5_a_value_beyond_float16_is_skipped_not_stored_as_inf(fixtures_dir, tmp_path):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(3))
    pose = read_fixture(fixtures_dir)
    pose.body.data.data[5, 0, 13, 0] = 1e9                         # LEFT_ELBOW, one frame, x
    with open(root / "poses" / f"{good_rows(3)[1][0]}.pose", "wb") as f:
        pose.write(f)
    summary = data.prepare(data.DataConfig(data_dir=str(root)), workers=1, progress=False)
    assert summary["ok"] == 2 and summary["reasons"] == {"value too large": 1}
    skipped = json.loads((root / "cache" / "skipped.jsonl").read_text())
    assert skipped["uid"] == good_rows(3)[1][0] and "65504" in skipped["detail"] and ".pose" in skipped["detail"]
    assert np.isfinite(np.load(root / "cache" / "features.npy")).all()


# ----------------------------------------------------------------------------- 6. base fingerprint

def other_base(shared, dst):
    """The run's base with other values but the same shapes and files (as 7B is to 7B-Instruct)."""
    shutil.copytree(shared / "base", dst)
    tensors = load_file(str(dst / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_6_a_checkpoint_refuses_another_base_of_the_same_shapes(shared, run_dir, tmp_path, capsys):
    other = other_base(shared, tmp_path / "other")
    moved = shutil.copytree(shared / "base", tmp_path / "moved")
    assert loader.fingerprint(moved) == loader.fingerprint(shared / "base") != loader.fingerprint(other)
    assert (other / "model.safetensors").stat().st_size == (shared / "base" / "model.safetensors").stat().st_size
    run = copy_run(run_dir, tmp_path / "run")
    saved = (run / "config.json").read_text()
    assert train.main(tiny_args(shared, run, max_steps=4, grad_accum=1, eval_every=2, save_every=2,
                                resume="auto", model_dir=str(other))) == 2
    line = error_line(capsys)
    assert "was trained on the base model in" in line and str(other) in line and "--model_dir" in line
    assert (run / "config.json").read_text() == saved             # not rewritten with the other base
    assert ev.main([str(run), "--model_dir", str(other), "--pose", str(ROOT / "README.md")]) == 2
    assert "fingerprint" in error_line(capsys)


# ----------------------------------------------------------------------------- 7, 11, 12. corpus rows

def test_7_11_12_bad_corpus_rows_are_skipped_with_file_and_line(fixtures_dir, tmp_path):
    rows = good_rows(4)
    root = make_corpus(tmp_path / "d" / "c", fixtures_dir, rows)
    write_clip(read_fixture(fixtures_dir), tmp_path / "d" / "x.pose", range(60))   # outside poses/
    lines = ["uid,text"] + [f"{u},{t}" for u, t in rows[:3]] + [f"{rows[3][0]},hello,extra,fields", "../../x,escape"]
    (root / "iSign_v1.1.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8-sig")          # Excel's BOM
                                          + b"bad--1,caf\xe9 latin-1\n")
    summary = data.prepare(data.DataConfig(data_dir=str(root)), workers=1, progress=False)
    assert summary["ok"] == 3 and summary["reasons"] == {"bad corpus row": 3}
    skipped = map(json.loads, (root / "cache" / "skipped.jsonl").read_text().splitlines())
    details = {s["uid"]: s["detail"] for s in skipped}
    assert "line 5: 4 fields, the header names 2; quote a text" in details[rows[3][0]]
    assert "names a file outside poses/" in details["../../x"]
    assert "iSign_v1.1.csv line 7: bytes that are not UTF-8" in details["bad--1"]


def test_7_12_bad_manifest_lines_are_skipped_with_their_line(fixtures_dir, tmp_path):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    lines = [json.dumps({"pose": f"poses/{u}.pose", "text": t, "split": "train"}) for u, t in rows]
    lines += [json.dumps({"pose": f"poses/{rows[0][0]}.pose", "text": "x", "split": "training"}),
              json.dumps({"text": "no pose"}), '{"pose": "poses/a.pose", "text": ']
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    summary = data.prepare(data.DataConfig(data_dir=str(root), csv="m.jsonl"), workers=1, progress=False)
    assert summary["ok"] == 3 and summary["splits"] == {"train": 3} and summary["reasons"] == {"bad corpus row": 3}
    details = [s["detail"] for s in map(json.loads, (root / "cache" / "skipped.jsonl").read_text().splitlines())]
    assert "m.jsonl line 4: \"split\" is 'training', not one of train, val, test" in details[0]
    assert "m.jsonl line 5: no \"pose\" field" in details[1] and "m.jsonl line 6: not JSON" in details[2]


def test_7_a_replaced_pose_file_is_converted_again(fixtures_dir, tmp_path, capsys):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    cfg = data.DataConfig(data_dir=str(root))
    assert data.prepare(cfg, workers=1, progress=False)["frames"] == 97 + 60 + 31
    write_clip(read_fixture(fixtures_dir), root / "poses" / f"{rows[0][0]}.pose", range(40))
    data.ensure_cache(cfg)                                         # train.py: warned, the cache kept
    assert "1 pose files changed" in capsys.readouterr().err and data.is_fresh(cfg)
    assert data.prepare(cfg, workers=1, progress=False)["frames"] == 40 + 60 + 31
    index = json.loads((root / "cache" / "index.json").read_text())
    assert index["length"] == [40, 60, 31]


# ----------------------------------------------------------------------------- 8, 14. values checked before loading

@pytest.mark.parametrize("override, key", [
    ("--lr=-1", "lr"), ("--max_steps=-5", "max_steps"), ("--max_steps=0", "max_steps"),
    ("--eval_every=0", "eval_every"), ("--save_every=0", "save_every"), ("--max_new_tokens=0", "max_new_tokens"),
    ("--batch_size=0", "batch_size"), ("--max_answer_tokens=0", "max_answer_tokens"), ("--lr=1e999", "lr"),
    ("--lora_dropout=1.0", "lora_dropout"), ("--split_ratios=(0, 0, 0)", "split_ratios"),
    ("--quantize=int8", "quantize"), ("--layout=openpos", "layout"), ("--min_frames=500", "min_frames"),
])
def test_8_14_impossible_values_are_refused_before_loading(override, key):
    with pytest.raises(config.ConfigError, match=f"'?{key}'? .*"):
        config.load_config([override])


@pytest.mark.parametrize("args", [["--num_beams", "0"], ["--num_beams", "-3"], ["--max_new_tokens", "0"],
                                  ["--batch_size", "0"]])
def test_8_13_eval_refuses_impossible_arguments(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main([str(tmp_path), *args])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_8_max_steps_0_test_at_end_never_reports_an_untrained_model(shared, tmp_path, capsys):
    assert train.main(tiny_args(shared, tmp_path / "r", max_steps=0, test_at_end=True)) == 2
    assert "'max_steps' must be >= 1, got 0" in error_line(capsys) and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 9. answer length

def test_9_long_answers_are_cut_to_max_answer_tokens(fixtures_dir, tmp_path):
    rows = good_rows(3, videos=3)
    rows[1] = (rows[1][0], " ".join(["word"] * 400))
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    cfg = data.DataConfig(data_dir=str(root), split_ratios=(1, 0, 0), max_answer_tokens=16)
    data.prepare(cfg, workers=1, progress=False)
    tok = train_bpe([t for _, t in rows] * 3, 300, tmp_path / "tok")
    ds = batches.SignDataset(cfg, "train", tok)
    k = ds.uids.index(rows[1][0])
    assert ds.truncated == 1 and len(ds.answer_ids[k]) == 16 and tok.im_end_id not in ds.answer_ids[k]
    assert ds.texts[k] == rows[1][1]                               # the reference stays whole
    short = [i for i in range(3) if i != k]
    assert all(ds.answer_ids[i][-1] == tok.im_end_id for i in short)
    assert all(ds.answer_ids[i][:-1] == tok.encode(ds.texts[i]) for i in short)


# ----------------------------------------------------------------------------- 11. the signer

def test_11_an_empty_first_person_beside_the_signer(fixtures_dir, tmp_path):
    pose = read_fixture(fixtures_dir)
    body = pose.body
    two = NumPyPoseBody(body.fps, np.ma.concatenate([np.ma.zeros(body.data.shape, np.float32), body.data], axis=1),
                        np.concatenate([np.zeros_like(body.confidence), body.confidence], axis=1))
    with open(tmp_path / "two.pose", "wb") as f:
        Pose(pose.header, two).write(f)
    cfg = poses.PoseConfig()
    np.testing.assert_array_equal(poses.load_pose(tmp_path / "two.pose", cfg),
                                  poses.load_pose(fixtures_dir / "holistic_576.pose", cfg))


# ----------------------------------------------------------------------------- 13. eval.py's errors

def test_13_eval_errors_are_one_line(shared, run_dir, fixtures_dir, tmp_path, capsys):
    assert ev.main([str(tmp_path)]) == 2
    assert "no usable checkpoint" in error_line(capsys)
    assert ev.main([str(run_dir), "--pose", str(tmp_path / "missing.pose")]) == 2
    assert "missing.pose: no such file" in error_line(capsys)
    (tmp_path / "garbage.pose").write_bytes(np.random.default_rng(0).bytes(3000))
    assert ev.main([str(run_dir), "--pose", str(tmp_path / "garbage.pose")]) == 2
    assert "garbage.pose: not a readable .pose file" in error_line(capsys)
    assert ev.main([str(run_dir), "--pose", str(fixtures_dir / "openpose_137.pose")]) == 2
    assert "trained on layout='holistic'" in error_line(capsys)
    # a corpus without a test split
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "poses").symlink_to(shared / "corpus" / "poses")
    rows = [r for r in corpus.read_rows(config.load_run_config(run_dir).data)]
    for split in ("train", "val"):
        write_csv(corpus_dir / f"{split}.csv", [(r.uid, r.text) for r in rows if r.split == split])
    assert ev.main([str(run_dir), "--data_dir", str(corpus_dir), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "the test split of" in error_line(capsys) and not (tmp_path / "p.jsonl").exists()


# ----------------------------------------------------------------------------- 15. faults and resuming

def test_15_disk_full_leaves_no_temporary_and_logs_the_traceback(shared, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = checkpoints.save_file

    def full_at_step_4(tensors, path, *a, **k):
        if "ckpt-000004" in path:
            open(path, "wb").write(b"partial")
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull })')
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(checkpoints, "save_file", full_at_step_4)
    assert train.main(tiny_args(shared, out, max_steps=4, grad_accum=1, eval_every=2, save_every=2)) == 1
    log = (out / "logs" / "rank0.log").read_text()
    assert "Traceback" in log and "could not write checkpoint" in log and "GiB free" in log and "StorageFull" in log
    assert not list(out.glob(".tmp-*")) and checkpoints.listed(out) == [out / "ckpt-000002"]
    assert checkpoints.problem(out / "ckpt-000002") is None
    capsys.readouterr()


def test_15_resume_from_another_run_or_a_bad_meta_is_refused(shared, run_dir, tmp_path, capsys):
    ckpt = run_dir / "ckpt-000004"
    for override, diff in ((dict(lora_r=8), "lora_r: 4 there, 8 now"),
                           (dict(max_steps=3), "max_steps: 4 there, 3 now")):
        args = {**dict(max_steps=4, grad_accum=1, eval_every=2, save_every=2, resume=str(ckpt)), **override}
        assert train.main(tiny_args(shared, tmp_path / "new", **args)) == 2
        assert f"cannot resume from {ckpt}" in (line := error_line(capsys)) and diff in line
    bad = shutil.copytree(ckpt, tmp_path / "ckpt-000004")
    (bad / "meta.json").write_text("{}")
    assert "no step or file list" in checkpoints.problem(bad)
    # a trained tensor of another shape is named, with both shapes
    import translator
    from tokenizer import Tokenizer
    cfg = config.load_run_config(run_dir)
    cfg.lora_r = 8
    model = translator.build_model(cfg, Tokenizer.from_dir(cfg.model_dir), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"lora_A.weight has shape \(4, 64\) there, \(8, 64\) in the model"):
        checkpoints.load_trained(model, ckpt)


# ----------------------------------------------------------------------------- 16. smaller ones

def test_16_a_finished_run_is_extended_with_a_larger_max_steps(shared, run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    (run / ".tmp-ckpt-000003").mkdir()                             # left by a save that was killed
    (run / ".tmp-ckpt-000003" / "trained.safetensors").write_bytes(b"half")
    assert train.main(tiny_args(shared, run, max_steps=6, grad_accum=1, eval_every=2, save_every=2,
                                resume="auto")) == 0
    assert [m["step"] for m in metrics(run) if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert checkpoints.listed(run)[-1].name == "ckpt-000006" and not list(run.glob(".tmp-*"))
    assert json.loads((run / "config.json").read_text())["max_steps"] == 6
    assert "resumed from" in (run / "logs" / "rank0.log").read_text()


def test_16_metrics_hold_null_for_nan_and_inf(tmp_path):
    curves.record(tmp_path, {"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-4})

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-4} and not math.isnan(row["lr"])


def test_16_bench_subcommand_help_is_its_own():
    res = subprocess.run([sys.executable, str(ROOT / "bench.py"), "data", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage: bench.py data" in res.stdout
