"""NullTextInvert: turn a photo's latent into noise that a sampler turns back into the photo, then edit it.

Modes (all start with DDIM inversion of the image under the source prompt, guidance 1, on exactly the
schedule the sampler will use):
- `null-text` (Mokady et al.): optimise the unconditional embedding per step so that guided sampling
  retraces the inversion; the patched MODEL uses that step's embedding as the negative.
- `negative-prompt` (Miyake et al.): use the source prompt itself as the negative, no optimisation.
- `direct` (Ju et al.): no optimisation; the source row is steered onto the inversion's latents exactly,
  while edited rows sample with ordinary guidance from your negative prompt.

The inversion runs inside ComfyUI's own sampling machinery (a custom Sampler driven by CFGGuider), so
conditioning, SDXL's pooled inputs and model patches are applied as when sampling.
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import torch

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.inversion import NullTextSettings
from ..p2p_core.plan import require_words
from ..runtime.inversion import Inversion, InversionPatch, StepProgress
from ..runtime.null_text import InversionSampler, differentiable
from ..runtime.patch import KEY as EDIT_KEY
from ..runtime.text import check_text_width, encode_prompt, tokenize_prompt
from ..runtime.unet import transformer_levels
from .edit_nodes import CATEGORY, check_image_latent

MODES = ("null-text", "negative-prompt", "direct")


INVERTED_LATENT_TOOLTIP = ("The inverted noise, for the edit node's latent input (then a sampler with add_noise "
                           "disabled).")


class InvertNode:
    """What every inversion node is: a MODEL that carries the inversion and the inverted LATENT, both for an edit
    node."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "LATENT")
    RETURN_NAMES = ("model", "latent")
    FUNCTION = "invert"


def photo_inputs(models: str, clip: str) -> dict:
    """The inputs every inversion node starts with: the model (``models`` says which), its CLIP, the prompt that
    describes the photo (the edit's source prompt) and the photo's latent."""
    return {
        "model": ("MODEL", {"tooltip": f"{models} (before any edit node)."}),
        "clip": ("CLIP", {"tooltip": clip}),
        "prompt": ("STRING", {"multiline": True, "default": "a cat sitting next to a mirror",
                              "tooltip": "A prompt describing the photo: the source prompt of the edit."}),
        "latent": ("LATENT", {"tooltip": "The photo's latent, from VAE Encode (one image)."}),
    }


class NullTextInvert(InvertNode):
    """Invert a photo so Prompt-to-Prompt can edit it."""

    SEARCH_ALIASES = ["inversion", "invert", "invert image", "null-text", "null text inversion", "ddim inversion",
                      "real image", "edit photo", "p2p", "prompt to prompt"]
    DESCRIPTION = ("Inverts an image latent (VAE Encode) into the noise a sampler turns back into the image under "
                   "the source prompt, for editing real photos: connect its MODEL and LATENT to an edit node, then "
                   "sample with KSamplerAdvanced (add_noise disable, same steps and scheduler, ddim or euler). Modes: "
                   "null-text (the paper, best fidelity), negative-prompt (fast), direct (fast, exact source).")
    OUTPUT_TOOLTIPS = (
        "The model with the inversion installed (per-step negative embedding or source-row steering). Connect it "
        "to the edit node.",
        INVERTED_LATENT_TOOLTIP,
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                **photo_inputs("An SD1.x, SD2.x or SDXL model", "The CLIP of the same checkpoint."),
                "mode": (list(MODES), {"default": "null-text",
                                       "tooltip": "null-text: optimise the negative embedding per step (the paper; "
                                                  "slowest, best). negative-prompt: the prompt as negative (fast). "
                                                  "direct: steer the source row exactly (fast, exact)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Sampling steps; the sampler must use the same number."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Guidance scale the null-text optimisation targets; use the same in "
                                             "the sampler."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {
                    "default": "ddim_uniform",
                    "tooltip": "Scheduler of the sampler that will sample the inverted latent (ddim_uniform "
                               "matches the paper's DDIM timesteps)."}),
            },
            "optional": {
                "positive": ("CONDITIONING", {"tooltip": "Optional conditioning to invert with instead of "
                                                         "encoding the prompt (keep the prompt text matching)."}),
                "inner_steps": ("INT", {"default": NullTextSettings.iterations, "min": 1, "max": 1000,
                                        "tooltip": "null-text only: updates of the negative embedding per sampling "
                                                   "step, each step stopping early once it is retraced (the paper: "
                                                   "10). Raise it when the reconstruction is not faithful: on the "
                                                   "demo model 50 reach 51 dB where 10 reach 34."}),
            },
        }

    def invert(self, model, clip, prompt: str, latent: dict, mode: str, steps: int, cfg: float, scheduler: str,
               positive: list | None = None, inner_steps: int = NullTextSettings.iterations) -> tuple:
        _check_unet_inputs(model, mode, cfg)
        check_inversion_inputs(model, latent, "NullTextInvert")
        # The prompt becomes the edit's source: refuse what the edit would refuse, before minutes of inversion.
        require_words(tokenize_prompt(clip, prompt), "'prompt' input of Invert Image",
                      "describe the photo in it (it is the source prompt of the edit)")
        samples = latent["samples"]
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
        positive = conditioning(clip, prompt, model, positive, "Invert Image")
        negative = conditioning(clip, "", model)
        progress = StepProgress(steps * (2 if mode == "null-text" else 1), f"{mode} inversion")
        sampler = InversionSampler(mode, cfg, progress, NullTextSettings(iterations=inner_steps))
        worker = differentiable(model) if mode == "null-text" else model
        with torch.inference_mode(False), torch.enable_grad():
            try:
                inverted = comfy.samplers.sample(
                    worker, torch.zeros_like(samples).clone(), positive, negative, cfg,
                    model.load_device, sampler, sigmas, latent_image=samples.clone())
            finally:
                progress.close()
                if worker is not model:  # the shared UNet gets its own parameters back, even after an interrupt
                    worker.eject_model()
        comfy.model_management.soft_empty_cache()
        inverted = inverted.detach().cpu()
        inversion = Inversion(mode, prompt, positive[0][0].detach().clone(), cfg, scheduler, tuple(sigmas.tolist()),
                              inverted, sampler.uncond, sampler.uncond_y, sampler.targets)
        return InversionPatch(inversion).install(model), {"samples": inverted}


def conditioning(clip, prompt: str, model, positive: list | None = None, node: str = "Invert Image") -> list:
    """The prompt's encoding as CLIPTextEncode gives it, or the node's ``positive`` input checked to be one
    prompt's encoding (the edit's source row: one entry of one row, of this model's text width); copied out of
    inference mode, so autograd may read it."""
    if positive is None:
        cond, extra = encode_prompt(clip, prompt, model)
        positive = [[cond, extra]]
    elif len(positive) != 1 or positive[0][0].shape[0] != 1:
        rows = sum(cond.shape[0] for cond, _ in positive)
        raise PromptToPromptError(
            f"The positive input of {node} holds {len(positive)} conditioning(s) of {rows} row(s), but the "
            "image is inverted with one prompt's encoding: connect one CLIP Text Encode of the prompt (no "
            "Conditioning Combine, no batch), or leave positive unconnected.")
    else:
        check_text_width(positive[0][0], model, f"The positive input of {node} is")
    return [[c.clone(), {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in d.items()}]
            for c, d in positive]


def check_inversion_inputs(model, latent: dict, node: str) -> None:
    """An inversion comes before the edit nodes, and inverts one image latent of this model's."""
    if model.get_attachment(EDIT_KEY) is not None:
        raise PromptToPromptError(
            f"{node} must come before the edit nodes: connect the checkpoint's MODEL to {node} and "
            f"{node}'s MODEL to the edit node.")
    check_image_latent(model, latent["samples"])
    if latent["samples"].shape[0] != 1:
        raise PromptToPromptError(
            f"{node} inverts one image, but the latent holds {latent['samples'].shape[0]}. Encode a single "
            "image (or pick one with LatentFromBatch).")


def _check_unet_inputs(model, mode: str, cfg: float) -> None:
    try:
        transformer_levels(model)
    except PromptToPromptError as error:
        raise PromptToPromptError(
            f"Invert Image (null-text) inverts photos for UNet models: {error} Its inversions need classifier-free "
            "guidance with an unconditional branch, which guidance-distilled models (Flux) do not have: invert "
            "photos for Flux and SD3 with Prompt-to-Prompt Invert Image (flow).") from None
    if mode == "null-text" and cfg <= 1.0:
        raise PromptToPromptError("Null-text inversion optimises the unconditional branch, so it needs cfg above 1.")


NODE_CLASS_MAPPINGS = {"NullTextInvert": NullTextInvert}
NODE_DISPLAY_NAME_MAPPINGS = {"NullTextInvert": "Prompt-to-Prompt Invert Image (null-text)"}
