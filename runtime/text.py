"""Prompts through ComfyUI's own CLIP: token layout for the edit maths, and the batched conditioning.

Tokenization is ComfyUI's (the same call sampling uses), so the columns the edits touch are the columns
the model sees, including `(word:1.2)` weights, long prompts and textual-inversion embeddings.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable

import folder_paths
import torch
from comfy import sd1_clip

from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.tokens import PromptTokens, TokenizeFn, Tokenizers, locate_words

CLIP_KEYS = ("l", "h", "g")
"""CLIP-BPE tokenizers: SD1.x 'l', SD2.x 'h' (OpenCLIP), SDXL 'g' and 'l' (same layout, 'l' is used)."""


def _sd_tokenizer(clip, key: str) -> sd1_clip.SDTokenizer:
    return getattr(clip.tokenizer, f"clip_{key}", None) or getattr(clip.tokenizer, key)


def _word_tokenizer(tokenizer: sd1_clip.SDTokenizer) -> TokenizeFn:
    """Tokenize one word exactly as SDTokenizer.tokenize_with_weights does, keeping the BPE texts."""
    end = -1 if tokenizer.tokenizer_adds_end_token else None

    def tokenize(text: str) -> list[tuple[int, str]]:
        ids = tokenizer.tokenizer(text)["input_ids"][tokenizer.tokens_start:end]
        return list(zip(ids, tokenizer.tokenizer.convert_ids_to_tokens(ids)))
    return tokenize


def _pieces(text: str, tokenizer: sd1_clip.SDTokenizer) -> list[str]:
    """The texts ComfyUI tokenizes one by one (weighted segments, split before embeddings), in order.

    As SDTokenizer.tokenize_with_weights does, a piece 'embedding:name more words' becomes the embedding
    and, when the embedding exists, the words after it as a piece of their own. Embeddings ComfyUI cannot
    use are refused here, before ComfyUI tokenizes: a missing one it would drop with a warning in its log
    (the prompt sampled would not be the one in the graph), a marker without a name it would crash on.
    """
    marker = tokenizer.embedding_identifier
    pieces = []
    for segment, _weight in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0):
        split = re.split(f" {marker}|\n{marker}", sd1_clip.unescape_important(segment))
        for piece in (p for p in [split[0]] + [marker + s for s in split[1:]] if p != ""):
            if not piece.startswith(marker) or tokenizer.embedding_directory is None:
                pieces.append(piece)
                continue
            name = piece[len(marker):].strip("\n")
            words = name.split()
            if not words:
                raise PromptToPromptError(
                    f"The prompt '{text}' has '{marker}' without an embedding name after it; write "
                    f"{marker}<file name> or remove it.")
            # (embedding, leftover) in ComfyUI 0.3.x; (embedding, the name it looked up, leftover) since.
            found = tokenizer._try_get_embedding(name)
            embedding, used, leftover = found[0], found[1] if len(found) == 3 else words[0], found[-1]
            if embedding is None:
                raise PromptToPromptError(
                    f"The textual-inversion embedding '{used}' of the prompt '{text}' was not found in "
                    f"{_folders(tokenizer.embedding_directory)}. Put its file (.safetensors, .pt or .bin) in "
                    f"ComfyUI/models/embeddings and restart ComfyUI, or correct the name after '{marker}'.")
            pieces.extend(p for p in (marker + used, leftover) if p != "")
    return pieces


def _folders(directories: str | list[str]) -> str:
    return ", ".join([directories] if isinstance(directories, str) else sorted(directories))


TextKey = str | tuple[str, ...] | None
"""Which of a CLIP's token streams lay out a model's context (families.py): one stream, the CLIP's own CLIP-BPE
stream (None), or streams one after the other (SD3: CLIP's chunks, then T5's), of those the CLIP has loaded."""


def _streams(clip, key: TextKey) -> list[str]:
    """The streams of ``key`` as this CLIP encodes them: a joined key keeps only the streams whose encoders are
    loaded (SD3 runs with or without T5, with CLIP-L, CLIP-G or both: their chunks lie alike, as 'l' lays them)."""
    if not isinstance(key, tuple):
        return [_clip_key(clip, key)]
    encoders = clip.cond_stage_model
    loaded = {"l": any(getattr(encoders, name, None) is not None for name in ("clip_l", "clip_g")),
              "t5xxl": getattr(encoders, "t5xxl", None) is not None}
    streams = [_clip_key(clip, k) for k in key if loaded.get(k, True)]
    if not streams:
        raise PromptToPromptError("This CLIP has none of the text encoders the model reads: connect its own.")
    return streams


def _clip_key(clip, key: str | None) -> str:
    """The token stream that lays out the model's context: ``key`` (the model family's, see families.py), or
    the CLIP's own CLIP-BPE stream."""
    keys = set(clip.tokenize("", return_word_ids=True))
    if key is not None:
        if key not in keys:
            raise PromptToPromptError(
                f"This CLIP has the {', '.join(sorted(keys))} text encoder(s), but the model reads {key} text: "
                "connect the text encoders made for this model (for Flux, DualCLIPLoader with type flux, or the "
                "checkpoint's own CLIP).")
        return key
    for key in CLIP_KEYS:
        if key in keys:
            return key
    raise PromptToPromptError(
        f"This CLIP ({', '.join(sorted(keys))} text encoder) is not supported: Prompt-to-Prompt works with "
        "the CLIP text encoders of SD1.x, SD2.x and SDXL checkpoints and the T5 of Flux.")


def word_tokenizer(clip, key: TextKey = None) -> Tokenizers:
    """The per-word tokenizer(s) used to look words up in prompts of this CLIP (``key``: see `TextKey`)."""
    tokenizers = tuple(_word_tokenizer(_sd_tokenizer(clip, k)) for k in _streams(clip, key))
    return tokenizers if isinstance(key, tuple) else tokenizers[0]


def tokenize_prompt(clip, text: str, key: TextKey = None) -> PromptTokens:
    """Where each word of `text` lands in the context this CLIP encodes it to (``key``: see `TextKey`)."""
    streams = _streams(clip, key)
    tokens = functools.cache(lambda: clip.tokenize(text, return_word_ids=True))
    parts = [_locate(text, lambda k=k: tokens()[k], _sd_tokenizer(clip, k)) for k in streams]
    return PromptTokens.joined(text, parts) if isinstance(key, tuple) else parts[0]


def tokenize_for_preview(text: str, encoder: str = "clip") -> tuple[PromptTokens, Tokenizers]:
    """A prompt's layout on the tokenizers of a text ``encoder``, without a loaded checkpoint: "clip" (ComfyUI's
    CLIP-L tokenizer: SD1.x, SD2.x and SDXL share its BPE vocabulary and chunk layout, SD2 and SDXL's G only pad
    with 0 instead of the end token), "t5" (Flux's T5 tokenizer, padded as Flux pads) or "sd3" (CLIP's chunks,
    then T5's tokens, padded as SD3 pads: the context SD3 reads, stream by stream). The words and their tokens are
    those sampling will see."""
    tokenizers = _preview_tokenizers(encoder)
    parts = [_locate(text, lambda t=t: t.tokenize_with_weights(text, return_word_ids=True), t) for t in tokenizers]
    if len(parts) == 1:
        return parts[0], _word_tokenizer(tokenizers[0])
    return PromptTokens.joined(text, parts), tuple(_word_tokenizer(t) for t in tokenizers)


@functools.cache
def _preview_tokenizers(encoder: str) -> tuple[sd1_clip.SDTokenizer, ...]:
    """The encoder's tokenizer(s), looking up textual-inversion embeddings where checkpoint loaders do."""
    embeddings = folder_paths.get_folder_paths("embeddings")
    if encoder == "t5":
        from comfy.text_encoders.flux import T5XXLTokenizer

        return (T5XXLTokenizer(embedding_directory=embeddings),)
    clip = sd1_clip.SDTokenizer(embedding_directory=embeddings)
    if encoder == "sd3":
        from comfy.text_encoders.sd3_clip import T5XXLTokenizer

        return clip, T5XXLTokenizer(embedding_directory=embeddings)
    return (clip,)


def _locate(text: str, stream: Callable[[], list], tokenizer: sd1_clip.SDTokenizer) -> PromptTokens:
    """Words of `text` in the token stream ComfyUI makes of it (tokenized once the pieces are checked)."""
    pieces = _pieces(text, tokenizer)
    return locate_words(text, stream(), pieces, _word_tokenizer(tokenizer))


def encode_prompt(clip, text: str, model) -> tuple[torch.Tensor, dict]:
    """One prompt as CLIPTextEncode encodes it: (cond [1, 77k, D], extra dict with pooled_output).

    Refuses an encoding `model` cannot attend to (another checkpoint's CLIP): sampling would fail deep inside a
    cross-attention layer with a shape error that names neither input.
    """
    out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
    cond = out.pop("cond")
    check_text_width(cond, model, "The CLIP encodes prompts")
    return cond, out


def check_text_width(cond: torch.Tensor, model, subject: str) -> None:
    """Refuse text conditioning `model` cannot attend to, naming `subject` (where it came from) and the fix."""
    config = model.model.model_config.unet_config
    width = config.get("context_dim", config.get("context_in_dim"))
    if width is not None and cond.shape[-1] != width:
        raise PromptToPromptError(
            f"{subject} {cond.shape[-1]} values wide, but this model attends to text {width} wide: connect the "
            "CLIP of the same checkpoint as the MODEL.")


def batch_conditioning(rows: list[tuple[torch.Tensor, dict]]) -> list:
    """Stack per-prompt encodings into one CONDITIONING entry whose row i is prompt i.

    Prompts of different chunk counts are tiled to a common length, as ComfyUI itself does when it
    batches contexts: repeating a context changes no attention output, so the source row still equals
    plain sampling of the source prompt.
    """
    length = math.lcm(*(cond.shape[1] for cond, _ in rows))
    conds = [cond.repeat(1, length // cond.shape[1], 1) for cond, _ in rows]
    extra = {}
    pooled = [e.get("pooled_output") for _, e in rows]
    if all(p is not None for p in pooled):
        extra["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(conds), extra]]
