"""Refuse the numbers ComfyUI lets through to a node: NaN, infinities and out-of-range links.

ComfyUI reads prompts with Python's json module, which accepts NaN and Infinity, and checks a widget's
min/max with < and >, which are both false for NaN; a value that arrives over a link (a primitive or math
node) is not checked at all. A NaN scale then samples NaN latents and reports success, a NaN threshold
silently edits nothing, and a linked width of 0 gives an empty latent that fails deep inside a convolution.
nodes/__init__.py wraps the function of every node of the pack with this check, so no node can forget one of
its inputs.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any

from ..p2p_core.errors import PromptToPromptError


def typed_inputs(node_class: type, kind: str) -> dict[str, dict]:
    """The node's inputs of ComfyUI type `kind` ("FLOAT", "INT") and their options (min, max, default)."""
    return {name: (spec[1] if len(spec) > 1 else {})
            for section in node_class.INPUT_TYPES().values() if isinstance(section, dict)
            for name, spec in section.items() if isinstance(spec, tuple) and spec and spec[0] == kind}


def _refuse(title: str, name: str, value: Any, options: dict, kind: str, why: str = "") -> None:
    low, high = options.get("min", -math.inf), options.get("max", math.inf)
    default = f" (default {options['default']})" if "default" in options else ""
    raise PromptToPromptError(
        f"The '{name}' input of {title} is {value!r}; set it to a {kind} from {low:g} to {high:g}{default}.{why}")


def check_float(title: str, name: str, value: Any, options: dict) -> None:
    """Refuse a value that is not a finite number within the input's declared range, naming the input."""
    if isinstance(value, numbers.Real) and math.isfinite(value) \
            and options.get("min", -math.inf) <= value <= options.get("max", math.inf):
        return
    _refuse(title, name, value, options, "finite number", " NaN and Infinity are not numbers an edit can use.")


def check_int(title: str, name: str, value: Any, options: dict) -> None:
    """Refuse a value that is not a whole number within the input's declared range, naming the input."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            and options.get("min", -math.inf) <= value <= options.get("max", math.inf):
        return
    _refuse(title, name, value, options, "whole number")


CHECKS = {"FLOAT": check_float, "INT": check_int}


def refuse_bad_numbers(node_class: type, title: str) -> type:
    """`node_class` with its FUNCTION checking every FLOAT and INT input before it runs (the class is changed in
    place and returned)."""
    function_name = node_class.FUNCTION
    function = getattr(node_class, function_name)
    if getattr(function, "checks_numbers", False):
        return node_class
    numbers_in = [(name, options, check) for kind, check in CHECKS.items()
                  for name, options in typed_inputs(node_class, kind).items()]
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        for name, options, check in numbers_in:
            if name in bound:
                check(title, name, bound[name], options)
        return function(*args, **kwargs)

    checked.checks_numbers = True
    setattr(node_class, function_name, checked)
    return node_class
