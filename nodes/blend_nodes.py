"""LocalBlendMask: keep each edited row identical to the source outside the region of its words."""

from __future__ import annotations

from dataclasses import replace

from ..p2p_core.blend import BlendSpec
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.store import MapAccumulator, Recorder
from ..p2p_core.tokens import PromptTokens, TokenizeFn
from ..runtime.families import family
from ..runtime.patch import KEY, EditPatch, EditState
from ..runtime.text import word_tokenizer
from .edit_nodes import CATEGORY
from .store_nodes import LEVELS, AttentionRecord, level_input


def split_words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def edit_word_lists(text: str, rows: int) -> list[list[str]]:
    """'dog' -> the same words for every edited row; 'dog; horse' -> one entry per edited row."""
    entries = [split_words(e) for e in text.split(";")] if text.strip() else [[]]
    if len(entries) == 1:
        return entries * rows
    if len(entries) != rows:
        raise PromptToPromptError(
            f"edit_words has {len(entries)} entries separated by ';' but there are {rows} edited rows: give one "
            "entry per edited row, or a single entry for all of them.")
    return entries


def columns(prompt: PromptTokens, words: list[str], tokenize: TokenizeFn) -> tuple[int, ...]:
    return tuple(sorted({p for w in words for p in prompt.find(w, tokenize)}))


def subtract_columns(prompts: tuple[PromptTokens, ...], words: list[str],
                     tokenize: TokenizeFn) -> tuple[tuple[int, ...], ...]:
    """Each subtract word counts in every row whose prompt has it, and must be in at least one."""
    found: list[set[int]] = [set() for _ in prompts]
    for word in words:
        hits = 0
        for i, prompt in enumerate(prompts):
            try:
                found[i].update(prompt.find(word, tokenize))
                hits += 1
            except PromptToPromptError:
                continue
        if not hits:
            raise PromptToPromptError(f"The subtract word '{word}' is in none of the prompts; check its spelling.")
    return tuple(tuple(sorted(f)) for f in found)


class LocalBlendMask:
    """Local blend (paper section 3.3): edit only where the chosen words are."""

    SEARCH_ALIASES = ["local blend", "local edit", "mask", "p2p", "prompt to prompt", "prompt-to-prompt"]
    DESCRIPTION = ("Local blend: builds a mask per edited row from the cross-attention maps of chosen words (the "
                   "source's and the edit's, united) and keeps the edited image equal to the source outside it. "
                   "Connect after the last edit node; see the masks with Show Attention.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "ATTENTION_STORE")
    RETURN_NAMES = ("model", "attention")
    OUTPUT_TOOLTIPS = (
        "The edit model with local blending (a clone). Use it with the edit node's positive and latent.",
        "The recorded maps and the blend masks used, for Show Attention.",
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL output of the last Replace / Refine / Reweight node."}),
                "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint, to find the words."}),
                "source_words": ("STRING", {"default": "cat",
                                            "tooltip": "Words of the source prompt whose region may change, "
                                                       "separated by commas (e.g. the word being replaced)."}),
                "edit_words": ("STRING", {"default": "dog",
                                          "tooltip": "Words of the edited prompt whose region may change. One "
                                                     "entry for every edited row, or one per row separated by ';' "
                                                     "(e.g. 'dog; horse')."}),
                "threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 0.99, "step": 0.01,
                                        "tooltip": "Mask where a word's normalised attention is above this. Lower "
                                                   "grows the edited region; 0 edits everywhere. Below 1: the "
                                                   "normalised maps peak at 1, so 1 would mask nothing and undo "
                                                   "the edit."}),
                "start": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 0.99, "step": 0.01,
                                    "tooltip": "Fraction of the steps after which blending starts (the null-text "
                                               "notebook's 0.2), so the edit can first take shape. Below 1, so "
                                               "at least the last step blends."}),
                "level": level_input(),
            },
            "optional": {
                "subtract_words": ("STRING", {"default": "",
                                              "tooltip": "Words whose region must stay as the source even inside "
                                                         "the mask (e.g. 'bicycle'), separated by commas."}),
            },
        }

    def apply(self, model, clip, source_words: str, edit_words: str, threshold: float, start: float, level: str,
              subtract_words: str = "") -> tuple:
        state: EditState | None = model.get_attachment(KEY)
        if state is None or not state.plan.rows:
            raise PromptToPromptError(
                "Local blend needs an edit to blend: connect LocalBlendMask's model input to the MODEL output of a "
                "Replace, Refine or Reweight node.")
        plan, tokenize = state.plan, word_tokenizer(clip, family(model).text_key)
        word_lists = [split_words(source_words)] + edit_word_lists(edit_words, len(plan.rows))
        spec = BlendSpec(
            words=tuple(columns(p, w, tokenize) for p, w in zip(plan.prompts, word_lists)),
            subtract=subtract_columns(plan.prompts, split_words(subtract_words), tokenize),
            threshold=threshold, subtract_threshold=threshold, start=start,
            level=family(model).check_level(LEVELS[level]))
        recorder = (state.recorder or Recorder()).extended(blend=MapAccumulator(spec.level))
        state = replace(state, recorder=recorder, blend=spec)
        return EditPatch.install(model, state), AttentionRecord(recorder, tokenize)


NODE_CLASS_MAPPINGS = {"LocalBlendMask": LocalBlendMask}
NODE_DISPLAY_NAME_MAPPINGS = {"LocalBlendMask": "Prompt-to-Prompt Local Blend"}
