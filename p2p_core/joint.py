"""Prompt-to-Prompt in joint attention (Flux, SD3): text and image tokens in one softmax.

Inputs are one attention call's q, k, v as [B, heads, L, dim] with the ``text`` text tokens first (L = text +
image tokens). For an image query i of an edited row the joint softmax is

    out_i = (sum_t e^{a_it} v_t  +  sum_j e^{b_ij} v_j) / (sum_t e^{a_it} + sum_j e^{b_ij})

over text keys t and image keys j. The image-query x text-key logits ``a`` play the part of cross-attention, the
image x image logits ``b`` that of self-attention, so the edits act where the paper's do:

- **Cross edits** (swap, refine, reweight) act on ``a`` before the softmax, in the same arithmetic as the UNet
  edits act on probabilities (edits.edit_cross_maps): ``e^a`` of a mapped column is the source row's mass of the
  source tokens mapped to it (swap, refine), an unmapped column keeps the row's own (an added word), and a
  reweighted column's contribution to the output is scaled without renormalising (a negative weight subtracts),
  as the paper's reweighting scales maps. The image part and the normaliser stay the row's own, so an image
  query divides its attention between text and picture as the edited row does.
- **Self sharing** gives an edited row the source row's image queries and keys (Exploring MM-DiT's q_i k_i
  injection): its image x image logits, and its image queries' text logits, are then the source's.

No N x N map is built: the image part goes through the fused kernel, with one extra key standing for the whole
text part (see ``with_text_sink``), and only image x text logits (N x T) are explicit. Text queries, rows without
an edit and the source row run through the host's own kernel untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .edits import StepEdit, edit_cross_maps
from .errors import PromptToPromptError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The host's fused attention on [B, heads, L, dim] tensors, returning [B, heads, L, dim]."""

#: Extra head dims the text sink adds, so that the kernel's head size stays a multiple of 8 (fused kernels ask it).
SINK_DIMS = 8
#: The text log-sum-exp the sink carries is kept within this (fp16 holds it; e^-1e4 is no attention at all).
SINK_LIMIT = 1e4


@dataclass(frozen=True)
class JointRow:
    """What one edited row does in this call: its source row, its cross edit (None: own text logits) and
    whether it takes the source's image queries and keys."""

    source: int
    row: int
    cross: StepEdit | None
    shares: bool


def share_image_queries_keys(q: torch.Tensor, k: torch.Tensor, text: int,
                             rows: Sequence[JointRow]) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k where each sharing row's image tokens are its source row's (text tokens stay its own)."""
    sharing = [(r.source, r.row) for r in rows if r.shares]
    if not sharing:
        return q, k
    q, k = q.clone(), k.clone()
    for source, row in sharing:
        q[row, :, text:] = q[source, :, text:]
        k[row, :, text:] = k[source, :, text:]
    return q, k


def text_logits(q: torch.Tensor, k: torch.Tensor, text: int) -> torch.Tensor:
    """One row's image-query x text-key logits, [heads, N, T] in fp32 (q, k: [heads, L, dim])."""
    scale = q.shape[-1] ** -0.5
    return torch.matmul(q[:, text:].float(), k[:, :text].float().transpose(-1, -2)) * scale


def edited_text_logits(source: torch.Tensor, own: torch.Tensor | None, edit: StepEdit) -> torch.Tensor:
    """The edited row's text logits from the source's (and its own where a column keeps them), the UNet edit's
    mapping done on e^logits so that a column's mass is the mapped source tokens' mass, in the same normaliser.

    Reweighting is left out here (``text_weights``): it scales a column's contribution, which logits cannot do
    for a negative weight.
    """
    shift = source.amax(-1, keepdim=True)
    if own is not None:
        shift = torch.maximum(shift, own.amax(-1, keepdim=True))
    unscaled = StepEdit(edit.mapping, edit.inject, None, edit.needs_own_maps)
    mass = edit_cross_maps((source - shift).exp(), None if own is None else (own - shift).exp(), unscaled)
    return mass.log() + shift


def with_text_sink(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int,
                   text_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image queries over image keys plus one *sink* key whose logit is each query's text log-sum-exp, for the
    fused kernel: its output is then (sum_j e^{b_ij} v_j) / Z_i in the value dims and e^{lse_i} / Z_i in one
    extra value dim, Z_i the whole joint normaliser. The sink's logit is carried by the query (two dims, a high
    and a low part, so half precision keeps it to about 16 bits), its key is 1/scale there: one key serves
    every query. q, k, v: one row [heads, L, dim]; text_lse [heads, N] (fp32).
    """
    heads, length, dim = q.shape
    scale = dim ** -0.5
    text_lse = text_lse.clamp(-SINK_LIMIT, SINK_LIMIT)  # finite: the sink dims meet image keys' zeros (inf * 0)
    high = text_lse.to(q.dtype)
    low = (text_lse - high.float()).to(q.dtype)
    q_sink = q.new_zeros(heads, length - text, dim + SINK_DIMS)
    q_sink[..., :dim] = q[:, text:]
    q_sink[..., dim], q_sink[..., dim + 1] = high, low
    k_sink = k.new_zeros(heads, length - text + 1, dim + SINK_DIMS)
    k_sink[:, :-1, :dim] = k[:, text:]
    k_sink[:, -1, dim:dim + 2] = 1 / scale
    v_sink = v.new_zeros(heads, length - text + 1, dim + SINK_DIMS)
    v_sink[:, :-1, :dim] = v[:, text:]
    v_sink[:, -1, dim] = 1
    return q_sink, k_sink, v_sink


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int,
                   text_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's image queries through the fused kernel with a text sink (``with_text_sink``): the image part
    of their output, (sum_j e^{b_ij} v_j) / Z_i as [heads, N, dim], and the text's share of their joint
    attention, e^{lse_i} / Z_i as [heads, N, 1], both fp32."""
    q_sink, k_sink, v_sink = with_text_sink(q, k, v, text, text_lse)
    fused = torch.nn.functional.scaled_dot_product_attention(q_sink, k_sink, v_sink, scale=q.shape[-1] ** -0.5)
    dim = q.shape[-1]
    return fused[..., :dim].float(), fused[..., dim:dim + 1].float()


def image_query_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int, logits: torch.Tensor,
                       weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's image-query output [heads, N, dim] with text logits ``logits`` [heads, N, T] (and per-token
    ``weights`` scaling each text column's contribution), and its text maps [heads, N, T] (``text_maps``),
    weighted, as the attention store and local blend read them."""
    within_text = torch.softmax(logits, -1)
    if weights is not None:
        within_text = within_text * weights.to(within_text.dtype)
    image_part, text_share = sink_attention(q, k, v, text, torch.logsumexp(logits, -1))
    out = image_part + text_share * torch.matmul(within_text, v[:, :text].float())
    return out.to(v.dtype), within_text * text_share


def text_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int) -> torch.Tensor:
    """One row's maps [heads, N, T]: each text token's share of an image query's *joint* attention (text and
    image keys). The image keys take the part a UNet's start token takes in cross-attention: an image query that
    attends to the picture, not the words (the background), weighs little in every word's map, as a pixel that
    attends to the start token does in the official code's maps (and as Exploring MM-DiT's local blend reads joint
    attention). A softmax over the text keys alone would give it a full distribution over the words and spread
    every word's mask over the whole picture (toy/MODEL.md measures both)."""
    logits = text_logits(q, k, text)
    _, text_share = sink_attention(q, k, v, text, torch.logsumexp(logits, -1))
    return torch.softmax(logits, -1) * text_share


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text: int, rows: Sequence[JointRow],
                    attention: AttentionFn, record: Sequence[int] = (),
                    recorder: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The joint attention of a call whose ``rows`` are edited (see the module docstring), [B, heads, L, dim].

    Each row of ``record`` has its text maps passed to ``recorder(row, maps)`` ([heads, N, T], fp32): its own,
    or an edited row's edited ones, as the UNet store keeps them.
    """
    if text <= 0 or text >= q.shape[2]:
        raise PromptToPromptError(f"This joint attention call has {q.shape[2]} tokens, of which {text} would be "
                                  "text: the edit cannot tell its text tokens from its image tokens.")
    q, k = share_image_queries_keys(q, k, text, rows)
    edited = {r.row: r for r in rows if r.cross is not None}
    keep = [i for i in range(q.shape[0]) if i not in edited]
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    if keep:
        index = torch.tensor(keep, device=q.device)
        out[index] = attention(q[index], k[index], v[index])
    if edited:
        index = torch.tensor(sorted(edited), device=q.device)
        out[index, :, :text] = attention(q[index, :, :text], k[index], v[index])
    for row, edit in edited.items():
        source = text_logits(q[edit.source], k[edit.source], text)
        own = text_logits(q[row], k[row], text) if edit.cross.needs_own_maps else None
        logits = edited_text_logits(source, own, edit.cross)
        out[row, :, text:], maps = image_query_output(q[row], k[row], v[row], text, logits, edit.cross.scale)
        if recorder is not None and row in record:
            recorder(row, maps)
    if recorder is not None:
        for row in record:
            if row not in edited:
                recorder(row, text_maps(q[row], k[row], v[row], text))
    return out
