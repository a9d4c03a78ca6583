# Qwen2.5-0.5B-Instruct, QLoRA on iSign: the smallest real model, for a quick first run on one
# GPU (starting values, not tuned). Its lm_head is tied to the embeddings.
#   python train.py configs/qwen0_5b.py        (or torchrun --nproc_per_node 4 ...)
# Weights: hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir checkpoints/Qwen2.5-0.5B-Instruct
# Samples per optimizer step: batch_size 16 x grad_accum 2 x world_size (1 GPU: 32; 4 GPUs: 128).
# Memory per GPU, by arithmetic: docs/memory.md.
model_dir = "checkpoints/Qwen2.5-0.5B-Instruct"
model_repo = "Qwen/Qwen2.5-0.5B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen0_5b-instruct"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
batch_size = 16
grad_accum = 2
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
save_every = 250
num_workers = 4
