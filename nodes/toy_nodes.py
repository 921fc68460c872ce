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

from ..p2p_core.errors import PromptToPromptError
from ..toy import flux_model
from ..toy import model as toy_model
from ..toy.scenes import SIZE, vocabulary
from .edit_nodes import CATEGORY

TOY = Path(__file__).resolve().parent.parent / "toy"
MODEL_FILE = Path(os.environ.get("PROMPT_TO_PROMPT_DEMO_MODEL") or TOY / "prompt_to_prompt_toy.safetensors")
FLUX_MODEL_FILE = Path(os.environ.get("PROMPT_TO_PROMPT_FLUX_DEMO_MODEL")
                       or TOY / "prompt_to_prompt_flux_toy.safetensors")
#: The demo models by the name the node's choice shows, with how each file loads; offered where its file exists.
DEMO_MODELS: dict[str, tuple[Path, Callable[[Path], tuple]]] = {
    "unet": (MODEL_FILE, toy_model.load), "flux": (FLUX_MODEL_FILE, flux_model.load)}


class DemoModelLoader:
    SEARCH_ALIASES = ["demo", "toy model", "try without a checkpoint", "p2p", "prompt to prompt"]
    DESCRIPTION = (f"Loads the pack's tiny demo model: an SD1.x-shaped model trained on {SIZE}x{SIZE} pictures of "
                   "flat-colour shapes. It knows only captions like 'on a white background, a big red circle and a "
                   "small blue square' (words: " + ", ".join(vocabulary()) + "). Name the background first for its "
                   f"word's map to lie around the objects; named last, it lies on them. Sample at {SIZE}x{SIZE} "
                   "with an empty negative prompt.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The demo diffusion model (SD1.x layout, eps prediction).",
                       "Its text encoder (ComfyUI's CLIP tokenizer, a small text transformer).",
                       f"Its VAE (8x downsampling, 4 latent channels): {SIZE}x{SIZE} pictures, 16x16 latents.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        offered = [name for name, (path, _) in DEMO_MODELS.items() if path.is_file()]
        if offered == ["unet"]:
            return {"required": {}}
        return {"required": {"model": (offered, {
            "default": offered[0],
            "tooltip": "unet: the SD1.x-shaped model (UNet cross-attention). flux: the Flux.1-shaped model (joint "
                       "attention, T5 words; sample it with cfg 5, scheduler simple, level 1/2), the same toy world "
                       "and VAE."})}}

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


NODE_CLASS_MAPPINGS = {"PromptToPromptDemoModel": DemoModelLoader} if MODEL_FILE.is_file() else {}
NODE_DISPLAY_NAME_MAPPINGS = {"PromptToPromptDemoModel": "Prompt-to-Prompt Demo Model"} if NODE_CLASS_MAPPINGS else {}
