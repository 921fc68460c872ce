"""Every scheduler of the host: a sampler run is placed in its whole trajectory exactly as ComfyUI computed it (the
schedule KSampler made, and the run's place in it), whole runs of 1 to 60 steps, split runs and denoise < 1."""

from __future__ import annotations

import pack
import pytest
import tiny
import torch

tiny.import_comfy()
import comfy.samplers  # noqa: E402

SPLIT_STEPS = (4, 10, 30)
DENOISE = (0.3, 0.5, 0.75)


@pytest.fixture(scope="module")
def model():
    return tiny.make_model("sd1")


@pytest.fixture(scope="module")
def runs():
    return pack.module("runtime.sampler_run")


def computed(model, steps: int, scheduler: str, sampler: str = "euler", denoise: float = 1.0) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler (behind the KSampler and KSamplerAdvanced nodes) computes."""
    return comfy.samplers.KSampler(model, steps, "cpu", sampler=sampler, scheduler=scheduler, denoise=denoise).sigmas


def place(runs, model, sigmas: torch.Tensor, sampler: str = "euler", named: str | None = None, continues=()):
    return runs.whole_trajectory(model.get_model_object("model_sampling"), comfy.samplers.sampler_object(sampler),
                                 sigmas, continues, named)


def as_list(sigmas: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(s) for s in sigmas.tolist())


def same(found, sigmas, offset: int) -> bool:
    """Whether `found` is the schedule `sigmas` (to float32 rounding: schedulers that agree on a schedule may
    compute it in other precisions), with the run at `offset`."""
    schedule = torch.tensor(found.schedule, dtype=torch.float64)
    expected = torch.tensor(sigmas, dtype=torch.float64)
    return found.offset == offset and schedule.shape == expected.shape and \
        torch.allclose(schedule, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sampler", ["euler", "dpm_2"])  # dpm_2: KSampler drops the penultimate sigma
@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_every_whole_run_of_1_to_60_steps_is_the_schedule_comfyui_computed(runs, model, scheduler, sampler):
    """ddim_uniform gives more steps than asked where 1000 is not a multiple of the count (30 asked, 31 given);
    those whole runs used to be refused with "run the whole schedule in one sampler"."""
    wrong = []
    for steps in range(1, 61):
        sigmas = computed(model, steps, scheduler, sampler)
        if not torch.isfinite(sigmas).all():  # kl_optimal at 1 step: ComfyUI's own schedule is NaN
            with pytest.raises(pack.error_type(), match="not numbers"):
                place(runs, model, sigmas, sampler, scheduler)
            continue
        for named in (scheduler, None):
            found = place(runs, model, sigmas, sampler, named)
            if not same(found, as_list(sigmas), 0):
                wrong.append((steps, named, found.steps, found.offset))
    assert wrong == []


@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_both_parts_of_a_split_run_are_placed_where_comfyui_cut_them(runs, model, scheduler):
    """KSamplerAdvanced's two halves (leftover noise at the cut, then no added noise): the first half is placed in
    the schedule the node names; the second, as a continuation of it or alone, at the cut. A second half that
    ends its schedule exactly is read as finished even without the name (sgm_uniform's halves are also parts of
    normal's schedules)."""
    wrong = []
    for steps in SPLIT_STEPS:
        sigmas = computed(model, steps, scheduler)
        whole = as_list(sigmas)
        for cut in sorted({1, steps // 3, steps // 2, steps - 1} - {0}):
            first = place(runs, model, sigmas[:cut + 1], named=scheduler)
            if not same(first, whole, 0):
                wrong.append(("first", steps, cut, first.steps, first.offset))
            second = place(runs, model, sigmas[cut:], named=scheduler, continues=(first,))
            if not same(second, whole, cut):
                wrong.append(("continued", steps, cut, second.steps, second.offset))
            if steps - cut < 2:
                continue  # the final step alone is every schedule's end: placed only as a continuation
            for named in (scheduler, None):
                alone = place(runs, model, sigmas[cut:], named=named)
                if not same(alone, whole, cut):
                    wrong.append(("second alone", named, steps, cut, alone.steps, alone.offset))
    assert wrong == []


@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_a_denoise_run_is_the_tail_of_the_schedule_comfyui_computed(runs, model, scheduler):
    wrong = []
    for steps in SPLIT_STEPS:
        for denoise in DENOISE:
            whole = as_list(computed(model, int(steps / denoise), scheduler))
            sigmas = computed(model, steps, scheduler, denoise=denoise)
            for named in (scheduler, None):
                found = place(runs, model, sigmas, named=named)
                if not same(found, whole, len(whole) - len(sigmas)):
                    wrong.append((steps, denoise, named, found.steps, found.offset))
    assert wrong == []


def test_the_final_step_alone_is_refused_with_the_reason(runs, model, error):
    sigmas = computed(model, 10, "normal")
    with pytest.raises(error, match="cannot tell which part of a whole schedule"):
        place(runs, model, sigmas[-2:], named="normal")


@pytest.mark.parametrize("scheduler", ["sgm_uniform", "normal"])
def test_the_scheduler_of_the_running_ksampler_is_known(runs, model, scheduler):
    """KSampler and KSamplerAdvanced sample through comfy.samplers.KSampler, whose scheduler the pack reads from
    inside the run (here from an OUTER_SAMPLE wrapper, where the pack's own runs)."""
    import comfy.patcher_extension

    import nodes

    seen = []

    def wrapper(executor, *args, **kwargs):
        seen.append(runs.named_scheduler())
        return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test_named", wrapper)
    clip = tiny.make_clip("sd1")
    positive = nodes.CLIPTextEncode().encode(clip, "a cat")[0]
    nodes.common_ksampler(clone, 1, 2, 1.0, "euler", scheduler, positive, positive,
                          {"samples": torch.zeros(1, 4, 8, 8)})
    assert seen == [scheduler] and runs.named_scheduler() is None
