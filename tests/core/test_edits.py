import torch

from p2p_core.align import TokenMapping
from p2p_core.edits import EditPlan, Reweight, RowEdit, StepEdit, WordWindow, edit_cross_maps
from p2p_core.schedule import Window
from p2p_core.tokens import PromptTokens

L = 4


def row(cross=Window(0, 0.5), word_windows=(), reweights=(), mapped=(True, True, False, True)):
    prompt = PromptTokens("t", tuple(range(L)), ())
    mapping = TokenMapping(torch.eye(L), torch.tensor(mapped))
    return RowEdit("replace", prompt, mapping, cross, Window(0, 0.25), word_windows, reweights)


def test_no_edit_once_the_windows_close():
    assert row().cross_edit(5, 10) is None
    assert row().cross_edit(4, 10) is not None


def test_inject_only_mapped_columns_in_their_window():
    r = row(word_windows=(WordWindow((1,), Window(0, 0.2)),))
    assert row().cross_edit(0, 10).inject.tolist() == [True, True, False, True]
    assert r.cross_edit(3, 10).inject.tolist() == [True, False, False, True]
    assert r.cross_edit(3, 10).needs_own_maps


def test_a_word_window_can_outlast_the_default():
    r = row(word_windows=(WordWindow((3,), Window(0, 0.9)),))
    assert r.cross_edit(7, 10).inject.tolist() == [False, False, False, True]


def test_reweight_acts_only_inside_its_window():
    scale = torch.tensor([1.0, 3.0, 1.0, 1.0])
    r = row(cross=Window(0, 0), reweights=(Reweight(scale, Window(0, 0.3)),))
    assert torch.equal(r.cross_edit(2, 10).scale, scale)
    assert not bool(r.cross_edit(2, 10).inject.any())
    assert r.cross_edit(3, 10) is None


def test_chained_reweights_multiply():
    a, b = torch.tensor([2.0, 1, 1, 1]), torch.tensor([1.0, -1, 1, 1])
    r = row(reweights=(Reweight(a, Window()), Reweight(b, Window())))
    assert r.cross_edit(0, 10).scale.tolist() == [2.0, -1.0, 1.0, 1.0]


def test_self_sharing_window_and_layers():
    r = row()
    assert [r.shares_self_attention(i, 8) for i in range(3)] == [True, True, False]
    quarter = RowEdit("replace", r.prompt, r.mapping, r.cross_window, r.self_window, self_scale=0.25)
    assert quarter.shares_self_attention_at(16, 64) and not quarter.shares_self_attention_at(32, 64)


def test_edit_cross_maps_by_hand():
    source = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    own = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    swap = torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # columns 0 and 1 swap
    edit = StepEdit(TokenMapping(swap, torch.ones(4, dtype=torch.bool)),
                    torch.tensor([True, True, False, True]), torch.tensor([1.0, 2.0, 1.0, -1.0]), True)
    assert torch.allclose(edit_cross_maps(source, own, edit), torch.tensor([[0.2, 0.2, 0.2, -0.4]]))


def test_plan_rows_and_chaining():
    plan = EditPlan(PromptTokens("s", (0,), ())).add_row(row()).add_row(row())
    assert plan.num_rows == 3
    changed = plan.replace_last_row(plan.rows[-1].with_reweight(Reweight(torch.ones(L), Window())))
    assert len(changed.rows[-1].reweights) == 1 and changed.rows[0] is plan.rows[0]
