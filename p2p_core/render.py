"""Heatmaps over images, for showing attention maps in the graph (pure torch, images as [H, W, 3] in 0..1)."""

from __future__ import annotations

import torch


def colorize(heat: torch.Tensor) -> torch.Tensor:
    """[..., H, W] values in 0..1 -> [..., H, W, 3] blue-to-red colours (a 'jet'-like ramp)."""
    x = heat.clamp(0, 1)[..., None]
    centres = torch.tensor([0.75, 0.5, 0.25], device=heat.device)  # red, green, blue peaks
    return (1.5 - (4 * x - 4 * centres).abs()).clamp(0, 1)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """An image [H, W, 3] under a colourised heatmap [H, W] with opacity `alpha`."""
    return (1 - alpha) * image + alpha * colorize(heat).to(image.dtype)
