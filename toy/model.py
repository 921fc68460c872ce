"""The demo model's shape, and how it becomes ComfyUI's own MODEL, CLIP and VAE objects.

It is an SD1.x model in miniature: ComfyUI's ``AutoencoderKL`` (8x downsampling, 4 latent channels, SD1.5's
latent scale), an SD1-shaped ``UNetModel`` with cross-attention at every level (16x16, 8x8 and 4x4 latents for
128x128 pictures), and ComfyUI's CLIP tokenizer with a small CLIP text transformer, on SD's noise schedule with
eps prediction. So every node of the pack, and every stock ComfyUI node, treats it exactly as a real checkpoint.

The file is a ``.safetensors`` with three prefixes (``unet.``, ``clip.``, ``vae.``) and the shapes in its
metadata. CLIP's token embedding has 49408 rows of which the toy grammar uses 18: the file keeps only
those (``clip.token_ids``, ``clip.token_rows``) and the loader gives every other token a zero vector, which keeps
the file far under its 20 MB budget.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
VOCAB_SIZE = 49408


@dataclass(frozen=True)
class ToyConfig:
    """Widths of the three networks (defaults: the first, narrow demo model; the shipped one's UNet is 64-64-128,
    and every file records its own)."""

    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 2
    unet_channels: int = 32
    unet_mult: tuple[int, ...] = (1, 2, 4)
    unet_heads: int = 2
    vae_channels: int = 32
    vae_mult: tuple[int, ...] = (1, 2, 2, 4)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def scale(self) -> int:
        """How many times larger than `scenes.SIZE` the model draws: this model, at the toy world's own size."""
        return 1

    @classmethod
    def from_json(cls, text: str) -> ToyConfig:
        values = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def text_config(self) -> dict[str, Any]:
        return {"hidden_size": self.text_width, "intermediate_size": 4 * self.text_width,
                "num_hidden_layers": self.text_layers, "num_attention_heads": self.text_heads,
                "max_position_embeddings": 77, "vocab_size": VOCAB_SIZE, "projection_dim": self.text_width}

    def unet_config(self) -> dict[str, Any]:
        levels = len(self.unet_mult)
        return {"image_size": 16, "in_channels": 4, "out_channels": 4, "model_channels": self.unet_channels,
                "use_spatial_transformer": True, "legacy": False, "use_checkpoint": False,
                "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": torch.float32,
                "channel_mult": list(self.unet_mult), "num_res_blocks": [1] * levels,
                "transformer_depth": [1] * levels, "transformer_depth_middle": 1,
                "transformer_depth_output": [1] * (2 * levels), "context_dim": self.text_width,
                "use_linear_in_transformer": False, "adm_in_channels": None}

    def vae_params(self) -> dict[str, Any]:
        return {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 128, "in_channels": 3,
                                             "out_ch": 3, "ch": self.vae_channels, "ch_mult": list(self.vae_mult),
                                             "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}


def model_config(config: ToyConfig) -> Any:
    """ComfyUI's SD1.5 model config with the toy UNet's widths (a subclass, so SD1.5 checks and latent format hold)."""
    import comfy.supported_models as sm

    class ToySD15(sm.SD15):
        unet_extra_config = {"num_heads": config.unet_heads, "num_head_channels": -1}

    return ToySD15(config.unet_config())


def build_unet(config: ToyConfig) -> Any:
    """A ComfyUI ``BaseModel`` (eps prediction, SD schedule) with the toy UNet, weights uninitialised."""
    import comfy.model_base as mb

    return mb.BaseModel(model_config(config), model_type=mb.ModelType.EPS, device=torch.device("cpu"))


def build_clip(config: ToyConfig) -> Any:
    """A ``comfy.sd.CLIP`` with SD1's tokenizer and a toy-width CLIP-L text transformer (fp32: it is tiny)."""
    import comfy.sd

    options = {"dtype": torch.float32, "clip_l_model_config": config.text_config()}
    return comfy.sd.CLIP(target=model_config(config).clip_target(), embedding_directory=None, model_options=options)


def build_autoencoder(config: ToyConfig) -> Any:
    """ComfyUI's ``AutoencoderKL`` with the toy widths (for training; the VAE object is built by load)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return AutoencoderKL(**config.vae_params())


def text_encoder(clip: Any) -> torch.nn.Module:
    """The CLIP-L text model inside a ``comfy.sd.CLIP`` (what training updates and the file stores)."""
    return clip.cond_stage_model.clip_l


def sparse_rows(state: dict[str, torch.Tensor], key: str, ids: list[int]) -> dict[str, torch.Tensor]:
    """``state`` with its token embedding ``key`` kept for ``ids`` only (as ``token_ids`` and ``token_rows``): the
    toy grammar uses a few dozen of tens of thousands of rows, and the file has a 20 MB budget."""
    state = dict(state)
    table = state.pop(key)
    kept = torch.tensor(sorted(set(ids)), dtype=torch.int32)
    return state | {"token_ids": kept, "token_rows": table[kept.long()]}


def dense_rows(state: dict[str, torch.Tensor], key: str, vocabulary: int) -> dict[str, torch.Tensor]:
    """The inverse of ``sparse_rows``: every token the grammar never uses gets a zero vector."""
    state = dict(state)
    ids, rows = state.pop("token_ids"), state.pop("token_rows")
    table = torch.zeros(vocabulary, rows.shape[1])
    table[ids.long()] = rows
    return state | {key: table}


def write_parts(path: Path, parts: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str]) -> None:
    """One .safetensors of every part's tensors under ``part.``, floats in fp16."""
    from safetensors.torch import save_file

    tensors = {f"{prefix}.{k}": v for prefix, state in parts.items() for k, v in state.items()}
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_parts(path: Path, metadata_key: str, kind: str) -> tuple[dict[str, str], dict[str, dict[str, torch.Tensor]]]:
    """A file of ``write_parts``: its metadata and fp32 parts. ValueError, naming the file, for a file that is no
    .safetensors or whose metadata lacks ``metadata_key`` (another kind of file)."""
    from safetensors import SafetensorError, safe_open

    parts: dict[str, dict[str, torch.Tensor]] = {}
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a .safetensors file ({error}).") from None
    with handle:
        metadata = handle.metadata() or {}
        if metadata_key not in metadata:
            raise ValueError(f"{path} is not {kind} (its metadata has no {metadata_key}): use a file written by the "
                             "pack's toy training (toy/MODEL.md); a checkpoint goes in Load Checkpoint instead.")
        for key in handle.keys():
            prefix, _, name = key.partition(".")
            tensor = handle.get_tensor(key)
            parts.setdefault(prefix, {})[name] = tensor.float() if tensor.is_floating_point() else tensor
    return metadata, parts


def save(path: Path, config: ToyConfig, unet: torch.nn.Module, text: torch.nn.Module,
         autoencoder: torch.nn.Module, token_ids: list[int]) -> None:
    """Write the three networks in fp16, keeping only the token embeddings of ``token_ids``."""
    parts = {"unet": unet.state_dict(), "vae": autoencoder.state_dict(),
             "clip": sparse_rows(text.transformer.state_dict(), TOKEN_EMBEDDING, token_ids)}
    write_parts(path, parts, {"toy_config": config.to_json()})


def read(path: Path) -> tuple[ToyConfig, dict[str, dict[str, torch.Tensor]]]:
    """The config and fp32 state dicts per network (``unet``, ``clip``, ``vae``), the token embedding restored.

    Raises ValueError, naming the file, for a file that is no .safetensors or one that ``save`` did not write.
    """
    metadata, parts = read_parts(path, "toy_config", "a demo-model file")
    parts["clip"] = dense_rows(parts["clip"], TOKEN_EMBEDDING, VOCAB_SIZE)
    return ToyConfig.from_json(metadata["toy_config"]), parts


def patcher(base: Any, dtype: torch.dtype | None) -> Any:
    """``base`` in a ModelPatcher, typed as ComfyUI types a checkpoint's model on this device (or ``dtype``)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    dtype = dtype or mm.unet_dtype(model_params=1, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    base.diffusion_model.to(dtype)
    base.diffusion_model.dtype = dtype
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def load(path: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any, Any, ToyConfig]:
    """The demo model as ComfyUI's (ModelPatcher, CLIP, VAE), placed and typed as ComfyUI places a checkpoint, or
    with the UNet in ``dtype`` (the tests run the fp16 and bf16 a user's GPU would on the CPU)."""
    import comfy.sd

    config, parts = read(path)
    base = build_unet(config)
    base.diffusion_model.load_state_dict(parts["unet"])
    model = patcher(base, dtype)
    clip = build_clip(config)
    text_encoder(clip).transformer.load_state_dict(parts["clip"])
    vae = comfy.sd.VAE(sd=parts["vae"], config={"params": config.vae_params()})
    return model, clip, vae, config
