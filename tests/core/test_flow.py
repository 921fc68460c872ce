"""Flow inversions (p2p_core.flow): sampling back with the matching step retraces the inversion, RF-Solver to
second order, on a flow whose paths curve (Gaussian data, whose x0 prediction is exact); and FlowEdit carries a
picture from one such flow to another."""

import pytest
import torch

from p2p_core.flow import flow_invert, flowedit_step, rf_solver_step, velocity

MEAN, SPREAD = 0.4, 0.3
LOWEST = 1e-3


def gaussian_denoiser(x: torch.Tensor, sigma: float, mean: float = MEAN) -> torch.Tensor:
    """E[x0 | x_sigma] for x0 ~ N(mean, SPREAD^2) and x_sigma = (1 - sigma) x0 + sigma eps: a flow whose paths
    bend (the velocity changes along them), as a trained model's do."""
    variance = (1 - sigma) ** 2 * SPREAD ** 2 + sigma ** 2
    return mean + (1 - sigma) * SPREAD ** 2 / variance * (x - (1 - sigma) * mean)


def schedule(steps: int) -> list[float]:
    shift = 3.0  # Flux's shifted schedule: sigma = shift t / (1 + (shift - 1) t)
    return [shift * t / (1 + (shift - 1) * t) for t in torch.linspace(1, 0, steps + 1).tolist()]


def sample(method: str, noise: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """What ComfyUI's euler sampler, or the pack's RF-Solver sampler, does from ``noise``."""
    v, x = velocity(gaussian_denoiser, LOWEST), noise
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        x = x + (sigma_next - sigma) * v(x, sigma) if method == "euler" else rf_solver_step(v, x, sigma, sigma_next)
    return x


def reconstruction_error(method: str, steps: int) -> float:
    image = MEAN + SPREAD * torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = schedule(steps)
    noise = flow_invert(velocity(gaussian_denoiser, LOWEST), image, sigmas, method)
    return float((sample(method, noise, sigmas) - image).abs().max())


@pytest.mark.parametrize("steps", [10, 28])
def test_rf_solver_reconstructs_better_than_euler_inversion(steps):
    assert reconstruction_error("rf-solver", steps) < 0.2 * reconstruction_error("euler", steps)


@pytest.mark.parametrize("method, order", [("euler", 1), ("rf-solver", 2)])
def test_each_inversion_reconstructs_to_its_order_as_steps_double(method, order):
    coarse, fine = reconstruction_error(method, 16), reconstruction_error(method, 32)
    assert fine < coarse
    assert coarse / fine > 2 ** order * 0.7


def test_inverting_an_image_gives_noise_of_unit_spread_at_sigma_one():
    """The inverted latent is what sampling starts from: at sigma 1 the flow's marginal is N(0, 1)."""
    image = MEAN + SPREAD * torch.randn(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = flow_invert(velocity(gaussian_denoiser, LOWEST), image, schedule(28), "rf-solver")
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05


def test_velocity_reads_the_model_at_the_lowest_sigma_where_sigma_is_zero():
    x, seen = torch.ones(3), []
    v = velocity(lambda x, sigma: seen.append(sigma) or x * 0.5, 0.01)
    assert torch.allclose(v(x, 0.0), x * 0.5 / 0.01) and seen == [0.01]


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="euler"):
        flow_invert(velocity(gaussian_denoiser, LOWEST), torch.zeros(2), schedule(2), "heun")


def flowedit(means: list[float], steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """FlowEdit of a picture drawn from the first Gaussian: one row per "prompt" (a Gaussian of that mean), the
    source first, as an edit node's batch holds them; (rows at the end, the picture)."""
    image = MEAN + SPREAD * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoise = lambda x, sigma: torch.stack([gaussian_denoiser(row, sigma, mean) for row, mean in zip(x, means)])
    v, rows, noise = velocity(denoise, LOWEST), image.expand(len(means), 8, 8).clone(), torch.Generator()
    noise.manual_seed(seed)
    sigmas = schedule(steps)
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        noisy = (1 - sigma) * image + sigma * torch.randn(1, 8, 8, generator=noise, dtype=torch.float64)
        rows = flowedit_step(v, rows, image, noisy, sigma, sigma_next)
    return rows, image


@pytest.mark.parametrize("steps, seed", [(6, 1), (28, 2)])
def test_flowedit_carries_a_picture_between_gaussians_by_the_difference_of_their_means(steps, seed):
    """Between two Gaussians of one spread the optimal transport is the shift by the means' difference, and FlowEdit
    makes it exactly, for any steps and noise: the shared noisy offset cancels in the velocity difference."""
    rows, image = flowedit([MEAN, MEAN + 0.5, MEAN - 0.2], steps, seed)
    assert torch.allclose(rows - image, torch.tensor([0.0, 0.5, -0.2], dtype=torch.float64).view(3, 1, 1),
                          atol=1e-9)


def test_flowedit_leaves_the_source_row_and_an_unchanged_prompt_as_the_picture():
    rows, image = flowedit([MEAN, MEAN], 10)
    assert torch.equal(rows, image.expand_as(rows))


def test_flowedit_reads_every_row_shifted_as_the_source_is_on_the_forward_process():
    """The model sees the source as sampling would at that sigma, and every edit row shifted by the same offset:
    what makes the shared noise cancel for a real (nonlinear) model too."""
    source, noisy, edit = torch.full((1, 4), 2.0), torch.full((1, 4), -1.0), torch.full((1, 4), 5.0)
    seen = []
    flowedit_step(lambda x, sigma: seen.append(x.clone()) or x, torch.cat([source, edit]), source, noisy, 0.25, 0.0)
    assert torch.equal(seen[0], torch.cat([noisy, edit + noisy - source]))
