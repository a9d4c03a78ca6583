"""Synthetic sign corpora in the iSign layout, and a pretrained stand-in for Qwen: tooling for the
CPU demo, the tests and the benchmarks, never needed by a run on real data.

    demo.py, demo_grammar.py     the demo's corpus (configs/tiny.py): made-up signs, ISL-like grammar
    kinds.py, kinds_grammar.py   corpora whose signs differ in kind: by path, by hand shape, or a mix
    base.py                      a small Qwen2 pretrained as a language model on a corpus's texts: the
                                 CPU analogue of the frozen LLM the real configs fine-tune

    python -m synth.demo OUT_DIR --n 600 --seed 0        (or: python data.py synth OUT_DIR ...)
    python -m synth.kinds OUT_DIR --kind path --n 1200 --seed 0
    python -m synth.base OUT_DIR --data_dir CORPUS_DIR
"""
