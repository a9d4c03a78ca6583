# Qwen2.5-7B-Instruct, QLoRA: the recommended configuration for iSign.
#   torchrun --nproc_per_node 4 train.py configs/qwen7b_instruct.py
# Weights: hf download Qwen/Qwen2.5-7B-Instruct --local-dir checkpoints/Qwen2.5-7B-Instruct
# Samples per optimizer step: batch_size 16 x grad_accum 2 x 4 GPUs = 128; iSign's ~95k training
# clips (80% of ~118k) are then ~740 steps per epoch, so max_steps 4000 is ~5.4 epochs.
# Micro-batch: 16 clips, ~2200 positions per forward, so that each projection multiplies a few
# thousand rows (dequantize + cuBLAS, quant.py), not a few hundred. Memory per GPU, by arithmetic:
# docs/memory.md.
data_dir = "data/isign"
out_dir = "runs/qwen7b-instruct"
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
