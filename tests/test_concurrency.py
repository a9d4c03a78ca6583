"""Issue 26, cases 1 and 2: two processes on one cache or one run directory, as a sweep or a
requeued job starts them. Real processes: `python data.py prepare` twice on one corpus (one
builder at a time, the other waits and says so; the rows counted against the corpus at the end),
and `python train.py` twice on one out_dir (the second is refused, naming the first; a lock left
by a killed run does not stop the next one)."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoints
import data
import train
from test_data import good_rows, make_corpus
from train_helpers import ROOT, assets, metrics, tiny_args


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


def wait_for(predicate, what: str, timeout: float = 120.0, procs=()) -> None:
    t0 = time.time()
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"a process ended (exit code {p.returncode}) before {what}"
        assert time.time() - t0 < timeout, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def test_1_two_prepare_processes_build_the_cache_once(fixtures_dir, tmp_path):
    """A builder is at work (this test holds the cache's lock); two `data.py prepare` processes
    start on the same corpus: both wait and say so, then one builds, the other finds the cache
    done, and the cache holds every row once."""
    rows = good_rows(12)
    root = make_corpus(tmp_path / "c", fixtures_dir, rows)
    (root / "cache").mkdir()
    holder = open(root / "cache" / ".lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX)
    holder.write(f"pid {os.getpid()} on this host since now\n")
    holder.flush()
    logs = [tmp_path / f"prepare{k}.err" for k in range(2)]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "data.py"), "prepare", str(root), "--workers", "1"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True) for log in logs]
    try:
        for log in logs:
            wait_for(lambda log=log: "waiting" in log.read_text(), f"waiting line in {log.name}", procs=procs)
        line = next(ln for ln in logs[0].read_text().splitlines() if "waiting" in ln)
        assert str(root / "cache") in line and str(os.getpid()) in line    # the folder, and who holds it
        assert not (root / "cache" / "DONE").exists()
    finally:
        holder.close()                                                   # the first builder is done
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log.read_text() for log in logs]
    for out in outs:
        assert json.loads(out.splitlines()[-1])["ok"] == 12
    index = json.loads((root / "cache" / "index.json").read_text())
    assert sorted(index["uid"]) == sorted(u for u, _ in rows)             # every row once
    frames = np.load(root / "cache" / "features.npy", mmap_mode="r")
    assert len(frames) == sum(index["length"]) == 4 * (97 + 60 + 31)
    assert not (root / "cache" / "shards").exists()


def test_1_a_cache_whose_rows_do_not_match_the_corpus_is_not_marked_done(fixtures_dir, tmp_path, monkeypatch):
    """What two unlocked builders did: each row committed twice. The count at the end catches it."""
    root = make_corpus(tmp_path / "c", fixtures_dir, good_rows(6))
    real = data._commit_shard

    def twice(shards, results):
        real(shards, list(results))
        real(shards, results)
    monkeypatch.setattr(data, "_commit_shard", twice)
    cfg = data.DataConfig(data_dir=str(root))
    with pytest.raises(data.DataError, match=r"12 rows for a corpus of 6.*--force"):
        data.prepare(cfg, workers=1, progress=False)
    assert not data.is_fresh(cfg) and not (root / "cache" / "DONE").exists()
    monkeypatch.undo()
    assert data.prepare(cfg, workers=1, progress=False, force=True)["ok"] == 6
    # the lock's folder is made only for a corpus that is there: a mistyped data_dir stays absent
    with pytest.raises(FileNotFoundError, match="no iSign_v1.1.csv"):
        data.prepare(data.DataConfig(data_dir=str(tmp_path / "typo")), workers=1, progress=False)
    assert not (tmp_path / "typo").exists()


def test_2_a_second_training_into_a_busy_out_dir_is_refused(shared, tmp_path):
    """A requeued job (--resume=auto, the same arguments) starts while the first still trains."""
    out = tmp_path / "run"
    args = tiny_args(shared, out, max_steps=5000, grad_accum=1, eval_every=5000, save_every=5000, resume="auto")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.err", "w"))
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file(), "first training step", procs=[first])
        second = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None                                      # the first run was still training
    finally:
        first.send_signal(signal.SIGTERM)                                # it saves and leaves with code 0
        first.wait(timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(out) in line and f"pid {first.pid}" in line and "--out_dir" in line
    assert first.returncode == 0, (tmp_path / "first.err").read_text()[-2000:]
    steps = [m["step"] for m in metrics(out) if "loss" in m]
    assert steps == list(range(1, len(steps) + 1))                       # one trajectory, each row once
    log = (out / "logs" / "rank0.log").read_text()
    assert log.count("trained parameters") == 1                          # the second never got as far


def test_2_a_lock_left_by_a_killed_run_does_not_stop_the_next(shared, tmp_path):
    """kill -9 leaves OUT_DIR/.lock naming a process that is gone: the OS released its lock."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on some-host since 2026-01-01 00:00:00\n")
    assert train.main(tiny_args(shared, out, max_steps=2, grad_accum=1, eval_every=2, save_every=2,
                                resume="auto")) == 0
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2]
    assert not checkpoints._owned                                      # released when the run ended
