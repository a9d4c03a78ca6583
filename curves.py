"""A run's numbers over steps: OUT_DIR/metrics.jsonl, its TensorBoard mirror, and the picture.

    record       one JSON row per log_every steps and per validation (train.py, rank 0): the
                 source of every curve; with tensorboard=True the same numbers as TensorBoard
                 scalars in OUT_DIR/tb/ (`tensorboard --logdir OUT_DIR/tb`)
    trim         after a resume, forget the rows the interrupted run wrote past its checkpoint
    plot         metrics.jsonl -> OUT_DIR/curves.png (`python eval.py OUT_DIR --plot`)

TensorBoard and matplotlib are optional: without them a hint says what to install, and the run
goes on (metrics.jsonl has every value).
"""
import json
import logging
from pathlib import Path

log = logging.getLogger("train")

# (panel title, metrics.jsonl keys drawn in it). val_bleu4_shuffled: each validation clip decoded
# from another clip's poses; a model that ignores the poses scores as well there as on its own.
PANELS = (("loss", ("loss", "val_loss", "word_loss")), ("learning rate (LoRA)", ("lr",)),
          ("validation BLEU-4", ("val_bleu4", "val_bleu4_shuffled")))


def tensorboard_writer(out_dir: Path, step: int):
    """A torch.utils.tensorboard SummaryWriter on out_dir/tb, or None (with a one-line hint) when
    the tensorboard package is missing. On resume (step > 0) purge_step hides what the interrupted
    run logged past its checkpoint, as trim does for metrics.jsonl."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard=True, but the tensorboard package is not installed (pip install tensorboard): "
                    "no events are written; metrics.jsonl has every value")
        return None
    return SummaryWriter(str(out_dir / "tb"), purge_step=step + 1 if step else None)


def record(out_dir: Path, row: dict, tb=None) -> None:
    """Append one row ({"step": N, ...}) to metrics.jsonl, and its numbers to the writer `tb`."""
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if tb is not None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(key, value, row["step"])


def trim(out_dir: Path, step: int) -> None:
    """After a resume, forget what the interrupted run logged past its checkpoint."""
    path = out_dir / "metrics.jsonl"
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def series(rows: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """metrics.jsonl rows -> {panel title: {key: (steps, values)}}, only the keys present."""
    out = {}
    for title, keys in PANELS:
        drawn = {k: ([r["step"] for r in rows if r.get(k) is not None], [r[k] for r in rows if r.get(k) is not None])
                 for k in keys}
        out[title] = {k: v for k, v in drawn.items() if v[0]}
    return out


def plot(run_dir: Path) -> Path:
    """RUN/metrics.jsonl -> RUN/curves.png: loss (training and validation), learning rate and
    validation BLEU-4 (with shuffled poses too, when logged) over steps."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: --plot draws a training run's metrics")
    try:
        import matplotlib
        matplotlib.use("Agg")  # to a file, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(f"--plot needs matplotlib (pip install matplotlib); the numbers are in {metrics}") from None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (title, drawn) in zip(axes, series(rows).items()):
        for key, (steps, values) in drawn.items():
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        ax.set(title=title, xlabel="step")
        if drawn:
            ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    return run_dir / "curves.png"
