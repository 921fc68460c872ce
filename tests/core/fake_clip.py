"""A stand-in for ComfyUI's CLIP tokenizer, so p2p_core's word maths can be tested without the host.

Like CLIP BPE it splits words into letter/digit runs and punctuation, cuts long runs into pieces and marks
the last piece of each run with '</w>'. `comfy_stream` lays pieces out in 77-token chunks with ComfyUI's
rules (a piece of fewer than 8 tokens moves whole to the next chunk, a longer one is split).
"""

import re

BOS, EOS = 49406, 49407


class FakeTokenizer:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str) -> list[tuple[int, str]]:
        out = []
        for run in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", text.lower()):
            parts = [run[i:i + 5] for i in range(0, len(run), 5)]
            for j, part in enumerate(parts):
                piece = part + ("</w>" if j == len(parts) - 1 else "")
                out.append((self.vocab.setdefault(piece, len(self.vocab) + 1), piece))
        return out


def comfy_stream(pieces: list[str], tokenize: FakeTokenizer, pad: int = EOS, max_length: int = 77):
    """Chunks of (token, weight, word id) as SDTokenizer.tokenize_with_weights(return_word_ids=True) makes."""
    chunks, batch = [], [(BOS, 1.0, 0)]
    chunks.append(batch)
    for i, piece in enumerate(pieces):
        group = [tid for tid, _ in tokenize(piece)]
        large = len(group) >= 8
        while group:
            if len(group) + len(batch) > max_length - 1:
                room = max_length - len(batch) - 1
                if large:
                    batch.extend((t, 1.0, i + 1) for t in group[:room])
                    batch.append((EOS, 1.0, 0))
                    group = group[room:]
                else:
                    batch.append((EOS, 1.0, 0))
                    batch.extend([(pad, 1.0, 0)] * room)
                batch = [(BOS, 1.0, 0)]
                chunks.append(batch)
            else:
                batch.extend((t, 1.0, i + 1) for t in group)
                group = []
    batch.append((EOS, 1.0, 0))
    batch.extend([(pad, 1.0, 0)] * (max_length - len(batch)))
    return chunks
