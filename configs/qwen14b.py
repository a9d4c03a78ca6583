# Qwen2.5-14B-Instruct, QLoRA on iSign, LoRA on all seven projections.
#   torchrun --nproc_per_node 4 train.py configs/qwen14b.py
# Weights: hf download Qwen/Qwen2.5-14B-Instruct --local-dir checkpoints/Qwen2.5-14B-Instruct
# Samples per optimizer step: batch_size 4 x grad_accum 8 x 4 GPUs = 128 (~740 steps per epoch).
# Memory per GPU, by arithmetic (GiB = 2^30 bytes; the way of counting matched the measured model
# memory, BENCHMARKS.md "QLoRA training at full size"):
#   NF4 projections 13.2B x 4.127 bits (double_quant: the absmax in 8 bits, -0.58 GiB)         6.34
#   lm_head bf16 152064 x 5120 x 2 bytes (the input table is in host memory)                1.45
#   LoRA r32 on 7 projections x 48 layers (137.6M) + encoder (31.6M) = 169.2M float32 numbers
#   x 16 bytes (weight, grad, 2 AdamW moments)                                               2.52
#   the dequantization scratch buffer, the largest projection: 5120 x 13824 x 2 bytes        0.13
#   activations per padded position: 48 checkpointed layer inputs x 5120 x 2 bytes = 0.49 MB,
#   and the loss's logits at the answer positions (~1 in 4, 152064 x ~12 bytes each) ~0.41 MB:
#   ~0.9 MB x 4 clips x 138 positions                                                         0.46
# About 10.9 GiB = 11.7 GB, under the 12 GB target. The micro-batch is what the target leaves:
# without double quantization 4 clips would be ~12.3 GB (and 2 clips ~12.1 GB, with the scratch
# buffer); thousands of positions (16 clips) ~13.2 GB. The model's state (10.4 GiB) leaves ~0.7
# GiB for activations; the trained tensors' 2.5 GiB are the place to look for more. Double
# quantization costs nothing extra on the two-kernel path, whose kernel decodes the 8-bit absmax
# itself; the fused kernels (few rows: decoding) decode them with a few more small kernels.
model_dir = "checkpoints/Qwen2.5-14B-Instruct"
model_repo = "Qwen/Qwen2.5-14B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen14b-instruct"
quantize = "nf4"
double_quant = True  # the absmax in 8 bits too: see the memory above
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.45 GiB) stays in host memory
lora_r = 32
lora_alpha = 64
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
lr = 1e-4
encoder_lr = 3e-4
batch_size = 4
grad_accum = 8
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
eval_batch_size = 8
save_every = 250
num_workers = 4
