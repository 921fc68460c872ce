"""AttentionStore, LocalBlendMask and ShowAttention on real ComfyUI sampling with tiny random-weight models."""

from __future__ import annotations

import executor
import pytest
import sampling
import tiny
import torch
from sampling import SOURCE, TARGET

tiny.import_comfy()
import nodes  # noqa: E402

LEVEL = "1/2"  # the tiny UNets have cross-attention at 1/1 and 1/2 of the latent side


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def bundle(request):
    return executor.tiny_bundle(request.param)


def sample(model, clip, positive, latent, steps=6, sampler="euler"):
    negative = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    return nodes.common_ksampler(model, 5, steps, 5.0, sampler, "normal", positive, negative, latent)[0]["samples"]


def store(p2p, model, clip, prompt=SOURCE, width=64, height=64, start=0.0, end=1.0, self_attention=False,
          level=LEVEL):
    return p2p["AttentionStore"]().apply(model, clip, prompt, level, start, end, width, height, self_attention)


def replace(p2p, model, clip, target=TARGET, size=128):
    return sampling.replace(p2p, model, clip, target=target, size=size)


def blend(p2p, model, clip, threshold=0.8, edit_words="dog", **kwargs):
    return p2p["LocalBlendMask"]().apply(model, clip, "cat", edit_words, threshold, 0.2, LEVEL, **kwargs)


# --- AttentionStore -------------------------------------------------------------------------------------

def test_maps_are_softmax_rows_with_the_latent_aspect_ratio(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent, record = store(p2p, model, clip, width=64, height=128)
    sample(patched, clip, positive, latent)
    maps = record.maps().mean(0)
    assert maps.shape[:2] == (8, 4)  # latent 16 x 8, level 1/2
    assert bool((maps >= 0).all())
    assert torch.allclose(maps.sum(-1), torch.ones(8, 4), atol=1e-5)


def test_a_second_run_gives_the_same_maps_not_doubled(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, latent, record = store(p2p, model, clip)
    sample(patched, clip, positive, latent)
    first, count = record.maps().mean(0).clone(), record.maps().counts[0]
    sample(patched, clip, positive, latent)
    assert record.maps().counts[0] == count
    assert torch.equal(record.maps().mean(0), first)


def test_the_step_window_limits_what_is_averaged(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    counts = {}
    for end in (1.0, 0.5):
        patched, positive, latent, record = store(p2p, model, clip, end=end)
        sample(patched, clip, positive, latent)
        counts[end] = record.maps().counts[0]
    assert counts[0.5] * 2 == counts[1.0]


def test_recording_does_not_change_the_picture(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, latent, _ = store(p2p, model, clip)
    assert torch.equal(sample(patched, clip, positive, latent), sample(model, clip, positive, latent))


def test_store_after_an_edit_records_every_row_and_keeps_the_edit(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, positive, latent = replace(p2p, model, clip, size=64)
    recorded, positive_r, latent_r, record = p2p["AttentionStore"]().apply(edited, clip, "", LEVEL, 0.0, 1.0, 64, 64)
    out = sample(recorded, clip, positive_r, latent_r)
    assert record.maps().rows() == [0, 1]
    assert torch.allclose(out, sample(edited, clip, positive, latent), atol=1e-5)


def test_a_store_before_an_edit_shows_each_row_with_its_own_prompt(p2p):
    """The maps are those of the batch sampled last, so each row's tokens are those of the plan sampled, even
    when the edit node comes after the store."""
    model, clip, vae = executor.tiny_bundle("sd1")
    stored, _, _, record = store(p2p, model, clip)
    edited, positive, latent = replace(p2p, stored, clip, size=64)
    images = vae.decode(sample(edited, clip, positive, latent)).detach()
    assert record.maps().rows() == [0, 1] and record.prompt(1).text == TARGET
    heatmaps, word_masks, _, _ = p2p["ShowAttention"]().show(record, images, 1, "dog", 0.6)
    assert heatmaps.shape[0] == len(record.prompt(1).content)
    assert word_masks.shape == (1, 64, 64) and float(word_masks.max()) == pytest.approx(1.0)


def test_show_attention_draws_each_token_and_word_masks(p2p):
    model, clip, vae = executor.tiny_bundle("sd1")
    patched, positive, latent, record = store(p2p, model, clip, width=64, height=96)
    images = vae.decode(sample(patched, clip, positive, latent)).detach()
    heatmaps, word_masks, blend_masks, components = p2p["ShowAttention"]().show(record, images, 0, "cat, bicycle",
                                                                                0.6, 3)
    tokens = record.prompt(0).content
    assert heatmaps.shape[0] == len(tokens) and heatmaps.shape[1] > 96 and heatmaps.shape[2] == 64
    assert word_masks.shape == (2, 96, 64) and float(word_masks.max()) == pytest.approx(1.0)
    assert float(word_masks.min()) >= 0 and not bool(blend_masks.any())
    assert components.shape[0] == 1  # self-attention was not recorded: one tile that says how to record it


def test_self_attention_maps_are_softmax_rows_over_the_layers_pixels(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent, record = store(p2p, model, clip, width=64, height=128, self_attention=True)
    out = sample(patched, clip, positive, latent)
    maps = record.recorder.self_store.mean(0)
    assert maps.shape == (8, 4, 32)  # latent 16 x 8, level 1/2: 8 x 4 pixels attending to 32
    assert bool((maps >= 0).all()) and torch.allclose(maps.sum(-1), torch.ones(8, 4), atol=1e-5)
    assert record.recorder.self_store.counts[0] == record.maps().counts[0]  # same layers, heads and steps
    assert torch.equal(out, sample(model, clip, positive, latent))  # recording changes nothing


def test_show_attention_draws_the_self_attention_components(p2p):
    model, clip, vae = executor.tiny_bundle("sd1")
    edited, _, _ = replace(p2p, model, clip, size=64)
    patched, positive, latent, record = p2p["AttentionStore"]().apply(edited, clip, "", LEVEL, 0.0, 1.0, 64, 64, True)
    images = vae.decode(sample(patched, clip, positive, latent)).detach()
    assert record.recorder.self_store.rows() == [0, 1]
    components = p2p["ShowAttention"]().show(record, images, 1, "", 0.6, 4)[3]
    assert components.shape[0] == 4 and components.shape[1] > 64 and components.shape[2:] == (64, 3)
    assert float(components.min()) >= 0 and float(components.max()) <= 1
    assert not torch.equal(components[0], components[1])


def test_self_attention_of_a_too_large_layer_is_refused_before_sampling(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="4225 x 4225 maps.*coarser level"):
        store(p2p, model, clip, width=520, height=520, self_attention=True, level="1/1")
    store(p2p, model, clip, width=512, height=512, self_attention=True, level="1/1")  # 64 x 64: the largest


def test_a_larger_latent_at_the_sampler_is_refused_before_its_maps_are_built(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, _, _ = store(p2p, model, clip, width=64, height=64, self_attention=True, level="1/1")
    larger = nodes.EmptyLatentImage().generate(520, 520, 1)[0]
    with pytest.raises(error, match="4225 x 4225 maps.*coarser level"):
        sample(patched, clip, positive, larger, steps=1)


def test_show_attention_before_sampling_says_what_to_do(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    _, _, _, record = store(p2p, model, clip)
    with pytest.raises(error, match="No attention maps were recorded yet: no sampler has run"):
        p2p["ShowAttention"]().show(record, torch.zeros(1, 64, 64, 3), 0, "", 0.6)


@pytest.mark.parametrize("start,end", [(0.5, 0.5), (0.7, 0.2)])
def test_an_empty_window_is_refused_at_the_store(p2p, error, start, end):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match=f"window is empty \\(start {start:g}, end {end:g}\\).*Set end above start"):
        store(p2p, model, clip, start=start, end=end)


def test_a_window_shorter_than_a_step_says_why_nothing_was_recorded(p2p, error):
    """0.1 of 6 steps holds no whole step: the old message blamed the wiring."""
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, latent, record = store(p2p, model, clip, start=0.0, end=0.1, width=64, height=96)
    sample(patched, clip, positive, latent)
    with pytest.raises(error, match=r"level 1/2 \(layers of 6x4 pixels for the 12x8 latent of the last run\) in "
                                    r"the window 0-0.1, which holds no whole step of that run's 6\. Widen"):
        p2p["ShowAttention"]().show(record, torch.zeros(1, 96, 64, 3), 0, "", 0.6)


def test_the_store_names_its_own_empty_prompt_input(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="The 'prompt' input of Attention Store is empty"):
        store(p2p, model, clip, prompt="  ")


# --- LocalBlendMask -------------------------------------------------------------------------------------

def test_outside_the_mask_the_edit_keeps_the_source_latent_exactly(p2p, bundle):
    model, clip, _ = bundle
    edited, positive, latent = replace(p2p, model, clip)
    blended, record = blend(p2p, edited, clip)
    out = sample(blended, clip, positive, latent)
    mask = record.recorder.last_masks[0]
    assert bool(mask.any()) and not bool(mask.all()), "the test needs a partial mask"
    assert float((out[1] - out[0])[:, ~mask].abs().max()) == 0.0
    assert float((out[1] - out[0])[:, mask].abs().max()) > 0.0


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "lms"])
def test_exact_outside_the_mask_for_other_deterministic_samplers(p2p, sampler):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, positive, latent = replace(p2p, model, clip)
    blended, record = blend(p2p, edited, clip)
    out = sample(blended, clip, positive, latent, sampler=sampler)
    mask = record.recorder.last_masks[0]
    assert not bool(mask.all())
    assert float((out[1] - out[0])[:, ~mask].abs().max()) == 0.0


def test_threshold_zero_equals_the_edit_without_blending(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, positive, latent = replace(p2p, model, clip)
    blended, record = blend(p2p, edited, clip, threshold=0.0)
    out = sample(blended, clip, positive, latent)
    assert bool(record.recorder.last_masks.all())
    assert torch.equal(out, sample(edited, clip, positive, latent))


def test_several_edited_rows_each_get_their_own_mask(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    one, _, _ = replace(p2p, model, clip)
    two, positive, latent = p2p["ReplaceEdit"]().apply(one, clip, "", "a cat riding a horse", 0.8, 0.4, 128, 128)
    blended, record = blend(p2p, two, clip, edit_words="dog; horse")
    out = sample(blended, clip, positive, latent)
    masks = record.recorder.last_masks
    assert masks.shape == (2, 16, 16) and not torch.equal(masks[0], masks[1])
    for row, mask in zip((1, 2), masks):
        assert float((out[row] - out[0])[:, ~mask].abs().max()) == 0.0


def test_subtract_words_shrink_the_mask(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, positive, latent = replace(p2p, model, clip)
    sizes = []
    for subtract in ("", "bicycle"):
        blended, record = blend(p2p, edited, clip, threshold=0.5, subtract_words=subtract)
        sample(blended, clip, positive, latent)
        sizes.append(int(record.recorder.last_masks.sum()))
    assert sizes[1] < sizes[0]


def test_show_attention_outputs_the_blend_masks_used(p2p):
    model, clip, vae = executor.tiny_bundle("sd1")
    edited, positive, latent = replace(p2p, model, clip)
    blended, record = blend(p2p, edited, clip)
    images = vae.decode(sample(blended, clip, positive, latent)).detach()
    _, _, blend_masks, _ = p2p["ShowAttention"]().show(record, images, 1, "dog", 0.6)
    assert blend_masks.shape == (1, 128, 128)
    assert torch.equal(blend_masks[0, ::8, ::8].bool(), record.recorder.last_masks[0].cpu())


# --- bad input ------------------------------------------------------------------------------------------

def test_blend_word_not_in_the_prompt(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, _, _ = replace(p2p, model, clip)
    with pytest.raises(error, match="'horse' is not a word of the prompt 'a dog riding a bicycle'"):
        blend(p2p, edited, clip, edit_words="horse")


def test_blend_without_an_edit(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="needs an edit to blend"):
        blend(p2p, model, clip)
    stored, _, _, _ = store(p2p, model, clip)
    with pytest.raises(error, match="needs an edit to blend"):
        blend(p2p, stored, clip)


def test_unknown_level_for_the_model(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, _, _ = replace(p2p, model, clip)
    with pytest.raises(error, match="no cross-attention at 1/8.*levels are 1/1, 1/2"):
        p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.3, 0.2, "1/8")
    with pytest.raises(error, match="no cross-attention at 1/4"):
        p2p["AttentionStore"]().apply(model, clip, SOURCE, "1/4", 0.0, 1.0, 64, 64)


def test_an_edit_after_the_blend_is_refused(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, _, _ = replace(p2p, model, clip)
    blended, _ = blend(p2p, edited, clip)
    with pytest.raises(error, match="after LocalBlendMask"):
        replace(p2p, blended, clip, target="a cat riding a horse")


def test_edit_words_must_match_the_rows(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, _, _ = replace(p2p, model, clip)
    with pytest.raises(error, match="one entry per edited row"):
        blend(p2p, edited, clip, edit_words="dog; horse")
