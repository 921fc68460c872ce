"""Install an edit plan on a clone of a ComfyUI ModelPatcher.

Everything lives on the clone: attn1/attn2 replace patches for every transformer block of the UNet
(enumerated from the model), an APPLY_MODEL wrapper that works out the step once per model call, a
PREDICT_NOISE wrapper for local blend, and an OUTER_SAMPLE wrapper that rejects runs which would silently
break lockstep and resets what the model records. The input MODEL is never touched, and no edit state
outlives a model call, so a graph run after an edit, or after an interrupted one, samples exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

from ..p2p_core.attention import cross_attention, edited_row_pairs, record_self_attention, shared_self_attention
from ..p2p_core.blend import BlendSpec, blend_masks, blend_rows
from ..p2p_core.edits import EditPlan, StepEdit
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.schedule import step_index
from ..p2p_core.store import MapAccumulator, Recorder, Run, layer_level

KEY = "prompt_to_prompt"
INVERSION_KEY = "prompt_to_prompt_inversion"

STOCHASTIC_SAMPLERS = {"ddpm", "lcm", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"}
DETERMINISTIC_ADVICE = "euler, ddim, heun, dpm_2, lms, dpmpp_2m, ipndm, deis, uni_pc or res_multistep"


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


@dataclass(frozen=True)
class CallState:
    """One model call's step and work: per edited row its cross edit (on the call's device) and self
    sharing, and the accumulators recording cross- and self-attention at this step."""

    step: int
    steps: int
    cross: tuple[StepEdit | None, ...]
    shares_self: tuple[bool, ...]
    recording: tuple[MapAccumulator, ...]
    recording_self: tuple[MapAccumulator, ...]


def _unet(model) -> UNetModel:
    unet = model.get_model_object("diffusion_model")
    if not isinstance(unet, UNetModel):
        family = type(getattr(model.model, "model_config", unet)).__name__
        raise PromptToPromptError(
            f"Prompt-to-Prompt edits UNet models with cross-attention (SD1.x, SD2.x, SDXL); this model is "
            f"{family}, whose text and image attention are joined. Load an SD1.x, SD2.x or SDXL checkpoint.")
    return unet


def transformer_levels(model) -> dict[tuple[str, int, int], int]:
    """Every transformer block, keyed as ComfyUI's replace patches key them (block name, block id, depth
    index), with its level: how many times smaller than the latent its feature map is."""
    unet = _unet(model)
    levels: dict[tuple[str, int, int], int] = {}
    level = 1

    def visit(name: str, number: int, block) -> None:
        nonlocal level
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                levels.update({(name, number, depth): level for depth in range(len(layer.transformer_blocks))})
            elif isinstance(layer, Downsample):
                level *= 2
            elif isinstance(layer, Upsample):
                level //= 2

    for i, block in enumerate(unet.input_blocks):
        visit("input", i, block)
    visit("middle", 0, unet.middle_block)
    for i, block in enumerate(unet.output_blocks):
        visit("output", i, block)
    if not levels:
        raise PromptToPromptError(f"This {type(unet).__name__} has no cross-attention layers to edit.")
    return levels


def check_level(model, level: int) -> int:
    """`level` if the model has cross-attention at that level, else a clear error listing the ones it has."""
    available = sorted(set(transformer_levels(model).values()))
    if level not in available:
        names = ", ".join(f"1/{lv}" for lv in available)
        raise PromptToPromptError(
            f"This model has no cross-attention at 1/{level} of the latent's side; its levels are {names}.")
    return level


class EditPatch:
    """The attention patches and wrappers of one state. Immutable apart from the recorder it fills, so clones
    of the model may share it."""

    def __init__(self, state: EditState) -> None:
        self.state = state
        self.plan = state.plan

    def __deepcopy__(self, memo: dict) -> EditPatch:
        # ModelPatcher.clone() deep-copies model_options; the plan never changes, so share it.
        return self

    def install(self, model):
        """A clone of `model` with this state's patches (replacing those of an earlier node of the pack)."""
        clone = model.clone()
        for name, number, depth in transformer_levels(clone):
            clone.set_model_attn1_replace(self.self_attention, name, number, depth)
            clone.set_model_attn2_replace(self.cross_attention, name, number, depth)
        wrappers = comfy.patcher_extension.WrappersMP
        return attach(clone, KEY, self.state, {wrappers.APPLY_MODEL: self.apply_model,
                                                wrappers.PREDICT_NOISE: self.predict_noise,
                                                wrappers.OUTER_SAMPLE: self.outer_sample})

    # --- sampling-run wrappers -------------------------------------------------------------------------

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """Refuse runs that cannot stay in lockstep, start recording afresh, and blend the final rows."""
        if self.plan.rows:
            self.check_lockstep(noise, sampler)
        recorder = self.state.recorder
        if recorder is not None:
            recorder.start(Run(len(sigmas) - 1, tuple(latent_image.shape[-2:])))
        out = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        if recorder is not None and recorder.last_masks is not None:
            out = blend_rows(out, recorder.last_masks)
        return out

    def check_lockstep(self, noise: torch.Tensor, sampler) -> None:
        check_sampler(sampler)
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

    def predict_noise(self, executor, x, timestep, model_options={}, seed=None):
        """Local blend, as ComfyUI's inpainting does it: the model sees the edited rows equal to the source
        outside their masks, and their predictions are taken from the source there."""
        blend, recorder = self.state.blend, self.state.recorder
        if blend is None:
            return executor(x, timestep, model_options, seed)
        step, steps = sampler_step(float(timestep[0]), model_options.get("transformer_options", {}))
        if not blend.active(step, steps):
            return executor(x, timestep, model_options, seed)
        if recorder.last_masks is not None:
            x = blend_rows(x, recorder.last_masks)
        denoised = executor(x, timestep, model_options, seed)
        maps = [recorder.blend.mean(row) for row in range(self.plan.num_rows)]
        recorder.last_masks = blend_masks(blend, maps, tuple(x.shape[-2:]))
        return blend_rows(denoised, recorder.last_masks)

    # --- per model call ----------------------------------------------------------------------------------

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                    transformer_options={}, **kwargs):
        """Work out this call's step and edits once, for every attention layer of the call to read."""
        step, steps = sampler_step(float(t[0]), transformer_options)
        rows = self.plan.rows
        cross = tuple(None if (e := row.cross_edit(step, steps)) is None else e.to(x.device) for row in rows)
        recorder = self.state.recorder
        state = CallState(step, steps, cross, tuple(row.shares_self_attention(step, steps) for row in rows),
                          recorder.recording(step, steps) if recorder is not None else (),
                          recorder.recording_self(step, steps) if recorder is not None else ())
        transformer_options = {**transformer_options, KEY: state}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def row_pairs(self, extra_options: dict, batch: int) -> list[tuple[int, int, int]]:
        if not self.plan.rows:
            return []
        return edited_row_pairs(extra_options["cond_or_uncond"], batch, self.plan.num_rows)

    def recorded_rows(self, extra_options: dict, batch: int) -> list[tuple[int, int]]:
        """(batch row, prompt length) of the first positive chunk's rows; with no edit every latent row
        holds the source prompt (a plain batch)."""
        chunks = extra_options["cond_or_uncond"]
        if 0 not in chunks:
            return []
        per_chunk = batch // len(chunks)
        start = chunks.index(0) * per_chunk
        lengths = [self.plan.source.length] + [row.prompt.length for row in self.plan.rows]
        if not self.plan.rows:
            lengths = lengths * per_chunk
        return [(start + i, length) for i, length in enumerate(lengths)]

    def recorder_at(self, accumulators: tuple[MapAccumulator, ...], extra_options: dict, batch: int):
        """(rows to record with their prompt lengths, the callback adding a row's maps) for this layer's
        level, or ([], None) when nothing records it."""
        layer_shape = tuple(extra_options["activations_shape"][-2:])
        level = layer_level(extra_options["original_shape"][-2], layer_shape[0])
        recording = [a for a in accumulators if a.level == level]
        record = self.recorded_rows(extra_options, batch) if recording else []
        if not record:
            return [], None
        offset = record[0][0]

        def recorder(row: int, maps: torch.Tensor) -> None:
            for accumulator in recording:
                accumulator.add(row - offset, maps, layer_shape)
        return record, recorder

    def cross_attention(self, q, k, v, extra_options):
        state: CallState = extra_options[KEY]
        edits = [(source, row, state.cross[i], self.plan.rows[i].prompt.length)
                 for source, row, i in self.row_pairs(extra_options, q.shape[0]) if state.cross[i] is not None]
        record, recorder = self.recorder_at(state.recording, extra_options, q.shape[0])
        return cross_attention(q, k, v, extra_options["n_heads"], edits, self.plan.source.length,
                               comfy_attention.optimized_attention, record=record, recorder=recorder,
                               attn_precision=extra_options["attn_precision"], transformer_options=extra_options)

    def self_attention(self, q, k, v, extra_options):
        state: CallState = extra_options[KEY]
        heads = extra_options["n_heads"]
        record, recorder = self.recorder_at(state.recording_self, extra_options, q.shape[0])
        if recorder is not None:
            record_self_attention(q, k, heads, [row for row, _ in record], recorder)
        layer_side = extra_options["activations_shape"][-2]
        latent_side = extra_options["original_shape"][-2]
        pairs = [(source, row) for source, row, i in self.row_pairs(extra_options, q.shape[0])
                 if state.shares_self[i] and self.plan.rows[i].shares_self_attention_at(layer_side, latent_side)]
        return shared_self_attention(q, k, v, heads, pairs, comfy_attention.optimized_attention,
                                     attn_precision=extra_options["attn_precision"], transformer_options=extra_options)


def attach(clone, key: str, state, wrappers: dict):
    """Give a clone our wrappers under `key` (replacing an earlier node's) and the state they serve."""
    for kind, wrapper in wrappers.items():
        clone.remove_wrappers_with_key(kind, key)
        clone.add_wrapper_with_key(kind, key, wrapper)
    clone.set_attachments(key, state)
    return clone


def sampler_step(sigma: float, transformer_options: dict) -> tuple[int, int]:
    """(step, steps) of a model call at `sigma` within the running sampler's schedule."""
    schedule = transformer_options.get("sample_sigmas")
    if schedule is None:
        raise PromptToPromptError("Prompt-to-Prompt models must be run by a ComfyUI sampler node.")
    schedule = schedule.tolist()
    return step_index(sigma, schedule), max(len(schedule) - 1, 1)


def sampler_name(sampler) -> str:
    """The k-diffusion name of a ComfyUI sampler object ('euler' for both euler and ddim)."""
    return getattr(getattr(sampler, "sampler_function", None), "__name__", "").removeprefix("sample_")


def check_sampler(sampler) -> None:
    """Ancestral and SDE samplers add fresh noise per row each step, so the rows drift apart."""
    name = sampler_name(sampler)
    eta = getattr(sampler, "extra_options", {}).get("eta")
    stochastic = "ancestral" in name or "sde" in name or name in STOCHASTIC_SAMPLERS
    if stochastic and eta != 0:
        raise PromptToPromptError(
            f"The '{name}' sampler adds new random noise at every step, different for each row, so the "
            f"edited image would drift away from the source. Use a deterministic sampler: {DETERMINISTIC_ADVICE}.")
