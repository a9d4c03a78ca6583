# Qwen2.5-1.5B-Instruct, QLoRA on iSign (starting values, not tuned).
#   torchrun --nproc_per_node 4 train.py configs/qwen1_5b.py
# Weights: hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir checkpoints/Qwen2.5-1.5B-Instruct
# Samples per optimizer step: batch_size 8 x grad_accum 4 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED (not measured): NF4 projections 1.3B x 0.56 byte ~ 0.7 GB; tied
# embeddings bf16 151936 x 1536 x 2 bytes ~ 0.5 GB; LoRA (4.4M) + encoder (~6M) ~ 0.2 GB;
# activations (8 clips, checkpointed) ~ 1-2 GB. About 3-4 GB.
model_dir = "checkpoints/Qwen2.5-1.5B-Instruct"
model_repo = "Qwen/Qwen2.5-1.5B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen1_5b-instruct"
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
