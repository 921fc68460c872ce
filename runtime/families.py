"""The one place model families differ: where a model's attention layers are, and how its text lies.

Everything else (plans, patches, wrappers, the store and the blend) is the same for every family. A `Family` says
- ``layers``: every attention layer the edit acts in, keyed as the patch sees it, with its level (how many
  times smaller than the latent its feature map is);
- ``joint``: whether text and image tokens share one attention (Flux) or the image attends to text in a
  cross-attention of its own (the UNets);
- ``text_key``: which of the CLIP's token streams lays out the model's text context, column by column.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..p2p_core.errors import PromptToPromptError
from .text import TextKey
from .unet import LayerKey, transformer_levels

SUPPORTED = "SD1.x, SD2.x, SDXL, Flux.1 (dev, schnell and fine-tunes of them) and SD3 / SD3.5"


@dataclass(frozen=True)
class Family:
    name: str
    layers: dict[LayerKey, int]
    joint: bool
    text_key: TextKey
    """The CLIP stream(s) of the model's context (None: the CLIP's own, SD1 'l', SD2 'h', SDXL 'g'/'l')."""
    patch: int = 1
    """Latent pixels per image token along a side (joint models)."""
    map_blocks: tuple[str, ...] = ()
    """Joint models: the kinds of block whose word maps the store and local blend read (Flux's double-stream
    blocks, as exploring-mmdit and DAAM read them; every SD3 block)."""

    @property
    def levels(self) -> list[int]:
        return sorted(set(self.layers.values()))

    def check_level(self, level: int) -> int:
        """`level` if the model attends at that level, else a clear error listing the ones it has."""
        if level not in self.levels:
            names = ", ".join(f"1/{lv}" for lv in self.levels)
            where = (f"{self.name} attends over {self.patch}x{self.patch} patches of the latent, at 1/{self.patch} "
                     "of its side only" if self.joint else f"its levels are {names}")
            raise PromptToPromptError(
                f"This model has no cross-attention at 1/{level} of the latent's side; {where}. Choose {names}.")
        return level

    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """The image tokens' grid for a latent of this size (ComfyUI's Flux rounds a half patch up)."""
        return (height + self.patch // 2) // self.patch, (width + self.patch // 2) // self.patch


def family(model) -> Family:
    """The model's family, or a clear error naming the model and what is supported."""
    network = model.get_model_object("diffusion_model")
    if isinstance(network, UNetModel):
        return Family("UNet", transformer_levels(model), joint=False, text_key=None)
    if type(network) is Flux and not getattr(network.params, "global_modulation", False):
        patch = network.patch_size
        layers = {("double", i, 0): patch for i in range(len(network.double_blocks))}
        layers |= {("single", i, 0): patch for i in range(len(network.single_blocks))}
        return Family("Flux", layers, joint=True, text_key="t5xxl", patch=patch, map_blocks=("double",))
    if type(network) is OpenAISignatureMMDITWrapper and not network.register_length:
        patch = network.patch_size
        return Family("SD3", {("joint", i, 0): patch for i in range(len(network.joint_blocks))}, joint=True,
                      text_key=("l", "t5xxl"), patch=patch, map_blocks=("joint",))
    name = type(getattr(model.model, "model_config", network)).__name__
    raise PromptToPromptError(
        f"Prompt-to-Prompt edits {SUPPORTED}; this model is {name}, which it cannot edit yet (docs/models.md says "
        "which families work and why). Load a checkpoint of a supported family.")
