"""What one model call of an edit carries to each of its attention calls.

`EditPatch.apply_model` builds a `CallState` once per model call and passes it in the call's transformer_options
under `KEY`; the layer tracker (attn1/attn2 patches) and the attention override read it there. Its `LayerCursor`
is the one thing they write: which attention call comes next, and whether the override served it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..p2p_core.edits import StepEdit
from ..p2p_core.store import MapAccumulator
from .unet import LayerKey

KEY = "prompt_to_prompt"


@dataclass
class LayerCursor:
    """The attention call a transformer block makes next, set by our attn1/attn2 patches (ComfyUI runs them just
    before each attention), and whether the override served it.

    The handshake, per UNet transformer block (ComfyUI calls both hooks; neither knows the other):

        attn1 patch ──> next_layer: cursor = (self, layer, level), served = False
        attention override ──> reads the cursor, edits or shares, served = True
        attn2 patch ──> next_layer: checks served (else another node replaced the attention) ...
        attention override ──> cross edit with this layer's maps, served = True

    Joint-attention models have no attn1/attn2 patches: the override counts its calls (``calls``) and names the
    block from the family's call order.
    """

    kind: str = ""
    key: LayerKey | None = None
    level: int = 0
    busy: bool = False
    served: bool = True
    calls: int = 0
    """Joint models: the attention calls made so far in this model call (see joint_attention)."""


@dataclass(frozen=True)
class CallState:
    """One model call's step and work: per edited row its cross edit (on the call's device) and self
    sharing, the accumulators recording cross- and self-attention at this step, the text context length,
    which of the call's conditioning chunks is the sampler's positive, and the layers a guidance pass replaced."""

    step: int
    steps: int
    cross: tuple[StepEdit | None, ...]
    shares_self: tuple[bool, ...]
    recording: tuple[MapAccumulator, ...]
    recording_self: tuple[MapAccumulator, ...]
    context_tokens: int
    positive: tuple[bool, ...]
    replaced_for_guidance: frozenset
    image_grid: tuple[int, int] = (0, 0)
    """Joint models: the image tokens' grid (rows, columns) for this call's latent."""
    cursor: LayerCursor = field(default_factory=LayerCursor)


class SharedOnClone:
    """ModelPatcher.clone() deep-copies model_options, where the edit's hooks sit as bound methods; what they
    serve (the plan) never changes, so every clone shares the one object."""

    def __deepcopy__(self, memo: dict) -> SharedOnClone:
        return self
