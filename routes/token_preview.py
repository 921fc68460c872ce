"""The token preview the front end shows on edit nodes, served by a small route on ComfyUI's server.

The page posts a node's prompts and words; the answer lists each prompt's tokens (as the sampler will see
them) with what the edit does to each, plus warnings for words that are not in a prompt and the error an
edit would raise. The maths is p2p_core's, so the preview and the sampling cannot disagree.

The route is open to anything that can reach the server, and it shares the server's event loop with the
queue and the UI: a payload that is not the documented shape gets a 400 with a message, one beyond what a
prompt can usefully hold a 413, and the work runs on a thread of its own so other requests are served
meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from ..nodes.blend_nodes import edit_word_lists, split_words, subtract_columns
from ..p2p_core.align import refine_mapping, swap_mapping
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.schedule import parse_word_windows
from ..p2p_core.tokens import MAX_CHUNKS, PromptTokens, Tokenizers
from ..runtime.text import tokenize_for_preview

ROUTE = "/prompt_to_prompt/tokens"
KINDS = ("replace", "refine", "reweight", "blend")
ENCODERS = {"clip": ("",), "t5": ("",), "sd3": ("CLIP", "T5")}
"""Text encoders the preview tokenizes for, with the names of their streams in the context: the CLIP of
SD1.x/SD2.x/SDXL, Flux's T5, SD3's CLIP chunks then its T5 tokens (the front end tells them apart by the loaders
upstream of the node)."""
MAX_TARGETS = 64
"""Edited rows of one chain (Show Attention's row input goes up to 64 too)."""
MAX_TEXT_CHARACTERS = MAX_CHUNKS * 75 * 8
"""Characters of one text field: room for the longest prompt an edit takes (MAX_CHUNKS chunks of 75
tokens) at 8 characters a token."""
MAX_WORDS = 64
"""Words of one word-list field (words, source/edit/subtract words, word windows): far more than an edit names,
and a bound on the preview's work, which looks every word up in every row (64 rows of the longest prompts)."""
MAX_BODY_BYTES = 256 * 1024
"""A whole request: far more than a chain of long prompts, far less than what would hold the server."""

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt-to-prompt-preview")
"""One thread: previews queue behind each other instead of filling the event loop's default pool."""


class RequestError(PromptToPromptError):
    """A request the route refuses, with the HTTP status to answer (400 malformed, 413 too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise RequestError(413, f"The request is {size} bytes; the token preview takes at most {MAX_BODY_BYTES}.")


@dataclass(frozen=True)
class PreviewRequest:
    """The documented payload: what one node shows (see web/token_preview.js)."""

    kind: str = "replace"
    source: str = ""
    targets: tuple[str, ...] = ()
    word_windows: str = ""
    words: str = ""
    source_words: str = ""
    edit_words: str = ""
    subtract_words: str = ""
    encoder: str = "clip"

    @classmethod
    def from_json(cls, body: bytes) -> PreviewRequest:
        """Parse and check a request body; fields not listed here are ignored."""
        check_size(len(body))
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than Python's stack
            raise RequestError(400, f"The body is not JSON the preview can read ({type(error).__name__}); send "
                                    "a JSON object.") from None
        if not isinstance(payload, dict):
            raise RequestError(400, f"Send a JSON object with the fields {[f.name for f in fields(cls)]}, not "
                                    f"{type(payload).__name__}.")
        values = {f.name: payload[f.name] for f in fields(cls) if f.name in payload}
        targets = values.pop("targets", [])
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise RequestError(400, "'targets' must be a list of strings.")
        for name, value in values.items():
            if not isinstance(value, str):
                raise RequestError(400, f"'{name}' must be a string, not {type(value).__name__}.")
        if len(targets) > MAX_TARGETS:
            raise RequestError(413, f"{len(targets)} targets; the preview shows at most {MAX_TARGETS} rows.")
        for name, text in [*values.items(), *(("targets", t) for t in targets)]:
            if len(text) > MAX_TEXT_CHARACTERS:
                raise RequestError(413, f"'{name}' is longer than {MAX_TEXT_CHARACTERS} characters; Prompt-to-Prompt "
                                        f"takes prompts of up to {MAX_CHUNKS} chunks of 75 tokens.")
        for name in ("words", "source_words", "edit_words", "subtract_words", "word_windows"):
            count = len(_words(values.get(name, "")))
            if count > MAX_WORDS:
                raise RequestError(413, f"'{name}' lists {count} words; the preview looks up at most {MAX_WORDS} "
                                        "per field (an edit names a few).")
        if values.get("kind", "replace") not in KINDS:
            raise RequestError(400, f"'kind' must be one of {list(KINDS)}.")
        if values.get("encoder", "clip") not in ENCODERS:
            raise RequestError(400, f"'encoder' must be one of {list(ENCODERS)}.")
        return cls(**values, targets=tuple(targets))


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace(";", ",").split(",") if w.strip()]


def _rows(label: str, prompt: PromptTokens, status: dict[int, str], marks: dict[int, set[str]],
          streams: tuple[str, ...]) -> list[dict]:
    """A prompt's line in the preview, or one line per stream of a joined context (SD3: its CLIP, then its T5)."""
    parts = prompt.parts or ((0, prompt),)
    return [_row(f"{label} {stream}".strip(), part, offset, status, marks) for (offset, part), stream in
            zip(parts, streams)]


def _row(label: str, prompt: PromptTokens, offset: int, status: dict[int, str], marks: dict[int, set[str]]) -> dict:
    texts = iter(prompt.token_texts())
    tokens = []
    for word in prompt.words:
        for i, token in enumerate(word.tokens):
            tokens.append({"text": next(texts), "word": word.text, "first": i == 0,
                           "status": status.get(offset + token.position, "kept"),
                           "marks": sorted(marks.get(offset + token.position, ()))})
    return {"label": label, "tokens": tokens}


def _mark(prompt: PromptTokens, words: list[str], mark: str, tokenize: Tokenizers, marks: dict[int, set[str]],
          warnings: list[str]) -> None:
    for word in words:
        try:
            for position in prompt.find(word, tokenize):
                marks.setdefault(position, set()).add(mark)
        except PromptToPromptError as error:
            warnings.append(str(error))


def _edit_statuses(kind: str, source: PromptTokens, target: PromptTokens) -> tuple[dict[int, str], dict[int, str]]:
    """Per token position: what the edit does in the source and in the target."""
    if kind == "replace":
        mapping = swap_mapping(source, target)
        src, tgt = {}, {}
        for s_word, t_word in zip(source.words, target.words):
            if s_word.ids != t_word.ids:
                src.update(dict.fromkeys(s_word.positions, "swapped"))
                tgt.update(dict.fromkeys(t_word.positions, "swapped"))
        return src, tgt
    mapping = refine_mapping(source, target)
    used = set(mapping.matrix.nonzero()[:, 0].tolist())
    src = {p: "removed" for w in source.words for p in w.positions if p not in used}
    tgt = {p: "inserted" for w in target.words for p in w.positions if not bool(mapping.mapped[p])}
    return src, tgt


def preview(request: PreviewRequest) -> dict[str, Any]:
    """The preview of one node: kind is replace, refine, reweight or blend (see the front end)."""
    kind = request.kind
    warnings: list[str] = []
    error = None
    try:
        source, tokenize = tokenize_for_preview(request.source, request.encoder)
        targets = [tokenize_for_preview(t, request.encoder)[0] for t in request.targets]
    except PromptToPromptError as failure:  # a prompt the edit node would refuse (too long, missing embedding)
        return {"rows": [], "warnings": [], "error": str(failure)}
    source_status: dict[int, str] = {}
    target_status: list[dict[int, str]] = [{} for _ in targets]
    source_marks: dict[int, set[str]] = {}
    target_marks: list[dict[int, set[str]]] = [{} for _ in targets]
    if not source.words:
        error = "The source prompt is empty."
    try:
        if kind in ("replace", "refine") and targets and source.words:
            source_status, target_status[0] = _edit_statuses(kind, source, targets[0])
    except PromptToPromptError as failure:
        error = str(failure)
    if kind in ("replace", "refine") and targets:
        window_words = [word for word, _ in _safe_windows(request.word_windows, warnings)]
        _mark(targets[0], window_words, "window", tokenize, target_marks[0], warnings)
    if kind == "reweight":
        reweighted = targets[-1] if targets else source
        _mark(reweighted, split_words(request.words), "reweighted", tokenize,
              target_marks[-1] if targets else source_marks, warnings)
    if kind == "blend":
        _mark(source, split_words(request.source_words), "blended", tokenize, source_marks, warnings)
        try:  # LocalBlendMask's own reading of the words, so the preview warns of what the node refuses
            entries = edit_word_lists(request.edit_words, len(targets))
        except PromptToPromptError as failure:
            warnings.append(str(failure))
            entries = [[] for _ in targets]
        for target, words, marks in zip(targets, entries, target_marks):
            _mark(target, words, "blended", tokenize, marks, warnings)
        for word in split_words(request.subtract_words):
            try:
                found = subtract_columns((source, *targets), [word], tokenize)
            except PromptToPromptError as failure:
                warnings.append(str(failure))
                continue
            for marks, positions in zip([source_marks, *target_marks], found):
                for position in positions:
                    marks.setdefault(position, set()).add("subtracted")
    streams = ENCODERS[request.encoder]
    rows = _rows("source", source, source_status, source_marks, streams)
    for i, (t, s, m) in enumerate(zip(targets, target_status, target_marks)):
        rows += _rows(f"edit {i + 1}", t, s, m, streams)
    return {"rows": rows, "warnings": warnings, "error": error}


@functools.lru_cache(maxsize=64)
def answer_body(body: bytes) -> dict[str, Any]:
    """The preview of a raw request body (raises RequestError for one the route refuses). Answers are kept for
    the last bodies asked: a graph of several edit nodes asks the same ones again as the user switches nodes."""
    return preview(PreviewRequest.from_json(body))


def _safe_windows(text: str, warnings: list[str]) -> list:
    try:
        return list(parse_word_windows(text))
    except PromptToPromptError as failure:
        warnings.append(str(failure))
        return []


def register_routes() -> None:
    """Add the preview route to ComfyUI's server, when there is one (not in headless runs)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    if any(getattr(route, "path", None) == ROUTE for route in server.routes):
        return  # another copy of the pack (an old folder beside a Manager install) registered it: aiohttp
        # would refuse to start the server with the route twice

    @server.routes.post(ROUTE)
    async def tokens(request: web.Request) -> web.Response:
        try:
            check_size(request.content_length or 0)  # before reading it
            answer = await asyncio.get_running_loop().run_in_executor(_WORKER, answer_body, await request.read())
        except RequestError as error:
            return web.json_response({"error": str(error)}, status=error.status)
        return web.json_response(answer)
