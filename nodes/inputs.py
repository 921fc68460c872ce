"""Refuse the FLOAT values ComfyUI lets through to a node: NaN, infinities and out-of-range links.

ComfyUI reads prompts with Python's json module, which accepts NaN and Infinity, and checks a widget's
min/max with < and >, which are both false for NaN; a value that arrives over a link (a primitive or math
node) is not checked at all. A NaN scale then samples NaN latents and reports success, and a NaN threshold
silently edits nothing. nodes/__init__.py wraps the function of every node of the pack with this check, so
no node can forget one of its inputs.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any

from ..p2p_core.errors import PromptToPromptError


def float_inputs(node_class: type) -> dict[str, dict]:
    """The node's FLOAT inputs and their options (min, max, default)."""
    return {name: (spec[1] if len(spec) > 1 else {})
            for section in node_class.INPUT_TYPES().values() if isinstance(section, dict)
            for name, spec in section.items() if isinstance(spec, tuple) and spec and spec[0] == "FLOAT"}


def check_float(title: str, name: str, value: Any, options: dict) -> None:
    """Refuse a value that is not a finite number within the input's declared range, naming the input."""
    low, high = options.get("min", -math.inf), options.get("max", math.inf)
    if isinstance(value, numbers.Real) and math.isfinite(value) and low <= value <= high:
        return
    default = f" (default {options['default']})" if "default" in options else ""
    raise PromptToPromptError(
        f"The '{name}' input of {title} is {value!r}; set it to a finite number from {low:g} to {high:g}{default}. "
        "NaN and Infinity are not numbers an edit can use.")


def refuse_bad_floats(node_class: type, title: str) -> type:
    """`node_class` with its FUNCTION checking every FLOAT input before it runs (the class is changed in
    place and returned)."""
    function_name = node_class.FUNCTION
    function = getattr(node_class, function_name)
    if getattr(function, "checks_floats", False):
        return node_class
    floats = float_inputs(node_class)
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        for name, options in floats.items():
            if name in bound:
                check_float(title, name, bound[name], options)
        return function(*args, **kwargs)

    checked.checks_floats = True
    setattr(node_class, function_name, checked)
    return node_class
