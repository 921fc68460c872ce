"""What a toy-world picture shows, found by colour alone: which objects, where, of what shape and size.

Each pixel takes the nearest palette colour (object colours and backgrounds); a pixel further than
``TOLERANCE`` from every palette colour (a blurred edge) belongs to nothing. Each object colour's largest
connected region of at least MIN_AREA pixels is an object. Its shape is the ideal shape that, drawn into the
region's bounding box, overlaps it best (robust to the soft corners a VAE gives small shapes), its size the
one nearest its bounding box's width.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scenes import BACKGROUNDS, COLOURS, SHAPES, SIZE, SIZES, Scene, outline_mask, parse_caption

#: Largest RGB distance at which a pixel still counts as a palette colour.
TOLERANCE = 80.0
#: Regions smaller than this (pixels) are specks, not objects: a small object covers about 600.
MIN_AREA = 60

_NAMES = [*COLOURS, *BACKGROUNDS]
_PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)


@dataclass(frozen=True)
class Found:
    """An object seen in a picture."""

    colour: str
    shape: str
    size: str
    mask: np.ndarray

    @property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())


def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per pixel, the index into ``[*COLOURS, *BACKGROUNDS]`` of its palette colour, or -1 for none."""
    distance = np.linalg.norm(image[..., None, :].astype(np.float32) - _PALETTE, axis=-1)
    labels = distance.argmin(-1)
    labels[distance.min(-1) > TOLERANCE] = -1
    return labels


def background_of(image: np.ndarray) -> str | None:
    """The background colour that covers most of the picture, or None if none does."""
    labels = colour_labels(image)
    counts = [(labels == _NAMES.index(name)).sum() for name in BACKGROUNDS]
    best = int(np.argmax(counts))
    return list(BACKGROUNDS)[best] if counts[best] > labels.size / 4 else None


def _shape(mask: np.ndarray) -> tuple[str, str]:
    """The ideal shape, drawn into the region's bounding box, that overlaps the region best; and the size whose
    width is nearest the box's."""
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    scores = {}
    for shape in SHAPES:
        ideal = outline_mask(shape, box, mask.shape)
        scores[shape] = (ideal & mask).sum() / (ideal | mask).sum()
    size = min(SIZES, key=lambda s: abs(SIZES[s] - (box[2] - box[0] + box[3] - box[1]) / 2))
    return max(scores, key=scores.get), size


def at_scene_size(image: np.ndarray) -> np.ndarray:
    """A picture drawn larger than the toy world's size (`scenes.draw`'s ``scale``), averaged down to it, so one
    measure with one set of pixel thresholds reads every model."""
    if image.shape[0] == SIZE:
        return image
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BOX))


def objects(image: np.ndarray) -> list[Found]:
    """Every object colour's regions of at least MIN_AREA pixels, left to right; in a picture drawn larger than the
    world (`scenes.draw`'s ``scale``), averaged down to the world's size first (masks at that size)."""
    labels = colour_labels(at_scene_size(image))
    found = []
    for index, colour in enumerate(COLOURS):
        regions, count = ndimage.label(labels == index)
        for region in range(1, count + 1):
            mask = regions == region
            if mask.sum() >= MIN_AREA:
                found.append(Found(colour, *_shape(mask), mask=mask))
    return sorted(found, key=lambda f: f.centre[0])


@dataclass(frozen=True)
class Check:
    """How a picture compares with its caption."""

    count: bool
    colours: bool
    shapes: bool
    background: bool

    @property
    def ok(self) -> bool:
        return self.count and self.colours and self.shapes


def check(image: np.ndarray, caption: str | Scene) -> Check:
    """Whether the picture holds the caption's objects: their number, their colours, and each colour's shape."""
    scene = parse_caption(caption) if isinstance(caption, str) else caption
    seen = objects(image)
    wanted = Counter((t.colour, t.shape) for t in scene.things)
    got = Counter((f.colour, f.shape) for f in seen)
    return Check(count=len(seen) == len(scene.things),
                 colours=Counter(c for c, _ in got.elements()) == Counter(c for c, _ in wanted.elements()),
                 shapes=got == wanted,
                 background=background_of(image) == scene.background)
