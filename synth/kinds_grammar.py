"""The sentences of synth/kinds.py's corpora: English, and the same sentence as glosses.

A grammar of its own, sharing no word with synth/demo_grammar.py: subjects (one, or plural: the noun
then PLURAL), verbs with the objects each takes, adjectives, time words that set the tense,
negation, yes/no and wh-questions. A sentence is signed in time-topic-comment order:
TIME OBJECT(ADJ) SUBJECT(PLURAL) VERB (NO) (QUESTION|WHO|WHAT). LEXICON is every gloss the
grammar uses; kinds.sign_for gives each its sign of each kind.

    random_sentence(rng)   one Sentence(text, glosses), drawn from the grammar
    clause, description    the two sentence types, an example each
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUBJECTS = {"BOY": "the boy", "GIRL": "the girl", "FARMER": "the farmer", "DRIVER": "the driver",
            "NURSE": "the nurse", "CHEF": "the chef", "POLICEMAN": "the policeman", "UNCLE": "my uncle",
            "AUNT": "my aunt", "NEIGHBOUR": "our neighbour"}
PLURALS = {"STUDENT": "the students", "WORKER": "the workers", "SOLDIER": "the soldiers"}  # + PLURAL
VERBS = {  # base, 3rd person singular, past: the objects the verb takes
    "CARRY": ("carry carries carried", "BOX CHAIR CUP FLOWER FISH LETTER EGG HAT"),
    "WASH": ("wash washes washed", "SHIRT CAR CUP TABLE WINDOW HAT BICYCLE"),
    "COOK": ("cook cooks cooked", "FISH EGG"),
    "SELL": ("sell sells sold", "CAR BICYCLE CHAIR TABLE HAT SHIRT FISH EGG FLOWER PICTURE BOX"),
    "OPEN": ("open opens opened", "DOOR WINDOW BOX LETTER CAR"),
    "CLOSE": ("close closes closed", "DOOR WINDOW BOX CAR"),
    "FIND": ("find finds found", "KEY HAT LETTER CUP SHIRT BOX PICTURE"),
    "LOSE": ("lose loses lost", "KEY HAT LETTER CUP SHIRT PICTURE"),
    "PAINT": ("paint paints painted", "DOOR CHAIR TABLE BOX BICYCLE CAR WINDOW PICTURE"),
    "FIX": ("fix fixes fixed", "CAR BICYCLE DOOR CHAIR TABLE WINDOW"),
    "THROW": ("throw throws threw", "EGG BOX HAT KEY CUP FLOWER LETTER"),
    "PUSH": ("push pushes pushed", "CAR BICYCLE CHAIR TABLE BOX DOOR"),
    "DRAW": ("draw draws drew", "FLOWER CAR FISH HAT BICYCLE CUP")}
OBJECTS = sorted({o for _, objs in VERBS.values() for o in objs.split()})          # 16 things
ADJECTIVES = ["RED", "BLUE", "OLD", "HEAVY", "BROKEN", "DIRTY", "WET"]
TIMES = {"LAST-NIGHT": ("last night", "past"), "THIS-MORNING": ("this morning", "past"),
         "EVERY-DAY": ("every day", "present"), "LATER": ("later", "future"), "SOON": ("soon", "future")}
FORMS = ["statement"] * 8 + ["negative"] * 3 + ["yes_no"] * 3 + ["who"] * 2 + ["what"] * 2 + ["describe"] * 3
LEXICON = sorted({*SUBJECTS, *PLURALS, *VERBS, *OBJECTS, *ADJECTIVES, *TIMES,
                  "PLURAL", "NO", "QUESTION", "WHO", "WHAT"})


@dataclass(frozen=True)
class Sentence:
    text: str                  # the English (the CSV's text)
    glosses: tuple[str, ...]   # the signs, in signing order


def _finish(words: list[str], glosses: list[str], question: bool) -> Sentence:
    text = " ".join(words)
    return Sentence(text[0].upper() + text[1:] + ("?" if question else "."), tuple(glosses))


def clause(subj: str, verb: str, obj: str, adj: str | None = None, time_: str | None = None,
           form: str = "statement") -> Sentence:
    """'The workers did not paint the red door last night.'
    = LAST-NIGHT DOOR RED WORKER PLURAL PAINT NO. The time word sets the tense."""
    plural = subj in PLURALS
    s = PLURALS[subj] if plural else SUBJECTS[subj]
    base, third, past = VERBS[verb][0].split()
    tense = TIMES[time_][1] if time_ else "present"
    o = " ".join(["the", *([adj.lower()] if adj else []), obj.lower()])
    when = [TIMES[time_][0]] if time_ else []
    aux = {"past": "did", "future": "will"}.get(tense, "do" if plural else "does")
    finite = {"past": past, "future": f"will {base}"}.get(tense, base if plural else third)
    words = {"statement": [s, finite, o], "negative": [s, aux, "not", base, o], "yes_no": [aux, s, base, o],
             "who": ["who", {"past": past, "future": f"will {base}"}.get(tense, third), o],
             "what": ["what", aux, s, base]}[form] + when
    topic = [obj, *([adj] if adj else [])]
    agent = [subj, "PLURAL"] if plural else [subj]
    glosses = ([time_] if time_ else []) + {"who": topic, "what": agent}.get(form, topic + agent) + [verb] + {
        "negative": ["NO"], "yes_no": ["QUESTION"], "who": ["WHO"], "what": ["WHAT"]}.get(form, [])
    return _finish(words, glosses, form in ("yes_no", "who", "what"))


def description(obj: str, adj: str, form: str = "statement") -> Sentence:
    """'The car is broken.' = CAR BROKEN; 'Is the cup wet?' = CUP WET QUESTION."""
    o, a = f"the {obj.lower()}", adj.lower()
    words = {"statement": [o, "is", a], "negative": [o, "is", "not", a], "yes_no": ["is", o, a]}[form]
    return _finish(words, [obj, adj] + {"negative": ["NO"], "yes_no": ["QUESTION"]}.get(form, []),
                   form == "yes_no")


def random_sentence(rng: np.random.Generator) -> Sentence:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    form = pick(FORMS)
    if form == "describe":
        return description(pick(OBJECTS), pick(ADJECTIVES), pick(["statement", "statement", "negative", "yes_no"]))
    verb = pick(list(VERBS))
    return clause(pick(list(SUBJECTS) * 2 + list(PLURALS)), verb, pick(VERBS[verb][1].split()),
                  pick(ADJECTIVES) if rng.random() < .3 else None,
                  pick(list(TIMES)) if rng.random() < .55 else None, form)
