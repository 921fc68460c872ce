"""Where each word of a prompt sits in the encoded text context.

Attention edits work on token columns, users think in words. ComfyUI tokenizes a prompt per weighted
segment (`(word:1.2)` syntax) and lays the tokens out in 77-token chunks (BOS, up to 75 tokens, EOS,
padding), moving a word that does not fit to the next chunk. Rather than re-deriving that layout, we read
the token stream ComfyUI produced and walk it word by word: each whitespace-separated word of each segment
is tokenized on its own (CLIP's BPE never merges across whitespace, so the pieces concatenate to the
segment's tokens) and takes the next tokens of its segment. Positions are flat indices into the encoded
context (chunk * 77 + index), so long prompts, SD2's OpenCLIP tokenizer and SDXL's two tokenizers (same
layout) all work the same way.

T5's SentencePiece (Flux, SD3) lays its context out as one chunk: words, an end token, padding (no start token),
and marks the *first* piece of a word ('\u2581red') where CLIP marks the last ('red</w>'); `word_boundary` reads
both, and the chunk length is the stream's own.
"""

from __future__ import annotations

import codecs
import math
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import PromptToPromptError

WORD_END = "</w>"
"""CLIP BPE marks the last piece of every pre-tokenized word (letters, a number, a punctuation mark)."""
WORD_START = "\u2581"
"""SentencePiece (T5) marks the first piece of every whitespace-separated word."""

MAX_CHUNKS = 16
"""The longest prompt an edit takes, in ComfyUI's chunks of 75 tokens. Token mappings are dense
[source columns, target columns], as is the refinement's alignment table, so a pasted megabyte of text
would ask for hundreds of gigabytes; 16 chunks (1200 tokens) is far more than CLIP makes use of."""

# Python's str.split() also splits at the separators U+001C-U+001F; CLIP's tokenizer keeps them as tokens.
_WORD_GAP = re.compile(r"[^\S\x1c-\x1f]+")

TokenizeFn = Callable[[str], Sequence[tuple[int, str]]]
"""Tokenize text as ComfyUI does, without start/end tokens: a list of (token id, BPE piece text)."""
Tokenizers = TokenizeFn | tuple[TokenizeFn, ...]
"""How words are looked up in a prompt: one tokenizer, or one per stream of a joined context (`PromptTokens.parts`)."""

CHUNK = 77
"""Tokens per chunk of the encoded context: start, up to 75 word tokens, end, padding."""

StreamToken = tuple[object, float, int]
"""One entry of ComfyUI's `tokenize(..., return_word_ids=True)`: (token id or embedding, weight, word id)."""


@dataclass(frozen=True)
class Token:
    """One token of a prompt: its column in the context, its id and its BPE text."""

    position: int
    id: int
    text: str

    @property
    def ends_word(self) -> bool:
        return self.text.endswith(WORD_END)


def word_boundary(before: Token, after: Token) -> bool:
    """Whether a word may end between two tokens: CLIP's end-of-word mark, or a piece edge that is no letter or
    digit: SentencePiece's start-of-word mark '\u2581', or punctuation ('circle,' is '\u2581circle' ',', and
    "circle" must match it, as it does on CLIP)."""
    return before.ends_word or not before.text[-1:].isalnum() or not after.text[:1].isalnum()


@dataclass(frozen=True)
class Word:
    """A whitespace-separated word of the prompt and the tokens it became."""

    text: str
    tokens: tuple[Token, ...]

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(t.position for t in self.tokens)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(t.id for t in self.tokens)


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt: the full id stream of its context and where each word sits in it."""

    text: str
    ids: tuple[int, ...]
    words: tuple[Word, ...]
    chunk: int = CHUNK
    """Tokens per chunk of the context: 77 for CLIP, the whole context for T5."""
    parts: tuple[tuple[int, PromptTokens], ...] = ()
    """A context of several token streams one after the other (SD3: CLIP's chunks, then T5's): each stream's
    offset and layout. The fields above then describe the whole context, every word once per stream."""

    @classmethod
    def joined(cls, text: str, parts: Sequence[PromptTokens]) -> PromptTokens:
        """The layout of a context that is ``parts`` one after the other (each a stream of the same prompt)."""
        placed, ids, words, offset = [], [], [], 0
        for part in parts:
            placed.append((offset, part))
            ids += part.ids
            words += [Word(w.text, tuple(Token(t.position + offset, t.id, t.text) for t in w.tokens))
                      for w in part.words]
            offset += part.length
        return cls(text, tuple(ids), tuple(words), parts[0].chunk, tuple(placed))

    @property
    def length(self) -> int:
        """Token columns of this prompt's context (77 per chunk for CLIP)."""
        return len(self.ids)

    @property
    def content(self) -> tuple[Token, ...]:
        """Every word token in prompt order (no start, end or padding tokens)."""
        return tuple(t for w in self.words for t in w.tokens)

    def token_texts(self) -> list[str]:
        """What each content token stands for, for people (see `readable`); an embedding's tokens show its
        word ('embedding:name')."""
        words = [word for word in self.words for _ in word.tokens]
        return [text or word.text for text, word in zip(readable([t.text for t in self.content]), words)]

    def special_positions(self) -> tuple[int, ...]:
        """Columns that belong to no word: start, end and padding tokens of every chunk."""
        used = {p for w in self.words for p in w.positions}
        return tuple(p for p in range(self.length) if p not in used)

    def padding_positions(self) -> tuple[int, ...]:
        """Columns after the end token of each chunk (a chunk is start, words, end, padding)."""
        if self.parts:
            return tuple(offset + p for offset, part in self.parts for p in part.padding_positions())
        ends = {}
        for position in (p for w in self.words for p in w.positions):
            chunk = position // self.chunk
            ends[chunk] = max(ends.get(chunk, 0), position % self.chunk)
        return tuple(p for p in range(self.length) if p % self.chunk > ends.get(p // self.chunk, 0) + 1)

    def find(self, phrase: str, tokenize: Tokenizers) -> tuple[int, ...]:
        """Columns of every occurrence of `phrase` (one or more words), whole pieces only.

        "cat" matches "cat," and "(cat:1.2)" but not the end of "bobcat": a match must start and end on a
        BPE word boundary. Every occurrence counts, as in the paper's word lookup. A joined context looks the
        phrase up in every stream with that stream's tokenizer (``tokenize`` holds one per part).
        """
        if self.parts:
            found = []
            for (offset, part), part_tokenize in zip(self.parts, tokenize):
                found += [offset + p for p in part.find(phrase, part_tokenize)]
            return tuple(found)
        query = [tid for tid, _ in tokenize(phrase)]
        if not phrase.strip() or not query:
            raise PromptToPromptError(f"An empty word was given for the prompt '{self.text}'; name a word of it.")
        content = self.content
        hits: list[int] = []
        for start in range(len(content) - len(query) + 1):
            run = content[start:start + len(query)]
            if [t.id for t in run] != query:
                continue
            if start > 0 and not word_boundary(content[start - 1], run[0]):
                continue
            after = start + len(query)
            if after < len(content) and not word_boundary(run[-1], content[after]):
                continue
            hits.extend(t.position for t in run)
        if not hits:
            words = ", ".join(f"'{w.text}'" for w in self.words)
            raise PromptToPromptError(
                f"'{phrase}' is not a word of the prompt '{self.text}'. Words found: {words}. "
                "Check the spelling, or edit the prompt so it contains the word.")
        return tuple(sorted(set(hits)))


def locate_words(text: str, stream: Sequence[Sequence[StreamToken]], pieces: Sequence[str],
                 tokenize: TokenizeFn) -> PromptTokens:
    """Build `PromptTokens` from ComfyUI's chunked token stream.

    `pieces` are the texts ComfyUI tokenized, in order: piece i produced the tokens whose word id is i + 1
    (word id 0 marks start, end and padding tokens). A piece whose tokens are tensors is a textual-inversion
    embedding and becomes one word.
    """
    if len(stream) > MAX_CHUNKS:
        raise PromptToPromptError(
            f"The prompt '{_shorten(text)}' is {len(stream)} chunks of 75 tokens long; Prompt-to-Prompt takes "
            f"prompts of up to {MAX_CHUNKS} chunks ({MAX_CHUNKS * 75} tokens). Shorten it.")
    flat = [entry for chunk in stream for entry in chunk]
    _check_weights(text, flat)
    groups: dict[int, list[tuple[int, object]]] = {}
    for position, (token, _weight, word_id) in enumerate(flat):
        if word_id > 0:
            groups.setdefault(word_id, []).append((position, token))

    words: list[Word] = []
    embedded: dict[int, int] = {}
    for word_id, piece in enumerate(pieces, start=1):
        group = groups.get(word_id, [])
        if any(not isinstance(token, int) for _, token in group):
            embedded.update((p, embedding_token_id(piece.strip(), i)) for i, (p, _) in enumerate(group))
            words.append(Word(piece.strip(), tuple(Token(p, embedded[p], WORD_END) for p, _ in group)))
            continue
        cursor = 0
        for word in (w for w in _WORD_GAP.split(piece) if w):
            tokens = tokenize(word)
            span = group[cursor:cursor + len(tokens)]
            if [token for _, token in span] != [tid for tid, _ in tokens]:
                raise PromptToPromptError(
                    f"Could not find the tokens of '{word}' in the tokenized prompt '{text}'. This tokenizer "
                    "is not one Prompt-to-Prompt supports (the CLIP tokenizers of SD1.x, SD2.x and SDXL and the T5 "
                    "of Flux are).")
            if tokens:
                words.append(Word(word, tuple(Token(p, tid, piece_text)
                                              for (p, _), (tid, piece_text) in zip(span, tokens))))
            cursor += len(tokens)
        if cursor != len(group):
            raise PromptToPromptError(
                f"The prompt '{text}' tokenized differently word by word than as a whole; "
                "Prompt-to-Prompt cannot place its words.")
    ids = tuple(token if isinstance(token, int) else embedded.get(p, -1) for p, (token, _, _) in enumerate(flat))
    return PromptTokens(text=text, ids=ids, words=tuple(words), chunk=len(stream[0]) if stream else CHUNK)


def embedding_token_id(word: str, index: int) -> int:
    """A negative id (no vocabulary id is negative) for vector `index` of a textual-inversion embedding: the same
    embedding's vectors align with each other and another embedding's do not, as their different vectors act.
    From a checksum of the name, not Python's hash, which changes from one process to the next."""
    return -1 - zlib.crc32(f"{word}\x00{index}".encode()) % (2 ** 30)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _check_weights(text: str, flat: Sequence[StreamToken]) -> None:
    """'(cat:nan)' parses as a weight of NaN, which ComfyUI multiplies into the conditioning: NaN pictures."""
    for _token, weight, _word_id in flat:
        if not math.isfinite(weight):
            raise PromptToPromptError(
                f"The prompt '{_shorten(text)}' gives a word the weight {weight}; write a finite weight, like "
                "(word:1.2).")


def _byte_table() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> character table (GPT-2's, which every CLIP tokenizer uses):
    printable bytes stand for themselves, the other 68 bytes for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


_BYTES = _byte_table()


def readable(pieces: Sequence[str]) -> list[str]:
    """The text each BPE piece stands for, for people: 'cafÃ©</w>' -> 'café'.

    Pieces are byte-level: a character outside ASCII is several bytes, shown by BPE as several Latin-1
    lookalikes, and may even be split between two pieces. Decoding the pieces in order, each shows the
    characters its bytes complete; a piece holding only the start of a character shows its bytes in hex.
    A piece that is not byte-level BPE (a textual-inversion embedding's placeholder) stays as it is.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = []
    for piece in pieces:
        raw = piece.removesuffix(WORD_END)
        if raw.startswith(WORD_START):  # SentencePiece: the word's first piece, whitespace marked; a lone mark
            texts.append(raw.removeprefix(WORD_START) or WORD_START)  # (before 'a') shows as itself
            continue
        if any(c not in _BYTES for c in raw):
            texts.append(raw)
            continue
        data = bytes(_BYTES[c] for c in raw)
        text = decoder.decode(data)
        texts.append(text if text or not data else "<" + data.hex(" ") + ">")
    return texts
