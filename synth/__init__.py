"""Synthetic sign corpora in the iSign layout: tooling for the CPU demo and the tests, never needed
by a run on real data.

    demo.py, demo_grammar.py     the demo's corpus (configs/tiny.py): made-up signs, ISL-like grammar
    kinds.py, kinds_grammar.py   corpora whose signs differ in kind: by path, by hand shape, or a mix

    python -m synth.demo OUT_DIR --n 600 --seed 0        (or: python data.py synth OUT_DIR ...)
    python -m synth.kinds OUT_DIR --kind path --n 1200 --seed 0
"""
