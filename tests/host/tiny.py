"""Tiny random-weight ComfyUI models for host tests.

Everything here is built from ComfyUI's own classes (model configs, ``model_base``,
text encoders, tokenizers, ``AutoencoderKL``) so the code under test sees the same
objects, hooks and conditioning layout as with real checkpoints, only with a few
thousand parameters and without any downloaded weights.

ComfyUI is located through the ``COMFYUI_PATH`` environment variable and is only
imported by :func:`import_comfy`, so this module itself imports without ComfyUI.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import comfy.model_patcher
    import comfy.sd

COMFYUI_ENV = "COMFYUI_PATH"
SKIP_REASON = "host tests need COMFYUI_PATH pointing at a ComfyUI checkout (see README)"

#: Families accepted by :func:`make_model`; :func:`make_clip` accepts the first three. "sd1_deep" has SD1.5's
#: four levels (attention at 1/1, 1/2, 1/4 and the middle at 1/8) and uses the sd1 CLIP.
FAMILIES = ("sd1", "sd2", "sdxl", "flux", "sd1_deep", "sd3", "aura")
UNET_FAMILIES = ("sd1", "sd2", "sdxl")
CLIP_FAMILIES = (*UNET_FAMILIES, "flux", "sd3")
#: SD3's context: CLIP-L and CLIP-G side by side, padded to T5-XXL's width, then T5's tokens.
SD3_CONTEXT = 4096

# --- tiny configs -------------------------------------------------------------------

#: Width of every tiny CLIP text transformer (so SD1/SD2 context dim is 32, SDXL 32 + 32).
CLIP_HIDDEN = 32
#: SDXL's ``encode_adm`` hard-codes 1280 pooled channels (+ 6 * 256 size embeddings = 2816).
SDXL_POOLED_DIM = 1280

# 3 layers, not 2: SD2's CLIP-H and SDXL's CLIP-L/G use the penultimate layer and
# ``SDClipModel`` asserts ``abs(layer_idx) < num_layers``.
_TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": CLIP_HIDDEN,
    "intermediate_size": 2 * CLIP_HIDDEN,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": CLIP_HIDDEN,
}

# Keys shared by the tiny UNets (what comfy.model_detection would produce, minus sizes).
_UNET_COMMON: dict[str, Any] = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "dtype": torch.float32,
}

# SD1: 2 levels (32, 64 ch), attention in every input/middle/output block,
# heads fixed (2) as SD1 fixes 8 -> dim_head 16 / 32.
_SD1_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "context_dim": CLIP_HIDDEN,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
}

# SD1 with SD1.5's levels: attention at 1/1, 1/2 and 1/4, none at 1/8 but in the middle block there.
_SD1_DEEP_UNET: dict[str, Any] = {
    **_SD1_UNET,
    "channel_mult": [1, 1, 1, 1],
    "num_res_blocks": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 0],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1, 1, 1],
}

# SD2: same layout, linear proj_in/out, dim_head fixed (16) as SD2 fixes 64 -> 2 / 4 heads.
_SD2_UNET: dict[str, Any] = {**_SD1_UNET, "use_linear_in_transformer": True}

# SDXL: 3 levels (32, 64, 64 ch); like SDXL the top level has no attention, the next has
# depth 1 and the lowest depth 2 (so block_index 1 exists); middle depth 2.
_SDXL_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 2],
    "transformer_depth_middle": 2,
    "transformer_depth_output": [0, 0, 1, 1, 2, 2],
    "context_dim": 2 * CLIP_HIDDEN,
    "use_linear_in_transformer": True,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
}

# Flux: 2 double + 2 single blocks (so a block's place in the call order matters); txt/vec dims match the tiny
# CLIP-L and T5.
_FLUX_DIT: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": CLIP_HIDDEN,
    "context_in_dim": CLIP_HIDDEN,
    "hidden_size": 32,
    "mlp_ratio": 2.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 2,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
    "dtype": torch.float32,
}

# SD3.5-medium-shaped: 3 joint blocks (128 wide, 2 heads), the second with SD3.5's image-only attention; the
# context is 4096 wide as SD3's (CLIP-L + CLIP-G padded, then T5).
_SD3_DIT: dict[str, Any] = {
    "in_channels": 16,
    "patch_size": 2,
    "depth": 3,
    "adm_in_channels": 2 * CLIP_HIDDEN,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": SD3_CONTEXT,
                                                                         "out_features": 192}},
    "pos_embed_max_size": 16,
    "num_patches": 256,
    "qk_norm": "rms",
    "x_block_self_attn_layers": [1],
}

# AuraFlow: a joint-attention family the edits refuse (registers before the text, another T5).
_AURA_DIT: dict[str, Any] = {"cond_seq_dim": CLIP_HIDDEN, "dim": 64, "n_layers": 2, "n_double_layers": 1,
                             "n_heads": 2, "global_conddim": 64, "max_seq": 256, "in_channels": 4,
                             "out_channels": 4, "patch_size": 2}

# Flux's T5 (ComfyUI's T5 class, T5-XXL's vocabulary and SentencePiece tokenizer), as wide as the tiny CLIP.
_TINY_T5_CONFIG: dict[str, Any] = {"d_model": CLIP_HIDDEN, "d_kv": 16, "d_ff": 2 * CLIP_HIDDEN, "num_layers": 2,
                                   "num_heads": 2}

# VAE: SD layout (4 latent channels, 3 downsamples = 8x), 32 channels everywhere.
_VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}

# --- importing ComfyUI -------------------------------------------------------------


def comfyui_path() -> str | None:
    """Return the ComfyUI checkout named by COMFYUI_PATH, or None if unset/invalid."""
    path = os.environ.get(COMFYUI_ENV, "")
    if not path:
        return None
    path = os.path.abspath(path)
    for marker in ("nodes.py", "execution.py", os.path.join("comfy", "model_management.py")):
        if not os.path.isfile(os.path.join(path, marker)):
            return None
    return path


def skip_reason() -> str:
    """Why host tests cannot run here (mentions a bad COMFYUI_PATH value if one is set)."""
    value = os.environ.get(COMFYUI_ENV)
    if value:
        return f"{SKIP_REASON}; {COMFYUI_ENV}={value!r} is not a ComfyUI checkout"
    return SKIP_REASON


_IMPORTED = False


def import_comfy() -> None:
    """Make ``comfy`` importable and configure it for deterministic CPU runs (idempotent).

    ``comfy.cli_args.args`` must be set before ``comfy.model_management`` is imported:
    that import picks the device (and calls CUDA without ``--cpu``).
    """
    global _IMPORTED
    if _IMPORTED:
        return
    path = comfyui_path()
    if path is None:
        raise RuntimeError(skip_reason())
    if path not in sys.path:
        # Front of sys.path: ComfyUI's top-level names (utils, app, server, nodes...)
        # must win over anything in the test run's cwd.
        sys.path.insert(0, path)

    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args  # parses [] (not sys.argv) unless enable_args_parsing() ran

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.deterministic = True  # torch.use_deterministic_algorithms
    import comfy.model_management

    if comfy.model_management.cpu_state != comfy.model_management.CPUState.CPU:
        raise RuntimeError("comfy.model_management was imported before import_comfy() without --cpu")

    if "OMP_NUM_THREADS" not in os.environ:
        # Tiny ops gain nothing from intra-op threads, and with other processes on the
        # same cores OpenMP spin-waiting made the smoke tests ~10x slower (7 s -> 80 s).
        torch.set_num_threads(1)

    # nodes.py puts ComfyUI/comfy at sys.path[0]; from then on `import utils` would find
    # comfy/utils.py and `server` (used by comfy_extras.nodes_images) fails to import.
    # Import ComfyUI's `utils` package first, as main.py effectively does.
    import utils.install_util  # noqa: F401

    _IMPORTED = True


# --- deterministic weights ---------------------------------------------------------

_NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter of ``module`` deterministically from ``seed``.

    ComfyUI's ``ops.disable_weight_init`` layers leave weights as ``torch.empty``
    (garbage/NaN), so every parameter is set: norm weights and other 1-D tensors to 1,
    biases to 0, embeddings N(0, 1), matrices/kernels N(0, 1/fan_in) so activations
    stay O(1) and the output (incl. the UNet's final conv) depends on input and text.
    """
    gen = torch.Generator().manual_seed(seed)
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = modules[owner_name]
            if leaf == "bias":
                param.zero_()
            elif isinstance(owner, _NORMS) or param.dim() < 2:
                param.fill_(1.0)
            elif isinstance(owner, torch.nn.Embedding):
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
        for name, buffer in module.named_buffers():
            if name.endswith("pos_embed"):  # SD3's position table is an empty buffer ComfyUI leaves to the file
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AssertionError(f"non-finite tensor {name} after init")


# --- models ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _config_classes() -> dict[str, type]:
    """Subclasses of ComfyUI's own model configs with tiny attention-head settings.

    Subclassing keeps isinstance checks, latent formats, sampling settings, clip
    targets and SD2's fp32 attention precision of the real families.
    """
    import comfy.supported_models as sm

    class TinySD15(sm.SD15):
        unet_extra_config = {**sm.SD15.unet_extra_config, "num_heads": 2}

    class TinySD20(sm.SD20):
        unet_extra_config = {**sm.SD20.unet_extra_config, "num_head_channels": 16}

    class TinySDXL(sm.SDXL):
        unet_extra_config = {**sm.SDXL.unet_extra_config, "num_head_channels": 16}

    return {"sd1": TinySD15, "sd1_deep": TinySD15, "sd2": TinySD20, "sdxl": TinySDXL, "flux": sm.Flux,
            "sd3": sm.SD3, "aura": sm.AuraFlow}


_UNET_CONFIGS: dict[str, dict[str, Any]] = {"sd1": _SD1_UNET, "sd1_deep": _SD1_DEEP_UNET, "sd2": _SD2_UNET,
                                            "sdxl": _SDXL_UNET, "flux": _FLUX_DIT, "sd3": _SD3_DIT,
                                            "aura": _AURA_DIT}


def _model_config(family: str) -> Any:
    """A fresh ComfyUI model-config object for a tiny model of ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    config = dict(_UNET_CONFIGS[family])
    if family == "flux":
        import dataclasses

        from comfy.ldm.flux.model import FluxParams

        if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
            config["txt_ids_dims"] = []  # newer ComfyUI asks it of every Flux; Flux.1's text ids have none
    return _config_classes()[family](config)


def make_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """A tiny CPU diffusion model of ``family`` ("sd1", "sd2", "sdxl", "flux", "sd3"), in ``dtype`` (the same
    weights, rounded, for fp16 and bf16: CPUs run both).

    sd1: EPS BaseModel; sd2: V_PREDICTION BaseModel (attn_precision fp32);
    sdxl: model_base.SDXL (needs ``pooled_output`` [n, 1280]); flux: model_base.Flux (Flux.1 dev: guidance
    embedding, 16 latent channels; runs with the tiny Flux CLIP); sd3: model_base.SD3 (SD3.5 medium's shape; the
    tiny SD3 CLIP); aura: model_base.AuraFlow, for "unsupported family" checks.
    """
    import_comfy()
    import comfy.model_base as mb
    import comfy.model_management
    import comfy.model_patcher

    config = _model_config(family)
    device = torch.device("cpu")
    if family in ("sd1", "sd1_deep"):
        model = mb.BaseModel(config, model_type=mb.ModelType.EPS, device=device)
    elif family == "sd2":
        model = mb.BaseModel(config, model_type=mb.ModelType.V_PREDICTION, device=device)
    elif family == "sdxl":
        model = mb.SDXL(config, model_type=mb.ModelType.EPS, device=device)
    elif family == "sd3":
        model = mb.SD3(config, device=device)
    elif family == "aura":
        model = mb.AuraFlow(config, device=device)
    else:
        model = mb.Flux(config, device=device)
    init_weights(model, seed)
    if dtype != torch.float32:
        model.diffusion_model.to(dtype)
        model.diffusion_model.dtype = dtype
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def make_gentle_model(family: str, scale: float, seed: int = 3,
                      dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """``make_model`` with its output layer scaled by ``scale``: a random network predicts noise (or velocity) of
    the wrong size at every step, so inversions of it drift far off; a trained model's predictions are small
    relative to the latent, as this one's are, which makes comparisons between inversions meaningful."""
    model = make_model(family, seed=seed, dtype=dtype)
    network = model.model.diffusion_model
    with torch.no_grad():
        (network.out[-1] if hasattr(network, "out") else network.final_layer.linear).weight.mul_(scale)
    return model


def make_clip(family: str, seed: int = 0) -> comfy.sd.CLIP:
    """A tiny ``comfy.sd.CLIP`` with the stock tokenizer(s) and encoder wiring of ``family``.

    sd1: CLIP-L ('l', last layer, EOS padding); sd2: OpenCLIP-H ('h', penultimate,
    pad 0); sdxl: 'l' + 'g' (penultimate, concatenated to 64 channels, pooled from g
    projected to 1280); flux: 'l' (pooled) + 't5xxl' (the context, padded to 256 tokens).
    The text transformers are 32 wide, 3 layers, 2 heads; the T5 32 wide, 2 layers.
    """
    if family not in CLIP_FAMILIES:
        raise ValueError(f"no tiny CLIP for {family!r}; expected one of {CLIP_FAMILIES}")
    import_comfy()
    import comfy.sd

    target = _model_config(family).clip_target()
    if family == "sd3":  # SD3's loader picks its encoders from the file's keys: all three here
        import comfy.supported_models_base
        import comfy.text_encoders.sd3_clip as sd3_clip

        target = comfy.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip())
    options: dict[str, Any] = {
        # CPU text encoders default to fp16 in model_management.text_encoder_dtype.
        "dtype": torch.float32,
        # SDClipModel merges "<model_name>_model_config" into its JSON config.
        "clip_l_model_config": dict(_TINY_TEXT_CONFIG),
        "clip_h_model_config": dict(_TINY_TEXT_CONFIG),
        "clip_g_model_config": dict(_TINY_TEXT_CONFIG),
        "t5xxl_model_config": {**_TINY_T5_CONFIG, **({"d_model": SD3_CONTEXT} if family == "sd3" else {})},
    }
    clip = comfy.sd.CLIP(target=target, embedding_directory=None, model_options=options)
    encoder = clip.cond_stage_model
    if family == "sdxl":
        # CLIPTextModel ignores projection_dim (text_projection is hidden x hidden), but
        # SDXL's ADM needs a 1280-wide pooled vector: widen clip_g's projection.
        clip_g = encoder.clip_g
        clip_g.transformer.text_projection = clip_g.operations.Linear(
            CLIP_HIDDEN, SDXL_POOLED_DIM, bias=False, dtype=torch.float32, device=torch.device("cpu")
        )
    init_weights(encoder, seed)
    return clip


def make_vae(seed: int = 0, channels: int = 4) -> comfy.sd.VAE:
    """A tiny SD-style ``comfy.sd.VAE`` (AutoencoderKL, 8x scale) with 4 latent channels (16 as Flux's)."""
    import_comfy()
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"ddconfig": {**_VAE_DDCONFIG, "z_channels": channels}, "embed_dim": channels}
    # Build once to get a deterministic state dict, then let comfy.sd.VAE load it the
    # normal way (it builds its own AutoencoderKL from `config`).
    donor = AutoencoderKL(**params)
    init_weights(donor, seed)
    state_dict = donor.state_dict()
    return comfy.sd.VAE(sd=state_dict, device=torch.device("cpu"), config={"params": params}, dtype=torch.float32)


def latent(batch: int, height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    """An empty SD latent dict like EmptyLatentImage's output (pixel sizes in)."""
    return {"samples": torch.zeros([batch, 4, height // 8, width // 8])}

