"""FlowInvert, the RF-Solver sampler and the FlowEdit sampler on real ComfyUI sampling with tiny random-weight
Flux.1 and SD3.5 models: sampling back with the retracing sampler reconstructs the latent (RF-Solver far better
than Euler), an edit's source row reconstructs as sampling alone does, FlowEdit keeps the photo in its source
row, and what would not reconstruct or edit is refused naming the fix."""

from __future__ import annotations

import executor
import pytest
import tiny
import torch
from sampling import comfy_node, encode

tiny.import_comfy()
import comfy_extras.nodes_custom_sampler as custom  # noqa: E402

import nodes  # noqa: E402

STEPS, PROMPT = 8, "a photo of a cat"


@pytest.fixture(scope="module", params=["flux", "sd3"])
def joint(request):
    """A gentle tiny model (tiny.make_gentle_model: the velocity a fifth of a random network's) and its CLIP."""
    return tiny.make_gentle_model(request.param, 0.2), executor.tiny_bundle(request.param)[1]


def photo(model, seed=0) -> dict:
    channels = model.get_model_object("latent_format").latent_channels
    return {"samples": torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5}


def invert(p2p, model, clip, method, steps=STEPS, latent=None):
    with torch.inference_mode():  # as the executor runs nodes
        return p2p["FlowInvert"]().invert(model, clip, PROMPT, latent or photo(model), method, steps, "simple")


def sample_back(p2p, model, positive, latent, method, steps=STEPS, noise=None):
    """SamplerCustomAdvanced with BasicGuider (Flux's way), DisableNoise, and the sampler that retraces ``method``."""
    sampler = (p2p["RFSolverSampler"]().sampler()[0] if method == "rf-solver"
               else custom.KSamplerSelect().get_sampler("euler")[0])
    guider = custom.BasicGuider().get_guider(model, positive)[0]
    sigmas = custom.BasicScheduler().get_sigmas(model, "simple", steps, 1.0)[0]
    noise = noise or custom.DisableNoise().get_noise()[0]
    return custom.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)[0]["samples"]


def reconstruction_error(p2p, model, clip, method, steps=STEPS) -> float:
    inverted, latent = invert(p2p, model, clip, method, steps)
    out = sample_back(p2p, inverted, encode(clip, PROMPT), latent, method, steps)
    return float((out - photo(model)["samples"]).pow(2).mean())


def test_rf_solver_reconstructs_far_better_than_euler_inversion(p2p, joint):
    model, clip = joint
    euler, rf_solver = (reconstruction_error(p2p, model, clip, method) for method in ("euler", "rf-solver"))
    assert rf_solver < 2e-3 * float(photo(model)["samples"].pow(2).mean())
    assert rf_solver < 0.3 * euler


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_the_inverted_latent_is_noise_not_the_photo(p2p, family):
    model, clip, _ = executor.tiny_bundle(family)  # a random network's velocity is of the latent's size
    _, latent = invert(p2p, model, clip, "rf-solver")
    assert float((latent["samples"] - photo(model)["samples"]).pow(2).mean()) > 0.1


def test_the_source_row_of_an_edit_reconstructs_as_a_single_row_does(p2p, joint):
    model, clip = joint
    inverted, latent = invert(p2p, model, clip, "rf-solver")
    alone = sample_back(p2p, inverted, encode(clip, PROMPT), latent, "rf-solver")
    edited, positive, batch = p2p["ReplaceEdit"]().apply(inverted, clip, "", "a photo of a dog", 0.8, 0.5, 64, 64,
                                                          latent=latent)
    out = sample_back(p2p, edited, positive, batch, "rf-solver")
    assert torch.allclose(out[0], alone[0], atol=1e-4 * float(alone.abs().max()))
    assert not torch.allclose(out[1], out[0])


def test_ksampler_advanced_with_euler_replays_an_euler_inversion(p2p, flux_pair):
    model, clip = flux_pair
    inverted, latent = invert(p2p, model, clip, "euler")
    out = nodes.KSamplerAdvanced().sample(inverted, "disable", 0, STEPS, 1.0, "euler", "simple",
                                          encode(clip, PROMPT), encode(clip, ""), latent, 0, 10000, "disable")[0]
    assert torch.equal(out["samples"], sample_back(p2p, inverted, encode(clip, PROMPT), latent, "euler"))


@pytest.fixture(scope="module")
def flux_pair():
    model, clip, _ = executor.tiny_bundle("flux")
    return model, clip


def test_another_sampler_or_added_noise_is_refused_naming_the_fix(p2p, flux_pair, error):
    model, clip = flux_pair
    inverted, latent = invert(p2p, model, clip, "rf-solver")
    with pytest.raises(error, match="RF-Solver Sampler"):
        sample_back(p2p, inverted, encode(clip, PROMPT), latent, "euler")
    with pytest.raises(error, match="add_noise"):
        sample_back(p2p, inverted, encode(clip, PROMPT), latent, "rf-solver",
                    noise=custom.RandomNoise().get_noise(0)[0])
    with pytest.raises(error, match="steps"):
        sample_back(p2p, inverted, encode(clip, PROMPT), latent, "rf-solver", steps=STEPS + 1)


def test_a_unet_model_is_refused_naming_the_null_text_node(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match=r"Invert Image \(null-text\)"):
        invert(p2p, model, clip, "euler")


def test_null_text_inversion_of_a_flux_model_names_the_flow_node(p2p, flux_pair, error):
    model, clip = flux_pair
    with pytest.raises(error, match=r"Invert Image \(flow\)"):
        with torch.inference_mode():
            p2p["NullTextInvert"]().invert(model, clip, PROMPT, photo(model), "null-text", STEPS, 3.0, "simple")


def test_the_rf_solver_sampler_samples_plain_prompts_and_edits_without_a_warning(p2p, flux_pair, caplog):
    model, clip = flux_pair
    patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.8, 0.5,
                                                            64, 64)
    guided = comfy_node(nodes.NODE_CLASS_MAPPINGS["FluxGuidance"], conditioning=positive, guidance=3.5)
    out = sample_back(p2p, patched, guided, latent, "rf-solver", noise=custom.RandomNoise().get_noise(3)[0])
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])
    assert "not one of ComfyUI's" not in caplog.text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_rf_solver_reconstructs_in_half_precision(p2p, dtype):
    """The transformer in fp16 or bf16, as on a user's GPU: the velocity is read back in fp32 (ComfyUI's x0 is), so
    the inversion still retraces, within the rounding of the half-precision model."""
    model = tiny.make_gentle_model("flux", 0.2, dtype=dtype)
    clip = executor.tiny_bundle("flux")[1]
    error = reconstruction_error(p2p, model, clip, "rf-solver")
    assert error < 2e-3 * float(photo(model)["samples"].pow(2).mean())  # measured 1.7e-4 (fp16), 1.8e-4 (bf16)


def flowedit(p2p, model, positive, latent, seed=0, denoise=1.0, cfg=1.0):
    """SamplerCustom as a FlowEdit graph wires it: the edit node's model, positive and latent, the FlowEdit sampler."""
    sigmas = custom.BasicScheduler().get_sigmas(model, "simple", STEPS, denoise)[0]
    sampler = p2p["FlowEditSampler"]().sampler()[0]
    return custom.SamplerCustom().sample(model, True, seed, cfg, positive, positive, sampler, sigmas,
                                         latent)[0]["samples"]


def test_flowedit_keeps_the_photo_in_the_source_row_and_edits_the_other(p2p, joint, caplog):
    model, clip = joint
    patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.0, 0.0, 64, 64,
                                                            latent=photo(model))
    out = flowedit(p2p, patched, positive, latent)
    assert torch.allclose(out[0], photo(model)["samples"][0], atol=1e-5)
    assert float((out[1] - out[0]).abs().mean()) > 1e-3
    assert torch.equal(out, flowedit(p2p, patched, positive, latent))  # seeded by the sampler's seed
    assert not torch.allclose(out[1], flowedit(p2p, patched, positive, latent, seed=1)[1])
    assert "not one of ComfyUI's" not in caplog.text  # its rows share their noise by construction


def test_flowedit_with_a_lower_first_sigma_changes_less(p2p, flux_pair):
    """The schedule's denoise is FlowEdit's n_max: the edit starts at that sigma, so a lower one leaves more."""
    model, clip = tiny.make_gentle_model("flux", 0.2), flux_pair[1]
    patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.0, 0.0, 64, 64,
                                                            latent=photo(model))
    change = [float((out[1] - out[0]).abs().mean())
              for out in (flowedit(p2p, patched, positive, latent, denoise=d) for d in (1.0, 0.5))]
    assert change[1] < change[0], change


def test_flowedit_without_a_photo_or_an_edit_is_refused_naming_the_wiring(p2p, flux_pair, error):
    model, clip = flux_pair
    with pytest.raises(error, match=r"VAE Encode.*1 row\(s\), not an edit's"):
        flowedit(p2p, model, encode(clip, PROMPT), photo(model))
    patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.0, 0.0, 64, 64)
    with pytest.raises(error, match="empty latent"):
        flowedit(p2p, patched, positive, latent)


def test_flowedit_with_local_blend_keeps_the_photo_outside_the_mask_exactly(p2p, flux_pair):
    """Local blend composes with FlowEdit: outside the mask the edited row is predicted as the source, so its
    velocity difference is zero there, and the end of the run blends the rows as after any sampler."""
    model, clip = flux_pair
    picture = {"samples": torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5}
    edited, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.0, 0.0, 128,
                                                           128, latent=picture)
    blended, record = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.8, 0.0, "1/2")
    out = flowedit(p2p, blended, positive, latent)
    mask = record.recorder.last_masks[0]
    assert bool(mask.any()) and not bool(mask.all()), "the test needs a partial mask"
    assert float((out[1] - picture["samples"][0])[:, ~mask].abs().max()) < 1e-5
    assert float((out[1] - out[0])[:, mask].abs().max()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_flowedit_in_half_precision_keeps_the_photo_and_rounds_no_more_than_sampling(p2p, flux_pair, dtype):
    """The transformer in fp16 or bf16, as on a user's GPU: the source row is still the photo exactly (its velocity
    difference is zero whatever the rounding), and the edit is as far from the fp32 edit as plain sampling in that
    precision is from fp32 sampling (measured: fp16 4.4e-4 against 3.7e-4, bf16 0.037 against 0.136): the
    velocity difference adds no rounding of its own."""
    clip = flux_pair[1]
    edits, plain = [], []
    for model in (tiny.make_gentle_model("flux", 0.2), tiny.make_gentle_model("flux", 0.2, dtype=dtype)):
        patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.0, 0.0,
                                                                64, 64, latent=photo(model))
        out = flowedit(p2p, patched, positive, latent)
        assert torch.allclose(out[0], photo(model)["samples"][0], atol=1e-5)
        edits.append(out[1] - out[0])
        plain.append(nodes.common_ksampler(model, 0, STEPS, 1.0, "euler", "simple", encode(clip, PROMPT),
                                           encode(clip, ""), {"samples": torch.zeros(1, 16, 8, 8)})[0]["samples"])
    assert float((edits[1] - edits[0]).abs().mean()) < 2 * float((plain[1] - plain[0]).abs().mean())
