"""The edited model's attention layers: every transformer block of the UNet and its level, read from its structure.

A layer's level is how many times smaller than the latent its feature map is. It is counted from the UNet's
downsampling and upsampling layers, not from the ratio of sides: ComfyUI's UNet halves odd sides rounding up,
so a latent 36 pixels high has layers 18, 9 and 5 high, and 36 / 5 rounds to the wrong level.
"""

from __future__ import annotations

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..p2p_core.errors import PromptToPromptError

LayerKey = tuple[str, int, int]
"""A transformer block as ComfyUI's attention patches see it: (block name, block id, depth index)."""


def unet(model) -> UNetModel:
    """The model's UNet, or a clear error naming the model (what only UNets have: the inversion's callers)."""
    diffusion_model = model.get_model_object("diffusion_model")
    if not isinstance(diffusion_model, UNetModel):
        family = type(getattr(model.model, "model_config", diffusion_model)).__name__
        raise PromptToPromptError(
            f"This needs a UNet model with cross-attention (SD1.x, SD2.x, SDXL); this model is {family}. Load an "
            "SD1.x, SD2.x or SDXL checkpoint.")
    return diffusion_model


def transformer_levels(model) -> dict[LayerKey, int]:
    """Every transformer block, keyed as ComfyUI's attention patches key them, with its level."""
    network = unet(model)
    levels: dict[LayerKey, int] = {}
    level = 1

    def visit(name: str, number: int, block) -> None:
        nonlocal level
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                levels.update({(name, number, depth): level for depth in range(len(layer.transformer_blocks))})
            elif isinstance(layer, Downsample):
                level *= 2
            elif isinstance(layer, Upsample):
                level //= 2

    for i, block in enumerate(network.input_blocks):
        visit("input", i, block)
    visit("middle", 0, network.middle_block)
    for i, block in enumerate(network.output_blocks):
        visit("output", i, block)
    if not levels:
        raise PromptToPromptError(f"This {type(network).__name__} has no cross-attention layers to edit.")
    return levels
