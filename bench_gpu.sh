#!/usr/bin/env bash
# Issue 8's GPU measurements in one run (~10 min on one H100 or H200), random weights (speed and
# memory do not depend on their values: no download). Paste what it prints into BENCHMARKS.md.
#   1. correctness on the GPU: NF4 Triton kernels vs the torch reference, LoRA, the bench itself
#   2. bench.py kernels: NF4 forward / dx vs bf16 cuBLAS and bitsandbytes at 7B/14B layer shapes
#   3. bench.py train: QLoRA steps, ours vs transformers + PEFT + bitsandbytes, at the shapes of
#      configs/qwen7b_instruct.py (batch 4) and configs/qwen14b.py (batch 2), checkpointing on
#   4. batch-1 greedy decoding of the 7B shape, bf16 vs NF4 (share of the memory bandwidth)
# Needs the CUDA build of torch and requirements-test.txt. With $OUT set, also writes $OUT/bench_gpu.log.
#   bash bench_gpu.sh
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")"
[ -f .venv/bin/activate ] && . .venv/bin/activate
run() { echo; echo "\$ $*"; timeout 240 "$@" || echo "exit code $?"; }
log() { if [ -n "${OUT:-}" ]; then tee "$OUT/bench_gpu.log"; else cat; fi; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  git log --oneline -1
  python -c "import torch, triton, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, \
'triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bnb', b.__version__)"
  run python -m pytest -q tests/test_quant.py tests/test_lora.py tests/test_bench.py
  run python bench.py kernels
  run python bench.py train --config configs/qwen7b_instruct.py --random-weights --batch 4 --gradient_checkpointing=True
  run python bench.py train --config configs/qwen14b.py --random-weights --batch 2 --gradient_checkpointing=True
  run python bench.py decode --shape 7B --prompt 128 --new 128
} 2>&1 | log
