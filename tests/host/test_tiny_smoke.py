"""Smoke tests for the tiny ComfyUI models and the workflow harness themselves."""

from __future__ import annotations

from typing import Any

import pytest
import tiny
import torch

tiny.import_comfy()

import comfy.sample  # noqa: E402
import executor  # noqa: E402

FAMILIES = ("sd1", "sd2", "sdxl")


def encode(clip: Any, text: str) -> list[Any]:
    """What the stock CLIPTextEncode node does."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(family: str, prompt: str, seed: int = 0) -> torch.Tensor:
    """3 euler steps, cfg 5, on a 1x4x8x8 latent with freshly built tiny models."""
    model, clip = tiny.make_model(family, seed), tiny.make_clip(family, seed)
    latent = tiny.latent(1)["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model, noise, 3, 5.0, "euler", "normal", encode(clip, prompt), encode(clip, ""), latent,
        seed=seed, disable_pbar=True,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_finite_prompt_dependent_and_deterministic(family: str) -> None:
    cat = sample(family, "a photo of a cat")
    dog = sample(family, "a photo of a dog")
    assert cat.shape == (1, 4, 8, 8)
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert cat.abs().max() > 1e-3
    assert not torch.allclose(cat, dog, atol=1e-4), "text must influence the output"
    assert torch.equal(cat, sample(family, "a photo of a cat")), "same seed must reproduce"


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_layout(family: str) -> None:
    clip = tiny.make_clip(family)
    tokens = clip.tokenize(" ".join(f"word{i}" for i in range(60)))  # > 75 tokens
    chunks = {name: len(chunk_list) for name, chunk_list in tokens.items()}
    assert all(n >= 2 for n in chunks.values()), chunks
    [[cond, extra]] = clip.encode_from_tokens_scheduled(tokens)
    width = {"sd1": 32, "sd2": 32, "sdxl": 64}[family]
    assert cond.shape == (1, 77 * min(chunks.values()), width)
    if family == "sdxl":
        assert extra["pooled_output"].shape == (1, 1280)
        assert tokens["l"][-1][-1][0] == 49407 and tokens["g"][-1][-1][0] == 0  # pad tokens
    if family == "sd2":
        assert tokens["h"][-1][-1][0] == 0
    a, b = encode(clip, "a red car")[0][0], encode(clip, "a blue car")[0][0]
    assert not torch.allclose(a, b)


def test_weights_depend_on_seed_only() -> None:
    a = tiny.make_model("sd1", 0).model.state_dict()
    b = tiny.make_model("sd1", 0).model.state_dict()
    c = tiny.make_model("sd1", 1).model.state_dict()
    key = "diffusion_model.out.2.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[key], c[key]) and a[key].abs().sum() > 0


def test_flux_is_not_a_unet() -> None:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model = tiny.make_model("flux")
    assert not isinstance(model.model.diffusion_model, UNetModel)


def workflow(family: str) -> dict[str, Any]:
    """Loader -> 2x CLIPTextEncode -> EmptyLatentImage -> KSampler -> save latent + decode."""
    return {
        "1": {"class_type": "P2PTestTinyCheckpoint", "inputs": {"family": family, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                "seed": 0, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "P2PTestSaveLatent", "inputs": {"samples": ["5", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "P2PTestSaveImage", "inputs": {"images": ["7", 0]}},
    }


def test_workflow_runs_through_executor() -> None:
    result = executor.run_workflow(workflow("sd1"))
    assert result["success"], result["error"]
    latent, image = result["captured"]["6"], result["captured"]["8"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    assert image.shape == (1, 64, 64, 3) and 0 <= image.min() and image.max() <= 1
    assert result["outputs"]["6"]["shape"] == [[1, 4, 8, 8]] and result["outputs"]["6"]["finite"] == [True]

    again = executor.run_workflow(workflow("sd1"), keep_cache=True)  # cached upstream nodes
    assert again["success"] and torch.equal(again["captured"]["6"], latent)


def test_invalid_workflows_fail_validation() -> None:
    bad = workflow("sd1")
    bad["4"]["inputs"]["width"] = 0
    with pytest.raises(AssertionError, match="value_smaller_than_min"):
        executor.run_workflow(bad)

    bad = workflow("sd1")
    bad["5"]["inputs"]["latent_image"] = ["1", 0]  # MODEL into a LATENT socket
    with pytest.raises(AssertionError, match="return_type_mismatch"):
        executor.run_workflow(bad)

    bad = workflow("sd1")
    bad["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(AssertionError, match="value_not_in_list"):
        executor.run_workflow(bad)


def test_node_exceptions_are_reported() -> None:
    # Decoding the tiny SD1's 4-channel latents with the tiny Flux's 16-channel VAE raises inside VAEDecode,
    # which the executor reports instead of raising.
    graph = workflow("sd1")
    graph["9"] = {"class_type": "P2PTestTinyCheckpoint", "inputs": {"family": "flux", "seed": 0}}
    graph["7"]["inputs"]["vae"] = ["9", 2]
    result = executor.run_workflow(graph)
    assert not result["success"]
    assert result["error"] is not None and result["error"]["node_id"] == "7"
    assert result["error"]["node_type"] == "VAEDecode"
    assert "channels" in (result["error_message"] or "")


def test_custom_node_packs_load_like_comfyui(tmp_path: Any) -> None:
    good = tmp_path / "good_pack"
    good.mkdir()
    (good / "impl.py").write_text(
        "class Strict:\n"
        "    RETURN_TYPES = ('LATENT',)\n"
        "    FUNCTION = 'run'\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'samples': ('LATENT',), 'strength': ('FLOAT', {'default': 1.0})}}\n"
        "    def run(self, samples, strength):\n"
        "        if strength > 1:\n"
        "            raise ValueError(f'strength must be <= 1, got {strength}')\n"
        "        return (samples,)\n"
    )
    (good / "__init__.py").write_text("from .impl import Strict\nNODE_CLASS_MAPPINGS = {'SmokeStrict': Strict}\n")
    prompt = workflow("sd1")
    prompt["9"] = {"class_type": "SmokeStrict", "inputs": {"samples": ["4", 0], "strength": 2.0}}
    prompt["10"] = {"class_type": "P2PTestSaveLatent", "inputs": {"samples": ["9", 0]}}
    result = executor.run_workflow(prompt, extra_node_dirs=[str(good)])
    assert not result["success"]
    assert result["error_message"] == "strength must be <= 1, got 2.0"
    assert result["error"] is not None and result["error"]["exception_type"] == "ValueError"

    broken = tmp_path / "broken_pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('boom: missing dependency')\n")
    with pytest.raises(RuntimeError, match="boom: missing dependency"):
        executor.run_workflow(workflow("sd1"), extra_node_dirs=[str(broken)])
