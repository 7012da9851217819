"""The toy world's words: invented names, tweet templates, relation phrases, captions.

Most templates carry no cue about an entity's type or a pair's relation ("everyone is talking
about X tonight"); a share of them do ("X said", "X is a member of Y"). So text gives a prior
and the image gives the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Name = tuple[str, ...]  # the tokens of an invented name, e.g. ("Kavo", "Drel")

# -- names -----------------------------------------------------------------------------------

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kl",
    "st",
    "tr",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "l", "r", "s")


def _word(rng: np.random.Generator, syllables: int) -> str:
    parts = [
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(5)] for _ in range(syllables)
    ]
    return "".join(parts) + _CODAS[rng.integers(len(_CODAS))]


def make_names(n: int, rng: np.random.Generator, multiword_rate: float = 0.3) -> list[Name]:
    """``n`` pronounceable names; no word is shared by two names, so every mention is unambiguous."""
    used: set[str] = set()
    names: list[Name] = []
    while len(names) < n:
        k = 2 if rng.random() < multiword_rate else 1
        words = tuple(
            _word(rng, int(rng.integers(1, 3)) if k == 2 else 2).capitalize() for _ in range(k)
        )
        if len(set(words)) < k or any(len(w) < 3 or w.lower() in used for w in words):
            continue
        used.update(w.lower() for w in words)
        names.append(words)
    return names


def handle(rng: np.random.Generator) -> str:
    """A Twitter user handle such as ``@kelo_23``."""
    tail = f"_{rng.integers(1, 100)}" if rng.random() < 0.4 else ""
    return "@" + _word(rng, 2) + tail


# -- templates -------------------------------------------------------------------------------

# NER: one clause per mention, ``{E}`` is the mention.
NER_NEUTRAL: tuple[str, ...] = (
    "everyone is talking about {E} tonight", "{E} again !", "so much love for {E}",
    "can't stop thinking about {E}", "check out {E} !", "{E} is trending", "wow , {E}",
    "this is {E}", "look at {E} today", "{E} all day", "big news about {E}",
    "thoughts on {E} ?", "here we go {E}", "{E} !!!", "all eyes on {E}", "more on {E} later",
    "cannot believe {E}", "{E} right now",
)  # fmt: skip
NER_CUES: dict[str, tuple[str, ...]] = {
    "PER": ("{E} said", "{E} says", "happy birthday {E}", "interview with {E}", "{E} scored twice"),
    "LOC": ("live from {E}", "weather in {E}", "welcome to {E}", "trip to {E}", "flights to {E}"),
    "ORG": ("{E} announced", "{E} signs a deal", "shares of {E}", "{E} ceo", "{E} hires"),
    "MISC": ("{E} tickets", "{E} season", "watching {E}", "{E} premiere", "{E} trailer"),
}
NER_FILLERS: tuple[str, ...] = (
    "the {noun} was great", "new {noun} today", "{noun} time", "what a {noun}",
    "love this {noun}", "my {noun} and me",
)  # fmt: skip
FILLER_NOUNS: tuple[str, ...] = (
    "game", "night", "music", "team", "weekend", "coffee", "photo", "party", "show", "news",
    "crowd", "morning",
)  # fmt: skip
HASHTAGS: tuple[str, ...] = (
    "#news",
    "#love",
    "#fun",
    "#tbt",
    "#live",
    "#sports",
    "#music",
    "#travel",
)

# RE: ``{h}`` head, ``{t}`` tail.
RE_NEUTRAL: tuple[str, ...] = (
    "{h} and {t} tonight", "great day with {h} and {t}", "{h} , {t} and the {noun}",
    "{h} {t} !", "photos : {h} and {t}", "{t} and {h} at last", "{t} with {h} #tbt",
    "{h} meets {t}", "so proud of {h} and {t}", "{h} and {t} in one {noun}",
)  # fmt: skip
RE_CUES: dict[str, tuple[str, ...]] = {
    "/per/per/parent": ("{h} , the proud parent of {t}", "{h} with her kid {t}"),
    "/per/per/siblings": ("{h} and {t} are siblings", "{h} and brother {t}"),
    "/per/per/couple": ("{h} and {t} , the cutest couple", "{h} married {t}"),
    "/per/per/neighbor": ("{h} is the neighbor of {t}", "{h} next door to {t}"),
    "/per/per/peer": ("{h} and {t} , peers on the team", "{h} with teammate {t}"),
    "/per/per/charges": ("{h} charges {t}", "{h} files charges against {t}"),
    "/per/per/alumi": ("{h} and {t} , alumni of one school",),
    "/per/per/alternate_names": ("{h} , also known as {t}",),
    "/per/org/member_of": ("{h} is a member of {t}", "{h} joins {t}"),
    "/per/loc/place_of_residence": ("{h} lives in {t}", "{h} at home in {t}"),
    "/per/loc/place_of_birth": ("{h} was born in {t}", "{h} , a native of {t}"),
    "/org/org/alternate_names": ("{h} , alias {t}", "{h} aka {t}"),
    "/org/org/subsidiary": ("{h} , a subsidiary of {t}", "{h} owned by {t}"),
    "/org/loc/locate_at": ("{h} located at {t}", "{h} headquarters in {t}"),
    "/loc/loc/contain": ("{h} contains {t}", "{t} inside {h}"),
    "/per/misc/present_in": ("{h} present in {t}", "{h} appears in {t}"),
    "/per/misc/awarded": ("{h} awarded {t}", "{h} wins {t}"),
    "/per/misc/race": ("{h} , race : {t}",),
    "/per/misc/religion": ("{h} , religion : {t}",),
    "/per/misc/nationality": ("{h} , nationality : {t}", "{h} represents {t}"),
    "/misc/misc/part_of": ("{h} is part of {t}",),
    "/misc/loc/held_on": ("{h} held on {t}", "{h} takes place in {t}"),
}

# captions: ``{a}``, ``{b}``, ``{c}`` are noun phrases ("a brown dog"), ``{phrase}`` a relation
CAPTION_OBJECTS: dict[int, tuple[str, ...]] = {
    1: ("{a}", "photo of {a}", "look at {a}", "{a} on a sunny day", "here is {a}"),
    2: (
        "{a} beside {b}",
        "{a} next to {b}",
        "{a} and {b}",
        "photo of {a} near {b}",
        "{a} with {b}",
    ),
    3: ("{a} , {b} and {c}", "{a} beside {b} and {c}", "photo of {a} , {b} and {c}"),
}
CAPTION_RELATION: tuple[str, ...] = (
    "{a} and {b} , {phrase}", "{phrase} : {a} with {b}", "{a} next to {b} showing {phrase}",
    "a picture of {phrase} with {a} and {b}",
)  # fmt: skip


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def fill(
    template: str, slots: Mapping[str, Sequence[str]]
) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Whitespace tokens of ``template`` with each ``{key}`` token replaced by ``slots[key]``.

    Returns the tokens and the ``[start, end)`` token span of every filled slot.
    """
    tokens: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    for part in template.split():
        if part.startswith("{") and part.endswith("}") and part[1:-1] in slots:
            start = len(tokens)
            tokens.extend(slots[part[1:-1]])
            spans[part[1:-1]] = (start, len(tokens))
        else:
            tokens.append(part)
    return tokens, spans


def noun_phrase(noun: str, colour: str, rng: np.random.Generator, size: str = "") -> str:
    """``"a brown dog"``, ``"a dog"`` or ``"a big person"`` (article fixed for vowels)."""
    adjective = size or (colour if rng.random() < 0.6 else "")
    words = f"{adjective} {noun}".strip()
    return ("an " if words[0] in "aeiou" else "a ") + words


def caption(phrases: Sequence[str], relation_phrase: str | None, rng: np.random.Generator) -> str:
    """A caption naming the drawn objects (left to right) and the drawn relation, if any."""
    if relation_phrase is not None:
        template = pick(rng, CAPTION_RELATION)
        return template.format(a=phrases[0], b=phrases[1], phrase=relation_phrase)
    template = pick(rng, CAPTION_OBJECTS[len(phrases)])
    return template.format(**dict(zip("abc", phrases)))
