"""Step windows: fractions of the steps of the whole trajectory, like the paper's `cross_replace_steps` (0.8 =
the first 80 % of the steps), and their parsing from what users type. Which step a model evaluation belongs to
is `trajectory.py`'s job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import PromptToPromptError

_EPS = 1e-9


@dataclass(frozen=True)
class Window:
    """A window of a trajectory's steps, as fractions of its `steps` (see `contains` and `contains_cross`)."""

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= self.end <= 1.0):
            raise PromptToPromptError(
                f"A step window must satisfy 0 <= start <= end <= 1, got ({self.start}, {self.end}).")

    def contains(self, step: int, steps: int) -> bool:
        """Steps [floor(start * steps), floor(end * steps)): self-attention, recording and blending windows."""
        return step in self.step_range(steps)

    def step_range(self, steps: int) -> range:
        """The steps of a run of `steps` steps inside the window (empty when it is shorter than a step)."""
        return range(_first_step(self.start, steps), _first_step(self.end, steps))

    def contains_cross(self, step: int, steps: int) -> bool:
        """Steps [floor(start * (steps + 1)), floor(end * (steps + 1))): cross-attention windows.

        The official code reads its per-step cross-attention weights from a table with one row more than there
        are steps, so 0.5 of 25 steps injects 13 steps there; cross windows count the same way.
        """
        return self.contains(step, steps + 1)


def _first_step(fraction: float, steps: int) -> int:
    # The epsilon keeps 0.3 * 10 = 3.0000000000000004 and 0.29 * 100 = 28.999999999999996 on the integer.
    return math.floor(fraction * steps + _EPS)


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_WINDOW = re.compile(rf"\s*({_NUMBER})\s*(?:-\s*({_NUMBER})\s*)?")


def parse_window(text: str) -> Window:
    """'0.4' -> Window(0, 0.4); '0.2-0.6' -> Window(0.2, 0.6); exponents such as '1e-3' read as numbers."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise PromptToPromptError(
            f"Cannot read the step window '{text}': write an end fraction like 0.4 or a range like 0.2-0.6.")
    start, end = match.groups()
    if end is None:
        return Window(0.0, float(start))
    return Window(float(start), float(end))


def parse_word_windows(text: str) -> tuple[tuple[str, Window], ...]:
    """'dog: 0.4, tail: 0.2-0.6' (commas or new lines) -> (('dog', Window(0, .4)), ('tail', Window(.2, .6)))."""
    entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip()]
    parsed = []
    for entry in entries:
        word, sep, window = entry.rpartition(":")
        if not sep or not word.strip():
            raise PromptToPromptError(
                f"Cannot read the word window '{entry}': write 'word: 0.4' or 'word: 0.2-0.6', "
                "separated by commas or new lines.")
        parsed.append((word.strip(), parse_window(window.strip())))
    return tuple(parsed)
