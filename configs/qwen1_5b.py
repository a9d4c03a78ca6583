# Qwen2.5-1.5B-Instruct, QLoRA on iSign (starting values, not tuned).
#   torchrun --nproc_per_node 4 train.py configs/qwen1_5b.py
# Weights: hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir checkpoints/Qwen2.5-1.5B-Instruct
# Samples per optimizer step: batch_size 8 x grad_accum 4 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, by arithmetic: docs/memory.md.
model_dir = "checkpoints/Qwen2.5-1.5B-Instruct"
model_repo = "Qwen/Qwen2.5-1.5B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen1_5b-instruct"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
batch_size = 8
grad_accum = 4
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
save_every = 250
num_workers = 4
