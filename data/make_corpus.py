#!/usr/bin/env python3
"""Build the small English-German corpus that ships in ``data/``.

The corpus is written for this project: a hand-written file (``data/handwritten.tsv``)
plus sentences produced here from simple templates and word lists.  German grammar is
modelled explicitly rather than hoped for: every noun carries its gender and plural,
articles and adjective endings come from declension tables, verbs from conjugation
tables, and clauses know their own word order (verb second in main clauses, verb
first in yes/no questions, verb last in subordinate clauses, separable prefixes).

Conventions (see ``data/README.md``): everything lowercase, no punctuation except the
apostrophe inside English words (``don't``, ``o'clock``), numbers written as words,
"you" is translated with the informal ``du`` (the formal ``sie`` appears only in a few
hand-written service phrases).

Usage::

    python data/make_corpus.py            # write data/{train,valid,test}.{en,de}
    python data/make_corpus.py --show 60  # also print 60 random pairs per family
    python data/make_corpus.py --dry-run  # check only, write nothing

Standard library only, deterministic for a fixed seed.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
DATA = Path(__file__).resolve().parent  # this script lives beside the corpus it writes
HANDWRITTEN = DATA / "handwritten.tsv"

VALID_FRACTION = 0.05
TEST_FRACTION = 0.05
MIN_HANDWRITTEN = 500
MIN_PAIRS = 2000
MIN_HELDOUT = 150
MAX_WORDS = 16

# English sentences that must land in the training split (the product demo and close kin).
FORCE_TRAIN = (
    "how are you",
    "how are you today",
    "how are you doing",
    "how is your mother",
    "how is your father",
    "how are your parents",
)

Pair = tuple[str, str]


class Pairs(list[Pair]):
    """A list of (English, German) pairs with a short way to add one."""

    def add(self, en: str, de: str) -> None:
        self.append((en, de))


EN_CHARS = re.compile(r"^[a-z']+( [a-z']+)*$")
DE_CHARS = re.compile(r"^[a-zäöüß]+( [a-zäöüß]+)*$")

# --------------------------------------------------------------------------------------
# German morphology
# --------------------------------------------------------------------------------------


DEFINITE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
# Endings of ein-words (ein, kein, mein, dein, sein, ihr, unser).
EIN_ENDINGS = {
    "nom": {"m": "", "f": "e", "n": "", "pl": "e"},
    "acc": {"m": "en", "f": "e", "n": "", "pl": "e"},
    "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"},
}
# Adjective endings: weak after der-words, mixed after ein-words, strong without article.
# The strong endings are also the endings of "dieser".
WEAK = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
MIXED = {
    "nom": {"m": "er", "f": "e", "n": "es", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "es", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
STRONG = {
    "nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},
    "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
    "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"},
}
# Preposition + definite article contractions that German normally uses.
CONTRACTIONS = {
    ("zu", "dem"): "zum",
    ("zu", "der"): "zur",
    ("in", "dem"): "im",
    ("in", "das"): "ins",
    ("an", "dem"): "am",
    ("an", "das"): "ans",
    ("bei", "dem"): "beim",
    ("von", "dem"): "vom",
}


@dataclass(frozen=True)
class Noun:
    """A noun with its gender; ``gender == "pl"`` marks plural-only nouns (eltern)."""

    en: str
    de: str
    gender: str
    en_pl: str = ""
    de_pl: str = ""
    weak: str = ""  # accusative/dative singular of weak masculine nouns (nachbarn)
    tags: str = ""

    def has(self, tag: str) -> bool:
        return tag in self.tags.split()

    def g(self, plural: bool = False) -> str:
        return "pl" if plural or self.gender == "pl" else self.gender

    def form(self, case: str, plural: bool = False) -> str:
        if self.g(plural) == "pl":
            base = self.de if self.gender == "pl" else self.de_pl
            if case == "dat" and not base.endswith(("n", "s")):
                return base + "n"
            return base
        if case != "nom" and self.weak:
            return self.weak
        return self.de

    def english(self, plural: bool = False) -> str:
        return self.en_pl if plural and self.gender != "pl" else self.en

    def en_plural(self, plural: bool = False) -> bool:
        """Whether the English noun is grammatically plural (takes "are")."""
        return plural or self.gender == "pl"


@dataclass(frozen=True)
class Adj:
    en: str
    de: str
    stem: str = ""  # declension stem when it differs (teuer -> teur-)
    tags: str = ""

    def decline(self, endings: dict[str, dict[str, str]], case: str, g: str) -> str:
        return (self.stem or self.de) + endings[case][g]


def np(
    noun: Noun, case: str, det: str = "def", adj: Adj | None = None, plural: bool = False
) -> str:
    """German noun phrase.

    ``det`` is ``def`` (der), ``dies`` (dieser), ``none`` (no article) or the stem of an
    ein-word: ``ein``, ``kein``, ``mein``, ``dein``, ``sein``, ``ihr``, ``unser``.
    """
    g = noun.g(plural)
    if det == "def":
        article, endings = DEFINITE[case][g], WEAK
    elif det == "dies":
        article, endings = "dies" + STRONG[case][g], WEAK
    elif det == "none" or (det == "ein" and g == "pl"):
        article, endings = "", STRONG
    else:
        article, endings = det + EIN_ENDINGS[case][g], MIXED
    words = [article, adj.decline(endings, case, g) if adj else "", noun.form(case, plural)]
    return join(*words)


def pp(
    prep: str,
    noun: Noun,
    case: str,
    det: str = "def",
    adj: Adj | None = None,
    plural: bool = False,
) -> str:
    """German prepositional phrase with the usual contractions (zum, zur, im, ins, am)."""
    phrase = np(noun, case, det, adj, plural)
    article, _, rest = phrase.partition(" ")
    if det == "def" and (prep, article) in CONTRACTIONS:
        return join(CONTRACTIONS[(prep, article)], rest)
    return join(prep, phrase)


def verb(inf: str, singular: str = "", plural: str = "") -> dict[str, str]:
    """Present tense of a German verb: regular unless the singular forms are given."""
    if singular:
        s1, s2, s3 = singular.split()
    else:
        stem = inf[:-2] if inf.endswith("en") else inf[:-1]
        if stem.endswith(("t", "d")):
            s1, s2, s3 = stem + "e", stem + "est", stem + "et"
        elif stem.endswith(("s", "ß", "z")):
            s1, s2, s3 = stem + "e", stem + "t", stem + "t"
        else:
            s1, s2, s3 = stem + "e", stem + "st", stem + "t"
    pl = plural or inf
    return {"1sg": s1, "2sg": s2, "3sg": s3, "1pl": pl, "3pl": pl}


SEIN = verb("sein", "bin bist ist", "sind")
WAR = verb("waren", "war warst war", "waren")
HABEN = verb("haben", "habe hast hat")
KOENNEN = verb("können", "kann kannst kann")
MUESSEN = verb("müssen", "muss musst muss")
MOEGEN = verb("mögen", "mag magst mag")
ESSEN = verb("essen", "esse isst isst")
SPRECHEN = verb("sprechen", "spreche sprichst spricht")
FAHREN = verb("fahren", "fahre fährst fährt")
NEHMEN = verb("nehmen", "nehme nimmst nimmt")
TRAGEN = verb("tragen", "trage trägst trägt")
HELFEN = verb("helfen", "helfe hilfst hilft")
FANGEN = verb("fangen", "fange fängst fängt")  # anfangen
VERLASSEN = verb("verlassen", "verlasse verlässt verlässt")
KOMMEN = verb("kommen")


def join(*words: str) -> str:
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class Clause:
    """A German clause that can be put into main, inverted, question or subordinate order.

    ``fin`` is the finite verb, ``mid`` everything between it and the clause end,
    ``end`` an infinitive or participle, ``sep`` a separable prefix.
    """

    subj: str
    fin: str
    mid: str = ""
    end: str = ""
    sep: str = ""

    def main(self) -> str:
        return join(self.subj, self.fin, self.mid, self.end, self.sep)

    def front(self, first: str) -> str:
        """Verb second after a fronted element: "heute ist es kalt"."""
        return join(first, self.fin, self.subj, self.mid, self.end, self.sep)

    def question(self) -> str:
        """Verb first: "ist es kalt", also the main clause after a wenn-clause."""
        return join(self.fin, self.subj, self.mid, self.end, self.sep)

    def sub(self) -> str:
        """Verb last: "dass er um sieben uhr aufsteht"."""
        return join(self.subj, self.mid, self.end, self.sep + self.fin)


# --------------------------------------------------------------------------------------
# English helpers
# --------------------------------------------------------------------------------------


def a(phrase: str) -> str:
    """English indefinite article."""
    vowel = phrase[0] in "aeiou" and not phrase.startswith(("uni", "eu", "one"))
    return ("an " if vowel or phrase.startswith("hour") else "a ") + phrase


@dataclass(frozen=True)
class Subject:
    en: str
    de: str
    person: str
    poss_en: str
    poss_de: str  # ein-word stem

    @property
    def third(self) -> bool:
        return self.person == "3sg"

    @property
    def be(self) -> str:
        return {"1sg": "am", "3sg": "is"}.get(self.person, "are")

    @property
    def was(self) -> str:
        return "was" if self.person in ("1sg", "3sg") else "were"

    @property
    def do(self) -> str:
        return "does" if self.third else "do"

    @property
    def dont(self) -> str:
        return "doesn't" if self.third else "don't"

    @property
    def have(self) -> str:
        return "has" if self.third else "have"

    def v(self, base: str, third: str = "") -> str:
        """English present tense: v("go", "goes")."""
        return (third or base + "s") if self.third else base

    @property
    def asks(self) -> bool:
        """Whether a yes/no question about this subject sounds natural ("do i ..." does not)."""
        return self.en not in ("i", "we")

    @property
    def pronoun(self) -> Subject:
        """The personal pronoun that refers back to this subject."""
        if self.person == "3pl":
            return PRONOUNS[5]
        if self.person == "3sg":
            return PRONOUNS[2] if self.poss_en == "his" else PRONOUNS[3]
        return self


PRONOUNS = [
    Subject("i", "ich", "1sg", "my", "mein"),
    Subject("you", "du", "2sg", "your", "dein"),
    Subject("he", "er", "3sg", "his", "sein"),
    Subject("she", "sie", "3sg", "her", "ihr"),
    Subject("we", "wir", "1pl", "our", "unser"),
    Subject("they", "sie", "3pl", "their", "ihr"),
]
NAMED = [
    Subject("my brother", "mein bruder", "3sg", "his", "sein"),
    Subject("my sister", "meine schwester", "3sg", "her", "ihr"),
    Subject("my parents", "meine eltern", "3pl", "their", "ihr"),
    Subject("the children", "die kinder", "3pl", "their", "ihr"),
    Subject("anna", "anna", "3sg", "her", "ihr"),
    Subject("tom", "tom", "3sg", "his", "sein"),
]
SUBJECTS = PRONOUNS + NAMED

# --------------------------------------------------------------------------------------
# Numbers and clock times
# --------------------------------------------------------------------------------------

EN_NUM = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
DE_NUM = [
    "null",
    "eins",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
]
EN_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DE_TENS = ["zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]


def num_en(n: int) -> str:
    if n < 20:
        return EN_NUM[n]
    if n == 100:
        return "a hundred"
    tens, unit = divmod(n, 10)
    return join(EN_TENS[tens - 2], EN_NUM[unit] if unit else "")


def num_de(n: int) -> str:
    if n < 20:
        return DE_NUM[n]
    if n == 100:
        return "hundert"
    tens, unit = divmod(n, 10)
    if not unit:
        return DE_TENS[tens - 2]
    return ("ein" if unit == 1 else DE_NUM[unit]) + "und" + DE_TENS[tens - 2]


@dataclass(frozen=True)
class Time:
    en: str  # "half past seven"
    de: str  # "halb acht"
    hour: int  # 1..12, the hour the English names
    kind: str  # oclock, half, quarter, minutes


def clock_times() -> list[Time]:
    times = []
    for h in range(1, 13):
        nxt = h % 12 + 1
        times.append(
            Time(f"{num_en(h)} o'clock", f"{'ein' if h == 1 else num_de(h)} uhr", h, "oclock")
        )
        times.append(Time(f"half past {num_en(h)}", f"halb {num_de(nxt)}", h, "half"))
        times.append(Time(f"quarter past {num_en(h)}", f"viertel nach {num_de(h)}", h, "quarter"))
        times.append(Time(f"quarter to {num_en(nxt)}", f"viertel vor {num_de(nxt)}", h, "quarter"))
        for m in (5, 10, 20):
            times.append(
                Time(f"{num_en(m)} past {num_en(h)}", f"{num_de(m)} nach {num_de(h)}", h, "minutes")
            )
            times.append(
                Time(
                    f"{num_en(m)} to {num_en(nxt)}", f"{num_de(m)} vor {num_de(nxt)}", h, "minutes"
                )
            )
    return times


TIMES = clock_times()


def times_between(first: int, last: int, kinds: str = "oclock half quarter") -> list[Time]:
    return [t for t in TIMES if first <= t.hour <= last and t.kind in kinds.split()]


# --------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------

RELATIVES = [
    Noun("father", "vater", "m", "fathers", "väter", tags="adult"),
    Noun("mother", "mutter", "f", "mothers", "mütter", tags="adult"),
    Noun("brother", "bruder", "m", "brothers", "brüder", tags="sibling"),
    Noun("sister", "schwester", "f", "sisters", "schwestern", tags="sibling"),
    Noun("son", "sohn", "m", "sons", "söhne", tags="child"),
    Noun("daughter", "tochter", "f", "daughters", "töchter", tags="child"),
    Noun("grandfather", "großvater", "m", "grandfathers", "großväter", tags="old"),
    Noun("grandmother", "großmutter", "f", "grandmothers", "großmütter", tags="old"),
    Noun("uncle", "onkel", "m", "uncles", "onkel", tags="adult"),
    Noun("aunt", "tante", "f", "aunts", "tanten", tags="adult"),
    Noun("husband", "mann", "m", "husbands", "männer", tags="adult"),
    Noun("wife", "frau", "f", "wives", "frauen", tags="adult"),
    Noun("friend", "freund", "m", "friends", "freunde", tags="sibling"),
    Noun("girlfriend", "freundin", "f", "girlfriends", "freundinnen", tags="sibling"),
    Noun("cousin", "cousin", "m", "cousins", "cousins", tags="sibling"),
    Noun("neighbour", "nachbar", "m", "neighbours", "nachbarn", weak="nachbarn", tags="adult"),
    Noun("colleague", "kollege", "m", "colleagues", "kollegen", weak="kollegen", tags="adult"),
    Noun("boss", "chef", "m", "bosses", "chefs", tags="adult"),
    Noun("baby", "baby", "n", "babies", "babys", tags="baby"),
    Noun("parents", "eltern", "pl", tags="adult"),
    Noun("grandparents", "großeltern", "pl", tags="old"),
    Noun("children", "kinder", "pl", tags="child"),
]
GRANDMOTHER = RELATIVES[7]


def fits(poss_en: str, relative: Noun) -> bool:
    """Leave out odd combinations such as "our girlfriend" or "his husband"."""
    partners = {
        "husband": ("my", "your", "her"),
        "wife": ("my", "your", "his"),
        "girlfriend": ("my", "your", "his"),
    }
    return poss_en in partners.get(relative.en, (poss_en,))


AGE_RANGES = {"adult": (30, 60), "sibling": (8, 35), "child": (3, 17), "old": (65, 95)}

FAMILY_STATES = [
    ("tired", "müde"),
    ("ill", "krank"),
    ("happy", "glücklich"),
    ("at home", "zu hause"),
    ("at work", "bei der arbeit"),
    ("in the garden", "im garten"),
    ("in the kitchen", "in der küche"),
    ("very nice", "sehr nett"),
    ("on holiday", "im urlaub"),
    ("at the doctor's", "beim arzt"),
    ("not at home", "nicht zu hause"),
    ("still in bed", "noch im bett"),
]

DRINKS = [
    Noun("coffee", "kaffee", "m"),
    Noun("tea", "tee", "m"),
    Noun("water", "wasser", "n"),
    Noun("milk", "milch", "f"),
    Noun("orange juice", "orangensaft", "m"),
    Noun("apple juice", "apfelsaft", "m"),
    Noun("beer", "bier", "n"),
    Noun("wine", "wein", "m"),
    Noun("lemonade", "limonade", "f"),
]
FOODS = [
    Noun("bread", "brot", "n"),
    Noun("rice", "reis", "m"),
    Noun("fish", "fisch", "m"),
    Noun("meat", "fleisch", "n"),
    Noun("soup", "suppe", "f"),
    Noun("cheese", "käse", "m"),
    Noun("pasta", "nudeln", "pl"),
    Noun("fruit", "obst", "n"),
    Noun("vegetables", "gemüse", "n"),
    Noun("chocolate", "schokolade", "f"),
    Noun("eggs", "eier", "pl"),
    Noun("potatoes", "kartoffeln", "pl"),
    Noun("chicken", "hähnchen", "n"),
    Noun("salad", "salat", "m"),
    Noun("cake", "kuchen", "m"),
    Noun("ice cream", "eis", "n"),
    Noun("apples", "äpfel", "pl"),
    Noun("sausages", "würstchen", "pl"),
]
# Things to order: (noun, optional adjective).
ORDERS: list[tuple[Noun, Adj | None]] = [
    (Noun("coffee", "kaffee", "m"), None),
    (Noun("tea", "tee", "m"), None),
    (Noun("beer", "bier", "n"), None),
    (Noun("glass of water", "glas wasser", "n"), None),
    (Noun("glass of wine", "glas wein", "n"), None),
    (Noun("glass of milk", "glas milch", "n"), None),
    (Noun("cup of tea", "tasse tee", "f"), None),
    (Noun("cup of coffee", "tasse kaffee", "f"), None),
    (Noun("bottle of water", "flasche wasser", "f"), None),
    (Noun("orange juice", "orangensaft", "m"), None),
    (Noun("bread roll", "brötchen", "n"), None),
    (Noun("soup", "suppe", "f"), None),
    (Noun("salad", "salat", "m"), None),
    (Noun("pizza", "pizza", "f"), None),
    (Noun("piece of cake", "stück kuchen", "n"), None),
    (Noun("ice cream", "eis", "n"), None),
    (Noun("apple", "apfel", "m"), None),
    (Noun("banana", "banane", "f"), None),
    (Noun("lemonade", "limonade", "f"), None),
    (Noun("sandwich", "sandwich", "n"), None),
    (Noun("pretzel", "brezel", "f"), None),
    (Noun("hamburger", "hamburger", "m"), None),
    (Noun("chocolate", "schokolade", "f"), Adj("hot", "heiß")),
    (Noun("tea", "tee", "m"), Adj("green", "grün")),
    (Noun("water", "wasser", "n"), Adj("still", "still")),
]
# Food that can be described: noun, and which adjectives make sense.
DISHES = [
    Noun("coffee", "kaffee", "m", tags="temp sweet"),
    Noun("tea", "tee", "m", tags="temp sweet"),
    Noun("soup", "suppe", "f", tags="temp salty spicy"),
    Noun("bread", "brot", "n", tags="fresh"),
    Noun("cake", "kuchen", "m", tags="fresh sweet"),
    Noun("cheese", "käse", "m", tags="fresh salty"),
    Noun("fish", "fisch", "m", tags="fresh salty"),
    Noun("pizza", "pizza", "f", tags="temp salty spicy"),
    Noun("salad", "salat", "m", tags="fresh"),
    Noun("milk", "milch", "f", tags="fresh temp"),
    Noun("beer", "bier", "n", tags="temp"),
    Noun("meat", "fleisch", "n", tags="salty spicy"),
    Noun("chocolate", "schokolade", "f", tags="sweet"),
    Noun("sauce", "soße", "f", tags="salty spicy sweet"),
    Noun("apple", "apfel", "m", "apples", "äpfel", tags="fresh sweet"),
    Noun("strawberry", "erdbeere", "f", "strawberries", "erdbeeren", tags="fresh sweet"),
    Noun("tomato", "tomate", "f", "tomatoes", "tomaten", tags="fresh"),
    Noun("potato", "kartoffel", "f", "potatoes", "kartoffeln", tags="temp salty"),
]
DISH_ADJS = [
    ("hot", "heiß", "temp"),
    ("cold", "kalt", "temp"),
    ("fresh", "frisch", "fresh"),
    ("sweet", "süß", "sweet"),
    ("too sweet", "zu süß", "sweet"),
    ("salty", "salzig", "salty"),
    ("too salty", "zu salzig", "salty"),
    ("spicy", "scharf", "spicy"),
    ("delicious", "lecker", ""),
    ("very good", "sehr gut", ""),
    ("not good", "nicht gut", ""),
]

WEATHER_ADJS = [
    Adj("cold", "kalt", tags="winter autumn"),
    Adj("warm", "warm", tags="summer spring"),
    Adj("hot", "heiß", tags="summer"),
    Adj("sunny", "sonnig", tags="summer spring"),
    Adj("windy", "windig", tags="autumn spring"),
    Adj("cloudy", "bewölkt", tags="autumn winter"),
    Adj("foggy", "neblig", tags="autumn winter"),
    Adj("cool", "kühl", tags="autumn spring"),
    Adj("nice", "schön", tags="summer spring"),
    Adj("humid", "schwül", tags="summer"),
]
# (English progressive, English third person, English past, English infinitive,
#  German finite verb, German infinitive, German participle, seasons)
WEATHER_VERBS = [
    ("raining", "rains", "rained", "rain", "regnet", "regnen", "geregnet", "autumn spring"),
    ("snowing", "snows", "snowed", "snow", "schneit", "schneien", "geschneit", "winter"),
]
SEASONS = [("winter", "winter"), ("summer", "sommer"), ("spring", "frühling"), ("autumn", "herbst")]

COUNTRIES = [
    ("germany", "deutschland", "german", "deutsch"),
    ("austria", "österreich", "german", "deutsch"),
    ("italy", "italien", "italian", "italienisch"),
    ("spain", "spanien", "spanish", "spanisch"),
    ("france", "frankreich", "french", "französisch"),
    ("england", "england", "english", "englisch"),
    ("poland", "polen", "polish", "polnisch"),
    ("sweden", "schweden", "swedish", "schwedisch"),
    ("norway", "norwegen", "norwegian", "norwegisch"),
    ("denmark", "dänemark", "danish", "dänisch"),
    ("greece", "griechenland", "greek", "griechisch"),
    ("portugal", "portugal", "portuguese", "portugiesisch"),
    ("japan", "japan", "japanese", "japanisch"),
    ("china", "china", "chinese", "chinesisch"),
    ("canada", "kanada", "english", "englisch"),
    ("australia", "australien", "english", "englisch"),
    ("brazil", "brasilien", "portuguese", "portugiesisch"),
    ("mexico", "mexiko", "spanish", "spanisch"),
    ("ireland", "irland", "english", "englisch"),
    ("russia", "russland", "russian", "russisch"),
]
CITIES = [
    ("berlin", "berlin", "germany"),
    ("hamburg", "hamburg", "germany"),
    ("munich", "münchen", "germany"),
    ("cologne", "köln", "germany"),
    ("frankfurt", "frankfurt", "germany"),
    ("dresden", "dresden", "germany"),
    ("leipzig", "leipzig", "germany"),
    ("bremen", "bremen", "germany"),
    ("vienna", "wien", "austria"),
    ("salzburg", "salzburg", "austria"),
    ("paris", "paris", "france"),
    ("london", "london", "england"),
    ("rome", "rom", "italy"),
    ("venice", "venedig", "italy"),
    ("milan", "mailand", "italy"),
    ("madrid", "madrid", "spain"),
    ("lisbon", "lissabon", "portugal"),
    ("warsaw", "warschau", "poland"),
    ("athens", "athen", "greece"),
    ("copenhagen", "kopenhagen", "denmark"),
    ("stockholm", "stockholm", "sweden"),
    ("tokyo", "tokio", "japan"),
]
COUNTRY_DE = {en: de for en, de, _, _ in COUNTRIES}

# Places in town. Tag "open": has opening hours.
PLACES = [
    Noun("station", "bahnhof", "m", "stations", "bahnhöfe"),
    Noun("post office", "post", "f", tags="open"),
    Noun("bank", "bank", "f", "banks", "banken", tags="open"),
    Noun("supermarket", "supermarkt", "m", "supermarkets", "supermärkte", tags="open"),
    Noun("pharmacy", "apotheke", "f", "pharmacies", "apotheken", tags="open"),
    Noun("bakery", "bäckerei", "f", "bakeries", "bäckereien", tags="open"),
    Noun("hotel", "hotel", "n", "hotels", "hotels"),
    Noun("museum", "museum", "n", "museums", "museen", tags="open"),
    Noun("hospital", "krankenhaus", "n", "hospitals", "krankenhäuser"),
    Noun("airport", "flughafen", "m"),
    Noun("bus stop", "bushaltestelle", "f"),
    Noun("church", "kirche", "f", "churches", "kirchen"),
    Noun("school", "schule", "f", "schools", "schulen"),
    Noun("library", "bibliothek", "f", tags="open"),
    Noun("park", "park", "m"),
    Noun("restaurant", "restaurant", "n", "restaurants", "restaurants", tags="open"),
    Noun("cinema", "kino", "n"),
    Noun("market", "markt", "m", tags="open"),
    Noun("town hall", "rathaus", "n", tags="open"),
    Noun("police station", "polizeiwache", "f"),
    Noun("toilet", "toilette", "f", "toilets", "toiletten"),
    Noun("beach", "strand", "m"),
    Noun("castle", "schloss", "n", tags="open"),
    Noun("theatre", "theater", "n"),
    Noun("zoo", "zoo", "m", tags="open"),
    Noun("swimming pool", "schwimmbad", "n", tags="open"),
    Noun("university", "universität", "f"),
    Noun("petrol station", "tankstelle", "f", tags="open"),
    Noun("bookshop", "buchhandlung", "f", tags="open"),
    Noun("hairdresser's", "friseur", "m", tags="open"),
]
LANDMARKS = [
    ("traffic lights", Noun("traffic lights", "ampel", "f")),
    ("crossroads", Noun("crossroads", "kreuzung", "f")),
    ("roundabout", Noun("roundabout", "kreisverkehr", "m")),
    ("bridge", Noun("bridge", "brücke", "f")),
] + [
    (p.en, p)
    for p in PLACES
    if p.en
    in ("church", "station", "bank", "supermarket", "park", "bakery", "hotel", "museum", "school")
]
ORDINALS = [("first", "erste"), ("second", "zweite"), ("third", "dritte")]

# Small things at home.  verb: how you put it somewhere (legen / stellen); "" = animal.
THINGS = [
    Noun("key", "schlüssel", "m", "keys", "schlüssel", tags="leg small"),
    Noun("book", "buch", "n", "books", "bücher", tags="leg small"),
    Noun("phone", "handy", "n", "phones", "handys", tags="leg small"),
    Noun("newspaper", "zeitung", "f", tags="leg small"),
    Noun("letter", "brief", "m", "letters", "briefe", tags="leg small"),
    Noun("bag", "tasche", "f", "bags", "taschen", tags="stell"),
    Noun("jacket", "jacke", "f", tags="leg"),
    Noun("cup", "tasse", "f", "cups", "tassen", tags="stell small"),
    Noun("glass", "glas", "n", "glasses", "gläser", tags="stell small"),
    Noun("bottle", "flasche", "f", "bottles", "flaschen", tags="stell small"),
    Noun("plate", "teller", "m", "plates", "teller", tags="stell small"),
    Noun("ball", "ball", "m", tags="leg"),
    Noun("umbrella", "regenschirm", "m", tags="leg"),
    Noun("remote control", "fernbedienung", "f", tags="leg small"),
    Noun("wallet", "geldbeutel", "m", tags="leg small"),
    Noun("shoes", "schuhe", "pl", tags="stell"),
    Noun("cat", "katze", "f", tags="animal"),
    Noun("dog", "hund", "m", tags="animal"),
]
# Furniture: (noun, {English preposition: German preposition}).
BASE_PREPS = {"next to": "neben"}
FURNITURE: list[tuple[Noun, dict[str, str]]] = [
    (Noun("table", "tisch", "m"), {"on": "auf", "under": "unter", **BASE_PREPS}),
    (Noun("chair", "stuhl", "m"), {"on": "auf", "under": "unter", **BASE_PREPS}),
    (Noun("bed", "bett", "n"), {"on": "auf", "under": "unter", **BASE_PREPS}),
    (Noun("sofa", "sofa", "n"), {"on": "auf", "under": "unter", "behind": "hinter", **BASE_PREPS}),
    (Noun("desk", "schreibtisch", "m"), {"on": "auf", "under": "unter", **BASE_PREPS}),
    (Noun("shelf", "regal", "n"), {"on": "in", **BASE_PREPS}),
    (Noun("cupboard", "schrank", "m"), {"in": "in", "on": "auf", **BASE_PREPS}),
    (Noun("drawer", "schublade", "f"), {"in": "in"}),
    (Noun("door", "tür", "f"), {"behind": "hinter", "in front of": "vor", **BASE_PREPS}),
    (Noun("window", "fenster", "n"), {"in front of": "vor", **BASE_PREPS}),
    (Noun("box", "kiste", "f"), {"in": "in", **BASE_PREPS}),
]

CLOTHES = [
    Noun("jacket", "jacke", "f", "jackets", "jacken"),
    Noun("coat", "mantel", "m", "coats", "mäntel"),
    Noun("dress", "kleid", "n", "dresses", "kleider"),
    Noun("shirt", "hemd", "n", "shirts", "hemden"),
    Noun("skirt", "rock", "m", "skirts", "röcke"),
    Noun("hat", "hut", "m", "hats", "hüte"),
    Noun("scarf", "schal", "m", "scarves", "schals"),
    Noun("jumper", "pullover", "m", "jumpers", "pullover"),
    Noun("blouse", "bluse", "f", "blouses", "blusen"),
    Noun("bag", "tasche", "f", "bags", "taschen", tags="accessory"),
    Noun("belt", "gürtel", "m", "belts", "gürtel"),
    Noun("suit", "anzug", "m", "suits", "anzüge"),
    Noun("umbrella", "regenschirm", "m", "umbrellas", "regenschirme", tags="accessory"),
    Noun("watch", "uhr", "f", "watches", "uhren", tags="accessory"),
    Noun("shoes", "schuhe", "pl"),
    Noun("socks", "socken", "pl"),
    Noun("gloves", "handschuhe", "pl"),
    Noun("boots", "stiefel", "pl"),
]
COLOURS = [
    Adj("red", "rot"),
    Adj("blue", "blau"),
    Adj("green", "grün"),
    Adj("black", "schwarz"),
    Adj("white", "weiß"),
    Adj("yellow", "gelb"),
    Adj("grey", "grau"),
    Adj("brown", "braun"),
]
FIT_ADJS = [
    Adj("big", "groß"),
    Adj("small", "klein"),
    Adj("expensive", "teuer", "teur"),
    Adj("long", "lang"),
    Adj("short", "kurz"),
    Adj("tight", "eng"),
]
GOODS = [
    Noun("phone", "handy", "n", "phones", "handys"),
    Noun("bike", "fahrrad", "n", "bikes", "fahrräder"),
    Noun("computer", "computer", "m", "computers", "computer"),
    Noun("lamp", "lampe", "f", "lamps", "lampen"),
    Noun("table", "tisch", "m", "tables", "tische"),
    Noun("chair", "stuhl", "m", "chairs", "stühle"),
    Noun("book", "buch", "n", "books", "bücher"),
    Noun("camera", "kamera", "f", "cameras", "kameras"),
    Noun("ticket", "fahrkarte", "f", "tickets", "fahrkarten"),
    Noun("map", "stadtplan", "m", "maps", "stadtpläne"),
    Noun("suitcase", "koffer", "m", "suitcases", "koffer"),
    Noun("bed", "bett", "n", "beds", "betten"),
]

# Describable things; tags say which adjective groups fit.
DESCRIBABLE = [
    Noun("house", "haus", "n", tags="size age price nice quiet home"),
    Noun("flat", "wohnung", "f", tags="size age price nice quiet home"),
    Noun("car", "auto", "n", tags="size age price nice fast"),
    Noun("garden", "garten", "m", tags="size nice quiet"),
    Noun("dog", "hund", "m", tags="size age nice"),
    Noun("cat", "katze", "f", tags="size age nice"),
    Noun("city", "stadt", "f", tags="size age nice quiet interest home"),
    Noun("village", "dorf", "n", tags="size age nice quiet home"),
    Noun("room", "zimmer", "n", tags="size price nice quiet"),
    Noun("book", "buch", "n", tags="interest good age"),
    Noun("film", "film", "m", tags="interest good"),
    Noun("idea", "idee", "f", tags="good interest"),
    Noun("street", "straße", "f", tags="quiet nice"),
    Noun("restaurant", "restaurant", "n", tags="price good quiet"),
    Noun("hotel", "hotel", "n", tags="price good quiet size"),
    Noun("bike", "fahrrad", "n", tags="age price fast"),
    Noun("kitchen", "küche", "f", tags="size age"),
    Noun("job", "job", "m", tags="interest good"),
    Noun("teacher", "lehrer", "m", tags="good"),
    Noun("question", "frage", "f", tags="good interest"),
]
DESCRIBE_ADJS = [
    Adj("big", "groß", tags="size"),
    Adj("small", "klein", tags="size"),
    Adj("new", "neu", tags="age"),
    Adj("old", "alt", tags="age"),
    Adj("expensive", "teuer", "teur", tags="price"),
    Adj("cheap", "billig", tags="price"),
    Adj("beautiful", "schön", tags="nice"),
    Adj("good", "gut", tags="good"),
    Adj("bad", "schlecht", tags="good"),
    Adj("interesting", "interessant", tags="interest"),
    Adj("boring", "langweilig", tags="interest"),
    Adj("quiet", "ruhig", tags="quiet"),
    Adj("loud", "laut", tags="quiet"),
    Adj("fast", "schnell", tags="fast"),
]

VEHICLES = [
    Noun("bus", "bus", "m", tags="far"),
    Noun("train", "zug", "m", tags="far"),
    Noun("car", "auto", "n", tags="far"),
    Noun("bike", "fahrrad", "n"),
    Noun("tram", "straßenbahn", "f"),
    Noun("taxi", "taxi", "n"),
    Noun("motorbike", "motorrad", "n", tags="far"),
]
DESTINATIONS = [
    ("to work", "zur arbeit", ""),
    ("to school", "zur schule", ""),
    ("into town", "in die stadt", ""),
    ("to the station", "zum bahnhof", ""),
    ("to the airport", "zum flughafen", "far"),
    ("to university", "zur universität", ""),
    ("home", "nach hause", ""),
    ("to the supermarket", "zum supermarkt", ""),
    ("to the beach", "an den strand", ""),
    ("to berlin", "nach berlin", "far"),
    ("to hamburg", "nach hamburg", "far"),
    ("to munich", "nach münchen", "far"),
]

DAYS = [
    ("monday", "montag"),
    ("tuesday", "dienstag"),
    ("wednesday", "mittwoch"),
    ("thursday", "donnerstag"),
    ("friday", "freitag"),
    ("saturday", "samstag"),
    ("sunday", "sonntag"),
]
MONTHS = [
    ("january", "januar", "winter"),
    ("february", "februar", "winter"),
    ("march", "märz", "spring"),
    ("april", "april", "spring"),
    ("may", "mai", "spring"),
    ("june", "juni", "summer"),
    ("july", "juli", "summer"),
    ("august", "august", "summer"),
    ("september", "september", "autumn"),
    ("october", "oktober", "autumn"),
    ("november", "november", "autumn"),
    ("december", "dezember", "winter"),
]


@dataclass(frozen=True)
class Activity:
    """A verb phrase for "S does X": English base and third-person forms, German clause."""

    en: str  # base form; "{poss}" stands for the subject's possessive
    en3: str  # third person singular
    de: Callable[[Subject], Clause]

    def english(self, s: Subject) -> str:
        return (self.en3 if s.third else self.en).replace("{poss}", s.poss_en)


# --------------------------------------------------------------------------------------
# Template families.  Each returns every pair it can make; the caller samples.
# --------------------------------------------------------------------------------------


def family_how() -> list[Pair]:
    """Close kin of the demo sentence: how is your mother -> wie geht es deiner mutter."""
    out = Pairs()
    for r in RELATIVES:
        if r.en in ("boss", "neighbour", "colleague"):
            continue
        is_are = "are" if r.gender == "pl" else "is"
        for poss_en, poss_de in (("your", "dein"), ("his", "sein"), ("her", "ihr")):
            if not fits(poss_en, r):
                continue
            de = f"wie geht es {np(r, 'dat', poss_de)}"
            out.add(f"how {is_are} {poss_en} {r.en}", de)
            if poss_en == "your":
                out.add(f"how {is_are} your {r.en} today", f"{de} heute")
        out.add(f"my {r.en} {is_are} fine", f"{np(r, 'dat', 'mein')} geht es gut")
        out.add(f"my {r.en} {is_are} not well", f"{np(r, 'dat', 'mein')} geht es nicht gut")
    return out


def family_people() -> list[Pair]:
    out = Pairs()
    for r in RELATIVES:
        pl = r.gender == "pl"
        is_are = "are" if pl else "is"
        this = "these are" if pl else "this is"
        for s in PRONOUNS:
            if s.en == "you" or not fits(s.poss_en, r):
                continue
            out.add(
                f"{this} {s.poss_en} {r.en}",
                f"{'das sind' if pl else 'das ist'} {np(r, 'nom', s.poss_de)}",
            )
        out.add(
            f"where {is_are} your {r.en}", f"wo {'sind' if pl else 'ist'} {np(r, 'nom', 'dein')}"
        )
        out.add(
            f"who is your {r.en}" if not pl else f"who are your {r.en}",
            f"wer {'sind' if pl else 'ist'} {np(r, 'nom', 'dein')}",
        )
        for en_state, de_state in FAMILY_STATES:
            if r.en == "baby" and en_state in ("at work", "very nice"):
                continue
            for s in PRONOUNS[:5]:
                if not fits(s.poss_en, r):
                    continue
                en = f"{s.poss_en} {r.en} {is_are} {en_state}"
                de = f"{np(r, 'nom', s.poss_de)} {'sind' if pl else 'ist'} {de_state}"
                out.add(en, de)
            out.add(
                f"{is_are} your {r.en} {en_state}",
                f"{'sind' if pl else 'ist'} {np(r, 'nom', 'dein')} {de_state}",
            )
        if r.en in ("brother", "sister", "son", "daughter", "cousin"):
            for s in PRONOUNS:
                has = s.have
                out.add(
                    f"{s.en} {has} {a(r.en)}",
                    Clause(s.de, HABEN[s.person], np(r, "acc", "ein")).main(),
                )
                out.add(
                    f"{s.en} {s.dont} have {a(r.en)}",
                    Clause(s.de, HABEN[s.person], np(r, "acc", "kein")).main(),
                )
            out.add(f"do you have {a(r.en)}", f"hast du {np(r, 'acc', 'ein')}")
    return out


def family_age(rng: random.Random) -> list[Pair]:
    out = Pairs()
    for r in RELATIVES:
        pl = r.gender == "pl"
        if pl or r.tags == "baby":
            continue
        out.add(f"how old is your {r.en}", f"wie alt ist {np(r, 'nom', 'dein')}")
        out.add(f"how old is his {r.en}", f"wie alt ist {np(r, 'nom', 'sein')}")
        low, high = AGE_RANGES[r.tags]
        for s in PRONOUNS:
            if s.en == "they" or not fits(s.poss_en, r):
                continue
            for n in rng.sample(range(low, high + 1), 4):
                out.add(
                    f"{s.poss_en} {r.en} is {num_en(n)} years old",
                    f"{np(r, 'nom', s.poss_de)} ist {num_de(n)} jahre alt",
                )
    ages = {
        "i": (6, 90),
        "you": (6, 90),
        "he": (6, 90),
        "she": (6, 90),
        "anna": (5, 80),
        "tom": (5, 80),
        "my brother": (5, 40),
        "my sister": (5, 40),
    }
    for s in SUBJECTS:
        if s.en not in ages:
            continue
        low, high = ages[s.en]
        for n in range(low, high + 1):
            years = Clause(s.de, SEIN[s.person], f"{num_de(n)} jahre alt")
            out.add(f"{s.en} {s.be} {num_en(n)} years old", years.main())
    out += [
        (f"how old {s.be} {s.en}", f"wie alt {SEIN[s.person]} {s.de}")
        for s in SUBJECTS
        if s.en != "i"
    ]
    return out


def family_actions() -> list[Pair]:
    """Possessives in accusative and dative: besuchen, anrufen, helfen, mit, für, bei."""
    out = Pairs()
    for s in PRONOUNS:
        p = s.person
        for r in RELATIVES:
            if not fits(s.poss_en, r):
                continue
            en_r = f"{s.poss_en} {r.en}"
            out.add(
                f"{s.en} {s.v('visit')} {en_r}",
                Clause(s.de, verb("besuchen")[p], np(r, "acc", s.poss_de)).main(),
            )
            out.add(
                f"{s.en} {s.v('call')} {en_r}",
                Clause(s.de, verb("rufen")[p], np(r, "acc", s.poss_de), sep="an").main(),
            )
            out.add(
                f"{s.en} {s.v('help')} {en_r}",
                Clause(s.de, HELFEN[p], np(r, "dat", s.poss_de)).main(),
            )
            out.add(
                f"{s.en} {s.v('write')} to {en_r}",
                Clause(s.de, verb("schreiben")[p], np(r, "dat", s.poss_de)).main(),
            )
            out.add(
                f"{s.en} {s.v('go', 'goes')} shopping with {en_r}",
                Clause(
                    s.de, verb("gehen")[p], pp("mit", r, "dat", s.poss_de), end="einkaufen"
                ).main(),
            )
            out.add(
                f"{s.en} {s.v('buy')} a present for {en_r}",
                Clause(
                    s.de, verb("kaufen")[p], f"ein geschenk {pp('für', r, 'acc', s.poss_de)}"
                ).main(),
            )
            if r.has("old") or r.en in ("parents", "aunt", "uncle", "son", "daughter"):
                out.add(
                    f"{s.en} {s.v('live')} with {en_r}",
                    Clause(s.de, verb("wohnen")[p], pp("bei", r, "dat", s.poss_de)).main(),
                )
            out.add(
                f"{s.en} {s.v('miss', 'misses')} {en_r}",
                Clause(s.de, verb("vermissen")[p], np(r, "acc", s.poss_de)).main(),
            )
            out.add(
                f"{s.en} {s.v('talk')} to {en_r} every day",
                Clause(
                    s.de,
                    verb("sprechen", "spreche sprichst spricht")[p],
                    f"jeden tag {pp('mit', r, 'dat', s.poss_de)}",
                ).main(),
            )
    return out


def food_order() -> list[Pair]:
    out = Pairs()
    for noun, adj in ORDERS:
        en = a(join(adj.en if adj else "", noun.en))
        acc = np(noun, "acc", "ein", adj)
        out += [
            (f"i would like {en}", f"ich möchte {acc}"),
            (f"i'd like {en}", f"ich hätte gern {acc}"),
            (f"{en} please", f"{acc} bitte"),
            (f"can i have {en}", f"kann ich {acc} haben"),
            (f"we would like {en}", f"wir möchten {acc}"),
            (f"i'll have {en}", f"ich nehme {acc}"),
            (f"another {join(adj.en if adj else '', noun.en)} please", f"noch {acc} bitte"),
            (f"would you like {en}", f"möchtest du {acc}"),
            (f"she would like {en}", f"sie möchte {acc}"),
            (f"he would like {en}", f"er möchte {acc}"),
        ]
    return out


def food_habits() -> list[Pair]:
    out = Pairs()
    table = [
        (DRINKS, "drink", "drinks", verb("trinken")),
        (FOODS, "eat", "eats", ESSEN),
        (DRINKS + FOODS, "like", "likes", MOEGEN),
    ]
    for nouns, en_v, en_v3, de_v in table:
        for s in SUBJECTS:
            fin = de_v[s.person]
            for n in nouns:
                if s.en == "the children" and n.en in ("beer", "wine"):
                    continue
                obj = n.de
                out.add(f"{s.en} {s.v(en_v, en_v3)} {n.en}", Clause(s.de, fin, obj).main())
                out.add(
                    f"{s.en} {s.dont} {en_v} {n.en}",
                    Clause(s.de, fin, np(n, "acc", "kein")).main(),
                )
                if s.asks:
                    out.add(f"{s.do} {s.en} {en_v} {n.en}", Clause(s.de, fin, obj).question())
                if en_v == "drink":
                    out.add(
                        f"{s.en} {s.v(en_v, en_v3)} {n.en} every morning",
                        Clause(s.de, fin, f"jeden morgen {obj}").main(),
                    )
                if en_v == "like" and s.en in ("i", "we"):
                    out.add(f"{s.en} really {en_v} {n.en}", Clause(s.de, fin, f"{obj} sehr").main())
    return out


def food_state() -> list[Pair]:
    out = Pairs()
    for n in DISHES:
        for plural in (False, True):
            if plural and not n.de_pl:
                continue
            for en_a, de_a, tag in DISH_ADJS:
                if tag and not n.has(tag):
                    continue
                en_n = n.english(plural)
                be_en = "are" if plural else "is"
                be_de = "sind" if plural else "ist"
                subj = np(n, "nom", "def", plural=plural)
                out.add(f"the {en_n} {be_en} {en_a}", f"{subj} {be_de} {de_a}")
                if not en_a.startswith("not"):
                    out.add(f"{be_en} the {en_n} {en_a}", f"{be_de} {subj} {de_a}")
                if en_a in ("delicious", "very good", "not good"):
                    verb_de = "schmecken" if plural else "schmeckt"
                    de_taste = {
                        "delicious": "lecker",
                        "very good": "sehr gut",
                        "not good": "nicht gut",
                    }[en_a]
                    taste = "taste" if plural else "tastes"
                    en_taste = {
                        "delicious": "delicious",
                        "very good": "very good",
                        "not good": "bad",
                    }[en_a]
                    out.add(f"the {en_n} {taste} {en_taste}", f"{subj} {verb_de} {de_taste}")
    return out


def weather(rng: random.Random) -> list[Pair]:
    out = Pairs()
    cities = rng.sample(CITIES, 8)
    for adj in WEATHER_ADJS:
        en, de = adj.en, adj.de
        c = Clause("es", "ist", de)
        if en in ("cold", "warm", "hot", "cool", "windy"):
            out.add(f"it is getting {en}", Clause("es", "wird", de).main())
        out += [
            (f"it is {en}", c.main()),
            (f"it is {en} today", c.front("heute")),
            (f"it is very {en} today", Clause("es", "ist", f"sehr {de}").front("heute")),
            (f"it is not {en}", Clause("es", "ist", f"nicht {de}").main()),
            (f"is it {en}", c.question()),
            (f"is it {en} outside", Clause("es", "ist", f"draußen {de}").question()),
            (f"it was {en} yesterday", Clause("es", "war", de).front("gestern")),
            (f"it will be {en} tomorrow", Clause("es", "wird", de).front("morgen")),
            (f"it is {en} this morning", c.front("heute morgen")),
            (f"it is {en} here", c.front("hier")),
        ]
        for city_en, city_de, _ in cities:
            out.add(f"it is {en} in {city_en}", c.front(f"in {city_de}"))
            out.add(
                f"it is often {en} in {city_en}",
                Clause("es", "ist", f"oft {de}").front(f"in {city_de}"),
            )
            out.add(
                f"is it {en} in {city_en}", Clause("es", "ist", f"in {city_de} {de}").question()
            )
        for season_en, season_de in SEASONS:
            if season_en in adj.tags:
                out.add(f"it is {en} in {season_en}", c.front(f"im {season_de}"))
                out.add(
                    f"in {season_en} it is often {en}",
                    Clause("es", "ist", f"oft {de}").front(f"im {season_de}"),
                )
    for prog, simple, past, inf_en, de, inf_de, part, seasons in WEATHER_VERBS:
        c = Clause("es", de)
        out += [
            (f"it is {prog}", c.main()),
            (f"it is {prog} today", c.front("heute")),
            (f"it is not {prog}", Clause("es", de, "nicht").main()),
            (f"is it {prog}", c.question()),
            (f"is it {prog} outside", Clause("es", de, "draußen").question()),
            (f"it {simple} a lot here", Clause("es", de, "viel").front("hier")),
            (f"it {past} yesterday", Clause("es", "hat", end=part).front("gestern")),
            (f"it will {inf_en} tomorrow", Clause("es", "wird", end=inf_de).front("morgen")),
            (f"it is going to {inf_en}", Clause("es", "wird", end=inf_de).main()),
            (f"it is still {prog}", Clause("es", de, "immer noch").main()),
        ]
        for city_en, city_de, _ in cities:
            out.add(f"it is {prog} in {city_en}", c.front(f"in {city_de}"))
            out.add(
                f"it often {simple} in {city_en}", Clause("es", de, "oft").front(f"in {city_de}")
            )
            out.add(f"is it {prog} in {city_en}", Clause("es", de, f"in {city_de}").question())
        for season_en, season_de in SEASONS:
            if season_en in seasons:
                out.add(
                    f"it often {simple} in {season_en}",
                    Clause("es", de, "oft").front(f"im {season_de}"),
                )
    for city_en, city_de, _ in CITIES:
        out.add(f"how is the weather in {city_en}", f"wie ist das wetter in {city_de}")
        out.add(f"what is the weather like in {city_en}", f"wie ist das wetter in {city_de}")
        for en, de in (("nice", "schön"), ("bad", "schlecht"), ("good", "gut")):
            out.add(f"the weather in {city_en} is {en}", f"das wetter in {city_de} ist {de}")
    for en, de in (
        ("nice", "schön"),
        ("bad", "schlecht"),
        ("good", "gut"),
        ("terrible", "furchtbar"),
    ):
        out.add(f"the weather is {en} today", f"heute ist das wetter {de}")
        out.add(f"the weather was {en} yesterday", f"gestern war das wetter {de}")
        out.add(f"the weather will be {en} tomorrow", f"morgen wird das wetter {de}")
    return out


def clock() -> list[Pair]:
    out = Pairs()
    for t in TIMES:
        out.add(f"it is {t.en}", f"es ist {t.de}")
        if t.kind == "oclock":
            out.add(f"it is almost {t.en}", f"es ist fast {t.de}")
            out.add(f"is it already {t.en}", f"ist es schon {t.de}")
            out.add(f"it is already {t.en}", f"es ist schon {t.de}")
    return out


def events() -> list[Pair]:
    """Timetables: der zug fährt um halb acht ab (separable verbs)."""
    vehicles = [
        Noun("train", "zug", "m"),
        Noun("bus", "bus", "m"),
        Noun("tram", "straßenbahn", "f"),
        Noun("ferry", "fähre", "f"),
        Noun("next train", "nächste zug", "m"),
        Noun("last bus", "letzte bus", "m"),
    ]
    things = [  # (English subject, German subject, English verb, German verb, separable prefix)
        ("the film", "der film", "starts", "fängt", "an"),
        ("the concert", "das konzert", "begins", "beginnt", ""),
        ("the lesson", "der unterricht", "starts", "beginnt", ""),
        ("the meeting", "die besprechung", "starts", "fängt", "an"),
        ("the party", "die party", "starts", "fängt", "an"),
        ("the shop", "der laden", "opens", "öffnet", ""),
        ("the shop", "der laden", "closes", "schließt", ""),
        ("the museum", "das museum", "opens", "öffnet", ""),
        ("the museum", "das museum", "closes", "schließt", ""),
        ("the bakery", "die bäckerei", "opens", "öffnet", ""),
        ("the bank", "die bank", "closes", "schließt", ""),
        ("the match", "das spiel", "starts", "fängt", "an"),
    ]
    for v in vehicles:
        subj = np(v, "nom")
        en = f"the {v.en}"
        things.append((en, subj, "leaves", "fährt", "ab"))
        things.append((en, subj, "arrives", "kommt", "an"))
    out = Pairs()
    for en_s, de_s, en_v, de_v, sep in things:
        en_base = {
            "starts": "start",
            "begins": "begin",
            "opens": "open",
            "closes": "close",
            "leaves": "leave",
            "arrives": "arrive",
        }[en_v]
        out.add(f"when does {en_s} {en_base}", Clause(de_s, de_v, sep=sep).front("wann"))
        out.add(
            f"what time does {en_s} {en_base}",
            Clause(de_s, de_v, sep=sep).front("um wie viel uhr"),
        )
        for t in TIMES:
            if t.kind == "minutes" and sep != "ab":
                continue
            if en_v in ("opens", "closes") and t.kind not in ("oclock", "half"):
                continue
            c = Clause(de_s, de_v, f"um {t.de}", sep=sep)
            out.add(f"{en_s} {en_v} at {t.en}", c.main())
            out.add(f"does {en_s} {en_base} at {t.en}", c.question())
    return out


ROUTINES = [  # (English base, English third, German verb table, German rest, separable, hours)
    ("get up", "gets up", verb("stehen"), "", "auf", (5, 9)),
    ("wake up", "wakes up", verb("wachen"), "", "auf", (5, 9)),
    ("have breakfast", "has breakfast", verb("frühstücken"), "", "", (6, 9)),
    ("leave the house", "leaves the house", VERLASSEN, "das haus", "", (6, 9)),
    ("go to work", "goes to work", verb("gehen"), "zur arbeit", "", (6, 9)),
    ("start work", "starts work", FANGEN, "mit der arbeit", "an", (7, 10)),
    ("have lunch", "has lunch", ESSEN, "zu mittag", "", (11, 1)),
    ("finish work", "finishes work", verb("hören"), "mit der arbeit", "auf", (3, 6)),
    ("come home", "comes home", verb("kommen"), "nach hause", "", (4, 7)),
    ("have dinner", "has dinner", ESSEN, "zu abend", "", (6, 8)),
    ("go to bed", "goes to bed", verb("gehen"), "ins bett", "", (9, 11)),
]


def routine_times(hours: tuple[int, int]) -> list[Time]:
    first, last = hours
    if first <= last:
        return times_between(first, last)
    return times_between(first, 12) + times_between(1, last)


def routine_clause(
    s: Subject, table: dict[str, str], rest: str, sep: str, time: str = ""
) -> Clause:
    return Clause(s.de, table[s.person], join(time, rest), sep=sep)


def routines() -> list[Pair]:
    out = Pairs()
    for en_v, en_v3, table, rest, sep, hours in ROUTINES:
        for s in SUBJECTS:
            if s.en == "the children" and "work" in en_v:
                continue
            en_vp = en_v3 if s.third else en_v
            bare = routine_clause(s, table, rest, sep)
            out.add(f"when {s.do} {s.en} {en_v}", bare.front("wann"))
            out.add(f"what time {s.do} {s.en} {en_v}", bare.front("um wie viel uhr"))
            for t in routine_times(hours):
                c = routine_clause(s, table, rest, sep, f"um {t.de}")
                out.add(f"{s.en} {en_vp} at {t.en}", c.main())
                if s.asks:
                    out.add(f"{s.do} {s.en} {en_v} at {t.en}", c.question())
            t = routine_times(hours)[0]
            for day_en, day_de in DAYS:
                c = routine_clause(s, table, rest, sep, f"um {t.de}")
                out.add(f"on {day_en} {s.en} {en_vp} at {t.en}", c.front(f"am {day_de}"))
            for adv_en, adv_de in (("early", "früh"), ("late", "spät")):
                if en_v in ("get up", "go to bed", "come home", "have dinner", "wake up"):
                    c = routine_clause(s, table, rest, sep, adv_de)
                    out.add(f"{s.en} {en_vp} {adv_en}", c.main())
    return out


COUNTABLE = [  # tag "few": at most five of them sounds natural
    Noun("cat", "katze", "f", "cats", "katzen", tags="few"),
    Noun("dog", "hund", "m", "dogs", "hunde", tags="few"),
    Noun("child", "kind", "n", "children", "kinder", tags="few"),
    Noun("brother", "bruder", "m", "brothers", "brüder", tags="few"),
    Noun("sister", "schwester", "f", "sisters", "schwestern", tags="few"),
    Noun("book", "buch", "n", "books", "bücher"),
    Noun("bike", "fahrrad", "n", "bikes", "fahrräder", tags="few"),
    Noun("car", "auto", "n", "cars", "autos", tags="few"),
    Noun("ticket", "fahrkarte", "f", "tickets", "fahrkarten"),
    Noun("key", "schlüssel", "m", "keys", "schlüssel"),
    Noun("room", "zimmer", "n", "rooms", "zimmer", tags="few"),
    Noun("egg", "ei", "n", "eggs", "eier"),
    Noun("apple", "apfel", "m", "apples", "äpfel"),
    Noun("tomato", "tomate", "f", "tomatoes", "tomaten"),
    Noun("bread roll", "brötchen", "n", "bread rolls", "brötchen"),
    Noun("bottle of water", "flasche wasser", "f", "bottles of water", "flaschen wasser"),
    Noun("day", "tag", "m", "days", "tage"),
    Noun("week", "woche", "f", "weeks", "wochen"),
]


def numbers(rng: random.Random) -> list[Pair]:
    out = Pairs()
    for s in SUBJECTS:
        for n in COUNTABLE[:11]:
            if s.en == "the children" and n.en in ("child", "car"):
                continue
            counts = range(2, 6) if n.has("few") else range(2, 13)
            for k in rng.sample(counts, 3):
                have = Clause(s.de, HABEN[s.person], f"{num_de(k)} {n.de_pl}")
                out.add(f"{s.en} {s.have} {num_en(k)} {n.en_pl}", have.main())
            if s.asks:
                out.add(
                    f"how many {n.en_pl} {s.do} {s.en} have",
                    Clause(s.de, HABEN[s.person]).front(f"wie viele {n.de_pl}"),
                )
        for n in COUNTABLE[11:16]:
            for k in rng.sample(range(2, 13), 3):
                out.add(
                    f"{s.en} {s.v('need')} {num_en(k)} {n.en_pl}",
                    Clause(s.de, verb("brauchen")[s.person], f"{num_de(k)} {n.de_pl}").main(),
                )
    for n in COUNTABLE[11:16]:
        for k in range(2, 13):
            out.add(f"{num_en(k)} {n.en_pl} please", f"{num_de(k)} {n.de_pl} bitte")
    for x in range(1, 11):
        for y in range(1, 11):
            if x + y <= 20:
                out.add(
                    f"{num_en(x)} plus {num_en(y)} is {num_en(x + y)}",
                    f"{num_de(x)} plus {num_de(y)} ist {num_de(x + y)}",
                )
            if x > y:
                out.add(
                    f"{num_en(x)} minus {num_en(y)} is {num_en(x - y)}",
                    f"{num_de(x)} minus {num_de(y)} ist {num_de(x - y)}",
                )
    for k in range(2, 13):
        for n in COUNTABLE[16:]:
            out.add(f"in {num_en(k)} {n.en_pl}", f"in {num_de(k)} {n.form('dat', True)}")
            out.add(f"{num_en(k)} {n.en_pl} ago", f"vor {num_de(k)} {n.form('dat', True)}")
    return out


PRICES = list(range(2, 21)) + [25, 30, 35, 40, 45, 50, 60, 70, 75, 80, 90, 99, 100]
CHEAP_GOODS = {
    "map",
    "ticket",
    "book",
    "umbrella",
    "belt",
    "socks",
    "scarf",
    "gloves",
    "hat",
    "lamp",
    "chair",
    "shirt",
    "blouse",
    "bag",
}
DEAR_GOODS = {"bike", "computer", "camera", "bed", "suitcase", "phone", "suit", "coat", "watch"}


def price_range(noun: Noun) -> list[int]:
    if noun.en in CHEAP_GOODS:
        return [k for k in PRICES if k <= 30]
    if noun.en in DEAR_GOODS:
        return [k for k in PRICES if k >= 50]
    return [k for k in PRICES if 15 <= k <= 90]


def prices(rng: random.Random) -> list[Pair]:
    out = Pairs()
    for n in CLOTHES + GOODS:
        for plural in (False, True):
            if plural and not (n.de_pl or n.gender == "pl"):
                continue
            if n.gender == "pl" and not plural:
                continue
            en_n = n.english(plural)
            g_pl = n.en_plural(plural)
            cost_en = "cost" if g_pl else "costs"
            cost_de = "kosten" if g_pl else "kostet"
            be_en = "are" if g_pl else "is"
            be_de = "sind" if g_pl else "ist"
            subj = np(n, "nom", "def", plural=plural)
            this = np(n, "nom", "dies", plural=plural)
            this_en = "these" if g_pl else "this"
            out.add(
                f"how much {'do' if g_pl else 'does'} the {en_n} cost",
                f"wie viel {cost_de} {subj}",
            )
            out.add(
                f"how much {'do' if g_pl else 'does'} {this_en} {en_n} cost",
                f"wie viel {cost_de} {this}",
            )
            for k in rng.sample(price_range(n), 4):
                out.add(
                    f"the {en_n} {cost_en} {num_en(k)} euros",
                    f"{subj} {cost_de} {num_de(k)} euro",
                )
                out.add(
                    f"{this_en} {en_n} only {cost_en} {num_en(k)} euros",
                    f"{this} {cost_de} nur {num_de(k)} euro",
                )
            for en_a, de_a in (
                ("too expensive", "zu teuer"),
                ("cheap", "billig"),
                ("very cheap", "sehr billig"),
                ("not expensive", "nicht teuer"),
            ):
                out.add(f"the {en_n} {be_en} {en_a}", f"{subj} {be_de} {de_a}")
                out.add(f"{this_en} {en_n} {be_en} {en_a}", f"{this} {be_de} {de_a}")
    for k in PRICES:
        out.add(f"that is {num_en(k)} euros", f"das macht {num_de(k)} euro")
        out.add(f"it costs {num_en(k)} euros", f"es kostet {num_de(k)} euro")
        out.add(f"i only have {num_en(k)} euros", f"ich habe nur {num_de(k)} euro")
    return out


def shopping() -> list[Pair]:
    out = Pairs()
    for n in CLOTHES:
        for colour in COLOURS:
            pl = n.gender == "pl"
            en = f"{colour.en} {n.en}"
            out.add(
                f"i am looking for {en if pl else a(en)}",
                f"ich suche {np(n, 'acc', 'ein', colour)}",
            )
            out.add(f"i'll take the {en}", f"ich nehme {np(n, 'acc', 'def', colour)}")
            likes = "gefallen" if pl else "gefällt"
            nom = np(n, "nom", "def", colour)
            out.add(f"i like the {en}", f"{nom} {likes} mir")
            out.add(f"i don't like the {en}", f"{nom} {likes} mir nicht")
            out.add(f"do you like the {en}", f"{likes} dir {nom}")
            out.add(
                f"the {en} {'are' if pl else 'is'} nice", f"{nom} {'sind' if pl else 'ist'} schön"
            )
            out.add(f"do you have {en if pl else a(en)}", f"hast du {np(n, 'acc', 'ein', colour)}")
            for s in SUBJECTS:
                obj = np(n, "acc", "ein", colour)
                en_obj = en if pl else a(en)
                out.add(
                    f"{s.en} bought {en_obj}",
                    Clause(s.de, HABEN[s.person], obj, end="gekauft").main(),
                )
                if not n.has("accessory") and (pl or s.person != "3pl" and s.en != "we"):
                    out.add(
                        f"{s.en} {s.be} wearing {en_obj}",
                        Clause(s.de, TRAGEN[s.person], obj).main(),
                    )
        for adj in FIT_ADJS:
            if n.has("accessory") and adj.en not in ("big", "small", "expensive"):
                continue
            pl = n.gender == "pl"
            out.add(
                f"the {n.en} {'are' if pl else 'is'} too {adj.en}",
                f"{np(n, 'nom')} {'sind' if pl else 'ist'} zu {adj.de}",
            )
            out.add(
                f"{'these' if pl else 'this'} {n.en} {'are' if pl else 'is'} too {adj.en}",
                f"{np(n, 'nom', 'dies')} {'sind' if pl else 'ist'} zu {adj.de}",
            )
        for s in SUBJECTS:
            new = Adj("new", "neu")
            obj_en = f"new {n.en}" if n.gender == "pl" else a(f"new {n.en}")
            out.add(
                f"{s.en} {s.v('need')} {obj_en}",
                Clause(s.de, verb("brauchen")[s.person], np(n, "acc", "ein", new)).main(),
            )
    for n in GOODS:
        for s in SUBJECTS:
            new = Adj("new", "neu")
            out.add(
                f"{s.en} {s.v('need')} {a('new ' + n.en)}",
                Clause(s.de, verb("brauchen")[s.person], np(n, "acc", "ein", new)).main(),
            )
            out.add(
                f"{s.en} {s.v('want')} to buy {a('new ' + n.en)}",
                Clause(
                    s.de,
                    verb("wollen", "will willst will")[s.person],
                    np(n, "acc", "ein", new),
                    end="kaufen",
                ).main(),
            )
        out.add(f"i am looking for {a(n.en)}", f"ich suche {np(n, 'acc', 'ein')}")
        out.add(f"where can i buy {a(n.en)}", f"wo kann ich {np(n, 'acc', 'ein')} kaufen")
    return out


def describe() -> list[Pair]:
    out = Pairs()
    for n in DESCRIBABLE:
        for adj in DESCRIBE_ADJS:
            if not any(n.has(t) for t in adj.tags.split()):
                continue
            out.add(f"this is {a(adj.en + ' ' + n.en)}", f"das ist {np(n, 'nom', 'ein', adj)}")
            out.add(f"the {n.en} is {adj.en}", f"{np(n, 'nom')} ist {adj.de}")
            out.add(f"the {n.en} is very {adj.en}", f"{np(n, 'nom')} ist sehr {adj.de}")
            out.add(f"the {n.en} is not {adj.en}", f"{np(n, 'nom')} ist nicht {adj.de}")
            out.add(f"is the {n.en} {adj.en}", f"ist {np(n, 'nom')} {adj.de}")
            if adj.tags in ("interest", "good") and n.en not in ("teacher", "question"):
                out.add(f"that was {a(adj.en + ' ' + n.en)}", f"das war {np(n, 'nom', 'ein', adj)}")
            for s in SUBJECTS:
                if n.has("home") and adj.en not in ("interesting", "boring", "loud"):
                    out.add(
                        f"{s.en} {s.v('live')} in {a(adj.en + ' ' + n.en)}",
                        Clause(
                            s.de, verb("wohnen")[s.person], pp("in", n, "dat", "ein", adj)
                        ).main(),
                    )
                if n.en in ("house", "flat", "car", "garden", "dog", "cat", "bike") or (
                    n.en in ("job", "idea", "question") and adj.en in ("good", "interesting")
                ):
                    out.add(
                        f"{s.en} {s.have} {a(adj.en + ' ' + n.en)}",
                        Clause(s.de, HABEN[s.person], np(n, "acc", "ein", adj)).main(),
                    )
                if n.en in ("house", "car", "flat", "bike"):
                    out.add(
                        f"{s.poss_en} {n.en} is {adj.en}",
                        f"{np(n, 'nom', s.poss_de)} ist {adj.de}",
                    )
    return out


def directions(rng: random.Random) -> list[Pair]:
    out = Pairs()
    town = [p for p in PLACES if p.en not in ("airport", "beach", "castle", "university", "toilet")]
    preps = (
        ("next to", "neben"),
        ("opposite", "gegenüber"),
        ("behind", "hinter"),
        ("in front of", "vor"),
    )
    for p in PLACES:
        d, i = np(p, "nom"), np(p, "acc", "ein")
        out += [
            (f"where is the {p.en}", f"wo ist {d}"),
            (f"excuse me where is the {p.en}", f"entschuldigung wo ist {d}"),
            (f"is there {a(p.en)} near here", f"gibt es hier in der nähe {i}"),
            (f"how do i get to the {p.en}", f"wie komme ich {pp('zu', p, 'dat')}"),
            (f"i am looking for the {p.en}", f"ich suche {np(p, 'acc')}"),
            (f"is the {p.en} far from here", f"ist {d} weit von hier"),
            (f"the {p.en} is not far from here", f"{d} ist nicht weit von hier"),
            (f"the {p.en} is on the left", f"{d} ist links"),
            (f"the {p.en} is on the right", f"{d} ist rechts"),
            (f"the {p.en} is straight ahead", f"{d} ist geradeaus"),
            (f"the {p.en} is around the corner", f"{d} ist um die ecke"),
            (f"go straight ahead to the {p.en}", f"geh geradeaus bis {pp('zu', p, 'dat')}"),
            (f"how far is it to the {p.en}", f"wie weit ist es bis {pp('zu', p, 'dat')}"),
            (f"we are meeting in front of the {p.en}", f"wir treffen uns {pp('vor', p, 'dat')}"),
        ]
        if p.has("open"):
            out += [
                (f"when does the {p.en} open", f"wann öffnet {d}"),
                (f"when does the {p.en} close", f"wann schließt {d}"),
                (f"is the {p.en} open today", f"ist {d} heute geöffnet"),
                (f"the {p.en} is closed today", f"{d} ist heute geschlossen"),
                (f"the {p.en} is open until six o'clock", f"{d} ist bis sechs uhr geöffnet"),
            ]
            for day_en, day_de in DAYS:
                out.add(f"the {p.en} is closed on {day_en}", f"{d} ist am {day_de} geschlossen")
        if p in town:
            for q in rng.sample([q for q in town if q != p], 2):
                en_prep, de_prep = rng.choice(preps)
                out.add(f"the {p.en} is {en_prep} the {q.en}", f"{d} ist {pp(de_prep, q, 'dat')}")
    for en_l, landmark in LANDMARKS:
        for side_en, side_de in (("left", "links"), ("right", "rechts")):
            out.add(
                f"turn {side_en} at the {en_l}", f"bieg {pp('an', landmark, 'dat')} {side_de} ab"
            )
            out.add(
                f"turn {side_en} after the {en_l}",
                f"bieg {pp('nach', landmark, 'dat')} {side_de} ab",
            )
        out.add(f"go straight on at the {en_l}", f"geh {pp('an', landmark, 'dat')} geradeaus")
    for ord_en, ord_de in ORDINALS:
        for side_en, side_de in (("left", "links"), ("right", "rechts")):
            out.add(
                f"take the {ord_en} street on the {side_en}",
                f"nimm die {ord_de} straße {side_de}",
            )
            out.add(
                f"it is the {ord_en} house on the {side_en}",
                f"es ist das {ord_de} haus {side_de}",
            )
    return out


def positions() -> list[Pair]:
    out = Pairs()
    for t in THINGS:
        pl = t.gender == "pl"
        is_are = "are" if pl else "is"
        sein = "sind" if pl else "ist"
        d = np(t, "nom")
        out.add(f"where {is_are} the {t.en}", f"wo {sein} {d}")
        out.add(f"where {is_are} my {t.en}", f"wo {sein} {np(t, 'nom', 'mein')}")
        if not t.has("animal"):
            out.add(f"i can't find my {t.en}", f"ich finde {np(t, 'acc', 'mein')} nicht")
            out.add(f"have you seen my {t.en}", f"hast du {np(t, 'acc', 'mein')} gesehen")
        for f, preps in FURNITURE:
            if t.has("animal") and f.en in ("shelf", "cupboard", "drawer", "box", "desk"):
                continue
            for en_prep, de_prep in preps.items():
                if en_prep == "in" and not t.has("small"):
                    continue
                if f.en == "drawer" and t.has("stell"):
                    continue
                here = pp(de_prep, f, "dat")
                out.add(f"the {t.en} {is_are} {en_prep} the {f.en}", f"{d} {sein} {here}")
                out.add(f"{is_are} the {t.en} {en_prep} the {f.en}", f"{sein} {d} {here}")
                if t.has("animal"):
                    out.add(f"the {t.en} is sleeping {en_prep} the {f.en}", f"{d} schläft {here}")
                    continue
                put = "leg" if t.has("leg") else "stell"
                put_participle = "gelegt" if put == "leg" else "gestellt"
                out.add(
                    f"put the {t.en} {en_prep} the {f.en}",
                    f"{put} {np(t, 'acc')} {pp(de_prep, f, 'acc')}",
                )
                out.add(
                    f"i put the {t.en} {en_prep} the {f.en}",
                    f"ich habe {np(t, 'acc')} {pp(de_prep, f, 'acc')} {put_participle}",
                )
    return out


def transport() -> list[Pair]:
    out = Pairs()
    for s in SUBJECTS:
        fin = FAHREN[s.person]
        for dest_en, dest_de, dest_tag in DESTINATIONS:
            out.add(
                f"how {s.do} {s.en} get {dest_en}",
                Clause(s.de, verb("kommen")[s.person], dest_de).front("wie"),
            )
            if not dest_tag:
                out.add(
                    f"{s.en} {s.v('walk')} {dest_en}",
                    Clause(s.de, verb("gehen")[s.person], f"zu fuß {dest_de}").main(),
                )
            for v in VEHICLES:
                if dest_tag and not v.has("far"):
                    continue
                if s.en == "the children" and (
                    dest_en == "to work" or v.en in ("car", "motorbike")
                ):
                    continue
                by = pp("mit", v, "dat")
                c = Clause(s.de, fin, f"{by} {dest_de}")
                out.add(f"{s.en} {s.v('go', 'goes')} {dest_en} by {v.en}", c.main())
                if s.en != "i":
                    out.add(f"{s.do} {s.en} go {dest_en} by {v.en}", c.question())
                out.add(
                    f"{s.en} {s.dont} go {dest_en} by {v.en}",
                    Clause(s.de, fin, f"nicht {by} {dest_de}").main(),
                )
        for v in VEHICLES:
            out.add(
                f"{s.en} {s.v('take')} the {v.en}",
                Clause(s.de, NEHMEN[s.person], np(v, "acc")).main(),
            )
    for v in VEHICLES:
        d = np(v, "nom")
        out.add(f"the {v.en} is late", f"{d} hat verspätung")
        out.add(f"the {v.en} is full", f"{d} ist voll")
        out.add(f"the {v.en} is coming", f"{d} kommt")
        out.add(f"where is the {v.en}", f"wo ist {d}")
    return out


def travel(rng: random.Random) -> list[Pair]:
    out = Pairs()
    places = [(c_en, c_de) for c_en, c_de, _ in CITIES] + [(c[0], c[1]) for c in COUNTRIES]
    for s in SUBJECTS:
        p = s.person
        for en, de in rng.sample(places, 14):
            out.add(
                f"{s.en} {s.v('come')} from {en}",
                Clause(s.de, verb("kommen")[p], f"aus {de}").main(),
            )
            out.add(
                f"{s.en} {s.v('live')} in {en}",
                Clause(s.de, verb("wohnen")[p], f"in {de}").main(),
            )
        for en, de in rng.sample(places, 10):
            out.add(
                f"{s.en} {s.be} going to {en} tomorrow",
                Clause(s.de, FAHREN[p], f"morgen nach {de}").main(),
            )
            out.add(
                f"{s.en} {s.be} flying to {en}",
                Clause(s.de, verb("fliegen")[p], f"nach {de}").main(),
            )
            out.add(
                f"{s.en} {s.was} in {en} last year",
                Clause(s.de, WAR[p], f"letztes jahr in {de}").main(),
            )
        out.add(f"where {s.do} {s.en} come from", Clause(s.de, verb("kommen")[p]).front("woher"))
        out.add(f"where {s.do} {s.en} live", Clause(s.de, verb("wohnen")[p]).front("wo"))
    for en, de in places:
        out += [
            (f"a ticket to {en} please", f"eine fahrkarte nach {de} bitte"),
            (f"when does the train to {en} leave", f"wann fährt der zug nach {de} ab"),
            (f"is this the train to {en}", f"ist das der zug nach {de}"),
            (f"how far is it to {en}", f"wie weit ist es bis nach {de}"),
            (f"have you ever been to {en}", f"warst du schon einmal in {de}"),
            (f"i would like to go to {en}", f"ich möchte nach {de} fahren"),
            (f"next summer we are going to {en}", f"nächsten sommer fahren wir nach {de}"),
            (f"welcome to {en}", f"willkommen in {de}"),
            (f"i have never been to {en}", f"ich war noch nie in {de}"),
        ]
    for en, de, country in CITIES:
        out.add(f"{en} is in {country}", f"{de} liegt in {COUNTRY_DE[country]}")
        t = rng.choice(TIMES)
        out.add(f"the train to {en} leaves at {t.en}", f"der zug nach {de} fährt um {t.de} ab")
    return out


def languages() -> list[Pair]:
    out = Pairs()
    langs = sorted({(c[2], c[3]) for c in COUNTRIES})
    for s in SUBJECTS:
        fin = SPRECHEN[s.person]
        for en, de in langs:
            out.add(f"{s.en} {s.v('speak')} {en}", Clause(s.de, fin, de).main())
            out.add(
                f"{s.en} {s.v('speak')} {en} very well",
                Clause(s.de, fin, f"sehr gut {de}").main(),
            )
            out.add(
                f"{s.en} {s.v('speak')} a little {en}",
                Clause(s.de, fin, f"ein bisschen {de}").main(),
            )
            out.add(f"{s.en} {s.dont} speak {en}", Clause(s.de, fin, f"kein {de}").main())
            if s.asks:
                out.add(f"{s.do} {s.en} speak {en}", Clause(s.de, fin, de).question())
            out.add(
                f"{s.en} {s.be} learning {en}", Clause(s.de, verb("lernen")[s.person], de).main()
            )
    for c_en, c_de, l_en, l_de in COUNTRIES:
        out.add(f"in {c_en} people speak {l_en}", f"in {c_de} spricht man {l_de}")
        out.add(f"what language do they speak in {c_en}", f"welche sprache spricht man in {c_de}")
    return out


def day_activities() -> list[Activity]:
    return [
        Activity(
            "play football",
            "plays football",
            lambda s: Clause(s.de, verb("spielen")[s.person], "fußball"),
        ),
        Activity(
            "go swimming",
            "goes swimming",
            lambda s: Clause(s.de, verb("gehen")[s.person], end="schwimmen"),
        ),
        Activity(
            "go shopping",
            "goes shopping",
            lambda s: Clause(s.de, verb("gehen")[s.person], end="einkaufen"),
        ),
        Activity(
            "work at home",
            "works at home",
            lambda s: Clause(s.de, verb("arbeiten")[s.person], "zu hause"),
        ),
        Activity(
            "clean the flat",
            "cleans the flat",
            lambda s: Clause(s.de, verb("putzen")[s.person], "die wohnung"),
        ),
        Activity(
            "go to the cinema",
            "goes to the cinema",
            lambda s: Clause(s.de, verb("gehen")[s.person], "ins kino"),
        ),
        Activity(
            "cook for the family",
            "cooks for the family",
            lambda s: Clause(s.de, verb("kochen")[s.person], "für die familie"),
        ),
        Activity(
            "visit {poss} grandmother",
            "visits {poss} grandmother",
            lambda s: Clause(s.de, verb("besuchen")[s.person], np(GRANDMOTHER, "acc", s.poss_de)),
        ),
        Activity(
            "go to the market",
            "goes to the market",
            lambda s: Clause(s.de, verb("gehen")[s.person], "auf den markt"),
        ),
        Activity(
            "get up late",
            "gets up late",
            lambda s: Clause(s.de, verb("stehen")[s.person], "spät", sep="auf"),
        ),
    ]


BIRTHDAY = Noun("birthday", "geburtstag", "m")


def days() -> list[Pair]:
    out = Pairs()
    for day_en, day_de in DAYS:
        out += [
            (f"today is {day_en}", f"heute ist {day_de}"),
            (f"tomorrow is {day_en}", f"morgen ist {day_de}"),
            (f"yesterday was {day_en}", f"gestern war {day_de}"),
            (f"see you on {day_en}", f"bis {day_de}"),
            (f"what are you doing on {day_en}", f"was machst du am {day_de}"),
            (f"we are meeting on {day_en}", f"wir treffen uns am {day_de}"),
            (f"the party is on {day_en}", f"die party ist am {day_de}"),
            (f"are you free on {day_en}", f"hast du am {day_de} zeit"),
            (f"is today {day_en}", f"ist heute {day_de}"),
        ]
        for s in SUBJECTS:
            out.add(
                f"{s.en} {s.have} time on {day_en}",
                Clause(s.de, HABEN[s.person], f"am {day_de} zeit").main(),
            )
            out.add(
                f"{s.en} {s.have} no time on {day_en}",
                Clause(s.de, HABEN[s.person], "keine zeit").front(f"am {day_de}"),
            )
            for act in day_activities():
                if s.en == "the children" and "work" in act.en:
                    continue
                out.add(f"on {day_en} {s.en} {act.english(s)}", act.de(s).front(f"am {day_de}"))
                out.add(
                    f"{s.en} {act.english(s)} every {day_en}", act.de(s).front(f"jeden {day_de}")
                )
    for month_en, month_de, season in MONTHS:
        for s in PRONOUNS:
            if s.person in ("1sg", "2sg", "3sg"):
                out.add(
                    f"{s.poss_en} birthday is in {month_en}",
                    f"{np(BIRTHDAY, 'nom', s.poss_de)} ist im {month_de}",
                )
            out.add(
                f"{s.en} {s.be} going on holiday in {month_en}",
                Clause(s.de, FAHREN[s.person], f"im {month_de} in den urlaub").main(),
            )
        for adj in WEATHER_ADJS:
            if season in adj.tags:
                out.add(
                    f"it is often {adj.en} in {month_en}",
                    Clause("es", "ist", f"oft {adj.de}").front(f"im {month_de}"),
                )
        for _, simple, _, _, de, _, _, seasons in WEATHER_VERBS:
            if season in seasons:
                out.add(
                    f"it often {simple} in {month_en}",
                    Clause("es", de, "oft").front(f"im {month_de}"),
                )
        out.add(f"we have holidays in {month_en}", f"wir haben im {month_de} ferien")
    return out


def person_clauses(s: Subject) -> list[tuple[str, Clause]]:
    """Simple clauses about a person, for dass/weil/ob sentences."""
    p = s.person
    return [
        (f"{s.en} {s.be} tired", Clause(s.de, SEIN[p], "müde")),
        (f"{s.en} {s.be} ill", Clause(s.de, SEIN[p], "krank")),
        (f"{s.en} {s.be} on holiday", Clause(s.de, SEIN[p], "im urlaub")),
        (f"{s.en} {s.have} no time", Clause(s.de, HABEN[p], "keine zeit")),
        (f"{s.en} {s.have} a cold", Clause(s.de, SEIN[p], "erkältet")),
        (f"{s.en} {s.have} to work", Clause(s.de, MUESSEN[p], end="arbeiten")),
        (f"{s.en} {s.have} to work tomorrow", Clause(s.de, MUESSEN[p], "morgen", end="arbeiten")),
        (f"{s.en} can't come today", Clause(s.de, KOENNEN[p], "heute nicht", end="kommen")),
        (f"{s.en} {s.be} learning german", Clause(s.de, verb("lernen")[p], "deutsch")),
        (f"{s.en} {s.v('live')} in berlin", Clause(s.de, verb("wohnen")[p], "in berlin")),
        (
            f"{s.en} {s.v('get')} up at six o'clock",
            Clause(s.de, verb("stehen")[p], "um sechs uhr", sep="auf"),
        ),
        (f"{s.en} {s.v('come')} home late", Clause(s.de, verb("kommen")[p], "spät nach hause")),
        (
            f"{s.en} {s.v('start')} work at eight o'clock",
            Clause(s.de, FANGEN[p], "um acht uhr mit der arbeit", sep="an"),
        ),
    ]


WEATHER_CLAUSES = [
    ("it is raining", Clause("es", "regnet"), "bad"),
    ("it is snowing", Clause("es", "schneit"), "bad"),
    ("it is cold", Clause("es", "ist", "kalt"), "bad"),
    ("it is very cold", Clause("es", "ist", "sehr kalt"), "bad"),
    ("it is windy", Clause("es", "ist", "windig"), "bad"),
    ("it is warm", Clause("es", "ist", "warm"), "good"),
    ("it is sunny", Clause("es", "ist", "sonnig"), "good"),
    ("the weather is nice", Clause("das wetter", "ist", "schön"), "good"),
    ("it is hot", Clause("es", "ist", "heiß"), "good"),
]
WEATHER_MAINS = [  # main clauses that follow a weather reason
    ("we stay at home", Clause("wir", "bleiben", "zu hause"), "bad"),
    ("i take the bus", Clause("ich", "nehme", "den bus"), "bad"),
    ("the children play inside", Clause("die kinder", "spielen", "drinnen"), "bad"),
    ("i wear a warm coat", Clause("ich", "trage", "einen warmen mantel"), "bad"),
    ("we drink tea", Clause("wir", "trinken", "tee"), "bad"),
    ("we go to the beach", Clause("wir", "gehen", "an den strand"), "good"),
    ("we go for a walk", Clause("wir", "gehen", end="spazieren"), "good"),
    ("the children play in the garden", Clause("die kinder", "spielen", "im garten"), "good"),
    ("we eat outside", Clause("wir", "essen", "draußen"), "good"),
    ("i ride my bike to work", Clause("ich", "fahre", "mit dem fahrrad zur arbeit"), "good"),
]


def subclauses(rng: random.Random) -> list[Pair]:
    out = Pairs()
    # dass / weil / ob with clauses about people
    for s in SUBJECTS:
        for en_c, c in person_clauses(s):
            if s.en == "i":
                continue
            out.add(f"i think {en_c}", f"ich glaube dass {c.sub()}")
            out.add(f"i know that {en_c}", f"ich weiß dass {c.sub()}")
            speaker = rng.choice([x for x in SUBJECTS if x.third and x != s])
            out.add(f"{speaker.en} says that {en_c}", f"{speaker.de} sagt dass {c.sub()}")
            if "can't" not in en_c and "no time" not in en_c:
                out.add(f"i don't know if {en_c}", f"ich weiß nicht ob {c.sub()}")
        clauses = dict(person_clauses(s.pronoun))
        reasons = [
            k
            for k in clauses
            if "tomorrow" not in k
            and any(w in k for w in ("tired", "ill", "holiday", "no time", "cold", "to work"))
        ]
        p = s.person
        mains = [
            (f"{s.en} can't come", Clause(s.de, KOENNEN[p], "nicht", end="kommen")),
            (f"{s.en} {s.be} staying at home", Clause(s.de, verb("bleiben")[p], "zu hause")),
            (f"{s.en} {s.be} not coming today", Clause(s.de, verb("kommen")[p], "heute nicht")),
        ]
        for en_m, m in mains:
            for r in reasons:
                if "staying" in en_m and "holiday" in r:
                    continue
                out.add(f"{en_m} because {r}", f"{m.main()} weil {clauses[r].sub()}")
        her = s.pronoun
        out.add(
            f"if {s.en} {s.have} time {her.en} will come",
            f"wenn {Clause(s.de, HABEN[p], 'zeit').sub()} {Clause(her.de, KOMMEN[p]).question()}",
        )
        out.add(
            f"can {s.en} come tomorrow",
            Clause(s.de, KOENNEN[p], "morgen", end="kommen").question(),
        )
    for en_w, w, kind in WEATHER_CLAUSES:
        out.add(f"i think {en_w}", f"ich glaube dass {w.sub()}")
        if kind == "bad":
            out.add(f"i am staying at home because {en_w}", f"ich bleibe zu hause weil {w.sub()}")
        for en_m, m, mkind in WEATHER_MAINS:
            if mkind == kind:
                out.add(f"if {en_w} {en_m}", f"wenn {w.sub()} {m.question()}")
                out.add(f"{en_m} because {en_w}", f"{m.main()} weil {w.sub()}")
                out.add(f"{en_m} when {en_w}", f"{m.main()} wenn {w.sub()}")
    # indirect questions: verb last
    for p in PLACES:
        d = np(p, "nom")
        out.add(f"do you know where the {p.en} is", f"weißt du wo {d} ist")
        out.add(f"can you tell me where the {p.en} is", f"kannst du mir sagen wo {d} ist")
        out.add(f"i don't know where the {p.en} is", f"ich weiß nicht wo {d} ist")
        if p.has("open"):
            out.add(f"do you know when the {p.en} opens", f"weißt du wann {d} öffnet")
            out.add(
                f"do you know if the {p.en} is open today", f"weißt du ob {d} heute geöffnet ist"
            )
    for t in THINGS:
        if t.gender == "pl":
            continue
        out.add(f"do you know where my {t.en} is", f"weißt du wo {np(t, 'nom', 'mein')} ist")
    for v in (Noun("bus", "bus", "m"), Noun("train", "zug", "m"), Noun("tram", "straßenbahn", "f")):
        out.add(f"do you know when the {v.en} leaves", f"weißt du wann {np(v, 'nom')} abfährt")
        out.add(
            f"i don't know when the {v.en} arrives", f"ich weiß nicht wann {np(v, 'nom')} ankommt"
        )
    for n in CLOTHES + GOODS:
        if n.gender == "pl":
            continue
        out.add(
            f"do you know how much the {n.en} costs", f"weißt du wie viel {np(n, 'nom')} kostet"
        )
    return out


FAMILIES: dict[str, tuple[Callable[[random.Random], list[Pair]], int]] = {
    "family_how": (lambda r: family_how(), 10_000),
    "family_people": (lambda r: family_people(), 170),
    "family_age": (family_age, 90),
    "family_actions": (lambda r: family_actions(), 180),
    "food_order": (lambda r: food_order(), 130),
    "food_habits": (lambda r: food_habits(), 170),
    "food_state": (lambda r: food_state(), 90),
    "weather": (weather, 170),
    "clock": (lambda r: clock(), 80),
    "events": (lambda r: events(), 90),
    "routines": (lambda r: routines(), 150),
    "numbers": (numbers, 110),
    "prices": (prices, 120),
    "shopping": (lambda r: shopping(), 160),
    "describe": (lambda r: describe(), 150),
    "directions": (directions, 160),
    "positions": (lambda r: positions(), 130),
    "transport": (lambda r: transport(), 130),
    "travel": (travel, 150),
    "languages": (lambda r: languages(), 90),
    "days": (lambda r: days(), 150),
    "subclauses": (subclauses, 200),
}


# --------------------------------------------------------------------------------------
# Assembly, splitting and verification
# --------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    return " ".join(text.split())


def check_pair(en: str, de: str, where: str) -> None:
    if not EN_CHARS.match(en):
        raise ValueError(f"{where}: English side breaks the conventions: {en!r}")
    if not DE_CHARS.match(de):
        raise ValueError(f"{where}: German side breaks the conventions: {de!r}")
    for side in (en, de):
        if len(side.split()) > MAX_WORDS:
            raise ValueError(f"{where}: sentence too long: {side!r}")


def read_handwritten(path: Path = HANDWRITTEN) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path.name}:{number}: expected English<TAB>German, got {line!r}")
        en, de = normalise(fields[0]), normalise(fields[1])
        check_pair(en, de, f"{path.name}:{number}")
        pairs.append((en, de))
    return pairs


def generate(rng: random.Random) -> dict[str, list[Pair]]:
    """Every family's pairs, deduplicated and sampled down to the family's cap."""
    families = {}
    for name, (make, cap) in FAMILIES.items():
        pairs = list(dict.fromkeys((normalise(en), normalise(de)) for en, de in make(rng)))
        for en, de in pairs:
            check_pair(en, de, name)
        if len(pairs) > cap:
            pairs = rng.sample(pairs, cap)
        families[name] = pairs
    return families


def components(pairs: list[Pair]) -> list[list[Pair]]:
    """Group pairs that share an English or a German sentence (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for en, de in pairs:
        parent[find("en:" + en)] = find("de:" + de)
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[find("en:" + pair[0])].append(pair)
    return sorted(groups.values())


def split(pairs: list[Pair], rng: random.Random) -> dict[str, list[Pair]]:
    groups = components(pairs)
    forced = [g for g in groups if any(en in FORCE_TRAIN for en, _ in g)]
    free = [g for g in groups if g not in forced]
    rng.shuffle(free)
    want = {"valid": round(len(pairs) * VALID_FRACTION), "test": round(len(pairs) * TEST_FRACTION)}
    splits: dict[str, list[Pair]] = {
        "train": [p for g in forced for p in g],
        "valid": [],
        "test": [],
    }
    for group in free:
        target = next(
            (name for name in ("valid", "test") if len(splits[name]) < want[name]), "train"
        )
        if len(group) > 3:  # large groups of synonyms stay in train
            target = "train"
        splits[target].extend(group)
    for name in splits:
        rng.shuffle(splits[name])
    return splits


def verify(splits: dict[str, list[Pair]]) -> None:
    names = list(splits)
    for name in names:
        pairs = splits[name]
        assert len(pairs) == len(set(pairs)), f"duplicate pairs in {name}"
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for side in (0, 1):
                shared = {p[side] for p in splits[first]} & {p[side] for p in splits[second]}
                assert not shared, f"{first} and {second} share sentences: {sorted(shared)[:5]}"
    assert ("how are you", "wie geht es dir") in splits["train"], "demo pair missing from train"
    total = sum(len(p) for p in splits.values())
    assert total >= MIN_PAIRS, f"only {total} pairs"
    assert min(len(splits["valid"]), len(splits["test"])) >= MIN_HELDOUT, (
        "held-out splits too small"
    )


def write(splits: dict[str, list[Pair]], out_dir: Path = DATA) -> None:
    for name, pairs in splits.items():
        for side, lang in ((0, "en"), (1, "de")):
            text = "".join(p[side] + "\n" for p in pairs)
            (out_dir / f"{name}.{lang}").write_text(text, encoding="utf-8")


def build(show: int = 0) -> dict[str, list[Pair]]:
    rng = random.Random(SEED)
    hand = read_handwritten()
    assert len(set(hand)) >= MIN_HANDWRITTEN, f"only {len(set(hand))} hand-written pairs"
    families = generate(rng)
    pairs = list(dict.fromkeys(hand + [p for fam in families.values() for p in fam]))
    splits = split(pairs, rng)
    verify(splits)
    if show:
        for name, fam in [("handwritten", hand), *families.items()]:
            print(f"\n== {name} ({len(fam)}) ==")
            for en, de in random.Random(name).sample(fam, min(show, len(fam))):
                print(f"  {en}  =>  {de}")
    print(f"hand-written pairs: {len(set(hand))}")
    print(f"generated pairs:    {sum(len(f) for f in families.values())}")
    for name, fam in families.items():
        print(f"  {name:15s} {len(fam)}")
    for name, split_pairs in splits.items():
        print(f"{name:6s} {len(split_pairs)} pairs")
    print(f"total  {sum(len(p) for p in splits.values())} pairs; splits disjoint on both sides")
    return splits


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--show", type=int, default=0, help="print N random pairs per family")
    parser.add_argument("--dry-run", action="store_true", help="check only, write nothing")
    args = parser.parse_args(None if argv is None else list(argv))
    splits = build(args.show)
    if not args.dry_run:
        write(splits)
        print(f"wrote {DATA}/{{train,valid,test}}.{{en,de}}")


if __name__ == "__main__":
    main()
