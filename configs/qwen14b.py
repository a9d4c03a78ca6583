# Qwen2.5-14B-Instruct, QLoRA on iSign, LoRA on all seven projections.
#   torchrun --nproc_per_node 4 train.py configs/qwen14b.py
# Weights: hf download Qwen/Qwen2.5-14B-Instruct --local-dir checkpoints/Qwen2.5-14B-Instruct
# Samples per optimizer step: batch_size 2 x grad_accum 16 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, by parameter count (it matched the measurement below to 0.03 GiB): NF4 projections
# 13.2B x 0.5625 byte = 6.9 GiB; lm_head bf16 152064 x 5120 x 2 bytes = 1.45 GiB (the input table,
# as large, is in host memory: offload_embeddings); LoRA r32 on 7 projections x 48 layers (138M) +
# encoder (32M) = 169M float32 numbers x 16 bytes (weight, grad, 2 AdamW moments) = 2.5 GiB;
# activations (2 clips, checkpointed) ~0.2 GiB (estimated from the 7B figure). About 11 GiB.
# MEASURED (BENCHMARKS.md, H200, 2026-11-27, bench.py train --random-weights --batch 2): peak
# 12.99 GiB for 2 iSign-like clips (138 positions), before fused AdamW (-0.63 GiB: the default
# AdamW's temporary was the peak) and offload_embeddings (-1.45 GiB); not measured since.
model_dir = "checkpoints/Qwen2.5-14B-Instruct"
model_repo = "Qwen/Qwen2.5-14B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen14b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
lora_r = 32
lora_alpha = 64
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lr = 1e-4
encoder_lr = 3e-4
batch_size = 2
grad_accum = 16
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
eval_batch_size = 8
save_every = 250
num_workers = 4
