"""The token preview the front end shows on edit nodes, served by a small route on ComfyUI's server.

The page posts a node's prompts and words; the answer lists each prompt's tokens (as the sampler will see
them) with what the edit does to each, plus warnings for words that are not in a prompt and the error an
edit would raise. The maths is p2p_core's, so the preview and the sampling cannot disagree.
"""

from __future__ import annotations

from typing import Any

from ..p2p_core.align import refine_mapping, swap_mapping
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.schedule import parse_word_windows
from ..p2p_core.tokens import WORD_END, PromptTokens, TokenizeFn
from .text import tokenize_for_preview

ROUTE = "/prompt_to_prompt/tokens"


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace(";", ",").split(",") if w.strip()]


def _row(label: str, prompt: PromptTokens, status: dict[int, str], marks: dict[int, set[str]]) -> dict:
    tokens = []
    for word in prompt.words:
        for i, token in enumerate(word.tokens):
            tokens.append({"text": token.text.removesuffix(WORD_END), "word": word.text, "first": i == 0,
                           "status": status.get(token.position, "kept"),
                           "marks": sorted(marks.get(token.position, ()))})
    return {"label": label, "tokens": tokens}


def _mark(prompt: PromptTokens, words: list[str], mark: str, tokenize: TokenizeFn, marks: dict[int, set[str]],
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


def preview(request: dict[str, Any]) -> dict[str, Any]:
    """The preview of one node: kind is replace, refine, reweight or blend (see the front end)."""
    kind = request.get("kind", "replace")
    warnings: list[str] = []
    error = None
    source, tokenize = tokenize_for_preview(str(request.get("source", "")))
    targets = [tokenize_for_preview(str(t))[0] for t in request.get("targets", [])]
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
        window_words = [word for word, _ in _safe_windows(str(request.get("word_windows", "")), warnings)]
        _mark(targets[0], window_words, "window", tokenize, target_marks[0], warnings)
    if kind == "reweight":
        reweighted = targets[-1] if targets else source
        _mark(reweighted, _words(str(request.get("words", ""))), "reweighted", tokenize,
              target_marks[-1] if targets else source_marks, warnings)
    if kind == "blend":
        _mark(source, _words(str(request.get("source_words", ""))), "blended", tokenize, source_marks, warnings)
        entries = [_words(e) for e in str(request.get("edit_words", "")).split(";")]
        for i, target in enumerate(targets):
            words = entries[0] if len(entries) == 1 else entries[i] if i < len(entries) else []
            _mark(target, words, "blended", tokenize, target_marks[i], warnings)
        subtract = _words(str(request.get("subtract_words", "")))
        for prompt, marks in [(source, source_marks)] + list(zip(targets, target_marks)):
            _mark(prompt, [w for w in subtract if _has(prompt, w, tokenize)], "subtracted", tokenize, marks, [])
    rows = [_row("source", source, source_status, source_marks)]
    rows += [_row(f"edit {i + 1}", t, s, m) for i, (t, s, m) in enumerate(zip(targets, target_status, target_marks))]
    return {"rows": rows, "warnings": warnings, "error": error}


def _has(prompt: PromptTokens, word: str, tokenize: TokenizeFn) -> bool:
    try:
        prompt.find(word, tokenize)
        return True
    except PromptToPromptError:
        return False


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
            payload = await request.json()
        except ValueError:
            return web.json_response({"error": "send a JSON object"}, status=400)
        return web.json_response(preview(payload))
