"""Refusals of sampler graphs an edit cannot run in, checked once before a run starts.

Each names what is wrong and the fix: an edit's rows must share one noise, be sampled with the positive the node
made, and by a guider whose model calls keep the rows apart.
"""

from __future__ import annotations

import torch

from ..p2p_core.edits import EditPlan
from ..p2p_core.errors import PromptToPromptError


def check_guider(guider, plan: EditPlan, records: bool) -> None:
    """Refuse a guider whose model calls the edit cannot tell apart or keep apart. The edit finds its rows
    by the conditioning entry a call's chunk came from (see runtime/patch.py, positive_chunks), so any guider
    with a 'positive' entry is told apart; Perp-Neg is not kept apart."""
    if "empty_negative_prompt" in guider.conds and plan.rows:
        raise PromptToPromptError(
            f"{type(guider).__name__} (Perp-Neg) projects the negative prediction onto the positive over the "
            "whole batch at once, so the source and edited rows would steer each other's guidance and the "
            "source row would not be the picture its prompt gives alone. Sample the edit with KSampler, or "
            "SamplerCustomAdvanced with CFGGuider or DualCFGGuider.")
    if not guider.conds.get("positive") and (plan.rows or records):
        raise PromptToPromptError(
            f"The guider {type(guider).__name__} gives the model no 'positive' conditioning, so "
            "Prompt-to-Prompt cannot tell which rows of its model calls hold the edit's prompts. Sample with "
            "KSampler, or SamplerCustomAdvanced with CFGGuider, BasicGuider or DualCFGGuider.")


def check_lockstep(noise: torch.Tensor, plan: EditPlan) -> None:
    """An edit's rows are sampled in lockstep: one row per prompt, all from the same noise."""
    rows = plan.num_rows
    if noise.shape[0] != rows:
        raise PromptToPromptError(
            f"The latent batch has {noise.shape[0]} rows but this edit has {rows} (the source and "
            f"{rows - 1} edited prompt(s)). Connect the edit node's LATENT output to the sampler.")
    if not torch.equal(noise[:1].expand_as(noise), noise):
        raise PromptToPromptError(
            "The rows of the latent batch got different noise, so the edited image would not share the "
            "source's composition. Connect the edit node's LATENT output to the sampler (its rows share "
            "one seed), or use LatentBatchSeedBehavior with 'fixed'.")


def check_positive(positive: list[dict], expected: torch.Tensor | None, plan: EditPlan) -> None:
    """The sampler's positive must be the one the node made: its rows are the plan's prompts."""
    if expected is None:
        return
    texts = [prompt.text for prompt in plan.prompts]
    actual = [entry.get("cross_attn") for entry in positive]
    if len(actual) != 1 or not same_rows(actual[0], expected):
        raise PromptToPromptError(
            f"The sampler's positive conditioning is not the one this Prompt-to-Prompt node made, whose rows "
            f"are its prompts ({'; '.join(repr(t) for t in texts)}). Connect the node's positive output to "
            "the sampler's positive input (another CLIP Text Encode there would make the edited row repeat the "
            "source).")


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
