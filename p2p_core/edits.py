"""Edit specs: what each edited prompt row does to its attention, and the map arithmetic.

An `EditPlan` holds the source prompt and one `RowEdit` per edited prompt. Batch row 0 is the source, row
i + 1 is `rows[i]`. Everything here is immutable: nodes build a new plan when they chain.

At step i an edited row's cross-attention maps are, per token column (paper, section 3.2; the official
controller's alpha blend):
    column's window open, mapped:      source maps mapped to the row's tokens, times the reweight factor
    column's window open, not mapped:  the row's own maps (an inserted word), times the reweight factor
    column's window closed:            the row's own maps, unscaled
A column's window is the row's cross-attention window, or the per-word window of the word it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .align import TokenMapping
from .errors import PromptToPromptError
from .schedule import Window
from .tokens import PromptTokens


@dataclass(frozen=True)
class WordWindow:
    """A cross-attention window for some token columns of the edited prompt (a per-word schedule)."""

    positions: tuple[int, ...]
    window: Window


@dataclass(frozen=True)
class StepEdit:
    """What an edited row does to its cross-attention maps at one step.

    inject [L]: columns taken from the mapped source maps; scale [L] or None. `needs_own_maps` says whether
    the row's own probabilities are needed (some column is not injected); it is a plain bool so that reading
    it never waits on the GPU.
    """

    mapping: TokenMapping
    inject: torch.Tensor
    scale: torch.Tensor | None
    needs_own_maps: bool

    def to(self, device: torch.device) -> StepEdit:
        """The same edit with its tensors on `device` (done once per model call, not per layer)."""
        mapping = TokenMapping(self.mapping.matrix.to(device), self.mapping.mapped.to(device))
        scale = None if self.scale is None else self.scale.to(device)
        return StepEdit(mapping, self.inject.to(device), scale, self.needs_own_maps)


@dataclass(frozen=True)
class RowEdit:
    """One edited prompt and how it borrows the source's attention."""

    kind: str
    prompt: PromptTokens
    mapping: TokenMapping
    cross_window: Window
    self_window: Window
    word_windows: tuple[WordWindow, ...] = ()
    scale: torch.Tensor | None = None
    """Reweighting factors per token column (None: no reweighting)."""
    self_layers: frozenset | None = None
    """The layers (as the model's family keys them) that share self-attention while the self window is open;
    None: every layer. The node picks them from the user's choice (UNet: the official code's levels; Flux: block
    presets), so this module never needs to know how a model is built."""

    def with_reweight(self, factors: torch.Tensor, cross_window: Window, self_window: Window,
                      self_layers: frozenset | None) -> RowEdit:
        """This row reweighted, as the official code chains a reweighting controller on an edit: the outer
        (reweighting) controller's windows govern the row, and its factors multiply any earlier ones."""
        scale = factors if self.scale is None else self.scale * factors
        return replace(self, scale=scale, cross_window=cross_window, self_window=self_window,
                       self_layers=self_layers)

    def cross_edit(self, step: int, steps: int) -> StepEdit | None:
        """The cross-attention edit at `step` of `steps`, or None when the row runs on its own maps."""
        open_columns = torch.full((self.prompt.length,), self.cross_window.contains_cross(step, steps))
        for ww in self.word_windows:
            open_columns[list(ww.positions)] = ww.window.contains_cross(step, steps)
        if not bool(open_columns.any()):
            return None
        inject = open_columns & self.mapping.mapped
        scale = None if self.scale is None else torch.where(open_columns, self.scale, torch.ones(()))
        if scale is None and not bool(inject.any()):
            return None
        return StepEdit(self.mapping, inject, scale, not bool(inject.all()))

    def shares_self_attention(self, step: int, steps: int) -> bool:
        return self.self_window.contains(step, steps)

    def shares_self_attention_in(self, layer) -> bool:
        return self.self_layers is None or layer in self.self_layers


@dataclass(frozen=True)
class EditPlan:
    """The source prompt and the edited rows that follow it in the batch."""

    source: PromptTokens
    rows: tuple[RowEdit, ...] = ()

    @property
    def num_rows(self) -> int:
        """Batch rows a sampler must run: the source plus one per edit."""
        return 1 + len(self.rows)

    @property
    def prompts(self) -> tuple[PromptTokens, ...]:
        """Each batch row's prompt: the source, then each edited row's."""
        return (self.source, *(row.prompt for row in self.rows))

    def add_row(self, row: RowEdit) -> EditPlan:
        return replace(self, rows=self.rows + (row,))

    def replace_last_row(self, row: RowEdit) -> EditPlan:
        if not self.rows:
            raise PromptToPromptError("There is no edited row to change yet.")
        return replace(self, rows=self.rows[:-1] + (row,))


def edit_cross_maps(source_maps: torch.Tensor, own_maps: torch.Tensor | None, edit: StepEdit) -> torch.Tensor:
    """Edited maps [..., L_target] from the source's [..., L_source] (and the row's own, when needed).

    Works in the maps' dtype (callers pass fp32); rows are not renormalised, as in the paper (a negative
    reweight deliberately pushes a token's contribution below zero).
    """
    edited = source_maps @ edit.mapping.matrix.to(source_maps.dtype)
    if edit.needs_own_maps:
        if own_maps is None:
            raise ValueError("own maps are needed when some columns are not injected")
        edited = torch.where(edit.inject, edited, own_maps)
    if edit.scale is not None:
        edited = edited * edit.scale.to(source_maps.dtype)
    return edited
