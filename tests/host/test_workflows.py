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
