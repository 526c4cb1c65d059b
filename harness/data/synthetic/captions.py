"""Captions for synthetic scenes: true of every render, varied, and parallel within a family.

Every random choice is made with exactly one ``rng.random()`` draw, from a generator keyed by
the scene *family* (not the scene). A base scene and its swapped variants therefore get the
same templates, synonyms and object order, so their captions often share every word and
differ only in attribute binding or word order: compositional hard negatives by construction.
Relations are phrased from a direction chosen first; the subject is whichever object the
geometry makes it, which is what keeps a position swap's captions to the same bag of words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from itertools import combinations

from harness.data.synthetic.scenes import SceneObject

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign", "plus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
GENERIC_NOUNS: tuple[str, ...] = ("one", "shape", "object", "thing")
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
}
BIGGER_WORDS: tuple[str, ...] = ("bigger than", "larger than")
SMALLER_WORDS: tuple[str, ...] = ("smaller than",)
POSITION_WORDS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left corner",),
    (0, 1): ("at the top", "near the top"),
    (0, 2): ("in the top right corner",),
    (1, 0): ("on the left", "on the left side"),
    (1, 1): ("in the center", "in the middle"),
    (1, 2): ("on the right", "on the right side"),
    (2, 0): ("in the bottom left corner",),
    (2, 1): ("at the bottom", "near the bottom"),
    (2, 2): ("in the bottom right corner",),
}
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three"}
LIST_INTROS: tuple[str, ...] = (
    "{}", "a picture of {}", "an image with {}", "there are {}", "{n} shapes: {}",
    "{n} objects: {}",
)
CAPTIONS_PER_IMAGE = 5

Objects = Sequence[SceneObject]


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    """One option, always from exactly one draw (``rng.choice`` draws a variable number)."""
    return options[int(rng.random() * len(options))]


def _index(rng: random.Random, n: int) -> int:
    """A uniform index below ``n`` from exactly one draw."""
    return int(rng.random() * n)


def _permutation(rng: random.Random, n: int) -> list[int]:
    """A Fisher-Yates permutation with a fixed number of draws."""
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = _index(rng, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _article(phrase: str, definite: bool) -> str:
    """Prefix 'the', 'a' or 'an'."""
    if definite:
        return f"the {phrase}"
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _noun(obj: SceneObject, rng: random.Random, definite: bool, with_size: bool = True) -> str:
    """A noun phrase naming ``obj``; it always holds its colour or its shape word."""
    mode = rng.random()
    shape = _pick(rng, SHAPE_WORDS[obj.shape])
    size = _pick(rng, SIZE_WORDS[obj.size])
    generic = _pick(rng, GENERIC_NOUNS)
    if mode < 0.45 and with_size:
        phrase = f"{size} {obj.colour} {shape}"
    elif mode < 0.88:
        phrase = f"{obj.colour} {shape}"
    elif mode < 0.96 or not with_size:
        phrase = f"{obj.colour} {generic}"
    else:
        phrase = f"{size} {shape}"
    return _article(phrase, definite)


def _nouns(objs: Objects, rng: random.Random, definite: bool, with_size: bool = True) -> list[str]:
    """One noun phrase per object, in object order."""
    return [_noun(o, rng, definite, with_size) for o in objs]


def _join(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _relation(objs: Objects, i: int, j: int, rng: random.Random) -> tuple[int, str, int]:
    """(subject, relation phrase, object) true for objects i and j."""
    (row_i, col_i), (row_j, col_j) = objs[i].cell, objs[j].cell
    axes = [axis for axis, differs in (("h", col_i != col_j), ("v", row_i != row_j)) if differs]
    axis = axes[_index(rng, len(axes))]
    forward = rng.random() < 0.5
    if axis == "h":
        first, second = (i, j) if col_i < col_j else (j, i)  # first is the left one
        word = "left" if forward else "right"
    else:
        first, second = (i, j) if row_i < row_j else (j, i)  # first is the upper one
        word = "above" if forward else "below"
    subject, other = (first, second) if forward else (second, first)
    return subject, _pick(rng, RELATION_WORDS[word]), other


def _pair(objs: Objects, rng: random.Random) -> tuple[int, int]:
    """A random unordered pair of object indices."""
    pairs = list(combinations(range(len(objs)), 2))
    return pairs[_index(rng, len(pairs))]


def t_relation(objs: Objects, rng: random.Random) -> str:
    """One spatial relation between two of the objects."""
    i, j = _pair(objs, rng)
    definite = rng.random() < 0.5
    style = rng.random()
    nps = _nouns(objs, rng, definite)
    subject, phrase, other = _relation(objs, i, j, rng)
    if definite:
        return f"{nps[subject]} is {phrase} {nps[other]}"
    if style < 0.5:
        return f"{nps[subject]} {phrase} {nps[other]}"
    return f"there is {nps[subject]} {phrase} {nps[other]}"


def t_two_relations(objs: Objects, rng: random.Random) -> str:
    """Two relations chained over three objects, or a relation plus a position for two."""
    i, j = _pair(objs, rng)
    joiner = _pick(rng, (" and ", ", and ", " while "))
    nps = _nouns(objs, rng, definite=True)
    subject, phrase, other = _relation(objs, i, j, rng)
    first = f"{nps[subject]} is {phrase} {nps[other]}"
    if len(objs) == 2:
        return f"{first}, which is {_pick(rng, POSITION_WORDS[objs[other].cell])}"
    third = 3 - i - j
    anchor = (i, j)[_index(rng, 2)]
    subject, phrase, other = _relation(objs, third, anchor, rng)
    return f"{first}{joiner}{nps[subject]} is {phrase} {nps[other]}"


def t_list(objs: Objects, rng: random.Random) -> str:
    """All objects, in random order, without relations."""
    order = _permutation(rng, len(objs))
    intro = _pick(rng, LIST_INTROS)
    nps = _nouns(objs, rng, definite=False)
    return intro.format(_join([nps[k] for k in order]), n=COUNT_WORDS[len(objs)])


def t_positions(objs: Objects, rng: random.Random) -> str:
    """Every object with its place in the picture."""
    order = _permutation(rng, len(objs))
    intro = _pick(rng, ("", "a picture with ", "an image showing "))
    nps = _nouns(objs, rng, definite=False)
    places = [_pick(rng, POSITION_WORDS[o.cell]) for o in objs]
    return intro + _join([f"{nps[k]} {places[k]}" for k in order])


def t_single(objs: Objects, rng: random.Random) -> str:
    """Only one of the objects and its place (a caption that leaves the others out)."""
    k = _index(rng, len(objs))
    style = rng.random()
    noun = _noun(objs[k], rng, definite=False)
    place = _pick(rng, POSITION_WORDS[objs[k].cell])
    if style < 0.4:
        return f"{noun} {place}"
    if style < 0.7:
        return f"{place} there is {noun}"
    return f"{noun} sits {place}"


def t_size(objs: Objects, rng: random.Random) -> str:
    """A size comparison between two objects, or what size they all share."""
    nps = _nouns(objs, rng, definite=True, with_size=False)
    forward = rng.random() < 0.5
    pairs = [(i, j) for i, j in combinations(range(len(objs)), 2) if objs[i].size != objs[j].size]
    if not pairs:
        size = _pick(rng, SIZE_WORDS[objs[0].size])
        if len(objs) == 2:
            return f"{nps[0]} and {nps[1]} are both {size}"
        return f"all three shapes are {size}" if forward else f"{_join(nps)} are all {size}"
    i, j = pairs[_index(rng, len(pairs))]
    big, small = (i, j) if objs[i].size == "large" else (j, i)
    if forward:
        return f"{nps[big]} is {_pick(rng, BIGGER_WORDS)} {nps[small]}"
    return f"{nps[small]} is {_pick(rng, SMALLER_WORDS)} {nps[big]}"


TEMPLATES: dict[str, Callable[[Objects, random.Random], str]] = {
    "relation": t_relation,
    "two_relations": t_two_relations,
    "list": t_list,
    "positions": t_positions,
    "single": t_single,
    "size": t_size,
}
# Relational captions are the ones that need binding and word order; every image gets them.
_ALWAYS = ("relation", "two_relations")
_OPTIONAL = ("list", "positions", "single", "size")


def _finish(text: str, rng: random.Random) -> str:
    """Sentence case with a full stop about half the time, like crowd-sourced captions."""
    if rng.random() < 0.5:
        return text[0].upper() + text[1:] + "."
    return text


def caption(objs: Objects, kind: str, key: str) -> str:
    """One caption of template ``kind``, fully determined by ``key``."""
    rng = random.Random(key)
    return _finish(TEMPLATES[kind](objs, rng), rng)


def image_captions(objs: Objects, key: str) -> list[str]:
    """Five captions for one render; ``key`` names the family and render, not the scene."""
    rng = random.Random(f"{key}:kinds")
    optional = [_OPTIONAL[k] for k in _permutation(rng, len(_OPTIONAL))]
    kinds = list(_ALWAYS) + optional[: CAPTIONS_PER_IMAGE - len(_ALWAYS)]
    kinds = [kinds[k] for k in _permutation(rng, len(kinds))]
    return [caption(objs, kind, f"{key}:{n}") for n, kind in enumerate(kinds)]


def web_caption(objs: Objects, key: str) -> str:
    """One caption of a random template, for a pretraining pair."""
    rng = random.Random(f"{key}:kind")
    kinds = sorted(TEMPLATES)
    return caption(objs, kinds[_index(rng, len(kinds))], key)


def tokenize(raw: str) -> list[str]:
    """Karpathy-style tokens: lowercase words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())
