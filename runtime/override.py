"""The attention override: ComfyUI's attention call, edited where a layer has Prompt-to-Prompt work.

ComfyUI's `optimized_attention_override` wraps every attention call of the model, including those made by other
nodes' attention patches (IPAdapter-style replace patches call the same attention function): such patches keep
working and are edited with it. On a UNet the call's `LayerCursor` (set by the layer tracker) names the layer; a
joint model's calls are counted, their order naming the block.
"""

from __future__ import annotations

import torch

from ..p2p_core.attention import cross_attention, edited_row_pairs, record_self_attention, shared_queries_keys
from ..p2p_core.edits import EditPlan
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.joint import JointRow, joint_attention
from ..p2p_core.store import MapAccumulator
from .call import KEY, CallState, SharedOnClone
from .families import Family


class AttentionOverride(SharedOnClone):
    """The override of one edit plan on one model family."""

    def __init__(self, plan: EditPlan, model_family: Family) -> None:
        self.plan = plan
        self.family = model_family
        self.levels = model_family.layers

    def attention(self, func, q, k, v, *args, **kwargs):
        """ComfyUI's attention call, edited where this layer has Prompt-to-Prompt work."""
        if self.family.joint:
            return self.joint_attention(func, q, k, v, *args, **kwargs)
        options = kwargs.get("transformer_options") or {}
        state: CallState | None = options.get(KEY)
        cursor = state.cursor if state is not None else None
        plain = (cursor is None or cursor.served or len(args) != 1 or kwargs.get("mask") is not None
                 or kwargs.get("skip_reshape") or kwargs.get("skip_output_reshape")
                 or k.shape[1] != (q.shape[1] if cursor.kind == "self" else state.context_tokens))
        if plain:
            return func(q, k, v, *args, **kwargs)
        cursor.served = True
        heads = args[0]

        def fused(q, k, v, heads):
            return func(q, k, v, heads, **kwargs)

        if cursor.kind == "self":
            return self.self_attention(q, k, v, heads, state, options, fused)
        return self.cross_attention(q, k, v, heads, state, options, fused)

    def cross_attention(self, q, k, v, heads, state: CallState, options: dict, fused):
        edits = [(source, row, state.cross[i], self.plan.rows[i].prompt.length)
                 for source, row, i in self.row_pairs(state, q.shape[0]) if state.cross[i] is not None]
        record, recorder = self.recorder_at(state.recording, state, options, q.shape[0])
        return cross_attention(q, k, v, heads, edits, self.plan.source.length, fused, record=record,
                               recorder=recorder)

    def self_attention(self, q, k, v, heads, state: CallState, options: dict, fused):
        """Self-attention with the source's maps for the rows that share it here; a recorded row's maps are the
        ones it attends with (the source's, while shared, as the official store keeps them)."""
        pairs = [(source, row) for source, row, i in self.row_pairs(state, q.shape[0])
                 if self.shares_self(state, i, state.cursor.key)]
        q, k = shared_queries_keys(q, k, pairs)
        record, recorder = self.recorder_at(state.recording_self, state, options, q.shape[0])
        if recorder is not None:
            record_self_attention(q, k, heads, [row for row, _ in record], recorder)
        return fused(q, k, v, heads)

    def joint_attention(self, func, q, k, v, *args, **kwargs):
        """A joint (text and image) attention call. The model's blocks call attention in a fixed order (Flux:
        every double block, then every single block; SD3: every joint block), so the call's place in that order
        names its block, on every ComfyUI (0.3.x sets no block name in the options). Flux passes
        [B, heads, L, dim] (skip_reshape), SD3 [B, L, heads * dim] with heads by keyword; text first in both.
        SD3.5's blocks also make an image-only attention call after the joint one, the image's own self-attention:
        a row sharing the source's image queries and keys in that block takes them there too."""
        options = kwargs.get("transformer_options") or {}
        state: CallState | None = options.get(KEY)
        if state is None:
            return func(q, k, v, *args, **kwargs)
        heads = args[0] if args else kwargs.get("heads")
        text, image = state.context_tokens, state.image_grid[0] * state.image_grid[1]
        length = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        pairs = self.row_pairs(state, q.shape[0])
        cursor = state.cursor
        if length == image and text:  # an image-only call after its block's joint one (SD3.5)
            shared = [(source, row) for source, row, i in pairs if self.shares_self(state, i, cursor.key)]
            q, k = shared_queries_keys(q, k, shared)
            return func(q, k, v, *args, **kwargs)
        keys = list(self.levels)
        key = keys[cursor.calls] if cursor.calls < len(keys) else None
        cursor.calls += 1
        cursor.key, cursor.level = key, self.levels.get(key, 0)
        rows = [JointRow(source, row, state.cross[i], self.shares_self(state, i, key)) for source, row, i in pairs]
        rows = [row for row in rows if row.cross is not None or row.shares]
        recording = key is not None and key[0] in self.family.map_blocks
        record, recorder = self.recorder_at(state.recording, state, options, q.shape[0]) if recording else ([], None)
        if not rows and recorder is None:
            return func(q, k, v, *args, **kwargs)
        if len(args) > 1 or kwargs.get("mask") is not None or heads is None or length != text + image:
            raise PromptToPromptError(
                f"A joint attention call of this {self.family.name} model has {length} tokens"
                f"{' and an attention mask' if kwargs.get('mask') is not None else ''}, not the {text} text and "
                f"{image} image tokens of the sampled latent, so the edit cannot find its words there. Another node "
                "adds tokens or masks to this model's attention (reference images such as Flux Kontext's, regional "
                "prompts): remove it, or sample it without Prompt-to-Prompt.")
        batch = q.shape[0]
        if not kwargs.get("skip_reshape"):  # to [B, heads, L, dim], the kernel's own layout with skip_reshape
            q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v))
        call = {**kwargs, "skip_reshape": True}
        call.pop("heads", None)

        def fused(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
            out = func(q_, k_, v_, heads, **call)  # [B, L, heads * dim]
            return out.reshape(q_.shape[0], q_.shape[2], heads, -1).transpose(1, 2)

        out = joint_attention(q, k, v, text, rows, fused, [row for row, _ in record], recorder)
        return out.transpose(1, 2).reshape(batch, length, -1)

    def shares_self(self, state: CallState, row: int, layer) -> bool:
        """Whether edited row `row` takes the source's self-attention (its image queries and keys) in `layer` now."""
        return state.shares_self[row] and self.plan.rows[row].shares_self_attention_in(layer)

    def row_pairs(self, state: CallState, batch: int) -> list[tuple[int, int, int]]:
        if not self.plan.rows:
            return []
        return edited_row_pairs(state.positive, batch, self.plan.num_rows)

    def recorded_rows(self, state: CallState, batch: int) -> list[tuple[int, int]]:
        """(batch row, prompt length) of the first positive chunk's rows; with no edit every latent row
        holds the source prompt (a plain batch)."""
        if True not in state.positive:
            return []
        per_chunk = batch // len(state.positive)
        start = state.positive.index(True) * per_chunk
        lengths = [self.plan.source.length] + [row.prompt.length for row in self.plan.rows]
        if not self.plan.rows:
            lengths = lengths * per_chunk
        return [(start + i, length) for i, length in enumerate(lengths)]

    def recorder_at(self, accumulators: tuple[MapAccumulator, ...], state: CallState, options: dict, batch: int):
        """(rows to record with their prompt lengths, the callback adding a row's maps) for this layer's
        level, or ([], None) when nothing records it."""
        recording = [a for a in accumulators if a.level == state.cursor.level]
        record = self.recorded_rows(state, batch) if recording else []
        if not record:
            return [], None
        offset = record[0][0]
        layer_shape = state.image_grid if self.family.joint else tuple(options["activations_shape"][-2:])

        def recorder(row: int, maps: torch.Tensor) -> None:
            for accumulator in recording:
                accumulator.add(row - offset, maps, layer_shape)
        return record, recorder
