"""A pretrained stand-in for Qwen on the CPU: a small Qwen2 trained as a language model on a corpus's texts.

Why: the real configs (configs/qwen*.py) fine-tune a frozen LLM that already writes English, and the
question "does that recipe read the signs?" cannot be asked of a random base (configs/tiny.py's
knows no language, so its recipe trains the embeddings at high rates and proves nothing about a
frozen one). This base is first trained on the training split's sentences (next-token prediction,
every weight trained), so that it writes the corpus's language before it has seen a pose, as Qwen
writes English: a model that then learns nothing from the poses still writes fluent sentences and
scores the same with shuffled poses, which is the failure this analogue exists to expose.

What it is, and is not: a Hugging Face Qwen2 checkpoint (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json: what loader.load_model and tokenizer.Tokenizer.from_dir
read) with a byte-level BPE trained on the same texts (tokenizer.train_bpe). It was trained on plain
text, sentences separated by <|endoftext|> and packed into blocks (as base LLMs are pretrained),
plus the default prompt's sentences; it has never seen ChatML or the pose placeholder, and its few
layers know only the corpus's grammar: a pessimistic stand-in for an instruct model. Only the training split's
texts are used, so validation and test sentences stay unseen (their loss is reported).

    python -m synth.base OUT_DIR --data_dir data/synth [--data_dir MORE ...] [--texts FILE]
        [--hidden_size 128 --intermediate_size 384 --layers 2 --heads 4 --kv_heads 2]
        [--vocab_size 1024] [--tie] [--steps 600] [--seed 0]
    python train.py configs/qwen7b_instruct.py --model_dir=OUT_DIR --data_dir=data/synth ...

The last line printed is JSON: the sizes, the steps, the training loss at the end and the held-out
loss (validation split's texts) before and after. Tests: tests/test_recipe.py; what the real
recipe reaches on such bases: BENCHMARKS.md, "The real recipe on a pretrained analogue".
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import corpus
import loader
import tokenizer
from data import DataConfig
from model import Qwen2, Qwen2Config


def corpus_texts(data_dirs: list[str], split: str) -> list[str]:
    """The texts of one split of each corpus (their own split files, or the fixed 80/10/10 split by
    video that training makes: data.DataConfig's defaults)."""
    return [t for d in data_dirs for t in corpus.split_texts(DataConfig(data_dir=d), split)]


def documents(tok: tokenizer.Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's tokens followed by <|endoftext|> (the document separator of Qwen's pretraining)."""
    return [ids + [tok.endoftext_id] for ids in tok.encode_batch(texts)]


def blocks(docs: list[list[int]], block: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n blocks of block + 1 tokens (input and shifted target), each packed from documents drawn at
    random: (n, block + 1). Drawn afresh every step, so that which sentence follows which carries
    nothing to memorise (a fixed stream of a small corpus is learned by heart, order included)."""
    out = []
    for _ in range(n):
        ids = []
        while len(ids) < block + 1:
            ids += docs[int(torch.randint(len(docs), (), generator=gen))]
        out.append(ids[:block + 1])
    return torch.tensor(out, dtype=torch.long)


@torch.no_grad()
def stream_loss(model: Qwen2, docs: list[list[int]], block: int) -> float:
    """Mean next-token cross-entropy over the documents packed in order into blocks (every token once)."""
    stream = torch.tensor([i for d in docs for i in d], dtype=torch.long)
    n = (len(stream) - 1) // block
    if n == 0:
        return float("nan")
    x = stream[:n * block + 1]
    inputs, targets = x[:-1].view(n, block), x[1:].view(n, block)
    total = 0.0
    for k in range(0, n, 64):
        logits = model(input_ids=inputs[k:k + 64])  # (b, block, V)
        total += F.cross_entropy(logits.flatten(0, 1), targets[k:k + 64].flatten(), reduction="sum").item()
    return total / (n * block)


def pretrain(model: Qwen2, docs: list[list[int]], steps: int, batch: int, block: int, lr: float, seed: int) -> float:
    """Next-token prediction on blocks of documents drawn at random, every weight trained: AdamW (weight decay
    0.1 on matrices, as GPT-style pretraining), linear warmup over 5% of the steps, cosine to lr / 10.
    Returns the mean training loss of the last 50 steps."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup, last = max(1, steps // 20), []
    model.train()
    for step in range(steps):
        progress = max(0.0, (step - warmup) / max(1, steps - warmup))
        factor = (step + 1) / warmup if step < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr * factor
        x = blocks(docs, block, batch, gen)  # (batch, block + 1)
        logits = model(input_ids=x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        last = (last + [loss.item()])[-50:]
    return float(np.mean(last))


def make_base(out_dir, data_dirs: list[str], texts: list[str] = (), hidden_size: int = 128,
              intermediate_size: int = 384, layers: int = 2, heads: int = 4, kv_heads: int = 2,
              vocab_size: int = 1024, tie: bool = False, steps: int = 600, batch: int = 32, block: int = 64,
              lr: float = 3e-3, seed: int = 0) -> dict:
    """Train the tokenizer and the model on the training texts of data_dirs (+ texts) and write the
    checkpoint to out_dir; returns a summary (sizes, losses, seconds)."""
    t0 = time.time()
    train_texts = corpus_texts(data_dirs, "train") + list(texts)
    held_out = corpus_texts(data_dirs, "val")
    if not train_texts:
        raise ValueError(f"no training texts in {data_dirs}")
    out_dir = Path(out_dir)
    # The default chat prompt's words are English a real LLM knows: they get merges as often as the
    # corpus's words (as preflight.create_random_model's), and are documents too.
    d = DataConfig()
    prompt = [d.system_prompt, d.user_prompt.format(pose="", language=d.source_language), "system user assistant"]
    tok = tokenizer.train_bpe(train_texts + prompt * len(train_texts), vocab_size, out_dir)
    train_texts += prompt
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=1024, tie_word_embeddings=tie, eos_token_id=tok.im_end_id)
    model = loader.random_model(cfg)
    docs, val = documents(tok, train_texts), documents(tok, held_out)
    before = stream_loss(model, val, block)
    train_loss = pretrain(model, docs, steps, batch, block, lr, seed)
    model.eval()
    after = stream_loss(model, val, block)
    loader.save_model(model, out_dir)
    return {"out_dir": str(out_dir), "hidden_size": hidden_size, "layers": layers, "vocab": tok.vocab_size,
            "tied": tie, "train_texts": len(train_texts), "train_tokens": sum(map(len, docs)), "steps": steps,
            "train_loss": round(train_loss, 4), "held_out_loss_before": round(before, 4),
            "held_out_loss": round(after, 4), "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Pretrain a small Qwen2 (+ BPE tokenizer) as a language model on "
                                            "the training texts of sign corpora: a CPU stand-in for Qwen.")
    p.add_argument("out_dir")
    p.add_argument("--data_dir", action="append", required=True, help="a corpus (repeat for several)")
    p.add_argument("--texts", help="a file of more training text, one sentence a line")
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--intermediate_size", type=int, default=384)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--tie", action="store_true", help="tie lm_head to the input embeddings (as Qwen 0.5B-3B)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32, help="blocks per step")
    p.add_argument("--block", type=int, default=64, help="tokens per block")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    extra = Path(a.texts).read_text().splitlines() if a.texts else []
    print(json.dumps(make_base(a.out_dir, a.data_dir, [t for t in extra if t.strip()], a.hidden_size,
                               a.intermediate_size, a.layers, a.heads, a.kv_heads, a.vocab_size, a.tie, a.steps,
                               a.batch, a.block, a.lr, a.seed)))


if __name__ == "__main__":
    main()
