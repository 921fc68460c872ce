"""Joint attention (Flux, SD3): the edits computed through the fused kernel and a text sink equal the joint
softmax written out in full, and rows without an edit are the kernel's own."""

import pytest
import torch

from p2p_core.align import TokenMapping
from p2p_core.edits import StepEdit
from p2p_core.joint import JointRow, joint_attention

HEADS, TEXT, IMAGE, DIM = 2, 5, 12, 16


def fused(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def tensors(seed=0, batch=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, HEADS, TEXT + IMAGE, DIM, generator=g) * 2).to(dtype) for _ in range(3)]


def swap_edit(scale=None, inject=None):
    """Target token 3 takes source tokens 3 and 4 half each, token 4 takes them too; the rest map to themselves."""
    matrix = torch.eye(TEXT)
    matrix[3:5, 3:5] = 0.5
    inject = torch.ones(TEXT, dtype=torch.bool) if inject is None else inject
    return StepEdit(TokenMapping(matrix, torch.ones(TEXT, dtype=torch.bool)), inject, scale, not bool(inject.all()))


def image_query_probabilities(q, k, source, row, edit):
    """The edited row's image queries' joint softmax over every key, written out ([H, N, L]; edit None: the row's
    own), each text column scaled by its weight."""
    scale = DIM ** -0.5
    image = (q[row, :, TEXT:].double() @ k[row].double().transpose(-1, -2)) * scale
    if edit is None:
        return torch.softmax(image, -1)
    source_text = (q[source, :, TEXT:].double() @ k[source, :, :TEXT].double().transpose(-1, -2)) * scale
    mapped = (source_text.exp() @ edit.mapping.matrix.double()).log()
    text = torch.where(edit.inject, mapped, image[..., :TEXT])
    probabilities = torch.softmax(torch.cat([text, image[..., TEXT:]], -1), -1)
    if edit.scale is not None:
        probabilities[..., :TEXT] *= edit.scale.double()
    return probabilities


def reference(q, k, v, source, row, edit):
    """The edited row's joint attention with every logit written out (an N x L matrix)."""
    out = image_query_probabilities(q, k, source, row, edit) @ v[row].double()
    logits = (q[row, :, :TEXT].double() @ k[row].double().transpose(-1, -2)) * DIM ** -0.5
    text_queries = torch.softmax(logits, -1) @ v[row].double()
    return torch.cat([text_queries, out], 1)


@pytest.mark.parametrize("edit", [swap_edit(), swap_edit(scale=torch.tensor([1, 1, 2.5, -1, 1.0])),
                                  swap_edit(inject=torch.tensor([True, True, False, True, False]))],
                         ids=["swap", "reweight with a negative weight", "refine"])
def test_edited_row_is_the_joint_softmax_with_edited_text_logits(edit):
    q, k, v = tensors()
    out = joint_attention(q, k, v, TEXT, [JointRow(0, 1, edit, False)], fused)
    torch.testing.assert_close(out[1].double(), reference(q, k, v, 0, 1, edit), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0], fused(q, k, v)[0])


def test_rows_without_an_edit_are_the_kernels_own():
    q, k, v = tensors()
    out = joint_attention(q, k, v, TEXT, [JointRow(0, 1, None, False)], fused)
    assert torch.equal(out, fused(q, k, v))


def test_sharing_gives_the_row_the_sources_image_queries_and_keys():
    q, k, v = tensors()
    out = joint_attention(q, k, v, TEXT, [JointRow(0, 1, None, True)], fused)
    shared_q, shared_k = q.clone(), k.clone()
    shared_q[1, :, TEXT:], shared_k[1, :, TEXT:] = q[0, :, TEXT:], k[0, :, TEXT:]
    torch.testing.assert_close(out, fused(shared_q, shared_k, v))
    v_same = v.clone()
    v_same[1] = v[0]
    k_same = k.clone()
    k_same[1, :, :TEXT] = k[0, :, :TEXT]
    q_same = q.clone()
    q_same[1, :, :TEXT] = q[0, :, :TEXT]
    same = joint_attention(q_same, k_same, v_same, TEXT, [JointRow(0, 1, None, True)], fused)
    torch.testing.assert_close(same[1], same[0])  # a row whose text matches the source's reproduces it


def test_identity_swap_reproduces_the_source_row():
    q, k, v = tensors()
    q[1], k[1], v[1] = q[0], k[0], v[0]
    identity = StepEdit(TokenMapping(torch.eye(TEXT), torch.ones(TEXT, dtype=torch.bool)),
                        torch.ones(TEXT, dtype=torch.bool), None, False)
    out = joint_attention(q, k, v, TEXT, [JointRow(0, 1, identity, True)], fused)
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_the_sinks_logit(dtype):
    q, k, v = tensors(dtype=dtype)
    edit = swap_edit()
    out = joint_attention(q, k, v, TEXT, [JointRow(0, 1, edit, False)], fused)
    assert out.dtype == dtype and torch.isfinite(out).all()
    exact = reference(q.double(), k.double(), v.double(), 0, 1, edit)
    torch.testing.assert_close(out[1].double(), exact, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_recorded_maps_are_each_text_tokens_share_of_the_joint_attention(dtype):
    q, k, v = tensors(dtype=dtype)
    edit = swap_edit(scale=torch.tensor([1, 1, 2.5, -1, 1.0]))
    maps = {}
    joint_attention(q, k, v, TEXT, [JointRow(0, 1, edit, False)], fused, record=(0, 1),
                    recorder=lambda row, m: maps.setdefault(row, m))
    assert set(maps) == {0, 1}
    q, k = q.double(), k.double()
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    for row, row_edit in ((0, None), (1, edit)):
        exact = image_query_probabilities(q, k, 0, row, row_edit)[..., :TEXT]
        assert maps[row].shape == (HEADS, IMAGE, TEXT) and maps[row].dtype == torch.float32
        torch.testing.assert_close(maps[row].double(), exact, rtol=tolerance, atol=tolerance)
