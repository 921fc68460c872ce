"""The one place model families differ: where a model's attention layers are, and how its text lies.

Everything else (plans, patches, wrappers, the store and the blend) is the same for every family. A `Family` says
- ``layers``: every attention layer the edit acts in, keyed as the patch sees it, with its level (how many
  times smaller than the latent its feature map is);
- ``joint``: whether text and image tokens share one attention (Flux) or the image attends to text in a
  cross-attention of its own (the UNets);
- ``text_key``: which of the CLIP's token streams lays out the model's text context, column by column;
- ``self_presets``: the layer sets a user can choose to share the source's self-attention (image queries and keys
  on joint models) in, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..p2p_core.errors import PromptToPromptError
from .text import TextKey
from .unet import LayerKey, transformer_levels

SUPPORTED = "SD1.x, SD2.x, SDXL, Flux.1 (dev, schnell and fine-tunes of them) and SD3 / SD3.5"

UNET_SELF_LEVELS = {"all": 1, "half": 2, "quarter": 4}
"""UNet: self-attention is shared in layers at this level or coarser (a layer's level: how many times smaller than
the latent its side is). "quarter" is the official code's limit for generated images (16x16 at 512x512: the stable
notebook, the diffusers pipeline; 32x32 at 1024x1024 for SDXL), "half" the null-text notebook's for real images
(32x32 at 512x512)."""
FLUX_BLOCK_PRESETS = ("double blocks", "single blocks", "vital blocks")
"""Flux: the double-stream blocks, the single-stream blocks, or Stable Flow's vital blocks (arXiv 2411.14430)."""
SELF_LAYER_CHOICES = ("auto", *UNET_SELF_LEVELS, *FLUX_BLOCK_PRESETS)
"""'auto': the official choice on a UNet ("quarter" for generated images, "half" for inverted real images), every
block on a joint model (Exploring MM-DiT's default, arXiv 2508.07519)."""
VITAL_DOUBLE, VITAL_SINGLE = (0, 1, 17, 18), (6, 9, 34, 35, 37)
"""Stable Flow's vital double and single blocks of Flux.1 dev (of 19 and 38): those whose bypass changes the picture
most. A model of another depth takes the blocks at the same relative depth."""


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
    self_presets: dict[str, frozenset[LayerKey]] = field(default_factory=dict)
    """The named layer sets that can share self-attention (see SELF_LAYER_CHOICES)."""

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

    def self_sharing_layers(self, choice: str, real_image: bool) -> frozenset[LayerKey]:
        """The layers a self_attention_layers choice shares in, or a clear error naming the model's choices."""
        name = choice if choice != "auto" else ("all" if self.joint else "half" if real_image else "quarter")
        if name not in self.self_presets:
            offered = ", ".join(["auto", *self.self_presets])
            raise PromptToPromptError(
                f"self_attention_layers '{choice}' is not a choice on {self.name}, which offers {offered}"
                f"{' (UNet layers are chosen by level, joint models by block)' if choice in SELF_LAYER_CHOICES else ''}"
                ". Choose one of those.")
        return self.self_presets[name]

    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """The image tokens' grid for a latent of this size (ComfyUI's Flux rounds a half patch up)."""
        return (height + self.patch // 2) // self.patch, (width + self.patch // 2) // self.patch


def family(model) -> Family:
    """The model's family, or a clear error naming the model and what is supported."""
    network = model.get_model_object("diffusion_model")
    if isinstance(network, UNetModel):
        levels = transformer_levels(model)
        presets = {name: frozenset(k for k, lv in levels.items() if lv >= level)
                   for name, level in UNET_SELF_LEVELS.items()}
        return Family("UNet", levels, joint=False, text_key=None, self_presets=presets)
    if type(network) is Flux and not getattr(network.params, "global_modulation", False):
        patch = network.patch_size
        double = [("double", i, 0) for i in range(len(network.double_blocks))]
        single = [("single", i, 0) for i in range(len(network.single_blocks))]
        vital = same_relative_depth(double, VITAL_DOUBLE, 19) + same_relative_depth(single, VITAL_SINGLE, 38)
        presets = {"all": frozenset(double + single), "double blocks": frozenset(double),
                   "single blocks": frozenset(single), "vital blocks": frozenset(vital)}
        return Family("Flux", dict.fromkeys(double + single, patch), joint=True, text_key="t5xxl", patch=patch,
                      map_blocks=("double",), self_presets=presets)
    if type(network) is OpenAISignatureMMDITWrapper and not network.register_length:
        patch = network.patch_size
        blocks = [("joint", i, 0) for i in range(len(network.joint_blocks))]
        return Family("SD3", dict.fromkeys(blocks, patch), joint=True, text_key=("l", "t5xxl"), patch=patch,
                      map_blocks=("joint",), self_presets={"all": frozenset(blocks)})
    name = type(getattr(model.model, "model_config", network)).__name__
    raise PromptToPromptError(
        f"Prompt-to-Prompt edits {SUPPORTED}; this model is {name}, which it cannot edit yet (docs/models.md says "
        "which families work and why). Load a checkpoint of a supported family.")


def same_relative_depth(blocks: list[LayerKey], chosen: tuple[int, ...], depth: int) -> list[LayerKey]:
    """The blocks at the relative depths of `chosen` blocks of a `depth`-block stack (all of them when the model's
    stack is as deep)."""
    if not blocks:
        return []
    last = len(blocks) - 1
    return [blocks[round(i * last / (depth - 1))] for i in chosen]
