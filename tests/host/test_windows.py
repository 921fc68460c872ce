"""Step windows count the steps of the whole trajectory: split samplers, denoise < 1, samplers with correctors,
and the official code's window arithmetic and defaults, on real ComfyUI sampling with tiny models."""

from __future__ import annotations

import executor
import pack
import pytest
import sampling
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, encode, replace

tiny.import_comfy()
import comfy_extras.nodes_custom_sampler as custom  # noqa: E402

import nodes  # noqa: E402

STEPS, CFG, SEED = 10, 5.0, 7


def negative(clip):
    return encode(clip, sampling.NEGATIVE)


def ksample(model, clip, positive, latent, sampler="euler", denoise=1.0):
    return sampling.ksample(model, clip, positive, latent, sampler, steps=STEPS, denoise=denoise)


def two_stages(model, clip, positive, latent, split):
    """KSamplerAdvanced 0..split with leftover noise, then split..end with no added noise."""
    advanced = nodes.KSamplerAdvanced()
    first = advanced.sample(model, "enable", SEED, STEPS, CFG, "euler", "normal", positive, negative(clip), latent,
                            0, split, "enable")[0]
    return advanced.sample(model, "disable", SEED, STEPS, CFG, "euler", "normal", positive, negative(clip), first,
                           split, 10000, "disable")[0]["samples"]


def spy(model):
    """A clone of `model` that logs, for every model call, (step, steps, whether a cross edit was active)."""
    states: list = []

    def observe(n, context, value, extra_options):
        state = extra_options["prompt_to_prompt"]  # one per model call, read by every layer of it
        if not states or states[-1] is not state:
            states.append(state)
        return n, context, value

    clone = model.clone()
    clone.set_model_attn2_patch(observe)
    return clone, states


def calls(states) -> list[tuple[int, int, bool]]:
    return [(s.step, s.steps, any(e is not None for e in s.cross)) for s in states]


# --- split sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", [3, 6])
def test_a_two_stage_edit_equals_one_run(p2p, sd1, split):
    """30 steps as 0-20 then 20-30 used to inject steps 0-15 and 20-27; now both stages see one trajectory."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    assert_close(two_stages(patched, clip, positive, latent, split), ksample(patched, clip, positive, latent))


def test_a_two_stage_local_blend_and_store_equal_one_run(p2p, sd1):
    model, clip = sd1
    edited, positive, latent = replace(p2p, model, clip)
    blended, blend_record = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.8, 0.2, "1/2")
    stored, positive, latent, record = p2p["AttentionStore"]().apply(blended, clip, "", "1/2", 0.3, 0.9, 64, 64,
                                                                     True)
    whole = ksample(stored, clip, positive, latent)
    maps, self_maps, masks = record.maps().mean(1).clone(), record.recorder.self_store.mean(0).clone(), \
        blend_record.recorder.last_masks.clone()
    assert_close(two_stages(stored, clip, positive, latent, 4), whole)
    assert torch.allclose(record.maps().mean(1), maps, atol=1e-6)
    assert torch.allclose(record.recorder.self_store.mean(0), self_maps, atol=1e-6)
    assert torch.equal(blend_record.recorder.last_masks, masks)


def test_split_sigmas_with_sampler_custom_advanced_equal_one_run(p2p, sd1):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    guider = custom.CFGGuider().get_guider(patched, positive, negative(clip), CFG)[0]
    sigmas = custom.BasicScheduler().get_sigmas(patched, "normal", STEPS, 1.0)[0]
    high, low = custom.SplitSigmas().get_sigmas(sigmas, 6)
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]
    first = custom.SamplerCustomAdvanced().sample(custom.RandomNoise().get_noise(SEED)[0], guider, sampler, high,
                                                  latent)[0]
    out = custom.SamplerCustomAdvanced().sample(custom.DisableNoise().get_noise()[0], guider, sampler, low, first)[0]
    assert_close(out["samples"], ksample(patched, clip, positive, latent))


def test_a_schedule_that_is_part_of_no_known_one_is_refused(p2p, sd1, error):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    guider = custom.CFGGuider().get_guider(patched, positive, negative(clip), CFG)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]
    with pytest.raises(error, match="cannot tell which part of a whole schedule.*SplitSigmas"):
        custom.SamplerCustomAdvanced().sample(custom.RandomNoise().get_noise(SEED)[0], guider, sampler,
                                              torch.tensor([5.0, 2.5, 1.0]), latent)


def test_a_second_stage_without_its_first_cannot_blend(p2p, sd1, error):
    model, clip = sd1
    edited, positive, latent = replace(p2p, model, clip)
    blended, _ = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.8, 0.2, "1/2")
    with pytest.raises(error, match="continues a schedule at step 6 of 10.*were not recorded"):
        nodes.KSamplerAdvanced().sample(blended, "disable", SEED, STEPS, CFG, "euler", "normal", positive,
                                        negative(clip), latent, 6, 10000, "disable")


@pytest.mark.parametrize("recorder", ["LocalBlendMask", "AttentionStore"])
def test_a_second_stage_on_an_upscaled_latent_is_refused_where_maps_were_recorded(p2p, sd1, error, recorder):
    """The first stage's maps and masks have its latent's size; the second must not mix them with another."""
    model, clip = sd1
    edited, positive, latent = replace(p2p, model, clip)
    if recorder == "LocalBlendMask":
        patched, _ = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.8, 0.2, "1/2")
    else:
        patched, positive, latent, _ = p2p["AttentionStore"]().apply(edited, clip, "", "1/2", 0.0, 1.0, 64, 64,
                                                                     False)
    advanced = nodes.KSamplerAdvanced()
    first = advanced.sample(patched, "enable", SEED, STEPS, CFG, "euler", "normal", positive, negative(clip), latent,
                            0, 6, "enable")[0]
    larger = nodes.LatentUpscale().upscale(first, "nearest-exact", 128, 128, "disabled")[0]
    with pytest.raises(error, match="samples a 16x16 latent, but the steps before it ran on 8x8.*one size"):
        advanced.sample(patched, "disable", SEED, STEPS, CFG, "euler", "normal", positive, negative(clip), larger,
                        6, 10000, "disable")


def test_with_denoise_below_one_windows_count_comfyuis_longer_schedule(p2p, sd1):
    """KSampler samples denoise 0.5 of 10 steps as the last 10 of 20: the windows count those 20."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip, cross=0.6)
    watched, states = spy(patched)
    ksample(watched, clip, positive, latent, denoise=0.5)
    assert calls(states) == [(step, 20, step < 12) for step in range(10, 20)]  # cross 0.6: floor(0.6 * 21) = 12


# --- which step an evaluation belongs to ------------------------------------------------------------------

@pytest.mark.parametrize("sampler,evaluations", [("heun", 2), ("dpm_2", 2), ("euler", 1)])
def test_every_evaluation_of_a_step_sees_that_steps_window(p2p, sd1, sampler, evaluations):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip, cross=0.5)
    watched, states = spy(patched)
    ksample(watched, clip, positive, latent, sampler=sampler)
    steps = [step for step in range(STEPS) for _ in range(evaluations if step < STEPS - 1 else 1)]
    assert calls(states) == [(step, STEPS, step < 5) for step in steps]  # cross 0.5: floor(0.5 * 11) = 5


# --- the official defaults ----------------------------------------------------------------------------------

def test_by_default_self_attention_is_shared_in_the_official_layers(p2p):
    """SDXL-shaped tiny model: layers at 1/2 and 1/4 of the latent's side. Generated images share the quarter
    (the official 16x16 at 512x512); 'all' also shares the half."""
    model, clip, _ = executor.tiny_bundle("sdxl")

    def edited(**kwargs):
        patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=1.0, **kwargs)
        return ksample(patched, clip, positive, latent)[1]

    default = edited()
    assert torch.equal(default, edited(self_attention_layers="quarter"))
    assert not torch.allclose(default, edited(self_attention_layers="all"))


def test_after_an_inversion_the_default_layers_are_the_null_text_notebooks(p2p, sd1):
    """SD1-shaped tiny model: layers at 1/1 and 1/2 of the latent's side; a real image shares the half."""
    model, clip = sd1
    with torch.inference_mode():
        inverted, latent = p2p["NullTextInvert"]().invert(model, clip, SOURCE, {"samples": torch.randn(1, 4, 8, 8)},
                                                           "direct", 4, CFG, "ddim_uniform")

    def edited(**kwargs):
        patched, positive, batch = p2p["ReplaceEdit"]().apply(inverted, clip, "", TARGET, 0.0, 1.0, 64, 64,
                                                              latent=latent, **kwargs)
        return nodes.KSamplerAdvanced().sample(patched, "disable", 0, 4, CFG, "ddim", "ddim_uniform", positive,
                                               negative(clip), batch, 0, 10000, "disable")[0]["samples"][1]

    default = edited()
    assert torch.equal(default, edited(self_attention_layers="half"))
    assert not torch.allclose(default, edited(self_attention_layers="all"))


def test_a_chained_reweight_governs_the_rows_self_attention(p2p, sd1):
    """As the official chained controller: the reweighting node's self_replace_steps are the row's."""
    model, clip = sd1
    swapped, _, _ = replace(p2p, model, clip, self_attention_layers="all")

    def reweighted(self_steps):
        patched, positive, latent = p2p["Reweight"]().apply(swapped, clip, "", "dog", 2.0, "last edit", 0.8,
                                                            self_steps, 64, 64, self_attention_layers="all")
        return ksample(patched, clip, positive, latent)[1]

    assert not torch.allclose(reweighted(0.0), reweighted(1.0))


def test_stored_maps_of_an_edited_row_are_the_injected_ones(p2p, sd1):
    """The official store keeps the attention tensor the edit overwrites in place, so an edited row's maps (and
    the local blend's mask) are the injected source maps while the cross window is open."""
    model, clip = sd1
    tokenize = pack.module("runtime.text").word_tokenizer(clip)

    def recorded(cross):
        edited, _, _ = replace(p2p, model, clip, cross=cross)
        stored, positive, latent, record = p2p["AttentionStore"]().apply(edited, clip, "", "1/2", 0.0, 1.0, 64, 64)
        ksample(stored, clip, positive, latent)
        cat, dog = (prompt.find(word, tokenize)[0] for prompt, word in
                    ((record.prompt(0), "cat"), (record.prompt(1), "dog")))
        return record.maps().mean(0)[..., cat], record.maps().mean(1)[..., dog]

    source, edited = recorded(1.0)
    assert torch.allclose(source, edited, atol=1e-6)
    source, edited = recorded(0.0)
    assert not torch.allclose(source, edited, atol=1e-3)


def test_stored_self_attention_of_a_sharing_row_is_the_sources(p2p, sd1):
    model, clip = sd1

    def recorded(self_steps):
        edited, _, _ = replace(p2p, model, clip, cross=0.0, self_=self_steps, self_attention_layers="all")
        stored, positive, latent, record = p2p["AttentionStore"]().apply(edited, clip, "", "1/2", 0.0, 1.0, 64, 64,
                                                                         True)
        ksample(stored, clip, positive, latent)
        return record.recorder.self_store.mean(0), record.recorder.self_store.mean(1)

    source, edited = recorded(1.0)
    assert torch.allclose(source, edited, atol=1e-6)
    source, edited = recorded(0.0)
    assert not torch.allclose(source, edited, atol=1e-3)
