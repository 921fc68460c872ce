import math

import pytest
import torch

from p2p_core.inversion import (
    LOSS_SCALE_GROWTH_INTERVAL,
    NullTextSettings,
    ddim_invert,
    diffusers_scale,
    direct_targets,
    euler_step,
    null_text_optimise,
)

SIGMAS = [14.6 * (1 - k / 40) ** 3 for k in range(41)]  # descending to 0, denser at low noise
COARSE = [14.6, 9.0, 5.0, 2.5, 1.2, 0.5, 0.0]


TEXT_TO_IMAGE = torch.randn(16, 4 * 8 * 8, generator=torch.Generator().manual_seed(1)) / 4


def toy_denoiser(x, sigma, text):
    """A smooth stand-in for an eps-predicting UNet: a non-linear function of what the UNet sees plus a
    low-rank image from the text embedding (the embedding steers the picture but cannot set every pixel).
    As for a real model, D(x, sigma) = x - sigma * eps tends to x as sigma goes to 0."""
    z = x / math.sqrt(1 + sigma ** 2)
    eps = torch.tanh(z * 0.8) * 0.9 + 0.05 * z + (text @ TEXT_TO_IMAGE).reshape(x.shape) * 0.3
    return x - sigma * eps


def sample(x, sigmas, denoised_at):
    for i in range(len(sigmas) - 1):
        x = euler_step(x, denoised_at(i, x), sigmas[i], sigmas[i + 1])
    return x


def image():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


COND = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
NULL = torch.zeros(1, 16)


def guided(x, sigma, uncond_text, scale=7.5):
    u, c = toy_denoiser(x, sigma, uncond_text), toy_denoiser(x, sigma, COND)
    return u + scale * (c - u)


def error(a, b):
    return float((a - b).pow(2).mean())


def test_pivots_run_from_noise_to_the_image():
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), SIGMAS)
    assert len(pivots) == len(SIGMAS) and torch.equal(pivots[-1], image())
    assert float(pivots[0].std()) > 5 * float(image().std())


def test_direct_targets_retrace_the_pivots_exactly():
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), SIGMAS)
    targets = direct_targets(pivots, SIGMAS)
    x = pivots[0]
    for i in range(len(SIGMAS) - 1):
        x = euler_step(x, targets[i], SIGMAS[i], SIGMAS[i + 1])
        assert torch.allclose(x, pivots[i + 1], atol=1e-5)


def test_unguided_ddim_inversion_reconstructs_closely_with_enough_steps():
    def reconstruction(sigmas):
        pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), sigmas)
        return error(sample(pivots[0], sigmas, lambda i, x: toy_denoiser(x, sigmas[i], COND)), image())
    assert reconstruction(SIGMAS) < 0.01 < reconstruction(COARSE)


def test_null_text_and_negative_prompt_beat_plain_inversion_under_guidance():
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), SIGMAS)
    plain = sample(pivots[0], SIGMAS, lambda i, x: guided(x, SIGMAS[i], NULL))
    losses = []
    embeddings = null_text_optimise(lambda x, s: toy_denoiser(x, s, COND), toy_denoiser, pivots, SIGMAS, 7.5, NULL,
                                    NullTextSettings(iterations=10), on_step=lambda i, loss: losses.append(loss))
    optimised = sample(pivots[0], SIGMAS, lambda i, x: guided(x, SIGMAS[i], embeddings[i]))
    assert len(embeddings) == len(SIGMAS) - 1 and len(losses) == len(SIGMAS) - 1
    npi = sample(pivots[0], SIGMAS, lambda i, x: guided(x, SIGMAS[i], COND))  # negative-prompt inversion
    assert error(optimised, image()) * 100 < error(plain, image())
    assert error(npi, image()) * 100 < error(plain, image())


def test_null_text_optimises_in_fp32_for_half_embeddings():
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), COARSE[-3:])
    embeddings = null_text_optimise(lambda x, s: toy_denoiser(x, s, COND), toy_denoiser, pivots, COARSE[-3:], 7.5,
                                    NULL.half(), NullTextSettings(iterations=2))
    assert all(e.dtype == torch.float32 for e in embeddings)


def test_paper_schedule_for_lr_and_early_stop():
    settings = NullTextSettings()
    for steps in (10, 50):
        assert settings.lr(0, steps) == 1e-2 and math.isclose(settings.lr(9, steps), 0.0091)
        assert math.isclose(settings.threshold(9, steps), 1e-5 + 9 * 2e-5)
    assert math.isclose(settings.lr(49, 50), 0.0051) and math.isclose(settings.threshold(49, 50), 1e-5 + 49 * 2e-5)


def test_runs_longer_than_the_papers_stretch_its_schedule_and_keep_a_positive_learning_rate():
    """The notebook's schedule reaches zero at step 100; a 200-step run halves over its length as 50 steps do."""
    settings = NullTextSettings()
    assert math.isclose(settings.lr(199, 200), 1e-2 * (1 - 199 / 400))
    assert math.isclose(settings.threshold(199, 200), settings.threshold(49.75, 50))
    sigmas = [14.6 * (1 - i / 120) ** 2 for i in range(121)]
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), sigmas)
    embeddings = null_text_optimise(lambda x, s: toy_denoiser(x, s, COND), toy_denoiser, pivots, sigmas, 7.5, NULL,
                                    NullTextSettings(iterations=1))
    assert len(embeddings) == 120


def test_diffusers_scale_matches_alpha_bar():
    x, sigma = torch.ones(1), 3.0
    alpha_bar = 1 / (1 + sigma ** 2)
    assert torch.allclose(diffusers_scale(x, sigma), x * math.sqrt(alpha_bar))


def test_loss_scaling_changes_neither_the_result_nor_early_stopping():
    """The loss scale only protects a half-precision backward: the gradient is unscaled before Adam and early
    stopping reads the unscaled loss, so fp32 results are the same with or without it, and an overflowing scale
    is lowered rather than applied."""
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), COARSE)

    def optimise(loss_scale):
        losses = []
        embeddings = null_text_optimise(lambda x, s: toy_denoiser(x, s, COND), toy_denoiser, pivots, COARSE, 7.5,
                                        NULL, NullTextSettings(iterations=10), lambda i, loss: losses.append(loss),
                                        loss_scale=loss_scale)
        return torch.stack(embeddings), losses

    plain, plain_losses = optimise(1.0)
    for loss_scale in (2.0 ** 16, 1e38):
        scaled, losses = optimise(loss_scale)
        assert torch.allclose(scaled, plain, rtol=1e-4, atol=1e-6)
        assert losses == pytest.approx(plain_losses, rel=1e-3)


def test_a_lowered_loss_scale_grows_back_after_clean_passes():
    """An fp16 gradient overflow halves the loss scale for the pass it spoiled; it doubles back after
    LOSS_SCALE_GROWTH_INTERVAL clean passes instead of staying low for the rest of the inversion."""
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), COARSE)
    scales = []

    def uncond(x, sigma, text):
        out = toy_denoiser(x, sigma, text)
        spoil = len(scales) in (0, 1)  # the first two backward passes overflow

        def seen(grad):
            scales.append(float(grad.abs().sum()))
            return grad * math.inf if spoil else grad
        if out.requires_grad:  # not when the latent advances
            out.register_hook(seen)
        return out

    null_text_optimise(lambda x, s: toy_denoiser(x, s, COND), uncond, pivots, COARSE, 7.5, NULL,
                       NullTextSettings(iterations=50, epsilon=0.0), loss_scale=1024.0)
    # Consecutive passes' gradients differ little but for the scale: each jump is a halving or a doubling.
    jumps = {k: round(math.log2(scales[k] / scales[k - 1])) for k in range(1, 50)}  # the first step's passes
    changed = {k: jump for k, jump in jumps.items() if jump}
    grow = LOSS_SCALE_GROWTH_INTERVAL
    assert changed == {1: -1, 2: -1, 2 + grow: 1, 2 + 2 * grow: 1}, changed  # halved twice, then back to 1024


def test_exact_values_steer_the_loss_but_sampling_predictions_advance_the_latent():
    """With `exact` (full-precision denoisers) the loss is theirs; the latent advances with the model's own
    predictions, as sampling will make them: a rounded model still retraces the pivots once optimised."""
    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), SIGMAS)

    def rounded(x, s, text):
        exact = toy_denoiser(x, s, text)
        return exact + (exact.bfloat16().float() - exact).detach()

    embeddings = null_text_optimise(lambda x, s: rounded(x, s, COND), rounded, pivots, SIGMAS, 7.5, NULL,
                                    exact=(lambda x, s: toy_denoiser(x, s, COND), toy_denoiser))
    guided_rounded = lambda i, x: (lambda u, c: u + 7.5 * (c - u))(rounded(x, SIGMAS[i], embeddings[i]),
                                                                      rounded(x, SIGMAS[i], COND))
    plain = sample(pivots[0], SIGMAS, lambda i, x: guided(x, SIGMAS[i], NULL))
    assert error(sample(pivots[0], SIGMAS, guided_rounded), image()) * 100 < error(plain, image())


def test_null_text_checks_for_a_stop_before_every_model_evaluation_and_backward_pass():
    """A host stops the optimisation (ComfyUI's cancel) by raising from `check`: it must run before each
    forward and backward pass, not once a step, so a stop waits for one evaluation at most."""
    events = []

    def cond(x, sigma):
        events.append("forward")
        return toy_denoiser(x, sigma, COND)

    def uncond(x, sigma, embedding):
        events.append("forward")
        out = toy_denoiser(x, sigma, embedding)
        if out.requires_grad:
            out.register_hook(lambda grad: events.append("backward"))
        return out

    pivots = ddim_invert(lambda x, s: toy_denoiser(x, s, COND), image(), COARSE)
    null_text_optimise(cond, uncond, pivots, COARSE, 7.5, NULL, NullTextSettings(iterations=3),
                       check=lambda: events.append("check"))
    assert events.count("backward") > len(COARSE)  # several iterations per step ran
    assert all(events[i - 1] == "check" for i, event in enumerate(events) if event != "check")
