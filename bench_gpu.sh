#!/usr/bin/env bash
# The GPU measurements of issues 3, 8 and 19 in one run (~10 min on one H100 or H200; the step
# limits below add up to 12 min: under a 10-minute cap, run it in two calls, e.g.
# STEPS="0 0b 1 1b 2" then STEPS="3 4 5"), random weights
# (speed and memory do not depend on their values: nothing to download). Each step has its own
# time limit, so one that fails or hangs does not cost the others. Paste what it prints into
# BENCHMARKS.md. Needs the CUDA build of torch and requirements-test.txt (transformers, peft,
# bitsandbytes for the comparison rows). With $OUT set, the log also goes to $OUT/bench_gpu.log.
#   bash bench_gpu.sh                  # every step; STEPS="1 3" bash bench_gpu.sh: only those
#   0. the device, and its measured copy bandwidth and bf16 matmul rate (the two ceilings)
#   0b. the model tests that need a GPU (CUDA graph decoding, host embeddings) and the fused
#       RMSNorm / RoPE / SwiGLU kernels against their references on the GPU: quick, so first
#   1. bench.py kernels: at 7B/14B layer shapes, the fused NF4 kernels, the NF4 dequantization
#      kernel alone and followed by cuBLAS (the two-kernel path), bf16 cuBLAS and bitsandbytes,
#      forward and dx, each output checked against a float64 product (err column)
#   1b. bench.py fused: the fused RMSNorm / RoPE / SwiGLU kernels against their PyTorch references
#   2. bench.py train: QLoRA steps, ours vs transformers + PEFT + bitsandbytes, at the shape of
#      configs/qwen7b_instruct.py, micro-batches of 4, 16 (the config's) and 32 clips, each stack
#      built once; gradient checkpointing on; a profile of our step at 32; the dispatch's choices
#   3. bench.py decode: batch-1 greedy decoding of the 7B shape, bf16 vs NF4, Python loop vs CUDA graph
#   4. the same as 2 at the shape of configs/qwen14b.py (double quantization), batches 2, 4 (the
#      config's) and 8
#   5. the kernel tests compiled for the GPU (bf16, fp16, fp32; odd shapes; slow: every case
#      compiles its own kernels, so it runs last)
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")"
[ -f .venv/bin/activate ] && . .venv/bin/activate
STEPS=" ${STEPS:-0 0b 1 1b 2 3 4 5} "
step() { local name=$1 limit=$2; shift 2; [[ $STEPS == *" $name "* ]] || return 0
         echo; echo "[$name] \$ $*  (limit ${limit}s)"; SECONDS=0
         timeout "$limit" "$@"; echo "exit code $?, ${SECONDS}s"; }
{
  date -u
  git log --oneline -1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  step 0 45 python3 - <<'EOF'
import torch, triton, triton.testing as tt
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())
for name in ("transformers", "peft", "bitsandbytes"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(name, "not importable:", e)
a = torch.empty(2**30, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)  # 1 GiB copy
ms = tt.do_bench(lambda: b.copy_(a), return_mode="median")
print(f"device-to-device copy: {2 * a.numel() / ms / 1e9:.2f} TB/s (bytes read + written)")
x, y = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
ms = tt.do_bench(lambda: x @ y, return_mode="median")
print(f"bf16 matmul 8192^3: {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
EOF
  step 0b 60 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_fused_ops.py \
      -k "on_a_gpu or test_fused_ops"
  step 1 120 python3 bench.py kernels
  step 1b 30 python3 bench.py fused
  step 2 180 python3 bench.py train --config configs/qwen7b_instruct.py --random-weights --batch 4,16,32 \
      --steps 5 --warmup 2 --gradient_checkpointing=True --profile 25
  step 3 75 python3 bench.py decode --shape 7B --prompt 128 --new 64
  step 4 150 python3 bench.py train --config configs/qwen14b.py --random-weights --batch 2,4,8 --steps 5 --warmup 2 \
      --gradient_checkpointing=True
  step 5 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_quant.py -k "triton or linear4bit or dequantize or kernel"
} 2>&1 | if [ -n "${OUT:-}" ]; then tee "$OUT/bench_gpu.log"; else cat; fi
