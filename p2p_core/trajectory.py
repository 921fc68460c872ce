"""Where a sampler run lies in the whole trajectory, and which step of it each model evaluation belongs to.

Step windows ("the first 80 % of the steps") count the steps of the whole trajectory from pure noise. A sampler
run may hold only part of it: KSamplerAdvanced's start/end steps and SplitSigmas cut the schedule, and a run with
denoise < 1 is the tail of a longer schedule. The run's sigmas are then a contiguous slice of a schedule the host
can compute (a scheduler at some step count), which `locate_run` finds; a two-stage run then edits exactly as
one run does. When no schedule contains the run, the caller must refuse rather than restart the windows.

Within a run, most samplers evaluate the model at the step's own sigma and, for second-order steps, between it
and the next one, so the sigma alone gives the step. Heun-type samplers evaluate their correctors at the *next*
schedule sigmas, which are also the next step's own; `StepClock` tells them apart by the sampler's per-step
callback, so both evaluations of a step use that step's windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

ScheduleFn = Callable[[str, int], Sequence[float]]
"""A host scheduler: (scheduler name, step count) -> the descending sigmas of that schedule (steps + 1 values)."""

_RTOL = 1e-5
MAX_STEPS = 1000
"""The longest whole trajectory searched (ComfyUI runs up to 10000 steps; 1000 covers denoise down to 0.05 at 50)."""
_SCAN = 12
"""Step counts tried around the best guess of a search (schedules are only roughly monotone in the step count)."""


@dataclass(frozen=True)
class Trajectory:
    """The whole schedule a run belongs to, and the index in it of the run's first sigma."""

    schedule: tuple[float, ...]
    offset: int

    @property
    def steps(self) -> int:
        return len(self.schedule) - 1

    def ends_with(self, run_steps: int) -> bool:
        """Whether a run of `run_steps` steps from `offset` reaches the end of the trajectory."""
        return self.offset + run_steps >= self.steps


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_RTOL, abs_tol=1e-7)


def slice_offset(schedule: Sequence[float], run: Sequence[float]) -> int | None:
    """The index at which `run` is a contiguous slice of `schedule`, or None.

    The run's last sigma may be 0 where the schedule goes on: KSamplerAdvanced forces the end of a cut schedule
    to 0 when it returns without leftover noise.
    """
    n = len(run) - 1
    for offset, sigma in enumerate(schedule[:max(len(schedule) - n, 0)]):
        if not _close(sigma, run[0]):
            continue
        body = all(_close(a, b) for a, b in zip(schedule[offset:offset + n], run[:n]))
        last = _close(schedule[offset + n], run[n]) or run[n] == 0.0
        if body and last:
            return offset
    return None


def continued(run: Sequence[float], known: Sequence[Trajectory]) -> Trajectory | None:
    """The trajectory among `known` (those of runs that stopped early) that this run continues, if any."""
    for trajectory in known:
        offset = slice_offset(trajectory.schedule, [float(s) for s in run])
        if offset is not None and offset > 0:
            return Trajectory(trajectory.schedule, offset)
    return None


def locate_run(run: Sequence[float], schedules: ScheduleFn, names: Sequence[str], sigma_max: float,
               max_steps: int = MAX_STEPS, named: str | None = None) -> Trajectory | None:
    """The whole trajectory of a run with sigmas `run`, or None when it cannot be known.

    In order: the run is a whole schedule of one of the host's schedulers; it is a slice of a longer one (found by
    searching step counts); it starts from pure noise and ends at 0, so it is a whole custom schedule itself.
    Several schedules can hold one run (ComfyUI's sgm_uniform(N) is the first N sigmas of normal(N + 1), then 0):
    the scheduler the sampler node names (`named`, when known) is believed first; then a schedule that the run
    ends exactly, since a run that reaches 0 has finished (a schedule that goes on would read it as one stopped
    early with its end forced to 0); then the first of `names`. A run of only the final step cannot be placed by
    its sigmas: every schedule of a model ends with the same smallest sigma and 0.
    """
    run = [float(s) for s in run]
    n = len(run) - 1
    if n < 1:
        return None
    names = ([named] if named in names else []) + [name for name in names if name != named]
    for name in names:
        whole = [float(s) for s in schedules(name, n)]
        if len(whole) == len(run) and all(_close(a, b) for a, b in zip(whole, run)):
            return Trajectory(tuple(whole), 0)
    readings = []
    for name in names:
        found = _search(run, schedules, name, max_steps)
        if found is None:
            continue
        if name == named or _ends_exactly(found, run):
            readings = [found]
            break
        readings.append(found)
    if readings:
        found = readings[0]
        return None if n == 1 and found.ends_with(1) else found
    if run[-1] == 0.0 and run[0] >= sigma_max * (1 - 1e-4):
        return Trajectory(tuple(run), 0)
    return None


def _ends_exactly(found: Trajectory, run: Sequence[float]) -> bool:
    """Whether the run ends where its trajectory does, on the schedule's own last sigma."""
    return found.offset + len(run) - 1 == found.steps and _close(found.schedule[-1], run[-1])


def _search(run: list[float], schedules: ScheduleFn, name: str, max_steps: int) -> Trajectory | None:
    """Search the step counts of one scheduler for a schedule that holds `run` as a slice.

    The spacing a schedule has at the run's first sigma shrinks as its step count grows, so a binary search on it
    finds the step counts whose spacing there is the run's; a few around it are tried, since the spacing is only
    monotone up to rounding and some schedulers give the same schedule for several step counts. The search starts
    below the run's length: ComfyUI's ddim_uniform gives more steps than it is asked for where 1000 is not a
    multiple of the count (30 asked, 31 given; at most half as many again), so a whole run or a long part of one
    is held by a schedule asked for fewer steps than it has.
    """
    n = len(run) - 1
    target = run[0] - run[1]
    cache: dict[int, list[float]] = {}

    def schedule(steps: int) -> list[float]:
        if steps not in cache:
            cache[steps] = [float(s) for s in schedules(name, steps)]
        return cache[steps]

    def spacing(steps: int) -> float:
        values = schedule(steps)
        index = next((i for i, s in enumerate(values) if s <= run[0] * (1 + _RTOL)), None)
        if index is None or index + 1 >= len(values):
            return 0.0
        return values[index] - values[index + 1]

    low, high = max(1, 2 * (n + 1) // 3), max_steps
    while low < high:
        middle = (low + high) // 2
        if spacing(middle) <= target * (1 + _RTOL):
            high = middle
        else:
            low = middle + 1
    tried: set[tuple[float, ...]] = set()
    for steps in range(max(1, low - _SCAN // 2), min(max_steps, low + _SCAN) + 1):
        values = tuple(schedule(steps))
        if values in tried:
            continue
        tried.add(values)
        offset = slice_offset(values, run)
        if offset is not None:
            return Trajectory(values, offset)
    return None


class StepClock:
    """Which step of the whole trajectory each model evaluation of one sampler run belongs to.

    `sampled(i)` is the sampler's callback: run step i has made its first evaluation. For samplers whose
    correctors evaluate at later schedule sigmas (heun, heunpp2, exp_heun_2_x0), an evaluation after callback i
    belongs to step i until it repeats a sigma already evaluated since then, which only the next step's own
    evaluation does.
    """

    def __init__(self, trajectory: Trajectory, run: Sequence[float], correctors_at_schedule_sigmas: bool) -> None:
        self.trajectory = trajectory
        self.run = [float(s) for s in run]
        self.correctors = correctors_at_schedule_sigmas
        self.last_sampled: int | None = None
        self.seen: set[float] = set()

    @property
    def steps(self) -> int:
        return self.trajectory.steps

    def sampled(self, run_step: int) -> None:
        self.last_sampled = run_step
        self.seen.clear()

    def step_at(self, sigma: float) -> int:
        """The whole-trajectory step of an evaluation at `sigma` (call once per evaluation, in order)."""
        if self.correctors and self.last_sampled is not None and not any(_same(sigma, s) for s in self.seen):
            self.seen.add(sigma)
            return self.trajectory.offset + self.last_sampled
        return self.trajectory.offset + step_index(sigma, self.run)


def _same(a: float, b: float) -> bool:
    """Whether two evaluations are at one sigma: exponential samplers (exp_heun_2_x0) reach the next schedule
    sigma through log-SNR and back, a few float steps away from the value the next step evaluates at."""
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b))


def step_index(sigma: float, schedule: Sequence[float]) -> int:
    """The step i whose interval schedule[i] >= sigma > schedule[i + 1] holds sigma.

    `schedule` is the sampler's descending sigma list (steps + 1 values, usually ending in 0). A sigma above
    the first value counts as step 0, one at or below the last as the final step. The relative tolerance
    absorbs float noise between the sigma the model sees and the schedule entry it came from.
    """
    threshold = sigma * (1 - 1e-6)
    return sum(1 for s in schedule[1:-1] if s >= threshold)
