"""Install an edit plan on a clone of a ComfyUI ModelPatcher, and run the sampler with it.

One EditPatch per patched MODEL joins four parts, each in its own module:
- the wiring checks (runtime/wiring.py), once before a run;
- the run wrappers here: OUTER_SAMPLE places the run in its whole trajectory, records and blends across it;
  SAMPLER_SAMPLE gives every row the same step noise; PREDICT_NOISE finds each evaluation's step (and applies
  local blend); APPLY_MODEL builds the call's `CallState` (runtime/call.py) for its attention calls;
- the layer tracker's attn1/attn2 patches (runtime/layer_tracker.py), which name the UNet layer that runs next;
- the attention override (runtime/override.py), which edits ComfyUI's attention call there.
The input MODEL is never touched, and no edit state outlives a sampler run, so a graph run after an edit, or after
an interrupted one, samples exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import comfy.patcher_extension
import torch

from ..p2p_core.blend import BlendSpec, blend_masks, blend_rows
from ..p2p_core.edits import EditPlan
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.store import Recorder, Run
from ..p2p_core.trajectory import StepClock, Trajectory
from .call import KEY, CallState, SharedOnClone
from .families import Family, family
from .layer_tracker import LayerTracker, replaced_layers
from .override import AttentionOverride
from .sampler_run import (
    CORRECTOR_SAMPLERS,
    check_edit_sampler,
    named_scheduler,
    sampler_name,
    shared_noise_sampler,
    whole_trajectory,
)
from .text import batch_conditioning
from .wiring import check_guider, check_lockstep, check_positive

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


class EditPatch(SharedOnClone):
    """The run wrappers, layer tracker and attention override of one state. Clones of the model share it (the
    plan never changes); what it keeps across runs, the recorder's maps and the trajectories of runs that stopped
    partway, serves a later run that continues them."""

    def __init__(self, state: EditState, model_family: Family) -> None:
        self.state = state
        self.plan = state.plan
        self.family = model_family
        self.override = AttentionOverride(state.plan, model_family)
        self.layers = LayerTracker(state.plan, model_family.layers)
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
        if foreign is not None and not isinstance(getattr(foreign, "__self__", None), AttentionOverride):
            raise PromptToPromptError(
                f"Another node already intercepts this model's attention ({_name(foreign)}), and "
                "Prompt-to-Prompt edits attention through the same hook: the two cannot be combined. Remove that "
                "node, or apply it to a model that is not sampled with Prompt-to-Prompt.")
        patches = options.get("patches", {})
        for name in ("attn1_patch", "attn2_patch"):
            if name in patches:
                patches[name] = [p for p in patches[name] if not isinstance(getattr(p, "__self__", None), LayerTracker)]
        if not patch.family.joint:  # a joint model's attention calls are counted (see joint_attention)
            clone.set_model_attn1_patch(patch.layers.before_self_attention)
            clone.set_model_attn2_patch(patch.layers.before_cross_attention)
        options[OVERRIDE] = patch.override.attention
        wrappers = comfy.patcher_extension.WrappersMP
        return attach(clone, KEY, state, {wrappers.APPLY_MODEL: patch.apply_model,
                                           wrappers.PREDICT_NOISE: patch.predict_noise,
                                           wrappers.SAMPLER_SAMPLE: patch.sampler_sample,
                                           wrappers.OUTER_SAMPLE: patch.outer_sample})

    # --- sampling-run wrappers -------------------------------------------------------------------------

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, **kwargs):
        """Check the wiring, place the run in its whole trajectory, and record and blend across it.

        Keyword arguments this wrapper does not know (newer ComfyUI passes `latent_shapes=`) go on unchanged."""
        guider = executor.class_obj
        if self.plan.rows:
            check_lockstep(noise, self.plan)
            check_edit_sampler(sampler)
        check_guider(guider, self.plan, self.state.recorder is not None)
        check_positive(guider.conds.get("positive", []), self.positive, self.plan)
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
        if transformer_options.get(OVERRIDE) != self.override.attention:
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
        LayerTracker.check_served(state.cursor)
        return out

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
