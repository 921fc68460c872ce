"""Full-size random-weight SD1.5 / SDXL models, and full-width Flux.1 dev and SD3.5 medium of reduced depth, for the
benchmark, built from ComfyUI's own classes.

No weights can be downloaded here, and none are needed: the time and memory of a sampling run depend on
the shapes of the UNet and its inputs, not on the weight values. The UNets therefore use exactly the
configs ``comfy.model_detection`` produces for real SD1.5 and SDXL checkpoints (checked against it), with
weights drawn small enough that every activation stays finite. The text encoders keep the real tokenizers
and widths (768 for SD1.5; 768 + 1280 with a 1280-wide pooled vector for SDXL) but only 3 transformer
layers, since text encoding happens once per node, outside the sampling runs being timed.

Flux.1 dev (12 B parameters) does not fit this machine's memory in fp32: ``flux`` keeps every width of the real
model (3072 wide, 24 heads, T5-XXL's 4096-wide context of 256 tokens, CLIP-L's pooled 768) with
``FLUX_BLOCKS`` double and single blocks instead of 19 and 38. Every block costs the same, so the ratio of an
edit's time to plain sampling's is that of the full model (a block's attention share is what it is in Flux).
``sd3`` is SD3.5 medium at full width (1536 wide, 24 heads, its 384-patch position table, CLIP-L + CLIP-G + T5-XXL
context of 154 tokens) with ``SD3_BLOCKS`` of its 24 joint blocks, the first with SD3.5's image-only attention
(the real model has it in blocks 0-12).

Device: CUDA (fp16) when available, else CPU (fp32), as ComfyUI itself would pick.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_HOST = REPO_ROOT / "tests" / "host"
if str(TESTS_HOST) not in sys.path:  # tiny.py (weight init, ComfyUI discovery) and pack.py (loader)
    sys.path.insert(0, str(TESTS_HOST))

import tiny  # noqa: E402

FAMILIES = ("sd15", "sdxl", "flux", "sd3")
#: Flux's (double, single) blocks in the benchmark: one of each kind (the real model has 19 and 38).
FLUX_BLOCKS = (1, 1)
#: SD3.5 medium's joint blocks in the benchmark (the real model has 24): one with image-only attention, one without.
SD3_BLOCKS = 2

#: Text transformer depth: enough for SDXL's penultimate-layer outputs (SDClipModel asserts |idx| < layers).
TEXT_LAYERS = 3


def import_comfy(cpu: bool | None = None) -> None:
    """Import ComfyUI for benchmarking: its default settings, on CUDA when there is one.

    Unlike ``tiny.import_comfy`` (the tests' version) this does not force ``--cpu`` and does not turn on
    deterministic algorithms, which would slow cuBLAS down or make it refuse to run, and which a normal
    ComfyUI start does not enable either. ``tiny`` is then marked imported so the test loader reuses it.
    """
    path = tiny.comfyui_path()
    if path is None:
        raise RuntimeError(tiny.skip_reason())
    if path not in sys.path:
        sys.path.insert(0, path)
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    import comfy.model_management  # noqa: F401
    import utils.install_util  # noqa: F401  (ComfyUI's `utils` package must win over comfy/utils.py)

    tiny._IMPORTED = True


def device_name() -> str:
    """Where ComfyUI will run the UNet: 'cuda' or 'cpu'."""
    import comfy.model_management

    return comfy.model_management.get_torch_device().type


def unet_dtype() -> torch.dtype:
    """fp16 on a GPU (what ComfyUI loads SD1.5/SDXL checkpoints as there), fp32 on CPU."""
    return torch.float16 if device_name() == "cuda" else torch.float32


def unet_config(family: str, dtype: torch.dtype) -> dict[str, Any]:
    """The UNet config ``comfy.model_detection`` gives for a real checkpoint of ``family`` (Flux: of its depth)."""
    if family == "flux":
        import dataclasses

        from comfy.ldm.flux.model import FluxParams

        config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
                  "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24,
                  "depth": FLUX_BLOCKS[0], "depth_single_blocks": FLUX_BLOCKS[1], "axes_dim": [16, 56, 56],
                  "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "dtype": dtype}
        if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
            config["txt_ids_dims"] = []
        return config
    if family == "sd3":
        return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 24, "num_blocks": SD3_BLOCKS,
                "adm_in_channels": 2048, "input_size": None, "pos_embed_scaling_factor": None,
                "context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": 4096, "out_features": 1536}},
                "pos_embed_max_size": 384, "num_patches": 147456, "qk_norm": "rms", "x_block_self_attn_layers": [0],
                "dtype": dtype}
    common = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "dtype": dtype, "in_channels": 4, "model_channels": 320,
              "use_temporal_attention": False, "use_temporal_resblock": False}
    if family == "sd15":
        return {**common, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
                "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
                "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    if family == "sdxl":
        return {**common, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
                "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
                "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
                "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _check_detection(family: str, diffusion_model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Fail unless ComfyUI's checkpoint detection reads the built UNet back as the same config and family.

    This is what makes "full-size SD1.5" a checked claim rather than a hand-typed one.
    """
    import comfy.model_detection

    keys = {f"model.diffusion_model.{k}": v for k, v in diffusion_model.state_dict().items()}
    detected = comfy.model_detection.detect_unet_config(keys, "model.diffusion_model.")
    mismatched = {k: (v, config.get(k)) for k, v in detected.items()
                  if k not in ("dtype", "txt_ids_dims", "num_blocks") and k in config and config.get(k) != v}
    if mismatched:
        raise AssertionError(f"{family} UNet is not what model_detection reads back: {mismatched}")
    expected = config_class(family)
    found = comfy.model_detection.model_config_from_unet_config(detected, keys)
    if type(found) is not expected:
        raise AssertionError(f"model_detection sees the {family} UNet as {type(found).__name__}")


def config_class(family: str) -> type:
    """ComfyUI's model config class of ``family``."""
    import comfy.supported_models as sm

    return {"sd15": sm.SD15, "sdxl": sm.SDXL, "flux": sm.Flux, "sd3": sm.SD3}[family]


@dataclass
class Bundle:
    """A model and the CLIP that goes with it, plus facts for the results header."""

    family: str
    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP
    dtype: torch.dtype
    parameters: int


def make_model(family: str, seed: int = 0, dtype: torch.dtype | None = None) -> tuple[Any, int]:
    """A ModelPatcher around a full-size random-weight UNet of ``family``, and its parameter count.

    The model is built on the CPU (ComfyUI moves it to the GPU when sampling) and initialised as the tests'
    tiny models are: matrices N(0, 1/fan_in), norms 1, biases 0, so activations stay O(1) and finite.
    """
    import comfy.model_management
    import comfy.model_patcher

    dtype = dtype or unet_dtype()
    model_config = config_class(family)(unet_config(family, dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    _check_detection(family, model.diffusion_model, unet_config(family, dtype))
    tiny.init_weights(model, seed)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())
    return patcher, sum(p.numel() for p in model.diffusion_model.parameters())


def make_clip(family: str, seed: int = 0, dtype: torch.dtype | None = None) -> Any:
    """A ``comfy.sd.CLIP`` with the family's stock tokenizer(s) and full-width, 3-layer text encoders."""
    import comfy.sd

    dtype = dtype or unet_dtype()
    target = config_class(family)(unet_config(family, dtype)).clip_target()
    if family == "sd3":  # SD3's loader picks its encoders from the file's keys: all three here
        import comfy.supported_models_base
        import comfy.text_encoders.sd3_clip as sd3_clip

        target = comfy.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip())
    layers = {"num_hidden_layers": TEXT_LAYERS}
    options = {"dtype": dtype, "clip_l_model_config": dict(layers), "clip_g_model_config": dict(layers),
               "t5xxl_model_config": {"num_layers": 1}}
    clip = comfy.sd.CLIP(target=target, embedding_directory=None, model_options=options)
    tiny.init_weights(clip.cond_stage_model, seed)
    return clip


def make_bundle(family: str, seed: int = 0) -> Bundle:
    """The model and CLIP of ``family`` on ComfyUI's device, in its dtype."""
    import_comfy()
    dtype = unet_dtype()
    model, parameters = make_model(family, seed, dtype)
    return Bundle(family, model, make_clip(family, seed, dtype), dtype, parameters)


def threads_note() -> str:
    """How many intra-op threads torch uses, and where that came from (for the results header)."""
    source = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else "default"
    return f"{torch.get_num_threads()} ({source})"
