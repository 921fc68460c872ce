"""The UNet inversions' sampler: DDIM inversion, then null-text optimisation (or the negative-prompt and direct
modes' per-step values), run where ComfyUI runs a sampler, so conditioning, SDXL's pooled inputs and model patches
apply as when sampling; and what lets autograd through ComfyUI's inference-mode weights meanwhile.
"""

from __future__ import annotations

import contextlib

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import torch

from ..p2p_core.inversion import NullTextSettings, ddim_invert, direct_targets, null_text_optimise
from .inversion import KEY, StepProgress


class InversionSampler(comfy.samplers.Sampler):
    """Runs the inversion where ComfyUI would run a sampler, with the model loaded and the conds processed."""

    def __init__(self, mode: str, cfg: float, progress: StepProgress, settings: NullTextSettings) -> None:
        self.mode, self.cfg, self.progress, self.settings = mode, cfg, progress, settings
        self.uncond: tuple[torch.Tensor, ...] = ()
        self.uncond_y: torch.Tensor | None = None
        self.targets: tuple[torch.Tensor, ...] = ()

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        inner, options = model_wrap.inner_model, extra_args["model_options"]
        positive, negative = model_wrap.conds["positive"], model_wrap.conds["negative"]
        schedule = sigmas.tolist()

        def denoise(entries, x, sigma):
            timestep = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            return comfy.samplers.calc_cond_batch(inner, [entries], x, timestep, options)[0]

        def with_context(entries, context):
            return [{**e, "model_conds": {**e["model_conds"], "c_crossattn": comfy.conds.CONDCrossAttn(context)}}
                    for e in entries]

        def cond(x, sigma):
            return denoise(positive, x, sigma)

        def uncond(x, sigma, embedding):
            return denoise(with_context(negative, embedding), x, sigma)

        with torch.no_grad():
            pivots = ddim_invert(cond, latent_image.clone(), schedule, on_step=self.progress)
        if self.mode == "null-text":
            self.uncond = tuple(null_text_optimise(
                cond, uncond, pivots, schedule, self.cfg, _model_cond(negative, "c_crossattn").clone(),
                self.settings, on_step=self.progress, **half_precision(inner, cond, uncond),
                check=comfy.model_management.throw_exception_if_processing_interrupted))
            self.uncond_y = _model_cond(negative, "y")
        elif self.mode == "negative-prompt":
            self.uncond = (_model_cond(positive, "c_crossattn").clone(),)
            self.uncond_y = _model_cond(positive, "y")
        else:
            self.targets = tuple(t.detach() for t in direct_targets(pivots, schedule))
        return pivots[0].detach()


FP16_LOSS_SCALE = 2.0 ** 16
"""Null-text's loss scale for a model running in fp16 (see p2p_core.inversion.null_text_optimise)."""


def half_precision(model, cond, uncond) -> dict:
    """What null-text optimisation needs to be right with `model` (a ComfyUI BaseModel) in its dtype.

    fp16: a loss scale (the gradient would underflow). bf16: full-precision denoisers for the loss values: in
    bf16 (8 mantissa bits) a prediction is rounded by about 0.4 %, more than the residual null-text minimises
    (the guided step's distance to the next pivot), so the gradient of a bf16 pass points nowhere in particular
    (cosine about 0.7 to the fp32 gradient on the test models); with full-precision values it is the fp32
    gradient (0.999), for one full-precision forward pass per iteration and no full-precision copy of the weights.
    """
    dtype = model.manual_cast_dtype or model.get_dtype()
    if dtype == torch.float16:
        return {"loss_scale": FP16_LOSS_SCALE}
    if dtype != torch.bfloat16:
        return {}

    def exact_cond(x, sigma):
        with full_precision(model):
            return cond(x, sigma)

    def exact_uncond(x, sigma, embedding):
        with full_precision(model):
            return uncond(x, sigma, embedding)
    return {"exact": (exact_cond, exact_uncond)}


@contextlib.contextmanager
def full_precision(model):
    """Run `model` (a ComfyUI BaseModel) in fp32 meanwhile: its layers cast their weights to fp32 as they run
    (ComfyUI's own manual-cast path, as in low-VRAM mode), so no fp32 copy of the UNet is kept."""
    layers = [m for m in model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]
    own = [m.__dict__.get("comfy_cast_weights") for m in layers]
    cast_dtype = model.manual_cast_dtype
    try:
        model.manual_cast_dtype = torch.float32
        for layer in layers:
            layer.comfy_cast_weights = True
        yield
    finally:
        model.manual_cast_dtype = cast_dtype
        for layer, value in zip(layers, own):
            if value is None:
                del layer.comfy_cast_weights
            else:
                layer.comfy_cast_weights = value


def _model_cond(entries: list[dict], name: str) -> torch.Tensor | None:
    cond = entries[0]["model_conds"].get(name)
    return None if cond is None else cond.cond.detach().clone()


class AutogradWeights:
    """While the null-text worker is loaded, its UNet's weights are replaced by views of the same memory
    that autograd may save and never differentiates.

    ComfyUI loads checkpoints in inference mode, and autograd refuses to save inference tensors; weights
    built outside it may still ask for gradients, which would make every backward pass compute and keep a
    gradient per weight. A weight wrapper would copy every weight on every forward: a quarter of a
    null-text step on CPU, and a second copy of the UNet alive through each backward pass (fp32 SDXL then
    needs more than 24 GiB). A view made outside inference mode costs nothing. ComfyUI injects it once the
    clone is loaded (LoRA and other weight patches applied) and ejects it before it moves or unpatches any
    weight, which puts the original parameters back.
    """

    def __init__(self) -> None:
        self.originals: dict[str, torch.nn.Parameter] = {}

    def inject(self, patcher) -> None:
        unet = patcher.model.diffusion_model
        with torch.inference_mode(False):
            for name, parameter in list(unet.named_parameters()):
                if parameter.is_inference() or parameter.requires_grad:
                    self.originals[name] = parameter
                    comfy.utils.set_attr_param(unet, name, _ordinary_view(parameter))

    def eject(self, patcher) -> None:
        unet = patcher.model.diffusion_model
        for name, parameter in self.originals.items():
            comfy.utils.set_attr(unet, name, parameter)
        self.originals.clear()


def _ordinary_view(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor on `tensor`'s memory, outside autograd's history and not an inference tensor (call outside
    inference mode)."""
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


def differentiable(model):
    """A clone of `model` through which backward can pass (see AutogradWeights)."""
    clone = model.clone()
    weights = AutogradWeights()
    clone.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(weights.inject, weights.eject)])
    return clone
