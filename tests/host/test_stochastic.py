"""Ancestral and SDE samplers: every row of an edit gets the same step noise, drawn as ComfyUI draws it for a
batch of one, so the identities of deterministic sampling hold for every stochastic sampler of ComfyUI (0.3.64
to 0.33)."""

from __future__ import annotations

import logging

import pytest
import sampling
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, encode, replace

tiny.import_comfy()
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy_extras.nodes_custom_sampler as custom  # noqa: E402

STEPS, CFG, SEED = 6, 5.0, 11

STOCHASTIC_KNOWN = ["euler_ancestral", "euler_ancestral_cfg_pp", "exp_heun_2_x0_sde", "dpm_2_ancestral",
                    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
                    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"]
STOCHASTIC = [name for name in comfy.samplers.KSampler.SAMPLERS if name in STOCHASTIC_KNOWN]
"""The host's stochastic samplers (exp_heun_2_x0_sde came after 0.3.64); one it adds that is not known here fails
the first test below."""


def ksample(model, clip, positive, latent, sampler):
    return sampling.ksample(model, clip, positive, latent, sampler, seed=SEED)


def plain(model, clip, text, latent, sampler):
    return sampling.plain(model, clip, text, latent, sampler=sampler, seed=SEED)


def test_the_list_is_every_sampler_of_comfyui_that_draws_step_noise(sd1):
    """A batch of two identical rows stays identical under plain ComfyUI sampling exactly when the sampler
    draws no step noise."""
    model, clip = sd1
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [0, 0]}
    drawing = []
    for name in comfy.samplers.KSampler.SAMPLERS:
        out = ksample(model, clip, encode(clip, SOURCE), latent, name)
        if not torch.equal(out[0], out[1]):
            drawing.append(name)
    assert drawing == STOCHASTIC


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_the_source_row_equals_the_source_prompt_sampled_alone(p2p, sd1, sampler):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    assert_close(ksample(patched, clip, positive, latent, sampler)[0], plain(model, clip, SOURCE, latent, sampler))


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_with_closed_windows_the_edit_equals_the_target_prompt_sampled_alone(p2p, sd1, sampler):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=0.0)
    assert_close(ksample(patched, clip, positive, latent, sampler)[1], plain(model, clip, TARGET, latent, sampler))


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_identical_prompts_with_full_windows_give_equal_rows(p2p, sd1, sampler):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip, target=SOURCE, cross=1.0, self_=1.0)
    out = ksample(patched, clip, positive, latent, sampler)
    assert_close(out[1], out[0])


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_outside_the_blend_mask_the_edit_keeps_the_source_latent_exactly(p2p, sd1, sampler):
    model, clip = sd1
    edited, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, SOURCE, TARGET, 0.8, 0.4, 128, 128)
    blended, record = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.8, 0.2, "1/2")
    out = ksample(blended, clip, positive, latent, sampler)
    mask = record.recorder.last_masks[0]
    assert bool(mask.any()) and not bool(mask.all()), "the test needs a partial mask"
    assert float((out[1] - out[0])[:, ~mask].abs().max()) == 0.0


@pytest.mark.parametrize("node,options", [
    ("SamplerEulerAncestral", {"eta": 0.7, "s_noise": 1.2}),
    ("SamplerDPMPP_SDE", {"eta": 0.8, "s_noise": 1.0, "r": 0.4, "noise_device": "cpu"}),
    ("SamplerDPMPP_2M_SDE", {"solver_type": "heun", "eta": 1.0, "s_noise": 0.9, "noise_device": "gpu"}),
    ("SamplerDPMPP_3M_SDE", {"eta": 1.0, "s_noise": 1.0, "noise_device": "cpu"}),
    ("SamplerER_SDE", {"solver_type": "Reverse-time SDE", "max_stage": 2, "eta": 0.5, "s_noise": 1.0}),
])
def test_sampler_nodes_with_their_own_options(p2p, sd1, node, options):
    model, clip = sd1
    sampler = getattr(custom, node)().get_sampler(**options)[0]
    patched, positive, latent = replace(p2p, model, clip)

    def run(model, positive, latent):
        guider = custom.CFGGuider().get_guider(model, positive, encode(clip, "blurry"), CFG)[0]
        sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
        return custom.SamplerCustomAdvanced().sample(custom.RandomNoise().get_noise(SEED)[0], guider, sampler,
                                                     sigmas, latent)[0]["samples"]

    one = {**latent, "samples": latent["samples"][:1], "batch_index": [0]}
    assert_close(run(patched, positive, latent)[0], run(model, encode(clip, SOURCE), one)[0])


def test_stores_chained_edits_and_word_windows_under_an_sde_sampler(p2p, sd1):
    model, clip = sd1
    first, _, _ = replace(p2p, model, clip, word_windows="dog: 0.3")
    second, _, _ = p2p["ReplaceEdit"]().apply(first, clip, "", "a cat riding a horse", 0.8, 0.4, 64, 64)
    stored, positive, latent, record = p2p["AttentionStore"]().apply(second, clip, "", "1/2", 0.0, 1.0, 64, 64)
    out = ksample(stored, clip, positive, latent, "dpmpp_2m_sde")
    assert_close(out[0], plain(model, clip, SOURCE, latent, "dpmpp_2m_sde"))
    assert record.maps().rows() == [0, 1, 2] and not torch.allclose(out[1], out[2])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_adaptive_sampler_is_refused_since_its_steps_depend_on_every_row(p2p, sd1, error, eta):
    """dpm_adaptive's step control reads an error over the whole batch: with eta 0 the source row came out 1.3 off
    the source alone, with eta 1 (its own noise) 190. KSampler offers it too."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    sampler = comfy.samplers.ksampler("dpm_adaptive", {"eta": eta, "s_noise": 1.0})  # as SamplerDPMAdaptative
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    noise = comfy.sample.prepare_noise(latent["samples"], SEED, latent["batch_index"])
    with pytest.raises(error, match="dpm_adaptive sampler chooses its step sizes"):
        comfy.sample.sample_custom(patched, noise, CFG, sampler, sigmas, positive, encode(clip, "blurry"),
                                   latent["samples"], seed=SEED)
    with pytest.raises(error, match="dpm_adaptive"):
        ksample(patched, clip, positive, latent, "dpm_adaptive")


def test_a_sampler_that_is_not_comfys_and_takes_no_noise_sampler_is_warned_about(p2p, sd1, caplog):
    """A sampler node of another pack that draws its step noise with torch.randn_like cannot be given shared noise:
    the rows drift apart (165 of 408 measured), which the log says."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)

    @torch.no_grad()
    def sample_own_noise(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **(extra_args or {}))
            x = denoised + torch.randn_like(x) * sigmas[i + 1]
        return x

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    noise = comfy.sample.prepare_noise(latent["samples"], SEED, latent["batch_index"])
    with caplog.at_level(logging.WARNING):
        comfy.sample.sample_custom(patched, noise, CFG, comfy.samplers.KSAMPLER(sample_own_noise), sigmas, positive,
                                   encode(clip, "blurry"), latent["samples"], seed=SEED)
    assert "'own_noise' is not one of ComfyUI's" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ksample(patched, clip, positive, latent, "euler_ancestral")
    assert "not one of ComfyUI's" not in caplog.text
