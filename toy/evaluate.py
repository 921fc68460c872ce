"""Caption accuracy of a demo-model file of either kind, measured as a training run measures its result:

    COMFYUI_PATH=/path/to/ComfyUI python -m toy.evaluate /tmp/flux-toy/flux_toy.safetensors --captions 50

For the snapshots a run writes while it trains (every 1000 steps), so a run can be judged, and stopped, before its
end; toy/MODEL.md quotes these numbers. The same seeded captions, sampler and cfg as the end of `train.py` (UNet:
euler/normal) and `flux_train.py` (joint attention: euler/simple), unless ``--steps``, ``--cfg`` or (joint attention)
``--shift`` ask for others: what a file is shipped to be sampled with is chosen by measuring it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import flux_model, model, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a demo-model file (train.py's or flux_train.py's)")
    parser.add_argument("--captions", type=train.at_least(1), default=100, help="captions sampled")
    parser.add_argument("--seed", type=int, default=5, help="the captions' seed (5: what the training runs use)")
    parser.add_argument("--steps", type=train.at_least(1), default=20, help="sampling steps")
    parser.add_argument("--cfg", type=finite(0.0), default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--shift", type=finite(), help="joint-attention files: sample with this shift (ComfyUI's "
                        "ModelSamplingFlux mu: sigma = e^mu t / (1 + (e^mu - 1) t)) in place of the file's")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: beside a training run)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH)")
    args = parser.parse_args(argv)
    try:
        joint = flux_model.is_joint_model(args.model)
    except ValueError as error:
        parser.error(str(error))
    if args.shift is not None and not joint:
        parser.error(f"--shift is for joint-attention demo models; {args.model} is a UNet demo model, whose "
                     "schedule has no shift. Leave --shift out.")
    train.use_comfyui(args.comfyui)
    torch.set_num_threads(args.threads)
    load = partial(_shifted, args.shift) if joint else model.load
    scores = train.caption_accuracy(args.model, args.captions, args.seed, args.steps, args.cfg, load=load,
                                    scheduler="simple" if joint else "normal")
    shift = f", shift {args.shift:g}" if args.shift is not None else ""
    found = ", ".join(f"{k} {v:.0%}" for k, v in scores.items())
    print(f"[evaluate] {args.captions} captions ({args.steps} steps, cfg {args.cfg:g}{shift}): {found}", flush=True)


def finite(minimum: float = -math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number of at least ``minimum``, so 'nan' or a typo stops at once naming the flag
    rather than sampling 100 captions with it."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not minimum <= value < math.inf:
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of at least {minimum:g}")
        return value

    return parse


def _shifted(shift: float | None, path: Path) -> tuple[Any, ...]:
    """A joint-attention file loaded, sampling with ``shift`` where one is given (the file's own otherwise)."""
    loaded = flux_model.load(path)
    if shift is not None:
        loaded[0].get_model_object("model_sampling").set_parameters(shift=shift)
    return loaded


if __name__ == "__main__":
    main()
