"""A real-image inversion as the MODEL carries it (Inversion) and what it does while sampling (InversionPatch):
per-step negative embeddings, source-row targets or the flow's inverted noise, and the checks that the sampler
replays the inversion. Made by NullTextInvert and FlowInvert (nodes/); their samplers are null_text.py's and
flow_sampling.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.model_management
import comfy.patcher_extension
import comfy.utils
import torch
from tqdm.auto import tqdm

from ..p2p_core.errors import PromptToPromptError
from .patch import INVERSION_KEY as KEY
from .patch import attach
from .sampler_run import sampler_name, sampler_step
from .wiring import same_rows

GUIDANCE_FUNCTIONS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")
"""ModelPatcher options through which nodes change classifier-free guidance."""
RETRACING_SAMPLERS = {"euler": "euler", "rf-solver": "rf_solver"}
"""The sampler that retraces each inversion (null-text's and the UNet modes' DDIM inversion: euler, which ComfyUI's
ddim sampler is too); the flow modes are FlowInvert's."""


@dataclass(frozen=True)
class Inversion:
    """What an inverted MODEL needs at every sampling step, and what it checks the sampler against."""

    mode: str
    prompt: str
    positive: torch.Tensor
    """The conditioning the image was inverted with ([1, tokens, width])."""
    cfg: float
    scheduler: str
    sigmas: tuple[float, ...]
    latent: torch.Tensor
    uncond: tuple[torch.Tensor, ...] = ()
    uncond_y: torch.Tensor | None = None
    targets: tuple[torch.Tensor, ...] = ()
    noise: torch.Tensor | None = None
    """Flow inversions: the inverted latent in the model's own space, which sampling starts from as its noise (a
    flow sampler scales the latent it is given by 1 - sigma, which is 0 at sigma 1)."""
    node: str = "NullTextInvert"

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def check_latent(self, samples: torch.Tensor) -> None:
        """Refuse a latent whose rows are not the inverted noise: anything else samples another picture."""
        if tuple(samples.shape[1:]) != tuple(self.latent.shape[1:]):
            raise PromptToPromptError(
                f"The latent is {tuple(samples.shape[-2:])} but {self.node} inverted one of "
                f"{tuple(self.latent.shape[-2:])}; connect {self.node}'s LATENT (through the edit node) to the "
                "sampler.")
        reference = self.latent.to(samples).expand_as(samples)
        if not torch.allclose(samples, reference, rtol=1e-4, atol=1e-4 * max(1.0, float(reference.abs().max()))):
            raise PromptToPromptError(
                f"The latent is not the one {self.node} inverted, so sampling would not start from the photo. "
                f"Connect {self.node}'s LATENT output to the edit node's latent input and the edit node's "
                f"LATENT to the sampler (without an edit node, {self.node}'s LATENT to the sampler).")

    def __deepcopy__(self, memo: dict) -> Inversion:
        return self


class InversionPatch:
    """Per-step negative embeddings (null-text, negative-prompt) or source-row targets (direct)."""

    def __init__(self, inversion: Inversion) -> None:
        self.inversion = inversion

    def __deepcopy__(self, memo: dict) -> InversionPatch:
        return self

    def install(self, model):
        wrappers = comfy.patcher_extension.WrappersMP
        return attach(model.clone(), KEY, self.inversion,
                      {wrappers.APPLY_MODEL: self.apply_model, wrappers.OUTER_SAMPLE: self.outer_sample})

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """The sampler must replay the inversion: same schedule, no added noise, an euler/ddim step, the same
        guidance for null-text, and the conditioning the image was inverted with as the first positive row."""
        inv, guider = self.inversion, executor.class_obj
        if set(guider.conds) - {"positive", "negative"}:
            raise PromptToPromptError(
                f"An inverted image is sampled back with the guidance it was inverted with, a positive and a "
                f"negative prompt, but {type(guider).__name__} also evaluates "
                f"{', '.join(sorted(set(guider.conds) - {'positive', 'negative'}))}. Sample it with "
                "KSamplerAdvanced, or SamplerCustomAdvanced with CFGGuider.")
        changed = [name for name in GUIDANCE_FUNCTIONS if guider.model_options.get(name)]
        if inv.mode != "direct" and changed:
            raise PromptToPromptError(
                f"The {inv.mode} inversion is replayed by plain classifier-free guidance, but another node changes "
                f"this model's guidance ({', '.join(changed)}: RescaleCFG, PerturbedAttentionGuidance, "
                "SelfAttentionGuidance and the like), which reconstructs the photo worse. Remove that node from "
                f"the model sampled after {inv.node}"
                + (", or use the 'direct' mode, which any guidance replays." if inv.node == "NullTextInvert" else "."))
        if inv.mode == "null-text" and abs(guider.cfg - inv.cfg) > 1e-6:
            raise PromptToPromptError(
                f"NullTextInvert optimised the image's null-text embeddings for cfg {inv.cfg:g}, but the sampler runs "
                f"cfg {guider.cfg:g}, which reconstructs the photo worse. Set the sampler's cfg to {inv.cfg:g}.")
        positive = [entry.get("cross_attn") for entry in guider.conds.get("positive", [])]
        if not positive or positive[0] is None or not same_rows(positive[0][:1], inv.positive):
            raise PromptToPromptError(
                f"The sampler's positive conditioning does not start with the prompt the image was inverted with "
                f"('{inv.prompt}'). Connect the edit node's positive output (or CLIP Text Encode of that prompt) to "
                "the sampler.")
        schedule = sigmas.tolist()
        if len(schedule) != len(inv.sigmas) or not torch.allclose(torch.tensor(schedule), torch.tensor(inv.sigmas),
                                                                    rtol=1e-4, atol=1e-6):
            raise PromptToPromptError(
                f"{inv.node} inverted the image for {inv.steps} steps of the '{inv.scheduler}' scheduler, but "
                f"the sampler runs {len(schedule) - 1} steps of another schedule. Set the sampler to steps "
                f"{inv.steps}, scheduler {inv.scheduler}, denoise 1.0 (KSamplerAdvanced: start_at_step 0, "
                f"end_at_step {inv.steps} or more).")
        if bool(noise.any()):
            raise PromptToPromptError(
                "The sampler adds noise to the inverted latent. Sample it with add_noise disabled: KSamplerAdvanced "
                "with add_noise 'disable', or SamplerCustomAdvanced with DisableNoise.")
        inv.check_latent(latent_image)
        retracing = RETRACING_SAMPLERS.get(inv.mode, "euler")
        if sampler_name(sampler) != retracing:
            named = ("the ddim or euler sampler" if retracing == "euler" else
                     "the RF-Solver sampler (SamplerCustomAdvanced with Prompt-to-Prompt RF-Solver Sampler)")
            raise PromptToPromptError(
                f"An image inverted in {inv.mode} mode must be sampled with {named}, which the inversion retraces; "
                f"got '{sampler_name(sampler) or type(sampler).__name__}'.")
        if inv.noise is not None:
            noise = inv.noise.to(latent_image).expand_as(latent_image).clone()
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                    transformer_options={}, **kwargs):
        inv = self.inversion
        step = sampler_step(float(t[0]), transformer_options)
        chunks = transformer_options["cond_or_uncond"]
        rows = x.shape[0] // len(chunks)
        negatives = [slice(c * rows, (c + 1) * rows) for c, kind in enumerate(chunks) if kind == 1]
        if inv.uncond and negatives:
            context = inv.uncond[min(step, len(inv.uncond) - 1)]
            # Both to a common length, tiled as ComfyUI pads prompts of several chunks (repeated keys and values
            # leave attention unchanged): a negative-prompt inversion's context is the source prompt, longer than
            # a negative that ComfyUI runs alone (more than 4 times as long, or memory is short).
            length = math.lcm(c_crossattn.shape[1], context.shape[1])
            c_crossattn = c_crossattn.repeat(1, length // c_crossattn.shape[1], 1)
            context = context.repeat(1, length // context.shape[1], 1).to(c_crossattn)
            for rows_of in negatives:
                c_crossattn[rows_of] = context
            if inv.uncond_y is not None and "y" in kwargs:
                y = kwargs["y"].clone()
                for rows_of in negatives:
                    y[rows_of] = inv.uncond_y.to(y)
                kwargs["y"] = y
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if inv.targets:
            out = out.clone()
            target = inv.targets[step].to(out)
            for c in range(len(chunks)):
                out[c * rows] = target[0]
        return out


class StepProgress:
    """An inversion's steps on its node (ComfyUI's progress bar) and in the console (tqdm, as ComfyUI's samplers
    show theirs: an inversion takes minutes); each tick also stops a run the user interrupted."""

    def __init__(self, total: int, label: str) -> None:
        self.bar, self.console = comfy.utils.ProgressBar(total), tqdm(total=total, desc=label)

    def __call__(self, *_) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)
        self.console.update(1)

    def close(self) -> None:
        self.console.close()
