"""What a run does when a step runs out of GPU memory (the same exception type, raised on the CPU
by TRAIN_TEST_OOM), and the curves a user looks at: TensorBoard events and `eval.py RUN --plot`."""
import json

import pytest

import config
import train
from train_helpers import assets, metrics, tensors, tiny_args, torchrun


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


def test_out_of_memory_saves_the_last_step_and_says_what_to_change(shared, tmp_path, monkeypatch):
    """OOM in the 9th step (after its first micro-batch's backward): ckpt-000008 is written and
    holds what a run stopped by SIGTERM after 8 steps holds (weights, optimizer, data position);
    the message names the step, the settings, the peak and the change; the advice runs."""
    ref, out = tmp_path / "ref", tmp_path / "oom"
    monkeypatch.setenv("TRAIN_TEST_SIGTERM", "7:0")  # the signal during step 8 -> saved after it
    assert train.main(tiny_args(shared, ref)) == 0
    monkeypatch.delenv("TRAIN_TEST_SIGTERM")
    monkeypatch.setenv("TRAIN_TEST_OOM", "8:0")
    assert train.main(tiny_args(shared, out)) == 1
    monkeypatch.delenv("TRAIN_TEST_OOM")
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000006", "ckpt-000008"]
    want, got = tensors(ref / "ckpt-000008"), tensors(out / "ckpt-000008")
    assert sorted(want) == sorted(got) and all(want[k].equal(got[k]) for k in want)
    state = lambda run: json.loads((run / "ckpt-000008" / "state.json").read_text())
    assert state(out)["sampler"] == state(ref)["sampler"] and state(out)["step"] == 8
    losses = lambda run: [(m["step"], m.get("loss"), m.get("val_loss")) for m in metrics(run)]
    assert losses(out) == losses(ref) and losses(out)[-1][0] == 8

    log = (out / "logs" / "rank0.log").read_text()
    frames = config.load_run_config(out).data.pose.max_frames
    assert log.count("ran out of GPU memory") == 1
    assert (f"step 9 ran out of GPU memory (Tried to allocate 2.00 GiB) with batch_size=4, grad_accum=2, "
            f"max_frames={frames}, gradient_checkpointing=True; peak memory so far ") in log
    assert f"Change first: --batch_size=2 --grad_accum=4 (the same 8 samples per step); then --max_frames={frames // 2}." in log
    assert f"--resume={out / 'ckpt-000008'} --out_dir=A_NEW_DIR" in log
    # the advice: the same run from its checkpoint, in half-size micro-batches, in a new out_dir
    again = tmp_path / "again"
    assert train.main(tiny_args(shared, again, batch_size=2, grad_accum=4, resume=str(out / "ckpt-000008"))) == 0
    assert [m["step"] for m in metrics(again) if "loss" in m] == [9, 10, 11, 12]


def test_out_of_memory_on_one_of_two_processes_ends_the_run_with_its_message(shared, tmp_path):
    """Rank 1 runs out of memory: the other rank waits in a collective it will never finish, so
    rank 1 prints the message and leaves; torchrun stops the job (non-zero) and nothing is saved."""
    res = torchrun(tiny_args(shared, tmp_path / "run", max_steps=6), env={"TRAIN_TEST_OOM": "3:1"})
    assert res.returncode != 0
    assert res.stderr.count("error (rank 1): step 4 ran out of GPU memory") == 1, res.stderr[-3000:]
    assert "the same 16 samples per step" in res.stderr and "No checkpoint was saved" in res.stderr
    assert not list((tmp_path / "run").glob("ckpt-*"))


def test_out_of_memory_message_for_other_settings():
    cfg = config.load_config(["--batch_size=1", "--gradient_checkpointing=False", "--max_frames=300"])
    msg = train.oom_message(cfg, 8, 4, 120, 70.5, RuntimeError("boom"), None)
    assert "step 120 ran out of GPU memory (RuntimeError) with batch_size=1, grad_accum=8" in msg
    assert "peak memory so far 70.50 GB" in msg and "No checkpoint was saved" in msg
    assert "Change first: --gradient_checkpointing=True; then --max_frames=150; else offload_embeddings" in msg
    cfg = config.load_config(["--batch_size=4", "--global_batch=64", "--gradient_checkpointing=True"])
    msg = train.oom_message(cfg, 4, 4, 3, 1.0, RuntimeError(), None)
    assert "Change first: --batch_size=2 (the same 64 samples per step); then --max_frames=" in msg
