# Qwen2.5-7B-Instruct, QLoRA, on How2Sign (American Sign Language -> English; Duarte et al., CVPR 2021),
# read from How2Sign's own OpenPose keypoints (BODY_25 + face + hands, 137 points, 24 fps):
#   python data.py import how2sign ~/How2Sign data/how2sign          # README, "How2Sign"
#   torchrun --nproc_per_node 4 train.py configs/how2sign_qwen7b_instruct.py
#   python eval.py runs/how2sign-qwen7b-instruct --split test
# Only what differs from the defaults (config.py): the corpus, its language, its keypoint layout
# and the recipe of configs/qwen7b_instruct.py; the model is the default's (Qwen2.5-7B-Instruct in
# checkpoints/). Samples per optimizer step: batch_size 4 x grad_accum 8 x 4 GPUs = 128; How2Sign's
# ~31k training clips are ~240 steps per epoch. Memory settings (offload_embeddings, quant_cache) as in
# configs/qwen7b_instruct.py, on the command line: --offload_embeddings=True --quant_cache=checkpoints/nf4-cache
data_dir = "data/how2sign"
out_dir = "runs/how2sign-qwen7b-instruct"
source_language = "American Sign Language"
layout = "openpose"
# The recipe that reads the signs is config.py's defaults (docs/training.md, "The real recipe").
