# The CPU demo: `python train.py configs/tiny.py` (no download, no GPU).
# On first use: a synthetic corpus in the iSign layout (synth/demo.py, 1500 clips), its pose cache,
# a BPE tokenizer trained on its training texts and a random-initialised 2-layer Qwen2. Then the
# same path as the real configs: frozen 4-bit NF4 base, LoRA adapters, pose encoder. The random
# base knows no language, so LoRA goes on all seven projections and the embeddings and lm_head
# are trained too (modules_to_save); a short prompt keeps the sequences short.
# How long it takes and what it reaches on a 2-core CPU, measured: README, "What the tiny run reaches".
synth_n = 1500
system_prompt = "Translate the signs."
user_prompt = "{pose}"
model_dir = ""            # the random base goes to out_dir/base: its tokenizer learns this corpus
init_model = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, vocab_size=1024)
lora_dropout = 0.0
modules_to_save = ["embed_tokens", "lm_head"]
# A random base learns the language and the signs together: plain LoRA, no alignment with
# embeddings that mean nothing yet (the defaults are the recipe for a pretrained LLM).
lora_plus_ratio = 1.0
align_weight = 0.0
encoder_width = 192
# 16 clips per step on one process: batch_size 16 x grad_accum 1 x world_size 1
batch_size = 16
grad_accum = 1
max_steps = 2000
lr = 2e-3
warmup_steps = 50
eval_samples = 60
eval_batch_size = 32
max_new_tokens = 32
keep_last = 2
test_at_end = True
out_dir = "runs/tiny"
# Two cores, both computing the steps; augmenting a batch in the same process costs less than
# a core left to a loader process (BENCHMARKS.md, "The tiny CPU run").
cpu_threads = 2
num_workers = 0
