"""The words of a text that signs carry: what the word head learns and what the tail is measured on.

    word_tokens      a text's words that may have a sign of their own, in order (stop words out)
    words_of         the word head's targets of a text: its words, and "?" for a question
    word_vocabulary  the head's words: a split's most frequent

Used by data.py (the head's targets), eval.py (word_recall_by_freq), lexicon.py (a dictionary's
words in a text). Tests: tests/test_translator.py, tests/test_eval.py.

    word_tokens("Does the boy not eat?")   # ['boy', 'not', 'eat']
"""
import re
from collections import Counter

STOP_WORDS = frozenset("a an the is are am was were be been being to of do does did".split())
_WORD = re.compile(r"[a-z0-9']+")


def word_tokens(text: str) -> list[str]:
    """The words of a text that may have a sign of their own, in order: lowercased, without the
    articles, copulas and auxiliaries that sign languages mostly do not sign ('not' stays: it is signed)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def words_of(text: str) -> set[str]:
    """The word head's targets of a text: its word_tokens, and "?" for a question (a sentence
    type the face may carry alone: raised or drawn brows, no manual sign)."""
    return set(word_tokens(text)) | ({"?"} if "?" in text else set())


def word_vocabulary(texts: list[str], size: int) -> list[str]:
    """The `size` most frequent words (words_of) of `texts`, ties in alphabetical order: the
    targets of the pose encoder's word head. The training split's texts give the same list on
    every rank and on every resumption."""
    counts = Counter(w for t in texts for w in words_of(t))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
