"""Install an edit plan on a clone of a ComfyUI ModelPatcher.

Everything lives on the clone: attn1/attn2 replace patches for every transformer block of the UNet
(enumerated from the model), an APPLY_MODEL wrapper that works out the step once per model call, and an
OUTER_SAMPLE wrapper that rejects runs which would silently break lockstep. The input MODEL is never
touched, and no state outlives a model call, so a graph run after an edit, or after an interrupted one,
samples exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..p2p_core.attention import cross_attention, edited_row_pairs, shared_self_attention
from ..p2p_core.edits import EditPlan, StepEdit
from ..p2p_core.errors import PromptToPromptError
from ..p2p_core.schedule import step_index

KEY = "prompt_to_prompt"

STOCHASTIC_SAMPLERS = {"ddpm", "lcm", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"}
DETERMINISTIC_ADVICE = "euler, ddim, heun, dpm_2, lms, dpmpp_2m, ipndm, deis, uni_pc or res_multistep"


@dataclass(frozen=True)
class EditState:
    """What an edited MODEL carries for the next edit node: the plan and each row's encoded prompt."""

    plan: EditPlan
    encodings: tuple[tuple[torch.Tensor, dict], ...] = field(default=())


@dataclass(frozen=True)
class CallState:
    """The edits of one model call: per edited row, its cross edit (on the call's device) and self sharing."""

    cross: tuple[StepEdit | None, ...]
    shares_self: tuple[bool, ...]


def transformer_keys(model) -> list[tuple[str, int, int]]:
    """(block name, block id, depth index) of every transformer block, as ComfyUI's replace patches key them."""
    unet = model.get_model_object("diffusion_model")
    family = type(model.model.model_config).__name__ if hasattr(model.model, "model_config") else type(unet).__name__
    if not isinstance(unet, UNetModel):
        raise PromptToPromptError(
            f"Prompt-to-Prompt edits UNet models with cross-attention (SD1.x, SD2.x, SDXL); this model is "
            f"{family}, whose text and image attention are joined. Load an SD1.x, SD2.x or SDXL checkpoint.")
    keys = []
    blocks = [("input", i, b) for i, b in enumerate(unet.input_blocks)]
    blocks += [("middle", 0, unet.middle_block)] + [("output", i, b) for i, b in enumerate(unet.output_blocks)]
    for name, number, block in blocks:
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                keys += [(name, number, depth) for depth in range(len(layer.transformer_blocks))]
    if not keys:
        raise PromptToPromptError(f"This {family} UNet has no cross-attention layers to edit.")
    return keys


class EditPatch:
    """The attention patches and wrappers of one plan. Immutable, so clones of the model may share it."""

    def __init__(self, plan: EditPlan) -> None:
        self.plan = plan

    def __deepcopy__(self, memo: dict) -> EditPatch:
        # ModelPatcher.clone() deep-copies model_options; the plan never changes, so share it.
        return self

    def install(self, model):
        """A clone of `model` with this plan's patches (replacing those of an earlier edit node)."""
        clone = model.clone()
        for name, number, depth in transformer_keys(clone):
            clone.set_model_attn1_replace(self.self_attention, name, number, depth)
            clone.set_model_attn2_replace(self.cross_attention, name, number, depth)
        for kind, wrapper in ((comfy.patcher_extension.WrappersMP.APPLY_MODEL, self.apply_model),
                              (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, self.outer_sample)):
            clone.remove_wrappers_with_key(kind, KEY)
            clone.add_wrapper_with_key(kind, KEY, wrapper)
        return clone

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """Refuse runs that cannot stay in lockstep before any step is taken."""
        check_sampler(sampler)
        rows = self.plan.num_rows
        if noise.shape[0] != rows:
            raise PromptToPromptError(
                f"The latent batch has {noise.shape[0]} rows but this edit has {rows} (the source and "
                f"{rows - 1} edited prompt(s)). Connect the edit node's LATENT output to the sampler.")
        if rows > 1 and not torch.equal(noise[:1].expand_as(noise), noise):
            raise PromptToPromptError(
                "The rows of the latent batch got different noise, so the edited image would not share the "
                "source's composition. Connect the edit node's LATENT output to the sampler (its rows share "
                "one seed), or use LatentBatchSeedBehavior with 'fixed'.")
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                    transformer_options={}, **kwargs):
        """Work out this call's step and edits once, for every attention layer of the call to read."""
        schedule = transformer_options.get("sample_sigmas")
        if schedule is None:
            raise PromptToPromptError("Prompt-to-Prompt models must be run by a ComfyUI sampler node.")
        schedule = schedule.tolist()
        steps = max(len(schedule) - 1, 1)
        step = step_index(float(t[0]), schedule)
        rows = self.plan.rows
        cross = tuple(None if (e := row.cross_edit(step, steps)) is None else e.to(x.device) for row in rows)
        state = CallState(cross, tuple(row.shares_self_attention(step, steps) for row in rows))
        transformer_options = {**transformer_options, KEY: state}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def cross_attention(self, q, k, v, extra_options):
        state: CallState = extra_options[KEY]
        pairs = edited_row_pairs(extra_options["cond_or_uncond"], q.shape[0], self.plan.num_rows)
        edits = [(source, row, state.cross[i], self.plan.rows[i].prompt.length)
                 for source, row, i in pairs if state.cross[i] is not None]
        return cross_attention(q, k, v, extra_options["n_heads"], edits, self.plan.source.length,
                               comfy_attention.optimized_attention,
                               attn_precision=extra_options["attn_precision"], transformer_options=extra_options)

    def self_attention(self, q, k, v, extra_options):
        state: CallState = extra_options[KEY]
        layer_side = extra_options["activations_shape"][-2]
        latent_side = extra_options["original_shape"][-2]
        pairs = [(source, row) for source, row, i in
                 edited_row_pairs(extra_options["cond_or_uncond"], q.shape[0], self.plan.num_rows)
                 if state.shares_self[i] and self.plan.rows[i].shares_self_attention_at(layer_side, latent_side)]
        return shared_self_attention(q, k, v, extra_options["n_heads"], pairs,
                                     comfy_attention.optimized_attention,
                                     attn_precision=extra_options["attn_precision"], transformer_options=extra_options)


def check_sampler(sampler) -> None:
    """Ancestral and SDE samplers add fresh noise per row each step, so the rows drift apart."""
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", "").removeprefix("sample_")
    eta = getattr(sampler, "extra_options", {}).get("eta")
    stochastic = "ancestral" in name or "sde" in name or name in STOCHASTIC_SAMPLERS
    if stochastic and eta != 0:
        raise PromptToPromptError(
            f"The '{name}' sampler adds new random noise at every step, different for each row, so the "
            f"edited image would drift away from the source. Use a deterministic sampler: {DETERMINISTIC_ADVICE}.")
