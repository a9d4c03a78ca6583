"""Evaluation: metrics, batched decoding, and the one place where a trained model is assembled.

    python eval.py runs/tiny                      # best checkpoint of a run (else the newest)
    python eval.py runs/tiny/ckpt-000600 --split test --num_beams 4 --batch_size 16
    python eval.py runs/tiny --pose clip.pose     # print the English translation of one file

The run's saved config.json says how to rebuild the model: the frozen base checkpoint (4-bit
NF4 by default), LoRA adapters on it, and the pose encoder whose soft tokens replace the pose
placeholder of the chat prompt. A checkpoint holds only the trained tensors; they are loaded on
top. Hypotheses come from `Qwen2.generate` with the KV cache (greedy or beam search).

Metrics (last line of stdout, one JSON object):
- bleu1..bleu4: sacrebleu corpus BLEU with max n-gram order 1..4 (13a tokenizer, exp smoothing);
- rougeL: mean sentence-level ROUGE-L F1 x 100, equal to rouge-score's `rougeL` with its default
  tokenizer (lowercase, non-alphanumerics to spaces, no stemming), computed here by hand;
- chrf: sacrebleu chrF; n: number of sentences; signature: sacrebleu's signatures.

train.py imports this file (assembly, decoding, metrics); this file never imports train.py.
References: QLoRA (Dettmers et al. 2023), SpaMo (Hwang et al. 2024), Sign2GPT (Wong et al. 2024),
sacrebleu (Post 2018), ROUGE (Lin 2004).
"""
import re

from sacrebleu.metrics import BLEU, CHRF


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
