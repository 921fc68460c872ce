"""The joint-attention demo model's shape, and how it becomes ComfyUI's own MODEL, CLIP and VAE objects.

It is Flux.1 in miniature, built from ComfyUI's own classes: ``comfy.ldm.flux.model.Flux`` (double-stream and
single-stream blocks, RoPE over text and image positions, flow matching on ComfyUI's ModelSamplingFlux, no
guidance embedding: sampled with CFG, as Flux schnell or SD3 would be), ComfyUI's ``FluxTokenizer`` and
``FluxClipModel`` (a CLIP-L for the pooled vector, a T5 for the per-token context, with T5's SentencePiece: no start
token, an end token, pad tokens the model attends to). Its latents are the UNet demo model's (same VAE, 4 channels,
16x16 for 128x128 pictures), cut in Flux's 2x2 patches: 8x8 image tokens, so a word's map is 8x8. (ComfyUI 0.3.64's
Flux unpatches with a hard-coded 2, so a patch of 1 would sample wrong there.)

Flux pads T5 to 256 tokens; the toy pads to ``text_length`` (ComfyUI's own ``t5xxl_min_length`` tokenizer
option), so a training step costs a third as much. The pack reads the text length from each call, never assumes it.

The file is a ``.safetensors`` with four prefixes (``dit.``, ``clip_l.``, ``t5xxl.``, ``vae.``) and the shapes in
its metadata; both token embeddings keep only the rows the toy grammar uses (``model.sparse_rows``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import model

T5_EMBEDDING = "shared.weight"
T5_VOCAB = 32128
#: Where the file records its shapes (the UNet demo model's files have ``toy_config``: neither loads as the other).
METADATA_KEY = "toy_flux_config"


@dataclass(frozen=True)
class FluxToyConfig:
    """Widths of the Flux-shaped model, its T5 and (from the UNet demo model) its CLIP-L and VAE."""

    hidden: int = 192
    heads: int = 6
    double_blocks: int = 3
    single_blocks: int = 3
    patch: int = 2
    t5_width: int = 128
    t5_layers: int = 3
    t5_heads: int = 4
    text_length: int = 32
    shift: float = 1.0
    #: Pictures `scale` times the toy world's 128 pixels (`scenes.draw`), encoded by the UNet demo model's VAE
    #: adapted to that size (`train.adapt_vae`): at 256 pixels a 2x2 patch is 8 of the world's pixels, not 16.
    scale: int = 1
    clip: dict[str, Any] | None = None  # the UNet demo model's ToyConfig (its CLIP-L and VAE widths)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FluxToyConfig:
        return cls(**json.loads(text))

    @property
    def unet_toy(self) -> model.ToyConfig:
        return model.ToyConfig.from_json(json.dumps(self.clip or {}))

    def dit_config(self) -> dict[str, Any]:
        third = self.hidden // self.heads * 3 // 8 // 2 * 2  # RoPE axes take even widths
        axes = [self.hidden // self.heads - 2 * third, third, third]  # Flux.1: 16, 56, 56 of 128
        config = {"image_model": "flux", "in_channels": 4, "out_channels": 4, "vec_in_dim": self.unet_toy.text_width,
                  "context_in_dim": self.t5_width, "hidden_size": self.hidden, "mlp_ratio": 4.0,
                  "num_heads": self.heads, "depth": self.double_blocks, "depth_single_blocks": self.single_blocks,
                  "axes_dim": axes, "theta": 10000, "patch_size": self.patch, "qkv_bias": True,
                  "guidance_embed": False}
        import dataclasses

        from comfy.ldm.flux.model import FluxParams

        if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)}:
            config["txt_ids_dims"] = []  # newer ComfyUI asks it of every Flux; Flux.1's text ids have none
        return config

    def t5_config(self) -> dict[str, Any]:
        return {"d_model": self.t5_width, "d_kv": self.t5_width // self.t5_heads, "d_ff": 2 * self.t5_width,
                "num_layers": self.t5_layers, "num_heads": self.t5_heads, "vocab_size": T5_VOCAB}


def model_config(config: FluxToyConfig) -> Any:
    """ComfyUI's Flux (schnell: no guidance embedding) config with the toy's widths, the UNet toy's latents, and
    ComfyUI's own Flux text classes."""
    import comfy.latent_formats
    import comfy.supported_models as sm
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    class ToyFlux(sm.FluxSchnell):
        latent_format = comfy.latent_formats.SD15
        sampling_settings = {"multiplier": 1.0, "shift": config.shift}

        def clip_target(self, state_dict: dict | None = None) -> Any:
            return comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                          comfy.text_encoders.flux.flux_clip())

    return ToyFlux(config.dit_config())


def build_dit(config: FluxToyConfig) -> Any:
    """A ComfyUI ``model_base.Flux`` with the toy widths, weights uninitialised."""
    import comfy.model_base as mb

    return mb.Flux(model_config(config), device=torch.device("cpu"))


def build_clip(config: FluxToyConfig) -> Any:
    """A ``comfy.sd.CLIP`` with Flux's tokenizers (T5 padded to ``text_length``) and toy-width encoders (fp32)."""
    import comfy.sd

    options = {"dtype": torch.float32, "clip_l_model_config": config.unet_toy.text_config(),
               "t5xxl_model_config": config.t5_config()}
    return comfy.sd.CLIP(target=model_config(config).clip_target(), embedding_directory=None, model_options=options,
                         tokenizer_data={"t5xxl_min_length": config.text_length})


def encoders(clip: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The CLIP-L and T5 inside a Flux ``comfy.sd.CLIP`` (``SDClipModel``s: what training updates)."""
    return clip.cond_stage_model.clip_l, clip.cond_stage_model.t5xxl


def save(path: Path, config: FluxToyConfig, dit: torch.nn.Module, clip_l: torch.nn.Module, t5: torch.nn.Module,
         vae: dict[str, torch.Tensor], clip_tokens: list[int], t5_tokens: list[int]) -> None:
    """Write the networks in fp16, keeping only the token embeddings the toy grammar uses. The transformer's keys
    are a Flux checkpoint's (QK norms as ``*_norm.scale``, which newer ComfyUI renames to ``.weight`` on load), so
    every ComfyUI version reads the file."""
    canonical = {k.removesuffix(".weight") + ".scale" if k.endswith("_norm.weight") else k: v
                 for k, v in dit.state_dict().items()}
    parts = {"dit": canonical, "vae": vae,
             "clip_l": model.sparse_rows(clip_l.transformer.state_dict(), model.TOKEN_EMBEDDING, clip_tokens),
             "t5xxl": model.sparse_rows(t5.transformer.state_dict(), T5_EMBEDDING, t5_tokens)}
    model.write_parts(path, parts, {METADATA_KEY: config.to_json()})


def is_joint_model(path: Path) -> bool:
    """Whether the file is this model's (its metadata names the config), not the UNet demo model's; ValueError,
    naming the file, for one that is no .safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return METADATA_KEY in (handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a .safetensors file ({error}).") from None


def read(path: Path) -> tuple[FluxToyConfig, dict[str, dict[str, torch.Tensor]]]:
    """The config and fp32 state dicts per network, token embeddings restored; ValueError naming a wrong file."""
    metadata, parts = model.read_parts(path, METADATA_KEY, "a joint-attention demo-model file")
    config = FluxToyConfig.from_json(metadata[METADATA_KEY])
    parts["clip_l"] = model.dense_rows(parts["clip_l"], model.TOKEN_EMBEDDING, model.VOCAB_SIZE)
    parts["t5xxl"] = model.dense_rows(parts["t5xxl"], T5_EMBEDDING, T5_VOCAB)
    return config, parts


def load(path: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any, Any, FluxToyConfig]:
    """The model as ComfyUI's (ModelPatcher, CLIP, VAE), placed and typed as ComfyUI places a checkpoint, or with
    the transformer in ``dtype``."""
    import comfy.sd

    config, parts = read(path)
    base, clip = networks(config, parts)
    vae = comfy.sd.VAE(sd=parts["vae"], config={"params": config.unet_toy.vae_params()})
    return model.patcher(base, dtype), clip, vae, config


def networks(config: FluxToyConfig, parts: dict[str, dict[str, torch.Tensor]]) -> tuple[Any, Any]:
    """ComfyUI's Flux ``model_base`` and Flux ``comfy.sd.CLIP`` holding a file's weights (`read`)."""
    base = build_dit(config)
    base.diffusion_model.load_state_dict(base.model_config.process_unet_state_dict(parts["dit"]))
    clip = build_clip(config)
    clip_l, t5 = encoders(clip)
    clip_l.transformer.load_state_dict(parts["clip_l"])
    t5.transformer.load_state_dict(parts["t5xxl"])
    return base, clip
