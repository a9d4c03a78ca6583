# Qwen2.5-7B (base, not instruct), QLoRA on iSign. The base model has seen no ChatML turns: the
# adapters learn the format.
#   torchrun --nproc_per_node 4 train.py configs/qwen7b.py
# Weights: hf download Qwen/Qwen2.5-7B --local-dir checkpoints/Qwen2.5-7B
# Samples per optimizer step: batch_size 16 x grad_accum 2 x 4 GPUs = 128 (~740 steps per epoch).
# Micro-batch and memory per GPU: as qwen7b_instruct.py (docs/memory.md).
model_dir = "checkpoints/Qwen2.5-7B"
model_repo = "Qwen/Qwen2.5-7B"
data_dir = "data/isign"
out_dir = "runs/qwen7b"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.02 GiB) stays in host memory
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
batch_size = 16
grad_accum = 2
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
save_every = 250
num_workers = 4
