"""Every FLOAT and INT input of every node of the pack refuses what ComfyUI lets through: NaN, infinities,
fractions for whole numbers, and values outside the input's range that arrive over a link (ComfyUI checks
min/max only on widgets, and NaN passes)."""

from __future__ import annotations

import inspect
import math
import re

import executor
import pack
import pytest
import tiny

tiny.import_comfy()

PACK = pack.load()
#: Every node of the pack that takes inputs (the demo model's loader and the RF-Solver and FlowEdit samplers take
#: none).
NODES = {key: node for key, node in PACK.NODE_CLASS_MAPPINGS.items() if node.INPUT_TYPES() != {"required": {}}}
TITLES = PACK.NODE_DISPLAY_NAME_MAPPINGS
typed_inputs = pack.module("nodes.inputs").typed_inputs


def float_inputs(node_class: type) -> dict[str, dict]:
    return typed_inputs(node_class, "FLOAT")


def int_inputs(node_class: type) -> dict[str, dict]:
    return typed_inputs(node_class, "INT")


def call_with(node_class: type, **values):
    """The node's function with `values`, its other numbers at their defaults and every other parameter None: the
    check runs before the body reads any."""
    function = getattr(node_class(), node_class.FUNCTION)
    required = [p.name for p in inspect.signature(function).parameters.values() if p.default is inspect.Parameter.empty]
    inputs = {**float_inputs(node_class), **int_inputs(node_class)}
    numbers = {name: options["default"] for name, options in inputs.items()}
    return function(**{**dict.fromkeys(required), **numbers, **values})


def test_every_node_of_the_pack_has_numbers_to_check():
    assert sorted(NODES) == sorted(["ReplaceEdit", "RefineEdit", "Reweight", "LocalBlendMask", "AttentionStore",
                                    "ShowAttention", "NullTextInvert", "FlowInvert", "PromptToPromptDemoScene"])
    assert set(PACK.NODE_CLASS_MAPPINGS) - set(NODES) == {"PromptToPromptDemoModel", "RFSolverSampler",
                                                                 "FlowEditSampler"}
    assert all(float_inputs(node_class) or int_inputs(node_class) for node_class in NODES.values())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key,name", [(key, name) for key in sorted(NODES) for name in float_inputs(NODES[key])])
def test_a_non_finite_float_input_is_refused_naming_the_input_and_the_range(error, key, name, value):
    options = float_inputs(NODES[key])[name]
    expected = (f"The '{name}' input of {TITLES[key]} is {value!r}; set it to a finite number from {options['min']:g} "
                f"to {options['max']:g}")
    with pytest.raises(error, match=re.escape(expected)):
        call_with(NODES[key], **{name: value})


@pytest.mark.parametrize("key,name", [(key, name) for key in sorted(NODES) for name in int_inputs(NODES[key])])
def test_a_whole_number_input_outside_its_range_or_not_whole_is_refused_naming_the_input(error, key, name):
    """A linked width of 0 gave an empty latent that failed inside a convolution; 0 inner steps inverted as
    plain DDIM does, silently."""
    options = int_inputs(NODES[key])[name]
    for value in (options["min"] - 1, options["max"] + 1, options["default"] + 0.5, True):
        expected = (f"The '{name}' input of {TITLES[key]} is {value!r}; set it to a whole number from "
                    f"{options['min']:g} to {options['max']:g}")
        with pytest.raises(error, match=re.escape(expected)):
            call_with(NODES[key], **{name: value})


def test_a_linked_value_outside_the_range_is_refused(error):
    with pytest.raises(error, match="'threshold' input of Prompt-to-Prompt Local Blend is 5.0"):
        call_with(NODES["LocalBlendMask"], threshold=5.0)


def test_positional_arguments_are_checked_too(error):
    """Graphs pass inputs by keyword; Python callers (and the tests) may not."""
    model, clip, _ = executor.tiny_bundle("sd1")
    with pytest.raises(error, match="'scale' input"):
        NODES["Reweight"]().apply(model, clip, "a fluffy bear", "fluffy", math.nan, "new row", 0.8, 0.4, 64, 64)


def test_finite_values_in_range_reach_the_node():
    model, clip, _ = executor.tiny_bundle("sd1")
    model_out, positive, latent = NODES["Reweight"]().apply(model, clip, "a fluffy bear", "fluffy", -10.0, "new row",
                                                            0.0, 1.0, 64, 64)
    assert latent["samples"].shape[0] == 2
