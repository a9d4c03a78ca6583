"""tokenizer.py against transformers (test-only oracle): ChatML ids equal
`apply_chat_template` with Qwen2.5-Instruct's real chat template; encode / decode equal
`PreTrainedTokenizerFast` on the same tokenizer.json; stop, pad and pose-placeholder tokens."""
import json

import pytest

from tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe

# The `chat_template` of Qwen/Qwen2.5-7B-Instruct's tokenizer_config.json, verbatim.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

CORPUS = [
    "the boy gives the girl a red ball", "where is the train station?", "I don't know, it's 12:45 now.",
    "She'll come tomorrow at 7 pm.", "Weather: rain 100%  and wind\n\nthen sun", "naïve café — déjà vu",
    "मेरा नाम राम है", "numbers 3.14159 and 2025", "Tabs\tand   spaces   ", "emoji 🙂 ok",
] * 20
TEXTS = ["Hello world!", "the boy gives the girl a red ball.", "It's 2024-06-01, 09:30.",
         "naïve café 🙂 मेरा", "  leading and trailing  ", "line one\nline two\r\n\tindented",
         "unseen: Zyxwvq ÆØÅ 漢字"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    return out, train_bpe(CORPUS, 400, out)


@pytest.fixture(scope="module")
def hf(trained):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=str(trained[0] / "tokenizer.json"))


CONVERSATIONS = [
    ([{"role": "system", "content": "You translate sign language."},
      {"role": "user", "content": "<|video_pad|>\nTranslate this into English."}], True),
    ([{"role": "user", "content": "no system message: the default one is inserted"}], True),
    ([{"role": "system", "content": "sys"}, {"role": "user", "content": "Q: 1+1?"},
      {"role": "assistant", "content": "A: 2."}], False),
    ([{"role": "system", "content": "multi\nline\n"}, {"role": "user", "content": "a"},
      {"role": "assistant", "content": "b"}, {"role": "user", "content": "naïve 🙂"}], True),
]


@pytest.mark.parametrize("messages,gen", CONVERSATIONS)
def test_chat_matches_qwen25_template(trained, hf, messages, gen):
    tok = trained[1]
    ref = hf.apply_chat_template(messages, chat_template=QWEN25_CHAT_TEMPLATE, add_generation_prompt=gen,
                                 tokenize=True, return_dict=False)
    assert tok.chat(messages, add_generation_prompt=gen) == list(ref)


def test_encode_decode_match_transformers(trained, hf):
    tok = trained[1]
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text == hf.decode(ids)
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_pre_tokenizer_splits_digits_one_by_one(trained):
    # Qwen's split rule \p{N}: "2025" appears 20 times in the corpus yet never merges.
    tok = trained[1]
    assert len(tok.encode("2025")) == 4


def test_special_tokens_layout_and_ids(trained):
    out, tok = trained
    assert tok.vocab_size <= 400
    ids = [tok._tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(tok.vocab_size - len(SPECIAL_TOKENS), tok.vocab_size))  # after the BPE vocab, like Qwen
    assert tok.pose_token == "<|video_pad|>" and tok.pose_token_id == ids[-1]
    assert tok.im_start_id == ids[1] and tok.im_end_id == ids[2] and tok.pad_id == ids[0]
    # ids of plain text never contain a special token, the placeholder included
    for text in TEXTS + CORPUS[:10]:
        assert not set(tok.encode(text)) & set(ids)
    # decode skips special tokens
    assert tok.decode([tok.im_start_id] + tok.encode("hi") + [tok.im_end_id, tok.pose_token_id]) == "hi"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and cfg["pad_token"] == "<|endoftext|>"


def _copy_tokenizer(src, dst, drop=(), generation_config=None, tokenizer_config=None):
    dst.mkdir()
    data = json.loads((src / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in drop]
    (dst / "tokenizer.json").write_text(json.dumps(data))
    if generation_config is not None:
        (dst / "generation_config.json").write_text(json.dumps(generation_config))
    if tokenizer_config is not None:
        (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return dst


def test_stop_tokens_base_and_instruct(trained, tmp_path):
    src, tok = trained
    eot, im_end = tok.endoftext_id, tok.im_end_id
    # Qwen2.5 base: generation_config eos = <|endoftext|>; instruct: [<|im_end|>, <|endoftext|>]
    base = Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "base", generation_config={"eos_token_id": eot},
                                              tokenizer_config={"eos_token": "<|endoftext|>"}))
    instruct = Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "inst",
                                                  generation_config={"eos_token_id": [im_end, eot]},
                                                  tokenizer_config={"eos_token": {"content": "<|im_end|>"}}))
    only_tc = Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "tc", tokenizer_config={"eos_token": "<|endoftext|>"}))
    assert base.eos_ids == [eot, im_end]       # the end of a ChatML turn stops generation too
    assert instruct.eos_ids == [im_end, eot]
    assert only_tc.eos_ids == [eot, im_end]
    assert base.pad_id == instruct.pad_id == eot


def test_pose_placeholder_fallback_and_error(trained, tmp_path):
    src, tok = trained
    fallback = Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "a", drop={"<|video_pad|>"}))
    assert fallback.pose_token == "<|vision_pad|>"
    # Qwen2 (not 2.5) tokenizers have none of them: a new special token past the vocabulary
    qwen2 = Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "b",
                                               drop={"<|video_pad|>", "<|vision_pad|>", "<|image_pad|>"}))
    assert qwen2.pose_token == "<|pose|>" and qwen2.pose_token_id == qwen2.vocab_size - 1
    assert qwen2.pose_token_id not in qwen2.encode("pose tokens are not text")
    with pytest.raises(ValueError, match="im_start"):
        Tokenizer.from_dir(_copy_tokenizer(src, tmp_path / "c", drop={"<|im_start|>"}))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
