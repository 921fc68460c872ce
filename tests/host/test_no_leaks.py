"""An edit never changes what the original MODEL samples, even when an edited run dies half-way."""

from __future__ import annotations

import executor
import pytest
import tiny
import torch

tiny.import_comfy()
import comfy.sample  # noqa: E402

import nodes  # noqa: E402


class Boom(RuntimeError):
    pass


def plain_run(model, clip):
    positive = nodes.CLIPTextEncode().encode(clip, "a cat riding a bicycle")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    channels = model.get_model_object("latent_format").latent_channels  # Flux and SD3: 16
    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    return nodes.common_ksampler(model, 3, 4, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def edited_run(p2p, model, clip, fail_at_step=None):
    patched, positive, latent = p2p["ReplaceEdit"]().apply(model, clip, "a cat riding a bicycle",
                                                             "a dog riding a bicycle", 0.8, 0.4, 64, 64)
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]

    def callback(step, *_):
        if step == fail_at_step:
            raise Boom("interrupted")

    noise = comfy.sample.prepare_noise(latent["samples"], 1, latent["batch_index"])
    comfy.sample.sample(patched, noise, 4, 5.0, "euler", "normal", positive, negative, latent["samples"],
                        callback=callback, seed=1)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux", "sd3"])
def test_plain_sampling_is_bit_identical_after_an_edit(p2p, family):
    model, clip, _ = executor.tiny_bundle(family)
    before = plain_run(model, clip)
    edited_run(p2p, model, clip)
    assert torch.equal(plain_run(model, clip), before)


@pytest.mark.parametrize("family", ["sd1", "flux", "sd3"])
def test_plain_sampling_is_bit_identical_after_an_interrupted_edit(p2p, family):
    model, clip, _ = executor.tiny_bundle(family)
    before = plain_run(model, clip)
    with pytest.raises(Boom):
        edited_run(p2p, model, clip, fail_at_step=1)
    assert torch.equal(plain_run(model, clip), before)


def test_the_input_model_keeps_no_patch(p2p):
    model, clip, _ = executor.tiny_bundle("sd1")
    options_before = repr(model.model_options)
    wrappers_before = repr(model.wrappers)
    p2p["ReplaceEdit"]().apply(model, clip, "a cat", "a dog", 0.8, 0.4, 64, 64)
    assert repr(model.model_options) == options_before and repr(model.wrappers) == wrappers_before
    assert model.get_attachment("prompt_to_prompt") is None
