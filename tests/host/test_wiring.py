"""No silent wiring failures: other nodes' attention patches, a wrong positive, an inversion sampled at another
cfg or with another prompt, every latent size at every level, stores and blends chained in either order."""

from __future__ import annotations

import executor
import pytest
import sampling
import tiny
import torch
from sampling import SOURCE, TARGET, assert_close, comfy_node, encode

tiny.import_comfy()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402

import nodes  # noqa: E402

CFG = 5.0


def ksample(model, clip, positive, latent, steps=4, cfg=CFG):
    return sampling.ksample(model, clip, positive, latent, steps=steps, cfg=cfg)


def replace(p2p, model, clip, **kwargs):
    return sampling.replace(p2p, model, clip, self_attention_layers="all", **kwargs)


def layer_keys(model):
    blocks = model.model.diffusion_model
    return [(name, i, depth)
            for name, group in (("input", blocks.input_blocks), ("middle", [blocks.middle_block]),
                                ("output", blocks.output_blocks))
            for i, block in enumerate(group)
            for layer in block if isinstance(layer, comfy_attention.SpatialTransformer)
            for depth in range(len(layer.transformer_blocks))]


def with_replace_patch(model, kind: str, patch):
    """A clone with `patch` as the attn1/attn2 replace patch of every transformer block, as other packs set them."""
    clone = model.clone()
    setter = clone.set_model_attn1_replace if kind == "attn1" else clone.set_model_attn2_replace
    for name, number, depth in layer_keys(model):
        setter(patch, name, number, depth)
    return clone


def through_comfy(calls: list):
    """A patch that composes: it calls ComfyUI's attention function (as IPAdapter-style patches do). A closure,
    since ModelPatcher.clone() deep-copies patch objects but not functions."""

    def patch(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                   attn_precision=extra_options["attn_precision"],
                                                   transformer_options=extra_options)
    return patch


def by_itself(q, k, v, extra_options):
    """A patch that computes attention itself (as Self-Attention Guidance does on its layer)."""
    return comfy_attention.attention_basic(q, k, v, extra_options["n_heads"])


# --- other nodes' attention patches -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["attn1", "attn2"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_a_foreign_patch_that_calls_comfys_attention_keeps_the_edit_intact(p2p, sd1, kind, order):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    reference = ksample(patched, clip, positive, latent)
    calls: list = []
    if order == "before":
        combined = replace(p2p, with_replace_patch(model, kind, through_comfy(calls)), clip)[0]
    else:
        combined = with_replace_patch(patched, kind, through_comfy(calls))
    assert torch.allclose(ksample(combined, clip, positive, latent), reference, atol=1e-5)
    assert calls  # it still runs


@pytest.mark.parametrize("kind,names", [("attn1", "self-attention"), ("attn2", "cross-attention")])
@pytest.mark.parametrize("order", ["before", "after"])
def test_a_foreign_patch_that_computes_attention_itself_stops_the_run(p2p, sd1, error, kind, names, order):
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    if order == "before":
        combined = replace(p2p, with_replace_patch(model, kind, by_itself), clip)[0]
    else:
        combined = with_replace_patch(patched, kind, by_itself)
    with pytest.raises(error, match=f"replaced the {names} .* of layer \\('input', 1, 0\\)"):
        ksample(combined, clip, positive, latent)


def as_ipadapter_plus_writes_it(q, k, v, extra_options):
    """IPAdapter Plus's Attn2Replace: ComfyUI's attention without transformer_options, plus its image-prompt term."""
    out = comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])
    return out + 0.1 * out.mean()


def test_ipadapter_plus_as_written_is_refused_with_the_reason(p2p, sd1, error):
    """Its call reaches ComfyUI's attention but not the hook, which is found only in transformer_options."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    with pytest.raises(error, match="without its transformer_options \\(IPAdapter Plus\\)"):
        ksample(with_replace_patch(patched, "attn2", as_ipadapter_plus_writes_it), clip, positive, latent)


def test_perturbed_attention_guidance_composes_its_perturbed_pass_runs_unedited(p2p, sd1):
    """PAG replaces the middle block's self-attention only in an extra pass of its own; the edit's identities hold
    with it (the source row is the source prompt sampled alone with PAG; closed windows give the target alone)."""
    import comfy_extras.nodes_pag as pag

    model, clip = sd1
    guided = comfy_node(pag.PerturbedAttentionGuidance, model=model, scale=3.0)
    patched, positive, latent = replace(p2p, guided, clip)
    one = {**latent, "samples": latent["samples"][:1], "batch_index": [0]}
    source_alone = ksample(guided, clip, encode(clip, SOURCE), one)[0]
    assert_close(ksample(patched, clip, positive, latent)[0], source_alone)
    closed = p2p["ReplaceEdit"]().apply(guided, clip, SOURCE, TARGET, 0.0, 0.0, 64, 64)[0]
    assert_close(ksample(closed, clip, positive, latent)[1], ksample(guided, clip, encode(clip, TARGET), one)[0])
    assert not torch.allclose(source_alone, ksample(model, clip, encode(clip, SOURCE), one)[0])  # PAG acts


def test_self_attention_guidance_is_refused_where_the_edit_shares_its_layer(p2p, sd1, error):
    """SAG computes the middle block's self-attention itself in the edit's own pass: the edit cannot share it
    there (refused, naming SAG); an edit that shares no self-attention composes with it."""
    import comfy_extras.nodes_sag as sag

    model, clip = sd1
    guided = comfy_node(sag.SelfAttentionGuidance, model=model, scale=0.5, blur_sigma=2.0)
    patched, positive, latent = replace(p2p, guided, clip)
    with pytest.raises(error, match="Self-Attention Guidance"):
        ksample(patched, clip, positive, latent)
    no_sharing = p2p["ReplaceEdit"]().apply(guided, clip, SOURCE, TARGET, 0.8, 0.0, 64, 64)[0]
    one = {**latent, "samples": latent["samples"][:1], "batch_index": [0]}
    assert_close(ksample(no_sharing, clip, positive, latent)[0], ksample(guided, clip, encode(clip, SOURCE), one)[0])


@pytest.mark.parametrize("family", ["sd1", "flux", "sd3"])
def test_a_foreign_attention_override_is_refused_either_way(p2p, family, error):
    model, clip, _ = executor.tiny_bundle(family)

    def override(func, *args, **kwargs):
        return func(*args, **kwargs)

    hooked = model.clone()
    hooked.model_options["transformer_options"]["optimized_attention_override"] = override
    with pytest.raises(error, match="already intercepts this model's attention"):
        replace(p2p, hooked, clip)
    patched, positive, latent = replace(p2p, model, clip)
    later = patched.clone()
    later.model_options["transformer_options"]["optimized_attention_override"] = override
    with pytest.raises(error, match="replaced Prompt-to-Prompt's attention hook"):
        ksample(later, clip, positive, latent)


def test_a_plain_patch_model_after_an_edit_still_samples_as_before(p2p, sd1):
    """Patches that leave attention alone (attn patches that only observe, other wrappers) do not matter."""
    model, clip = sd1
    patched, positive, latent = replace(p2p, model, clip)
    observed = patched.clone()
    observed.set_model_attn2_patch(lambda n, context, value, extra_options: (n, context, value))
    assert torch.equal(ksample(observed, clip, positive, latent), ksample(patched, clip, positive, latent))


# --- the sampler's inputs -------------------------------------------------------------------------------------

def test_a_positive_that_the_edit_node_did_not_make_is_refused(p2p, sd1, error):
    model, clip = sd1
    patched, _, latent = replace(p2p, model, clip)
    with pytest.raises(error, match="positive conditioning is not the one this Prompt-to-Prompt node made"):
        ksample(patched, clip, encode(clip, SOURCE), latent)
    _, other, _ = p2p["ReplaceEdit"]().apply(model, clip, SOURCE, "a fox riding a bicycle", 0.8, 0.4, 64, 64)
    with pytest.raises(error, match="'a cat riding a bicycle'; 'a dog riding a bicycle'"):
        ksample(patched, clip, other, latent)
    stored, _, latent, _ = p2p["AttentionStore"]().apply(model, clip, SOURCE, "1/2", 0.0, 1.0, 64, 64)
    with pytest.raises(error, match="positive conditioning is not the one"):
        ksample(stored, clip, encode(clip, TARGET), latent)


def invert(p2p, model, clip, mode, positive=None):
    with torch.inference_mode():
        return p2p["NullTextInvert"]().invert(model, clip, "a photo of a cat", {"samples": torch.randn(1, 4, 8, 8)},
                                              mode, 3, 7.5, "ddim_uniform", positive)


def advanced(model, clip, positive, latent, cfg=7.5):
    return nodes.KSamplerAdvanced().sample(model, "disable", 0, 3, cfg, "ddim", "ddim_uniform", positive,
                                           encode(clip, ""), latent, 0, 10000, "disable")[0]["samples"]


def test_a_null_text_inversion_sampled_at_another_cfg_is_refused_with_the_value(p2p, sd1, error):
    model, clip = sd1
    inverted, latent = invert(p2p, model, clip, "null-text")
    with pytest.raises(error, match="runs cfg 8.*Set the sampler's cfg to 7.5"):
        advanced(inverted, clip, encode(clip, "a photo of a cat"), latent, cfg=8.0)
    advanced(inverted, clip, encode(clip, "a photo of a cat"), latent)


def test_an_inversion_is_sampled_with_the_conditioning_it_was_inverted_with(p2p, sd1, error):
    model, clip = sd1
    inverted, latent = invert(p2p, model, clip, "negative-prompt")
    with pytest.raises(error, match="does not start with the prompt the image was inverted with"):
        advanced(inverted, clip, encode(clip, "a photo of a dog"), latent)
    other, latent = invert(p2p, model, clip, "direct", positive=encode(clip, "a photo of a dog"))
    with pytest.raises(error, match="not its prompt \\('a photo of a cat'\\)"):
        p2p["ReplaceEdit"]().apply(other, clip, "", "a photo of a bird", 0.8, 0.4, 64, 64, latent=latent)


# --- every size at every level --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [288, 352, 416, 512])
def test_every_latent_size_works_at_every_level(p2p, size):
    """SD1.5's levels (tiny): 36 -> 18 -> 9 -> 5 rounds up, so a ratio of sides (36 / 5 = 7.2) misplaced the 1/8
    level at 288, 352 and 416 pixels: the blend crashed with KeyError: 0 and the store recorded nothing."""
    model, clip, _ = executor.tiny_bundle("sd1_deep")
    edited, _, _ = p2p["ReplaceEdit"]().apply(model, clip, SOURCE, TARGET, 0.8, 0.4, size, size)
    blended, blend_record = p2p["LocalBlendMask"]().apply(edited, clip, "cat", "dog", 0.5, 0.2, "1/8")
    stored, positive, latent, record = p2p["AttentionStore"]().apply(blended, clip, "", "1/8", 0.0, 1.0, size,
                                                                     size)
    ksample(stored, clip, positive, latent, steps=3)
    side = -(-size // 64)  # the middle block's side: latent / 8, rounding up at every halving
    assert record.maps().mean(0).shape[:2] == (side, side)
    assert blend_record.recorder.last_masks.shape == (1, size // 8, size // 8)


# --- stores and blends chained ---------------------------------------------------------------------------------

@pytest.mark.parametrize("store_first", [True, False], ids=["store-then-blend", "blend-then-store"])
def test_a_store_and_a_blend_chained_keep_both_recordings(p2p, sd1, store_first):
    model, clip = sd1
    edited, positive, latent = replace(p2p, model, clip)

    def store(model):
        patched, _, _, record = p2p["AttentionStore"]().apply(model, clip, "", "1/2", 0.0, 1.0, 64, 64, True)
        return patched, record

    def blend(model):
        return p2p["LocalBlendMask"]().apply(model, clip, "cat", "dog", 0.8, 0.2, "1/2")

    first, first_record = (store if store_first else blend)(edited)
    last, last_record = (blend if store_first else store)(first)
    ksample(last, clip, positive, latent)
    stored = first_record if store_first else last_record
    assert stored.maps().rows() == [0, 1] and stored.recorder.self_store.rows() == [0, 1]
    assert first_record.recorder.last_masks is not None and last_record.recorder.last_masks is not None


SEARCHED = {"swap": "ReplaceEdit", "word swap": "ReplaceEdit", "p2p": "ReplaceEdit", "add words": "RefineEdit",
            "reweight": "Reweight", "local blend": "LocalBlendMask", "attention map": "ShowAttention",
            "heatmap": "ShowAttention", "attention": "AttentionStore", "inversion": "NullTextInvert",
            "invert": "NullTextInvert", "demo": "PromptToPromptDemoModel"}


def test_what_users_type_in_node_search_finds_the_pack_nodes(p2p, tiny_server):
    """The front end's node search reads each node's search aliases from /object_info (ComfyUI 0.33 publishes
    them; 0.3.64 and 0.8 do not, and their search knows only names and categories)."""
    import live_server

    info = live_server.get_json(tiny_server + "/object_info")
    published = "search_aliases" in info["KSampler"]
    for term, node in SEARCHED.items():
        aliases = info[node]["search_aliases"] if published else p2p[node].SEARCH_ALIASES
        assert term in aliases, (term, node, aliases)
