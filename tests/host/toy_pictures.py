"""Measuring the demo models' pictures (shared by the UNet and the joint-attention toy-world tests): objects found
by colour segmentation (toy/measure.py), their overlap, boxes, and picture fidelity."""

from __future__ import annotations

import math

import numpy as np
import torch


def pictures(vae, samples: torch.Tensor) -> list[np.ndarray]:
    return list((vae.decode(samples).clamp(0, 1) * 255).round().byte().numpy())


def thing(measure, image: np.ndarray, colour: str):
    """The object of that colour in the picture (the largest, if several), or None."""
    found = [f for f in measure.objects(image) if f.colour == colour]
    return max(found, key=lambda f: f.mask.sum()) if found else None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def box(found) -> tuple[float, float, int]:
    """Centre (x, y) and width of an object's bounding box: a triangle's mass centre sits lower than a circle's in
    the same box, so position is compared by box."""
    xs, ys = np.nonzero(found.mask.any(0))[0], np.nonzero(found.mask.any(1))[0]
    return (xs[0] + xs[-1]) / 2, (ys[0] + ys[-1]) / 2, int(xs[-1] - xs[0] + 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255 ** 2 / float(((a.astype(float) - b) ** 2).mean()))
