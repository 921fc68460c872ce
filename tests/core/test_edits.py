from dataclasses import replace

import torch

from p2p_core.align import TokenMapping
from p2p_core.edits import EditPlan, RowEdit, StepEdit, WordWindow, edit_cross_maps
from p2p_core.schedule import Window
from p2p_core.tokens import PromptTokens

L = 4


def row(cross=Window(0, 0.5), word_windows=(), scale=None, mapped=(True, True, False, True)):
    prompt = PromptTokens("t", tuple(range(L)), ())
    mapping = TokenMapping(torch.eye(L), torch.tensor(mapped))
    return RowEdit("replace", prompt, mapping, cross, Window(0, 0.25), word_windows, scale)


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


def test_cross_windows_count_like_the_official_alpha_table():
    """The official table has steps + 1 rows: 0.5 of 25 steps injects rows 0..12 (13 steps), 0.8 of 50 steps 40."""
    def injected(window, steps):
        return [i for i in range(steps) if row(cross=window).cross_edit(i, steps) is not None]
    assert injected(Window(0, 0.5), 25) == list(range(13))
    assert injected(Window(0, 0.8), 50) == list(range(40))
    assert injected(Window(0.2, 0.6), 9) == [2, 3, 4, 5]


def test_reweight_scales_only_columns_whose_window_is_open():
    """A word whose own window has closed gets its own, unscaled map, as in the official alpha blend."""
    scale = torch.tensor([1.0, 3.0, 1.0, 3.0])
    r = row(cross=Window(0, 0.5), word_windows=(WordWindow((1,), Window(0, 0.2)),), scale=scale)
    assert r.cross_edit(0, 10).scale.tolist() == [1.0, 3.0, 1.0, 3.0]
    later = r.cross_edit(3, 10)
    assert later.scale.tolist() == [1.0, 1.0, 1.0, 3.0] and not bool(later.inject[1])
    assert r.cross_edit(6, 10) is None


def test_an_unmapped_column_in_an_open_window_is_scaled_on_its_own_map():
    scale = torch.tensor([1.0, 1.0, 2.0, 1.0])  # column 2 is an inserted word (not mapped)
    edit = row(scale=scale).cross_edit(0, 10)
    assert edit.scale.tolist() == [1.0, 1.0, 2.0, 1.0] and not bool(edit.inject[2]) and edit.needs_own_maps


def test_chained_reweights_multiply_and_take_the_last_windows():
    a, b = torch.tensor([2.0, 1, 1, 1]), torch.tensor([1.0, -1, 1, 1])
    first, last = frozenset({"a", "b"}), frozenset({"b"})
    r = row().with_reweight(a, Window(0, 0.5), Window(0, 0.5), first).with_reweight(b, Window(0, 0.9), Window(0, 0.1),
                                                                                     last)
    assert r.scale.tolist() == [2.0, -1.0, 1.0, 1.0]
    assert r.cross_window == Window(0, 0.9) and r.self_window == Window(0, 0.1) and r.self_layers == last


def test_self_sharing_window_and_layers():
    r = row()
    assert [r.shares_self_attention(i, 8) for i in range(3)] == [True, True, False]
    assert r.shares_self_attention_in(("output", 8, 0))  # no layers named: every layer
    chosen = replace(r, self_layers=frozenset({("input", 4, 0), ("middle", 0, 0)}))
    assert chosen.shares_self_attention_in(("input", 4, 0)) and chosen.shares_self_attention_in(("middle", 0, 0))
    assert not chosen.shares_self_attention_in(("output", 8, 0))


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
    changed = plan.replace_last_row(plan.rows[-1].with_reweight(torch.ones(L), Window(), Window(), 4))
    assert changed.rows[-1].scale is not None and changed.rows[0] is plan.rows[0]
