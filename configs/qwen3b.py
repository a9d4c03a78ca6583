# Qwen2.5-3B-Instruct, QLoRA on iSign (starting values, not tuned).
#   torchrun --nproc_per_node 4 train.py configs/qwen3b.py
# Weights: hf download Qwen/Qwen2.5-3B-Instruct --local-dir checkpoints/Qwen2.5-3B-Instruct
# Samples per optimizer step: batch_size 8 x grad_accum 4 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED (not measured): NF4 projections 2.8B x 0.56 byte ~ 1.6 GB; tied
# embeddings bf16 151936 x 2048 x 2 bytes ~ 0.6 GB; LoRA (7.4M) + encoder (~8M) ~ 0.25 GB;
# activations (8 clips, checkpointed) ~ 1-3 GB. About 4-6 GB.
model_dir = "checkpoints/Qwen2.5-3B-Instruct"
model_repo = "Qwen/Qwen2.5-3B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen3b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
lora_r = 16
lora_alpha = 32
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
lr = 2e-4
encoder_lr = 5e-4
batch_size = 8
grad_accum = 4
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
save_every = 250
num_workers = 4
