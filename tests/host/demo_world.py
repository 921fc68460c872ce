"""How the toy-world tests sample a demo model (test_toy_world.py: the UNet model; test_toy_world_flux.py: the
joint-attention one): one place for each model's size, sampler and cfg, and the edit and plain runs they compare.
Pictures are measured with toy_pictures.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tiny
import torch
from sampling import encode
from toy_pictures import pictures

tiny.import_comfy()
import nodes  # noqa: E402


@dataclass(frozen=True)
class DemoWorld:
    """A demo model (MODEL, CLIP, VAE) and the KSampler settings its tests sample it with (empty negative prompt)."""

    model: Any
    clip: Any
    vae: Any
    size: int
    sampler: str
    scheduler: str
    steps: int = 20
    cfg: float = 5.0

    def with_model(self, model: Any) -> DemoWorld:
        return replace(self, model=model)

    def empty_latent(self) -> dict:
        channels = self.model.get_model_object("latent_format").latent_channels
        return {"samples": torch.zeros(1, channels, self.size // 8, self.size // 8)}

    def encoded(self, pixels: np.ndarray) -> dict:
        """A picture (uint8, height x width x 3) VAE-encoded as VAE Encode does, without autograd (else the latent
        carries the VAE's graph into every test)."""
        with torch.no_grad():
            return nodes.VAEEncode().encode(self.vae, torch.from_numpy(pixels / 255.0).float()[None])[0]

    def sample(self, model: Any, positive: list, latent: dict, seed: int) -> torch.Tensor:
        return nodes.common_ksampler(model, seed, self.steps, self.cfg, self.sampler, self.scheduler, positive,
                                     encode(self.clip, ""), latent)[0]["samples"]

    def plain(self, text: str, seed: int) -> np.ndarray:
        """``text`` sampled alone from the seed's noise, as a user would without the pack."""
        return pictures(self.vae, self.sample(self.model, encode(self.clip, text), self.empty_latent(), seed))[0]

    def edited(self, p2p: dict, node: str, seed: int, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """The (source, edit) pictures of an edit node applied with ``args`` (after model and clip)."""
        patched, positive, latent = p2p[node]().apply(self.model, self.clip, *args, **kwargs)
        return pictures(self.vae, self.sample(patched, positive, latent, seed))

    def replace(self, p2p: dict, source: str, target: str, seed: int, cross: float = 0.8,
                self_: float = 0.4) -> list[np.ndarray]:
        """Source and edit of a word swap (by default at the node's windows)."""
        return self.edited(p2p, "ReplaceEdit", seed, source, target, cross, self_, self.size, self.size)
