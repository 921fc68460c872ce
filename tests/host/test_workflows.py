"""The example workflows load, validate and run end to end through ComfyUI's executor (see examples.py for
how they are made small)."""

from __future__ import annotations

import json

import executor
import pack
import pytest
import torch
from examples import EDIT_NODES, EXAMPLES, api_prompt

PACK_NODES = EDIT_NODES | {"AttentionStore", "LocalBlendMask", "ShowAttention", "NullTextInvert"}


def saved_images(prompt, result):
    """The images of the (former) SaveImage node: the sampler's decoded rows."""
    assert result["success"], result["error_message"]
    assert all(torch.isfinite(t).all() for t in result["captured"].values())
    (save,) = [i for i, n in prompt.items() if n["class_type"] == "P2PTestSaveImage"
               and prompt[n["inputs"]["images"][0]]["class_type"] == "VAEDecode"]
    return result["captured"][save]


def widget_slots(node_class: type) -> int:
    """How many values the front end saves for a node: one per widget, two for a seed-like widget."""
    workflow = pack.module("nodes.workflow")
    count = 0
    for section in node_class.INPUT_TYPES().values():
        for name, spec in section.items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if workflow._is_widget(spec):
                count += 1 + workflow._has_control_value(name, spec, options)
    return count


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_saves_a_value_for_every_widget_of_the_pack(path):
    pack.load()
    import nodes

    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] in PACK_NODES:
            assert len(node["widgets_values"]) == widget_slots(nodes.NODE_CLASS_MAPPINGS[node["type"]]), node


def test_a_widget_missing_from_an_older_file_gets_its_default():
    """The front end gives a widget added after a file was saved its default; so must the command line."""
    pack.load()
    import nodes

    path = pack.REPO_ROOT / "example_workflows" / "attention_maps.json"
    workflow = json.loads(path.read_text())
    show = next(n for n in workflow["nodes"] if n["type"] == "ShowAttention")
    show["widgets_values"] = show["widgets_values"][:3]
    prompt = pack.module("nodes.workflow").to_api_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
    assert prompt[str(show["id"])]["inputs"]["components"] == 10


def test_every_node_has_an_example():
    used = {node["type"] for path in EXAMPLES for node in json.loads(path.read_text())["nodes"]}
    assert PACK_NODES <= used


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path):
    prompt = api_prompt(path)
    images = saved_images(prompt, executor.run_workflow(prompt, [str(pack.REPO_ROOT)]))
    edits = [n for n in prompt.values() if n["class_type"] in EDIT_NODES]
    assert images.shape[0] == 1 + len(edits)
    blended = any(n["class_type"] == "LocalBlendMask" for n in prompt.values())
    if edits and not blended:  # a blend on a random model may legitimately mask everything out
        assert not torch.equal(images[0], images[1])


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_word_swap_example_on_other_families(family):
    prompt = api_prompt(pack.REPO_ROOT / "example_workflows" / "replace_word_swap.json", family)
    assert saved_images(prompt, executor.run_workflow(prompt, [str(pack.REPO_ROOT)])).shape[0] == 2


def test_bad_input_reaches_the_user_as_a_clear_message():
    prompt = api_prompt(pack.REPO_ROOT / "example_workflows" / "replace_word_swap.json")
    edit = next(n for n in prompt.values() if n["class_type"] == "ReplaceEdit")
    edit["inputs"]["target_prompt"] = "a big dog riding a bicycle"
    result = executor.run_workflow(prompt, [str(pack.REPO_ROOT)])
    assert not result["success"]
    assert "same number of words" in result["error_message"] and "RefineEdit" in result["error_message"]


@pytest.mark.parametrize("assignment, value", [("ShowAttention.words=", ""), ("ShowAttention.words=1st", "1st"),
                                               ("ShowAttention.row=1", 1), ("ShowAttention.words=-", "-")])
def test_command_line_set_keeps_text_that_is_not_json(assignment, value):
    pack.load()
    prompt = {"7": {"class_type": "ShowAttention", "inputs": {}}}
    pack.module("nodes.headless")._set(prompt, assignment)
    assert prompt["7"]["inputs"][assignment.partition(".")[2].partition("=")[0]] == value
