import pytest

from p2p_core.errors import PromptToPromptError
from p2p_core.schedule import Window, parse_window, parse_word_windows


def steps_in(window, steps):
    return [i for i in range(steps) if window.contains(i, steps)]


def test_fraction_window_covers_the_first_steps():
    assert steps_in(Window(0, 0.8), 50) == list(range(40))
    assert steps_in(Window(0, 0.4), 50) == list(range(20))


def test_window_edges_survive_float_rounding():
    assert steps_in(Window(0, 0.3), 10) == [0, 1, 2]  # 0.3 * 10 = 3.0000000000000004
    assert steps_in(Window(0, 0.29), 100)[-1] == 28  # 0.29 * 100 = 28.999999999999996


def test_start_end_window():
    assert steps_in(Window(0.2, 0.6), 10) == [2, 3, 4, 5]
    assert steps_in(Window(0, 0), 10) == []


def test_bad_window_is_an_error():
    with pytest.raises(PromptToPromptError):
        Window(0.6, 0.2)


def test_parse_window_forms():
    assert parse_window("0.4") == Window(0, 0.4)
    assert parse_window(" 0.2-0.6 ") == Window(0.2, 0.6)
    with pytest.raises(PromptToPromptError, match="0.2-0.6"):
        parse_window("soon")


def test_parse_window_reads_exponents_and_still_refuses_leftovers():
    assert parse_window("1e-3") == Window(0, 0.001)
    assert parse_window("2.5e-1 - 5E-1") == Window(0.25, 0.5)
    assert parse_word_windows("dog: 1e-3") == (("dog", Window(0, 0.001)),)
    for text in ("0.2-0.4-0.6", "0.2-", "-", "0.4 0.6", "nan"):
        with pytest.raises(PromptToPromptError, match="Cannot read the step window"):
            parse_window(text)


def test_parse_word_windows():
    assert parse_word_windows("dog: 0.4, tail: 0.2-0.6") == (("dog", Window(0, 0.4)), ("tail", Window(0.2, 0.6)))
    assert parse_word_windows("red car: 0.5\n") == (("red car", Window(0, 0.5)),)
    assert parse_word_windows("  ") == ()
    with pytest.raises(PromptToPromptError, match="word: 0.4"):
        parse_word_windows("dog 0.4")
