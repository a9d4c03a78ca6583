"""The sentences of synth/demo.py's corpus: English, and the same sentence as glosses in the order of
Indian Sign Language.

A small grammar (pronouns and possessed nouns; transitive, motion and other verbs; feelings,
qualities of things; time words; negation; yes/no and wh-questions) makes sentences of 3-8
English words. Each is signed as glosses in ISL order: time first, subject-object-verb, no
articles or copula, negation and wh-words sentence-final. Yes/no questions are marked only by
raised brows and a held last sign (marker "yes_no"), wh-questions by lowered brows ("wh"):
non-manual markers, which synth/demo.py draws on the face. LEXICON is every gloss the grammar uses;
synth.sign_for gives each its sign.

    random_sentence(rng)   one Sentence(text, glosses, marker), drawn from the grammar
    transitive, intransitive, state, describe, wh_question   the sentence types, an example each

Reference: Zeshan, "Sign Language in Indo-Pakistan" (2000): SOV order, sentence-final wh-words
and negation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRONOUNS = {"I": ("I", "1s"), "YOU": ("you", "2"), "HE": ("he", "3s"), "SHE": ("she", "3s"),
            "WE": ("we", "pl"), "THEY": ("they", "pl")}
POSSESSIVES = {"MY": "my", "YOUR": "your", "HIS": "his", "HER": "her"}
PEOPLE = ["MOTHER", "FATHER", "BROTHER", "SISTER", "FRIEND", "TEACHER", "DOCTOR", "CHILD"]
OBJECTS = {"WATER": "water", "TEA": "tea", "MILK": "milk", "FOOD": "food", "RICE": "rice",
           "BREAD": "bread", "MONEY": "money", "APPLE": "an apple", "BOOK": "a book",
           "PHONE": "a phone", "BALL": "a ball", "BAG": "a bag"}   # as the object of a verb
PLACES = {"MARKET": "to the market", "SCHOOL": "to school", "HOME": "home", "PARK": "to the park",
          "HOSPITAL": "to the hospital", "OFFICE": "to the office", "TEMPLE": "to the temple"}
VERBS = {g: f.split() for g, f in {   # base, 3rd person singular, past, -ing
    "WANT": "want wants wanted wanting", "LIKE": "like likes liked liking",
    "NEED": "need needs needed needing", "HAVE": "have has had having",
    "BUY": "buy buys bought buying", "EAT": "eat eats ate eating",
    "DRINK": "drink drinks drank drinking", "READ": "read reads read reading",
    "SEE": "see sees saw seeing", "GO": "go goes went going", "COME": "come comes came coming",
    "SLEEP": "sleep sleeps slept sleeping", "WORK": "work works worked working",
    "PLAY": "play plays played playing"}.items()}
OBJECTS_OF = {"EAT": ["FOOD", "RICE", "BREAD", "APPLE"], "DRINK": ["WATER", "TEA", "MILK"],
              "READ": ["BOOK"], **{v: list(OBJECTS) for v in ("WANT", "LIKE", "NEED", "HAVE", "BUY")}}
FEELINGS = ["HAPPY", "SAD", "TIRED", "HUNGRY", "SICK", "BUSY"]
QUALITIES = {"HOT": ["TEA", "MILK", "FOOD", "RICE", "WATER"], "COLD": ["WATER", "MILK", "TEA", "FOOD"],
             "BIG": ["BAG", "BALL", "SCHOOL", "MARKET", "PARK"], "SMALL": ["BAG", "BALL", "PHONE", "PARK"],
             "NEW": ["BOOK", "PHONE", "BAG", "SCHOOL"], "GOOD": ["FOOD", "TEA", "BOOK", "SCHOOL"]}
TIMES = ["TODAY", "TOMORROW", "YESTERDAY", "NOW"]
LEXICON = sorted({*PRONOUNS, *POSSESSIVES, *PEOPLE, *OBJECTS, *PLACES, *VERBS, *FEELINGS,
                  *QUALITIES, *TIMES, "WHAT", "WHERE", "WHO", "WHEN", "NOT", "NAME"})


@dataclass(frozen=True)
class Sentence:
    text: str                  # the English translation (the CSV's text)
    glosses: tuple[str, ...]   # the signs, in signing order
    marker: str = ""           # non-manual marker: "", "yes_no" or "wh"


def _np(glosses: tuple[str, ...]) -> tuple[str, str]:
    """A noun phrase's English and person: ("MY", "MOTHER") -> ("my mother", "3s")."""
    if glosses[0] in PRONOUNS:
        return PRONOUNS[glosses[0]]
    return " ".join(POSSESSIVES.get(g, g.lower()) for g in glosses), "3s"


def _be(person: str, past: bool = False) -> str:
    return {"1s": "was", "3s": "was"}.get(person, "were") if past else \
        {"1s": "am", "3s": "is"}.get(person, "are")


def _opt(x) -> list:
    return [x] if x else []


def _say(words: list[str], glosses: list[str], marker: str = "") -> Sentence:
    text = " ".join(words)
    return Sentence(text[0].upper() + text[1:] + ("?" if marker else "."), tuple(glosses), marker)


def transitive(subj, verb, obj, time=None, form="statement") -> Sentence:
    """'My father bought a book yesterday.' = YESTERDAY MY FATHER BOOK BUY (form: statement,
    negative or yes_no; only statements take a time word)."""
    s, person = _np(subj)
    o = OBJECTS[obj[0]] if obj[0] in OBJECTS else _np(obj)[0]
    base, third, past, _ = VERBS[verb]
    do = "does" if person == "3s" else "do"
    words = {"negative": [s, do, "not", base, o], "yes_no": [do, s, base, o]}.get(form) or (
        [s, past, o, "yesterday"] if time == "YESTERDAY" else
        [s, "will", base, o, "tomorrow"] if time == "TOMORROW" else
        [s, third if person == "3s" else base, o])
    glosses = _opt(time) + [*subj, *obj, verb] + _opt(form == "negative" and "NOT")
    return _say(words, glosses, "yes_no" if form == "yes_no" else "")


def intransitive(subj, verb, place=None, time=None) -> Sentence:
    """GO/COME take a place ('She is going to the market tomorrow.' = TOMORROW SHE MARKET GO);
    SLEEP, WORK, PLAY take none. TODAY, NOW and TOMORROW use the progressive."""
    s, person = _np(subj)
    base, third, past, ing = VERBS[verb]
    where = [PLACES[place]] if place else []
    if time == "YESTERDAY":
        words = [s, past, *where, "yesterday"]
    elif time == "TOMORROW" and not place:
        words = [s, "will", base, "tomorrow"]
    elif time:
        words = [s, _be(person), ing, *where, time.lower()]
    else:
        words = [s, third if person == "3s" else base, *where]
    return _say(words, _opt(time) + [*subj] + _opt(place) + [verb])


def state(subj, adj, time=None, form="statement") -> Sentence:
    """'I am tired now.' = NOW I TIRED; 'Are you sick?' = YOU SICK (raised brows)."""
    s, person = _np(subj)
    be, a = _be(person, time == "YESTERDAY"), adj.lower()
    words = {"negative": [s, be, "not", a], "yes_no": [be, s, a]}.get(form) or \
        [s, be, a] + _opt(time and time.lower())
    glosses = _opt(time) + [*subj, adj] + _opt(form == "negative" and "NOT")
    return _say(words, glosses, "yes_no" if form == "yes_no" else "")


def describe(owner, thing, adj) -> Sentence:
    """'The tea is hot.' = TEA HOT; 'My bag is big.' = MY BAG BIG."""
    det = POSSESSIVES[owner] if owner else "the"
    return _say([det, thing.lower(), "is", adj.lower()], _opt(owner) + [thing, adj])


def wh_question(wh, subj, verb=None) -> Sentence:
    """The wh-sign comes last: 'What does your sister like?' = YOUR SISTER LIKE WHAT,
    'Where is my phone?' = MY PHONE WHERE, 'Who is your teacher?' = YOUR TEACHER WHO,
    'Where are you going?' = YOU GO WHERE, 'When is he coming?' = HE COME WHEN."""
    s, person = _np(subj)
    if verb in ("GO", "COME"):
        words = [wh.lower(), _be(person), s, VERBS[verb][3]]
    elif verb:
        words = ["what", "does" if person == "3s" else "do", s, VERBS[verb][0]]
    else:
        words = [wh.lower(), "is", s]
    return _say(words, [*subj, *_opt(verb), wh], "wh")


def random_sentence(rng: np.random.Generator) -> Sentence:
    """One sentence of 3-8 English words from the grammar above."""
    def pick(xs):
        return xs[rng.integers(len(xs))]

    def subject(asking=False):
        if rng.random() < 0.5:
            return (pick(["YOU", "HE", "SHE", "THEY"] if asking else list(PRONOUNS)),)
        return pick(["YOUR", "HIS", "HER"] if asking else list(POSSESSIVES)), pick(PEOPLE)

    kind = pick(["transitive"] * 6 + ["motion"] * 4 + ["feeling"] * 3 + ["intransitive"] * 2
                + ["describe"] * 2 + ["negative"] * 3 + ["yes_no"] * 3 + ["wh"] * 4)
    if kind in ("transitive", "negative", "yes_no") and rng.random() < 0.75:
        verb = pick(list(OBJECTS_OF) + ["SEE"] * (kind == "transitive"))
        obj = (pick(list(POSSESSIVES)), pick(PEOPLE)) if verb == "SEE" else (pick(OBJECTS_OF[verb]),)
        actions = ("EAT", "DRINK", "BUY", "READ", "SEE")   # "will want" would sound odd
        time = pick([None, "YESTERDAY", "TOMORROW"]) if kind == "transitive" and verb in actions else None
        return transitive(subject(kind == "yes_no"), verb, obj, time, kind.replace("transitive", "statement"))
    if kind in ("feeling", "negative", "yes_no"):
        form = kind.replace("feeling", "statement")
        time = pick([None, None, "TODAY", "NOW", "YESTERDAY"]) if form == "statement" else None
        return state(subject(form == "yes_no"), pick(FEELINGS), time, form)
    if kind == "motion":
        return intransitive(subject(), pick(["GO", "COME"]), pick(list(PLACES)), pick([None, *TIMES]))
    if kind == "intransitive":
        return intransitive(subject(), pick(["SLEEP", "WORK", "PLAY"]), None, pick([None, *TIMES]))
    if kind == "describe":
        adj = pick(list(QUALITIES))
        return describe(pick([None, None, "MY", "YOUR"]), pick(QUALITIES[adj]), adj)
    owner = pick(["YOUR", "HIS", "HER"])
    return pick([lambda: wh_question("WHAT", subject(True), pick(list(OBJECTS_OF))),
                 lambda: wh_question("WHERE", subject(True), "GO"),
                 lambda: wh_question("WHEN", subject(True), "COME"),
                 lambda: wh_question("WHERE", (owner, pick([*OBJECTS, *PLACES]))),
                 lambda: wh_question("WHO", (owner, pick(PEOPLE))),
                 lambda: wh_question("WHAT", (owner, "NAME"))])()
