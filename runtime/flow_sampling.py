"""The flow inversions' sampler (Euler, RF-Solver; p2p_core/flow.py), run where ComfyUI runs a sampler so it reads
the velocity the sampler will read; RF-Solver-2 as a k-diffusion sampler function, which samples it back; and
FlowEdit as one, which edits a photo's latent without inverting it."""

from __future__ import annotations

import comfy.samplers
import torch
from tqdm.auto import trange

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.flow import flow_invert, flowedit_step, rf_solver_step, velocity
from .inversion import StepProgress


class FlowInversionSampler(comfy.samplers.Sampler):
    """Runs a flow inversion where ComfyUI would run a sampler, with the model loaded and the conds processed."""

    def __init__(self, method: str, progress: StepProgress) -> None:
        self.method, self.progress = method, progress
        self.noise: torch.Tensor | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ones = latent_image.new_ones([latent_image.shape[0]])

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:  # the guided x0 prediction, as samplers read it
            return model_wrap(x, sigma * ones, **extra_args)

        lowest = float(model_wrap.inner_model.model_sampling.sigma_min)
        with torch.no_grad():
            self.noise = flow_invert(velocity(denoise, lowest), latent_image, sigmas.tolist(), self.method,
                                     on_step=self.progress)
        return self.noise


@torch.no_grad()
def sample_rf_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """RF-Solver-2 (p2p_core.flow.rf_solver_step) as a k-diffusion sampler function, for ComfyUI's KSAMPLER."""
    extra_args = {} if extra_args is None else extra_args
    ones, first = x.new_ones([x.shape[0]]), []

    def denoise(latent: torch.Tensor, sigma: float) -> torch.Tensor:
        denoised = model(latent, sigma * ones, **extra_args)
        first.append(denoised)
        return denoised

    v = velocity(denoise, 0.0)  # sampling never reads sigma 0: its last step's midpoint is half the last sigma
    for i in trange(len(sigmas) - 1, disable=disable):
        first.clear()
        sigma = float(sigmas[i])
        x = rf_solver_step(v, x, sigma, float(sigmas[i + 1]))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": first[0]})
    return x


@torch.no_grad()
def sample_flowedit(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """FlowEdit (p2p_core.flow.flowedit_step) as a k-diffusion sampler function: the rows of an edit node's batch
    (source prompt first) start as the photo's latent, ComfyUI's ``latent_image`` (whatever noise the sampler
    was given is not read), and a fresh noise draw per step, seeded by the sampler's seed, is shared by every row.
    The first sigma sets how much may change (a schedule with denoise below 1 starts lower: FlowEdit's n_max).
    The source is put on the model's own forward process, so the step is FlowEdit on flow models and its
    k-diffusion analogue (x + sigma noise) on the others."""
    extra_args = {} if extra_args is None else extra_args
    source = model.latent_image
    photo = source is not None and bool(torch.count_nonzero(source))
    if x.shape[0] < 2 or not photo:
        got = (f"{x.shape[0]} row(s), not an edit's source and edited rows" if x.shape[0] < 2
               else "an empty latent, not a photo's")
        raise PromptToPromptError(
            "The FlowEdit sampler edits a picture: give it a Prompt-to-Prompt edit node's positive (the source "
            "prompt, then the edited one) and its LATENT made from the photo (VAE Encode into the edit node's "
            f"latent input). It got {got}.")
    source = source[:1].to(x)
    rows = source.expand_as(x).clone()
    ones = x.new_ones([x.shape[0]])
    v = velocity(lambda latent, sigma: model(latent, sigma * ones, **extra_args), 0.0)
    forward = model.inner_model.inner_model.model_sampling.noise_scaling  # a flow's (1 - sigma) x + sigma noise
    generator = torch.Generator().manual_seed(int(extra_args.get("seed") or 0))
    for i in trange(len(sigmas) - 1, disable=disable):
        noise = torch.randn(source.shape, generator=generator).to(x)
        noisy = forward(sigmas[i:i + 1].to(x), noise, source)
        rows = flowedit_step(v, rows, source, noisy, float(sigmas[i]), float(sigmas[i + 1]))
        if callback is not None:
            callback({"x": rows, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": rows})
    return rows
