"""Prompt-to-Prompt Demo Model: the tiny toy-world model (toy/), as MODEL, CLIP and VAE.

It runs every example without downloading a checkpoint. The node exists only where the model file does
(toy/prompt_to_prompt_toy.safetensors, which the pack ships, or the file PROMPT_TO_PROMPT_DEMO_MODEL names), so a
pack installed without it still loads (docs/toy-world.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..p2p_core.errors import PromptToPromptError
from ..toy import model as toy_model
from ..toy.scenes import SIZE, vocabulary
from .edit_nodes import CATEGORY

MODEL_FILE = Path(os.environ.get("PROMPT_TO_PROMPT_DEMO_MODEL")
                  or Path(__file__).resolve().parent.parent / "toy" / "prompt_to_prompt_toy.safetensors")


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
        return {"required": {}}

    def load(self) -> tuple:
        if not MODEL_FILE.is_file():
            raise PromptToPromptError(f"The demo model file {MODEL_FILE} is gone (it was there when ComfyUI "
                                      "started). Put it back, or train one with `COMFYUI_PATH=<ComfyUI> python "
                                      "-m toy.train --work <folder>` in the pack's folder (toy/MODEL.md).")
        try:
            model, clip, vae, _ = toy_model.load(MODEL_FILE)
        except ValueError as error:
            raise PromptToPromptError(str(error)) from None
        return model, clip, vae


NODE_CLASS_MAPPINGS = {"PromptToPromptDemoModel": DemoModelLoader} if MODEL_FILE.is_file() else {}
NODE_DISPLAY_NAME_MAPPINGS = {"PromptToPromptDemoModel": "Prompt-to-Prompt Demo Model"} if NODE_CLASS_MAPPINGS else {}
