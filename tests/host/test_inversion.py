"""NullTextInvert on real ComfyUI sampling with tiny random-weight models; the reconstruction tests on "gentle"
ones (tiny.make_gentle_model), which make the comparison between inversion modes meaningful.
"""

from __future__ import annotations

import gc

import executor
import pack
import pytest
import tiny
import torch
from examples import api_prompt, node_id
from sampling import comfy_node, encode

tiny.import_comfy()
import comfy.model_management  # noqa: E402
import comfy.samplers  # noqa: E402

import nodes  # noqa: E402

STEPS, CFG, PROMPT = 10, 7.5, "a photo of a cat"


_GENTLE: dict[tuple, tuple] = {}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", autouse=True)
def release_gentle_models():
    """Free the models while ComfyUI's modules still exist (their finalizers need them)."""
    yield
    _GENTLE.clear()
    gc.collect()


def gentle(family: str, dtype: torch.dtype = torch.float32) -> tuple:
    """A tiny model whose noise predictions are small (its output layer scaled by 0.05), in `dtype` (the same
    weights, rounded), and its CLIP."""
    if (family, dtype) not in _GENTLE:
        _GENTLE[(family, dtype)] = (tiny.make_gentle_model(family, 0.05, dtype=dtype), executor.tiny_bundle(family)[1])
    return _GENTLE[(family, dtype)]


def image_latent(seed=0):
    return {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))}


def advanced(model, clip, positive, latent, cfg=CFG, steps=STEPS, add_noise="disable", sampler="ddim",
             scheduler="ddim_uniform", start=0):
    return nodes.KSamplerAdvanced().sample(model, add_noise, 0, steps, cfg, sampler, scheduler, positive,
                                           encode(clip, ""), latent, start, 10000, "disable")[0]["samples"]


def invert(p2p, model, clip, mode, latent=None, steps=STEPS, cfg=CFG, prompt=PROMPT):
    with torch.inference_mode():  # as the executor runs nodes
        return p2p["NullTextInvert"]().invert(model, clip, prompt, latent or image_latent(), mode, steps, cfg,
                                              "ddim_uniform")


def reconstruction_error(p2p, family, mode, dtype=torch.float32):
    model, clip = gentle(family, dtype)
    inverted, latent = invert(p2p, model, clip, mode)
    return float((advanced(inverted, clip, encode(clip, PROMPT), latent) - image_latent()["samples"]).pow(2).mean())


def plain_ddim_error(p2p, family, dtype=torch.float32):
    """Plain DDIM inversion: the same inverted noise, sampled with guidance and an ordinary negative."""
    model, clip = gentle(family, dtype)
    _, latent = invert(p2p, model, clip, "direct")
    return float((advanced(model, clip, encode(clip, PROMPT), latent) - image_latent()["samples"]).pow(2).mean())


@pytest.mark.parametrize("family,ratio", [("sd1", 50), ("sd2", 20), ("sdxl", 5)])
def test_null_text_reconstructs_far_better_than_plain_ddim_inversion(p2p, family, ratio):
    assert reconstruction_error(p2p, family, "null-text") * ratio < plain_ddim_error(p2p, family)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_negative_prompt_inversion_beats_plain_ddim_inversion(p2p, family):
    assert reconstruction_error(p2p, family, "negative-prompt") * 3 < plain_ddim_error(p2p, family)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_negative_prompt_inversion_of_a_long_prompt_samples_with_a_negative_run_on_its_own(p2p, dtype):
    """A prompt of five chunks is more than 4 times as long as the empty negative, so ComfyUI runs the negative
    on its own; the inversion's context (the prompt) must still take its place there."""
    model, clip = gentle("sd1", dtype)
    prompt = " ".join(["cat"] * 350)
    inverted, latent = invert(p2p, model, clip, "negative-prompt", prompt=prompt)
    assert encode(clip, prompt)[0][0].shape[1] == 5 * 77
    sampled = advanced(inverted, clip, encode(clip, prompt), latent)
    _, plain_latent = invert(p2p, model, clip, "direct", prompt=prompt)
    plain = advanced(model, clip, encode(clip, prompt), plain_latent)
    target = image_latent()["samples"]
    assert float((sampled - target).pow(2).mean()) * 3 < float((plain - target).pow(2).mean())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_direct_inversion_reconstructs_to_float_tolerance(p2p, family):
    assert reconstruction_error(p2p, family, "direct") < 1e-10


def test_guidance_changed_after_an_inversion_is_refused_but_direct_inversion_replays_it(p2p, error):
    """RescaleCFG (or PAG, SAG...) on the model sampled after a negative-prompt or null-text inversion changes the
    guidance the inversion was computed for: it reconstructed 4.5 % worse, silently. Direct inversion sets the
    source row's predictions, which any guidance replays."""
    import comfy_extras.nodes_model_advanced as advanced_nodes

    model, clip = gentle("sd1")

    def rescaled(inverted):
        return comfy_node(advanced_nodes.RescaleCFG, model=inverted, multiplier=0.7)

    inverted, latent = invert(p2p, model, clip, "negative-prompt")
    with pytest.raises(error, match="changes this model's guidance \\(sampler_cfg_function"):
        advanced(rescaled(inverted), clip, encode(clip, PROMPT), latent)
    inverted, latent = invert(p2p, model, clip, "direct")
    sampled = advanced(rescaled(inverted), clip, encode(clip, PROMPT), latent)
    assert float((sampled - image_latent()["samples"]).pow(2).mean()) < 1e-10


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
def test_null_text_in_half_precision_reconstructs_as_well_as_in_fp32(p2p, dtype):
    """On a GPU ComfyUI runs SD UNets in fp16 or bf16; the optimisation must still work there (measured: 1.03x
    and 1.12x the fp32 error, which is 11x below negative-prompt and 60x below plain DDIM inversion)."""
    half = reconstruction_error(p2p, "sd1", "null-text", dtype)
    assert half <= 1.5 * reconstruction_error(p2p, "sd1", "null-text")
    assert half * 5 < reconstruction_error(p2p, "sd1", "negative-prompt", dtype)
    assert half * 20 < plain_ddim_error(p2p, "sd1", dtype)


def null_text_gradient(family: str, dtype: torch.dtype) -> torch.Tensor:
    """The embedding's gradient at a realistic loss (about 3e-5), computed as NullTextInvert computes it for a
    model in `dtype` (the node's half-precision measures, the pack's loss and backward)."""
    inversion, core = pack.module("runtime.null_text"), pack.module("p2p_core.inversion")
    model, clip = gentle(family, dtype)
    cond_context, uncond_context = (encode(clip, text)[0][0] for text in (PROMPT, ""))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", STEPS).tolist()
    sigma, sigma_next = sigmas[0], sigmas[1]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigma
    cond = lambda x, s: model.model.apply_model(x, torch.tensor([s]), c_crossattn=cond_context)
    uncond = lambda x, s, e: model.model.apply_model(x, torch.tensor([s]), c_crossattn=e)
    options = inversion.half_precision(model.model, cond, uncond)
    exact_cond, exact_uncond = options.get("exact", (cond, None))
    reference = gentle(family)[0].model  # the pivot comes from the fp32 model, the same for every dtype
    with torch.no_grad():
        u, c = (reference.apply_model(x, torch.tensor([sigma]), c_crossattn=t) for t in (uncond_context, cond_context))
        step = core.euler_step(x, u + CFG * (c - u), sigma, sigma_next)
    target = step + 0.03 * torch.randn(step.shape, generator=torch.Generator().manual_seed(2))
    embedding = uncond_context.clone().float().requires_grad_(True)
    with torch.no_grad():
        value = None if exact_uncond is None else exact_uncond(x, sigma, embedding)
    loss = core.null_text_loss(exact_cond(x, sigma), uncond(x, sigma, embedding), value, x, sigma, sigma_next,
                               core.diffusers_scale(target, sigma_next), CFG)
    assert core.scaled_backward(loss, embedding, options.get("loss_scale", 1.0))
    return embedding.grad


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_the_null_text_gradient_in_half_precision_points_where_the_fp32_one_does(family, dtype):
    """Without the measures, fp16 loses most of it to underflow (sd2: cosine 0.34, 59 % zeros) and bf16 to the
    rounding of its predictions (sd1: cosine 0.73)."""
    half, full = null_text_gradient(family, dtype), null_text_gradient(family, torch.float32)
    assert float(torch.nn.functional.cosine_similarity(half.flatten(), full.flatten(), dim=0)) >= 0.9


@pytest.mark.parametrize("mode", ["null-text", "direct"])
def test_the_source_row_of_an_edit_reconstructs_as_a_single_row_does(p2p, mode):
    model, clip = gentle("sd1")
    inverted, latent = invert(p2p, model, clip, mode)
    alone = advanced(inverted, clip, encode(clip, PROMPT), latent)
    edited, positive, batch = p2p["ReplaceEdit"]().apply(inverted, clip, "", "a photo of a dog", 0.8, 0.5, 64, 64,
                                                          latent=latent)
    out = advanced(edited, clip, positive, batch)
    assert torch.allclose(out[0], alone[0], atol=1e-4 * float(alone.abs().max()))
    assert not torch.allclose(out[1], out[0])


def test_an_interrupted_inversion_leaves_the_model_unpatched(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    positive = encode(clip, PROMPT)
    before = nodes.common_ksampler(model, 1, 3, CFG, "euler", "normal", positive, encode(clip, ""),
                                   nodes.EmptyLatentImage().generate(64, 64, 1)[0])[0]["samples"]
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(p2p, model, clip, "null-text")
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert model.get_injections("prompt_to_prompt_inversion") is None
    assert model.get_attachment("prompt_to_prompt_inversion") is None
    after = nodes.common_ksampler(model, 1, 3, CFG, "euler", "normal", positive, encode(clip, ""),
                                  nodes.EmptyLatentImage().generate(64, 64, 1)[0])[0]["samples"]
    assert torch.equal(before, after)


def test_null_text_runs_on_weights_loaded_in_inference_mode_and_leaves_them_as_they_were(p2p):
    """ComfyUI loads checkpoints inside inference mode, whose tensors autograd cannot save: the inversion
    must still optimise (with the same result as on ordinary weights, which get no gradients) and hand
    back the very same parameters, without copying them."""
    with torch.inference_mode():
        loaded = tiny.make_model("sd1", seed=3)
    unet = loaded.model.diffusion_model
    before = dict(unet.named_parameters())
    assert all(p.is_inference() for p in before.values())
    clip = gentle("sd1")[1]
    ordinary = tiny.make_model("sd1", seed=3)
    ordinary.model.diffusion_model.requires_grad_(True)  # as ComfyUI 0.3.x left them; newer ones switch it off
    inverted, latent = invert(p2p, loaded, clip, "null-text", steps=3)
    reference, reference_latent = invert(p2p, ordinary, clip, "null-text", steps=3)
    mine, theirs = (m.get_attachment("prompt_to_prompt_inversion") for m in (inverted, reference))
    assert all(torch.equal(a, b) for a, b in zip(mine.uncond, theirs.uncond, strict=True))
    assert torch.equal(latent["samples"], reference_latent["samples"])
    after = dict(unet.named_parameters())
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert all(p.requires_grad and p.grad is None for p in ordinary.model.diffusion_model.parameters())


# --- through the executor -------------------------------------------------------------------------------

def real_image_prompt(target="a photo of a dog"):
    prompt = api_prompt(pack.REPO_ROOT / "example_workflows" / "real_image_edit.json", steps=4)
    prompt[node_id(prompt, "ReplaceEdit")]["inputs"]["target_prompt"] = target
    return prompt


def test_real_image_edit_runs_through_the_executor_and_reuses_the_inversion():
    prompt = real_image_prompt()
    first = executor.run_workflow(prompt, [str(pack.REPO_ROOT)])
    assert first["success"], first["error_message"]
    (images,) = first["captured"].values()
    assert images.shape[:3] == (2, 64, 64) and torch.isfinite(images).all()
    second = executor.run_workflow(real_image_prompt("a photo of a fox"), [str(pack.REPO_ROOT)], keep_cache=True)
    assert second["success"], second["error_message"]
    invert_id = node_id(prompt, "NullTextInvert")
    cached = [data.get("nodes", []) for event, data in second["messages"] if event == "execution_cached"]
    assert any(invert_id in ids for ids in cached)
    (edited,) = second["captured"].values()
    assert torch.allclose(edited[0], images[0], atol=1e-4) and not torch.allclose(edited[1], images[1])


# --- bad input ------------------------------------------------------------------------------------------

def test_a_latent_of_several_images(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="inverts one image"):
        invert(p2p, model, clip, "direct", latent={"samples": torch.randn(2, 4, 8, 8)})


def test_sampling_with_other_steps(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, latent = invert(p2p, model, clip, "direct")
    with pytest.raises(error, match="inverted the image for 10 steps of the 'ddim_uniform' scheduler"):
        advanced(inverted, clip, encode(clip, PROMPT), latent, steps=12)
    with pytest.raises(error, match="scheduler ddim_uniform"):
        advanced(inverted, clip, encode(clip, PROMPT), latent, scheduler="karras")


def test_sampling_with_added_noise_or_another_sampler(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, latent = invert(p2p, model, clip, "negative-prompt")
    with pytest.raises(error, match="add_noise 'disable'"):
        advanced(inverted, clip, encode(clip, PROMPT), latent, add_noise="enable")
    with pytest.raises(error, match="ddim or euler sampler"):
        advanced(inverted, clip, encode(clip, PROMPT), latent, sampler="dpmpp_2m")


def edit(p2p, model, clip, latent=None):
    return p2p["ReplaceEdit"]().apply(model, clip, "", "a photo of a dog", 0.8, 0.5, 64, 64, latent=latent)


def test_a_latent_of_another_size_at_the_edit(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, _ = invert(p2p, model, clip, "direct")
    with pytest.raises(error, match="inverted one of"):
        edit(p2p, inverted, clip, nodes.EmptyLatentImage().generate(96, 96, 1)[0])


def test_the_edit_latent_left_unconnected_after_an_inversion(p2p, error):
    """It used to sample an empty latent: another picture, and no message."""
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, _ = invert(p2p, model, clip, "direct")
    with pytest.raises(error, match="latent input is not connected.*NullTextInvert's LATENT output"):
        edit(p2p, inverted, clip)


@pytest.mark.parametrize("other", ["photo", "empty"])
def test_another_latent_than_the_inverted_one_at_the_edit(p2p, error, other):
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, _ = invert(p2p, model, clip, "direct")
    latent = image_latent() if other == "photo" else nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    with pytest.raises(error, match="not the one NullTextInvert inverted.*NullTextInvert's LATENT output"):
        edit(p2p, inverted, clip, latent)


@pytest.mark.parametrize("with_edit", [True, False], ids=["edit", "reconstruction"])
def test_sampling_another_latent_than_the_inverted_one(p2p, error, with_edit):
    """The edit node's latent is right, but the sampler gets another one (the photo's, here)."""
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, latent = invert(p2p, model, clip, "direct")
    model, positive, batch = edit(p2p, inverted, clip, latent) if with_edit else (inverted, encode(clip, PROMPT),
                                                                                    latent)
    rows = batch["samples"].shape[0]
    photo = {"samples": image_latent()["samples"].repeat(rows, 1, 1, 1), "batch_index": [0] * rows}
    with pytest.raises(error, match="not the one NullTextInvert inverted"):
        advanced(model, clip, positive, photo)
    advanced(model, clip, positive, batch)  # the inverted latent itself samples


def test_a_model_without_an_unconditional_branch(p2p, error):
    model, clip, _ = executor.tiny_bundle("flux")
    with pytest.raises(error, match="unconditional branch"):
        invert(p2p, model, clip, "null-text")


def test_null_text_needs_guidance(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="cfg above 1"):
        invert(p2p, model, clip, "null-text", cfg=1.0)


def test_the_edit_must_start_from_the_inverted_prompt(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    inverted, latent = invert(p2p, model, clip, "direct")
    with pytest.raises(error, match="differs from the prompt the image was inverted with"):
        p2p["ReplaceEdit"]().apply(inverted, clip, "a photo of a bird", "a photo of a dog", 0.8, 0.5, 64, 64)


def test_inversion_after_an_edit_node_is_refused(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    edited, _, _ = p2p["ReplaceEdit"]().apply(model, clip, PROMPT, "a photo of a dog", 0.8, 0.4, 64, 64)
    with pytest.raises(error, match="before the edit nodes"):
        invert(p2p, edited, clip, "direct")


def test_a_positive_of_another_checkpoint_is_refused_before_inverting(p2p, error):
    """It used to fail inside the UNet: mat1 and mat2 shapes cannot be multiplied."""
    model, clip, _ = executor.tiny_bundle("sd1")
    other = encode(tiny.make_clip("sdxl"), PROMPT)
    with pytest.raises(error, match="positive input of Invert Image is 64 values wide.*attends to text 32 wide"):
        p2p["NullTextInvert"]().invert(model, clip, PROMPT, image_latent(), "direct", STEPS, CFG, "ddim_uniform",
                                       positive=other)


@pytest.mark.parametrize("combine", ["entries", "rows"])
def test_a_positive_of_several_prompts_is_refused_before_inverting(p2p, error, combine):
    """Only one prompt's encoding can be the edit's source row; the others used to be dropped silently."""
    model, clip, _ = executor.tiny_bundle("sd1")
    one, two = encode(clip, PROMPT), encode(clip, "a photo of a dog")
    positive = (nodes.ConditioningCombine().combine(one, two)[0] if combine == "entries"
                else [[torch.cat([one[0][0], two[0][0]]), dict(one[0][1])]])
    with pytest.raises(error, match="holds .* conditioning\\(s\\) of 2 row\\(s\\).*one CLIP Text Encode"):
        p2p["NullTextInvert"]().invert(model, clip, PROMPT, image_latent(), "direct", STEPS, CFG, "ddim_uniform",
                                       positive=positive)


def test_a_latent_the_model_cannot_sample_is_refused_before_inverting(p2p, error):
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match=r"latent has shape \(1, 16, 8, 8\).*image latents of 4 channels"):
        invert(p2p, model, clip, "direct", latent={"samples": torch.zeros(1, 16, 8, 8)})
