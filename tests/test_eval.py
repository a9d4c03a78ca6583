"""eval.py: metrics against the reference implementations (sacrebleu, rouge-score), and the
command line on a tiny trained run (the predictions file, the JSON line, one-file translation)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

import checkpoints
import config
import corpus
import eval as ev
import translator

ROOT = Path(__file__).resolve().parents[1]

# Strings that trip tokenizers: punctuation, case, apostrophes, digits, non-ASCII, empties,
# repeated words (LCS vs n-gram counting), one-word sentences (no 4-grams).
REFS = [
    "The cat sat on the mat.",
    "Don't stop -- it's 5 o'clock!",
    "naïve café déjà vu",
    "a a a b b",
    "Hello",
    "",
    "What's the weather like in New-York today?",
    "I I I love love you",
]
HYPS = [
    "the cat sat on a mat",
    "dont stop its 5 oclock",
    "naive cafe deja vu",
    "a b a b a",
    "hello",
    "nothing here",
    "",
    "you love I love",
]


def test_rouge_l_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])  # default: no stemmer
    for ref, hyp in zip(REFS, HYPS):
        want = scorer.score(ref, hyp)["rougeL"].fmeasure
        assert ev.rouge_l(ref, hyp) == pytest.approx(want, abs=1e-12), (ref, hyp)
    want_mean = 100 * sum(scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(REFS, HYPS)) / len(REFS)
    assert ev.compute_metrics(HYPS, REFS)["rougeL"] == pytest.approx(want_mean, abs=1e-9)


def test_bleu_chrf_equal_sacrebleu():
    m = ev.compute_metrics(HYPS, REFS)
    for n in range(1, 5):
        assert m[f"bleu{n}"] == BLEU(max_ngram_order=n).corpus_score(HYPS, [REFS]).score
    assert m["chrf"] == CHRF().corpus_score(HYPS, [REFS]).score
    assert m["n"] == len(REFS)
    assert "tok:13a" in m["signature"]["bleu"] and "version:" in m["signature"]["chrf"]
    # The orders really differ on this data, so a mix-up of n would be caught.
    assert len({round(m[f"bleu{n}"], 6) for n in range(1, 5)}) == 4


def test_perfect_output_scores_100():
    refs = ["the quick brown fox jumps", "over the lazy dog today"]
    m = ev.compute_metrics(refs, refs)
    assert m["bleu4"] == pytest.approx(100.0) and m["rougeL"] == pytest.approx(100.0)


def test_derangement_moves_every_clip():
    for n in (2, 3, 10, 97):
        d = ev.derangement(n)
        assert sorted(d) == list(range(n)) and all(d[k] != k for k in range(n))
        assert d == ev.derangement(n)  # fixed: the same clips are swapped every evaluation


def test_word_recall_by_freq_hand_computed():
    train = ["The boy eats an apple.", "The boy and the girl eat.", "A boy runs."] + ["Go home."] * 12 + ["Yes!"] * 50
    refs = ["The boy eats the apple.", "Go home, go!", "Yes, a zebra.", "Is it the girl?"]
    hyps = ["A boy eats a pear.", "go go go", "yes yes zebra", ""]
    # training counts: boy 3 (3-9); eats, apple, and, girl, eat, runs 1 (1-2); go, home 12 (10-49);
    # yes 50 (50+); zebra, it 0. Stop words (the, a, an, is) never count. Per bin, recalled / n:
    # 0: zebra 1 + it 0 of 2; 1-2: eats 1, apple 0, girl 0 of 3; 3-9: boy 1 of 1;
    # 10-49: go min(2, 3) = 2, home 0 of 3; 50+: yes min(1, 2) = 1 of 1
    got = ev.word_recall_by_freq(hyps, refs, ev.training_counts(train))
    assert got == {"0": {"recall": 1 / 2, "n": 2}, "1-2": {"recall": 1 / 3, "n": 3}, "3-9": {"recall": 1.0, "n": 1},
                   "10-49": {"recall": 2 / 3, "n": 3}, "50+": {"recall": 1.0, "n": 1}}
    assert ev.word_recall_by_freq(["x"], ["The."], ev.training_counts(train))["0"] == {"recall": None, "n": 0}
    assert [ev.freq_bin(c) for c in (0, 1, 2, 3, 9, 10, 49, 50, 10**6)] == \
        ["0", "1-2", "1-2", "3-9", "3-9", "10-49", "10-49", "50+", "50+"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        ev.compute_metrics(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run of 4 steps (checkpoints at 2 and 4; best by val BLEU)."""
    import train
    from train_helpers import assets, tiny_args

    out = tmp_path_factory.mktemp("evalrun") / "run"
    assert train.main(tiny_args(assets(tmp_path_factory), out, max_steps=4, grad_accum=1,
                                eval_every=2, save_every=2)) == 0
    return out


def eval_cli(*args):
    res = subprocess.run([sys.executable, str(ROOT / "eval.py"), *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_eval_writes_predictions_and_json_line(run_dir, tmp_path):
    out = tmp_path / "pred.jsonl"
    res = eval_cli(run_dir / "ckpt-000004", "--split", "test", "--batch_size", 3, "--out", out)
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert metrics["n"] == len(rows) > 0 and {"uid", "reference", "hypothesis"} <= rows[0].keys()
    hyps, refs = [r["hypothesis"] for r in rows], [r["reference"] for r in rows]
    assert metrics["bleu4"] == BLEU().corpus_score(hyps, [refs]).score
    assert metrics["chrf"] == CHRF().corpus_score(hyps, [refs]).score
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "chrf", "n", "signature",
                            "bleu4_shuffled", "chrf_shuffled", "word_recall_by_freq"}
    cfg = config.load_run_config(run_dir)
    train_texts = [r.text for r in corpus.read_rows(cfg.data) if r.split == "train"]
    assert metrics["word_recall_by_freq"] == ev.word_recall_by_freq(hyps, refs, ev.training_counts(train_texts))
    shuffled = [r["hypothesis_shuffled"] for r in rows]
    assert metrics["bleu4_shuffled"] == BLEU().corpus_score(shuffled, [refs]).score
    assert metrics["chrf_shuffled"] == CHRF().corpus_score(shuffled, [refs]).score
    # the hypotheses are what the model decodes: greedy in batches of 3 == one at a time in-process,
    # there through StaticDecoder (eval.py --static)
    assert hyps == decode_one_by_one(run_dir / "ckpt-000004", [r["uid"] for r in rows])
    # every clip has the same prompt, so a clip decoded from clip j's poses says what clip j said
    assert shuffled == [hyps[j] for j in ev.derangement(len(rows))]


def decode_one_by_one(ckpt, uids):
    import batches
    from tokenizer import Tokenizer

    cfg = config.load_run_config(ckpt)
    tok = Tokenizer.from_dir(cfg.model_dir)
    model = translator.build_model(cfg, tok, torch.device("cpu"))
    checkpoints.load_trained(model, ckpt)
    ds = batches.SignDataset(cfg.data, "test", tok)
    index = {u: i for i, u in enumerate(ds.uids)}
    return [ev.decode(model, tok, ds, [index[u]], 1, cfg.max_new_tokens, 1, torch.device("cpu"),
                      static=True)[0]["hypothesis"] for u in uids]


def test_run_dir_means_best_checkpoint(run_dir):
    best = (run_dir / "best").resolve()
    assert checkpoints.pick(run_dir) == best
    (run_dir / "best").unlink()  # no best: the newest good checkpoint
    try:
        assert checkpoints.pick(run_dir) == run_dir / "ckpt-000004"
    finally:
        (run_dir / "best").symlink_to(best.name)


def test_translate_real_pose_fixture(run_dir, fixtures_dir):
    res = eval_cli(run_dir, "--pose", fixtures_dir / "holistic_576.pose", "--static")
    assert "checkpoint:" in res.stderr
    assert len(res.stdout.splitlines()) == 1  # exactly one line: the translation (maybe short, the model is tiny)


def test_video_without_the_extra_is_one_line(run_dir, tmp_path):
    if importlib.util.find_spec("mediapipe"):  # tests/test_video.py covers the environment that has it
        pytest.skip("the video extra is installed here")
    res = subprocess.run([sys.executable, str(ROOT / "eval.py"), str(run_dir), "--video", str(tmp_path / "x.mp4")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1] == ("error: video input needs the optional extra: "
                                                   "pip install -r requirements-video.txt")


def test_export_adapter_and_merged_load_in_peft_and_transformers(run_dir, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM
    from tokenizer import Tokenizer

    eval_cli(run_dir, "--export_adapter", tmp_path / "adapter", "--export_merged", tmp_path / "merged")
    ckpt = checkpoints.pick(run_dir)
    cfg = config.load_run_config(ckpt)
    ours = translator.build_model(cfg, Tokenizer.from_dir(cfg.model_dir), torch.device("cpu"))
    checkpoints.load_trained(ours, ckpt)
    ours.eval()
    # PEFT reads the adapter onto the transformers base: the same LoRA tensors as the checkpoint
    peft = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(ROOT / cfg.model_dir), tmp_path / "adapter")
    theirs = {n: p for n, p in peft.named_parameters() if "lora_" in n}
    mine = {n: p for n, p in ours.llm.named_parameters() if "lora_" in n}
    assert len(theirs) == len(mine) > 0
    for name, p in mine.items():
        torch.testing.assert_close(theirs[f"base_model.model.{name}".replace("lora_A.", "lora_A.default.")
                                          .replace("lora_B.", "lora_B.default.")], p, rtol=0, atol=0)
    # the merged bf16 checkpoint: dequantized NF4 + (alpha/r) BA, trained embeddings / lm_head;
    # it reproduces our 4-bit + LoRA model up to bf16 rounding of the weights
    merged = Qwen2ForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ours.llm(ids), rtol=0.05, atol=0.05)
