"""Turn what a user asks for (prompts, words, windows, scales) into row edits.

The node adapter tokenizes; this module decides what the tokens mean for the edit, and raises the
errors a user can act on (an empty prompt, a word that is not in the prompt, unswappable prompts).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .align import identity_mapping, refine_mapping, swap_mapping
from .edits import EditPlan, RowEdit, WordWindow
from .errors import PromptToPromptError
from .schedule import Window
from .tokens import PromptTokens, TokenizeFn


def require_words(prompt: PromptTokens, role: str,
                  fix: str = "write the prompt the edit should start from") -> PromptTokens:
    """Reject a prompt with no words: there is nothing to edit or to keep. `role` names the input the
    user typed it in, `fix` what to write there."""
    if not prompt.words:
        raise PromptToPromptError(f"The {role} is empty; {fix}.")
    return prompt


def edit_row(kind: str, source: PromptTokens, target: PromptTokens, cross: Window, self_window: Window,
             word_windows: Sequence[tuple[str, Window]], tokenize: TokenizeFn,
             self_layers: frozenset | None = None) -> RowEdit:
    """A word-swap ("replace") or refinement ("refine") row; per-word windows name target words."""
    require_words(source, "source prompt")
    require_words(target, "target prompt", "write the prompt of the edited picture")
    mappings = {"replace": swap_mapping, "refine": refine_mapping}
    mapping = mappings[kind](source, target)
    windows = tuple(WordWindow(target.find(word, tokenize), window) for word, window in word_windows)
    return RowEdit(kind, target, mapping, cross, self_window, windows, self_layers=self_layers)


def reweight_row(source: PromptTokens, cross: Window, self_window: Window,
                 self_layers: frozenset | None = None) -> RowEdit:
    """A row that repeats the source prompt, to be reweighted (the paper's standalone reweighting)."""
    require_words(source, "source prompt")
    return RowEdit("reweight", source, identity_mapping(source), cross, self_window, self_layers=self_layers)


def reweight_factors(prompt: PromptTokens, words: Sequence[str], scale: float, tokenize: TokenizeFn) -> torch.Tensor:
    """Factors per token column: `scale` on every token of `words` (all occurrences), 1 elsewhere."""
    if not words:
        raise PromptToPromptError("Reweight needs at least one word of the prompt to scale.")
    factors = torch.ones(prompt.length)
    for word in words:
        factors[list(prompt.find(word, tokenize))] = scale
    return factors


def check_source(plan: EditPlan, source_text: str) -> None:
    """A chained edit must start from the same source prompt as the edits before it (or leave it empty)."""
    if source_text.strip() and source_text.strip() != plan.source.text.strip():
        raise PromptToPromptError(
            f"This edit's source prompt '{source_text}' differs from the source prompt of the edits before "
            f"it ('{plan.source.text}'). Chained edits share one source: clear this node's source prompt "
            "or make it the same.")
