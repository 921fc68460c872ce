"""What a trained joint-attention model must show, on the pack's Flux-shaped demo model (toy/flux_model.py): word
edits through joint attention change the named thing and keep the rest, and flow inversions reconstruct real
scenes.

Measured as test_toy_world.py measures the UNet demo model (colour segmentation, fixed seeds; each threshold set
from the measured values in the test's docstring, with a margin; toy/MODEL.md has the numbers). The model reads
captions background last, as it was trained (its T5 sees the whole caption at once).
"""

from __future__ import annotations

import math

import numpy as np
import pack
import pytest
import tiny
import torch
from sampling import encode
from toy_pictures import box, iou, pictures, psnr, thing

tiny.import_comfy()
import nodes  # noqa: E402

if not pack.module("nodes.toy_nodes").FLUX_MODEL_FILE.is_file():
    pytest.skip("the joint-attention demo model's file is not in toy/", allow_module_level=True)

SIZE, STEPS, CFG, SAMPLER, SCHEDULER = 128, 20, 5.0, "euler", "simple"
ONE = "a big red circle on a white background"
TWO = "a big red circle and a small blue square on a white background"
THREE = "a big red circle, a small blue square and a big green triangle on a white background"
SEEDS = tuple(range(8))
#: The joint blocks attend over 2x2 patches: maps and masks at half the latent's size.
LEVEL = "1/2"
SELF_REPLACE = 0.2


@pytest.fixture(scope="module")
def flux_demo(p2p):
    return p2p["PromptToPromptDemoModel"]().load("flux")


@pytest.fixture(scope="module")
def measure():
    return pack.module("toy.measure")


def sample(model, clip, positive, latent, seed):
    return nodes.common_ksampler(model, seed, STEPS, CFG, SAMPLER, SCHEDULER, positive, encode(clip, ""),
                                 latent)[0]["samples"]


def plain(demo, text, seed) -> np.ndarray:
    model, clip, vae = demo
    empty = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    return pictures(vae, sample(model, clip, encode(clip, text), empty, seed))[0]


def edited(p2p, demo, node, seed, *args, **kwargs) -> list[np.ndarray]:
    model, clip, vae = demo
    patched, positive, latent = p2p[node]().apply(model, clip, *args, **kwargs)
    return pictures(vae, sample(patched, clip, positive, latent, seed))


def replace(p2p, demo, source, target, seed):
    return edited(p2p, demo, "ReplaceEdit", seed, source, target, 0.8, SELF_REPLACE, SIZE, SIZE)


def colour_swap(p2p, demo, measure, seeds=SEEDS) -> tuple[list[float], list[float]]:
    """The circle's IoU, edit vs source, of red -> yellow; and of plain sampling of the target from the same noise."""
    kept, alone = [], []
    for seed in seeds:
        source, edit = replace(p2p, demo, TWO, TWO.replace("red", "yellow"), seed)
        before, after = thing(measure, source, "red"), thing(measure, edit, "yellow")
        kept.append(iou(before.mask, after.mask) if before and after and not thing(measure, edit, "red") else 0.0)
        other = thing(measure, plain(demo, TWO.replace("red", "yellow"), seed), "yellow")
        alone.append(iou(before.mask, other.mask) if before and other else 0.0)
    return kept, alone


def test_sources_match_their_captions(flux_demo, measure):
    for seed in SEEDS:
        for caption in (ONE, TWO):
            assert measure.check(plain(flux_demo, caption, seed), caption).ok, (seed, caption)


def test_colour_swap_keeps_the_object_where_it_was_and_changes_its_colour(p2p, flux_demo, measure):
    kept, alone = colour_swap(p2p, flux_demo, measure)
    assert np.mean(kept) >= 0.7 and np.mean(kept) > np.mean(alone) + 0.15, (kept, alone)


def test_shape_swap_keeps_position(p2p, flux_demo, measure):
    moved, alone, shapes = [], [], []
    for seed in SEEDS:
        source, edit = replace(p2p, flux_demo, TWO, TWO.replace("circle", "triangle"), seed)
        before, after = thing(measure, source, "red"), thing(measure, edit, "red")
        shapes.append(after.shape if after else None)
        moved.append(math.dist(box(before)[:2], box(after)[:2]) if after else SIZE)
        other = thing(measure, plain(flux_demo, TWO.replace("circle", "triangle"), seed), "red")
        alone.append(math.dist(box(before)[:2], box(other)[:2]) if other else SIZE)
    assert shapes.count("triangle") >= 6, shapes
    assert np.mean(moved) < np.mean(alone) - 3, (moved, alone)


def test_local_blend_keeps_the_latent_outside_the_mask_and_changes_the_object_inside(p2p, flux_demo, measure):
    model, clip, vae = flux_demo
    for seed in SEEDS[:2]:
        patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, TWO, TWO.replace("blue", "green"), 0.8,
                                                               SELF_REPLACE, SIZE, SIZE)
        patched, record = p2p["LocalBlendMask"]().apply(patched, clip, "square", "square", 0.3, 0.2, LEVEL)
        samples = sample(patched, clip, positive, latent, seed)
        mask = record.recorder.last_masks[0].cpu() > 0
        assert 0.02 < mask.float().mean() < 0.6, "the blend mask covers the square, not the picture"
        assert torch.equal(samples[0][:, ~mask], samples[1][:, ~mask]), seed
        source, edit = pictures(vae, samples)
        assert thing(measure, edit, "green") is not None and thing(measure, edit, "blue") is None, seed
        assert iou(thing(measure, source, "red").mask, thing(measure, edit, "red").mask) >= 0.9, seed


def test_shape_words_attend_to_their_own_shapes(p2p, flux_demo, measure):
    model, clip, vae = flux_demo
    hits = []
    for seed in SEEDS:
        patched, positive, latent, record = p2p["AttentionStore"]().apply(model, clip, THREE, LEVEL, 0.0, 1.0,
                                                                          SIZE, SIZE)
        image = pictures(vae, sample(patched, clip, positive, latent, seed))[0]
        if not measure.check(image, THREE).ok:
            continue
        masks = p2p["ShowAttention"]().show(record, torch.from_numpy(image / 255.0).float()[None], 0,
                                            "circle, square, triangle", 0.6)[1].numpy()
        things = {f.shape: f.mask for f in measure.objects(image)}
        hits += [bool(things[word][np.unravel_index(int(heat.argmax()), heat.shape)])
                 for word, heat in zip(("circle", "square", "triangle"), masks)]
    assert len(hits) >= 6 and np.mean(hits) >= 0.8, hits


def flow_photo(flux_demo, seed=3) -> tuple[str, np.ndarray, dict]:
    """A scene the generator drew (the model never saw it), VAE-encoded: (caption, pixels, latent)."""
    scenes = pack.module("toy.scenes")
    scene = scenes.place(scenes.parse_caption("a big yellow square and a small red circle on a black background"),
                         np.random.default_rng(seed))
    pixels = scenes.draw(scene)[0]
    with torch.no_grad():
        latent = nodes.VAEEncode().encode(flux_demo[2], torch.from_numpy(pixels / 255.0).float()[None])[0]
    return scene.caption, pixels, latent


def flow_invert(p2p, flux_demo, photo, method):
    model, clip, _ = flux_demo
    caption, _, latent = photo
    with torch.inference_mode():
        return p2p["FlowInvert"]().invert(model, clip, caption, latent, method, STEPS, SCHEDULER, CFG)


def resample(model, clip, positive, latent, method):
    import comfy_extras.nodes_custom_sampler as custom

    sampler = (nodes.NODE_CLASS_MAPPINGS["RFSolverSampler"]().sampler()[0] if method == "rf-solver"
               else custom.KSamplerSelect().get_sampler("euler")[0])
    guider = custom.CFGGuider().get_guider(model, positive, encode(clip, ""), CFG)[0]
    sigmas = custom.BasicScheduler().get_sigmas(model, SCHEDULER, STEPS, 1.0)[0]
    return custom.SamplerCustomAdvanced().sample(custom.DisableNoise().get_noise()[0], guider, sampler, sigmas,
                                                 latent)[0]["samples"]


@pytest.fixture(scope="module")
def flow_reconstructions(p2p, flux_demo):
    model, clip, vae = flux_demo
    photo = flow_photo(flux_demo)
    caption, _, latent = photo
    target = pictures(vae, latent["samples"])[0]
    found = {}
    for method in ("euler", "rf-solver"):
        patched, inverted = flow_invert(p2p, flux_demo, photo, method)
        out = resample(patched, clip, encode(clip, caption), inverted, method)
        found[method] = psnr(pictures(vae, out)[0], target)
    return found


def test_rf_solver_reconstructs_a_real_scene_better_than_euler_inversion(flow_reconstructions):
    assert flow_reconstructions["rf-solver"] > flow_reconstructions["euler"] + 3, flow_reconstructions
    assert flow_reconstructions["rf-solver"] > 25, flow_reconstructions


def test_colour_swap_of_a_flow_inverted_scene_changes_that_object_only(p2p, flux_demo, measure):
    model, clip, vae = flux_demo
    photo = flow_photo(flux_demo)
    caption, pixels, _ = photo
    patched, inverted = flow_invert(p2p, flux_demo, photo, "rf-solver")
    edit_model, positive, latent = p2p["ReplaceEdit"]().apply(patched, clip, "", caption.replace("red", "blue"),
                                                              0.8, SELF_REPLACE, SIZE, SIZE, latent=inverted)
    edit = pictures(vae, resample(edit_model, clip, positive, latent, "rf-solver"))[1]
    changed = thing(measure, edit, "blue")
    assert changed is not None and thing(measure, edit, "red") is None
    assert iou(thing(measure, pixels, "red").mask, changed.mask) >= 0.5
    assert iou(thing(measure, pixels, "yellow").mask, thing(measure, edit, "yellow").mask) >= 0.85
