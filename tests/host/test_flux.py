"""Word-level edits on joint-attention models sampled by ComfyUI's real samplers on tiny random-weight models built
from ComfyUI's own classes with their own text encoders: Flux.1 dev (CLIP-L pooled, T5 context padded to 256) and
SD3.5 medium's shape (CLIP-L and CLIP-G chunks then T5's tokens in one context, and an image-only attention in
some blocks). The identities run on both; what only one family has (T5's pieces shown, FluxGuidance, Kontext,
ModelSamplingFlux) on that one."""

from __future__ import annotations

import executor
import pack
import pytest
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, comfy_node, encode, ksample, plain, replace

tiny.import_comfy()
import nodes  # noqa: E402

#: Flux dev is sampled without a negative (cfg 1: one pass per step); a Flux-shaped model trained with captions
#: dropped (the toy, SD3-like use) is sampled with CFG: both batch layouts.
GUIDANCE = (1.0, 3.5)


@pytest.fixture(scope="module")
def flux():
    model, clip, _ = executor.tiny_bundle("flux")
    return model, clip


@pytest.fixture(scope="module", params=["flux", "sd3"])
def joint(request):
    model, clip, _ = executor.tiny_bundle(request.param)
    return model, clip


def edit(p2p, node, model, clip, *args, **kwargs):
    return getattr(p2p[node](), "apply")(model, clip, *args, **kwargs)


@pytest.mark.parametrize("cfg", GUIDANCE)
def test_source_row_equals_plain_sampling_of_the_source(p2p, joint, cfg):
    model, clip = joint
    patched, positive, latent = replace(p2p, model, clip)
    out = ksample(patched, clip, positive, latent, cfg=cfg)
    assert out.shape[:2] == (2, 16)
    assert_close(out[0], plain(model, clip, SOURCE, latent, cfg=cfg))


@pytest.mark.parametrize("cfg", GUIDANCE)
def test_closed_windows_give_plain_sampling_of_the_target(p2p, joint, cfg):
    model, clip = joint
    patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=0.0)
    assert_close(ksample(patched, clip, positive, latent, cfg=cfg)[1], plain(model, clip, TARGET, latent, cfg=cfg))


def test_identical_prompts_with_full_windows_give_equal_rows(p2p, joint):
    model, clip = joint
    patched, positive, latent = replace(p2p, model, clip, target=SOURCE, cross=1.0, self_=1.0)
    out = ksample(patched, clip, positive, latent)
    assert_close(out[1], out[0])


@pytest.mark.parametrize("cross, self_", [(0.8, 0.0), (0.0, 0.4), (0.8, 0.4)],
                         ids=["text logits only", "image queries and keys only", "both"])
def test_each_part_of_a_word_swap_acts_and_keeps_the_source_row(p2p, joint, cross, self_):
    model, clip = joint
    patched, positive, latent = replace(p2p, model, clip, cross=cross, self_=self_)
    out = ksample(patched, clip, positive, latent)
    target_alone = plain(model, clip, TARGET, latent)
    assert not torch.allclose(out[1], target_alone, atol=1e-4)
    assert_close(out[0], plain(model, clip, SOURCE, latent))


@pytest.fixture(scope="module")
def flux_double_blocks_only(flux):
    """A tiny Flux without its single-stream blocks: sharing in its double blocks is sharing in every block."""
    model = tiny.make_model("flux")
    model.model.diffusion_model.single_blocks = torch.nn.ModuleList()
    return model, flux[1]


def test_block_presets_share_the_source_image_queries_and_keys_in_their_blocks_only(p2p, flux_double_blocks_only):
    model, clip = flux_double_blocks_only
    out = {}
    for layers in ("auto", "double blocks", "single blocks"):
        patched, positive, latent = replace(p2p, model, clip, cross=0.0, self_=1.0, self_attention_layers=layers)
        out[layers] = ksample(patched, clip, positive, latent, cfg=1.0)[1]
    target_alone = plain(model, clip, TARGET, latent, cfg=1.0)
    assert not torch.allclose(out["auto"], target_alone, atol=1e-4)  # sharing acts
    assert torch.equal(out["double blocks"], out["auto"])
    assert_close(out["single blocks"], target_alone)  # this model has no single block to share in


def test_vital_blocks_are_stable_flows_at_full_depth_and_at_the_same_relative_depth_otherwise():
    families = pack.module("runtime.families")
    double, single = list(range(19)), list(range(38))
    assert families.same_relative_depth(double, families.VITAL_DOUBLE, 19) == [0, 1, 17, 18]
    assert families.same_relative_depth(single, families.VITAL_SINGLE, 38) == [6, 9, 34, 35, 37]
    assert sorted(set(families.same_relative_depth([0, 1, 2], families.VITAL_DOUBLE, 19))) == [0, 2]


@pytest.mark.parametrize("family_name, layers, offered", [
    ("flux", "half", "auto, all, double blocks, single blocks, vital blocks"), ("sd3", "double blocks", "auto, all"),
    ("sd1", "vital blocks", "auto, all, half, quarter")])
def test_a_self_attention_layer_choice_the_family_lacks_names_its_choices(p2p, error, family_name, layers, offered):
    model, clip, _ = executor.tiny_bundle(family_name)
    with pytest.raises(error, match=f"'{layers}' is not a choice on .*, which offers {offered} "):
        replace(p2p, model, clip, self_attention_layers=layers)


def test_refine_and_reweight(p2p, joint):
    model, clip = joint
    patched, positive, latent = edit(p2p, "RefineEdit", model, clip, "a house in the snow",
                                     "a wooden house in the snow", 0.8, 0.4, 64, 64)
    out = ksample(patched, clip, positive, latent)
    assert_close(out[0], plain(model, clip, "a house in the snow", latent))
    assert not torch.allclose(out[1], out[0])
    rows = {}
    for scale in (1.0, 3.0, -1.0):
        patched, positive, latent = edit(p2p, "Reweight", model, clip, "a fluffy teddy bear", "fluffy", scale,
                                         "new row", 0.8, 0.4, 64, 64)
        rows[scale] = ksample(patched, clip, positive, latent)
    assert_close(rows[1.0][1], rows[1.0][0])
    assert not torch.allclose(rows[3.0][1], rows[3.0][0]) and not torch.allclose(rows[-1.0][1], rows[3.0][1])


def test_sampler_custom_advanced_with_basic_guider_matches_ksampler(p2p, flux):
    import comfy_extras.nodes_custom_sampler as custom

    model, clip = flux
    patched, positive, latent = replace(p2p, model, clip)
    guided = comfy_node(nodes.NODE_CLASS_MAPPINGS["FluxGuidance"], conditioning=positive, guidance=3.5)
    guider = custom.BasicGuider().get_guider(patched, guided)[0]
    sigmas = custom.BasicScheduler().get_sigmas(patched, "simple", 6, 1.0)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]
    noise = custom.RandomNoise().get_noise(7)[0]
    out = custom.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)[0]["samples"]
    assert_close(out, ksample(patched, clip, guided, latent, cfg=1.0, scheduler="simple"))


def test_outside_the_mask_the_edit_keeps_the_source_latent_exactly(p2p, joint):
    model, clip = joint
    patched, positive, latent = replace(p2p, model, clip, size=128)
    blended, record = edit(p2p, "LocalBlendMask", patched, clip, "cat", "dog", 0.8, 0.2, "1/2")
    out = ksample(blended, clip, positive, latent)
    mask = record.recorder.last_masks[0]
    assert bool(mask.any()) and not bool(mask.all()), "the test needs a partial mask"
    assert float((out[1] - out[0])[:, ~mask].abs().max()) == 0.0
    assert float((out[1] - out[0])[:, mask].abs().max()) > 0.0


def test_stored_maps_are_each_text_tokens_share_of_the_joint_attention(p2p, joint):
    """Every text token has a map, and a position's maps sum to the share of its attention that went to the text:
    under one, the image keys taking the rest (exactly: tests/core/test_joint.py)."""
    model, clip = joint
    patched, positive, latent, record = edit(p2p, "AttentionStore", model, clip, SOURCE, "1/2", 0.0, 1.0, 64, 64)
    ksample(patched, clip, positive, latent)
    store = record.recorder.store
    maps = store.mean(0)
    assert store.shape == (4, 4) and maps.shape == (4, 4, positive[0][0].shape[1])  # every text token: SD3 154
    text_share = maps.sum(-1)
    assert bool(((text_share > 0) & (text_share < 0.999)).all()), text_share


def test_show_attention_draws_each_t5_token_and_word_masks(p2p, flux):
    model, clip = flux
    vae = executor.tiny_bundle("flux")[2]
    patched, positive, latent, record = edit(p2p, "AttentionStore", model, clip, SOURCE, "1/2", 0.0, 1.0, 64, 96)
    images = vae.decode(ksample(patched, clip, positive, latent)).detach()
    heatmaps, word_masks, _, _ = p2p["ShowAttention"]().show(record, images, 0, "cat, bicycle", 0.6, 3)
    tokens = record.prompt(0).content
    assert [t.text for t in tokens][:3] == ["\u2581", "a", "\u2581cat"]  # T5: 'a' is two pieces, no start token
    assert heatmaps.shape[0] == len(tokens) and word_masks.shape == (2, 96, 64)
    assert float(word_masks.max()) == pytest.approx(1.0)


def test_self_attention_recording_is_refused_with_the_fix(p2p, flux, error):
    model, clip = flux
    with pytest.raises(error, match="turn self_attention off"):
        edit(p2p, "AttentionStore", model, clip, SOURCE, "1/2", 0.0, 1.0, 64, 64, True)


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_edits_run(p2p, family, dtype):
    model = tiny.make_model(family, dtype=dtype)
    _, clip, _ = executor.tiny_bundle(family)
    patched, positive, latent = replace(p2p, model, clip)
    out = ksample(patched, clip, positive, latent)
    assert torch.isfinite(out).all() and not torch.allclose(out[1], out[0])
    alone = plain(model, clip, SOURCE, latent)
    assert float((out[0] - alone).abs().max()) < 1e-2 * float(alone.abs().max())


def test_plain_sampling_is_bit_identical_after_an_edit(p2p, joint):
    model, clip = joint
    latent = {"samples": torch.zeros(1, 16, 8, 8)}  # both families' latents have 16 channels
    before = ksample(model, clip, encode(clip, SOURCE), latent)
    patched, positive, edit_latent = replace(p2p, model, clip)
    ksample(patched, clip, positive, edit_latent)
    assert torch.equal(ksample(model, clip, encode(clip, SOURCE), latent), before)


def test_a_level_the_model_does_not_attend_at_names_the_one_it_does(p2p, joint, error):
    model, clip = joint
    with pytest.raises(error, match="1/4.*(Flux|SD3) attends over 2x2 patches.*Choose 1/2"):
        edit(p2p, "AttentionStore", model, clip, SOURCE, "1/4", 0.0, 1.0, 64, 64)


def test_prompts_of_different_text_lengths_are_refused(p2p, joint, error):
    model, clip = joint
    long = "a cat riding a bicycle, " + ", ".join(["highly detailed"] * 100)
    with pytest.raises(error, match="same number of text tokens.*Shorten"):
        edit(p2p, "RefineEdit", model, clip, "a cat riding a bicycle", long, 0.8, 0.4, 64, 64)


def test_a_word_not_in_the_prompt_names_the_words_found(p2p, joint, error):
    model, clip = joint
    with pytest.raises(error, match="'horse' is not a word.*'cat'"):
        edit(p2p, "Reweight", model, clip, SOURCE, "horse", 2.0, "new row", 0.8, 0.4, 64, 64)


def test_a_clip_without_flux_text_is_refused(p2p, flux, error):
    model, _ = flux
    _, sd1_clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="reads t5xxl text.*DualCLIPLoader"):
        replace(p2p, model, sd1_clip)


def test_kontext_reference_images_are_refused_naming_them(p2p, flux, error):
    """A reference latent (Flux Kontext's ReferenceLatent) adds image tokens after the sampled ones: the edit
    cannot place its words among them, and says so instead of editing the wrong tokens."""
    import node_helpers

    model, clip = flux
    patched, positive, latent = replace(p2p, model, clip)
    reference = node_helpers.conditioning_set_values(positive, {"reference_latents": [latent["samples"][:1]]},
                                                     append=True)
    with pytest.raises(error, match="reference images such as Flux Kontext's"):
        ksample(patched, clip, reference, latent)


@pytest.mark.parametrize("where", ["before the edit", "after the edit"])
def test_model_sampling_flux_on_either_side_of_the_edit_keeps_the_identities(p2p, flux, where):
    """Flux graphs set the schedule's shift for the image size with ModelSamplingFlux, before or after the edit
    node: the edit places its steps on that schedule either way."""
    model, clip = flux
    shift = nodes.NODE_CLASS_MAPPINGS["ModelSamplingFlux"]

    def shifted(m):
        return comfy_node(shift, model=m, max_shift=1.15, base_shift=0.5, width=64, height=64)

    base = shifted(model) if where == "before the edit" else model
    patched, positive, latent = replace(p2p, base, clip, cross=0.6, self_=0.2)
    patched = patched if where == "before the edit" else shifted(patched)
    out = ksample(patched, clip, positive, latent, scheduler="simple")
    assert_close(out[0], plain(shifted(model), clip, SOURCE, latent, scheduler="simple"))
    closed = replace(p2p, base, clip, cross=0.0, self_=0.0)
    closed_model = closed[0] if where == "before the edit" else shifted(closed[0])
    assert_close(ksample(closed_model, clip, *closed[1:], scheduler="simple")[1],
                 plain(shifted(model), clip, TARGET, latent, scheduler="simple"))
    assert not torch.allclose(out[1], plain(shifted(model), clip, TARGET, latent, scheduler="simple"))


def test_sd3_finds_each_word_in_its_clip_and_its_t5_tokens(p2p):
    import pack

    _, clip, _ = executor.tiny_bundle("sd3")
    text = pack.module("runtime.text")
    key = pack.module("runtime.families").family(executor.tiny_bundle("sd3")[0]).text_key
    prompt = text.tokenize_prompt(clip, SOURCE, key)
    assert prompt.length == 154 and [offset for offset, _ in prompt.parts] == [0, 77]
    assert prompt.find("cat", text.word_tokenizer(clip, key)) == (2, 77 + 2)  # CLIP: after BOS; T5: after '▁', 'a'


def test_an_sd3_clip_loaded_without_t5_is_edited_in_its_clip_stream_alone(p2p):
    """TripleCLIPLoader without T5 (or a checkpoint without it): the context is CLIP's 77 tokens only. (Without
    CLIP-L or CLIP-G, SD3 pads their pooled halves to the real 768 and 1280 wide, which the tiny model's are not.)"""
    model, _, _ = executor.tiny_bundle("sd3")
    clip = tiny.make_clip("sd3")
    clip.cond_stage_model.t5xxl = None
    patched, positive, latent = replace(p2p, model, clip)
    assert positive[0][0].shape[1] == 77
    out = ksample(patched, clip, positive, latent)
    assert_close(out[0], plain(model, clip, SOURCE, latent))
    assert not torch.allclose(out[1], out[0])
