"""FlowInvert: a photo's latent to the noise a flow model (Flux, SD3) samples back into it, to edit it; the
RF-Solver sampler that samples it back to second order; and the FlowEdit sampler, which edits a photo without
inverting it.

The inversion runs inside ComfyUI's sampling (a custom Sampler driven by the guider), so it reads the velocity the
sampler will read: the same conditioning (FluxGuidance included), cfg and model patches. The MODEL it returns
carries the inversion (`runtime/inversion.py`), which the edit nodes take as their source and which checks
the sampler that replays it: the same schedule and sampler, no added noise.
"""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import torch

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.flow import FLOW_METHODS
from ..p2p_core.plan import require_words
from ..runtime.families import family
from ..runtime.flow_sampling import FlowInversionSampler, sample_flowedit, sample_rf_solver
from ..runtime.inversion import Inversion, InversionPatch, StepProgress
from ..runtime.text import tokenize_prompt
from .edit_nodes import CATEGORY
from .inversion_nodes import INVERTED_LATENT_TOOLTIP, InvertNode, check_inversion_inputs, conditioning, photo_inputs


class RFSolverSampler:
    """The sampler that retraces FlowInvert's rf-solver inversion."""

    SEARCH_ALIASES = ["rf-solver", "rf solver", "flow sampler", "midpoint sampler", "flux inversion sampler"]
    DESCRIPTION = ("RF-Solver-2 (Wang et al. 2024): a second-order sampler for flow models at two model calls a step. "
                   "Connect it to SamplerCustomAdvanced's sampler input to sample an image inverted by Invert Image "
                   "(flow) in rf-solver mode back; it samples any model.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The RF-Solver sampler, for SamplerCustomAdvanced (or SamplerCustom).",)
    FUNCTION = "sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def sampler(self) -> tuple:
        return (comfy.samplers.KSAMPLER(sample_rf_solver),)


class FlowEditSampler:
    """FlowEdit: a photo edited by a flow model without inverting it."""

    SEARCH_ALIASES = ["flowedit", "flow edit", "inversion-free", "edit photo", "flux edit", "sd3 edit", "p2p"]
    DESCRIPTION = ("FlowEdit (Kulikov et al. 2024): edits a photo on a flow model (Flux, SD3) without inverting it. "
                   "Encode the photo (VAE Encode) into a Prompt-to-Prompt edit node's latent input, with the source "
                   "prompt describing the photo and the edited prompt, and sample the node's model, positive and "
                   "latent with SamplerCustom and this sampler. The scheduler's denoise sets how much may change "
                   "(FlowEdit's n_max: 24 of 28 steps is denoise 0.86); the seed draws its noise. Set the edit "
                   "node's steps to 0 for FlowEdit alone, or keep them to add the source's attention.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The FlowEdit sampler, for SamplerCustom or SamplerCustomAdvanced with an edit node's "
                       "outputs.",)
    FUNCTION = "sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def sampler(self) -> tuple:
        return (comfy.samplers.KSAMPLER(sample_flowedit),)


class FlowInvert(InvertNode):
    """Invert a photo for a flow model (Flux, SD3) so Prompt-to-Prompt can edit it."""

    SEARCH_ALIASES = ["inversion", "invert", "invert image", "flow inversion", "flux inversion", "rf-solver",
                      "rf inversion", "real image", "edit photo", "p2p", "prompt to prompt"]
    DESCRIPTION = ("Inverts an image latent (VAE Encode) into the noise a flow model (Flux, SD3) samples back into "
                   "the image under the source prompt, for editing real photos: connect its MODEL and LATENT to an "
                   "edit node, then sample with add_noise disabled, the same steps and scheduler, and the retracing "
                   "sampler: euler (KSamplerAdvanced) for euler, the RF-Solver sampler (SamplerCustomAdvanced) for "
                   "rf-solver, which reconstructs better at twice the model calls.")
    OUTPUT_TOOLTIPS = (
        "The model with the inversion installed (it checks that the sampler replays it). Connect it to the edit "
        "node.",
        INVERTED_LATENT_TOOLTIP,
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                **photo_inputs("A Flux.1 or SD3/SD3.5 model", "The CLIP of the same model (Flux: CLIP-L and T5)."),
                "method": (list(FLOW_METHODS), {
                    "default": "rf-solver",
                    "tooltip": "rf-solver: RF-Solver-2, second order (two model calls a step; sample back with the "
                               "RF-Solver sampler). euler: the Euler sampler run upwards (one call a step; sample "
                               "back with euler), which reconstructs worse."}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 1000,
                                  "tooltip": "Sampling steps; the sampler must use the same number."}),
                "scheduler": (comfy.samplers.SCHEDULER_NAMES, {
                    "default": "simple", "tooltip": "Scheduler of the sampler that will sample the inverted latent."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Guidance scale of the sampler that will sample it back (Flux: 1, with "
                                             "FluxGuidance on the positive input; SD3: the sampler's cfg)."}),
            },
            "optional": {
                "positive": ("CONDITIONING", {"tooltip": "Optional conditioning to invert with instead of "
                                                         "encoding the prompt (e.g. after FluxGuidance; keep the "
                                                         "prompt text matching)."}),
            },
        }

    def invert(self, model, clip, prompt: str, latent: dict, method: str, steps: int, scheduler: str,
               cfg: float = 1.0, positive: list | None = None) -> tuple:
        model_sampling = model.get_model_object("model_sampling")
        if not isinstance(model_sampling, comfy.model_sampling.CONST):
            raise PromptToPromptError(
                "Invert Image (flow) inverts the rectified-flow sampling of Flux and SD3, but this model samples "
                f"with {type(model_sampling).__name__}: invert photos for SD1.x/SD2.x/SDXL with Prompt-to-Prompt "
                "Invert Image (null-text).")
        check_inversion_inputs(model, latent, "FlowInvert")
        # The prompt becomes the edit's source: refuse what the edit would refuse, before the inversion runs.
        require_words(tokenize_prompt(clip, prompt, family(model).text_key), "'prompt' input of Invert Image (flow)",
                      "describe the photo in it (it is the source prompt of the edit)")
        samples = latent["samples"]
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
        positive = conditioning(clip, prompt, model, positive, "Invert Image (flow)")
        negative = conditioning(clip, "", model)
        progress = StepProgress(steps, f"{method} flow inversion")
        sampler = FlowInversionSampler(method, progress)
        try:
            inverted = comfy.samplers.sample(model, torch.zeros_like(samples), positive, negative, cfg,
                                             model.load_device, sampler, sigmas, latent_image=samples.clone())
        finally:
            progress.close()
        inverted = inverted.detach().cpu()
        inversion = Inversion(method, prompt, positive[0][0].detach().clone(), cfg, scheduler, tuple(sigmas.tolist()),
                              inverted, noise=sampler.noise.detach().cpu(), node="FlowInvert")
        return InversionPatch(inversion).install(model), {"samples": inverted}


NODE_CLASS_MAPPINGS = {"FlowInvert": FlowInvert, "RFSolverSampler": RFSolverSampler, "FlowEditSampler": FlowEditSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowInvert": "Prompt-to-Prompt Invert Image (flow)",
                              "RFSolverSampler": "Prompt-to-Prompt RF-Solver Sampler",
                              "FlowEditSampler": "Prompt-to-Prompt FlowEdit Sampler"}
