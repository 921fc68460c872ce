"""The example workflows as API prompts the executor can run in seconds on tiny models.

Each UI-format example is converted with the pack's own converter; its checkpoint loader becomes a tiny
random-weight one with the same outputs, its image outputs become capturing nodes, and it is made small:
64 x 64 images (a real photo is scaled down before VAE Encode), a few steps, and the 1/2 attention level
(the tiny UNets have only 1/1 and 1/2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pack
import tiny

tiny.import_comfy()
import nodes  # noqa: E402

EXAMPLES = sorted((pack.REPO_ROOT / "example_workflows").glob("*.json"))
EDIT_NODES = {"ReplaceEdit", "RefineEdit", "Reweight"}
SIZED_NODES = EDIT_NODES | {"AttentionStore"}
STEPPED_NODES = {"KSampler", "KSamplerAdvanced", "NullTextInvert", "FlowInvert", "BasicScheduler"}


def api_prompt(path: Path, family: str | None = None, steps: int = 3) -> dict[str, dict]:
    """The example as an API prompt on a tiny model (of ``family``; default: the family the file's name starts
    with, flux_ or sd35_, else SD1)."""
    family = family or next((f for prefix, f in (("flux", "flux"), ("sd35", "sd3")) if path.stem.startswith(prefix)),
                            "sd1")
    pack.load()
    to_api = pack.module("cli.workflow").to_api_prompt
    prompt = to_api(json.loads(path.read_text()), nodes.NODE_CLASS_MAPPINGS)
    for node in list(prompt.values()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="P2PTestTinyCheckpoint", inputs={"family": family, "seed": 0})
        elif kind in ("SaveImage", "PreviewImage"):
            node.update(class_type="P2PTestSaveImage", inputs={"images": inputs["images"]})
        elif kind == "VAEEncode":
            prompt["scale"] = {"class_type": "ImageScale", "inputs": {
                "image": inputs["pixels"], "upscale_method": "bilinear", "width": 64, "height": 64, "crop": "center"}}
            inputs["pixels"] = ["scale", 0]
        if kind in STEPPED_NODES:
            inputs.update(steps=steps)
        if kind in SIZED_NODES:
            inputs.update(width=64, height=64)
        if "level" in inputs:
            inputs.update(level="1/2")
    return prompt


def node_id(prompt: dict[str, dict], kind: str) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == kind)
