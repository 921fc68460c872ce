"""The example workflows load, validate and run end to end through ComfyUI's executor.

Each UI-format example is converted to an API prompt with the pack's converter, its checkpoint loader
swapped for a tiny random-weight one of the same outputs and its SaveImage for a capturing output node,
and made small (64 x 64, 3 steps) so it runs in seconds.
"""

from __future__ import annotations

import json

import executor
import pack
import pytest
import tiny
import torch

tiny.import_comfy()
import nodes  # noqa: E402

EXAMPLES = sorted((pack.REPO_ROOT / "example_workflows").glob("*.json"))
EDIT_NODES = {"ReplaceEdit", "RefineEdit", "Reweight"}
PACK_NODES = EDIT_NODES | {"AttentionStore", "LocalBlendMask", "ShowAttention"}
SIZED_NODES = EDIT_NODES | {"AttentionStore"}


def api_prompt(path, family="sd1"):
    pack.load()
    to_api = pack.module("nodes.workflow").to_api_prompt
    prompt = to_api(json.loads(path.read_text()), nodes.NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="P2PTestTinyCheckpoint", inputs={"family": family, "seed": 0})
        elif kind in ("SaveImage", "PreviewImage"):
            node.update(class_type="P2PTestSaveImage", inputs={"images": inputs["images"]})
        elif kind == "KSampler":
            inputs.update(steps=3)
        if kind in SIZED_NODES:
            inputs.update(width=64, height=64)
        if "level" in inputs:
            inputs.update(level="1/2")  # the tiny UNets have levels 1/1 and 1/2 only
    return prompt


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
