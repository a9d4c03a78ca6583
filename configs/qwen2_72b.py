# Qwen2-72B (the base model of the Qwen2 family, same shape as Qwen2.5-72B; rms_norm_eps 1e-5,
# read from its config.json), QLoRA on iSign, sharded over 4 GPUs with FSDP (--fsdp: docs/training.md,
# "Models larger than one GPU"), LoRA r32 on all seven projections. A base model, not chat-tuned: the prompt
# is ChatML all the same (its special tokens are in the vocabulary) and the adapters learn the format.
#   torchrun --nproc_per_node 4 train.py configs/qwen2_72b.py
# Weights: hf download Qwen/Qwen2-72B --local-dir checkpoints/Qwen2-72B
# Samples per optimizer step: batch_size 1 x grad_accum 32 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, PLANNED by arithmetic (not measured), 4 GPUs: NF4 projections 70.2B x 0.5625 byte
# = 36.8 GiB / 4 = 9.2 GiB; lm_head bf16 152064 x 8192 x 2 bytes = 2.32 GiB / 4 = 0.58 GiB (the input
# table, as large, is in host memory: offload_embeddings); trained tensors, LoRA r32 (421M) + encoder
# (74M) = 495M float32: weights 0.46 GiB + gradient and 2 AdamW moments 1.38 GiB (/ 4), and the
# unsharded gradients kept between the 32 micro-steps 1.84 GiB; gathered for compute: the root's
# tensors whole (lm_head, encoder: 2.60 GiB) and two layers whole (0.48 GiB each: the one running,
# the next prefetched) 3.56 GiB; the dequantization scratch buffer (quant.py), the largest projection
# 8192 x 29568 x 2 bytes = 0.45 GiB; activations (1 clip, checkpointed) ~1 GiB. About 18.5 GiB: 4 x 24 GB
# GPUs or larger; 2 x 40 GB also fit (~30 GiB); 2 x 24 GB need --fsdp_cpu_offload=True (the shards,
# gradients and AdamW in host memory, ~25 GiB per process; ~7 GiB left on each GPU). Host memory
# otherwise: ~3 GiB per process besides the data loaders (the input table, 2.32 GiB, and one
# tensor's rows while loading); quant_cache files 9.2 GiB per rank.
model_dir = "checkpoints/Qwen2-72B"
model_repo = "Qwen/Qwen2-72B"
data_dir = "data/isign"
out_dir = "runs/qwen2-72b"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # per rank: each process's quantized shard, saved on first load
offload_embeddings = True  # the frozen input table (152064 x 8192, bf16: 2.32 GiB) stays in host memory
fsdp = True
lora_r = 32
lora_alpha = 64
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
