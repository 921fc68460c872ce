"""A full-size random-weight SD1.5 checkpoint in ComfyUI's own format, for tests that go through
CheckpointLoaderSimple (the real server, the command line).

ComfyUI detects a checkpoint's family from its tensor shapes, so only a full-size model loads as SD1.5. The
file (about 2 GiB in fp16) is built once with ComfyUI's classes and the benchmark's model builder, saved
with comfy.sd.save_checkpoint, and cached outside the repository.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import tiny

CACHE = Path(os.environ.get("P2P_TEST_CACHE", Path.home() / ".cache" / "comfyui-prompt-to-prompt-tests"))
NAME = "sd15-random-v1.safetensors"
BENCH_MODELS = Path(__file__).resolve().parents[2] / "bench" / "models.py"


def _bench_models():
    spec = importlib.util.spec_from_file_location("p2p_bench_models", BENCH_MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def sd15_checkpoint() -> Path:
    """The cached checkpoint, built on first use (a minute or two on a CPU)."""
    path = CACHE / NAME
    if path.is_file():
        return path
    tiny.import_comfy()
    import comfy.sd
    import comfy.supported_models
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    models = _bench_models()
    model, _ = models.make_model("sd15", seed=0, dtype=torch.float16)
    target = comfy.supported_models.SD15(models.unet_config("sd15", torch.float16)).clip_target()
    clip = comfy.sd.CLIP(target=target, embedding_directory=None, model_options={"dtype": torch.float16})
    tiny.init_weights(clip.cond_stage_model, 0)
    params = {"ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                           "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                           "dropout": 0.0}, "embed_dim": 4}
    donor = AutoencoderKL(**params)
    tiny.init_weights(donor, 0)
    vae = comfy.sd.VAE(sd=donor.state_dict(), device=torch.device("cpu"))
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    comfy.sd.save_checkpoint(str(partial), model, clip=clip, vae=vae)
    partial.rename(path)
    return path
