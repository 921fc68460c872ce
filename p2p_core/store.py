"""Running averages of attention maps over steps, layers and heads, and the views drawn from them.

A layer's *level* is how many times smaller its feature map is than the latent (1, 2, 4, 8): the paper's
"16 x 16 maps at 512 x 512" are level 4 of SD1.x, and level 4 of SDXL at 1024 x 1024 is its 32 x 32 block.
Levels, not pixel sizes, pick the layers, so every resolution and aspect ratio works; they are read from the
UNet's structure (its downsampling layers), since its sides halve with rounding up and a ratio of sides would
misplace some sizes.

Memory is constant in the number of steps: one running sum per row (h * w * tokens floats) and a count.
Self-attention maps are accumulated the same way, with the layer's h * w pixels as the "tokens".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PromptToPromptError
from .schedule import Window
from .tokens import PromptTokens

DEFAULT_LEVEL = 4


class MapAccumulator:
    """Sum of one level's attention maps per prompt row, averaged on read.

    Sums are kept per row in each row's own token space ([h * w, tokens]); `mean` divides by the number of
    maps added (layers x heads x steps), so every pixel's map still sums to one over the tokens (in joint
    attention, to the share of its attention that goes to the text: joint.text_maps).
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

    def state(self) -> tuple:
        """A copy of what has been accumulated, for `load`."""
        return {row: total.clone() for row, total in self.sums.items()}, dict(self.counts), self.shape

    def load(self, state: tuple) -> None:
        sums, counts, self.shape = state
        self.sums = {row: total.clone() for row, total in sums.items()}
        self.counts = dict(counts)

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


def self_attention_components(maps: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """The notebook's self-attention view: the top `count` principal components of a row's averaged
    self-attention maps, as images. maps [h, w, h * w] -> [count, H, W] in 0..1.

    Each pixel's map (a row of the h*w x h*w matrix) is centred, and the right singular vectors are the
    patterns over the image that explain most of how pixels attend: they segment the picture into the
    regions the model treats as one object. Singular vectors have no sign of their own, so each is turned
    to make its largest entry positive (the same picture on every device), then scaled to 0..1.
    """
    h, w, pixels = maps.shape
    if pixels != h * w:
        raise ValueError(f"self-attention maps must be [h, w, h*w], got {tuple(maps.shape)}")
    matrix = maps.reshape(pixels, pixels).double()
    _, _, vh = torch.linalg.svd(matrix - matrix.mean(1, keepdim=True), full_matrices=False)
    top = vh[:count]
    peaks = top.gather(1, top.abs().argmax(1, keepdim=True))
    top = top * torch.where(peaks < 0, -1.0, 1.0).to(top.dtype)
    top = top - top.amin(1, keepdim=True)
    top = (top / top.amax(1, keepdim=True).clamp_min(1e-12)).float().reshape(-1, 1, h, w)
    return torch.nn.functional.interpolate(top, size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


@dataclass(frozen=True)
class Run:
    """A sampling run a recorder saw: its trajectory's step count and its latent size (h, w), to explain a
    recording that stayed empty, and the prompts of its rows (the source first; a batch without edits holds
    only the source), which label the maps: an edit node chained after a store adds rows the store never saw."""

    steps: int
    latent: tuple[int, int]
    prompts: tuple[PromptTokens, ...]


class Shared:
    """What every recorder of a chain of nodes shares besides the accumulators, so a store chained before a
    blend sees it too: the masks the local blend used last ([edited rows, H, W]; the final latent is blended
    with them and Show Attention shows them), and the sampling run seen last."""

    def __init__(self) -> None:
        self.masks: torch.Tensor | None = None
        self.run: Run | None = None


class Recorder:
    """What a patched model remembers of its sampling runs, for nodes that read it afterwards.

    `store` feeds the attention-map view (its own level and step window), `blend` the local-blend masks
    (every step), `self_store` the self-attention components view (the store's level and window). A run that
    starts a trajectory resets them, so a re-run never adds to the last one's maps; a run that stops before
    the trajectory's end leaves a checkpoint, from which a run continuing it (the second stage of a split
    schedule) resumes, so the maps and masks are those of one run.
    """

    def __init__(self, store: MapAccumulator | None = None, blend: MapAccumulator | None = None,
                 self_store: MapAccumulator | None = None, shared: Shared | None = None) -> None:
        self.store = store
        self.blend = blend
        self.self_store = self_store
        self.shared = shared if shared is not None else Shared()
        self.checkpoints: dict[tuple[int, int], tuple] = {}

    def __deepcopy__(self, memo: dict) -> Recorder:
        # Clones of the MODEL (LoRA loaders, other patches) must record into the same object.
        return self

    def extended(self, **accumulators: MapAccumulator | None) -> Recorder:
        """A recorder with these accumulators added (or replaced) that shares the others, so nodes chained
        before it (a store before a blend, or the reverse) see everything the sampled model records."""
        current = {"store": self.store, "blend": self.blend, "self_store": self.self_store}
        return Recorder(**{**current, **accumulators}, shared=self.shared)

    @property
    def last_masks(self) -> torch.Tensor | None:
        return self.shared.masks

    @property
    def run(self) -> Run | None:
        return self.shared.run

    def _accumulators(self) -> tuple[MapAccumulator, ...]:
        return tuple(a for a in (self.store, self.blend, self.self_store) if a is not None)

    def reset(self) -> None:
        for accumulator in self._accumulators():
            accumulator.reset()
        self.shared.masks = None
        self.checkpoints.clear()

    def checkpoint(self, step: int, steps: int) -> None:
        """Remember what the current run recorded before `step` of a `steps`-step trajectory, and its latent size."""
        masks = None if self.shared.masks is None else self.shared.masks.clone()
        latent = None if self.shared.run is None else self.shared.run.latent
        self.checkpoints[(step, steps)] = tuple(a.state() for a in self._accumulators()), masks, latent

    def resume(self, step: int, steps: int, latent: tuple[int, int]) -> bool:
        """Restore the checkpoint at `step`, if a run stopped there; False when there is none.

        Refuses a run on a latent of another size (an upscale between the stages): the maps and masks recorded
        before have the first stage's size, and mixing them would blend with a mask of the wrong shape."""
        saved = self.checkpoints.get((step, steps))
        if saved is None:
            return False
        states, masks, recorded = saved
        if recorded is not None and recorded != tuple(latent):
            raise PromptToPromptError(
                f"The run continuing a schedule at step {step} of {steps} samples a {latent[0]}x{latent[1]} latent, "
                f"but the steps before it ran on {recorded[0]}x{recorded[1]}, the size of the attention maps and "
                "blend masks recorded then. Sample every stage at one size (resize the latent after the last "
                "stage), or start the resized stage with fresh noise (add_noise enabled), which records afresh.")
        for accumulator, state in zip(self._accumulators(), states):
            accumulator.load(state)
        self.shared.masks = None if masks is None else masks.clone()
        return True

    def recording(self, step: int, steps: int) -> tuple[MapAccumulator, ...]:
        """The cross-attention accumulators whose window contains `step`."""
        return _open(step, steps, self.store, self.blend)

    def recording_self(self, step: int, steps: int) -> tuple[MapAccumulator, ...]:
        """The self-attention accumulator, if its window contains `step`."""
        return _open(step, steps, self.self_store)


def _open(step: int, steps: int, *accumulators: MapAccumulator | None) -> tuple[MapAccumulator, ...]:
    return tuple(a for a in accumulators if a is not None and a.window.contains(step, steps))
