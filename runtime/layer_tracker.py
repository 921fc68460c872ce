"""Which UNet attention layer runs next: the attn1/attn2 patches' half of the cursor handshake.

ComfyUI runs a model's attn1/attn2 patches just before each self- and cross-attention of a transformer block;
they set the call's `LayerCursor` (see runtime/call.py) so the attention override knows which layer it edits, and
they notice a layer whose attention another node computed itself, where the edit could not act.
"""

from __future__ import annotations

from ..p2p_core.edits import EditPlan
from ..p2p_core.errors import PromptToPromptError
from .call import KEY, CallState, LayerCursor, SharedOnClone
from .unet import LayerKey

ATTENTION = {"self": "attn1", "cross": "attn2"}


class LayerTracker(SharedOnClone):
    """The attn1/attn2 patches of one edit plan (UNet models; joint models count their calls instead)."""

    def __init__(self, plan: EditPlan, levels: dict[LayerKey, int]) -> None:
        self.plan = plan
        self.levels = levels

    def before_self_attention(self, n, context, value, extra_options):
        self.next_layer(extra_options, "self")
        return n, context, value

    def before_cross_attention(self, n, context, value, extra_options):
        self.next_layer(extra_options, "cross")
        return n, context, value

    def next_layer(self, extra_options: dict, kind: str) -> None:
        """Point the cursor at the attention call this block makes next (after checking the last was served)."""
        state: CallState | None = extra_options.get(KEY)
        if state is None:
            return
        self.check_served(state.cursor)
        block = extra_options["block"]
        key = (block[0], block[1], extra_options.get("block_index", 0))
        level = self.levels.get(key, 0)
        attention = ATTENTION[kind]
        if any((attention, k) in state.replaced_for_guidance for k in (key, key[:2])):
            busy = False  # a guidance pass's perturbed layer (PAG): that pass runs unedited there
        elif kind == "self":
            busy = any(shares and row.shares_self_attention_in(key)
                       for shares, row in zip(state.shares_self, self.plan.rows))
            busy = busy or any(a.level == level for a in state.recording_self)
        else:
            busy = any(e is not None for e in state.cross) or any(a.level == level for a in state.recording)
        state.cursor.kind, state.cursor.key, state.cursor.level = kind, key, level
        state.cursor.busy, state.cursor.served = busy, False

    @staticmethod
    def check_served(cursor: LayerCursor) -> None:
        """Stop the run when the last busy layer's attention never reached the override."""
        if cursor.busy and not cursor.served:
            kind = "self-attention (attn1)" if cursor.kind == "self" else "cross-attention (attn2)"
            raise PromptToPromptError(
                f"Another node replaced the {kind} of layer {cursor.key} with an attention patch whose attention "
                "never reaches ComfyUI's attention hook with the model's options: it computes attention itself "
                "(Self-Attention Guidance), or calls ComfyUI's attention without its transformer_options "
                "(IPAdapter Plus), so the Prompt-to-Prompt edit cannot act there. Remove that node from this "
                "model, or apply it to a model that is not sampled with Prompt-to-Prompt.")


def replaced_layers(transformer_options: dict) -> frozenset:
    """(attn1/attn2, key) of every layer whose attention a patch replaces in these options.

    Taken once from the sampled model's options (OWN_REPLACED_KEY, runtime/patch.py) and again for each model
    call: a layer replaced in a call but not on the model is one that a guidance node replaced for an extra pass of
    its own
    (PerturbedAttentionGuidance replaces the middle block's self-attention by its values in its perturbed pass).
    That pass may run unedited at that layer; a replacement the model itself carries (Self-Attention Guidance,
    IPAdapter) acts on the edit's own pass and stays refused where the edit needs the layer."""
    replace = transformer_options.get("patches_replace", {})
    return frozenset((kind, key) for kind in ATTENTION.values() for key in replace.get(kind, {}))
