# Qwen2-7B (the base model of the Qwen2 family, same shape as Qwen2.5-7B), QLoRA on iSign. A base
# model, not chat-tuned: the prompt is ChatML all the same (its special tokens are in the
# vocabulary) and the adapters learn the format. Whole on each GPU (DDP): no --fsdp needed.
#   torchrun --nproc_per_node 4 train.py configs/qwen2_7b.py
# Weights: hf download Qwen/Qwen2-7B --local-dir checkpoints/Qwen2-7B
# Samples per optimizer step: batch_size 4 x grad_accum 8 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, by arithmetic: docs/memory.md.
model_dir = "checkpoints/Qwen2-7B"
model_repo = "Qwen/Qwen2-7B"
data_dir = "data/isign"
out_dir = "runs/qwen2-7b"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.02 GiB) stays in host memory
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
save_every = 250
num_workers = 4
