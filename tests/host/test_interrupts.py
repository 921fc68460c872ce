"""ComfyUI's cancel stops the pack's long loops within one model evaluation and leaves the model as it was.

Evaluations are counted, not timed: the UNet's forward and backward passes are counted by hooks, and the
cancel flag is raised from inside a chosen forward pass, as the cancel button would while the model runs.
No evaluation may begin after it. (bench/cancel.py measures the same in seconds on full-size models.)
"""

from __future__ import annotations

import executor
import pytest
import tiny
import torch

tiny.import_comfy()
import comfy.model_management  # noqa: E402

import nodes  # noqa: E402

STEPS, CFG, PROMPT = 4, 7.5, "a photo of a cat"


class Evaluations:
    """Counts the UNet's forward and backward passes and cancels when forward number `cancel_at` begins."""

    def __init__(self, unet: torch.nn.Module, cancel_at: int) -> None:
        self.forwards = self.backwards = 0
        self.cancel_at = cancel_at
        self.at_cancel: tuple[int, int] | None = None
        self.hooks = [unet.register_forward_pre_hook(self.forward), unet.register_forward_hook(self.output)]

    def forward(self, module, args) -> None:
        self.forwards += 1
        if self.forwards == self.cancel_at:
            comfy.model_management.interrupt_current_processing(True)
            self.at_cancel = (self.forwards, self.backwards)

    def output(self, module, args, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(self.backward)

    def backward(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def sample(model, clip):
    positive, negative = (nodes.CLIPTextEncode().encode(clip, text)[0] for text in (PROMPT, ""))
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    return nodes.common_ksampler(model, 1, 3, CFG, "euler", "normal", positive, negative, latent)[0]["samples"]


def invert(p2p, model, clip):
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode():  # as the executor runs nodes
        return p2p["NullTextInvert"]().invert(model, clip, PROMPT, latent, "null-text", STEPS, CFG, "ddim_uniform")


@pytest.mark.parametrize("cancel_at,phase", [
    (2, "DDIM inversion"),
    (STEPS + 1, "the first step's conditional pass"),
    (STEPS + 2, "the first optimisation iteration"),
    (STEPS + 3, "the second optimisation iteration"),
], ids=["inversion", "conditional", "iteration-1", "iteration-2"])
def test_cancelling_null_text_inversion_stops_within_one_model_evaluation(p2p, cancel_at, phase):
    """DDIM inversion takes STEPS forwards; then each optimisation step one conditional forward and up to 10
    iterations of forward and backward. Cancel used to be read only between steps, so a cancel during the
    optimisation waited for every remaining iteration of the step (68 s for SD1.5 on a CPU)."""
    model, clip, _ = executor.tiny_bundle("sd1")
    unet = model.model.diffusion_model
    before_sample = sample(model, clip)
    before_parameters = dict(unet.named_parameters())
    evaluations = Evaluations(unet, cancel_at)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(p2p, model, clip)
    finally:
        evaluations.remove()
        comfy.model_management.interrupt_current_processing(False)
    assert evaluations.at_cancel is not None, f"never reached {phase}"
    assert (evaluations.forwards, evaluations.backwards) == evaluations.at_cancel, \
        f"a model evaluation began after the cancel during {phase}"
    after_parameters = dict(unet.named_parameters())
    assert after_parameters.keys() == before_parameters.keys()
    assert all(after_parameters[name] is before_parameters[name] for name in before_parameters)
    assert model.get_injections("prompt_to_prompt_inversion") is None
    assert model.get_attachment("prompt_to_prompt_inversion") is None
    assert torch.equal(sample(model, clip), before_sample)
