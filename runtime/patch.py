"""Install an edit plan on a clone of a ComfyUI ModelPatcher.

Attention is edited through ComfyUI's `optimized_attention_override`, which wraps every attention call of the
model, including those made by other nodes' attention patches (IPAdapter-style replace patches call the same
attention function): such patches keep working and are edited with it instead of being overwritten. Two
stackable attn1/attn2 patches tell the override which layer and kind of attention comes next, and notice a layer
whose attention another node computed itself, where the edit could not act: that stops the run with a message
naming the layer. Around the model: an OUTER_SAMPLE wrapper places the run in its whole trajectory and checks
the wiring, a PREDICT_NOISE wrapper finds each evaluation's step (and applies local blend), and an APPLY_MODEL
wrapper hands every attention call of the evaluation its edits. The input MODEL is never touched, and no edit
state outlives a sampler run, so a graph run after an edit, or after an interrupted one, samples exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import comfy.patcher_extension
import torch

from ..p2p_core.attention import cross_attention, edited_row_pairs, record_self_attention, shared_queries_keys
from ..p2p_core.blend import BlendSpec, blend_masks, blend_rows
from ..p2p_core.edits import EditPlan, StepEdit
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.joint import JointRow, joint_attention
from ..p2p_core.store import MapAccumulator, Recorder, Run
from ..p2p_core.trajectory import StepClock, Trajectory
from .families import Family, family
from .sampler_run import (
    CORRECTOR_SAMPLERS,
    check_edit_sampler,
    named_scheduler,
    sampler_name,
    shared_noise_sampler,
    whole_trajectory,
)
from .text import batch_conditioning
from .unet import LayerKey

KEY = "prompt_to_prompt"
INVERSION_KEY = "prompt_to_prompt_inversion"
RUN_KEY = "prompt_to_prompt_run"
POSITIVE_KEY = "prompt_to_prompt_positive"
OWN_REPLACED_KEY = "prompt_to_prompt_model_replaced"
STEP_KEY = "prompt_to_prompt_step"
OVERRIDE = "optimized_attention_override"


@dataclass(frozen=True)
class EditState:
    """What a patched MODEL carries for the next node: the plan, each row's encoded prompt, and what the
    model records (attention maps) and blends (local blend), if anything."""

    plan: EditPlan
    encodings: tuple[tuple[torch.Tensor, dict], ...] = field(default=())
    recorder: Recorder | None = None
    blend: BlendSpec | None = None

    def with_row(self, plan: EditPlan, encoding: tuple[torch.Tensor, dict] | None) -> EditState:
        """The state after an edit node changed the plan (and added a row's encoding, if it added a row)."""
        if self.blend is not None and len(plan.rows) != len(self.plan.rows):
            raise PromptToPromptError(
                "An edit was added after LocalBlendMask; connect LocalBlendMask after the last edit node so it "
                "knows every edited row's words.")
        encodings = self.encodings + ((encoding,) if encoding is not None else ())
        return replace(self, plan=plan, encodings=encodings)


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


class EditPatch:
    """The attention override, patches and wrappers of one state. Clones of the model share it (the plan never
    changes); what it keeps across runs, the recorder's maps and the trajectories of runs that stopped partway,
    serves a later run that continues them."""

    def __init__(self, state: EditState, model_family: Family) -> None:
        self.state = state
        self.plan = state.plan
        self.family = model_family
        self.levels = model_family.layers
        self.positive = batch_conditioning(list(state.encodings))[0][0] if state.encodings else None
        self.stopped: list[Trajectory] = []
        """Trajectories of runs that stopped partway (with leftover noise), which a later run may continue."""

    @classmethod
    def install(cls, model, state: EditState):
        """A clone of `model` with this state's attention control (replacing an earlier node's of the pack)."""
        patch = cls(state, family(model))
        clone = model.clone()
        options = clone.model_options["transformer_options"]
        foreign = options.get(OVERRIDE)
        if foreign is not None and not isinstance(getattr(foreign, "__self__", None), EditPatch):
            raise PromptToPromptError(
                f"Another node already intercepts this model's attention ({_name(foreign)}), and "
                "Prompt-to-Prompt edits attention through the same hook: the two cannot be combined. Remove that "
                "node, or apply it to a model that is not sampled with Prompt-to-Prompt.")
        patches = options.get("patches", {})
        for name in ("attn1_patch", "attn2_patch"):
            if name in patches:
                patches[name] = [p for p in patches[name] if not isinstance(getattr(p, "__self__", None), EditPatch)]
        if not patch.family.joint:  # a joint model's attention calls are counted (see joint_attention)
            clone.set_model_attn1_patch(patch.before_self_attention)
            clone.set_model_attn2_patch(patch.before_cross_attention)
        options[OVERRIDE] = patch.attention
        wrappers = comfy.patcher_extension.WrappersMP
        return attach(clone, KEY, state, {wrappers.APPLY_MODEL: patch.apply_model,
                                           wrappers.PREDICT_NOISE: patch.predict_noise,
                                           wrappers.SAMPLER_SAMPLE: patch.sampler_sample,
                                           wrappers.OUTER_SAMPLE: patch.outer_sample})

    def __deepcopy__(self, memo: dict) -> EditPatch:
        # ModelPatcher.clone() deep-copies model_options; the plan never changes, so share it.
        return self

    # --- sampling-run wrappers -------------------------------------------------------------------------

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, **kwargs):
        """Check the wiring, place the run in its whole trajectory, and record and blend across it.

        Keyword arguments this wrapper does not know (newer ComfyUI passes `latent_shapes=`) go on unchanged."""
        guider = executor.class_obj
        if self.plan.rows:
            self.check_lockstep(noise)
            check_edit_sampler(sampler)
        self.check_guider(guider)
        self.check_positive(guider.conds.get("positive", []))
        options = guider.model_options["transformer_options"]
        options[POSITIVE_KEY] = frozenset(entry.get("uuid") for entry in guider.conds.get("positive", ()))
        options[OWN_REPLACED_KEY] = replaced_layers(options)
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        continuation = not bool(noise.any())
        trajectory = whole_trajectory(model_sampling, sampler, sigmas, tuple(self.stopped) if continuation else (),
                                      named_scheduler())
        clock = StepClock(trajectory, sigmas.tolist(), sampler_name(sampler) in CORRECTOR_SAMPLERS)
        run = Run(trajectory.steps, tuple(latent_image.shape[-2:]), self.plan.prompts)
        self.start_recording(trajectory, continuation, run)
        guider.model_options["transformer_options"][RUN_KEY] = clock

        def sampled(step, denoised, x, total_steps):
            clock.sampled(step)
            if callback is not None:
                callback(step, denoised, x, total_steps)

        out = executor(noise, latent_image, sampler, sigmas, denoise_mask, sampled, disable_pbar, seed, **kwargs)
        recorder, run_steps = self.state.recorder, len(sigmas) - 1
        if not trajectory.ends_with(run_steps):
            self.stopped = [trajectory] + [t for t in self.stopped if t != trajectory][:7]
            if recorder is not None:
                recorder.checkpoint(trajectory.offset + run_steps, trajectory.steps)
        elif recorder is not None and recorder.last_masks is not None:
            out = blend_rows(out, recorder.last_masks)
        return out

    def check_guider(self, guider) -> None:
        """Refuse a guider whose model calls the edit cannot tell apart or keep apart. The edit finds its rows
        by the conditioning entry a call's chunk came from (POSITIVE_KEY, see positive_chunks), so any guider
        with a 'positive' entry is told apart; Perp-Neg is not kept apart."""
        if "empty_negative_prompt" in guider.conds and self.plan.rows:
            raise PromptToPromptError(
                f"{type(guider).__name__} (Perp-Neg) projects the negative prediction onto the positive over the "
                "whole batch at once, so the source and edited rows would steer each other's guidance and the "
                "source row would not be the picture its prompt gives alone. Sample the edit with KSampler, or "
                "SamplerCustomAdvanced with CFGGuider or DualCFGGuider.")
        if not guider.conds.get("positive") and (self.plan.rows or self.state.recorder is not None):
            raise PromptToPromptError(
                f"The guider {type(guider).__name__} gives the model no 'positive' conditioning, so "
                "Prompt-to-Prompt cannot tell which rows of its model calls hold the edit's prompts. Sample with "
                "KSampler, or SamplerCustomAdvanced with CFGGuider, BasicGuider or DualCFGGuider.")

    def check_lockstep(self, noise: torch.Tensor) -> None:
        rows = self.plan.num_rows
        if noise.shape[0] != rows:
            raise PromptToPromptError(
                f"The latent batch has {noise.shape[0]} rows but this edit has {rows} (the source and "
                f"{rows - 1} edited prompt(s)). Connect the edit node's LATENT output to the sampler.")
        if not torch.equal(noise[:1].expand_as(noise), noise):
            raise PromptToPromptError(
                "The rows of the latent batch got different noise, so the edited image would not share the "
                "source's composition. Connect the edit node's LATENT output to the sampler (its rows share "
                "one seed), or use LatentBatchSeedBehavior with 'fixed'.")

    def check_positive(self, positive: list[dict]) -> None:
        """The sampler's positive must be the one the node made: its rows are the plan's prompts."""
        if self.positive is None:
            return
        texts = [prompt.text for prompt in self.plan.prompts]
        actual = [entry.get("cross_attn") for entry in positive]
        if len(actual) != 1 or not same_rows(actual[0], self.positive):
            raise PromptToPromptError(
                f"The sampler's positive conditioning is not the one this Prompt-to-Prompt node made, whose rows "
                f"are its prompts ({'; '.join(repr(t) for t in texts)}). Connect the node's positive output to "
                "the sampler's positive input (another CLIP Text Encode there would make the edited row repeat the "
                "source).")

    def start_recording(self, trajectory: Trajectory, continuation: bool, run: Run) -> None:
        """A run that starts a trajectory (or starts partway with fresh noise, denoise < 1) records afresh; one
        that continues a split schedule (no added noise) resumes from where the previous part stopped."""
        recorder = self.state.recorder
        if recorder is None:
            return
        recorder.shared.run = run
        if trajectory.offset == 0 or not continuation:
            recorder.reset()
        elif not recorder.resume(trajectory.offset, trajectory.steps, run.latent):
            raise PromptToPromptError(
                f"This sampler continues a schedule at step {trajectory.offset} of {trajectory.steps}, but its "
                f"attention maps of steps 0-{trajectory.offset - 1}, which the local blend and the attention store "
                "need, were not recorded. Sample the first steps with the same Prompt-to-Prompt model in the same "
                "graph (or the whole schedule in one sampler).")

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        """Ancestral and SDE samplers: every row of an edit gets the same step noise (see shared_noise_sampler).
        The sampler object is given the noise sampler for this run only."""
        sampler = executor.class_obj
        shared = shared_noise_sampler(sampler, noise, sigmas, extra_args.get("seed")) if self.plan.rows else None
        if shared is None:
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        options = sampler.extra_options
        sampler.extra_options = {**options, "noise_sampler": shared}
        try:
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
        finally:
            sampler.extra_options = options

    def predict_noise(self, executor, x, timestep, model_options={}, seed=None, **kwargs):
        """Find this evaluation's step of the whole trajectory, and apply local blend as ComfyUI's inpainting
        does: the model sees the edited rows equal to the source outside their masks, and their predictions
        are taken from the source there."""
        options = model_options.get("transformer_options", {})
        clock: StepClock | None = options.get(RUN_KEY)
        if clock is None:
            raise PromptToPromptError("Prompt-to-Prompt models must be run by a ComfyUI sampler node.")
        step, steps = clock.step_at(float(timestep[0])), clock.steps
        model_options = {**model_options, "transformer_options": {**options, STEP_KEY: (step, steps)}}
        blend, recorder = self.state.blend, self.state.recorder
        if blend is None or not blend.active(step, steps):
            return executor(x, timestep, model_options, seed, **kwargs)
        if recorder.last_masks is not None:
            x = blend_rows(x, recorder.last_masks)
        denoised = executor(x, timestep, model_options, seed, **kwargs)
        if not recorder.blend.rows():
            raise PromptToPromptError(
                f"Local blend recorded no attention maps at level 1/{blend.level} by step {step}: the sampled "
                "latent has no layer at that level. Choose another level on LocalBlendMask.")
        maps = [recorder.blend.mean(row) for row in range(self.plan.num_rows)]
        recorder.shared.masks = blend_masks(blend, maps, tuple(x.shape[-2:]))
        return blend_rows(denoised, recorder.shared.masks)

    # --- per model call ----------------------------------------------------------------------------------

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                    transformer_options={}, **kwargs):
        """Work out this call's edits once, for every attention layer of the call to read."""
        if transformer_options.get(OVERRIDE) != self.attention:
            raise PromptToPromptError(
                f"Another node replaced Prompt-to-Prompt's attention hook on this model "
                f"({_name(transformer_options.get(OVERRIDE))}); the two cannot be combined. Remove that node, or "
                "apply it to a model that is not sampled with Prompt-to-Prompt.")
        if STEP_KEY not in transformer_options:
            raise PromptToPromptError("Prompt-to-Prompt models must be run by a ComfyUI sampler node.")
        step, steps = transformer_options[STEP_KEY]
        rows = self.plan.rows
        cross = tuple(None if (e := row.cross_edit(step, steps)) is None else e.to(x.device) for row in rows)
        recorder = self.state.recorder
        state = CallState(step, steps, cross, tuple(row.shares_self_attention(step, steps) for row in rows),
                          recorder.recording(step, steps) if recorder is not None else (),
                          recorder.recording_self(step, steps) if recorder is not None else (),
                          c_crossattn.shape[1] if c_crossattn is not None else 0, positive_chunks(transformer_options),
                          replaced_layers(transformer_options) - transformer_options.get(OWN_REPLACED_KEY, frozenset()),
                          self.family.image_grid(*x.shape[-2:]))
        out = executor(x, t, c_concat, c_crossattn, control, {**transformer_options, KEY: state}, **kwargs)
        self.check_served(state.cursor)
        return out

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
            busy = any(shares and row.shares_self_attention_at(level)
                       for shares, row in zip(state.shares_self, self.plan.rows))
            busy = busy or any(a.level == level for a in state.recording_self)
        else:
            busy = any(e is not None for e in state.cross) or any(a.level == level for a in state.recording)
        state.cursor.kind, state.cursor.key, state.cursor.level = kind, key, level
        state.cursor.busy, state.cursor.served = busy, False

    def check_served(self, cursor: LayerCursor) -> None:
        if cursor.busy and not cursor.served:
            kind = "self-attention (attn1)" if cursor.kind == "self" else "cross-attention (attn2)"
            raise PromptToPromptError(
                f"Another node replaced the {kind} of layer {cursor.key} with an attention patch whose attention "
                "never reaches ComfyUI's attention hook with the model's options: it computes attention itself "
                "(Self-Attention Guidance), or calls ComfyUI's attention without its transformer_options "
                "(IPAdapter Plus), so the Prompt-to-Prompt edit cannot act there. Remove that node from this "
                "model, or apply it to a model that is not sampled with Prompt-to-Prompt.")

    # --- the attention override ----------------------------------------------------------------------------

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
                 if state.shares_self[i] and self.plan.rows[i].shares_self_attention_at(state.cursor.level)]
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
        SD3.5's blocks also make an image-only attention call, the image's own self-attention: a row sharing the
        source's image queries and keys takes them there too."""
        options = kwargs.get("transformer_options") or {}
        state: CallState | None = options.get(KEY)
        if state is None:
            return func(q, k, v, *args, **kwargs)
        heads = args[0] if args else kwargs.get("heads")
        text, image = state.context_tokens, state.image_grid[0] * state.image_grid[1]
        length = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        pairs = self.row_pairs(state, q.shape[0])
        if length == image and text:  # an image-only call beside a joint one (SD3.5)
            shared = [(source, row) for source, row, i in pairs if state.shares_self[i]]
            q, k = shared_queries_keys(q, k, shared)
            return func(q, k, v, *args, **kwargs)
        keys, cursor = list(self.levels), state.cursor
        key = keys[cursor.calls] if cursor.calls < len(keys) else None
        cursor.calls += 1
        rows = [JointRow(source, row, state.cross[i], state.shares_self[i]) for source, row, i in pairs
                if state.cross[i] is not None or state.shares_self[i]]
        cursor.key, cursor.level = key, self.levels.get(key, 0)
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


ATTENTION = {"self": "attn1", "cross": "attn2"}


def replaced_layers(transformer_options: dict) -> frozenset:
    """(attn1/attn2, key) of every layer whose attention a patch replaces in these options.

    Taken once from the sampled model's options (OWN_REPLACED_KEY) and again for each model call: a layer replaced
    in a call but not on the model is one that a guidance node replaced for an extra pass of its own
    (PerturbedAttentionGuidance replaces the middle block's self-attention by its values in its perturbed pass).
    That pass may run unedited at that layer; a replacement the model itself carries (Self-Attention Guidance,
    IPAdapter) acts on the edit's own pass and stays refused where the edit needs the layer."""
    replace = transformer_options.get("patches_replace", {})
    return frozenset((kind, key) for kind in ATTENTION.values() for key in replace.get(kind, {}))


def positive_chunks(transformer_options: dict) -> tuple[bool, ...]:
    """For each conditioning chunk of a model call, whether it came from the sampler's positive entries: told
    by the entry each chunk came from (ComfyUI's `uuids`), not by its place, which is the entry's index in the
    guider's own list (DualCFGGuider evaluates [negative, middle, positive], so index 0 is its negative); by
    index (0 is the positive) where the call carries no entry ids."""
    uuids = transformer_options.get("uuids")
    positive = transformer_options.get(POSITIVE_KEY)
    if uuids is None or positive is None:
        return tuple(kind == 0 for kind in transformer_options["cond_or_uncond"])
    return tuple(uuid in positive for uuid in uuids)


def same_rows(actual: torch.Tensor | None, expected: torch.Tensor) -> bool:
    """Whether a conditioning tensor holds the expected rows (its text axis may be tiled, as ComfyUI does)."""
    if actual is None or actual.shape[0] != expected.shape[0] or actual.shape[2] != expected.shape[2]:
        return False
    length = max(actual.shape[1], expected.shape[1])
    if length % actual.shape[1] or length % expected.shape[1]:
        return False
    a = actual.detach().float().cpu().repeat(1, length // actual.shape[1], 1)
    b = expected.detach().float().cpu().repeat(1, length // expected.shape[1], 1)
    return torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def _name(function) -> str:
    owner = getattr(function, "__self__", None)
    return type(owner).__qualname__ if owner is not None else getattr(function, "__qualname__", repr(function))


def attach(clone, key: str, state, wrappers: dict):
    """Give a clone our wrappers under `key` (replacing an earlier node's) and the state they serve."""
    for kind, wrapper in wrappers.items():
        clone.remove_wrappers_with_key(kind, key)
        clone.add_wrapper_with_key(kind, key, wrapper)
    clone.set_attachments(key, state)
    return clone
