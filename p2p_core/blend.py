"""Local blend: change an edited row only where its words (or the source's) attend.

The mask of edited row b is built as in the paper's null-text notebook: from the running cross-attention
maps of the blend level, sum the chosen words' columns, max-pool 3 x 3, resize to the latent (nearest),
divide by the maximum and threshold; take the union with the source row's mask, then remove the
"subtract" words' mask (built the same way, without pooling). Outside the mask the edited row takes the
source row's values, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import PromptToPromptError
from .schedule import Window
from .store import DEFAULT_LEVEL


@dataclass(frozen=True)
class BlendSpec:
    """Token columns per prompt row (row 0 is the source) for the blend and subtract masks."""

    words: tuple[tuple[int, ...], ...]
    subtract: tuple[tuple[int, ...], ...]
    threshold: float = 0.3
    subtract_threshold: float = 0.3
    start: float = 0.2
    level: int = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if len(self.words) < 2:
            raise PromptToPromptError(
                "Local blend needs an edit to blend: connect LocalBlendMask after a Replace, Refine or Reweight node.")
        if not any(self.words):
            raise PromptToPromptError("Local blend needs at least one word, of the source or of an edit.")

    def active(self, step: int, steps: int) -> bool:
        """Blending starts at `start` of the steps and lasts to the end (the notebook's start_blend)."""
        return Window(self.start, 1.0).contains(step, steps)


def word_mask(maps: torch.Tensor, columns: tuple[int, ...], size: tuple[int, int], threshold: float,
              pool: bool) -> torch.Tensor:
    """Boolean [H, W] mask where the words of `columns` attend: maps [h, w, tokens] of one row."""
    if not columns:
        return torch.zeros(size, dtype=torch.bool, device=maps.device)
    word = maps[..., list(columns)].sum(-1)[None, None]
    if pool:
        word = F.max_pool2d(word, 3, stride=1, padding=1)
    word = F.interpolate(word, size=size, mode="nearest")[0, 0]
    return word / word.max().clamp_min(1e-12) > threshold


def blend_masks(spec: BlendSpec, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """[edited rows, H, W] masks from each row's maps (maps[0] is the source's)."""
    def masks(columns, threshold, pool):
        return [word_mask(m, c, size, threshold, pool) for m, c in zip(maps, columns)]

    keep = masks(spec.words, spec.threshold, True)
    drop = masks(spec.subtract, spec.subtract_threshold, False)
    return torch.stack([(keep[0] | keep[b]) & ~(drop[0] | drop[b]) for b in range(1, len(maps))])


def blend_rows(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Rows 1.. of x [rows, C, H, W] take row 0's values outside their mask [rows - 1, H, W], exactly."""
    edited = torch.where(masks[:, None].to(x.device), x[1:], x[:1])
    return torch.cat([x[:1], edited])
