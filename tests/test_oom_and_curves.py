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
    """OOM in the 5th step (after its first micro-batch's backward): ckpt-000004 is written and
    holds what a run stopped by SIGTERM after 4 steps holds (weights, optimizer, data position);
    the message names the step, the settings, the peak and the change; the advice runs."""
    ref, out = tmp_path / "ref", tmp_path / "oom"
    monkeypatch.setenv("TRAIN_TEST_SIGTERM", "3:0")  # the signal during step 4 -> saved after it
    assert train.main(tiny_args(shared, ref)) == 0
    monkeypatch.delenv("TRAIN_TEST_SIGTERM")
    monkeypatch.setenv("TRAIN_TEST_OOM", "4:0")
    assert train.main(tiny_args(shared, out)) == 1
    monkeypatch.delenv("TRAIN_TEST_OOM")
    assert [p.name for p in out.glob("ckpt-*")] == ["ckpt-000004"]
    want, got = tensors(ref / "ckpt-000004"), tensors(out / "ckpt-000004")
    assert sorted(want) == sorted(got) and all(want[k].equal(got[k]) for k in want)
    state = lambda run: json.loads((run / "ckpt-000004" / "state.json").read_text())
    assert state(out)["sampler"] == state(ref)["sampler"] and state(out)["step"] == 4
    losses = lambda run: [(m["step"], m["loss"]) for m in metrics(run)]
    assert losses(out) == losses(ref) and losses(out)[-1][0] == 4

    log = (out / "logs" / "rank0.log").read_text()
    frames = config.load_run_config(out).data.pose.max_frames
    assert log.count("ran out of GPU memory") == 1
    assert (f"step 5 ran out of GPU memory (Tried to allocate 2.00 GiB) with batch_size=4, grad_accum=2, "
            f"max_frames={frames}, gradient_checkpointing=True; peak memory so far ") in log
    assert ("Change first: --batch_size=2 --grad_accum=4 (the same 8 samples per step); "
            f"then --max_frames={frames // 2}, then offload_embeddings=True or a smaller base model.") in log
    assert f"To go on from ckpt-000004: the same command with the new values and --resume={out / 'ckpt-000004'} " in log
    # the advice: the same run from its checkpoint, in half-size micro-batches, in a new out_dir
    again = tmp_path / "again"
    assert train.main(tiny_args(shared, again, batch_size=2, grad_accum=4, resume=str(out / "ckpt-000004"))) == 0
    assert [m["step"] for m in metrics(again) if "loss" in m] == list(range(5, 13))


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
    assert "Change first: --gradient_checkpointing=True; then --max_frames=150, then offload_embeddings" in msg
    cfg = config.load_config(["--batch_size=4", "--global_batch=64", "--gradient_checkpointing=True"])
    msg = train.oom_message(cfg, 4, 4, 3, 1.0, RuntimeError(), None)
    assert "Change first: --batch_size=2 (the same 64 samples per step); then --max_frames=150, then" in msg


def test_tensorboard_events_and_curves_png_from_a_short_run(shared, tmp_path):
    """tensorboard=True: the events under out_dir/tb/ hold metrics.jsonl's numbers, step for step
    (read back with TensorBoard's own reader); eval.py RUN --plot then draws RUN/curves.png."""
    pytest.importorskip("tensorboard", reason="pip install -r requirements-test.txt")
    pytest.importorskip("matplotlib", reason="pip install -r requirements-test.txt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import eval as ev

    out = tmp_path / "run"
    assert train.main(tiny_args(shared, out, max_steps=4, eval_every=2, save_every=2, grad_accum=1,
                                tensorboard=True)) == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    rows = metrics(out)
    for key in ("loss", "lr", "grad_norm", "val_loss", "val_bleu4"):
        want = [(m["step"], m[key]) for m in rows if key in m]
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert len(want) == len(got) == (4 if key in ("loss", "lr", "grad_norm") else 2), key
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # events hold float32

    ev.main([str(out / "ckpt-000002"), "--plot"])  # a checkpoint directory means its run
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (1500, 380)


def test_curves_draw_the_shuffled_pose_bleu_when_logged():
    import curves

    rows = [{"step": 1, "loss": 3.0, "lr": 1e-4}, {"step": 2, "val_loss": 2.5, "val_bleu4": 1.0},
            {"step": 2, "loss": 2.0, "lr": 2e-4},
            {"step": 4, "val_loss": 2.0, "val_bleu4": 3.0, "val_bleu4_shuffled": 0.5}]
    assert curves.series(rows) == {
        "loss": {"loss": ([1, 2], [3.0, 2.0]), "val_loss": ([2, 4], [2.5, 2.0])},
        "learning rate (LoRA)": {"lr": ([1, 2], [1e-4, 2e-4])},
        "validation BLEU-4": {"val_bleu4": ([2, 4], [1.0, 3.0]), "val_bleu4_shuffled": ([4], [0.5])}}


def test_without_tensorboard_or_matplotlib_a_hint(tmp_path, monkeypatch, caplog):
    import sys

    import curves

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert curves.tensorboard_writer(tmp_path, 0) is None
    assert "the tensorboard package is not installed (pip install tensorboard)" in caplog.text
    assert not (tmp_path / "tb").exists()
    curves.record(tmp_path, {"step": 1, "loss": 2.0})
    with pytest.raises(SystemExit, match=r"--plot needs matplotlib \(pip install matplotlib\)"):
        curves.plot(tmp_path)
