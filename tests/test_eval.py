"""eval.py: metrics against the reference implementations (sacrebleu, rouge-score), and the
command line on a tiny trained run (predictions.jsonl, the JSON line, one-file translation)."""
import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

import eval as ev

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


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        ev.compute_metrics(["a", "b"], ["a"])
