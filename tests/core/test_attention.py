import pytest
import torch
import torch.nn.functional as F

from p2p_core.align import TokenMapping
from p2p_core.attention import (
    MAX_SELF_MAP_PIXELS,
    cross_attention,
    edited_row_pairs,
    fold_tokens,
    record_self_attention,
    shared_queries_keys,
    unfold_tokens,
)
from p2p_core.edits import StepEdit
from p2p_core.errors import PromptToPromptError

HEADS, DIM, N, T = 2, 8, 16, 6


def sdpa(q, k, v, heads, **kwargs):
    """A fused-kernel stand-in with ComfyUI's optimized_attention signature (merged heads)."""
    b = q.shape[0]
    split = lambda x: x.reshape(b, x.shape[1], heads, -1).transpose(1, 2)
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, q.shape[1], -1)


def explicit(q, k, v, heads):
    b = q.shape[0]
    split = lambda x: x.reshape(b, x.shape[1], heads, -1).transpose(1, 2).double()
    p = torch.softmax(split(q) @ split(k).transpose(-1, -2) / DIM ** 0.5, -1)
    return p, (p @ split(v)).transpose(1, 2).reshape(b, q.shape[1], -1)


def qkv(batch, tokens=T, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = lambda n: (batch, n, HEADS * DIM)
    return (torch.randn(shape(N), generator=g).to(dtype), torch.randn(shape(tokens), generator=g).to(dtype),
            torch.randn(shape(tokens), generator=g).to(dtype))


def full_edit(matrix):
    ones = torch.ones(matrix.shape[1], dtype=torch.bool)
    return StepEdit(TokenMapping(matrix, ones), ones, None, False)


def test_row_pairs_are_those_of_the_positive_chunk_wherever_it_lies():
    assert edited_row_pairs([False, True], 6, 3) == [(3, 4, 0), (3, 5, 1)]
    assert edited_row_pairs([True, False], 6, 3) == [(0, 1, 0), (0, 2, 1)]
    assert edited_row_pairs([False, False, True], 9, 3) == [(6, 7, 0), (6, 8, 1)]  # DualCFG: negative, middle, positive
    assert edited_row_pairs([False], 3, 3) == []


def test_row_pairs_reject_a_batch_of_the_wrong_size():
    with pytest.raises(PromptToPromptError, match="LATENT output"):
        edited_row_pairs([True, False], 8, 3)


def test_fold_and_unfold_keep_token_mass():
    maps = torch.rand(3, 12)
    folded = fold_tokens(maps, 4)
    assert torch.allclose(folded, maps[:, :4] + maps[:, 4:8] + maps[:, 8:])
    assert torch.allclose(fold_tokens(unfold_tokens(folded, 12), 4), folded)


def test_identity_edit_reproduces_the_source_row():
    q, k, v = qkv(2)
    q[1], k[1], v[1] = q[0], k[0], v[0]
    out = cross_attention(q, k, v, HEADS, [(0, 1, full_edit(torch.eye(T)), T)], T, sdpa)
    assert torch.allclose(out[1], out[0], atol=1e-5)


def test_edited_row_uses_the_mapped_source_maps_with_its_own_values():
    q, k, v = qkv(2)
    swap = torch.eye(T)[[1, 0, 2, 3, 4, 5]]  # target column 0 <- source 1 and back
    out = cross_attention(q, k, v, HEADS, [(0, 1, full_edit(swap), T)], T, sdpa)
    p, ref = explicit(q, k, v, HEADS)
    mapped = p[0] @ swap.double()
    expected = (mapped @ v[1].reshape(T, HEADS, DIM).transpose(0, 1).double()).transpose(0, 1).reshape(N, -1)
    assert torch.allclose(out[1].double(), expected, atol=1e-5)
    assert torch.allclose(out[0].double(), ref[0], atol=1e-5)  # the source row is untouched


def test_rows_without_edits_go_through_the_kernel_unchanged():
    q, k, v = qkv(4)
    out = cross_attention(q, k, v, HEADS, [(2, 3, full_edit(torch.eye(T)), T)], T, sdpa)
    assert torch.allclose(out[:3], sdpa(q[:3], k[:3], v[:3], HEADS), atol=1e-6)
    assert torch.equal(cross_attention(q, k, v, HEADS, [], T, sdpa), sdpa(q, k, v, HEADS))


def test_tiled_context_gives_the_same_edit():
    q, k, v = qkv(2)
    swap = torch.eye(T)[[1, 0, 2, 3, 4, 5]]
    once = cross_attention(q, k, v, HEADS, [(0, 1, full_edit(swap), T)], T, sdpa)
    twice = cross_attention(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), HEADS, [(0, 1, full_edit(swap), T)], T, sdpa)
    assert torch.allclose(once, twice, atol=1e-5)


def test_prompts_of_different_lengths_edit_across_copies():
    # source of 3 tokens tiled twice, target of 6 tokens; the batch context is 6 tokens long
    q, k, v = qkv(2)
    k[0, 3:], v[0, 3:] = k[0, :3], v[0, :3]
    spread = torch.zeros(3, T)
    spread[0, 0] = spread[1, 1] = spread[2, 2] = spread[2, 3] = 1.0
    edit = StepEdit(TokenMapping(spread, torch.tensor([True] * 4 + [False] * 2)),
                    torch.tensor([True] * 4 + [False] * 2), None, True)
    out = cross_attention(q, k, v, HEADS, [(0, 1, edit, T)], 3, sdpa)
    p, _ = explicit(q, k, v, HEADS)
    src = p[0][..., :3] + p[0][..., 3:]
    maps = torch.cat([src @ spread[:, :4].double(), p[1][..., 4:]], -1)
    expected = (maps @ v[1].reshape(T, HEADS, DIM).transpose(0, 1).double()).transpose(0, 1).reshape(N, -1)
    assert torch.allclose(out[1].double(), expected, atol=1e-5)


def test_half_precision_edits_in_fp32_and_returns_half():
    q, k, v = qkv(2, dtype=torch.float16)
    swap = torch.eye(T)[[1, 0, 2, 3, 4, 5]]
    out = cross_attention(q, k, v, HEADS, [(0, 1, full_edit(swap), T)], T, sdpa)
    ref = cross_attention(q.float(), k.float(), v.float(), HEADS, [(0, 1, full_edit(swap), T)], T, sdpa)
    assert out.dtype == torch.float16
    assert torch.allclose(out[1].float(), ref[1], atol=2e-3)


def test_shared_queries_and_keys_give_the_source_map_with_own_values():
    q, k, v = qkv(3, tokens=N)
    shared_q, shared_k = shared_queries_keys(q, k, [(0, 2)])
    out = sdpa(shared_q, shared_k, v, HEADS)  # one fused call, no N x N map built
    p, _ = explicit(q, k, v, HEADS)
    expected = (p[0] @ v[2].reshape(N, HEADS, DIM).transpose(0, 1).double()).transpose(0, 1).reshape(N, -1)
    assert torch.allclose(out[2].double(), expected, atol=1e-5)
    assert torch.allclose(out[:2], sdpa(q, k, v, HEADS)[:2], atol=1e-6)
    assert shared_queries_keys(q, k, []) == (q, k)


def test_recorded_self_attention_is_each_heads_softmax_one_head_at_a_time():
    q, k, _ = qkv(3, tokens=N, dtype=torch.float16)
    seen = []
    record_self_attention(q, k, HEADS, [0, 2], lambda row, maps: seen.append((row, maps)))
    expected, _ = explicit(q.float(), k.float(), k.float(), HEADS)
    assert [row for row, _ in seen] == [0, 0, 2, 2]
    for index, (row, maps) in enumerate(seen):
        assert maps.shape == (1, N, N) and maps.dtype == torch.float32
        assert torch.allclose(maps[0].double(), expected[row, index % HEADS], atol=1e-5)


def test_recording_self_attention_of_too_large_a_layer_names_the_fix():
    pixels = MAX_SELF_MAP_PIXELS + 1
    q = torch.zeros(1, pixels, HEADS * DIM)
    with pytest.raises(PromptToPromptError, match="coarser level"):
        record_self_attention(q, q, HEADS, [0], lambda row, maps: None)
