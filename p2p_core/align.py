"""Which source token each token of an edited prompt takes its attention from.

A `TokenMapping` turns the source prompt's cross-attention maps (columns = source tokens) into maps for the
edited prompt (columns = its tokens): `mapped_maps = source_maps @ matrix`. Columns not `mapped` keep the
edited prompt's own attention. Word swap and refinement differ only in how the matrix is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import PromptToPromptError
from .tokens import PromptTokens


@dataclass(frozen=True)
class TokenMapping:
    """matrix [source length, target length]; mapped [target length] (False: keep own attention)."""

    matrix: torch.Tensor
    mapped: torch.Tensor


def identity_mapping(prompt: PromptTokens) -> TokenMapping:
    """Every token takes its own column of the source, which is the same prompt (reweighting alone)."""
    return TokenMapping(torch.eye(prompt.length), torch.ones(prompt.length, dtype=torch.bool))


def per_part(build: Callable[[PromptTokens, PromptTokens], TokenMapping]) -> Callable[..., TokenMapping]:
    """A mapping built stream by stream for joined contexts (SD3: CLIP, then T5): each stream of the target
    takes attention from the same stream of the source only (a block-diagonal matrix)."""

    def mapping(source: PromptTokens, target: PromptTokens) -> TokenMapping:
        if not source.parts:
            return build(source, target)
        blocks = [build(s, t) for (_, s), (_, t) in zip(source.parts, target.parts)]
        return TokenMapping(torch.block_diag(*(b.matrix for b in blocks)), torch.cat([b.mapped for b in blocks]))
    mapping.__doc__ = build.__doc__
    return mapping


@per_part
def swap_mapping(source: PromptTokens, target: PromptTokens) -> TokenMapping:
    """Word swap: the i-th word of the target takes the attention of the i-th word of the source.

    A swapped word with the same token count maps token to token; otherwise every target token gets an
    equal share of the whole source word (the paper's spread). Unlike the official code, positions after the
    last swapped word stay aligned when it changes token count, because every pair is mapped from the word
    layout itself rather than from a running offset.
    """
    if len(source.words) != len(target.words):
        raise PromptToPromptError(
            f"A word swap needs prompts with the same number of words, but '{source.text}' has "
            f"{len(source.words)} and '{target.text}' has {len(target.words)}. Swap one word for one word "
            "(join a multi-word replacement with a hyphen), or use RefineEdit to add or remove words.")
    matrix = torch.zeros(source.length, target.length)
    mapped = torch.zeros(target.length, dtype=torch.bool)
    for src_word, tgt_word in zip(source.words, target.words):
        src, tgt = src_word.positions, tgt_word.positions
        if len(src) == len(tgt):
            for s, t in zip(src, tgt):
                matrix[s, t] = 1.0
        else:
            for t in tgt:
                matrix[list(src), t] = 1.0 / len(tgt)
        mapped[list(tgt)] = True
    for s, t in zip(source.special_positions(), target.special_positions()):
        matrix[s, t] = 1.0
        mapped[t] = True
    return TokenMapping(matrix, mapped)


@per_part
def refine_mapping(source: PromptTokens, target: PromptTokens) -> TokenMapping:
    """Refinement, as the official code: globally align the start, word and end tokens of the two prompts;
    aligned tokens take the source's attention, inserted tokens keep their own, deleted source tokens are unused.

    Padding is not aligned: target padding column j takes source column j, as the official mapper does, where j
    is padding in the source too. After a deletion the target's first padding columns would land on source words
    there; they keep their own attention instead.
    """
    source_padding, target_padding = set(source.padding_positions()), set(target.padding_positions())
    source_content = [p for p in range(source.length) if p not in source_padding]
    target_content = [p for p in range(target.length) if p not in target_padding]
    pairs = global_alignment(tuple(source.ids[p] for p in source_content), tuple(target.ids[p] for p in target_content))
    matrix = torch.zeros(source.length, target.length)
    mapped = torch.zeros(target.length, dtype=torch.bool)
    for s, t in [(source_content[i], target_content[j]) for i, j in pairs] + \
            [(p, p) for p in sorted(target_padding & source_padding)]:
        matrix[s, t] = 1.0
        mapped[t] = True
    return TokenMapping(matrix, mapped)


def global_alignment(x: tuple[int, ...], y: tuple[int, ...]) -> list[tuple[int, int]]:
    """Needleman-Wunsch alignment of two id sequences, scored as the official code does.

    Gap 0, match +1, mismatch -1: the alignment maximises the number of equal tokens. Ties prefer a gap in
    x (an inserted y token), then a gap in y, then the diagonal, as the official traceback does. Returns the
    (x index, y index) pairs of aligned equal tokens.

    Each row of the score table is computed at once: score[i, j] = max(score[i, j - 1], up, diagonal) is a
    running maximum along the row, so prompts of a thousand tokens align in milliseconds, not seconds.
    """
    n, m = len(x), len(y)
    xs, ys = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 1 left (insert y), 2 up (delete x), 3 diagonal
    trace[0, 1:] = 1
    trace[1:, 0] = 2
    for i in range(1, n + 1):
        up = score[i - 1, 1:]
        diag = score[i - 1, :-1] + np.where(ys == xs[i - 1], 1, -1)
        score[i] = np.maximum.accumulate(np.concatenate(([score[i, 0]], np.maximum(up, diag))))
        left, best = score[i, :-1], score[i, 1:]
        trace[i, 1:] = np.where(best == left, 1, np.where(best == up, 2, 3))
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        step = trace[i, j]
        if step == 3:  # only ever a match: a mismatch (-1) never beats a gap (0)
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif step == 1:
            j -= 1
        else:
            i -= 1
    return pairs[::-1]
