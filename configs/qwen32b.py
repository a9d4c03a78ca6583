# Qwen2.5-32B-Instruct, QLoRA on iSign, LoRA r64 on all seven projections.
#   torchrun --nproc_per_node 4 train.py configs/qwen32b.py
# Weights: hf download Qwen/Qwen2.5-32B-Instruct --local-dir checkpoints/Qwen2.5-32B-Instruct
# Samples per optimizer step: batch_size 1 x grad_accum 32 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED (not measured): NF4 projections 31B x 0.5625 byte ~ 16.3 GiB; lm_head
# bf16 152064 x 5120 x 2 bytes = 1.45 GiB (the input table is in host memory: offload_embeddings);
# LoRA r64 on 7 projections x 64 layers = 537M params x 16 bytes (fp32 weight, grad, 2 AdamW
# moments) ~ 8 GiB; encoder (~32M) ~0.5 GiB; activations (1 clip, checkpointed) ~ 1 GiB; the
# dequantization scratch buffer (quant.py), the largest projection 5120 x 27648 x 2 bytes = 0.26 GiB.
# About 27 GiB: use 40 GB or larger GPUs.
model_dir = "checkpoints/Qwen2.5-32B-Instruct"
model_repo = "Qwen/Qwen2.5-32B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen32b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
lora_r = 64
lora_alpha = 128
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lr = 5e-5
encoder_lr = 2e-4
batch_size = 1
grad_accum = 32
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
eval_batch_size = 8
save_every = 250
num_workers = 4
