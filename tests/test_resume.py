"""Two-process training under `torchrun --standalone --nproc_per_node 2` (gloo): DDP replicas
stay identical; and training that survives (issue 7): exact resume from a copied checkpoint (a
damaged newer one skipped), SIGTERM mid-run (exit 0, a usable checkpoint, then resuming matches
the uninterrupted run), and a NaN loss on one rank skipped by both."""
import re
import shutil

import pytest
import torch

from train_helpers import assets, metrics, tensors, tiny_args, torchrun


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return assets(tmp_path_factory)


@pytest.fixture(scope="module")
def straight(shared, tmp_path_factory):
    """The uninterrupted reference: 12 steps, a checkpoint every 6, validation at 6 and 12."""
    out = tmp_path_factory.mktemp("straight")
    res = torchrun(tiny_args(shared, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def copy_run(src, dst, ckpts):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    for name in ckpts:
        shutil.copytree(src / name, dst / name)


def test_ddp_ranks_end_with_identical_weights(straight):
    digests = [re.search(r"weights digest (\w+)", (straight / "logs" / f"rank{r}.log").read_text()).group(1)
               for r in (0, 1)]
    assert digests[0] == digests[1]  # each rank saw other clips: equal only through DDP's all-reduce


def test_checkpoints_every_save_every_steps(straight):
    assert sorted(p.name for p in straight.glob("ckpt-*")) == ["ckpt-000006", "ckpt-000012"]
    assert not list(straight.glob(".tmp-*"))
    assert (straight / "best").is_symlink()


def test_resume_from_copied_checkpoint_is_exact_and_skips_a_truncated_one(shared, straight, tmp_path):
    out = tmp_path / "resumed"
    copy_run(straight, out, ["ckpt-000006", "ckpt-000012"])
    weights = out / "ckpt-000012" / "trained.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a crash mid-write
    res = torchrun(tiny_args(shared, out, resume="auto"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "logs" / "rank0.log").read_text()
    assert "skipping checkpoint" in log and "truncated" in log and "resumed from" in log and "ckpt-000006" in log
    assert_same(tensors(out / "ckpt-000012"), tensors(straight / "ckpt-000012"))


def test_sigterm_saves_exits_0_and_resume_matches(shared, straight, tmp_path):
    out = tmp_path / "preempted"
    # rank 1 alone receives SIGTERM before step 5 (index 4): both ranks must stop together
    res = torchrun(tiny_args(shared, out), env={"TRAIN_TEST_SIGTERM": "4:1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000005"]
    assert "stopped by a signal at step 5" in (out / "logs" / "rank0.log").read_text()
    res = torchrun(tiny_args(shared, out, resume="auto"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(tensors(out / "ckpt-000012"), tensors(straight / "ckpt-000012"))
    assert [m["step"] for m in metrics(out) if "loss" in m] == list(range(1, 13))  # no duplicated steps


def test_nan_loss_on_one_rank_is_skipped_on_both(shared, tmp_path):
    out = tmp_path / "nan"
    res = torchrun(tiny_args(shared, out, max_steps=4, eval_every=100, save_every=100),
                   env={"TRAIN_TEST_NAN": "1:1"})  # the second step, rank 1 only
    assert res.returncode == 0, res.stderr[-3000:]
    for r in (0, 1):
        assert "step 1: non-finite loss or gradient" in (out / "logs" / f"rank{r}.log").read_text()
    assert [m["skipped"] for m in metrics(out) if "loss" in m] == [0, 1, 1, 1]
    ckpt = tensors(out / "ckpt-000004")
    steps = {float(v) for k, v in ckpt.items() if k.endswith(":step")}
    assert steps == {3.0}  # AdamW took 3 steps out of 4
    assert all(torch.isfinite(v).all() for v in ckpt.values())
