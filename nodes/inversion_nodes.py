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

import contextlib
import math
from dataclasses import dataclass

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import torch
from tqdm.auto import tqdm

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.inversion import NullTextSettings, ddim_invert, direct_targets, null_text_optimise
from ..p2p_core.plan import require_words
from .edit_nodes import CATEGORY, check_image_latent
from .patch import INVERSION_KEY as KEY
from .patch import KEY as EDIT_KEY
from .patch import attach, same_rows
from .sampler_run import sampler_name, sampler_step
from .text import check_text_width, encode_prompt, tokenize_prompt
from .unet import transformer_levels

MODES = ("null-text", "negative-prompt", "direct")
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


def _differentiable(model):
    """A clone of `model` through which backward can pass (see AutogradWeights)."""
    clone = model.clone()
    weights = AutogradWeights()
    clone.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(weights.inject, weights.eject)])
    return clone


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
        worker = _differentiable(model) if mode == "null-text" else model
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
