"""Caption accuracy of a demo-model file of either kind, measured as a training run measures its result:

    COMFYUI_PATH=/path/to/ComfyUI python -m toy.evaluate /tmp/flux-toy/flux_toy.safetensors --captions 50

For the snapshots a run writes while it trains (every 1000 steps), so a run can be judged, and stopped, before its
end; toy/MODEL.md quotes these numbers. The same seeded captions, sampler and cfg as the end of `train.py` (UNet:
euler/normal) and `flux_train.py` (joint attention: euler/simple).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import flux_model, model, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a demo-model file (train.py's or flux_train.py's)")
    parser.add_argument("--captions", type=train.at_least(1), default=100, help="captions sampled")
    parser.add_argument("--seed", type=int, default=5, help="the captions' seed (5: what the training runs use)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: beside a training run)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH)")
    args = parser.parse_args(argv)
    try:
        joint = flux_model.is_joint_model(args.model)
    except ValueError as error:
        parser.error(str(error))
    train.use_comfyui(args.comfyui)
    torch.set_num_threads(args.threads)
    scores = train.caption_accuracy(args.model, args.captions, args.seed,
                                    load=flux_model.load if joint else model.load,
                                    scheduler="simple" if joint else "normal")
    print(f"[evaluate] {args.captions} captions: " + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
