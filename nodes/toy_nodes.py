"""Prompt-to-Prompt Demo Model: the tiny toy-world model (toy/), as MODEL, CLIP and VAE.

It runs every example without downloading a checkpoint. The node exists only where the model file does
(toy/prompt_to_prompt_toy.safetensors, which the pack ships, or the file PROMPT_TO_PROMPT_DEMO_MODEL names), so a
pack installed without it still loads (docs/toy-world.md). Where the joint-attention demo model's file is there too
(toy/prompt_to_prompt_flux_toy.safetensors, or PROMPT_TO_PROMPT_FLUX_DEMO_MODEL), a choice picks between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..p2p_core.errors import PromptToPromptError
from ..toy import flux_model, scenes
from ..toy import model as toy_model
from ..toy.scenes import SIZE, vocabulary
from .edit_nodes import CATEGORY

TOY = Path(__file__).resolve().parent.parent / "toy"
MODEL_FILE = Path(os.environ.get("PROMPT_TO_PROMPT_DEMO_MODEL") or TOY / "prompt_to_prompt_toy.safetensors")
FLUX_MODEL_FILE = Path(os.environ.get("PROMPT_TO_PROMPT_FLUX_DEMO_MODEL")
                       or TOY / "prompt_to_prompt_flux_toy.safetensors")
#: The joint-attention demo model's pictures: the toy world drawn twice as large (toy/MODEL.md, "Twice the pixels").
FLUX_SIZE = 2 * SIZE
#: The demo models by the name the node's choice shows, with how each file loads; offered where its file exists.
DEMO_MODELS: dict[str, tuple[Path, Callable[[Path], tuple]]] = {
    "unet": (MODEL_FILE, toy_model.load), "flux": (FLUX_MODEL_FILE, flux_model.load)}


class DemoModelLoader:
    SEARCH_ALIASES = ["demo", "toy model", "try without a checkpoint", "p2p", "prompt to prompt"]
    DESCRIPTION = ("Loads one of the pack's tiny demo models, trained on pictures of flat-colour shapes: the "
                   f"SD1.x-shaped one (unet, {SIZE}x{SIZE} pictures) or, where its file is there, the Flux.1-shaped "
                   f"one (flux, {FLUX_SIZE}x{FLUX_SIZE}). They know only captions like 'a big red circle and a small "
                   "blue square on a white background' (words: " + ", ".join(vocabulary()) + "). For the unet model "
                   "name the background first ('on a white background, a big red circle ...') for its word's map to "
                   "lie around the objects; the flux model reads the background last. Sample with an empty negative "
                   "prompt, at the model's size.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The demo diffusion model: unet, SD1.x layout (eps prediction); flux, Flux.1 layout (flow "
                       "matching, no guidance embedding: sample it with CFG).",
                       "Its text encoder: unet, ComfyUI's CLIP tokenizer and a small text transformer; flux, "
                       "ComfyUI's Flux text encoder (a small CLIP-L for the pooled vector, a small T5 for the words).",
                       f"Its VAE (8x downsampling, 4 latent channels): unet, {SIZE}x{SIZE} pictures, "
                       f"{SIZE // 8}x{SIZE // 8} latents; flux, its own (the unet model's adapted to its size), "
                       f"{FLUX_SIZE}x{FLUX_SIZE} pictures, {FLUX_SIZE // 8}x{FLUX_SIZE // 8} latents.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        offered = [name for name, (path, _) in DEMO_MODELS.items() if path.is_file()]
        if offered == ["unet"]:
            return {"required": {}}
        return {"required": {}, "optional": {"model": (offered, {
            "default": offered[0],
            "tooltip": f"unet: the SD1.x-shaped model (UNet cross-attention), {SIZE}x{SIZE}. flux: the "
                       "Flux.1-shaped model (joint attention, T5 words; sample it with cfg 5, scheduler simple, "
                       f"level 1/2), the same toy world drawn at {FLUX_SIZE}x{FLUX_SIZE}, its own VAE."})}}

    def load(self, model: str = "unet") -> tuple:
        if model not in DEMO_MODELS:
            raise PromptToPromptError(f"There is no demo model '{model}'; choose one of {', '.join(DEMO_MODELS)}.")
        path, load = DEMO_MODELS[model]
        if not path.is_file():
            trainer = "toy.train" if model == "unet" else "toy.flux_train"
            raise PromptToPromptError(f"The demo model file {path} is gone (it was there when ComfyUI started). "
                                      f"Put it back, or train one with `COMFYUI_PATH=<ComfyUI> python -m {trainer} "
                                      "--work <folder>` in the pack's folder (toy/MODEL.md).")
        try:
            diffusion, clip, vae, _ = load(path)
        except ValueError as error:
            raise PromptToPromptError(str(error)) from None
        return diffusion, clip, vae


class DemoScene:
    """A toy-world picture drawn from its caption: a "photo" the demo model never generated, to invert and edit."""

    SEARCH_ALIASES = ["demo", "toy scene", "demo image", "test image", "p2p"]
    DESCRIPTION = ("Draws a toy-world picture from a caption, at places set by the seed (left to right in the "
                   "caption's order): the photo the demo's real-image examples invert and edit. It is drawn, not "
                   "generated by a demo model.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The picture, size x size: connect it to VAE Encode with the Demo Model's VAE.",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "caption": ("STRING", {"multiline": True, "default": PHOTO_CAPTION,
                                   "tooltip": "What to draw, in the toy grammar: 'on a black background, a big yellow "
                                              "square and a small red circle' (sizes big/small; colours red, green, "
                                              "blue, yellow; shapes circle, square, triangle; up to 3 objects)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 32 - 1, "tooltip": "Where the objects are placed."}),
        }, "optional": {
            "size": ("INT", {"default": SIZE, "min": SIZE, "max": 4 * SIZE, "step": SIZE,
                             "tooltip": f"The picture's width and height: {SIZE} for the unet demo model, {FLUX_SIZE} "
                                        "for the flux one (the same scene, drawn larger)."}),
        }}

    def draw(self, caption: str, seed: int, size: int = SIZE) -> tuple:
        try:
            scene = scenes.parse_caption(caption)
        except ValueError as error:
            raise PromptToPromptError(f"Demo Scene draws toy-world captions only: {error}.") from None
        if len(scene.things) > scenes.MAX_OBJECTS or len({t.colour for t in scene.things}) < len(scene.things):
            raise PromptToPromptError(f"Demo Scene draws up to {scenes.MAX_OBJECTS} objects of different colours, as "
                                      f"the demo model learnt them; got '{caption}'.")
        if size % SIZE:
            raise PromptToPromptError(f"Demo Scene draws {SIZE} pixels or a multiple of them ({FLUX_SIZE} for the "
                                      f"flux demo model); got size {size}.")
        pixels, _ = scenes.draw(scenes.place(scene, np.random.default_rng(seed)), int(size) // SIZE)
        return (torch.from_numpy(pixels.astype(np.float32) / 255)[None],)


PHOTO_CAPTION = "on a black background, a big yellow square and a small red circle"
_NODES = {"PromptToPromptDemoModel": (DemoModelLoader, "Prompt-to-Prompt Demo Model"),
          "PromptToPromptDemoScene": (DemoScene, "Prompt-to-Prompt Demo Scene")}
NODE_CLASS_MAPPINGS = {name: node for name, (node, _) in _NODES.items()} if MODEL_FILE.is_file() else {}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for name, (_, title) in _NODES.items()} if NODE_CLASS_MAPPINGS else {}
