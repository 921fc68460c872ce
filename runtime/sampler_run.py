"""What a ComfyUI sampler run is: its sampler's name, its place in the whole trajectory, and its step noise.

The trajectory search itself is p2p_core's (`trajectory.locate_run`); here it is given ComfyUI's schedulers, the
way KSampler computes its sigmas (samplers that discard the penultimate sigma), and a cache, since a sampler run
of the same schedule always lies in the same place.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections import OrderedDict
from typing import Callable

import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.samplers
import torch

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.trajectory import Trajectory, continued, locate_run, step_index

CORRECTOR_SAMPLERS = {"heun", "heunpp2", "exp_heun_2_x0", "exp_heun_2_x0_sde"}
"""Samplers whose correctors evaluate the model at later schedule sigmas (see trajectory.StepClock)."""
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "unipc", "unipc_bh2"}
"""KSampler computes these samplers' sigmas for one step more and drops the penultimate one."""
SCHEDULER_ORDER = ("normal", "karras", "simple", "sgm_uniform", "exponential", "ddim_uniform", "beta",
                   "linear_quadratic", "kl_optimal")
"""ComfyUI's schedulers, the common ones first (the search stops at the first that holds the run)."""

_FOUND: OrderedDict[tuple, Trajectory | None] = OrderedDict()
_CACHE_SIZE = 64


BATCH_COUPLED = {"dpm_adaptive": "chooses its step sizes from an error estimate taken over the whole batch"}
"""Samplers whose steps depend on every row of the batch: an edit's rows would change the source row's steps."""


def sampler_name(sampler) -> str:
    """The k-diffusion name of a ComfyUI sampler object ('euler' for both euler and ddim; 'dpm_adaptive' for
    the wrapper ComfyUI puts around it)."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    return name.removeprefix("sample_").removesuffix("_function")


PACK_SAMPLERS = frozenset({"rf_solver", "flowedit"})
"""The pack's own samplers (RF-Solver adds no step noise; FlowEdit gives every row the same draw)."""


@functools.cache
def _host_samplers() -> frozenset[str]:
    return frozenset(sampler_name(comfy.samplers.sampler_object(name)) for name in comfy.samplers.SAMPLER_NAMES)


def check_edit_sampler(sampler) -> None:
    """Refuse a sampler that couples the rows of an edit; warn about one that is not ComfyUI's own and takes no
    noise sampler, since its step noise, if it draws any, cannot be shared between the rows."""
    name = sampler_name(sampler)
    if name in BATCH_COUPLED:
        raise PromptToPromptError(
            f"The {name} sampler {BATCH_COUPLED[name]}, so the edited rows would change the source row's steps and "
            "the source would not be the picture its prompt gives alone. Choose a sampler with a fixed schedule "
            "(euler, dpmpp_2m, an ancestral or SDE sampler, ...).")
    function = getattr(sampler, "sampler_function", None)
    takes_noise = function is not None and "noise_sampler" in inspect.signature(function).parameters
    if name not in _host_samplers() | PACK_SAMPLERS and not takes_noise:
        logging.warning(
            "Prompt-to-Prompt: the sampler %r is not one of ComfyUI's and takes no noise sampler; if it adds noise "
            "at each step, the rows of the edit get different noise and the edited picture drifts from the "
            "source's composition. Deterministic samplers are unaffected.", name or type(sampler).__name__)


def named_scheduler() -> str | None:
    """The scheduler named by the sampler node running now, when it samples through comfy.samplers.KSampler (the
    KSampler and KSamplerAdvanced nodes do); None for nodes that are handed sigmas (SamplerCustomAdvanced).

    The guider is never told the scheduler, so the KSampler object is looked up on the call stack, read-only: it
    tells apart schedules that hold the same sigmas (sgm_uniform(N) begins as normal(N + 1) does).
    """
    frame = inspect.currentframe()
    try:
        for _ in range(48):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, comfy.samplers.KSampler):
                return getattr(owner, "scheduler", None)
        return None
    finally:
        del frame


def whole_trajectory(model_sampling, sampler, sigmas: torch.Tensor, continues: tuple[Trajectory, ...] = (),
                     named: str | None = None) -> Trajectory:
    """The whole trajectory a sampler run with `sigmas` belongs to, or a clear error when it cannot be known.

    `continues`: trajectories of earlier runs that stopped partway, which this run may continue (it is then placed
    where the earlier run stopped, even where its sigmas alone are ambiguous, as for the final step alone).
    `named`: the scheduler the sampler node names, if known (see named_scheduler).
    """
    run = [float(s) for s in sigmas.tolist()]
    if not all(math.isfinite(s) for s in run):
        raise PromptToPromptError(
            f"The sampler's {len(run) - 1}-step schedule holds sigmas that are not numbers ({run[0]:.4g} ... "
            f"{run[-1]:.4g}): ComfyUI's scheduler gave no usable schedule for this step count, and sampling it "
            "would give a picture of NaN. Choose another step count or scheduler.")
    previous = continued(run, continues)
    if previous is not None:
        return previous
    discard = sampler_name(sampler) in DISCARD_PENULTIMATE
    names = [n for n in SCHEDULER_ORDER if n in comfy.samplers.SCHEDULER_NAMES]
    names += [n for n in comfy.samplers.SCHEDULER_NAMES if n not in names]
    key = (float(model_sampling.sigma_min), float(model_sampling.sigma_max), discard, named, tuple(run))
    if key not in _FOUND:
        def schedules(name: str, steps: int) -> list[float]:
            if not discard:
                return comfy.samplers.calculate_sigmas(model_sampling, name, steps).tolist()
            sigmas = comfy.samplers.calculate_sigmas(model_sampling, name, steps + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]]).tolist()

        _FOUND[key] = locate_run(run, schedules, names, float(model_sampling.sigma_max), named=named)
        while len(_FOUND) > _CACHE_SIZE:
            _FOUND.popitem(last=False)
    found = _FOUND[key]
    if found is None:
        raise PromptToPromptError(
            f"Prompt-to-Prompt cannot tell which part of a whole schedule this sampler runs ({len(run) - 1} steps "
            f"from sigma {run[0]:.4g} to {run[-1]:.4g}): its step windows count the steps of the whole trajectory "
            "from pure noise, and these sigmas are neither a whole schedule nor part of one of ComfyUI's "
            "schedulers. Run the whole schedule in one sampler, or split one of ComfyUI's schedulers "
            "(KSamplerAdvanced start/end steps, or BasicScheduler with SplitSigmas).")
    return found


def sampler_step(sigma: float, transformer_options: dict) -> int:
    """The step of a model call at `sigma` within the running sampler's own schedule."""
    schedule = transformer_options.get("sample_sigmas")
    if schedule is None:
        raise PromptToPromptError("Prompt-to-Prompt models must be run by a ComfyUI sampler node.")
    return step_index(sigma, schedule.tolist())


BROWNIAN_TREE = {"dpmpp_sde": True, "dpmpp_2m_sde": True, "dpmpp_2m_sde_heun": True, "dpmpp_3m_sde": True,
                 "dpmpp_sde_gpu": False, "dpmpp_2m_sde_gpu": False, "dpmpp_2m_sde_heun_gpu": False,
                 "dpmpp_3m_sde_gpu": False}
"""The SDE samplers that draw their step noise from a Brownian tree by default, and whether it lives on the CPU
(their '_gpu' variants put it on the latent's device)."""


def shared_noise_sampler(sampler, noise: torch.Tensor, sigmas: torch.Tensor,
                         seed: int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A step-noise sampler that gives every row of the batch the same noise, or None for a sampler that adds
    none.

    Ancestral and SDE samplers draw fresh noise for the whole batch at every step, so the rows of an edit would
    drift apart. This one draws it as the sampler itself would for a batch of one with the same seed (ComfyUI's
    default generator, or the Brownian tree of the SDE samplers) and gives it to every row: the source row then
    samples exactly as the source prompt alone does. A noise sampler set by a sampler node's own options is
    kept, and its first row shared.
    """
    function = getattr(sampler, "sampler_function", None)
    if function is None or "noise_sampler" not in inspect.signature(function).parameters:
        return None
    given = getattr(sampler, "extra_options", {}).get("noise_sampler")
    one = noise[:1]
    name = sampler_name(sampler)
    if given is not None:
        def base(sigma, sigma_next):
            return given(sigma, sigma_next)[:1]
    elif name in BROWNIAN_TREE:
        base = k_diffusion_sampling.BrownianTreeNoiseSampler(one, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed,
                                                              cpu=BROWNIAN_TREE[name])
    else:
        base = k_diffusion_sampling.default_noise_sampler(one, seed=seed)
    rows = noise.shape[0]
    return lambda sigma, sigma_next: base(sigma, sigma_next).repeat(rows, *([1] * (noise.dim() - 1)))
