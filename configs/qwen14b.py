# Qwen2.5-14B-Instruct, QLoRA on iSign, LoRA on all seven projections.
#   torchrun --nproc_per_node 4 train.py configs/qwen14b.py
# Weights: hf download Qwen/Qwen2.5-14B-Instruct --local-dir checkpoints/Qwen2.5-14B-Instruct
# Samples per optimizer step: batch_size 2 x grad_accum 16 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED (not measured): NF4 projections 13.2B x 0.56 byte ~ 7.4 GB; embeddings
# + lm_head bf16 2 x 152064 x 5120 x 2 bytes ~ 3.1 GB; LoRA r32 on 7 projections x 48 layers
# = 138M params, fp32 weight + grad + 2 AdamW moments (16 bytes each) ~ 2.2 GB; encoder (~32M) ~0.5 GB;
# activations (2 clips, checkpointed) ~ 1-3 GB. About 14-16 GB: a 24 GB GPU is tight, 40 GB is safe.
# MEASURED (BENCHMARKS.md, H200, 2026-11-27, bench.py train --random-weights --batch 2): peak
# 12.99 GiB allocated for 2 iSign-like clips (138 positions).
model_dir = "checkpoints/Qwen2.5-14B-Instruct"
model_repo = "Qwen/Qwen2.5-14B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen14b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
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
