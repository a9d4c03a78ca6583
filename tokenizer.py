"""Qwen's tokenizer and chat format, on the `tokenizers` package alone.

What this is:
  - `Tokenizer.from_dir(ckpt)`: the byte-level BPE of a Qwen2 / Qwen2.5 checkpoint, read from
    its tokenizer.json (+ tokenizer_config.json / generation_config.json for the stop tokens),
    or, where a repository ships no tokenizer.json, built from vocab.json + merges.txt with
    Qwen2's normaliser and pre-tokenizer and the added tokens of tokenizer_config.json's
    `added_tokens_decoder` / added_tokens.json at their own ids (as transformers' Qwen2Tokenizer).
  - `Tokenizer.chat(messages, add_generation_prompt)`: the ChatML prompt exactly as
    Qwen2.5-Instruct's chat template renders it (no tools), as token ids:
        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n
    When the first message is not a system message the template inserts Qwen's default one.
  - `pose_token_id`: a special token that never comes out of encoding plain text, used as the
    placeholder where the pose encoder's soft tokens are spliced into the prompt (Qwen2.5's
    `<|video_pad|>`; added as `<|pose|>` to Qwen2 tokenizers, which lack it).
  - `train_bpe(texts, vocab_size, out_dir)`: a small byte-level BPE with Qwen's pre-tokenizer
    and special tokens, so the tiny CPU config needs no download.

References:
  - Qwen2 / Qwen2.5 tokenizer.json and tokenizer_config.json (chat_template) on the Hugging
    Face Hub, e.g. Qwen/Qwen2.5-7B-Instruct.
  - ChatML: https://github.com/openai/openai-python/blob/release-v0.28.0/chatml.md
  - Hugging Face `tokenizers`: https://huggingface.co/docs/tokenizers
  - transformers, models/qwen2/tokenization_qwen2.py (the pipeline built from vocab + merges)

Run: nothing to run; `python -m pytest -q tests/test_tokenizer.py` checks it against
transformers' `apply_chat_template` with the real Qwen2.5 template, and
`tests/test_qwen_files.py` on the real Qwen2 vocabulary (../shared/fixtures/qwen2_tokenizer).
"""
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _HFTokenizer

# Qwen2's pre-tokenizer split (tokenizer.json): like GPT-4's but digits one at a time (\p{N}).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5's special tokens, ids 151643..151656 in its vocabulary (in this order).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Placeholder for the pose tokens, in order of preference. Each is a special token of Qwen2.5
# that plain text never encodes to. Qwen2 (not 2.5) tokenizers have none of them: there we add
# POSE_TOKEN_FALLBACK as a new special token. Its id (the tokenizer's size) is one of the spare
# rows every Qwen2 embedding matrix has past the tokenizer (e.g. 151646 < 152064); the row's
# value never matters, since the encoder's soft tokens replace it before the first layer.
POSE_TOKEN_CANDIDATES = ("<|video_pad|>", "<|vision_pad|>", "<|image_pad|>")
POSE_TOKEN_FALLBACK = "<|pose|>"
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def render_chat(messages: list[dict], add_generation_prompt: bool) -> str:
    """The text Qwen2.5-Instruct's chat template renders for plain (no tool) messages."""
    if not messages:
        raise ValueError("chat: messages is empty")
    text = ""
    if messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def _token_name(value) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    """A Qwen tokenizer: encode / decode, ChatML prompts, stop, pad and pose-placeholder ids."""

    def __init__(self, tok: _HFTokenizer, eos_ids: list[int] | None = None, pad_token: str | None = None,
                 name: str = "tokenizer"):
        self._tok = tok
        self.name = name
        self.im_start_id = self._require("<|im_start|>")
        self.im_end_id = self._require("<|im_end|>")
        self.endoftext_id = self._require("<|endoftext|>")
        # Stop tokens: the checkpoint's own eos first (base: <|endoftext|>, instruct: <|im_end|>),
        # then <|im_end|> and <|endoftext|>. <|im_end|> is always a stop token because this project
        # trains every checkpoint, base ones included, on ChatML turns that end with it.
        self.eos_ids = list(dict.fromkeys([*(eos_ids or []), self.im_end_id, self.endoftext_id]))
        self.pad_id = self._require(pad_token) if pad_token else self.endoftext_id
        found = [t for t in POSE_TOKEN_CANDIDATES if tok.token_to_id(t) is not None]
        if not found:
            tok.add_special_tokens([POSE_TOKEN_FALLBACK])
        self.pose_token = found[0] if found else POSE_TOKEN_FALLBACK
        self.pose_token_id = tok.token_to_id(self.pose_token)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def _require(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{self.name}: token {token!r} is not in the vocabulary (not a Qwen ChatML tokenizer?)")
        return i

    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        """Read tokenizer.json, else vocab.json + merges.txt (+ the added tokens); stop and pad
        tokens from generation_config.json / tokenizer_config.json."""
        path = Path(path)
        read_json = lambda name: json.loads((path / name).read_text()) if (path / name).is_file() else {}
        tc, gc = read_json("tokenizer_config.json"), read_json("generation_config.json")
        if (path / "tokenizer.json").is_file():
            tok, name = _HFTokenizer.from_file(str(path / "tokenizer.json")), str(path / "tokenizer.json")
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok, name = _from_vocab_merges(path, tc), str(path / "vocab.json")
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json (nor vocab.json + merges.txt)")
        eos = gc.get("eos_token_id")
        if eos is None and _token_name(tc.get("eos_token")):
            eos = tok.token_to_id(_token_name(tc["eos_token"]))
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(tok, eos_ids, _token_name(tc.get("pad_token")), name=name)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Nothing is added; like Hugging Face, special-token strings in the
        text still map to their special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def chat(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        """ChatML ids of `messages` ([{"role": ..., "content": ...}]), as Qwen2.5's template."""
        return self.encode(render_chat(messages, add_generation_prompt))


def train_bpe(texts, vocab_size: int, out_dir) -> Tokenizer:
    """Train a byte-level BPE on `texts` with Qwen's normaliser, pre-tokenizer and special tokens.

    Like Qwen, the special tokens take the last 14 ids, after the learned vocabulary. The result
    has at most `vocab_size` tokens (fewer when the texts offer fewer merges). Writes tokenizer.json
    and tokenizer_config.json (instruct-style: eos <|im_end|>, pad <|endoftext|>) into out_dir and
    returns the loaded Tokenizer.
    """
    n_base = vocab_size - len(SPECIAL_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if n_base < len(alphabet):
        raise ValueError(f"train_bpe: vocab_size {vocab_size} < 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    tok = _qwen_pipeline(_HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=n_base, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Tokenizer.from_dir(out_dir)


def _qwen_pipeline(tok: _HFTokenizer) -> _HFTokenizer:
    """Qwen2's text pipeline around a BPE model, as in its tokenizer.json: NFC, the QWEN_SPLIT
    regex, byte-level mapping without a prefix space; byte-level decoding."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _from_vocab_merges(path: Path, tc: dict) -> _HFTokenizer:
    """The tokenizer of a directory that has vocab.json + merges.txt and no tokenizer.json.

    The added tokens and their ids come from tokenizer_config.json's `added_tokens_decoder`
    (with their flags: Qwen2.5 marks <tool_call> and the FIM tokens not special) and from
    added_tokens.json (content -> id; those are taken as special, as Qwen2's own
    tokenizer_config.json declares its three). The `tokenizers` library numbers a new added
    token with the next free id, so they are added in id order and each id is checked."""
    tok = _qwen_pipeline(_HFTokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))))
    added: dict[int, AddedToken] = {}
    if (path / "added_tokens.json").is_file():
        for content, i in json.loads((path / "added_tokens.json").read_text()).items():
            added[int(i)] = AddedToken(content, special=True, normalized=False)
    for i, t in (tc.get("added_tokens_decoder") or {}).items():
        added[int(i)] = AddedToken(t["content"], special=t.get("special", False),
                                   normalized=t.get("normalized", not t.get("special", False)),
                                   lstrip=t.get("lstrip", False), rstrip=t.get("rstrip", False),
                                   single_word=t.get("single_word", False))
    for i in sorted(added):
        t = added[i]
        (tok.add_special_tokens if t.special else tok.add_tokens)([t])
        if tok.token_to_id(t.content) != i:
            raise ValueError(f"{path}: added token {t.content!r} has id {i} but would get "
                             f"{tok.token_to_id(t.content)} (ids must follow the vocabulary without gaps)")
    return tok
