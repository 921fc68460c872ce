"""Prompt-to-Prompt Demo Model: the tiny toy-world model shipped with the pack, as MODEL, CLIP and VAE.

It runs every example without downloading a checkpoint (see toy/ for what it knows and how it was trained).
"""

from __future__ import annotations

from pathlib import Path

from ..p2p_core.errors import PromptToPromptError
from ..toy import model as toy_model
from ..toy.scenes import SIZE, vocabulary
from .edit_nodes import CATEGORY

MODEL_FILE = Path(__file__).resolve().parent.parent / "toy" / "prompt_to_prompt_toy.safetensors"


class DemoModelLoader:
    DESCRIPTION = (f"Loads the pack's tiny demo model: an SD1.x-shaped model trained on {SIZE}x{SIZE} pictures of "
                   "flat-colour shapes. It knows only captions like 'a big red circle and a small blue square on "
                   "a white background' (words: " + ", ".join(vocabulary()) + f"). Sample at {SIZE}x{SIZE} with "
                   "an empty negative prompt.")
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
            raise PromptToPromptError(f"The demo model file {MODEL_FILE} is missing: reinstall the pack, or train "
                                      "it again with `python -m toy.train` (see toy/MODEL.md).")
        model, clip, vae, _ = toy_model.load(MODEL_FILE)
        return model, clip, vae


NODE_CLASS_MAPPINGS = {"PromptToPromptDemoModel": DemoModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"PromptToPromptDemoModel": "Prompt-to-Prompt Demo Model"}
