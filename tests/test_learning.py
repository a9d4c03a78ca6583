"""The tiny recipe uses the signs, on corpora whose signs differ in kind.

For each generator (synth/demo.py's signs; synth/kinds.py's "path": a word only in the wrist's path,
"shape": only in the hand shape and place, "mixed": many properties with coarticulation) a small
corpus is written and configs/tiny.py trains on it as it is, shortened. A model that learned the
language and ignored the poses scores the same validation loss on its own clips and on another
clip's (train.py's val_loss_shuffled: each clip's poses replaced by another's, a fixed
derangement); one that reads the signs is clearly worse on the wrong ones. The loss falling alone
would not tell the two apart.

The full runs (1,200-1,500 clips, the recipe's 2000 steps, BLEU-4 on the test split) are in
BENCHMARKS.md, "Does the model use the signs?"."""
import pytest
from train_helpers import ROOT, metrics

from synth import demo
from synth import kinds
import train

# (clips, steps) per corpus: a word that lives only in the wrist's path or only in the hand
# shape needs more signers, and more steps, to be told apart from each signer's own way of
# moving than synth/demo.py's signs do; before that the language model learns the sentences alone.
RUNS = {"synth": (240, 300), "mixed": (240, 300), "path": (600, 1000), "shape": (600, 1000)}


def corpus(kind: str, n: int, out):
    if kind == "synth":
        demo.generate_corpus(out, n=n, seed=3)
    else:
        kinds.generate_corpus(out, kind, n=n, seed=3)
    return out


# "path" and "shape" take five times as long and are marked slow (`python -m pytest -m slow`): the
# "mixed" corpus's signs differ in hand shape, place and path together and learn in 300 steps.
@pytest.mark.parametrize("kind", ["synth", pytest.param("path", marks=pytest.mark.slow),
                                  pytest.param("shape", marks=pytest.mark.slow), "mixed"])
def test_tiny_recipe_reads_the_signs(kind, tmp_path):
    clips, steps = RUNS[kind]
    data_dir = corpus(kind, clips, tmp_path / "corpus")
    out = tmp_path / "run"
    args = [str(ROOT / "configs" / "tiny.py"), f"--data_dir={data_dir}", f"--out_dir={out}",
            f"--max_steps={steps}", f"--eval_every={steps}", f"--save_every={steps}", "--eval_samples=24",
            "--max_new_tokens=16", "--test_at_end=False", "--num_workers=0"]
    assert train.main(args) == 0
    val = [m for m in metrics(out) if "val_loss" in m][-1]
    # on a clip's own poses the answer is clearly likelier than on another clip's (a model that
    # ignores the poses scores about the same on both: within a few hundredths here)
    assert val["val_loss_shuffled"] > val["val_loss"] + 0.3, val
