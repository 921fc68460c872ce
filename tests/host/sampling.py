"""What the sampling tests share: the prompts of a word swap, encoding, KSampler runs, a prompt sampled alone from an
edit's first latent row, and float-noise equality."""

from __future__ import annotations

from typing import Any

import tiny
import torch

tiny.import_comfy()
import nodes  # noqa: E402

SOURCE, TARGET = "a cat riding a bicycle", "a dog riding a bicycle"
NEGATIVE = "blurry"


def encode(clip: Any, text: str) -> list:
    """CLIP Text Encode, as the node does."""
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def ksample(model: Any, clip: Any, positive: list, latent: dict, sampler: str = "euler", scheduler: str = "normal",
            steps: int = 6, cfg: float = 5.0, seed: int = 7, denoise: float = 1.0,
            negative: str = NEGATIVE) -> torch.Tensor:
    """The KSampler node's samples (its common_ksampler) with `negative` encoded as the negative prompt."""
    return nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, encode(clip, negative),
                                 latent, denoise=denoise)[0]["samples"]


def first_row(latent: dict) -> dict:
    """The edit's first latent row alone, with its noise (batch_index), as a user sampling one prompt has it."""
    return {**latent, "samples": latent["samples"][:1], "batch_index": latent["batch_index"][:1]}


def plain(model: Any, clip: Any, text: str, latent: dict, **kwargs: Any) -> torch.Tensor:
    """One prompt sampled alone from the edit's first latent row, as a user would without the pack."""
    return ksample(model, clip, encode(clip, text), first_row(latent), **kwargs)[0]


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to the float noise of sampling rows in a batch instead of alone."""
    assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max())), float((a - b).abs().max())


def replace(p2p: dict, model: Any, clip: Any, source: str = SOURCE, target: str = TARGET, cross: float = 0.8,
            self_: float = 0.4, size: int = 64, **kwargs: Any) -> tuple:
    """ReplaceEdit's (model, positive, latent) for a word swap."""
    return p2p["ReplaceEdit"]().apply(model, clip, source, target, cross, self_, size, size, **kwargs)


def comfy_node(cls: type, **inputs: Any) -> Any:
    """The first output of one of ComfyUI's nodes: V3 nodes (an execute classmethod) and V1 nodes (FUNCTION)."""
    out = cls.execute(**inputs) if hasattr(cls, "execute") else getattr(cls(), cls.FUNCTION)(**inputs)
    return (out.result if hasattr(out, "result") else out)[0]
