import pytest

from p2p_core.trajectory import StepClock, Trajectory, continued, locate_run, slice_offset, step_index

TOP, BOTTOM = 14.6, 0.03


def linear(name, steps):
    values = [TOP + (BOTTOM - TOP) * i / (steps - 1) for i in range(steps)] if steps > 1 else [TOP]
    return values + [0.0]


def geometric(name, steps):
    values = [TOP * (BOTTOM / TOP) ** (i / max(steps - 1, 1)) for i in range(steps)]
    return values + [0.0]


def stepped(name, steps):
    """Like ComfyUI's simple/ddim_uniform: an integer stride, so many step counts give one schedule."""
    stride = max(1000 // steps, 1)
    table = [TOP * (BOTTOM / TOP) ** (i / 999) for i in range(1000)]
    return table[::stride] + [0.0]


def overlong(name, steps):
    """Like ComfyUI's ddim_uniform: every stride-th sigma of the model's 1000 from the second, so a count that
    does not divide 1000 gives more steps than asked (30 asked: stride 33, 31 steps)."""
    stride = max(1000 // steps, 1)
    table = [BOTTOM * (TOP / BOTTOM) ** (i / 999) for i in range(1000)]  # the model's sigmas, timestep 0 first
    return table[1::stride][::-1] + [0.0]


def near(name, steps):
    """Like ComfyUI's normal: `steps` sigmas evenly spread from the top, then 0."""
    return [TOP + (BOTTOM - TOP) * i / max(steps - 1, 1) for i in range(steps)] + [0.0]


def first_of_near(name, steps):
    """Like ComfyUI's sgm_uniform: the first `steps` sigmas of near(steps + 1), then 0."""
    return near(name, steps + 1)[:steps] + [0.0]


SCHEDULERS = {"linear": linear, "geometric": geometric, "stepped": stepped, "overlong": overlong, "near": near,
              "sgm": first_of_near}


def schedules(name, steps):
    return SCHEDULERS[name](name, steps)


def locate(run, names=("linear", "geometric")):
    return locate_run(run, schedules, list(names), TOP)


def test_a_whole_schedule_is_its_own_trajectory():
    run = geometric("", 20)
    assert locate(run) == Trajectory(tuple(run), 0)


def test_the_first_part_of_a_split_run_knows_the_whole_schedule():
    whole = geometric("", 30)
    found = locate(whole[:21])  # KSamplerAdvanced 0-20 of 30 with leftover noise
    assert found.schedule == tuple(whole) and found.offset == 0 and found.steps == 30
    forced = whole[:20] + [0.0]  # ...and without leftover noise: the cut end is forced to 0
    assert locate(forced).steps == 30


def test_the_second_part_and_a_denoise_run_are_the_tail_of_the_whole_schedule():
    whole = linear("", 30)
    found = locate(whole[20:])
    assert found.offset == 20 and found.steps == 30 and found.ends_with(10)


def test_a_middle_part_of_a_three_stage_run():
    whole = geometric("", 40)
    found = locate(whole[10:25])
    assert (found.offset, found.steps) == (10, 40) and not found.ends_with(14)


def test_schedulers_that_repeat_for_several_step_counts():
    whole = stepped("", 250)  # the same for 250..333 steps
    found = locate(whole[100:150], names=("stepped",))
    assert found is not None and found.offset == 100 and found.schedule == tuple(whole)


@pytest.mark.parametrize("asked", [3, 7, 30, 47, 60, 400])
def test_a_scheduler_that_gives_more_steps_than_asked_is_placed_whole_and_split(asked):
    """ddim_uniform at 30 steps gives 31: the whole run is a whole schedule, though of no count of its own
    length, and the parts of a split run lie in it where they were cut."""
    whole = overlong("", asked)
    steps = len(whole) - 1
    assert steps >= asked
    assert locate(whole, names=("overlong",)) == Trajectory(tuple(whole), 0)
    cut = steps // 2
    first, second = locate(whole[:cut + 1], names=("overlong",)), locate(whole[cut:], names=("overlong",))
    assert (first.schedule, first.offset, second.schedule, second.offset) == (tuple(whole), 0, tuple(whole), cut)


def test_a_run_that_ends_a_schedule_exactly_is_read_as_finished_not_as_stopped_early():
    """The second half of sgm_uniform(20) is also the middle of normal(21) with its end forced to 0 (a run that
    stopped early); it reached the end of its own schedule, which is the reading to believe."""
    whole = first_of_near("", 20)
    found = locate(whole[10:], names=("near", "sgm"))
    assert found.schedule == tuple(whole) and found.offset == 10 and found.ends_with(10)


def test_the_scheduler_the_sampler_names_settles_a_part_two_schedules_hold():
    """The first half of sgm_uniform(20) is also the first half of normal(21), sigma for sigma."""
    whole = first_of_near("", 20)
    assert locate_run(whole[:11], schedules, ["near", "sgm"], TOP).steps == 21  # unnamed: the first name's reading
    assert locate_run(whole[:11], schedules, ["near", "sgm"], TOP, named="sgm").schedule == tuple(whole)


def test_a_custom_whole_schedule_from_pure_noise_is_accepted():
    run = [TOP, 9.0, 4.0, 1.5, 0.4, 0.0]
    assert locate(run) == Trajectory(tuple(run), 0)


def test_an_unknown_part_of_a_schedule_cannot_be_placed():
    assert locate([9.0, 4.0, 1.5, 0.4, 0.0]) is None  # does not start from pure noise
    assert locate([TOP, 9.0, 4.0, 1.5]) is None  # stops early: the rest is unknown


def test_slice_offset():
    whole = [10.0, 5.0, 2.0, 1.0, 0.0]
    assert slice_offset(whole, [5.0, 2.0, 1.0]) == 1
    assert slice_offset(whole, [5.0, 2.0, 0.0]) == 1  # a forced final 0
    assert slice_offset(whole, [5.0, 1.0]) is None


SCHEDULE = [14.6, 8.0, 4.0, 2.0, 0.0]


def test_step_index_of_schedule_sigmas():
    assert [step_index(s, SCHEDULE) for s in SCHEDULE[:-1]] == [0, 1, 2, 3]


def test_step_index_between_sigmas_belongs_to_the_open_step():
    assert step_index(6.0, SCHEDULE) == 1  # e.g. dpm_2's midpoint evaluation
    assert step_index(8.0 * (1 + 1e-8), SCHEDULE) == 1  # float noise on a schedule value


def test_step_index_outside_the_schedule():
    assert step_index(20.0, SCHEDULE) == 0
    assert step_index(0.0, SCHEDULE) == 3


def run_clock(run, offset, events, correctors):
    """Feed a clock model evaluations (sigmas) and callbacks ('cb', i); return each evaluation's step."""
    clock = StepClock(Trajectory(tuple([99.0] * offset + run), offset), run, correctors)
    steps = []
    for event in events:
        if isinstance(event, tuple):
            clock.sampled(event[1])
        else:
            steps.append(clock.step_at(event))
    return steps


def test_euler_steps_follow_the_sigma_and_the_offset():
    run = [8.0, 4.0, 2.0, 0.0]
    events = [8.0, ("cb", 0), 4.0, ("cb", 1), 2.0, ("cb", 2)]
    assert run_clock(run, 5, events, correctors=False) == [5, 6, 7]


def test_heun_correctors_belong_to_their_step():
    """Heun evaluates step i at sigma i, calls back, then its corrector at sigma i + 1, which is also step
    i + 1's own sigma: both evaluations of a step must see that step's windows."""
    run = [8.0, 4.0, 2.0, 0.0]
    events = [8.0, ("cb", 0), 4.0, 4.0, ("cb", 1), 2.0, 2.0, ("cb", 2)]
    assert run_clock(run, 0, events, correctors=True) == [0, 0, 1, 1, 2]
    assert run_clock(run, 0, events, correctors=False) == [0, 1, 1, 2, 2]  # what sigma alone would say


def test_exponential_heun_correctors_a_float_step_off_the_next_sigma_belong_to_their_step():
    """exp_heun_2_x0 reaches sigma i + 1 through log-SNR and back: its corrector evaluates a few float steps away
    from the schedule value that step i + 1 then evaluates at, which is still step i + 1's own evaluation."""
    run = [8.0, 4.0, 2.0, 0.0]
    events = [8.0, ("cb", 0), 4.0000005, 4.0, ("cb", 1), 1.9999998, 2.0, ("cb", 2)]
    assert run_clock(run, 0, events, correctors=True) == [0, 0, 1, 1, 2]


def test_heunpp2_correctors_two_sigmas_ahead():
    run = [8.0, 4.0, 2.0, 1.0, 0.0]
    # steps 0-1 are Heun++ (two correctors), step 2 Heun (one), the last Euler (none), as sample_heunpp2 does
    events = [8.0, ("cb", 0), 4.0, 2.0, 4.0, ("cb", 1), 2.0, 1.0, 2.0, ("cb", 2), 1.0, 1.0, ("cb", 3)]
    assert run_clock(run, 0, events, correctors=True) == [0, 0, 0, 1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("k", [1, 7, 48])
def test_both_parts_of_a_split_run_lie_in_the_same_trajectory(k):
    whole = geometric("", 50)
    first, second = locate(whole[:k + 1]), locate(whole[k:])
    assert (first.offset, first.steps) == (0, 50) and (second.offset, second.steps) == (k, 50)
    assert first.schedule == second.schedule


def test_the_final_step_alone_is_placed_only_as_a_continuation():
    """Every schedule ends with the same smallest sigma and 0, so a run of the last step alone is ambiguous;
    the trajectory of the run it continues places it."""
    whole = geometric("", 50)
    assert locate(whole[49:]) is None
    first = locate(whole[:50])
    assert continued(whole[49:], [first]) == Trajectory(tuple(whole), 49)
    assert continued(whole[:10], [first]) is None  # not a continuation: it starts the trajectory
