"""The sentences of synth/zipf.py's corpora: a vocabulary of ~330 English words drawn with
Zipfian frequencies, fingerspelled names, and the same sentence as glosses in signing order.

A grammar of its own (no sentence type or word list shared with synth/demo_grammar.py or
synth/kinds_grammar.py): subjects (a person, "my"/"our"/"your" + a person, a name, "my friend" +
a name), transitive verbs in three tenses, objects with an optional adjective, predicate
adjectives, time words, negation, yes/no and wh-questions. Within each word class the words are
ranked by a seeded permutation (`Vocabulary(seed)`) and drawn with probability proportional to
1 / rank (Zipf's law), so a corpus has a few frequent words and a long tail of rare ones, and two
vocabulary seeds rank the words differently. Names are glossed FS:NAME, signed letter by letter.
The English says nothing the signs do not: the time word sets the tense (none: the present),
each thing has its own article ("the", or "a"/"an").

Signing order (time-topic-comment, as synth/kinds_grammar.py; non-manual markers beside it):
TIME OBJECT (ADJ) SUBJECT VERB (NO) (QUESTION) (WHO|WHAT). Negation and yes/no questions are
marked by the face (a head shake; raised brows) on every such sentence; whether the manual sign
NO or QUESTION is signed too is the corpus generator's choice (synth/zipf.py, about half).

    vocab = Vocabulary(seed=0)
    s = vocab.sentence(np.random.default_rng(1))   # Sentence(text, glosses, marker)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PEOPLE = """lawyer guard cousin friend doctor teacher baker farmer driver nurse chef pilot soldier student
worker neighbour uncle aunt sister brother mother father grandmother grandfather boss clerk judge singer
dancer painter tailor barber waiter priest poet child baby king queen""".split()
NAMES = """Sita Ravi Anil Maya Omar Lena Kiran Asha Raj Nina Tara Vijay Priya Arun Meena Dev Leela Sunil Rani
Amit""".split()
# base, third person singular, past; the sign is the base form's
VERBS = {base: (third, past) for base, third, past in map(str.split, """
pay pays paid, hide hides hid, paint paints painted, wash washes washed, carry carries carried,
sell sells sold, buy buys bought, open opens opened, close closes closed, find finds found, lose loses lost,
fix fixes fixed, throw throws threw, push pushes pushed, pull pulls pulled, draw draws drew,
cook cooks cooked, clean cleans cleaned, cut cuts cut, bring brings brought, send sends sent,
keep keeps kept, take takes took, catch catches caught, break breaks broke, drop drops dropped,
fill fills filled, fold folds folded, hold holds held, lift lifts lifted, move moves moved,
order orders ordered, pack packs packed, plant plants planted, polish polishes polished, rent rents rented,
repair repairs repaired, return returns returned, save saves saved, share shares shared, steal steals stole,
touch touches touched, wrap wraps wrapped, count counts counted, check checks checked,
borrow borrows borrowed, burn burns burned, boil boils boiled, weigh weighs weighed, mend mends mended,
bake bakes baked, chop chops chopped, tie ties tied, shake shakes shook, kick kicks kicked, hit hits hit,
eat eats ate, watch watches watched, want wants wanted, like likes liked""".replace("\n", " ").split(", "))}
OBJECTS = """chicken film spoon box chair cup flower fish letter egg hat shirt car table window bicycle door key
picture book pen bag coat shoe bottle bowl plate knife fork basket bucket ladder rope candle lamp clock mirror
pillow blanket towel soap brush comb ring wallet ticket map phone radio camera kite ball drum guitar flute bell
umbrella tent boat cart wheel hammer shovel sack jar jug kettle pot pan oven stove fan bed sofa carpet curtain
vase card stamp coin parcel gift toy doll puzzle helmet glove scarf belt button needle paper envelope cake bread
rice apple mango banana onion potato tomato cheese""".split()
ADJECTIVES = """red blue green yellow black white old new big small heavy broken dirty wet dry cheap expensive hot
cold long short soft hard sharp round empty full strange pretty ugly""".split()
STATES = "late early sick happy tired angry busy famous lucky hungry".split()   # predicates of people
TIMES = {"yesterday": "past", "tomorrow": "future", "today": "present", "tonight": "future", "soon": "future",
         "later": "future", "now": "present", "recently": "past"}
OWNERS = ["my", "our", "your"]
FORMS = {"statement": 8, "negative": 3, "yes_no": 3, "who": 1.5, "what": 1.5, "state": 3}
MARKERS = {"negative": "negation", "yes_no": "question", "who": "wh", "what": "wh"}
SIGNS = sorted({*PEOPLE, *VERBS, *OBJECTS, *ADJECTIVES, *STATES, *TIMES, *OWNERS, "not", "question", "who", "what"})
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]


@dataclass(frozen=True)
class Sentence:
    text: str                  # the English (the CSV's text)
    glosses: tuple[str, ...]   # signing order; a name is FS:NAME (synth/zipf.py spells it)
    marker: str                # "", "negation", "question" or "wh": what the face shows


class Vocabulary:
    """Zipfian draws from each word class: a seeded ranking, probability 1 / rank."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng([seed, 23])
        self.ranked = {name: [words[i] for i in rng.permutation(len(words))] for name, words in (
            ("people", PEOPLE), ("names", NAMES), ("verbs", sorted(VERBS)), ("objects", OBJECTS),
            ("adjectives", ADJECTIVES), ("states", STATES), ("times", sorted(TIMES)), ("owners", OWNERS))}
        self.weights = {k: 1 / np.arange(1, len(v) + 1) for k, v in self.ranked.items()}
        for w in self.weights.values():
            w /= w.sum()
        # each thing has its own article (no sign says "a" or "the": a random one could not be read)
        self.article = {o: "the" if rng.random() < .5 else "an" if o[0] in "aeiou" else "a" for o in OBJECTS}

    def draw(self, rng: np.random.Generator, cls: str) -> str:
        return self.ranked[cls][int(rng.choice(len(self.ranked[cls]), p=self.weights[cls]))]

    def subject(self, rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """(English words, glosses) of a subject."""
        kind = rng.choice(4, p=[.4, .25, .2, .15])
        if kind == 0:
            person = self.draw(rng, "people")
            return ["the", person], [person]
        if kind == 1:
            owner, person = self.draw(rng, "owners"), self.draw(rng, "people")
            return [owner, person], [owner, person]
        name = self.draw(rng, "names")
        if kind == 2:
            return [name], [f"FS:{name}"]
        return ["my", "friend", name], ["my", "friend", f"FS:{name}"]

    def sentence(self, rng: np.random.Generator) -> Sentence:
        form = str(rng.choice(list(FORMS), p=np.array(list(FORMS.values())) / sum(FORMS.values())))
        time = self.draw(rng, "times") if rng.random() < .5 else None
        tense = TIMES[time] if time else "present"   # the time word sets the tense, as it is signed
        if form == "state":
            return self.state(rng, time, tense, str(rng.choice(["statement", "negative", "yes_no"], p=[.6, .2, .2])))
        return self.clause(rng, form, time, tense)

    def clause(self, rng: np.random.Generator, form: str, time: str | None, tense: str) -> Sentence:
        """'My friend Sita hides the chicken.' = (TIME) chicken FRIEND... hide; questions, negation, wh."""
        subj, subj_g = self.subject(rng)
        verb = self.draw(rng, "verbs")
        third, past = VERBS[verb]
        adj = self.draw(rng, "adjectives") if rng.random() < .35 else None
        obj = self.draw(rng, "objects")
        o = [self.article[obj], *([adj] if adj else []), obj]
        if o[0] != "the":                                          # a or an, by the next word
            o[0] = "an" if o[1][0] in "aeiou" else "a"
        aux = {"past": "did", "future": "will"}.get(tense, "does")
        finite = {"past": past, "future": f"will {verb}"}.get(tense, third)
        words = {"statement": [*subj, finite, *o], "negative": [*subj, aux, "not", verb, *o],
                 "yes_no": [aux, *subj, verb, *o], "who": ["who", finite, *o],
                 "what": ["what", aux, *subj, verb]}[form] + ([time] if time else [])
        topic = [obj, *([adj] if adj else [])]
        glosses = ([time] if time else []) + {"who": topic, "what": subj_g}.get(form, topic + subj_g) + [verb] + \
            {"negative": ["not"], "yes_no": ["question"], "who": ["who"], "what": ["what"]}.get(form, [])
        return _sentence(words, glosses, form)

    def state(self, rng: np.random.Generator, time: str | None, tense: str, form: str) -> Sentence:
        """'The guard will be late tomorrow.' = (TIME) guard late; 'Is the film broken?'"""
        if rng.random() < .5:
            subj, subj_g = self.subject(rng)
            adj = self.draw(rng, "states")
        else:
            obj = self.draw(rng, "objects")
            subj, subj_g, adj = ["the", obj], [obj], self.draw(rng, "adjectives")
        be = {"past": "was", "future": "will be"}.get(tense, "is")
        words = {"statement": [*subj, be, adj], "negative": [*subj, *be.split()[:1], "not", *be.split()[1:], adj],
                 "yes_no": [*be.split()[:1], *subj, *be.split()[1:], adj]}[form] + ([time] if time else [])
        glosses = ([time] if time else []) + subj_g + [adj] + \
            {"negative": ["not"], "yes_no": ["question"]}.get(form, [])
        return _sentence(words, glosses, form)


def _sentence(words: list[str], glosses: list[str], form: str) -> Sentence:
    text = " ".join(words)
    question = form in ("yes_no", "who", "what")
    return Sentence(text[0].upper() + text[1:] + ("?" if question else "."), tuple(glosses), MARKERS.get(form, ""))
