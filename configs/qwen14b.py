# Qwen2.5-14B-Instruct, QLoRA on iSign, LoRA on all seven projections.
#   torchrun --nproc_per_node 4 train.py configs/qwen14b.py
# Weights: hf download Qwen/Qwen2.5-14B-Instruct --local-dir checkpoints/Qwen2.5-14B-Instruct
# Samples per optimizer step: batch_size 4 x grad_accum 8 x 4 GPUs = 128 (~740 steps per epoch).
# The micro-batch (4 clips, with double quantization) is what a 12 GB per-GPU target leaves: the
# arithmetic is in docs/memory.md.
model_dir = "checkpoints/Qwen2.5-14B-Instruct"
model_repo = "Qwen/Qwen2.5-14B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen14b-instruct"
double_quant = True  # the absmax in 8 bits too (docs/memory.md)
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
lora_r = 32
lora_alpha = 64
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_batch_size = 8
save_every = 250
num_workers = 4
