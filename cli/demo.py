"""`python <pack> demo --output DIR`: every example workflow on the demo model (toy/), as labelled grids.

No argument and no download: each example_workflows/*.json is loaded as it ships, its checkpoint loader is
swapped for the Prompt-to-Prompt Demo Model, its prompts are set to toy-world captions (toy/scenes.py), and it
runs through ComfyUI's executor like `run` does. The pictures it saved and previewed become one grid per example:
the source and edited images with their prompts under them, then the heatmaps and masks it showed. The Flux
examples (flux_*.json) run too where the joint-attention demo model's file is there (toy/MODEL.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..nodes.store_nodes import label
from ..nodes.toy_nodes import DEMO_MODELS, FLUX_SIZE, MODEL_FILE
from ..p2p_core.errors import PromptToPromptError
from ..toy import scenes
from .headless import Overrides, apply_overrides, execute, load_prompt

EXAMPLES_FOLDER = Path(__file__).resolve().parent.parent / "example_workflows"
SIZE = scenes.SIZE
STEPS = 20
#: Grid tiles are drawn at twice the model's size, so the 128-pixel pictures and their labels stay readable.
TILE = 2 * SIZE
#: The demo's captions name the background first, as half the model's training captions do: its text encoder is
#: causal, like CLIP's, so a background word at the end sums up the whole caption and its map lies on the objects;
#: named first, it stands for the background alone (toy/MODEL.md, "The background named first").
THREE = "on a white background, a big red circle, a small blue square and a big green triangle"
TWO = "on a white background, a big red circle and a small blue square"
ONE = "on a white background, a big red circle"
#: The scene the real-image example inverts: drawn by the generator, never seen by the model.
PHOTO = scenes.Scene((scenes.Thing("big", "yellow", "square", 44, 60), scenes.Thing("small", "red", "circle", 92, 80)),
                     "black")
PHOTO_CAPTION = PHOTO.background_first_caption
#: Refine's cross-attention window on the demo model: it places an added object late, so the source's maps are
#: injected for half the steps, not the node's 0.8 (toy/MODEL.md, "What the tests' windows hide").
REFINE_WINDOW = 0.5


#: The joint-attention demo model's captions name the background last, as all its training captions do (its T5
#: is bidirectional: no last word sums the caption up, as the UNet model's causal CLIP's does).
FLUX_TWO = "a big red circle and a small blue square on a white background"
FLUX_PHOTO_CAPTION = PHOTO.caption
#: The joint-attention demo model has no guidance embedding (as Flux schnell): the demo samples it with CFG.
FLUX_CFG = 5.0


@dataclass(frozen=True)
class Example:
    """One demo run: which example workflow on which demo model, what it is set to, and how to title its grid."""

    name: str
    workflow: str
    title: str
    sets: tuple[str, ...]
    seed: int = 0
    model: str = "unet"

    @property
    def size(self) -> int:
        return FLUX_SIZE if self.model == "flux" else SIZE


def _swap(source: str, target: str) -> tuple[str, str]:
    return f"source_prompt={source}", f"target_prompt={target}"


EXAMPLES = (
    Example("word_swap_colour", "replace_word_swap.json", "Replace: red -> yellow",
            tuple(f"ReplaceEdit.{s}" for s in _swap(TWO, TWO.replace("red", "yellow")))),
    Example("word_swap_shape", "replace_word_swap.json", "Replace: circle -> triangle",
            tuple(f"ReplaceEdit.{s}" for s in _swap(TWO, TWO.replace("circle", "triangle")))),
    Example("refine", "refine_add_words.json", f"Refine: add 'and a small blue square' (cross window {REFINE_WINDOW})",
            (*(f"RefineEdit.{s}" for s in _swap(ONE, TWO)), f"RefineEdit.cross_replace_steps={REFINE_WINDOW}")),
    # It draws a big circle at one size whatever the weight above 1: reweighting shows by weakening.
    Example("reweight", "reweight_word.json", "Reweight: 'circle' x -2 (new row)",
            ("Reweight.source_prompt=" + TWO, "Reweight.words=circle", "Reweight.scale=-2")),
    Example("local_blend", "local_blend_word_swap.json", "Replace + local blend on 'square': blue -> green",
            (*(f"ReplaceEdit.{s}" for s in _swap(TWO, TWO.replace("blue", "green"))),
             "LocalBlendMask.source_words=square", "LocalBlendMask.edit_words=square",
             "LocalBlendMask.subtract_words=", "LocalBlendMask.level=1/2", "ShowAttention.words=square")),
    Example("attention_maps", "attention_maps.json", "Attention maps of the source prompt",
            (f"AttentionStore.prompt={THREE}", "AttentionStore.level=1/2",
             "ShowAttention.words=circle, square, triangle, background"), seed=5),
    Example("real_image", "real_image_edit.json", "Real image (null-text inversion): red -> blue circle",
            (f"NullTextInvert.prompt={PHOTO_CAPTION}",
             f"ReplaceEdit.target_prompt={PHOTO_CAPTION.replace('red', 'blue')}")),
)


#: The Flux examples on the joint-attention demo model: its grids beside the UNet model's.
FLUX_EXAMPLES = (
    Example("flux_word_swap", "flux_word_swap.json", "Flux Replace: red -> yellow",
            (*(f"ReplaceEdit.{s}" for s in _swap(FLUX_TWO, FLUX_TWO.replace("red", "yellow"))),
             f"KSampler.cfg={FLUX_CFG}"), model="flux"),
    Example("flux_local_blend", "flux_local_blend.json", "Flux Replace + local blend on 'square': blue -> green",
            (*(f"ReplaceEdit.{s}" for s in _swap(FLUX_TWO, FLUX_TWO.replace("blue", "green"))),
             "LocalBlendMask.source_words=square", "LocalBlendMask.edit_words=square",
             "LocalBlendMask.subtract_words=", "ShowAttention.words=square", f"KSampler.cfg={FLUX_CFG}"),
            model="flux"),
    Example("flux_real_image", "flux_real_image_edit.json", "Flux real image (RF-Solver inversion): red -> blue "
            "circle", (f"FlowInvert.prompt={FLUX_PHOTO_CAPTION}",
                       f"ReplaceEdit.target_prompt={FLUX_PHOTO_CAPTION.replace('red', 'blue')}"), model="flux"),
    Example("flux_flowedit", "flux_flowedit.json", "Flux FlowEdit (no inversion): red -> blue circle",
            tuple(f"ReplaceEdit.{s}" for s in _swap(FLUX_PHOTO_CAPTION, FLUX_PHOTO_CAPTION.replace("red", "blue"))),
            model="flux"),
)


def run(output: Path, node_classes: dict[str, type]) -> list[Path]:
    """Run every example into ``output`` (the Flux ones where the joint-attention demo model is there); return the
    grid files written (one per example)."""
    if "PromptToPromptDemoModel" not in node_classes:
        raise PromptToPromptError(
            f"The demo needs the demo model, {MODEL_FILE}, and there is no such file. The pack ships it in "
            "toy/: restore it (git checkout toy/prompt_to_prompt_toy.safetensors), train one with "
            "`COMFYUI_PATH=<ComfyUI> python -m toy.train --work <folder>` in the pack's folder, or point "
            "PROMPT_TO_PROMPT_DEMO_MODEL at a trained file.")
    examples = EXAMPLES
    flux_file = DEMO_MODELS["flux"][0]
    if flux_file.is_file():
        examples += FLUX_EXAMPLES
    else:
        print(f"demo: no joint-attention demo model ({flux_file}): the Flux examples are left out", flush=True)
    grids = []
    for example in examples:
        print(f"demo: {example.name}", flush=True)
        prompt = demo_prompt(example, node_classes, _photo(output, example.size))
        images = execute(prompt, output / example.name)
        grid = output / f"{example.name}.png"
        _grid(example.title, _prompts(prompt), _tiles(prompt, images)).save(grid)
        grids.append(grid)
    return grids


def _photo(output: Path, size: int) -> Path:
    """The real-image examples' scene (PHOTO), drawn at ``size`` into ``output``'s inputs folder."""
    photo = output / "inputs" / f"toy_scene_{size}.png"
    photo.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scenes.draw(PHOTO, size // SIZE)[0]).save(photo)
    return photo


def demo_prompt(example: Example, node_classes: dict[str, type], photo: Path) -> dict[str, dict]:
    """The example's checkpoint workflow as the demo runs it: on its demo model, with toy-world captions, an empty
    negative prompt (the demo models learnt it), the demo's steps, its model's size, and ``photo`` for LoadImage."""
    prompt = load_prompt(EXAMPLES_FOLDER / example.workflow, node_classes)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "PromptToPromptDemoModel"
            node["inputs"] = {} if example.model == "unet" else {"model": example.model}
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["text"] = ""
    apply_overrides(prompt, Overrides(steps=STEPS, width=example.size, height=example.size, image=str(photo),
                                      seed=example.seed, sets=list(example.sets)), node_classes)
    return prompt


def _prompts(prompt: dict[str, dict]) -> list[tuple[str, str]]:
    """(tile label, prompt) of each row the example samples: the source first, then the edit."""
    inputs = {node["class_type"]: node["inputs"] for node in prompt.values()}
    if "AttentionStore" in inputs:
        return [("source", inputs["AttentionStore"]["prompt"])]
    inversion = inputs.get("NullTextInvert") or inputs.get("FlowInvert")
    if inversion is not None:
        return [("inverted scene", inversion["prompt"]), ("edit", inputs["ReplaceEdit"]["target_prompt"])]
    if "Reweight" in inputs:
        weight = inputs["Reweight"]
        return [("source", weight["source_prompt"]), (f"'{weight['words']}' x {weight['scale']}", "")]
    edit = inputs.get("ReplaceEdit") or inputs["RefineEdit"]
    return [("source", edit["source_prompt"]), ("edit", edit["target_prompt"])]


MASK_OUTPUTS = {1: "word mask", 2: "blend mask"}  # ShowAttention's MASK outputs


def _preview_labels(prompt: dict[str, dict], preview: str, count: int) -> list[str | None]:
    """Labels for the ``count`` images a preview node showed: masks (MaskToImage of a ShowAttention output) get
    their name, word masks each their own word; None for images that come labelled (heatmaps)."""
    source = prompt[preview]["inputs"]["images"][0]
    if prompt[source]["class_type"] != "MaskToImage":
        return [None] * count
    show, output = prompt[source]["inputs"]["mask"]
    name = MASK_OUTPUTS.get(output, "mask")
    words = [w.strip() for w in prompt[show]["inputs"].get("words", "").split(",") if w.strip()]
    if output == 1 and len(words) == count:
        return [f"{name}: {word}" for word in words]
    return [name] * count


def _tiles(prompt: dict[str, dict], images: dict[str, list[tuple[str, Path]]]) -> list[torch.Tensor]:
    """Saved pictures labelled as rows, then every previewed image (heatmaps come labelled; masks get one)."""
    saved = [path for node in images.values() for kind, path in node if kind == "output"]
    tiles = [label(_read(path), text) for path, (text, _) in zip(saved, _prompts(prompt))]
    for node in sorted(images, key=int):
        previews = [path for kind, path in images[node] if kind == "temp"]
        for path, text in zip(previews, _preview_labels(prompt, node, len(previews))):
            tiles.append(_read(path) if text is None else label(_framed(_read(path)), text))
    return tiles


def _framed(tile: torch.Tensor, width: int = 2) -> torch.Tensor:
    """A mask tile inside a grey frame: a mask that is black at its edges would otherwise melt into the grid."""
    framed = tile.clone()
    framed[:width], framed[-width:], framed[:, :width], framed[:, -width:] = 0.5, 0.5, 0.5, 0.5
    return framed


def _read(path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    scale = TILE / image.width
    image = image.resize((TILE, round(image.height * scale)), Image.NEAREST)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)


def _text_strip(lines: list[str], width: int, height: int = 22) -> torch.Tensor:
    """White lines of text on black, left-aligned, one ``height`` strip each."""
    strip = Image.new("RGB", (width, height * len(lines)), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=height * 3 // 4)
    for row, line in enumerate(lines):
        draw.text((8, row * height + height // 8), line, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255)


def _grid(title: str, prompts: list[tuple[str, str]], tiles: list[torch.Tensor], columns: int = 4) -> Image.Image:
    """Tiles in rows of ``columns`` (padded to the tallest), under the title and the rows' prompts."""
    height, columns = max(t.shape[0] for t in tiles), min(columns, len(tiles))  # no empty columns beside two tiles
    tiles = [torch.cat([t, torch.zeros(height - t.shape[0], TILE, 3)]) for t in tiles]
    tiles += [torch.zeros(height, TILE, 3)] * (-len(tiles) % columns)
    body = torch.cat([torch.cat(tiles[i:i + columns], dim=1) for i in range(0, len(tiles), columns)])
    header = _text_strip([title] + [f"{name}: {text}" for name, text in prompts if text], body.shape[1])
    return Image.fromarray((torch.cat([header, body]).clamp(0, 1) * 255).round().byte().numpy())
