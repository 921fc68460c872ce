"""The toy world: flat-colour shapes on a plain background, drawn from a seed, with captions and masks.

Scenes are what the demo model was trained on and what its tests measure. Everything is deterministic from the
seed (numpy's PCG64 and PIL's rasteriser), so a test can draw the exact scene a caption describes, and a model's
picture can be checked against the caption by colour alone (see measure.py): every object in a scene has its own
colour, and no object colour is a background colour.

Captions list the objects from left to right ("a big red circle, a small blue square and a big green triangle
on a white background"). The order gives the model a cheap way to bind each noun phrase to a place, and gives a
word swap one object to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
#: Object colours (RGB). Far apart from each other and from every background, so nearest-colour segmentation is safe.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (15, 15, 15),
                                                "gray": (128, 128, 128)}
#: The backgrounds the demo model was trained to draw on. Its VAE, trained on all three, drew small shapes on
#: gray too poorly to learn from (30 % of them misread, against 2 % on white or black; toy/MODEL.md,
#: "Choices made on the way").
MODEL_BACKGROUNDS = ("white", "black")
SHAPES = ("circle", "square", "triangle")
#: Width of an object's bounding box in pixels: 6 and 3.5 latent pixels after the VAE's 8x downsampling.
SIZES: dict[str, int] = {"big": 48, "small": 28}
MAX_OBJECTS = 3
#: Free pixels kept between objects and between an object and the border.
MARGIN = 4


@dataclass(frozen=True)
class Thing:
    """One object of a scene: what it is, and where (the centre of its bounding box, in pixels)."""

    size: str
    colour: str
    shape: str
    x: float = SIZE / 2
    y: float = SIZE / 2

    @property
    def words(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = SIZES[self.size] / 2
        return self.x - half, self.y - half, self.x + half, self.y + half


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str = "white"

    @property
    def caption(self) -> str:
        return f"{self._listed} on a {self.background} background"

    @property
    def background_first_caption(self) -> str:
        """The caption with the background named first ("on a white background, a big red circle"). A causal text
        encoder sums the whole caption up in its last words; named first, the background word stands for the
        background alone, and a model trained on these captions puts its map around the objects."""
        return f"on a {self.background} background, {self._listed}"

    @property
    def _listed(self) -> str:
        phrases = [f"a {t.words}" for t in sorted(self.things, key=lambda t: t.x)]
        return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def with_thing(self, index: int, **changes: str) -> Scene:
        """The same scene with one object (in caption order) changed, e.g. ``colour="blue"``."""
        ordered = sorted(self.things, key=lambda t: t.x)
        ordered[index] = replace(ordered[index], **changes)
        return Scene(tuple(ordered), self.background)


def _apart(a: Thing, b: Thing) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + MARGIN <= bx0 or bx1 + MARGIN <= ax0 or ay1 + MARGIN <= by0 or by1 + MARGIN <= ay0


def random_scene(rng: np.random.Generator, count: int | None = None,
                 backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)) -> Scene:
    """1 to 3 objects of distinct colours at random, non-overlapping places on one of ``backgrounds``."""
    count = count or int(rng.integers(1, MAX_OBJECTS + 1))
    colours = rng.permutation(list(COLOURS))[:count]
    background = str(rng.choice(list(backgrounds)))
    while True:
        things: list[Thing] = []
        for colour in colours:
            size = str(rng.choice(list(SIZES)))
            half = SIZES[size] / 2 + MARGIN
            for _ in range(50):
                thing = Thing(size, str(colour), str(rng.choice(SHAPES)),
                              float(rng.uniform(half, SIZE - half)), float(rng.uniform(half, SIZE - half)))
                if all(_apart(thing, other) for other in things):
                    things.append(thing)
                    break
        if len(things) == count:
            return Scene(tuple(things), background)


def place(scene: Scene, rng: np.random.Generator) -> Scene:
    """The objects of ``scene`` (as `parse_caption` gives them, centred) at random places apart from each other,
    left to right in the order the caption names them, as captions list them (each centre at least a tenth of the
    picture right of the one before, so the order shows)."""
    while True:
        things: list[Thing] = []
        for thing in scene.things:
            half = SIZES[thing.size] / 2 + MARGIN
            spots = rng.uniform(half, SIZE - half, size=(50, 2))
            things += [p for p in (replace(thing, x=float(x), y=float(y)) for x, y in spots)
                       if all(_apart(p, other) for other in things)][:1]
        xs = [t.x for t in things]
        if len(things) == len(scene.things) and all(right - left >= SIZE / 10 for left, right in zip(xs, xs[1:])):
            return Scene(tuple(things), scene.background)


def _outline(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The polygon of a shape filling ``box`` (x0, y0, x1, y1), or None for a circle (an ellipse of the box)."""
    x0, y0, x1, y1 = box
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return None


def _fill(surface: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    outline = _outline(shape, box)
    if outline is None:
        surface.ellipse(box, fill=fill)
    else:
        surface.polygon(outline, fill=fill)


def outline_mask(shape: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """A boolean mask [H, W] of the shape drawn into ``box``, as draw() draws it."""
    mask = Image.new("L", (size[1], size[0]), 0)
    _fill(ImageDraw.Draw(mask), shape, box, 255)
    return np.asarray(mask) > 127


def draw(scene: Scene, scale: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scene as an RGB uint8 array [128 * scale, 128 * scale, 3], and each object's boolean mask (in caption
    order).

    ``scale`` draws the same scene that many times larger (the joint-attention demo model's pictures are 256
    pixels: its image tokens, 16 of these pixels square, would otherwise be wider than half a small object)."""
    size = SIZE * scale
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    canvas = ImageDraw.Draw(image)
    masks = []
    for thing in sorted(scene.things, key=lambda t: t.x):
        box = tuple(edge * scale for edge in thing.box)
        _fill(canvas, thing.shape, box, COLOURS[thing.colour])
        masks.append(outline_mask(thing.shape, box, (size, size)))
    return np.asarray(image), masks


_PHRASE = re.compile(r"an? (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+)")
_CAPTIONS = (re.compile(r"(?P<things>.+) on an? (?P<background>\w+) background"),
             re.compile(r"on an? (?P<background>\w+) background, (?P<things>.+)"))


def parse_caption(caption: str) -> Scene:
    """The objects and background a caption names (positions unknown: centred), for checking a picture against it.

    Raises ValueError for a caption outside the toy grammar, naming the words it does not know.
    """
    whole = next((m for m in (c.fullmatch(caption.strip()) for c in _CAPTIONS) if m is not None), None)
    if whole is None:
        raise ValueError("not a toy-world caption (expected '... on a <colour> background' or 'on a <colour> "
                         f"background, ...'): {caption!r}")
    parts = re.split(r",\s*|\s+and\s+", whole["things"])
    things = []
    for part in parts:
        phrase = _PHRASE.fullmatch(part.strip())
        if phrase is None or phrase["size"] not in SIZES or phrase["colour"] not in COLOURS \
                or phrase["shape"] not in SHAPES:
            raise ValueError(f"{part!r} is not '<size> <colour> <shape>' with size in {list(SIZES)}, colour in "
                             f"{list(COLOURS)} and shape in {list(SHAPES)}")
        things.append(Thing(phrase["size"], phrase["colour"], phrase["shape"]))
    if whole["background"] not in BACKGROUNDS:
        raise ValueError(f"background {whole['background']!r} is not one of {list(BACKGROUNDS)}")
    return Scene(tuple(things), whole["background"])


def vocabulary() -> list[str]:
    """Every word a caption of the demo model can hold."""
    return ["a", "and", "on", "background", *SIZES, *COLOURS, *SHAPES, *MODEL_BACKGROUNDS]
