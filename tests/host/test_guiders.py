"""Guiders that evaluate more than a positive and a negative: the edit acts on the positive chunk wherever the
guider puts it (DualCFGGuider evaluates [negative, middle, positive]); PerpNegGuider, whose guidance couples the
rows of a batch, is refused; an inverted image refuses both, since it replays plain classifier-free guidance."""

from __future__ import annotations

import pytest
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, encode, first_row, replace

tiny.import_comfy()
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy_extras.nodes_custom_sampler as custom  # noqa: E402
import comfy_extras.nodes_perpneg as perpneg  # noqa: E402

STEPS, SEED = 6, 7


def dual_cfg(model, clip, positive):
    guider = custom.Guider_DualCFG(model)
    guider.set_conds(positive, encode(clip, "a photo"), encode(clip, "blurry"))
    guider.set_cfg(5.0, 2.0)
    return guider


def perp_neg(model, clip, positive):
    guider = perpneg.Guider_PerpNeg(model)
    guider.set_conds(positive, encode(clip, "blurry"), encode(clip, ""))
    guider.set_cfg(5.0, 1.0)
    return guider


def plain_cfg(model, clip, positive):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, encode(clip, "blurry"))
    guider.set_cfg(5.0)
    return guider


GUIDERS = {"DualCFGGuider": dual_cfg}


def sample(guider, latent: dict) -> torch.Tensor:
    noise = comfy.sample.prepare_noise(latent["samples"], SEED, latent.get("batch_index"))
    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", STEPS)
    return guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=SEED)


def alone(make, model, clip, text, latent):
    return sample(make(model, clip, encode(clip, text)), first_row(latent))[0]


def distance(a, b) -> float:
    return float((a - b).abs().sum())


@pytest.mark.parametrize("name", GUIDERS)
def test_the_source_row_is_the_source_prompt_sampled_alone(p2p, sd1, name):
    model, clip = sd1
    make = GUIDERS[name]
    patched, positive, latent = replace(p2p, model, clip)
    assert_close(sample(make(patched, clip, positive), latent)[0], alone(make, model, clip, SOURCE, latent))


@pytest.mark.parametrize("name", GUIDERS)
def test_with_closed_windows_the_edited_row_is_the_target_prompt_sampled_alone(p2p, sd1, name):
    model, clip = sd1
    make = GUIDERS[name]
    patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=0.0)
    assert_close(sample(make(patched, clip, positive), latent)[1], alone(make, model, clip, TARGET, latent))


@pytest.mark.parametrize("name", GUIDERS)
def test_the_edit_acts_on_the_positive_chunk(p2p, sd1, name):
    """The edited row leaves the target sampled alone about as far (relative to how far the source lies from it)
    as under plain CFG: 0.547 against 0.546. When the edit took DualCFG's negative chunk for the positive (its
    index is 0), it was 0.022."""
    model, clip = sd1
    make = GUIDERS[name]
    patched, positive, latent = replace(p2p, model, clip, cross=1.0, self_=1.0)
    edited = sample(make(patched, clip, positive), latent)[1]
    target, source = alone(make, model, clip, TARGET, latent), alone(make, model, clip, SOURCE, latent)
    pulled = distance(edited, target) / distance(source, target)
    plain_edited = sample(plain_cfg(patched, clip, positive), latent)[1]
    plain_pulled = distance(plain_edited, alone(plain_cfg, model, clip, TARGET, latent)) / \
        distance(alone(plain_cfg, model, clip, SOURCE, latent), alone(plain_cfg, model, clip, TARGET, latent))
    assert pulled >= 0.5 * plain_pulled, (pulled, plain_pulled)


def test_perp_neg_is_refused_since_its_guidance_couples_the_rows(p2p, sd1, error):
    """Perp-Neg's projection sums over the whole batch: even without the pack, a row sampled in a batch of two
    differs from it sampled alone (by 0.5 here), so no edit could keep the source row the source's picture."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    with pytest.raises(error, match="Perp-Neg"):
        sample(perp_neg(patched, clip, positive), latent)


@pytest.mark.parametrize("name", ["DualCFGGuider", "PerpNegGuider"])
def test_an_inverted_image_refuses_a_guider_that_is_not_plain_cfg(p2p, sd1, error, name):
    model, clip = sd1
    image = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    inverted_model, inverted = p2p["NullTextInvert"]().invert(model, clip, SOURCE, image, "negative-prompt", 3, 5.0,
                                                               "ddim_uniform")
    guider = {"DualCFGGuider": dual_cfg, "PerpNegGuider": perp_neg}[name](inverted_model, clip, encode(clip, SOURCE))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 3)
    with pytest.raises(error, match="plain|positive and a negative"):
        guider.sample(torch.zeros_like(inverted["samples"]), inverted["samples"], comfy.samplers.sampler_object("ddim"),
                      sigmas, seed=SEED)
