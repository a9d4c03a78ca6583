# Qwen2.5-0.5B-Instruct, QLoRA on iSign: the smallest real model, for a quick first run on one
# GPU (starting values, not tuned). Its lm_head is tied to the embeddings.
#   python train.py configs/qwen0_5b.py        (or torchrun --nproc_per_node 4 ...)
# Weights: hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir checkpoints/Qwen2.5-0.5B-Instruct
# Samples per optimizer step: batch_size 16 x grad_accum 2 x world_size (1 GPU: 32; 4 GPUs: 128).
# Memory per GPU, PLANNED (not measured): NF4 projections 0.36B x 0.56 byte ~ 0.2 GB; tied
# embeddings bf16 151936 x 896 x 2 bytes ~ 0.3 GB; LoRA (2.2M) + encoder (~4M) ~ 0.1 GB;
# activations (16 clips, checkpointed) ~ 1-2 GB. About 2-3 GB.
model_dir = "checkpoints/Qwen2.5-0.5B-Instruct"
model_repo = "Qwen/Qwen2.5-0.5B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen0_5b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
lora_r = 16
lora_alpha = 32
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
lr = 2e-4
encoder_lr = 5e-4
batch_size = 16
grad_accum = 2
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
save_every = 250
num_workers = 4
