"""Command line: run a Prompt-to-Prompt workflow headless, without ComfyUI's GUI.

    python path/to/comfyui-prompt-to-prompt run example_workflows/replace_word_swap.json --ckpt model.safetensors
    python path/to/comfyui-prompt-to-prompt demo --output demo   # every example on the demo model (toy/)

ComfyUI is found from --comfyui, COMFYUI_PATH, or the folder this pack is installed in (custom_nodes/..).
This file only finds and starts ComfyUI and loads the pack the way ComfyUI does; the work is in
cli/headless.py and cli/demo.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent
#: The pack's folder as it was started, links kept: a pack linked into ComfyUI/custom_nodes (a common way to
#: develop one) resolves to its checkout, whose parents hold no ComfyUI.
STARTED_FROM = Path(os.path.abspath(__file__)).parent


def comfyui_root(explicit: str | None) -> Path:
    for candidate in (explicit, os.environ.get("COMFYUI_PATH"), str(STARTED_FROM.parent.parent),
                      str(PACK.parent.parent)):
        if candidate and (Path(candidate) / "comfy").is_dir() and (Path(candidate) / "nodes.py").is_file():
            return Path(candidate).resolve()
    sys.exit("Cannot find ComfyUI: install this pack in ComfyUI/custom_nodes, set COMFYUI_PATH, or pass --comfyui.")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prompt-to-prompt", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a workflow (UI or API format) and write its images")
    run.add_argument("workflow", type=Path, help="a workflow file, e.g. example_workflows/replace_word_swap.json")
    run.add_argument("--ckpt", help="checkpoint file (path, or a name in ComfyUI/models/checkpoints)")
    run.add_argument("--output", type=Path, default=Path("output"), help="folder for the images (default ./output)")
    run.add_argument("--steps", type=int, help="sampling and inversion steps")
    run.add_argument("--width", type=int, help="image width for edit nodes and empty latents")
    run.add_argument("--height", type=int, help="image height for edit nodes and empty latents")
    run.add_argument("--image", help="input image for LoadImage nodes (real-image workflows)")
    run.add_argument("--seed", type=int, help="seed for every sampler")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="set any input, by node type or id, e.g. --set ReplaceEdit.target_prompt='a dog'")
    demo = commands.add_parser("demo", help="run every example on the demo model (toy/); write labelled grids")
    demo.add_argument("--output", type=Path, default=Path("demo"), help="folder for the grids (default ./demo)")
    for command in (run, demo):
        command.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, or the one this pack is in)")
        command.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    root = comfyui_root(args.comfyui)
    sys.path.insert(0, str(root))
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = args.cpu or not torch.cuda.is_available()
    import utils.install_util  # noqa: F401  (before `nodes`, which puts comfy/ first on sys.path)

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(PACK))):
        sys.exit("ComfyUI could not load this pack; see the messages above.")
    package = sys.modules[nodes.NODE_CLASS_MAPPINGS["ReplaceEdit"].__module__.rsplit(".", 2)[0]]
    try:
        if args.command == "demo":
            demo = importlib.import_module(f"{package.__name__}.cli.demo")
            written = demo.run(args.output.resolve(), nodes.NODE_CLASS_MAPPINGS)
        else:
            headless = importlib.import_module(f"{package.__name__}.cli.headless")
            overrides = headless.Overrides(args.ckpt, args.steps, args.width, args.height, args.image, args.seed,
                                           args.sets)
            written = headless.run(args.workflow, overrides, args.output.resolve(), nodes.NODE_CLASS_MAPPINGS)
    except importlib.import_module(f"{package.__name__}.p2p_core.errors").PromptToPromptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
