"""The benchmarks behind `python bench.py ...` (bench.py is the entry point): they measure and
hold no logic the product needs. Figures: BENCHMARKS.md.

    training.py   `bench.py train`: QLoRA training steps, ours vs transformers + PEFT + bitsandbytes
    shapes.py     the Qwen2.5 model shapes the benchmarks use, and the GPUs' peak rates
"""
