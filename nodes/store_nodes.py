"""AttentionStore and ShowAttention: record attention maps while sampling, then look at them.

AttentionStore patches the MODEL to keep a running average of one level's cross-attention maps (and,
if asked, self-attention maps); it works on a plain prompt or after edit nodes (then every row, source
and edits, is recorded). ShowAttention runs after the sampler (it takes the decoded images, which also
orders it after sampling) and draws per-token heatmaps over a row's image, masks for chosen words, the
local-blend masks the sampler actually used, and the principal components of the self-attention maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..p2p_core.attention import check_self_map_pixels
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.render import colorize, overlay
from ..p2p_core.schedule import Window
from ..p2p_core.store import MapAccumulator, Recorder, Run, self_attention_components, token_heatmaps
from ..p2p_core.tokens import WORD_START, PromptTokens, TokenizeFn
from ..runtime.families import family
from ..runtime.text import word_tokenizer
from .edit_nodes import CATEGORY, MAX_RESOLUTION, finish, start_or_continue

LEVELS = {"1/4": 4, "1/2": 2, "1/8": 8, "1/1": 1}
LEVEL_TOOLTIP = ("Which layers: those whose feature map is this fraction of the latent's side. 1/4 is the paper's "
                 "16x16 at 512x512 for SD1.x/SD2.x and the 32x32 block of SDXL at 1024x1024.")


@dataclass(frozen=True)
class AttentionRecord:
    """The ATTENTION_STORE socket: the recorder a patched model fills, and the tokenizer to find words with."""

    recorder: Recorder
    tokenize: TokenizeFn

    def prompt(self, row: int) -> PromptTokens:
        """The prompt of `row` in the run that recorded the maps (call after `maps`); without edits every row of
        a plain batch holds the source prompt."""
        prompts = self.recorder.run.prompts
        return prompts[row] if len(prompts) > 1 else prompts[0]

    def maps(self) -> MapAccumulator:
        accumulator = self.recorder.store or self.recorder.blend
        if accumulator is None or not accumulator.rows():
            raise PromptToPromptError(nothing_recorded(accumulator, self.recorder.run))
        return accumulator


def nothing_recorded(accumulator: MapAccumulator | None, run: Run | None) -> str:
    """Why a store holds no maps: no run used its model, or the run had no step or no layer to record."""
    if accumulator is None or run is None:
        return ("No attention maps were recorded yet: no sampler has run with the MODEL of this store. Sample "
                "with that MODEL (the same graph run), and connect the images decoded from that sampler here.")
    level, window = accumulator.level, accumulator.window
    (h, w), steps = run.latent, run.steps
    recorded = window.step_range(steps)
    facts = (f"Nothing was recorded at level 1/{level} (layers of {math.ceil(h / level)}x{math.ceil(w / level)} "
             f"pixels for the {h}x{w} latent of the last run) in the window {window.start:g}-{window.end:g}, ")
    if not recorded:
        return (facts + f"which holds no whole step of that run's {steps}. Widen the window (start and end at "
                f"least {1 / steps:.3g} apart) or sample more steps.")
    return (facts + f"steps {recorded.start}-{recorded.stop - 1} of {steps}: the model ran no cross-attention "
            "layer of that size. Choose another level.")


def level_input(default: str = "1/4") -> tuple:
    return (list(LEVELS), {"default": default, "tooltip": LEVEL_TOOLTIP})


class AttentionStore:
    """Record the cross-attention maps of a sampling run (averaged over steps, layers and heads)."""

    SEARCH_ALIASES = ["attention", "attention map", "record attention", "cross attention", "p2p", "prompt to prompt"]
    DESCRIPTION = ("Records the cross-attention maps of the next sampling run with this MODEL: a running average "
                   "per prompt row, over the chosen steps and the layers of one level, in constant memory. "
                   "Connect its ATTENTION_STORE and the decoded images to Show Attention to see them.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CONDITIONING", "LATENT", "ATTENTION_STORE")
    RETURN_NAMES = ("model", "positive", "latent", "attention")
    OUTPUT_TOOLTIPS = (
        "The model that records its attention while sampling (a clone; the input model is unchanged).",
        "Positive conditioning of the prompt (or of the edits before this node), one row per prompt.",
        "A latent with one row per prompt, sharing one noise.",
        "The recorded maps, for Show Attention (filled when the sampler runs).",
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, or the MODEL output of an edit node "
                                               "(then every row is recorded)."}),
                "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint, to tokenize the prompt."}),
                "prompt": ("STRING", {"multiline": True, "default": "a cat riding a bicycle",
                                      "tooltip": "The prompt to sample and record. After an edit node leave it "
                                                 "empty (the edit's source prompt is used)."}),
                "level": level_input(),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "First fraction of the steps to record."}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Last fraction of the steps to record (1 = to the end)."}),
                "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                                  "tooltip": "Image width, used when no latent is connected."}),
                "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                                   "tooltip": "Image height, used when no latent is connected."}),
                "self_attention": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Also record self-attention maps at this level, for Show Attention's self-attention "
                               "components. Costs one explicit pixels x pixels map per head and row at this level "
                               "only (16x16 layers at 512x512 with 1/4), nothing elsewhere; layers over 64x64 "
                               "pixels are refused."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Optional starting latent of one image. Default: an empty latent."}),
            },
        }

    def apply(self, model, clip, prompt: str, level: str, start: float, end: float, width: int, height: int,
              self_attention: bool = False, latent: dict | None = None) -> tuple:
        if end <= start:
            raise PromptToPromptError(
                f"Attention Store's window is empty (start {start:g}, end {end:g}), so it would record nothing. "
                "Set end above start: 0 to 1 records every step.")
        state = start_or_continue(model, clip, prompt, "'prompt' input of Attention Store",
                                  "write the prompt to sample and record, or connect an edit node's MODEL")
        model_family = family(model)
        if self_attention and model_family.joint:
            raise PromptToPromptError(
                f"{model_family.name}'s image tokens attend to each other in the same attention as to the text, "
                "and recording those image x image maps is not supported: turn self_attention off on Attention "
                "Store (the word maps are recorded either way).")
        level_number, window = model_family.check_level(LEVELS[level]), Window(start, end)
        store = MapAccumulator(level_number, window)
        self_store = MapAccumulator(level_number, window) if self_attention else None
        recorder = (state.recorder or Recorder()).extended(store=store, self_store=self_store)
        state = replace(state, recorder=recorder)
        patched, positive, out_latent = finish(model, state, width, height, latent)
        if self_attention:  # refused here, before sampling; the sampler checks again for another latent
            latent_h, latent_w = out_latent["samples"].shape[-2:]
            check_self_map_pixels(math.ceil(latent_h / level_number) * math.ceil(latent_w / level_number))
        record = AttentionRecord(state.recorder, word_tokenizer(clip, model_family.text_key))
        return patched, positive, out_latent, record


class ShowAttention:
    """Draw recorded attention: per-token heatmaps, word masks, and the local-blend masks used."""

    SEARCH_ALIASES = ["heatmap", "attention map", "show attention", "word mask", "visualize attention", "p2p",
                      "prompt to prompt"]
    DESCRIPTION = ("Shows what an AttentionStore or LocalBlendMask recorded during sampling: one heatmap per token of "
                   "a row's prompt over that row's image, a MASK per chosen word, the local-blend mask each "
                   "edited row used, and the principal components of the row's self-attention maps.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("heatmaps", "word_masks", "blend_masks", "self_components")
    OUTPUT_TOOLTIPS = (
        "One image per token of the row's prompt: its attention over the row's image, with the token under it.",
        "One mask per word in 'words' (its attention, scaled to 0..1), at the image's size.",
        "The local-blend mask of each edited row at the last step (white = edited), or black without a blend.",
        "The top principal components of the row's averaged self-attention maps (the regions the model treats "
        "as one object), needs self_attention on in Attention Store; otherwise one tile saying so.",
    )
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "attention": ("ATTENTION_STORE", {"tooltip": "From AttentionStore or LocalBlendMask."}),
                "images": ("IMAGE", {"tooltip": "The images decoded from the sampler that used that model (so this "
                                                "node runs after sampling); heatmaps are drawn over them."}),
                "row": ("INT", {"default": 0, "min": 0, "max": 64,
                                "tooltip": "Which prompt row to show: 0 is the source, 1 the first edit, ..."}),
                "words": ("STRING", {"default": "",
                                     "tooltip": "Words of that row's prompt to output as masks, separated by commas."}),
                "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "How strongly the heatmap covers the image."}),
                "components": ("INT", {"default": 10, "min": 1, "max": 64,
                                       "tooltip": "How many self-attention components to show (the notebook "
                                                  "shows 10), strongest first."}),
            },
        }

    def show(self, attention: AttentionRecord, images: torch.Tensor, row: int, words: str, opacity: float,
             components: int = 10) -> tuple:
        maps_store = attention.maps()
        if row not in maps_store.rows():
            raise PromptToPromptError(
                f"Row {row} was not recorded; the sampled batch had rows 0 to {maps_store.rows()[-1]}.")
        prompt = attention.prompt(row)
        maps = maps_store.mean(row).float().cpu()
        image = images[min(row, images.shape[0] - 1)].float().cpu()
        size = tuple(image.shape[:2])
        tokens = prompt.content
        heat = token_heatmaps(maps, [(t.position,) for t in tokens], size)
        tiles = [label(overlay(image, h, opacity), text) for text, h in zip(prompt.token_texts(), heat)]
        names = [w.strip() for w in words.split(",") if w.strip()]
        word_masks = (token_heatmaps(maps, [prompt.find(w, attention.tokenize) for w in names], size)
                      if names else torch.zeros(1, *size))
        return (torch.stack(tiles), word_masks, blend_masks_image(attention.recorder, size),
                self_components_image(attention.recorder.self_store, row, components, size))


def label(tile: torch.Tensor, text: str) -> torch.Tensor:
    """The tile [H, W, 3] with a strip below it carrying `text`, as the paper's figures do (the font shrinks to
    fit a long label in a narrow tile). PIL's default font has no glyph for SentencePiece's word mark, which T5
    tokenizes alone before 'a': it is drawn as '_'."""
    text = text.replace(WORD_START, "_")
    height, width = tile.shape[:2]
    strip_height = max(14, height // 8)
    strip = Image.new("RGB", (width, strip_height), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    size = max(10, strip_height * 3 // 4)
    while True:  # the largest font up to the strip's that fits the tile's width, so no label is cut
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= width - 4 or size <= 6:
            break
        size -= 1
    draw.text(((width - (right - left)) / 2 - left, (strip_height - (bottom - top)) / 2 - top), text,
              fill=(255, 255, 255), font=font)
    strip_tensor = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)
    return torch.cat([tile, strip_tensor.to(tile.dtype)])


def blend_masks_image(recorder: Recorder, size: tuple[int, int]) -> torch.Tensor:
    """The last local-blend masks [edited rows, H, W] at image size, or one black mask without a blend."""
    if recorder.last_masks is None:
        return torch.zeros(1, *size)
    masks = recorder.last_masks.float().cpu()[:, None]
    return F.interpolate(masks, size=size, mode="nearest")[:, 0]


def self_components_image(store: MapAccumulator | None, row: int, count: int, size: tuple[int, int]) -> torch.Tensor:
    """The row's top self-attention components, coloured and labelled [count, H + strip, W, 3], or one tile
    telling how to record them."""
    if store is None or row not in store.rows():
        return label(torch.zeros(*size, 3), "turn on self_attention in Attention Store")[None]
    parts = self_attention_components(store.mean(row).float().cpu(), count, size)
    return torch.stack([label(colorize(part), f"component {i + 1}") for i, part in enumerate(parts)])


NODE_CLASS_MAPPINGS = {"AttentionStore": AttentionStore, "ShowAttention": ShowAttention}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AttentionStore": "Prompt-to-Prompt Attention Store",
    "ShowAttention": "Prompt-to-Prompt Show Attention",
}
