"""Random-weight demo-model files in the joint-attention demo model's layout, for wiring tests: its training
(test_toy_train.py) and the demo's Flux examples (test_demo.py). test_toy_world*.py measure trained files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pack
import torch

CAPTIONS = ("a big red circle on a white background", "a small blue square on a black background")


def narrow_flux_config(scale: int = 1) -> Any:
    """The joint-attention demo model's shape at the narrowest widths, with the UNet demo model's CLIP-L and VAE."""
    unet_config = dataclasses.asdict(pack.module("toy.model").ToyConfig()) | {"notes": {}}
    return pack.module("toy.flux_model").FluxToyConfig(hidden=48, heads=2, double_blocks=1, single_blocks=1,
                                                       t5_width=32, t5_layers=1, t5_heads=2, scale=scale,
                                                       clip=unet_config)


@dataclasses.dataclass
class FluxFile:
    """A written file and the networks it was written from (to compare what loads back with)."""

    path: Path
    dit: torch.nn.Module
    t5: Any
    autoencoder: torch.nn.Module
    t5_rows: list[int]


def random_flux_file(path: Path, config: Any) -> FluxFile:
    """Random networks of ``config`` written as a demo-model file, with the T5 rows of the toy grammar's words."""
    model, flux_model, train = (pack.module(f"toy.{name}") for name in ("model", "flux_model", "train"))
    clip = flux_model.build_clip(config)
    clip_l, t5 = flux_model.encoders(clip)
    dit = flux_model.build_dit(config).diffusion_model
    autoencoder = model.build_autoencoder(config.unet_toy)
    for seed, network in enumerate((clip_l.transformer, t5.transformer, dit, autoencoder)):
        train.initialise(network, seed)
    words = " ".join(pack.module("toy.scenes").vocabulary())
    rows = sorted({token for token, _ in clip.tokenize(words)["t5xxl"][0]})
    clip_rows = sorted({token for token, _ in clip.tokenize(words)["l"][0]})
    flux_model.save(path, config, dit, clip_l, t5, autoencoder.state_dict(), clip_rows, rows)
    return FluxFile(path, dit, t5, autoencoder, rows)
