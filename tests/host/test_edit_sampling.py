"""ReplaceEdit, RefineEdit and Reweight sampled by ComfyUI's real samplers on tiny random-weight models."""

from __future__ import annotations

import executor
import pytest
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, encode, ksample, plain, replace

tiny.import_comfy()
import nodes  # noqa: E402

FAMILIES = ("sd1", "sd2", "sdxl")
STEPS, CFG, SEED = 6, 5.0, 7  # sampling.ksample's defaults


@pytest.fixture(scope="module", params=FAMILIES)
def bundle(request):
    return executor.tiny_bundle(request.param)


def edit(p2p, node, model, clip, *args, **kwargs):
    return getattr(p2p[node](), "apply")(model, clip, *args, **kwargs)


def test_source_row_equals_plain_sampling_of_the_source(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent = replace(p2p, model, clip)
    out = ksample(patched, clip, positive, latent)
    assert out.shape[0] == 2
    assert_close(out[0], plain(model, clip, SOURCE, latent))


def test_closed_windows_give_plain_sampling_of_the_target(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=0.0)
    assert_close(ksample(patched, clip, positive, latent)[1], plain(model, clip, TARGET, latent))


def test_identical_prompts_with_full_windows_give_equal_rows(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent = replace(p2p, model, clip, target=SOURCE, cross=1.0, self_=1.0)
    out = ksample(patched, clip, positive, latent)
    assert_close(out[1], out[0])


def test_word_swap_keeps_the_edit_closer_to_the_source_than_plain_sampling(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent = replace(p2p, model, clip)
    out = ksample(patched, clip, positive, latent)
    target_alone = plain(model, clip, TARGET, latent)
    assert not torch.allclose(out[1], target_alone)
    assert float((out[1] - out[0]).norm()) < float((target_alone - out[0]).norm())


def test_refine_source_row_and_added_word(p2p, bundle):
    model, clip, _ = bundle
    patched, positive, latent = edit(p2p, "RefineEdit", model, clip, "a house in the snow",
                                     "a wooden house in the snow", 0.8, 0.4, 64, 64)
    out = ksample(patched, clip, positive, latent)
    assert_close(out[0], plain(model, clip, "a house in the snow", latent))
    assert not torch.allclose(out[1], out[0])


def test_reweight_by_one_changes_nothing_and_by_three_changes_the_row(p2p, bundle):
    model, clip, _ = bundle
    rows = {}
    for scale in (1.0, 3.0):
        patched, positive, latent = edit(p2p, "Reweight", model, clip, "a fluffy teddy bear", "fluffy", scale,
                                         "new row", 0.8, 0.4, 64, 64)
        rows[scale] = ksample(patched, clip, positive, latent)
    assert_close(rows[1.0][1], rows[1.0][0])
    assert not torch.allclose(rows[3.0][1], rows[3.0][0])
    assert_close(rows[3.0][0], rows[1.0][0])


def test_chained_edits_add_independent_rows(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    one, pos_one, lat_one = replace(p2p, model, clip)
    two, pos_two, lat_two = replace(p2p, one, clip, source="", target="a cat riding a horse")
    assert lat_two["samples"].shape[0] == 3 and pos_two[0][0].shape[0] == 3
    both = ksample(two, clip, pos_two, lat_two)
    assert_close(both[1], ksample(one, clip, pos_one, lat_one)[1])
    horse, pos_h, lat_h = replace(p2p, model, clip, target="a cat riding a horse")
    assert_close(both[2], ksample(horse, clip, pos_h, lat_h)[1])


def test_reweight_chained_on_a_swap_reweights_that_row(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    swapped, positive, latent = replace(p2p, model, clip)
    weighted, pos_w, lat_w = edit(p2p, "Reweight", swapped, clip, "", "dog", 3.0, "last edit", 0.8, 0.4, 64, 64)
    assert lat_w["samples"].shape[0] == 2
    before, after = ksample(swapped, clip, positive, latent), ksample(weighted, clip, pos_w, lat_w)
    assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_long_prompt_over_77_tokens(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    source = "a cat riding a bicycle, " + ", ".join(["highly detailed"] * 30)
    patched, positive, latent = edit(p2p, "RefineEdit", model, clip, source, "a cat", 0.8, 0.4, 64, 64)
    assert positive[0][0].shape[1] == 154  # the short prompt is tiled to the long one's length
    out = ksample(patched, clip, positive, latent)
    assert_close(out[0], plain(model, clip, source, latent))


@pytest.mark.parametrize("sampler", ["heun", "dpm_2", "dpmpp_2m", "uni_pc", "ddim"])
def test_deterministic_samplers_keep_the_source_row(p2p, sampler):
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, latent = replace(p2p, model, clip)
    out = ksample(patched, clip, positive, latent, sampler=sampler)
    assert_close(out[0], plain(model, clip, SOURCE, latent, sampler=sampler))


def test_ksampler_advanced_and_sampler_custom_advanced_match_ksampler(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    patched, positive, latent = replace(p2p, model, clip)
    negative = encode(clip, "blurry")
    reference = ksample(patched, clip, positive, latent)
    advanced = nodes.KSamplerAdvanced().sample(patched, "enable", SEED, STEPS, CFG, "euler", "normal", positive,
                                               negative, latent, 0, 10000, "disable")[0]["samples"]
    assert_close(advanced, reference)
    import comfy_extras.nodes_custom_sampler as custom
    guider = custom.CFGGuider().get_guider(patched, positive, negative, CFG)[0]
    sigmas = custom.BasicScheduler().get_sigmas(patched, "normal", STEPS, 1.0)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]
    noise = custom.RandomNoise().get_noise(SEED)[0]
    out = custom.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)[0]["samples"]
    assert_close(out, reference)


def test_self_attention_layers_choose_which_resolutions_share(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")  # latent 8 x 8: layers at sides 8 and 4

    def self_only(layers):
        patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=1.0, self_attention_layers=layers)
        return ksample(patched, clip, positive, latent), latent

    (all_layers, latent), (half, _), (quarter, _) = (self_only(n) for n in ("all", "half", "quarter"))
    assert_close(quarter[1], plain(model, clip, TARGET, latent))  # no layer is as small as 8 / 4
    assert not torch.allclose(half[1], quarter[1]) and not torch.allclose(all_layers[1], half[1])


def test_a_word_window_changes_only_when_it_differs_from_the_default(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    default = replace(p2p, model, clip)
    base = ksample(default[0], clip, *default[1:])
    same = replace(p2p, model, clip, word_windows="dog: 0.8")
    short = replace(p2p, model, clip, word_windows="dog: 0.2")
    assert_close(ksample(same[0], clip, *same[1:])[1], base[1])
    assert not torch.allclose(ksample(short[0], clip, *short[1:])[1], base[1])
