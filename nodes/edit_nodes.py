"""ReplaceEdit, RefineEdit and Reweight: thin nodes over p2p_core.

Each node turns its widgets into a row edit, adds it to the plan carried by the incoming MODEL (or starts
one), and returns the patched MODEL clone, a positive CONDITIONING holding [source, edit 1..n] and a LATENT
of n + 1 rows sharing one noise, ready for a stock KSampler, KSamplerAdvanced or SamplerCustomAdvanced.
"""

from __future__ import annotations

import torch

from ..p2p_core.edits import EditPlan
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.plan import (
    check_source,
    edit_row,
    require_words,
    reweight_factors,
    reweight_row,
)
from ..p2p_core.schedule import Window, parse_word_windows
from ..p2p_core.tokens import PromptTokens
from ..runtime.families import SELF_LAYER_CHOICES, Family, family
from ..runtime.patch import INVERSION_KEY, KEY, EditPatch, EditState
from ..runtime.text import batch_conditioning, encode_prompt, tokenize_prompt, word_tokenizer
from ..runtime.wiring import same_rows

CATEGORY = "prompt-to-prompt"
MAX_RESOLUTION = 16384
RETURN_TYPES = ("MODEL", "CONDITIONING", "LATENT")
RETURN_NAMES = ("model", "positive", "latent")
OUTPUT_TOOLTIPS = (
    "The model with attention control installed (a clone; the input model is unchanged). Sample with it.",
    "Positive conditioning with one row per prompt: the source first, then each edit. Use your own negative.",
    "A latent batch with one row per prompt, all sharing one noise, so every row starts from the same picture.",
)


def _inputs(prompts: dict, extra_required: dict | None = None) -> dict:
    """The widgets every edit node shares, around the node's own prompt inputs."""
    return {
        "required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, or the MODEL output of another edit "
                                           "node to add this edit to the same batch."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint; it encodes and tokenizes the prompts."}),
            **prompts,
            **(extra_required or {}),
            "cross_replace_steps": ("FLOAT", {
                "default": 0.8, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Fraction of the steps in which the edited prompt uses the source's cross-attention "
                           "maps. Higher keeps more of the source layout; lower lets the edit change shapes."}),
            "self_replace_steps": ("FLOAT", {
                "default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Fraction of the steps in which the edited image shares the source's self-attention "
                           "(its geometry). Higher preserves more structure."}),
            "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                              "tooltip": "Image width, used when no latent is connected."}),
            "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                               "tooltip": "Image height, used when no latent is connected."}),
        },
        "optional": {
            "latent": ("LATENT", {"tooltip": "Optional starting latent of one image (e.g. an inverted photo); "
                                             "it is repeated once per prompt. Default: an empty latent."}),
            "self_attention_layers": (list(SELF_LAYER_CHOICES), {
                "default": "auto",
                "tooltip": "Layers that share the source's self-attention. auto: layers a quarter of the "
                           "latent's side and smaller for generated images, half and smaller for an inverted photo "
                           "(at 512x512 the official code's 16x16 and 32x32; it counts pixels, so at 256 or 768 it "
                           "picks other layers). all: every layer (locks fine structure; shape changes get "
                           "weaker), half, quarter: those layers and smaller. Flux and SD3 share the source's image "
                           "queries and keys by block: auto and all, every block (Exploring MM-DiT's default); on "
                           "Flux also double blocks, single blocks, or vital blocks (Stable Flow's 4 double and 5 "
                           "single blocks that shape the picture most)."}),
        },
    }


def _prompt(default: str, tooltip: str) -> tuple:
    return ("STRING", {"multiline": True, "default": default, "tooltip": tooltip})


SOURCE_PROMPT = _prompt("a cat riding a bicycle",
                        "The prompt of the source image. In a chained edit leave it empty or repeat the first one.")
WORD_WINDOWS = ("STRING", {
    "multiline": False, "default": "",
    "tooltip": "Optional per-word cross-attention windows for words of the target prompt, e.g. "
               "'dog: 0.4, tail: 0.2-0.6' (an end fraction, or start-end)."})


def inverted(model) -> bool:
    """Whether the model carries a real-image inversion (NullTextInvert or FlowInvert before the edit nodes)."""
    return model.get_attachment(INVERSION_KEY) is not None


def start_or_continue(model, clip, source_prompt: str, role: str = "source prompt",
                      fix: str = "write the prompt the edit should start from") -> EditState:
    """The plan carried by `model`, or a new one starting from `source_prompt` (by default, after
    NullTextInvert, the prompt the image was inverted with). `role` and `fix` name the node's prompt input
    and what to write in it, for the message about an empty one."""
    state: EditState | None = model.get_attachment(KEY)
    if state is not None:
        check_source(state.plan, source_prompt)
        return state
    inversion = model.get_attachment(INVERSION_KEY)
    if inversion is not None:
        if source_prompt.strip() and source_prompt.strip() != inversion.prompt.strip():
            raise PromptToPromptError(
                f"The source prompt '{source_prompt}' differs from the prompt the image was inverted with "
                f"('{inversion.prompt}'); leave the source prompt empty to use it, or make it the same.")
        source_prompt = inversion.prompt
        if not same_rows(encode_prompt(clip, source_prompt, model)[0], inversion.positive):
            raise PromptToPromptError(
                f"{inversion.node} inverted the image with a positive conditioning that is not its prompt "
                f"('{inversion.prompt}') encoded by this CLIP, but the edit's source row is that prompt, so the edit "
                f"would not start from the photo. Disconnect {inversion.node}'s positive input (or connect CLIP Text "
                "Encode of the same prompt with the same CLIP).")
    key = family(model).text_key  # fails early, with the model family in the message
    source = require_words(tokenize_prompt(clip, source_prompt, key), role, fix)
    return EditState(EditPlan(source), (encode_prompt(clip, source_prompt, model),))


def check_same_length(model_family: Family, source: PromptTokens, target: PromptTokens) -> PromptTokens:
    """``target``, if a joint model can sample it beside ``source``: there text keys share the softmax with the
    image's, so ComfyUI's way of batching contexts of different lengths (repeating the shorter) would change the
    picture, where a UNet's cross-attention is unchanged by it."""
    if model_family.joint and target.length != source.length:
        raise PromptToPromptError(
            f"On {model_family.name} the source and edited prompts must encode to the same number of text tokens, "
            f"but '{source.text}' gives {source.length} and '{target.text}' gives {target.length}: {model_family.name} "
            "pads every prompt to a common length, and one of these is longer. Shorten the longer prompt.")
    return target


def finish(model, state: EditState, width: int, height: int, latent: dict | None) -> tuple:
    """Install the state on a clone and build the batched conditioning and latent."""
    patched = EditPatch.install(model, state)
    rows = state.plan.num_rows
    return patched, batch_conditioning(list(state.encodings)), edit_latent(model, latent, rows, width, height)


def edit_latent(model, latent: dict | None, rows: int, width: int, height: int) -> dict:
    """One image latent repeated to `rows` rows with a shared batch index, so every row gets the same noise.

    After NullTextInvert the latent must be the inverted one: an empty latent, or the photo's own, would
    sample another picture without a word.
    """
    if latent is not None:
        check_image_latent(model, latent["samples"])
    inversion = model.get_attachment(INVERSION_KEY)
    if inversion is not None:
        if latent is None:
            raise PromptToPromptError(
                "This model carries an inverted photo, but this node's latent input is not connected, so it would "
                f"sample an empty latent instead of the photo. Connect {inversion.node}'s LATENT output to this node's "
                "latent input (in a chain of edit nodes, the LATENT of the node before).")
        inversion.check_latent(latent["samples"])
    if latent is None:
        channels = model.get_model_object("latent_format").latent_channels
        samples, batch_index, extra = torch.zeros([1, channels, height // 8, width // 8]), 0, {}
    else:
        samples = latent["samples"]
        if samples.shape[0] > 1 and not torch.equal(samples[:1].expand_as(samples), samples):
            raise PromptToPromptError(
                f"The latent input holds {samples.shape[0]} different images; Prompt-to-Prompt edits one image. "
                "Connect a latent of batch size 1 (it is repeated once per prompt).")
        samples = samples[:1]
        batch_index = latent.get("batch_index", [0])[0]
        extra = {k: v for k, v in latent.items() if k not in ("samples", "batch_index")}
    return {**extra, "samples": samples.repeat(rows, 1, 1, 1), "batch_index": [batch_index] * rows}


def check_image_latent(model, samples: torch.Tensor) -> None:
    """Refuse a latent this model cannot sample (a video latent, another model family's channels) here, naming
    it, rather than in a convolution deep inside the UNet."""
    channels = model.get_model_object("latent_format").latent_channels
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise PromptToPromptError(
            f"The latent has shape {tuple(samples.shape)}, but this model samples image latents of {channels} "
            f"channels, [batch, {channels}, height/8, width/8]: connect an Empty Latent Image or a VAE Encode made "
            "with this checkpoint's VAE (a video latent, or another model family's, does not fit).")


class _EditNode:
    CATEGORY = CATEGORY
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS
    FUNCTION = "apply"
    KIND = ""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        spec = _inputs({"source_prompt": SOURCE_PROMPT, "target_prompt": cls.TARGET_PROMPT})
        spec["optional"]["word_windows"] = WORD_WINDOWS
        return spec

    def apply(self, model, clip, source_prompt: str, target_prompt: str, cross_replace_steps: float,
              self_replace_steps: float, width: int, height: int, latent: dict | None = None,
              word_windows: str = "", self_attention_layers: str = "auto") -> tuple:
        state = start_or_continue(model, clip, source_prompt)
        key = family(model).text_key
        target = check_same_length(family(model), state.plan.source, tokenize_prompt(clip, target_prompt, key))
        row = edit_row(self.KIND, state.plan.source, target, Window(0.0, cross_replace_steps),
                       Window(0.0, self_replace_steps), parse_word_windows(word_windows), word_tokenizer(clip, key),
                       family(model).self_sharing_layers(self_attention_layers, inverted(model)))
        state = state.with_row(state.plan.add_row(row), encode_prompt(clip, target_prompt, model))
        return finish(model, state, width, height, latent)


class ReplaceEdit(_EditNode):
    """Word swap: the edited prompt borrows the source's attention, word for word."""

    SEARCH_ALIASES = ["swap", "word swap", "replace word", "p2p", "prompt to prompt", "prompt-to-prompt",
                      "edit prompt", "cross attention"]
    DESCRIPTION = ("Prompt-to-Prompt word swap ('a cat riding a bicycle' -> 'a dog riding a bicycle'): samples the "
                   "source and the edited prompt in lockstep and gives the edited prompt the source's attention "
                   "maps, so only the swapped thing changes. Chain edit nodes to add more edited rows.")
    KIND = "replace"
    TARGET_PROMPT = _prompt("a dog riding a bicycle",
                            "The edited prompt: the source with words swapped one for one (same word count).")


class RefineEdit(_EditNode):
    """Refinement: added words get their own attention, the rest follows the source."""

    SEARCH_ALIASES = ["refine", "add words", "add a word", "p2p", "prompt to prompt", "prompt-to-prompt",
                      "edit prompt"]
    DESCRIPTION = ("Prompt-to-Prompt refinement ('a house' -> 'a wooden house'): aligns the two prompts' tokens; "
                   "shared tokens take the source's attention maps, added words keep their own.")
    KIND = "refine"
    TARGET_PROMPT = _prompt("a wooden house in the snow",
                            "The edited prompt: the source with words added (or removed).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        spec = super().INPUT_TYPES()
        spec["required"]["source_prompt"] = ("STRING", {**SOURCE_PROMPT[1], "default": "a house in the snow"})
        return spec


class Reweight:
    """Scale chosen words' attention, alone or on top of the last edit."""

    SEARCH_ALIASES = ["reweight", "word weight", "attention weight", "emphasis", "p2p", "prompt to prompt",
                      "prompt-to-prompt"]
    DESCRIPTION = ("Prompt-to-Prompt attention reweighting: scale how much chosen words act on the image "
                   "(e.g. 'fluffy' x3, x0.5 to weaken it, or negative to push it away), during the "
                   "cross-attention window. Alone it adds a row that repeats the source prompt; after a "
                   "Replace/Refine edit it reweights that edit.")
    CATEGORY = CATEGORY
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return _inputs(
            {"source_prompt": ("STRING", {**SOURCE_PROMPT[1], "default": "a fluffy teddy bear"})},
            {"words": ("STRING", {"default": "fluffy",
                                  "tooltip": "Words to reweight, separated by commas (every occurrence counts)."}),
             "scale": ("FLOAT", {"default": 2.0, "min": -10.0, "max": 10.0, "step": 0.1,
                                 "tooltip": "Attention scale for those words: above 1 strengthens, between 0 and 1 "
                                            "weakens, below 0 pushes the word away (the paper uses -2..2)."}),
             "apply_to": (["last edit", "new row"], {
                 "default": "last edit",
                 "tooltip": "'last edit': reweight the edit before this node (a new row if there is none); as the "
                            "official chained controller, this node's cross/self steps and layers then govern that "
                            "row. 'new row': add a row that repeats the source prompt, reweighted."})})

    def apply(self, model, clip, source_prompt: str, words: str, scale: float, apply_to: str,
              cross_replace_steps: float, self_replace_steps: float, width: int, height: int,
              latent: dict | None = None, self_attention_layers: str = "auto") -> tuple:
        state = start_or_continue(model, clip, source_prompt)
        plan = state.plan
        cross, self_window = Window(0.0, cross_replace_steps), Window(0.0, self_replace_steps)
        self_layers = family(model).self_sharing_layers(self_attention_layers, inverted(model))
        names = [w.strip() for w in words.split(",") if w.strip()]
        tokenize = word_tokenizer(clip, family(model).text_key)
        if apply_to == "last edit" and plan.rows:
            last = plan.rows[-1]
            factors = reweight_factors(last.prompt, names, scale, tokenize)
            plan = plan.replace_last_row(last.with_reweight(factors, cross, self_window, self_layers))
            state = state.with_row(plan, None)
        else:
            row = reweight_row(plan.source, cross, self_window, self_layers)
            row = row.with_reweight(reweight_factors(row.prompt, names, scale, tokenize), cross, self_window,
                                    self_layers)
            state = state.with_row(plan.add_row(row), state.encodings[0])
        return finish(model, state, width, height, latent)


NODE_CLASS_MAPPINGS = {"ReplaceEdit": ReplaceEdit, "RefineEdit": RefineEdit, "Reweight": Reweight}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReplaceEdit": "Prompt-to-Prompt Replace (word swap)",
    "RefineEdit": "Prompt-to-Prompt Refine (add words)",
    "Reweight": "Prompt-to-Prompt Reweight",
}
