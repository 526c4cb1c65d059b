"""Compositional scenes for the embedded synthetic dataset: objects on a grid, hard-negative swaps.

A scene is 2-3 objects, each with a colour, a shape, a size and a cell of a 3x3 layout grid.
Colours are distinct within a scene and so are shapes, which keeps every caption that names
an object by colour or by shape unambiguous. Scenes come in *families*: a base scene plus
0-2 variants that swap one attribute (colour, shape, size) or the positions of two of its
objects, so the variants' descriptions use exactly the base's words, bound differently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from itertools import combinations

GRID = 3
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 90, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 60, 185),
    "orange": (245, 135, 30),
    "white": (242, 242, 242),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
ROW_NAMES: tuple[str, ...] = ("top", "middle", "bottom")
COL_NAMES: tuple[str, ...] = ("left", "center", "right")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: tuple[float, ...] = (0.8, 0.1, 0.1)
SWAP_FIELDS: dict[str, str] = {
    "colour": "colour",
    "shape": "shape",
    "size": "size",
    "position": "cell",
}
# About 60% of families get variants (1-2 each): roughly half of all scenes are a hard
# negative of another scene in the same split.
VARIANT_FAMILY_PROB = 0.6
_MAX_TRIES = 10_000


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes plus its (row, col) cell on the GRID x GRID layout."""

    colour: str
    shape: str
    size: str
    cell: tuple[int, int]


@dataclass(frozen=True)
class Scene:
    """A set of objects plus the family it belongs to and how it differs from the family base."""

    objects: tuple[SceneObject, ...]
    family: int
    swap: str = "base"

    @property
    def description(self) -> str:
        """Canonical text of the scene; equal descriptions mean equal scenes."""
        return describe(self.objects)


def describe(objects: tuple[SceneObject, ...]) -> str:
    """Canonical description: objects in reading order, e.g. 'large red circle at top left'."""
    ordered = sorted(objects, key=lambda o: o.cell)
    return "; ".join(
        f"{o.size} {o.colour} {o.shape} at {ROW_NAMES[o.cell[0]]} {COL_NAMES[o.cell[1]]}"
        for o in ordered
    )


def random_objects(rng: random.Random) -> tuple[SceneObject, ...]:
    """Draw 2-3 objects with distinct colours, distinct shapes and distinct cells."""
    n = rng.choice((2, 3))
    colours = rng.sample(sorted(COLOURS), n)
    shapes = rng.sample(SHAPES, n)
    cells = rng.sample(range(GRID * GRID), n)
    return tuple(
        SceneObject(colour, shape, rng.choice(SIZES), divmod(cell, GRID))
        for colour, shape, cell in zip(colours, shapes, cells)
    )


def swap_objects(
    objects: tuple[SceneObject, ...], kind: str, i: int, j: int
) -> tuple[SceneObject, ...] | None:
    """Exchange one attribute (or the cells) of objects i and j; None when they are equal."""
    field = SWAP_FIELDS[kind]
    a, b = objects[i], objects[j]
    value_a, value_b = getattr(a, field), getattr(b, field)
    if value_a == value_b:
        return None
    swapped = list(objects)
    swapped[i] = replace(a, **{field: value_b})
    swapped[j] = replace(b, **{field: value_a})
    return tuple(swapped)


def fresh_objects(rng: random.Random, used: set[str]) -> tuple[SceneObject, ...]:
    """Random objects whose description is not in ``used``; the description is added to it."""
    for _ in range(_MAX_TRIES):
        objects = random_objects(rng)
        text = describe(objects)
        if text not in used:
            used.add(text)
            return objects
    raise RuntimeError("synthetic: ran out of distinct scenes; ask for fewer images")


def sample_family(rng: random.Random, family: int, budget: int, used: set[str]) -> list[Scene]:
    """A base scene and up to two swapped variants of it, at most ``budget`` scenes in all."""
    base = fresh_objects(rng, used)
    scenes = [Scene(base, family)]
    wanted = 1 + (rng.choice((1, 2)) if rng.random() < VARIANT_FAMILY_PROB else 0)
    candidates = [
        (kind, i, j) for kind in SWAP_FIELDS for i, j in combinations(range(len(base)), 2)
    ]
    rng.shuffle(candidates)
    for kind, i, j in candidates:
        if len(scenes) >= min(wanted, budget):
            break
        objects = swap_objects(base, kind, i, j)
        if objects is None or describe(objects) in used:
            continue
        used.add(describe(objects))
        scenes.append(Scene(objects, family, kind))
    return scenes


def split_counts(n_scenes: int) -> tuple[int, ...]:
    """Scenes per split (train, val, test): 80/10/10, and at least one scene in each."""
    if n_scenes < len(SPLITS):
        raise ValueError(f"synthetic: need at least {len(SPLITS)} scenes, got {n_scenes}")
    held_out = [max(1, round(f * n_scenes)) for f in SPLIT_FRACTIONS[1:]]
    return (n_scenes - sum(held_out), *held_out)


def plan_scenes(rng: random.Random, n_scenes: int) -> list[tuple[str, Scene]]:
    """Families drawn per split (so variants share their base's split), in shuffled order."""
    used: set[str] = set()
    families: list[tuple[str, list[Scene]]] = []
    for split, count in zip(SPLITS, split_counts(n_scenes)):
        while count > 0:
            family = sample_family(rng, 0, count, used)
            families.append((split, family))
            count -= len(family)
    rng.shuffle(families)
    # Family ids follow the final order so they read naturally in the annotation file.
    return [
        (split, replace(scene, family=number))
        for number, (split, family) in enumerate(families)
        for scene in family
    ]


def sample_scenes(rng: random.Random, n_scenes: int, used: set[str]) -> list[Scene]:
    """Independent base scenes whose descriptions avoid ``used`` (pretraining corpus)."""
    return [Scene(fresh_objects(rng, used), number) for number in range(n_scenes)]
