# Qwen2.5-32B-Instruct, QLoRA on iSign, LoRA r64 on all seven projections, sharded over 4 GPUs with
# FSDP (--fsdp: docs/training.md, "Models larger than one GPU").
#   torchrun --nproc_per_node 4 train.py configs/qwen32b.py
# Weights: hf download Qwen/Qwen2.5-32B-Instruct --local-dir checkpoints/Qwen2.5-32B-Instruct
# Samples per optimizer step: batch_size 1 x grad_accum 32 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU over 4 GPUs and over 2, by arithmetic: docs/memory.md.
model_dir = "checkpoints/Qwen2.5-32B-Instruct"
model_repo = "Qwen/Qwen2.5-32B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen32b-instruct"
quant_cache = "checkpoints/nf4-cache"  # per rank: each process's quantized shard, saved on first load
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
fsdp = True
lora_r = 64
lora_alpha = 128
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
batch_size = 1
grad_accum = 32
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_batch_size = 8
save_every = 250
num_workers = 4
