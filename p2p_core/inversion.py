"""Real-image inversion in ComfyUI's sigma space: DDIM inversion, null-text optimisation, direct inversion.

Latents live in k-diffusion space, x = x0 + sigma * eps, and a denoiser D(x, sigma) returns the x0
prediction, as ComfyUI's models do. ComfyUI's `ddim` sampler is Euler on this ODE (DDIM with eta 0):

    x_next = x + (sigma_next - sigma) * (x - D(x, sigma)) / sigma

Inversion walks the schedule backwards (Mokady et al., section 3.1): from the image latent, each step
evaluates the model at the *next, noisier* sigma on the current latent (scaled so the UNet sees the same
input, z = x / sqrt(1 + sigma^2)) and steps the ODE up. The resulting latents are the pivots z*_t.

Losses use diffusers' latent scale (x / sqrt(1 + sigma^2)) so the paper's learning rate and early-stop
thresholds mean what they meant there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""D(x, sigma): the x0 prediction of the model for latent x at noise level sigma."""
UncondDenoiser = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]
"""D(x, sigma, embedding): the x0 prediction under an unconditional text embedding."""


@dataclass(frozen=True)
class NullTextSettings:
    """The paper's optimisation settings (Mokady et al., section 3.2 and the official notebook)."""

    iterations: int = 10
    learning_rate: float = 1e-2
    epsilon: float = 1e-5

    def lr(self, step: int, steps: int) -> float:
        """The notebook's 1e-2 * (1 - step / 100), written for its 50 steps (it halves over the run). Runs longer
        than 50 steps stretch it over their length, so it still halves: the literal formula reaches zero at
        step 100 and goes negative after it, which Adam refuses."""
        return self.learning_rate * (1.0 - step / max(100, 2 * steps))

    def threshold(self, step: int, steps: int) -> float:
        """The notebook's early-stop threshold 1e-5 + step * 2e-5, stretched the same way beyond 50 steps."""
        return self.epsilon + 2e-5 * step * 50 / max(50, steps)


def diffusers_scale(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The latent a diffusers scheduler would hold for x at sigma (what the UNet sees)."""
    return x / math.sqrt(1.0 + sigma * sigma)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One step of ComfyUI's euler/ddim sampler."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def ddim_invert(denoise: Denoiser, latent: torch.Tensor, sigmas: list[float],
                on_step: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Pivots for a descending sampling schedule `sigmas` (steps + 1 values, last 0).

    Returns pivots[i], the latent the sampler should hold at sigmas[i]; pivots[-1] is `latent` itself (at
    the last sigma, normally 0) and pivots[0] the inverted noise to start sampling from.
    """
    up = sigmas[::-1]
    pivots = [latent]
    current = latent
    for i in range(len(up) - 1):
        sigma, sigma_next = up[i], up[i + 1]
        x_in = current * (math.sqrt(1.0 + sigma_next ** 2) / math.sqrt(1.0 + sigma ** 2))
        eps = (x_in - denoise(x_in, sigma_next)) / sigma_next
        current = current + (sigma_next - sigma) * eps
        pivots.append(current)
        if on_step is not None:
            on_step(i)
    return pivots[::-1]


def direct_targets(pivots: list[torch.Tensor], sigmas: list[float]) -> list[torch.Tensor]:
    """Denoised values that make the euler step go exactly from pivot i to pivot i + 1.

    Direct inversion (Ju et al.) adds to the source row, after each step, the difference between the pivot
    and where the step landed; giving the step this x0 prediction lands it on the pivot directly, so the
    source row retraces the inversion to float precision, whatever its guidance.
    """
    targets = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        targets.append(pivots[i] - sigma * (pivots[i + 1] - pivots[i]) / (sigma_next - sigma))
    return targets


def null_text_loss(cond_x0: torch.Tensor, uncond_x0: torch.Tensor, uncond_value: torch.Tensor | None,
                   x: torch.Tensor, sigma: float, sigma_next: float, target: torch.Tensor,
                   guidance: float) -> torch.Tensor:
    """The paper's loss, in fp32: the squared distance of the guided euler step from the next pivot (`target`, at
    the scale a diffusers latent has). Its gradient flows through `uncond_x0`; with `uncond_value` (a
    full-precision prediction, see null_text_optimise) its value is that one's."""
    uncond_x0 = uncond_x0.float()
    if uncond_value is not None:
        uncond_x0 = uncond_x0 + (uncond_value.float() - uncond_x0).detach()
    guided = uncond_x0 + guidance * (cond_x0.float() - uncond_x0)
    return torch.nn.functional.mse_loss(diffusers_scale(euler_step(x.float(), guided, sigma, sigma_next), sigma_next),
                                        target.float())


def scaled_backward(loss: torch.Tensor, embedding: torch.Tensor, loss_scale: float) -> bool:
    """Backward of `loss * loss_scale`, leaving the unscaled gradient in `embedding.grad`; False if it overflowed."""
    (loss * loss_scale).backward()
    if not bool(torch.isfinite(embedding.grad).all()):
        return False
    embedding.grad /= loss_scale
    return True


LOSS_SCALE_GROWTH_INTERVAL = 20
"""Clean backward passes after which a lowered loss scale doubles again (towards the one asked for), as
torch.amp.GradScaler regrows its scale: one overflow early in an inversion must not leave the gradient of every
later step closer to fp16's underflow."""


def null_text_optimise(cond: Denoiser, uncond: UncondDenoiser, pivots: list[torch.Tensor], sigmas: list[float],
                       guidance: float, initial: torch.Tensor, settings: NullTextSettings = NullTextSettings(),
                       on_step: Callable[[int, float], None] | None = None, loss_scale: float = 1.0,
                       exact: tuple[Denoiser, UncondDenoiser] | None = None,
                       check: Callable[[], None] = lambda: None) -> list[torch.Tensor]:
    """The unconditional embedding per step that makes guided sampling retrace the pivots.

    `uncond(x, sigma, embedding)` must be differentiable in `embedding`. For every step, starting from the
    previous step's result (warm start) and with a fresh Adam, up to `iterations` updates minimise the
    distance between the guided euler step and the next pivot; the latent then advances with the
    optimised embedding, as sampling will. The embedding and Adam are fp32 whatever the dtype of `initial`.

    Half precision: `loss_scale` multiplies the loss before backward and divides the gradient after it (the loss
    itself, and early stopping, stay unscaled). A model running in fp16 needs it: the loss is 1e-5 to 1e-3, a
    mean over the latent, so the gradient reaching the UNet's output is far below fp16's normal range and mostly
    flushes to zero. It is halved whenever the scaled gradient overflows (that pass is repeated), and doubles back
after LOSS_SCALE_GROWTH_INTERVAL clean passes, up to the scale given. `exact`,
    full-precision versions of the denoisers, give the loss its values while the gradient still flows through
    `uncond` (a model in bf16 rounds its predictions by more than the residual being minimised); the latent
    still advances with `cond` and `uncond`, the predictions sampling will make.

    `check` runs before every model evaluation and every backward pass; a host stops the optimisation by
    raising from it (ComfyUI's cancel), so a cancel waits for at most one evaluation, not a whole step of
    up to `iterations` forward and backward passes.
    """
    embedding = initial.detach().float().clone()
    embeddings: list[torch.Tensor] = []
    top_scale, clean = loss_scale, 0
    x = pivots[0]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        target = diffusers_scale(pivots[i + 1], sigma_next).float()
        check()
        with torch.no_grad():
            cond_x0 = cond(x, sigma).float()
            loss_cond_x0 = cond_x0
            if exact is not None:
                check()
                loss_cond_x0 = exact[0](x, sigma).float()
        embedding.requires_grad_(True)
        optimiser = torch.optim.Adam([embedding], lr=settings.lr(i, len(sigmas) - 1))
        loss_value, updates = float("inf"), 0
        while updates < settings.iterations:
            check()
            uncond_x0 = uncond(x, sigma, embedding)
            uncond_value = None
            if exact is not None:
                check()
                with torch.no_grad():
                    uncond_value = exact[1](x, sigma, embedding.detach())
            loss = null_text_loss(loss_cond_x0, uncond_x0, uncond_value, x, sigma, sigma_next, target, guidance)
            optimiser.zero_grad()
            check()
            loss_value = loss.item()
            if not scaled_backward(loss, embedding, loss_scale):
                if loss_scale <= 1.0:
                    raise FloatingPointError(
                        "Null-text optimisation met a non-finite gradient: the model's predictions overflow in "
                        "its dtype. Run the model in fp32 or bf16 for the inversion.")
                loss_scale, clean = loss_scale / 2, 0  # an overflow costs this pass, not one of the updates
                continue
            clean += 1
            if clean >= LOSS_SCALE_GROWTH_INTERVAL and loss_scale < top_scale:
                loss_scale, clean = min(loss_scale * 2, top_scale), 0
            optimiser.step()
            updates += 1
            if loss_value < settings.threshold(i, len(sigmas) - 1):
                break
        embedding = embedding.detach()
        embeddings.append(embedding.clone())
        check()
        with torch.no_grad():
            uncond_x0 = uncond(x, sigma, embedding).float()
            guided = uncond_x0 + guidance * (cond_x0 - uncond_x0)
            x = euler_step(x.float(), guided, sigma, sigma_next).to(x.dtype)
        if on_step is not None:
            on_step(i, loss_value)
    return embeddings
