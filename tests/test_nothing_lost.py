"""Issue 26, "nothing lost, second round", cases 3 to 12 (1 and 2, two processes at once:
test_concurrency.py): exports inside a run, a stray quote in a CSV, empty splits, a damaged
cache, --resume=auto with nothing saved, an out_dir that cannot be written, pose files too large
to read, the smaller messages, and the README as a newcomer reads it. Each message must name the
file or folder and say what to do."""
import json
import os
import re
import shutil

import numpy as np
import pytest

import corpus
import batches
import data
import eval as ev
import poses
import train
from test_data import good_rows, make_corpus, write_csv
from test_robust import copy_run, error_line, snapshot
from train_helpers import ROOT, assets, tiny_args


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


@pytest.fixture(scope="module")
def run_dir(shared, tmp_path_factory):
    """A finished tiny run of 4 steps, checkpoints at 2 and 4. Tests that change it copy it."""
    out = tmp_path_factory.mktemp("nothing-lost") / "run"
    assert train.main(tiny_args(shared, out, max_steps=4, grad_accum=1, eval_every=2, save_every=2)) == 0
    return out


def split_corpus(shared, dst, splits):
    """The shared corpus's clips with split CSVs for `splits` only (train.csv, ...)."""
    dst.mkdir()
    (dst / "poses").symlink_to(shared / "corpus" / "poses")
    cfg = data.DataConfig(data_dir=str(shared / "corpus"), split_ratios=(0.6, 0.2, 0.2))
    rows = corpus.read_rows(cfg)
    for split in splits:
        write_csv(dst / f"{split}.csv", [(r.uid, r.text) for r in rows if r.split == split])
    return dst


def run_args(shared, out, **overrides):
    return tiny_args(shared, out, **{**dict(max_steps=2, grad_accum=1, eval_every=2, save_every=2), **overrides})


# ----------------------------------------------------------------------------- 3. exports inside a run

def test_3_an_export_inside_a_run_directory_is_refused(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    before = snapshot(run)
    for flag, target in (("--export_merged", run / "ckpt-000004"), ("--export_adapter", run / "exports" / "lora"),
                         ("--export_merged", run / "logs")):
        assert ev.main([str(run), flag, str(target)]) == 2
        line = error_line(capsys)
        assert f"inside the run directory {run}" in line and "outside it" in line, line
    assert snapshot(run) == before and not (run / "exports").exists()
    # into another run's directory neither
    other = copy_run(run_dir, tmp_path / "other")
    assert ev.main([str(run), "--export_adapter", str(other / "ckpt-000002")]) == 2
    assert f"inside the run directory {other}" in error_line(capsys)
    assert ev.main([str(run), "--split", "val", "--no_shuffled", "--out", str(tmp_path / "p.jsonl")]) == 0


# ----------------------------------------------------------------------------- 4. a stray quote in a CSV

@pytest.mark.parametrize("closed_at", [None, 7])
def test_4_a_stray_quote_stops_prepare_naming_its_line(fixtures_dir, tmp_path, capsys, closed_at):
    rows = good_rows(8)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    lines = ["uid,text"] + [f"{u},{t}" for u, t in rows]
    lines[3] = f'{rows[2][0]},"{rows[2][1]}'                       # line 4 opens a quote ...
    if closed_at:
        lines[closed_at - 1] += '"'                                 # ... that a later line closes
    (root / "iSign_v1.1.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        data.main(["prepare", str(root), "--workers", "1"])
    line = error_line(capsys)
    assert "iSign_v1.1.csv line 4" in line and "quote" in line, line
    assert not (root / "cache" / "DONE").exists()


def test_4_quoted_texts_that_stay_on_their_line_are_fine(fixtures_dir, tmp_path):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    (root / "iSign_v1.1.csv").write_text(f'uid,text\n{rows[0][0]},"he said ""hi"", then left"\n'
                                         f'{rows[1][0]},"a, b"\n{rows[2][0]},plain\n')
    texts = [r.text for r in corpus.read_rows(data.DataConfig(data_dir=str(root)))]
    assert texts == ['he said "hi", then left', "a, b", "plain"]


# ----------------------------------------------------------------------------- 5. empty splits

def test_5_no_test_split_with_test_at_end_is_said_before_the_model_and_never_crashes(shared, tmp_path, capsys):
    corpus_dir = split_corpus(shared, tmp_path / "c", ("train", "val"))
    out = tmp_path / "run"
    args = run_args(shared, out, data_dir=str(corpus_dir), test_at_end=True)
    assert train.main(args) == 0
    log = (out / "logs" / "rank0.log").read_text()
    said = log.index("no test split")
    assert said < log.index("trained parameters")                   # before the model was built
    assert "test_at_end" in log[said:].splitlines()[0] and not list(out.glob("predictions-*"))
    # a requeued job (--resume=auto) ends as well: nothing to loop on
    assert train.main(args + ["--resume=auto", "--max_steps=3"]) == 0
    capsys.readouterr()


def test_5_no_validation_split_is_said_and_the_test_uses_the_last_checkpoint(shared, tmp_path, capsys):
    corpus_dir = split_corpus(shared, tmp_path / "c", ("train", "test"))
    out = tmp_path / "run"
    assert train.main(run_args(shared, out, data_dir=str(corpus_dir), test_at_end=True)) == 0
    log = (out / "logs" / "rank0.log").read_text()
    assert "no validation split" in log and log.index("no validation split") < log.index("trained parameters")
    assert not (out / "best").exists() and (out / "predictions-test-ckpt-000002.jsonl").is_file()
    capsys.readouterr()


def test_5_an_empty_train_split_is_refused_before_the_model(shared, tmp_path, capsys, monkeypatch):
    corpus_dir = split_corpus(shared, tmp_path / "c", ("val", "test"))
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    assert train.main(run_args(shared, tmp_path / "run", data_dir=str(corpus_dir))) == 2
    line = error_line(capsys)
    assert "train split" in line and "no clips" in line and str(corpus_dir) in line


# ----------------------------------------------------------------------------- 6. a damaged cache

def truncate(path, keep=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def test_6_prepare_finds_a_damaged_cache_and_builds_it_again(fixtures_dir, tmp_path, capsys):
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(4))
    cfg = data.DataConfig(data_dir=str(root))
    data.prepare(cfg, workers=1, progress=False)
    truncate(root / "cache" / "features.npy")
    assert not data.is_fresh(cfg)
    assert data.prepare(cfg, workers=1, progress=False)["frames"] == 97 + 60 + 31 + 97
    err = capsys.readouterr().err
    assert "features.npy" in err and "damaged" in err and "building it again" in err
    assert len(np.load(root / "cache" / "features.npy", mmap_mode="r")) == 97 + 60 + 31 + 97


def test_6_train_and_eval_on_a_damaged_cache(shared, run_dir, tmp_path, capsys):
    corpus_dir = shutil.copytree(shared / "corpus", tmp_path / "corpus")
    features = corpus_dir / "cache" / "features.npy"
    cfg = data.DataConfig(data_dir=str(corpus_dir), split_ratios=(0.6, 0.2, 0.2))
    truncate(features)
    with pytest.raises(FileNotFoundError, match=r"damaged.*features\.npy.*python data\.py prepare"):
        batches.SignDataset(cfg, "train", None)
    assert ev.main([str(run_dir), "--data_dir", str(corpus_dir), "--split", "val", "--no_shuffled",
                    "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "damaged" in capsys.readouterr().err and (tmp_path / "p.jsonl").is_file()
    truncate(features)
    assert train.main(run_args(shared, tmp_path / "run", data_dir=str(corpus_dir), max_steps=1)) == 0
    assert "damaged" in capsys.readouterr().err and data.is_fresh(cfg)


# ----------------------------------------------------------------------------- 7. --resume=auto, nothing saved

def test_7_resume_auto_with_no_checkpoint_says_it_starts_at_step_0(shared, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(run_args(shared, out, max_steps=1, resume="auto")) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "--resume=auto" in ln]
    assert lines and str(out) in lines[0] and "step 0" in lines[0], lines


# ----------------------------------------------------------------------------- 8. out_dir cannot be written

def test_8_an_out_dir_that_cannot_be_written_is_one_line_before_the_model(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    (tmp_path / "file").write_text("a file, not a folder")
    targets = [tmp_path / "file" / "run"]
    if os.geteuid() != 0:                                            # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o500)
        targets.append(tmp_path / "ro")
    for out in targets:
        assert train.main(run_args(shared, out)) == 2
        line = error_line(capsys)
        assert f"out_dir {out} cannot be written" in line and "--out_dir" in line, line


# ----------------------------------------------------------------------------- 9. memory per file

def test_9_a_pose_file_too_large_is_skipped_before_it_is_read(fixtures_dir, tmp_path):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    huge = tmp_path / "huge.pose"
    with open(huge, "wb") as f:
        f.truncate(300 * 2**20)                                      # sparse: takes no disk
    (root / "poses" / f"{rows[1][0]}.pose").unlink()
    (root / "poses" / f"{rows[1][0]}.pose").symlink_to(huge)
    summary = data.prepare(data.DataConfig(data_dir=str(root)), workers=1, progress=False)
    assert summary["ok"] == 2 and summary["reasons"] == {"pose file too large": 1}
    detail = json.loads((root / "cache" / "skipped.jsonl").read_text())["detail"]
    assert f"{rows[1][0]}.pose" in detail and "300 MB" in detail and "max_pose_mb" in detail


def test_9_the_frame_count_comes_from_the_header(fixtures_dir):
    with pytest.raises(poses.PoseError) as e:
        poses.load_pose(fixtures_dir / "holistic_576.pose", poses.PoseConfig(max_pose_mb=0.5))
    assert e.value.kind == "pose file too large" and "97 frames" in str(e.value) and "max_pose_mb" in str(e.value)
    assert len(poses.load_pose(fixtures_dir / "holistic_576.pose", poses.PoseConfig())) == 97


# ----------------------------------------------------------------------------- 10. smaller ones

def test_10_a_duplicate_uid_names_both_lines(fixtures_dir, tmp_path):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    write_csv(root / "iSign_v1.1.csv", rows + [(rows[1][0], "again")])
    summary = data.prepare(data.DataConfig(data_dir=str(root)), workers=1, progress=False)
    assert summary["reasons"] == {"duplicate uid": 1}
    detail = json.loads((root / "cache" / "skipped.jsonl").read_text())["detail"]
    assert "iSign_v1.1.csv line 5" in detail and "line 3" in detail, detail


def test_10_a_link_to_a_fifo_or_a_device_is_not_a_regular_file(fixtures_dir, tmp_path):
    rows = good_rows(3)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    os.mkfifo(tmp_path / "fifo")
    for uid, target in ((rows[0][0], tmp_path / "fifo"), (rows[1][0], "/dev/zero")):
        (root / "poses" / f"{uid}.pose").unlink()
        (root / "poses" / f"{uid}.pose").symlink_to(target)
    summary = data.prepare(data.DataConfig(data_dir=str(root)), workers=1, progress=False)
    assert summary["reasons"] == {"not a regular file": 2}
    details = [json.loads(s)["detail"] for s in (root / "cache" / "skipped.jsonl").read_text().splitlines()]
    assert "fifo" in details[0] and "/dev/zero" in details[1] and not any("no such file" in d for d in details)


def test_10_a_run_stopped_before_any_validation_says_so(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAIN_TEST_SIGTERM", "0:0")
    assert train.main(run_args(shared, tmp_path / "run", max_steps=4, eval_every=4)) == 0
    done = [ln for ln in capsys.readouterr().err.splitlines() if "done: step 1/4" in ln]
    assert done and "no validation yet" in done[0] and "-1.00" not in done[0] and "None" not in done[0], done


def test_10_prepare_says_which_files_the_splits_came_from(fixtures_dir, tmp_path, capsys):
    rows = good_rows(6)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    for split, part in (("train", rows[:4]), ("val", rows[4:5]), ("test", rows[5:])):
        write_csv(root / f"{split}.csv", part)
    data.main(["prepare", str(root), "--workers", "1"])
    err = capsys.readouterr().err
    assert re.search(r"splits from train\.csv, val\.csv, test\.csv.*iSign_v1\.1\.csv.*not read", err), err


# ----------------------------------------------------------------------------- 11, 12. README, first run

def test_11_readme_says_how_to_get_the_cpu_build_and_keeps_its_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "
            "python train.py configs/tiny.py") in readme
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements-test.txt && "
            "python -m pytest -q") in readme
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "CPU-only machines get the CPU" not in readme                 # what pip's default index does not do


def test_12_readme_gives_figures_for_the_command_it_shows():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What the tiny run reaches", 1)[1].split("\n## ", 1)[0]
    first_row = next(ln for ln in section.splitlines() if ln.startswith("| synth/demo.py"))
    assert "`python train.py configs/tiny.py`" in first_row and "seed" not in first_row.split("|")[2]
    assert re.search(r"\d(\.\d)? GB under `?data/synth", section)


def test_12_the_console_ends_with_next_steps_and_holds_no_config_dump(shared, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(run_args(shared, out, test_at_end=True)) == 0
    captured = capsys.readouterr()
    assert "lora_r = 4" not in captured.err and "  lora_r = 4" in (out / "logs" / "rank0.log").read_text()
    assert json.loads((out / "config.json").read_text())["lora_r"] == 4
    tail = "\n".join(captured.err.strip().splitlines()[-4:])
    assert f"python eval.py {out} --pose " in tail and str(out / "predictions-test-ckpt-000002.jsonl") in tail, tail
