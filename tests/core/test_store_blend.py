import pytest
import torch

from p2p_core.blend import BlendSpec, blend_masks, blend_rows, word_mask
from p2p_core.errors import PromptToPromptError
from p2p_core.render import colorize, overlay
from p2p_core.schedule import Window
from p2p_core.store import MapAccumulator, Recorder, Run, self_attention_components, token_heatmaps


def one_hot_maps(h, w, tokens, hot):
    """Maps [h, w, tokens] where token t attends only at the pixels hot[t] (a list of (y, x))."""
    maps = torch.zeros(h, w, tokens)
    maps[..., 0] = 1.0
    for token, pixels in hot.items():
        for y, x in pixels:
            maps[y, x] = 0.0
            maps[y, x, token] = 1.0
    return maps


def test_accumulator_averages_over_layers_heads_and_steps():
    acc = MapAccumulator(2)
    a, b = torch.rand(2, 6, 5).softmax(-1), torch.rand(2, 6, 5).softmax(-1)
    acc.add(0, a, (2, 3))
    acc.add(0, b, (2, 3))
    assert acc.counts[0] == 4
    assert torch.allclose(acc.mean(0), ((a.sum(0) + b.sum(0)) / 4).reshape(2, 3, 5))
    assert torch.allclose(acc.mean(0).sum(-1), torch.ones(2, 3))
    acc.reset()
    assert acc.rows() == []


def test_recorder_records_only_inside_each_window():
    store, blend = MapAccumulator(4, Window(0.5, 1.0)), MapAccumulator(4)
    recorder = Recorder(store, blend)
    assert recorder.recording(0, 10) == (blend,) and recorder.recording(5, 10) == (store, blend)
    assert recorder.recording_self(5, 10) == ()
    import copy
    assert copy.deepcopy(recorder) is recorder


def test_word_mask_pools_resizes_normalises_and_thresholds():
    maps = one_hot_maps(4, 4, 3, {1: [(1, 1)]})
    pooled = word_mask(maps, (1,), (8, 8), 0.5, pool=True)
    assert pooled.shape == (8, 8) and int(pooled.sum()) == 36  # 3 x 3 pixels of the 4 x 4 map, x4 each
    assert int(word_mask(maps, (1,), (8, 8), 0.5, pool=False).sum()) == 4
    assert not bool(word_mask(maps, (), (8, 8), 0.5, pool=True).any())


def test_blend_masks_unite_source_and_edit_and_remove_subtract_words():
    source = one_hot_maps(4, 4, 3, {1: [(0, 0)], 2: [(3, 3)]})
    edit = one_hot_maps(4, 4, 3, {1: [(0, 3)], 2: [(3, 3)]})
    spec = BlendSpec(words=((1,), (1,)), subtract=((2,), ()), threshold=0.5, subtract_threshold=0.5)
    (mask,) = blend_masks(spec, [source, edit], (4, 4))
    assert bool(mask[0, 0]) and bool(mask[0, 3]) and not bool(mask[3, 0])
    spec_sub = BlendSpec(words=((1, 2), (1,)), subtract=((2,), ()), threshold=0.5, subtract_threshold=0.5)
    assert not bool(blend_masks(spec_sub, [source, edit], (4, 4))[0][3, 3])


def test_blend_rows_is_exact_outside_the_mask():
    x = torch.randn(3, 4, 2, 2)
    masks = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    out = blend_rows(x, masks)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1, :, 0, 0], x[1, :, 0, 0]) and torch.equal(out[1, :, 1, 1], x[0, :, 1, 1])
    assert torch.equal(out[2, :, 1, 1], x[2, :, 1, 1]) and torch.equal(out[2, :, 0, 0], x[0, :, 0, 0])


def test_blend_spec_needs_an_edit_and_a_word():
    with pytest.raises(PromptToPromptError, match="needs an edit"):
        BlendSpec(words=((1,),), subtract=((),))
    with pytest.raises(PromptToPromptError, match="at least one word"):
        BlendSpec(words=((), ()), subtract=((), ()))


def test_blend_starts_at_its_fraction():
    spec = BlendSpec(words=((1,), (1,)), subtract=((), ()), start=0.2)
    assert [spec.active(i, 10) for i in (1, 2, 9)] == [False, True, True]


def test_token_heatmaps_are_scaled_to_one_each():
    maps = torch.rand(2, 3, 4)
    heat = token_heatmaps(maps, [(1,), (2, 3)], (4, 6))
    assert heat.shape == (2, 4, 6)
    assert torch.allclose(heat.flatten(1).amax(1), torch.ones(2)) and float(heat.min()) >= 0


def test_colorize_and_overlay_stay_in_range():
    heat = torch.linspace(0, 1, 5).reshape(1, 5)
    colours = colorize(heat)
    assert colours.shape == (1, 5, 3) and float(colours.min()) >= 0 and float(colours.max()) <= 1
    assert colours[0, 0].argmax() == 2 and colours[0, -1].argmax() == 0  # low is blue, high is red
    image = torch.full((1, 5, 3), 0.5)
    assert torch.equal(overlay(image, heat, 0.0), image)


def test_self_attention_recorder_has_its_own_window_and_is_reset():
    own = MapAccumulator(4, Window(0.0, 0.5))
    recorder = Recorder(MapAccumulator(4), self_store=own)
    assert recorder.recording_self(0, 10) == (own,) and recorder.recording_self(6, 10) == ()
    assert own not in recorder.recording(0, 10)
    own.add(0, torch.rand(1, 4, 4).softmax(-1), (2, 2))
    recorder.shared.run = Run(10, (8, 8), ())
    recorder.reset()
    assert own.rows() == [] and recorder.run == Run(10, (8, 8), ())


def test_extended_recorders_share_what_they_record():
    """A store chained before a blend (or after it): each node's recorder sees everything the sampled one
    records, the blend masks included."""
    store, self_store = MapAccumulator(4), MapAccumulator(4)
    first = Recorder(store=store, self_store=self_store)
    second = first.extended(blend=MapAccumulator(4))
    assert second.store is store and second.self_store is self_store and first.blend is None
    second.shared.masks = torch.ones(1, 2, 2, dtype=torch.bool)
    assert first.last_masks is not None  # the store's recorder shows the blend's masks
    third = Recorder(blend=MapAccumulator(4)).extended(store=store, self_store=self_store)
    assert third.store is store and third.blend is not None


def test_a_checkpoint_resumes_exactly_what_was_recorded():
    recorder = Recorder(store=MapAccumulator(2), blend=MapAccumulator(2))
    maps = torch.rand(2, 6, 5).softmax(-1)
    recorder.store.add(0, maps, (2, 3))
    recorder.blend.add(0, maps, (2, 3))
    recorder.shared.masks = torch.tensor([[[True, False]]])
    recorder.shared.run = Run(10, (4, 6), ())
    recorder.checkpoint(4, 10)
    before = recorder.store.mean(0).clone()
    recorder.store.add(0, torch.rand(2, 6, 5).softmax(-1), (2, 3))
    recorder.shared.masks = None
    assert not recorder.resume(5, 10, (4, 6))
    assert recorder.resume(4, 10, (4, 6))
    assert torch.equal(recorder.store.mean(0), before) and recorder.store.counts[0] == 2
    assert torch.equal(recorder.last_masks, torch.tensor([[[True, False]]]))
    with pytest.raises(PromptToPromptError, match="samples a 8x12 latent, but the steps before it ran on 4x6"):
        recorder.resume(4, 10, (8, 12))
    recorder.reset()
    assert not recorder.resume(4, 10, (4, 6)) and recorder.store.rows() == []


def test_self_attention_components_separate_two_regions():
    """Pixels of the left half attend to the left half, the right to the right: the first component
    is one value on each side, so it splits the image down the middle."""
    h, w = 4, 6
    left = (torch.arange(w) < w // 2).repeat(h)
    maps = torch.where(left[:, None] == left[None, :], 1.0, 0.05) + 0.01 * torch.rand(h * w, h * w)
    maps = (maps / maps.sum(1, keepdim=True)).reshape(h, w, h * w)
    parts = self_attention_components(maps, 3, (h, w))
    assert parts.shape == (3, h, w) and float(parts.min()) >= 0 and float(parts.max()) <= 1
    first = parts[0]
    assert float((first[:, : w // 2].mean() - first[:, w // 2:].mean()).abs()) > 0.8


def test_self_attention_components_need_square_pixel_maps():
    with pytest.raises(ValueError, match=r"\[h, w, h\*w\]"):
        self_attention_components(torch.rand(2, 3, 5), 1, (2, 3))
