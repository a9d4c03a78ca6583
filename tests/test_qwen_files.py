"""The real Qwen files in ../shared/fixtures: tokenizer.py on the real Qwen2 vocabulary against
transformers' Qwen2 tokenizer (test-only oracle), and model.Qwen2Config / model.Qwen2 on the
published config.json of seven Qwen2 / Qwen2.5 models (fields, and parameter counts by
arithmetic, by transformers' Qwen2ForCausalLM and by the published totals).

The vocabulary directory has vocab.json + merges.txt + added_tokens.json and no tokenizer.json,
so `Tokenizer.from_dir` builds the BPE itself. The Qwen2.5 numbering of the added tokens
(151643-151664) is written out below from Qwen2.5's tokenizer_config.json.

Note on the oracle: in transformers 5.24, `Qwen2TokenizerFast(vocab_file=..., merges_file=...)`
silently ignores both files and builds a one-token tokenizer (every text encodes to []); the
files are read by `Qwen2TokenizerFast(vocab=PATH, merges=PATH)` or by `from_pretrained(DIR)`,
which is what is used here (and `test_oracle_is_the_real_vocabulary` would catch an empty one).
"""
import json
import os
import unicodedata
from pathlib import Path

import pytest
import torch

from model import Qwen2, Qwen2Config
from test_tokenizer import QWEN25_CHAT_TEMPLATE
from tokenizer import Tokenizer

SHARED = Path(os.environ.get("QWEN_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
VOCAB_DIR = SHARED / "qwen2_tokenizer"
CONFIG_DIR = SHARED / "qwen_configs"

# Qwen2.5's added tokens, as its tokenizer_config.json's added_tokens_decoder numbers and flags
# them (id, content, special). All have normalized/lstrip/rstrip/single_word false.
QWEN25_ADDED = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True), (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True), (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False), (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False), (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False), (151664, "<|file_sep|>", False),
]
# Qwen2's three (added_tokens.json; Qwen2's tokenizer_config.json marks them special).
QWEN2_ADDED = QWEN25_ADDED[:3]

TEXTS = [
    "Hello world", "Hello world!", "the boy gives the girl a red ball.", "Where is the train station?",
    "I don't know; it's 12:45 now, isn't it?", "She'll come, we'd go, they've left, I'm here, you're late.",
    "SHE'LL COME. IT'S OK. I'M FINE.", "Numbers: 3.14159, 1,234,567.89, -42, 2025-06-01, 10^9, 50%.",
    "Punctuation!!! ... ??? (brackets) [square] {curly} \"quotes\" 'single' --dashes-- #hash @at $5",
    "naïve café — déjà vu; Æsir Ørsted Ångström", "मेरा नाम राम है", "漢字とひらがな、한국어", "emoji 🙂👍🏽 ok",
    " leading space", "   three leading spaces", "trailing spaces   ", "Tabs\tand   spaces",
    "line one\nline two\r\n\tindented\n\n\nthree blank", "\n\nstarts with newlines", "ends with newline\n",
    "", " ", "x", "http://example.com/path?q=1&r=2", "def f(x):\n    return x ** 2  # square\n",
    "a<|im_start|>b<|im_end|>c<|endoftext|>",  # special-token strings in text map to their tokens
    "the placeholder <|video_pad|> and <tool_call>{}</tool_call>",  # added tokens in Qwen2.5 only
]
# Not NFC: both tokenizers normalise to NFC first, so the text decodes to its NFC form.
NOT_NFC = ["cafe\u0301 and A\u030a"]


def _hf_tokenizer(added):
    """transformers' Qwen2 tokenizer on the two files, with `added` given their ids in order."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    hf = Qwen2TokenizerFast(vocab=str(VOCAB_DIR / "vocab.json"), merges=str(VOCAB_DIR / "merges.txt"))
    for i, content, special in added:
        hf.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
        assert hf.convert_tokens_to_ids(content) == i, content
    return hf


@pytest.fixture(scope="module")
def qwen2():
    """(ours, HF) on the fixture directory as it is: a Qwen2 vocabulary, three added tokens."""
    if not VOCAB_DIR.is_dir():
        pytest.fail(f"Qwen2 tokenizer fixture not found at {VOCAB_DIR} (set QWEN_FIXTURES)")
    return Tokenizer.from_dir(VOCAB_DIR), _hf_tokenizer(QWEN2_ADDED)


@pytest.fixture(scope="module")
def qwen25_dir(tmp_path_factory):
    """A Qwen2.5-style directory without tokenizer.json: the same two files, and
    tokenizer_config.json / generation_config.json as Qwen2.5-7B-Instruct's."""
    d = tmp_path_factory.mktemp("qwen25_tok")
    for f in ("vocab.json", "merges.txt"):
        (d / f).symlink_to(VOCAB_DIR / f)
    decoder = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": s} for i, c, s in QWEN25_ADDED}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "errors": "replace", "model_max_length": 131072, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None, "clean_up_tokenization_spaces": False}))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643],
                                                          "pad_token_id": 151643}))
    return d


@pytest.fixture(scope="module")
def qwen25(qwen25_dir):
    return Tokenizer.from_dir(qwen25_dir), _hf_tokenizer(QWEN25_ADDED)


@pytest.fixture(params=["qwen2", "qwen25"])
def both(request):
    return request.getfixturevalue(request.param)


def test_oracle_is_the_real_vocabulary(qwen2):
    ours, hf = qwen2
    assert len(hf) == 151646 and len(hf.get_vocab()) == 151646
    assert len(json.loads((VOCAB_DIR / "vocab.json").read_text())) == 151643
    # Well-known Qwen2 ids: "Hello world" -> [9707, 1879]; digits one at a time ("2" 17, "0" 15)
    assert hf.encode("Hello world", add_special_tokens=False) == [9707, 1879] == ours.encode("Hello world")
    assert ours.encode("2025") == [17, 15, 17, 20]


def test_encode_decode_match_transformers(both):
    ours, hf = both
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
        if "<|" not in text and "<tool" not in text:
            assert ours.decode(ids) == text  # plain text round-trips exactly
    for text in NOT_NFC:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == unicodedata.normalize("NFC", text) == hf.decode(ids)
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
    assert max(max(ours.encode(t), default=0) for t in TEXTS if "<" not in t) < 151643  # plain text: BPE ids only


def test_same_ids_as_transformers_from_pretrained(qwen2, qwen25, qwen25_dir):
    """transformers' own reading of each directory (added_tokens.json; tokenizer_config.json's
    added_tokens_decoder) gives the same ids as ours."""
    from transformers import Qwen2TokenizerFast

    for (ours, _), d in ((qwen2, VOCAB_DIR), (qwen25, qwen25_dir)):
        hf = Qwen2TokenizerFast.from_pretrained(str(d))
        vocab = ours._tok.get_vocab(with_added_tokens=True)
        vocab.pop("<|pose|>", None)  # our Qwen2 placeholder, not in the files
        assert hf.get_vocab() == vocab
        for text in TEXTS:
            assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text


CONVERSATIONS = [
    ([{"role": "system", "content": "Translate the signing into English."},
      {"role": "user", "content": "<|video_pad|>\nWhat is being signed?"}], True),
    ([{"role": "user", "content": "no system message: Qwen's default one is inserted"}], True),
    ([{"role": "system", "content": "sys"}, {"role": "user", "content": "Q: it's 1+1?"},
      {"role": "assistant", "content": "A: 2.\n"}], False),
    ([{"role": "system", "content": " multi\nline\n"}, {"role": "user", "content": "naïve 🙂"},
      {"role": "assistant", "content": "We were expecting something simple, like a youth hostel."},
      {"role": "user", "content": "  again?"}], True),
]


@pytest.mark.parametrize("messages,gen", CONVERSATIONS)
def test_chat_matches_apply_chat_template(both, messages, gen):
    ours, hf = both
    ref = hf.apply_chat_template(messages, chat_template=QWEN25_CHAT_TEMPLATE, add_generation_prompt=gen,
                                 tokenize=True, return_dict=False)
    assert ours.chat(messages, add_generation_prompt=gen) == list(ref)


def test_chat_ids_by_hand(qwen25):
    """The ChatML string written out by hand, encoded by transformers, and its structure."""
    ours, hf = qwen25
    messages = CONVERSATIONS[0][0]
    text = ("<|im_start|>system\nTranslate the signing into English.<|im_end|>\n"
            "<|im_start|>user\n<|video_pad|>\nWhat is being signed?<|im_end|>\n<|im_start|>assistant\n")
    ids = ours.chat(messages, add_generation_prompt=True)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert ids[:3] == [151644, hf.convert_tokens_to_ids("system"), 198]  # "\n" is 198
    assert ids.count(151644) == 3 and ids.count(151645) == 2 and ids.count(151656) == 1
    assert ids[-3:] == [151644, hf.convert_tokens_to_ids("assistant"), 198]
    assert ids[ids.index(151656) - 2:ids.index(151656) + 2] == [hf.convert_tokens_to_ids("user"), 198, 151656, 198]


def test_qwen25_special_and_placeholder_ids(qwen25):
    ours, hf = qwen25
    assert [ours._tok.token_to_id(c) for _, c, _ in QWEN25_ADDED] == [i for i, _, _ in QWEN25_ADDED]
    assert [hf.convert_tokens_to_ids(c) for _, c, _ in QWEN25_ADDED] == [i for i, _, _ in QWEN25_ADDED]
    assert (ours.endoftext_id, ours.im_start_id, ours.im_end_id) == (151643, 151644, 151645)
    assert (ours.pose_token, ours.pose_token_id) == ("<|video_pad|>", 151656)
    assert ours.vocab_size == 151665 == len(hf)
    assert ours.eos_ids == [151645, 151643] and ours.pad_id == 151643
    # decode drops the special tokens and keeps the others, as transformers does
    ids = [151644, 9707, 151656, 151657, 151645, 151664]
    assert ours.decode(ids) == "Hello<tool_call><|file_sep|>" == hf.decode(ids, skip_special_tokens=True)


def test_qwen2_special_ids_and_placeholder_fallback(qwen2):
    ours, hf = qwen2
    assert (ours.endoftext_id, ours.im_start_id, ours.im_end_id) == (151643, 151644, 151645)
    assert ours._tok.token_to_id("<|video_pad|>") is None
    # no Qwen2.5 placeholder: <|pose|> is added as a special token right after the added tokens
    assert (ours.pose_token, ours.pose_token_id, ours.vocab_size) == ("<|pose|>", 151646, 151647)
    assert ours.pose_token_id < 152064  # a spare row of Qwen2-7B / 72B's embedding (vocab_size 152064)
    assert ours.eos_ids == [151645, 151643] and ours.pad_id == 151643  # no config files: the defaults
    prompt = ours.chat([{"role": "user", "content": f"{ours.pose_token}\nTranslate."}], add_generation_prompt=True)
    assert prompt.count(151646) == 1
    for text in TEXTS:
        assert 151646 not in ours.encode(text)
    assert ours.decode([151644, 9707, 151646, 151645, 151643]) == "Hello"


def test_added_tokens_must_follow_the_vocabulary(tmp_path):
    """A small byte vocabulary: added tokens take their ids from the files, or the load refuses."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    (tmp_path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(alphabet)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    added = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id, tok.pose_token_id) == (256, 257, 258, 259)
    assert tok.decode(tok.encode("a b\n")) == "a b\n"
    (tmp_path / "added_tokens.json").write_text(json.dumps(added | {"<|im_end|>": 260}))
    with pytest.raises(ValueError, match="im_end.*260"):
        Tokenizer.from_dir(tmp_path)


# ----------------------------------------------------------------------------- configs

# name: (hidden, intermediate, layers, heads, kv heads, vocab, max positions, rms eps, tied,
#        published total parameters in billions as the model pages state them)
CONFIGS = {
    "Qwen2-7B": (3584, 18944, 28, 28, 4, 152064, 131072, 1e-6, False, 7.62),
    "Qwen2-72B": (8192, 29568, 80, 64, 8, 152064, 131072, 1e-5, False, 72.7),
    "Qwen2-72B-Instruct": (8192, 29568, 80, 64, 8, 152064, 32768, 1e-6, False, 72.7),
    "Qwen2.5-0.5B-Instruct": (896, 4864, 24, 14, 2, 151936, 32768, 1e-6, True, 0.49),
    "Qwen2.5-7B-Instruct": (3584, 18944, 28, 28, 4, 152064, 32768, 1e-6, False, 7.61),
    "Qwen2.5-14B-Instruct": (5120, 13824, 48, 40, 8, 152064, 32768, 1e-6, False, 14.7),
    "Qwen2.5-32B": (5120, 27648, 64, 40, 8, 152064, 131072, 1e-5, False, 32.5),
    "Qwen2.5-72B-Instruct": (8192, 29568, 80, 64, 8, 152064, 32768, 1e-6, False, 72.7),
}
# The exact totals of the Hub's safetensors metadata (Qwen2-7B and Qwen2.5-7B share one
# architecture; the Qwen2 blog's "7.07B" counts the embedding once).
EXACT = {7.62: 7_615_616_512, 7.61: 7_615_616_512, 72.7: 72_706_203_648, 0.49: 494_032_768,
         14.7: 14_770_033_664, 32.5: 32_763_876_352}


def expected_params(h, inter, layers, heads, kv, vocab, tied):
    """Qwen2ForCausalLM by arithmetic: q/k/v with bias, o without; SwiGLU; two norms a layer."""
    hd = h // heads
    attn = (h * h + h) + 2 * (h * kv * hd + kv * hd) + h * h
    per_layer = attn + 3 * h * inter + 2 * h
    return vocab * h * (1 if tied else 2) + layers * per_layer + h


def test_every_published_config_is_here():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_published_config_read_and_parameter_count(name):
    import transformers

    h, inter, layers, heads, kv, vocab, max_pos, eps, tied, billions = CONFIGS[name]
    path = CONFIG_DIR / f"{name}.json"
    raw = json.loads(path.read_text())
    assert raw["use_sliding_window"] is False and raw["hidden_act"] == "silu"
    cfg = Qwen2Config.from_json(path)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.max_position_embeddings) == (h, inter, layers, heads, kv,
                                                                                      vocab, max_pos)
    assert cfg.rms_norm_eps == eps and cfg.tie_word_embeddings is tied
    assert cfg.head_dim == (64 if h == 896 else 128)
    assert cfg.rope_theta == 1e6 and isinstance(cfg.rope_theta, float)
    assert cfg.bos_token_id == 151643 and cfg.eos_token_id == (151645 if "Instruct" in name else 151643)

    # the same values as transformers reads them
    hf_cfg = transformers.Qwen2Config.from_dict(raw)
    assert hf_cfg.rope_parameters["rope_theta"] == cfg.rope_theta and hf_cfg.rms_norm_eps == cfg.rms_norm_eps
    assert hf_cfg.tie_word_embeddings is cfg.tie_word_embeddings
    assert (hf_cfg.num_key_value_heads, hf_cfg.max_position_embeddings) == (kv, max_pos)
    assert not hf_cfg.use_sliding_window

    with torch.device("meta"):
        ours = Qwen2(cfg)
        ref = transformers.Qwen2ForCausalLM(hf_cfg)
    count = sum(p.numel() for p in ours.parameters())
    assert count == expected_params(h, inter, layers, heads, kv, vocab, tied)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    assert count == sum(p.numel() for p in ref.parameters())
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) is tied
    assert abs(count / 1e9 - billions) / billions < 0.01
    assert count == EXACT[billions]


@pytest.mark.parametrize("change,message", [
    ({"use_sliding_window": True}, "sliding"),
    # the YaRN entry Qwen2.5's model cards suggest adding for long inputs: not implemented
    ({"rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}}, "yarn"),
])
def test_published_config_changes_we_refuse(change, message):
    raw = json.loads((CONFIG_DIR / "Qwen2.5-7B-Instruct.json").read_text())
    with pytest.raises(ValueError, match=message):
        Qwen2Config.from_dict(raw | change)
    assert Qwen2Config.from_dict(raw | {"rope_scaling": None}).rope_theta == 1e6
