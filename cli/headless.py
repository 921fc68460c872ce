"""Run a workflow (an example, or any saved one) through ComfyUI's executor without the GUI.

Used by the pack's command line (`python <pack folder> run ...`, see __main__.py): converts a UI-format
workflow to an API prompt, points its checkpoint loader at the user's file, applies small overrides (steps,
size, input image), runs it with ComfyUI's PromptExecutor and reports the images written.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import execution
import folder_paths

from ..p2p_core.errors import PromptToPromptError
from .workflow import to_api_prompt

SIZED = {"ReplaceEdit", "RefineEdit", "Reweight", "AttentionStore", "EmptyLatentImage"}
STEPPED = {"KSampler", "KSamplerAdvanced", "NullTextInvert", "FlowInvert", "BasicScheduler"}
DOWNLOAD_HINT = "Download {what} into {folder}, then run again with --ckpt <its file name or path>."
#: What to download, by the family the workflow's own checkpoint name shows (each example names one of its family).
CHECKPOINTS = {
    "flux": "a Flux.1 checkpoint that holds its text encoders and VAE (for example flux1-dev-fp8.safetensors from "
            "the Hugging Face repository Comfy-Org/flux1-dev)",
    "sd3": "an SD3 or SD3.5 checkpoint that holds its text encoders (for example "
           "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors from the Hugging Face repository "
           "Comfy-Org/stable-diffusion-3.5-fp8)",
}
UNET_CHECKPOINT = ("a Stable Diffusion 1.5 checkpoint (for example v1-5-pruned-emaonly-fp16.safetensors from the "
                   "Hugging Face repository Comfy-Org/stable-diffusion-v1-5-archive; any SD1.x, SD2.x or SDXL "
                   "checkpoint works)")


@dataclass
class Overrides:
    """What the command line may change in a workflow before running it."""

    ckpt: str | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    image: str | None = None
    seed: int | None = None
    sets: list[str] = field(default_factory=list)


class _Server:
    """The parts of ComfyUI's PromptServer the executor talks to; progress goes to the console."""

    client_id = None
    last_node_id = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            print(f"  running node {data['node']}", flush=True)

    def queue_updated(self) -> None:
        pass


def load_prompt(path: Path, node_classes: dict[str, type]) -> dict[str, dict]:
    """An API prompt from a UI-format workflow file (or an API-format one, used as it is)."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise PromptToPromptError(f"The workflow {path} cannot be read ({error.strerror or error}).") from None
    except ValueError as error:
        raise PromptToPromptError(f"{path} is not a workflow: it is not JSON ({error}). Give a workflow saved "
                                  "from ComfyUI (Save, or Export (API)).") from None
    if not isinstance(data, dict):
        raise PromptToPromptError(f"{path} is not a workflow: a JSON {type(data).__name__.replace('dict', 'object')}"
                                  " where ComfyUI saves an object. Give a workflow saved from ComfyUI.")
    if "nodes" in data:
        return to_api_prompt(data, node_classes)
    for key, node in data.items():
        if not (isinstance(node, dict) and isinstance(node.get("class_type"), str)
                and isinstance(node.get("inputs"), dict)):
            raise PromptToPromptError(f"{path} is not a workflow: node {key!r} is not an object with a class_type "
                                      "and inputs, as Export (API) writes them, and the file has no 'nodes' list "
                                      "as Save writes it.")
    return data


def apply_overrides(prompt: dict[str, dict], overrides: Overrides, node_classes: dict[str, type]) -> None:
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = _checkpoint(overrides.ckpt, inputs.get("ckpt_name", ""))
        if kind in STEPPED and overrides.steps is not None:
            inputs["steps"] = overrides.steps
        if kind in SIZED:
            inputs.update({k: v for k, v in (("width", overrides.width), ("height", overrides.height))
                           if v is not None})
        if kind == "LoadImage" and overrides.image:
            image = Path(overrides.image).resolve()
            folder_paths.set_input_directory(str(image.parent))
            inputs["image"] = image.name
        for key in ("seed", "noise_seed"):
            if key in inputs and overrides.seed is not None and not isinstance(inputs[key], list):
                inputs[key] = overrides.seed
    for assignment in overrides.sets:
        _set(prompt, assignment, node_classes)


def _checkpoint(requested: str | None, named: str) -> str:
    """The checkpoint name the loader should use, making a given path visible to ComfyUI."""
    if requested:
        path = Path(requested).expanduser()
        if path.is_file() and _is_demo_model(path):
            raise PromptToPromptError(
                f"{path} is the pack's demo model, which no checkpoint loader reads: run one of the demo_ templates "
                "instead (example_workflows/demo_*.json: the Demo Model node in place of Load Checkpoint, toy "
                "captions), e.g. `run example_workflows/demo_word_swap_colour.json`.")
        if path.is_file():
            # First among the folders ComfyUI searches, so a same-named file in models/checkpoints is not taken.
            folder_paths.add_model_folder_path("checkpoints", str(path.resolve().parent), is_default=True)
            return path.name
    if (requested or named) in folder_paths.get_filename_list("checkpoints"):
        return requested or named
    what = next((text for family, text in CHECKPOINTS.items() if family in named.lower()), UNET_CHECKPOINT)
    folder = folder_paths.get_folder_paths("checkpoints")[0]
    raise PromptToPromptError(f"The checkpoint '{requested or named}' was not found. "
                              + DOWNLOAD_HINT.format(what=what, folder=folder))


def _is_demo_model(path: Path) -> bool:
    """Whether the file is one of the pack's demo models (its metadata names a toy config)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(key.startswith("toy_") for key in (handle.metadata() or {}))
    except (SafetensorError, OSError):
        return False


def _set(prompt: dict[str, dict], assignment: str, node_classes: dict[str, type]) -> None:
    """'NodeType.input=value' (or 'node_id.input=value'): set an input on every matching node.

    Refuses an input the node does not have: ComfyUI ignores unknown inputs, so a misspelt name would run the
    workflow's own value, silently.
    """
    target, sep, value = assignment.partition("=")
    node_key, dot, name = target.partition(".")
    if not sep or not dot:
        raise PromptToPromptError(f"Cannot read --set {assignment!r}: write NodeType.input=value.")
    parsed: Any = value
    if value and (value[0] in "0123456789-[{\"" or value in ("true", "false")):
        with contextlib.suppress(json.JSONDecodeError):  # text that merely starts like a number stays text
            parsed = json.loads(value)
    matched = [n for i, n in prompt.items() if node_key in (i, n["class_type"])]
    if not matched:
        raise PromptToPromptError(f"--set {assignment!r}: no node '{node_key}' in the workflow.")
    for node in matched:
        node_class = node_classes.get(node["class_type"])
        if node_class is not None:
            known = [n for section in node_class.INPUT_TYPES().values() if isinstance(section, dict) for n in section]
            if name not in known:
                raise PromptToPromptError(f"--set {assignment!r}: {node['class_type']} has no input '{name}'; its "
                                          f"inputs are {', '.join(known)}.")
        node["inputs"][name] = parsed


def run(workflow: Path, overrides: Overrides, output: Path, node_classes: dict[str, type]) -> list[Path]:
    """Run the workflow; return the image files it wrote. Raises PromptToPromptError with the node's message."""
    prompt = load_prompt(workflow, node_classes)
    apply_overrides(prompt, overrides, node_classes)
    images = execute(prompt, output)
    return [path for node in images.values() for kind, path in node if kind == "output"]


def new_executor(server: Any) -> execution.PromptExecutor:
    """A PromptExecutor with ComfyUI's classic cache (outputs dropped as soon as they are used).

    Newer ComfyUI's executor takes `cache_args` and reads its RAM headroom from them on every run (no headroom
    kept here: the classic cache frees nothing on pressure); older ones take neither. Asked of the class itself,
    not of a version number, since forks and installs from source carry other numbers.
    """
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)


def execute(prompt: dict[str, dict], output: Path) -> dict[str, list[tuple[str, Path]]]:
    """Validate and run an API prompt with ComfyUI's executor, saving into ``output``.

    Returns, per node that showed images, each image's type ("output" for saved, "temp" for previews) and file.
    Raises PromptToPromptError with ComfyUI's validation message or the failing node's message.
    """
    output.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output))
    import asyncio

    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("cli", prompt, None))
    if not valid or node_errors:  # ComfyUI runs the valid outputs and drops the rest; a command must not
        details = "; ".join(f"{i}: {e}" for i, e in node_errors.items()) if node_errors else ""
        raise PromptToPromptError(f"The workflow is not valid: {error.get('message', error)} {details}".strip())
    executor = new_executor(_Server())
    executor.execute(prompt, "cli", {}, list(outputs))
    failure = next((data for event, data in executor.status_messages if event == "execution_error"), None)
    if failure is not None:
        raise PromptToPromptError(f"{failure.get('node_type')} failed: {str(failure.get('exception_message')).strip()}")
    folders = {"output": folder_paths.get_output_directory(), "temp": folder_paths.get_temp_directory()}
    return {node: [(image["type"], Path(os.path.normpath(Path(folders[image["type"]], image.get("subfolder", ""),
                                                              image["filename"]))))
                   for image in ui.get("images", []) if image.get("type") in folders]
            for node, ui in executor.history_result.get("outputs", {}).items()}
