# Qwen2.5-7B-Instruct, QLoRA: the recommended configuration for iSign.
#   torchrun --nproc_per_node 4 train.py configs/qwen7b_instruct.py
# Weights: hf download Qwen/Qwen2.5-7B-Instruct --local-dir checkpoints/Qwen2.5-7B-Instruct
# Samples per optimizer step: batch_size 4 x grad_accum 8 x 4 GPUs = 128; iSign's ~95k training
# clips (80% of ~118k) are then ~740 steps per epoch, so max_steps 4000 is ~5.4 epochs.
# Memory per GPU, by parameter count: NF4 projections 6.5B x 0.5625 byte = 3.4 GiB; lm_head bf16
# 152064 x 3584 x 2 bytes = 1.02 GiB (the input table, as large, is in host memory:
# offload_embeddings); LoRA (10M) + encoder (18M) float32 x 16 bytes (weight, grad, 2 AdamW
# moments) = 0.4 GiB; activations (4 clips, checkpointed) ~0.35 GiB (the rest of the measured peak).
# About 5.2 GiB.
# MEASURED (BENCHMARKS.md, H200, 2026-11-27, bench.py train --random-weights --batch 4): peak
# 6.22 GiB for 4 iSign-like clips (215 +-10% frames, 20-40 answer tokens, 138 positions), before
# offload_embeddings (-1.02 GiB by arithmetic; not measured since).
model_dir = "checkpoints/Qwen2.5-7B-Instruct"
model_repo = "Qwen/Qwen2.5-7B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen7b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.02 GiB) stays in host memory
lora_r = 16
lora_alpha = 32
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
lr = 1e-4
encoder_lr = 3e-4
batch_size = 4
grad_accum = 8
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
save_every = 250
num_workers = 4
