# The CPU demo: `python train.py configs/tiny.py` (no download, no GPU).
# A synthetic corpus (synth.py) and a tiny random-initialised Qwen2 with a BPE tokenizer trained
# on the corpus's training texts are created on first use; then the same path as the real
# configs: 4-bit NF4 base, LoRA adapters, pose encoder. The base model knows no English, so
# LoRA goes on all seven projections and the embeddings and lm_head are trained too.
data_dir = "data/synth"
synth_n = 600
synth_seed = 0
model_dir = "runs/tiny-base"
init_model = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, vocab_size=1024)
quantize = "nf4"
lora_r = 16
lora_alpha = 32
lora_dropout = 0.0
lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
modules_to_save = ["embed_tokens", "lm_head"]
encoder_width = 128
encoder_dropout = 0.1
# 16 clips per step on one process: batch_size 16 x grad_accum 1 x world_size 1
batch_size = 16
grad_accum = 1
max_steps = 600
lr = 3e-3
encoder_lr = 3e-3
warmup_steps = 30
eval_every = 100
eval_samples = 60
eval_batch_size = 32
max_new_tokens = 32
save_every = 100
keep_last = 2
test_at_end = True
out_dir = "runs/tiny"
num_workers = 0
