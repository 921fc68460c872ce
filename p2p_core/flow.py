"""Real images on rectified-flow models (Flux, SD3): Euler inversion, RF-Solver, and FlowEdit's inversion-free step.

Flow models sample the ODE dx/dsigma = v(x, sigma) from noise (sigma 1) to the image (sigma 0), with
x_sigma = (1 - sigma) x0 + sigma * eps. ComfyUI's models return the x0 prediction D(x, sigma) = x - sigma * v
(its CONST sampling), so v = (x - D) / sigma, which is also k-diffusion's derivative (x - D) / sigma: the same
solvers sample and invert every model ComfyUI runs.

Null-text inversion needs an unconditional branch, which guidance-distilled Flux lacks; a flow is inverted by
integrating its ODE the other way, from the image up to sigma 1, with the guidance the sampler will use:

- ``euler``: the sampler's Euler step run upwards, the velocity read on the current latent at the next (noisier)
  sigma, as DDIM inversion reads its noise (p2p_core.inversion.ddim_invert): the sigma the sampler evaluates at.
  First order: sampling back retraces it only as far as v changes over a step.
- ``rf-solver``: RF-Solver-2 (Wang et al., arXiv 2411.04746, eq. 9): the second-order Taylor step with the
  velocity's derivative taken over a half step. Written out, x + h v + h^2/2 (v_mid - v) / (h / 2) is the
  midpoint rule x + h * v(x + h/2 v, sigma + h/2); sampling back with the same step (the pack's RF-Solver
  sampler) retraces it to second order, at two model calls a step.

FlowEdit (Kulikov et al., arXiv 2412.08629) edits without inverting: ``flowedit_step``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .inversion import Denoiser

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
"""v(x, sigma): the flow's velocity (k-diffusion's derivative) at latent x and noise level sigma."""
FLOW_METHODS = ("euler", "rf-solver")


def velocity(denoise: Denoiser, lowest_sigma: float) -> Velocity:
    """v = (x - D(x, sigma)) / sigma, read at ``lowest_sigma`` where sigma is below it: at sigma 0 the x0
    prediction is x itself and says nothing of v, so the first inversion step reads the model at the lowest
    noise level it was trained on."""

    def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma = max(sigma, lowest_sigma)
        return (x - denoise(x, sigma)) / sigma

    return v


def rf_solver_step(v: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One RF-Solver-2 step from ``sigma`` to ``sigma_next``, down (sampling) or up (inversion)."""
    middle = 0.5 * (sigma + sigma_next)
    return x + (sigma_next - sigma) * v(x + (middle - sigma) * v(x, sigma), middle)


def flow_invert(v: Velocity, latent: torch.Tensor, sigmas: list[float], method: str,
                on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """The noise that sampling the descending schedule ``sigmas`` (steps + 1 values, last 0) with ``method``'s
    sampler turns back into ``latent``: the schedule walked upwards."""
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow inversion method {method!r}; expected one of {FLOW_METHODS}")
    up = sigmas[::-1]
    current = latent
    for i in range(len(up) - 1):
        sigma, sigma_next = up[i], up[i + 1]
        if method == "euler":
            current = current + (sigma_next - sigma) * v(current, sigma_next)
        else:
            current = rf_solver_step(v, current, sigma, sigma_next)
        if on_step is not None:
            on_step(i)
    return current


def flowedit_step(v: Velocity, rows: torch.Tensor, source: torch.Tensor, noisy_source: torch.Tensor, sigma: float,
                  sigma_next: float) -> torch.Tensor:
    """One FlowEdit step (Algorithm 1, one noise draw): the rows are the source image (row 0, read under the source
    prompt) and the edits (the other rows, under their prompts), all image latents, never noisy ones.

    Every row is read at ``sigma`` shifted by the offset that puts the source on the forward process,
    ``noisy_source`` (a flow's (1 - sigma) source + sigma noise); each row then moves by its velocity minus the
    source row's. The source row never moves; an edit moves only where its prompt's velocity differs from the
    source's, so what the prompts share stays the photo's, with no inversion to drift.
    """
    velocities = v(rows + (noisy_source - source), sigma)
    return rows + (sigma_next - sigma) * (velocities - velocities[:1])
