"""Running averages of cross-attention maps over steps, layers and heads.

A layer's *level* is how many times smaller its feature map is than the latent (1, 2, 4, 8): the paper's
"16 x 16 maps at 512 x 512" are level 4 of SD1.x, and level 4 of SDXL at 1024 x 1024 is its 32 x 32 block.
Levels, not pixel sizes, pick the layers, so every resolution and aspect ratio works.

Memory is constant in the number of steps: one running sum per row (h * w * tokens floats) and a count.
"""

from __future__ import annotations

import torch

from .schedule import Window

DEFAULT_LEVEL = 4


def layer_level(latent_side: int, layer_side: int) -> int:
    """The level of a layer from its feature map's side and the latent's (rounding absorbs odd sizes)."""
    return max(1, round(latent_side / layer_side))


class MapAccumulator:
    """Sum of one level's cross-attention maps per prompt row, averaged on read.

    Sums are kept per row in each row's own token space ([h * w, tokens]); `mean` divides by the number of
    maps added (layers x heads x steps), so every pixel's map still sums to one over the tokens.
    """

    def __init__(self, level: int, window: Window = Window()) -> None:
        self.level = level
        self.window = window
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.shape: tuple[int, int] | None = None

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.shape = None

    def add(self, row: int, maps: torch.Tensor, shape: tuple[int, int]) -> None:
        """Add one layer's maps of one row: [heads, h * w, tokens] (fp32), feature map `shape` (h, w)."""
        total = maps.sum(0)
        if row in self.sums:
            self.sums[row] += total
        else:
            self.sums[row] = total.clone()
        self.counts[row] = self.counts.get(row, 0) + maps.shape[0]
        self.shape = shape

    def rows(self) -> list[int]:
        return sorted(self.sums)

    def mean(self, row: int) -> torch.Tensor:
        """The averaged maps of `row` as [h, w, tokens]."""
        if row not in self.sums or self.shape is None:
            raise KeyError(row)
        return (self.sums[row] / self.counts[row]).reshape(*self.shape, -1)


def token_heatmaps(maps: torch.Tensor, columns: list[tuple[int, ...]], size: tuple[int, int]) -> torch.Tensor:
    """One map per group of token columns, summed, resized to `size` (H, W) and scaled to [0, 1] each.

    maps [h, w, tokens] -> [groups, H, W]. Bilinear resizing keeps the maps smooth for display.
    """
    selected = torch.stack([maps[..., list(c)].sum(-1) for c in columns])
    resized = torch.nn.functional.interpolate(selected[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = resized.flatten(1).amax(1).clamp_min(1e-12)
    return (resized / peak[:, None, None]).clamp(0, 1)


class Recorder:
    """What a patched model remembers of its latest sampling run, for nodes that read it afterwards.

    `store` feeds the attention-map view (its own level and step window), `blend` the local-blend masks
    (every step). Both are reset when a run starts, so a re-run never adds to the last one's maps.
    """

    def __init__(self, store: MapAccumulator | None = None, blend: MapAccumulator | None = None) -> None:
        self.store = store
        self.blend = blend
        self.last_masks: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> Recorder:
        # Clones of the MODEL (LoRA loaders, other patches) must record into the same object.
        return self

    def reset(self) -> None:
        for accumulator in self.accumulators():
            accumulator.reset()
        self.last_masks = None

    def accumulators(self) -> list[MapAccumulator]:
        return [a for a in (self.store, self.blend) if a is not None]

    def recording(self, step: int, steps: int) -> tuple[MapAccumulator, ...]:
        return tuple(a for a in self.accumulators() if a.window.contains(step, steps))
