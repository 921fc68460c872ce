"""The example workflows load, validate and run end to end through ComfyUI's executor (see examples.py for
how they are made small)."""

from __future__ import annotations

import json

import executor
import pack
import pytest
import torch
from examples import EDIT_NODES, EXAMPLES, api_prompt

PACK_NODES = EDIT_NODES | {"AttentionStore", "LocalBlendMask", "ShowAttention", "NullTextInvert",
                           "PromptToPromptDemoScene"}


def saved_images(prompt, result):
    """The images of the (former) SaveImage node: the sampler's decoded rows."""
    assert result["success"], result["error_message"]
    assert all(torch.isfinite(t).all() for t in result["captured"].values())
    (save,) = [i for i, n in prompt.items() if n["class_type"] == "P2PTestSaveImage"
               and prompt[n["inputs"]["images"][0]]["class_type"] == "VAEDecode"]
    return result["captured"][save]


def widget_slots(node_class: type) -> int:
    """How many values the front end saves for a node: one per widget, two for a seed-like widget."""
    workflow = pack.module("cli.workflow")
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


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_lists_every_output_of_the_pack_nodes_in_order(path):
    """A saved node whose outputs are out of date loads with outputs the node no longer has in that slot."""
    pack.load()
    import nodes

    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] in PACK_NODES:
            node_class = nodes.NODE_CLASS_MAPPINGS[node["type"]]
            names = getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)  # unnamed: named by type
            expected = list(zip(names, node_class.RETURN_TYPES))
            assert [(o["name"], o["type"]) for o in node["outputs"]] == expected, node["type"]


def test_a_widget_missing_from_an_older_file_gets_its_default():
    """The front end gives a widget added after a file was saved its default; so must the command line."""
    pack.load()
    import nodes

    path = pack.REPO_ROOT / "example_workflows" / "attention_maps.json"
    workflow = json.loads(path.read_text())
    show = next(n for n in workflow["nodes"] if n["type"] == "ShowAttention")
    show["widgets_values"] = show["widgets_values"][:3]
    prompt = pack.module("cli.workflow").to_api_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
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
    import nodes

    prompt = {"7": {"class_type": "ShowAttention", "inputs": {}}}
    pack.module("cli.headless")._set(prompt, assignment, nodes.NODE_CLASS_MAPPINGS)
    assert prompt["7"]["inputs"][assignment.partition(".")[2].partition("=")[0]] == value


def word_swap_workflow() -> dict:
    return json.loads((pack.REPO_ROOT / "example_workflows" / "replace_word_swap.json").read_text())


def converted(workflow: dict) -> dict:
    pack.load()
    import nodes

    return pack.module("cli.workflow").to_api_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)


def insert_between(workflow: dict, link_id: int, node: dict) -> None:
    """Put `node` (its first input and output of the link's type) on link `link_id`, as a user wiring it in."""
    link = next(k for k in workflow["links"] if k[0] == link_id)
    new_id = max(k[0] for k in workflow["links"]) + 1
    workflow["links"].append([new_id, link[1], link[2], node["id"], 0, link[5]])
    node["inputs"][0]["link"] = new_id
    link[1], link[2] = node["id"], 0
    workflow["nodes"].append(node)


def test_reroutes_and_bypassed_nodes_are_passed_through_as_the_front_end_does():
    """A bypassed node used to stay the source of the links after it, and validation failed with a KeyError."""
    workflow = word_swap_workflow()
    insert_between(workflow, 1, {"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*"}],
                                 "outputs": [{"name": "", "type": "MODEL"}]})
    insert_between(workflow, 4, {"id": 21, "type": "LocalBlendMask", "mode": 4, "widgets_values": ["cat", "dog"],
                                 "inputs": [{"name": "model", "type": "MODEL"}, {"name": "clip", "type": "CLIP"}],
                                 "outputs": [{"name": "model", "type": "MODEL"}]})
    assert converted(workflow) == converted(word_swap_workflow())


def test_a_primitive_node_gives_the_widget_value_it_feeds():
    workflow = word_swap_workflow()
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 30})
    workflow["nodes"].append({"id": 30, "type": "PrimitiveNode", "mode": 0, "widgets_values": [sampler[
        "widgets_values"][0], "fixed"], "outputs": [{"name": "INT", "type": "INT", "links": [30]}]})
    workflow["links"].append([30, 30, 0, sampler["id"], 4, "INT"])
    assert converted(workflow) == converted(word_swap_workflow())


def test_a_muted_node_whose_output_is_used_is_named():
    workflow = word_swap_workflow()
    next(n for n in workflow["nodes"] if n["type"] == "ReplaceEdit")["mode"] = 2
    with pytest.raises(pack.error_type(), match=r"node 2 \(ReplaceEdit\) is muted, but another node takes its output"):
        converted(workflow)


@pytest.mark.parametrize("content, says", [("{not json", "is not a workflow: it is not JSON"),
                                           ("[1, 2]", "is not a workflow: a JSON list"),
                                           ('{"1": 5}', "is not a workflow: node '1' is not"),
                                           (None, "cannot be read")], ids=["junk", "list", "node", "missing"])
def test_a_workflow_file_that_is_no_workflow_is_named(content, says, tmp_path):
    path = tmp_path / "flow.json"
    if content is not None:
        path.write_text(content)
    pack.load()
    with pytest.raises(pack.error_type(), match=f"{path.name}.*{says}"):
        pack.module("cli.headless").load_prompt(path, {})


def test_command_line_set_of_an_input_the_node_does_not_have_lists_those_it_has():
    """A misspelt input used to be set beside the real one, which ComfyUI ignored: the run used the old value."""
    pack.load()
    import nodes

    prompt = {"7": {"class_type": "ShowAttention", "inputs": {}}}
    with pytest.raises(pack.error_type(), match="ShowAttention has no input 'wrods'.*words"):
        pack.module("cli.headless")._set(prompt, "ShowAttention.wrods=cat", nodes.NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("option", ["steps", "width", "height"])
def test_command_line_zero_steps_or_size_is_not_ignored(option):
    """0 used to count as 'not given', so the workflow's own value ran."""
    pack.load()
    headless = pack.module("cli.headless")
    prompt = {"1": {"class_type": "KSampler", "inputs": {"steps": 20}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512}}}
    headless.apply_overrides(prompt, headless.Overrides(**{option: 0}), {})
    assert 0 in (prompt["1"]["inputs"]["steps"], prompt["2"]["inputs"]["width"], prompt["2"]["inputs"]["height"])


def test_command_line_steps_reach_every_node_that_inverts_or_samples_for_them():
    """FlowInvert inverts for as many steps as its sampler samples; `--steps` left it at the workflow's 28, and the
    sampler, set to the new count, refused the inverted latent."""
    import nodes

    pack.load()
    headless = pack.module("cli.headless")
    prompt = headless.load_prompt(pack.REPO_ROOT / "example_workflows" / "flux_real_image_edit.json",
                                  nodes.NODE_CLASS_MAPPINGS)
    prompt = {key: node for key, node in prompt.items() if node["class_type"] != "CheckpointLoaderSimple"}
    headless.apply_overrides(prompt, headless.Overrides(steps=12), nodes.NODE_CLASS_MAPPINGS)
    assert {node["inputs"]["steps"] for node in prompt.values() if "steps" in node["inputs"]} == {12}


@pytest.mark.parametrize("example, family", [("flux_word_swap", "a Flux.1 checkpoint"),
                                             ("sd35_word_swap", "an SD3 or SD3.5 checkpoint"),
                                             ("replace_word_swap", "a Stable Diffusion 1.5 checkpoint")])
def test_command_line_missing_checkpoint_says_what_to_download_for_the_workflows_family(example, family):
    import nodes

    pack.load()
    headless = pack.module("cli.headless")
    prompt = headless.load_prompt(pack.REPO_ROOT / "example_workflows" / f"{example}.json", nodes.NODE_CLASS_MAPPINGS)
    with pytest.raises(pack.error_type(), match=f"'nowhere.safetensors' was not found. Download {family}"):
        headless.apply_overrides(prompt, headless.Overrides(ckpt="nowhere.safetensors"), nodes.NODE_CLASS_MAPPINGS)


def test_command_line_ckpt_path_is_the_file_given_not_a_same_named_one_comfyui_finds_first(tmp_path, monkeypatch):
    """`run --ckpt PATH`: ComfyUI looks a checkpoint up by name, in its folders in order; the given file's folder
    must come first, or a same-named file in models/checkpoints is loaded instead."""
    import copy

    import folder_paths

    monkeypatch.setattr(folder_paths, "folder_names_and_paths", copy.deepcopy(folder_paths.folder_names_and_paths))
    theirs, mine = tmp_path / "models", tmp_path / "mine"
    for folder in (theirs, mine):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    folder_paths.add_model_folder_path("checkpoints", str(theirs), is_default=True)
    name = pack.module("cli.headless")._checkpoint(str(mine / "model.safetensors"), "")
    assert folder_paths.get_full_path("checkpoints", name) == str(mine / "model.safetensors")


def test_command_line_ckpt_of_the_demo_model_points_to_the_demo_templates():
    """`run --ckpt toy/prompt_to_prompt_toy.safetensors`: no checkpoint loader reads the demo model (ComfyUI says
    "Could not detect model type"); the command line says which workflows run it."""
    shipped = pack.module("nodes.toy_nodes").MODEL_FILE
    with pytest.raises(pack.error_type(), match="demo_word_swap_colour"):
        pack.module("cli.headless")._checkpoint(str(shipped), "")
