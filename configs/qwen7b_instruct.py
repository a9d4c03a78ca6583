# Qwen2.5-7B-Instruct, QLoRA: the recommended configuration for iSign.
#   torchrun --nproc_per_node 4 train.py configs/qwen7b_instruct.py
# Weights: hf download Qwen/Qwen2.5-7B-Instruct --local-dir checkpoints/Qwen2.5-7B-Instruct
# Samples per optimizer step: batch_size 16 x grad_accum 2 x 4 GPUs = 128; iSign's ~95k training
# clips (80% of ~118k) are then ~740 steps per epoch, so max_steps 4000 is ~5.4 epochs.
# Micro-batch: 16 clips of ~138 positions (a 38-token prompt, ~54 soft pose tokens for ~215 frames,
# 20-40 answer tokens; padded to the longest of the bucket) = ~2200 positions per forward, so that
# each projection multiplies a few thousand rows (dequantize + cuBLAS, quant.py), not a few hundred.
# Memory per GPU, by arithmetic (GiB = 2^30 bytes):
#   NF4 projections 6.5B x 0.5625 byte                                            3.40
#   lm_head bf16 152064 x 3584 x 2 bytes (the input table is in host memory)      1.02
#   LoRA (10.1M) + encoder (18M) float32 x 16 bytes (weight, grad, 2 AdamW moments) 0.42
#   the dequantization scratch buffer, the largest projection: 3584 x 18944 x 2     0.13
#   activations, per padded position, reentrant checkpointing: 28 layer inputs x 3584 x 2 bytes
#   = 0.2 MB, and the loss's logits at the answer positions (~1 in 4): 152064 x ~12 bytes (bf16,
#   float32, log-softmax and its gradient) = 1.8 MB each, ~0.45 MB per position; the recomputed
#   layer's own activations come after the logits are freed. ~0.65 MB x 2208 positions           1.34
# About 6.3 GiB = 6.8 GB, under the 7 GB target (batch 32: ~7.7 GiB = 8.2 GB). The measured peaks
# of earlier micro-batches: BENCHMARKS.md, "QLoRA training at full size".
model_dir = "checkpoints/Qwen2.5-7B-Instruct"
model_repo = "Qwen/Qwen2.5-7B-Instruct"
data_dir = "data/isign"
out_dir = "runs/qwen7b-instruct"
quantize = "nf4"
quant_cache = "checkpoints/nf4-cache"  # the quantized base, saved on first load, read back by later runs
offload_embeddings = True  # the frozen input table (152064 x hidden, bf16: 1.02 GiB) stays in host memory
lora_r = 16
lora_alpha = 32
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
lr = 1e-4
encoder_lr = 3e-4
batch_size = 16
grad_accum = 2
max_steps = 4000
warmup_steps = 200
gradient_checkpointing = True
eval_every = 500
save_every = 250
num_workers = 4
