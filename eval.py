"""Evaluation: metrics, batched decoding, one-file translation and exports of a trained run.

    python eval.py runs/tiny                      # best checkpoint of a run (else the newest)
    python eval.py runs/tiny/ckpt-000600 --split test --num_beams 4 --batch_size 16
    python eval.py runs/tiny --pose clip.pose     # print the English translation of one file
    python eval.py runs/tiny --video clip.mp4     # the same from a video (requirements-video.txt)
    python eval.py runs/tiny --export_adapter DIR # the LoRA adapter in PEFT's format
    python eval.py runs/tiny --export_merged DIR  # base + LoRA merged, a 16-bit HF checkpoint
    python eval.py runs/tiny --plot               # RUN/curves.png from RUN/metrics.jsonl (matplotlib)

The run's saved config.json says how to rebuild the model: the frozen base checkpoint (4-bit
NF4 by default), LoRA adapters on it, and the pose encoder whose soft tokens replace the pose
placeholder of the chat prompt. A checkpoint holds only the trained tensors; they are loaded on
top, after its base fingerprint is checked against model_dir. Hypotheses come from
`Qwen2.generate` with the KV cache (greedy or beam search). Predictions go to
RUN/predictions-SPLIT-CKPT.jsonl, written only once complete; exports never overwrite files.

Metrics (last line of stdout, one JSON object):
- bleu1..bleu4: sacrebleu corpus BLEU with max n-gram order 1..4 (13a tokenizer, exp smoothing);
- rougeL: mean sentence-level ROUGE-L F1 x 100, equal to rouge-score's `rougeL` with its default
  tokenizer (lowercase, non-alphanumerics to spaces, no stemming), computed here by hand;
- chrf: sacrebleu chrF; n: number of sentences; signature: sacrebleu's signatures;
- bleu4_shuffled, chrf_shuffled: the same decoding with each clip's poses replaced by another
  clip's of the split (a fixed derangement). How much of the score comes from the signs, and how
  much from the language prior: a model that ignores its input scores the same on both.
- word_recall_by_freq: recall of the references' words binned by their count in the training
  texts (0, 1-2, 3-9, 10-49, 50+), each bin {"recall", "n"}: where in the long tail the model
  fails (word_recall_by_freq below; docs/evaluation.md).

The model is assembled by translator.build_model from the run's saved config (config.py);
train.py imports this file (decoding, metrics); this file never imports train.py.
References: QLoRA (Dettmers et al. 2023), SpaMo (Hwang et al. 2024), Sign2GPT (Wong et al. 2024),
sacrebleu (Post 2018), ROUGE (Lin 2004).
"""
import argparse
import dataclasses
import json
import os
import re
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF
from tqdm import tqdm

import checkpoints
import config
import corpus
import curves
import batches
import data
import loader
import lora
import poses
import words
from config import ConfigError
from tokenizer import Tokenizer
from translator import SignTranslator, autocast, build_model, collate_fn, to_device


# ----------------------------------------------------------------------------- metrics

_NON_ALNUM = re.compile(r"[^a-z0-9]+")  # rouge_score.tokenize: lowercase, then this -> " "


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming: 'Don't!' -> ['don', 't']."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by dynamic programming, one row at a time (O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, hypothesis: str) -> float:
    """Sentence ROUGE-L F1 in [0, 1]; 0 when either side has no tokens (as rouge-score does)."""
    ref, hyp = rouge_tokens(reference), rouge_tokens(hypothesis)
    if not ref or not hyp:
        return 0.0
    lcs = lcs_length(ref, hyp)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def compute_metrics(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus metrics of one system output against one reference per sentence."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    out = {}
    for n in range(1, 5):
        bleu = BLEU(max_ngram_order=n)
        out[f"bleu{n}"] = bleu.corpus_score(hypotheses, [references]).score
    chrf = CHRF()
    out["rougeL"] = 100 * sum(map(rouge_l, references, hypotheses)) / max(len(references), 1)
    out["chrf"] = chrf.corpus_score(hypotheses, [references]).score
    out["n"] = len(references)
    # BLEU's signature does not name the n-gram order: the key bleuN says it.
    out["signature"] = {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}
    return out


FREQ_BINS = {"0": 0, "1-2": 1, "3-9": 3, "10-49": 10, "50+": 50}   # bin: the lowest training count in it


def freq_bin(count: int) -> str:
    """The bin of word_recall_by_freq a training count falls in: 0, 1-2, 3-9, 10-49 or 50+."""
    return [b for b, low in FREQ_BINS.items() if count >= low][-1]


def word_recall_by_freq(hypotheses: list[str], references: list[str], train_counts: Counter) -> dict:
    """Recall of the references' words, binned by how often each word occurs in the training texts.

    Words are words.word_tokens': lowercased [a-z0-9']+ runs, stop words left out (the articles,
    copulas and auxiliaries that sign languages mostly do not sign; 'not' counts), repeats kept.
    In each sentence a reference word is recalled as many times as it occurs in both the
    reference and the hypothesis (clipped unigram matches, as BLEU-1 counts them), wherever it
    stands. A word's bin is its count in the training texts (`train_counts`, e.g.
    training_counts(texts)). Returns {bin: {"recall": recalled / n (None when n is 0), "n": n}},
    n the reference words in that bin."""
    recalled, total = Counter(), Counter()
    for hyp, ref in zip(hypotheses, references, strict=True):
        have = Counter(words.word_tokens(hyp))
        for word, n in Counter(words.word_tokens(ref)).items():
            b = freq_bin(train_counts[word])
            total[b] += n
            recalled[b] += min(n, have[word])
    return {b: {"recall": recalled[b] / total[b] if total[b] else None, "n": total[b]} for b in FREQ_BINS}


def training_counts(texts: list[str]) -> Counter:
    """How often each word (words.word_tokens) occurs in the training texts."""
    return Counter(w for t in texts for w in words.word_tokens(t))


def run_training_counts(dcfg: data.DataConfig, trained_on: str) -> Counter | None:
    """training_counts of the run's training split: from the corpus it was trained on, else (moved)
    from the one evaluated; None, with a note, when neither can be read."""
    for where in dict.fromkeys([trained_on, dcfg.data_dir]):
        try:
            return training_counts(corpus.split_texts(dataclasses.replace(dcfg, data_dir=where), "train"))
        except (OSError, corpus.DataError):
            continue
    print(f"note: no training texts at {trained_on}: word_recall_by_freq left out", file=sys.stderr)
    return None


def recall_line(recall: dict) -> str:
    """'0: 0.12 (n 40), 1-2: ...' for a log line."""
    shown = {b: "-" if r["recall"] is None else f"{r['recall']:.2f}" for b, r in recall.items()}
    return ", ".join(f"{b}: {shown[b]} (n {r['n']})" for b, r in recall.items())


# ----------------------------------------------------------------------------- decoding

@torch.no_grad()
def decode(model: SignTranslator, tok: Tokenizer, dataset: batches.SignDataset, indices: list[int], batch_size: int,
           max_new_tokens: int, num_beams: int, device: torch.device, progress: bool = False,
           static: bool = False, poses_from: list[int] | None = None) -> list[dict]:
    """Translate dataset[i] for i in indices, batching clips of similar length (less padding);
    returns {uid, reference, hypothesis} rows in the order of `indices`. With poses_from, clip
    indices[k] is decoded from the poses of clip poses_from[k] instead of its own."""
    model.eval()
    source = dict(zip(indices, poses_from or indices))   # clip -> the clip whose poses it gets
    order = sorted(indices, key=lambda i: int(dataset.lengths[source[i]]))
    collate = collate_fn(model, tok, for_generation=True)
    rows = {}
    for k in tqdm(range(0, len(order), batch_size), desc="decode", disable=not progress, file=sys.stderr):
        chunk = order[k:k + batch_size]
        items = [dataset[i] if source[i] == i else {**dataset[i], "poses": dataset[source[i]]["poses"]} for i in chunk]
        batch = to_device(collate(items), device)
        with autocast(device):
            hyps = model.translate(batch, tok, max_new_tokens, num_beams, static)
        for i, uid, ref, hyp in zip(chunk, batch["uids"], batch["texts"], hyps):
            rows[i] = {"uid": uid, "reference": ref, "hypothesis": hyp}
    return [rows[i] for i in indices]


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation of range(n) that moves every element (n >= 2): one random cycle."""
    order = np.random.default_rng(seed).permutation(n)
    out = [0] * n
    for a, b in zip(order, np.roll(order, -1)):
        out[a] = int(b)
    return out


def shuffled_sources(indices: list[int]) -> list[int]:
    """The shuffled-pose decoding's sources: the clip whose poses each clip of `indices` gets, a
    fixed derangement of them; [] with fewer than two clips (nothing to shuffle)."""
    return [indices[k] for k in derangement(len(indices))] if len(indices) > 1 else []


def score(rows: list[dict], shuffled_rows: list[dict], train_counts: Counter | None = None) -> dict:
    """The metrics of decoded rows; with train_counts (training_counts) word_recall_by_freq; with
    shuffled_rows (the same clips decoded from shuffled_sources' poses, [] if not run)
    bleu4_shuffled and chrf_shuffled; each row gets its hypothesis_shuffled, as the predictions
    files hold it."""
    hypotheses, references = [r["hypothesis"] for r in rows], [r["reference"] for r in rows]
    metrics = compute_metrics(hypotheses, references)
    if train_counts is not None:
        metrics["word_recall_by_freq"] = word_recall_by_freq(hypotheses, references, train_counts)
    if not shuffled_rows:
        return metrics
    for r, s in zip(rows, shuffled_rows):
        r["hypothesis_shuffled"] = s["hypothesis"]
    return with_shuffled(metrics, shuffled_rows)


def with_shuffled(metrics: dict, shuffled_rows: list[dict]) -> dict:
    """Add bleu4_shuffled and chrf_shuffled: the same decoding with every clip's poses replaced by
    another clip's of the same set (derangement). A model that reads the signs loses most of its
    score; one that writes the corpus's likeliest sentences whatever it sees loses nothing."""
    m = compute_metrics([r["hypothesis"] for r in shuffled_rows], [r["reference"] for r in shuffled_rows])
    return {**metrics, "bleu4_shuffled": m["bleu4"], "chrf_shuffled": m["chrf"]}


def predictions_path(run_dir: Path, split: str, ckpt: Path, num_beams: int) -> Path:
    """RUN/predictions-SPLIT-CKPT[-beamsN].jsonl: an evaluation of another split, checkpoint or
    beam width never replaces this one's file."""
    return Path(run_dir) / f"predictions-{split}-{ckpt.name}{f'-beams{num_beams}' if num_beams > 1 else ''}.jsonl"


def write_predictions(rows: list[dict], path: Path) -> None:
    """Written whole or not at all: a run that fails leaves an earlier file as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def next_steps(run_dir: Path, predictions: Path, clip: Path) -> str:
    """What to do with a finished run, as a newcomer needs it (train.py ends with it): where the
    test translations are, or how to make them, and how to translate one clip."""
    return "\n".join([
        "next steps:",
        f"  the test split's translations, one JSON line per clip: {predictions}" if predictions.is_file() else
        f"  translate the test split (metrics and a predictions file): python eval.py {run_dir} --split test",
        f"  translate one clip: python eval.py {run_dir} --pose {clip if clip.is_file() else 'CLIP.pose'}",
        "  more: docs/evaluation.md; to train longer, the same command with --resume=auto and a larger --max_steps"])


def translate_file(model: SignTranslator, tok: Tokenizer, dcfg: data.DataConfig, pose_path: str,
                   max_new_tokens: int, num_beams: int, device: torch.device, static: bool = False) -> str:
    """One .pose file -> its English translation."""
    try:
        feats = poses.load_pose(pose_path, dcfg.pose)
    except poses.PoseError as e:
        if e.kind != "layout lacks points":
            raise
        raise poses.PoseError(e.kind, f"{e}. This run's model was trained on layout={dcfg.pose.layout!r} "
                                      "and reads only that layout's points") from None
    item = {"uid": Path(pose_path).stem, "poses": torch.from_numpy(feats), "text": "",
            "prompt_ids": batches.build_prompt(tok, dcfg), "answer_ids": []}
    batch = to_device(collate_fn(model, tok, for_generation=True)([item]), device)
    model.eval()
    with autocast(device):
        return model.translate(batch, tok, max_new_tokens, num_beams, static)[0]


def pose_of_video(video_path: str, save_pose: str | None) -> str:
    """MediaPipe Holistic poses of a video (video.py, the optional extra), written to save_pose
    or a temporary .pose file; returns that file's path."""
    import tempfile

    import video
    try:
        pose = video.estimate_pose(video_path)
    except video.VideoExtraMissing as e:
        raise ConfigError(str(e)) from None
    path = save_pose or str(Path(tempfile.mkdtemp()) / f"{Path(video_path).stem}.pose")
    video.write_pose(pose, path)
    return path


def at_least_1(text: str) -> int:
    """argparse type: an int >= 1 (0 beams or 0 new tokens is no decoding at all)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (its best checkpoint, else the newest) or a ckpt-NNNNNN directory")
    parser.add_argument("--split", default="test", choices=corpus.SPLITS)
    parser.add_argument("--data_dir", help="corpus to evaluate on (default: the run's)")
    parser.add_argument("--model_dir", help="the run's base model, if it moved (default: the run's)")
    parser.add_argument("--num_beams", type=at_least_1, default=1, help="1: greedy")
    parser.add_argument("--static", action="store_true",
                        help="greedy steps replayed from one CUDA graph per batch (model.StaticDecoder); same tokens")
    parser.add_argument("--batch_size", type=at_least_1, default=16)
    parser.add_argument("--max_new_tokens", type=at_least_1, help="default: the run's")
    parser.add_argument("--out", help="predictions file (default: RUN/predictions-SPLIT-CKPT.jsonl)")
    parser.add_argument("--no_shuffled", action="store_true",
                        help="skip the second decoding with shuffled poses (bleu4_shuffled, chrf_shuffled)")
    parser.add_argument("--pose", help="translate this one .pose file and print the English")
    parser.add_argument("--video", help="translate this video: its poses by MediaPipe Holistic (video.py, "
                                        "pip install -r requirements-video.txt), then as --pose")
    parser.add_argument("--save_pose", metavar="OUT.pose", help="with --video: also write the estimated poses there")
    parser.add_argument("--export_adapter", metavar="DIR", help="write the LoRA adapter in PEFT's format and exit")
    parser.add_argument("--export_merged", metavar="DIR",
                        help="write base + LoRA merged as a 16-bit Hugging Face checkpoint and exit")
    parser.add_argument("--plot", action="store_true", help="draw RUN/metrics.jsonl into RUN/curves.png and exit")
    args = parser.parse_args(argv)
    if args.video and args.pose:
        parser.error("give --pose or --video, not both")
    if args.save_pose and not args.video:
        parser.error("--save_pose needs --video")
    return args


def check_outputs(args: argparse.Namespace, out: Path) -> None:
    """What eval would write, checked before the model is loaded: nothing is overwritten and the
    predictions' folder exists."""
    if args.export_adapter:
        lora.refuse_overwrite(args.export_adapter, lora.ADAPTER_FILES)
    if args.export_merged:
        lora.refuse_overwrite(args.export_merged, lora.MERGED_FILES)
    for flag, target in (("--export_adapter", args.export_adapter), ("--export_merged", args.export_merged)):
        run = checkpoints.run_dir_of(Path(target)) if target else None
        if run:  # its config.json would replace the run's, and keep_last would prune it with a checkpoint
            raise ConfigError(f"{flag} {target} is inside the run directory {run}: export outside it "
                              f"(e.g. {run}-export); nothing was written")
    if args.pose and not Path(args.pose).is_file():
        raise FileNotFoundError(f"--pose {args.pose}: no such file")
    writes_predictions = not (args.export_adapter or args.export_merged or args.pose or args.video)
    if writes_predictions and not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {out.parent} (no such folder, or not writable)")


def check_base(ckpt: Path, cfg: config.TrainConfig) -> Path:
    """The run's base model folder (model_dir, or a Hub repo id's cached snapshot), checked to hold a
    checkpoint and to be the one `ckpt` was trained on."""
    base_dir = loader.model_path(cfg.model_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"model_dir {cfg.model_dir} (the run's base model) holds no config.json; "
                                "pass --model_dir=DIR where it is now")
    mismatch = checkpoints.base_mismatch(ckpt, checkpoints.base_identity(cfg.model_dir, base_dir))
    if mismatch:
        raise ConfigError(mismatch)
    return base_dir


def load_run_model(ckpt: Path, cfg: config.TrainConfig,
                   base_dir: Path) -> tuple[Tokenizer, SignTranslator, torch.device]:
    """The run's model (translator.build_model) with the checkpoint's trained tensors (eval.py,
    data.py show --run); base_dir from check_base."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_dir(base_dir)
    with redirect_stdout(sys.stderr):  # stdout carries the results only
        model = build_model(cfg, tok, device)
    checkpoints.load_trained(model, ckpt)
    print(f"checkpoint: {ckpt}", file=sys.stderr)
    return tok, model, device


def evaluate(args: argparse.Namespace) -> None:
    if args.plot:  # a checkpoint directory means its run
        run = Path(args.run)
        print(curves.plot(run if (run / "metrics.jsonl").exists() else run.resolve().parent))
        return
    ckpt = checkpoints.pick(Path(args.run))
    cfg = config.load_run_config(ckpt)
    trained_on = cfg.data.data_dir
    cfg.data.data_dir = args.data_dir or cfg.data.data_dir
    cfg.model_dir = args.model_dir or cfg.model_dir
    out = Path(args.out) if args.out else predictions_path(ckpt.resolve().parent, args.split, ckpt, args.num_beams)
    check_outputs(args, out)
    base_dir = check_base(ckpt, cfg)
    max_new = cfg.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    dcfg = cfg.data
    if args.video:  # before the model: a video that fails costs no model load
        args.pose = pose_of_video(args.video, args.save_pose)
    tok, model, device = load_run_model(ckpt, cfg, base_dir)
    if args.export_adapter or args.export_merged:  # the LLM side only: the pose encoder stays in ckpt
        if args.export_adapter:
            print(lora.save_peft_adapter(model.llm, args.export_adapter, base_model_name_or_path=cfg.model_dir))
        if args.export_merged:
            print(lora.export_merged(model.llm, args.export_merged, dtype=torch.bfloat16))
        return
    if args.pose:
        print(translate_file(model, tok, dcfg, args.pose, max_new, args.num_beams, device, args.static))
        return
    data.ensure_cache(dcfg)
    dataset = batches.SignDataset(dcfg, args.split, tok)
    if not len(dataset):
        raise ConfigError(f"the {args.split} split of {data.cache_dir(dcfg)} has no clips; choose another --split")
    every = list(range(len(dataset)))
    run = lambda poses_from=None: decode(model, tok, dataset, every, args.batch_size, max_new,  # noqa: E731
                                         args.num_beams, device, progress=True, static=args.static,
                                         poses_from=poses_from)
    rows = run()
    sources = [] if args.no_shuffled else shuffled_sources(every)
    metrics = score(rows, run(sources) if sources else [], run_training_counts(dcfg, trained_on))
    write_predictions(rows, out)
    print(f"{len(rows)} predictions in {out}", file=sys.stderr)
    print(json.dumps(metrics))


def main(argv: list[str] | None = None) -> int:
    """A bad input (no checkpoint, a missing or unreadable file, a folder that holds files) is one
    line `error: ...` on stderr and exit code 2, as train.py does; bugs keep their traceback."""
    args = parse_args(argv)
    try:
        evaluate(args)
    except (ValueError, OSError) as e:  # ConfigError, DataError, PoseError; FileNotFoundError, FileExistsError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
