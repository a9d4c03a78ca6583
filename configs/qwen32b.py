# Qwen2.5-32B-Instruct, QLoRA on iSign, LoRA r64 on all seven projections, sharded over 4 GPUs with
# FSDP (--fsdp: docs/training.md, "Models larger than one GPU").
#   torchrun --nproc_per_node 4 train.py configs/qwen32b.py
# Weights: hf download Qwen/Qwen2.5-32B-Instruct --local-dir checkpoints/Qwen2.5-32B-Instruct
# Samples per optimizer step: batch_size 1 x grad_accum 32 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED by arithmetic (not measured), 4 GPUs: NF4 projections 31.2B x 0.5625 byte
# = 16.35 GiB / 4 = 4.09 GiB; lm_head bf16 152064 x 5120 x 2 bytes = 1.45 GiB / 4 = 0.36 GiB (the input
# table is in host memory: offload_embeddings); trained tensors, LoRA r64 (537M) + encoder (32M) =
# 569M float32: weights 0.53 GiB + gradient and 2 AdamW moments 1.59 GiB (/ 4), and the unsharded
# gradients kept between the 32 micro-steps 2.12 GiB; gathered for compute: the root's tensors whole
# (lm_head, encoder: 1.57 GiB) and two layers whole (0.29 GiB each) 2.14 GiB; the dequantization
# scratch buffer (quant.py), the largest projection 5120 x 27648 x 2 bytes = 0.26 GiB; activations
# (1 clip, checkpointed) ~1 GiB. About 12 GiB: 4 x 24 GB GPUs or larger; 2 x 24 GB also fit (~19 GiB).
# Without --fsdp (DDP, a whole copy per GPU) the same arithmetic gives ~27 GiB: 40 GB GPUs.
model_dir = "checkpoints/Qwen2.5-32B-Instruct"
model_repo = "Qwen/Qwen2.5-32B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen32b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # per rank: each process's quantized shard, saved on first load
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
fsdp = True
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
