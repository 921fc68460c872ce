"""Attention for a batch whose edited rows borrow the source row's attention.

Inputs follow ComfyUI's attention replace patches: q [B, N, heads*dim], k and v [B, T, heads*dim], heads
merged, projections already applied. `attention` is the host's fused kernel with the same signature as
ComfyUI's `optimized_attention(q, k, v, heads, **kwargs)`; rows without an edit always go through it.

Self-attention sharing never builds an N x N map: giving an edited row the source row's queries and keys
makes the kernel compute softmax(Q_src K_src^T / sqrt(d)) V_edit, which is exactly "the source's self-
attention map applied to the edited row's values" (the paper's injection), at any resolution.

Cross-attention maps are N x T with T = 77 per chunk, so the edited rows compute them explicitly, in fp32
whatever the model dtype, and cast the result back.

The batched text axis may be longer than a prompt's own token count: ComfyUI tiles shorter contexts to a
common multiple when it batches rows (and negatives) together. A token's attention is then split equally
between its copies, so maps are folded back onto the prompt's own tokens (summing copies) before editing
and spread over the copies again afterwards.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .edits import StepEdit, edit_cross_maps
from .errors import PromptToPromptError

AttentionFn = Callable[..., torch.Tensor]


def edited_row_pairs(positive: Sequence[bool], batch: int, num_rows: int) -> list[tuple[int, int, int]]:
    """(source row, edited row, edit index) for every positive chunk of a model call.

    The host batches conditioning chunks chunk-major (`positive[c]` says whether chunk c is the sampler's positive
    conditioning; chunks come in no fixed order), each chunk holding every latent row; latent row i of a positive
    chunk is prompt row i of the plan. Other chunks (negative, a guider's middle or empty prompt) are never edited.
    """
    chunks = len(positive)
    if chunks == 0 or batch % chunks:
        raise PromptToPromptError(f"Unexpected model batch of {batch} rows for {chunks} conditioning chunks.")
    per_chunk = batch // chunks
    if per_chunk != num_rows:
        raise PromptToPromptError(
            f"The sampler runs {per_chunk} latent rows but this Prompt-to-Prompt edit has {num_rows} "
            f"(the source and {num_rows - 1} edited prompt(s)). Connect the edit node's LATENT output "
            "to the sampler, or a latent batch of that size.")
    return [(c * per_chunk, c * per_chunk + i, i - 1)
            for c, is_positive in enumerate(positive) if is_positive
            for i in range(1, num_rows)]


def fold_tokens(maps: torch.Tensor, length: int) -> torch.Tensor:
    """[..., T] -> [..., length]: sum the attention of each token's copies (T = copies * length)."""
    total = maps.shape[-1]
    if total % length:
        raise PromptToPromptError(
            f"The text context has {total} tokens, which is not a whole number of copies of a "
            f"{length}-token prompt; was the conditioning changed after the edit node?")
    return maps.reshape(*maps.shape[:-1], total // length, length).sum(-2)


def unfold_tokens(maps: torch.Tensor, total: int) -> torch.Tensor:
    """[..., length] -> [..., total]: spread each token's attention equally over its copies."""
    copies = total // maps.shape[-1]
    if copies == 1:
        return maps
    return maps.repeat(*([1] * (maps.dim() - 1)), copies) / copies


def probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) in fp32 for one row: q [N, heads*d], k [T, heads*d] -> [heads, N, T]."""
    dim = q.shape[-1] // heads
    qh = q.reshape(q.shape[0], heads, dim).transpose(0, 1).float()
    kh = k.reshape(k.shape[0], heads, dim).transpose(0, 1).float()
    return torch.softmax(torch.bmm(qh, kh.transpose(1, 2)) * dim ** -0.5, dim=-1)


def apply_maps(maps: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """maps [heads, N, T] (fp32) times one row's values v [T, heads*d] -> [N, heads*d] (fp32)."""
    dim = v.shape[-1] // heads
    vh = v.reshape(v.shape[0], heads, dim).transpose(0, 1).float()
    return torch.bmm(maps, vh).transpose(0, 1).reshape(maps.shape[1], heads * dim)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                    edits: Sequence[tuple[int, int, StepEdit, int]], source_length: int,
                    attention: AttentionFn, record: Sequence[tuple[int, int]] = (),
                    recorder: Callable[[int, torch.Tensor], None] | None = None,
                    **attention_kwargs) -> torch.Tensor:
    """Cross-attention where each (source row, edited row, edit, edited prompt length) uses edited maps.

    Unedited rows (the source, the negatives, rows whose windows are closed) go through the fused kernel
    in one call; edited rows are built from the source row's maps of this same call. Each (row, prompt
    length) of `record` has the maps the row attends with passed to `recorder(row, maps)`, folded onto its
    prompt's tokens: its own maps, or for an edited row the edited ones, as the official store keeps them (it
    stores the attention tensor that the edit then overwrites in place).
    """
    recorded = dict(record)
    edited_rows = {row for _, row, _, _ in edits}
    needed = {row: length for row, length in record if row not in edited_rows}
    for source, row, edit, length in edits:
        needed[source] = source_length
        if edit.needs_own_maps:
            needed[row] = length
    if not needed:
        return attention(q, k, v, heads, **attention_kwargs)
    maps = {row: fold_tokens(probabilities(q[row], k[row], heads), length) for row, length in needed.items()}
    edited = {row: edit_cross_maps(maps[source], maps.get(row) if edit.needs_own_maps else None, edit)
              for source, row, edit, _ in edits}
    if recorder is not None:
        for row in recorded:
            recorder(row, edited[row] if row in edited else maps[row])
    if not edits:
        return attention(q, k, v, heads, **attention_kwargs)
    keep = [r for r in range(q.shape[0]) if r not in edited_rows]
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    if keep:
        index = torch.tensor(keep, device=q.device)
        out[index] = attention(q[index], k[index], v[index], heads, **attention_kwargs)
    total = k.shape[1]
    for row, row_maps in edited.items():
        out[row] = apply_maps(unfold_tokens(row_maps, total), v[row], heads).to(out.dtype)
    return out


#: The largest layer (h * w pixels) whose self-attention maps can be recorded: one map is 64 MiB in fp32.
MAX_SELF_MAP_PIXELS = 64 * 64


def check_self_map_pixels(pixels: int) -> None:
    """Refuse to record self-attention of a layer whose maps would not fit (see MAX_SELF_MAP_PIXELS)."""
    if pixels > MAX_SELF_MAP_PIXELS:
        raise PromptToPromptError(
            f"Recording self-attention here needs {pixels} x {pixels} maps ({pixels * pixels * 4 / 2**20:.0f} MiB "
            f"each); at most {MAX_SELF_MAP_PIXELS} pixels per layer can be recorded. Choose a coarser level on "
            "Attention Store (1/4 or 1/8), or turn its self_attention option off.")


def record_self_attention(q: torch.Tensor, k: torch.Tensor, heads: int, rows: Sequence[int],
                          recorder: Callable[[int, torch.Tensor], None]) -> None:
    """Pass `recorder(row, map)` each row's self-attention maps, one head at a time ([1, N, N], fp32).

    The sampling path never builds these N x N maps (see shared_queries_keys); only a recorded level
    does, and head by head, so a single map is alive at a time.
    """
    check_self_map_pixels(q.shape[1])
    dim = q.shape[-1] // heads
    for row in rows:
        for head in range(heads):
            columns = slice(head * dim, (head + 1) * dim)
            recorder(row, probabilities(q[row, :, columns], k[row, :, columns], 1))


def shared_queries_keys(q: torch.Tensor, k: torch.Tensor,
                        pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys where each (source row, edited row) pair gives the edited row the source's.

    With them a row's self-attention map is the source's (the paper's injection) while its values stay its own:
    one fused-kernel call for the whole batch then computes softmax(Q_src K_src^T) V_edit, no N x N tensor.
    """
    if not pairs:
        return q, k
    index = torch.arange(q.shape[0])
    for source, row in pairs:
        index[row] = source
    index = index.to(q.device)
    return q.index_select(0, index), k.index_select(0, index)
