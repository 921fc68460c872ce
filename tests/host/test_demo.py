"""The demo model's file format and loader, and `python <pack> demo`, on a random-weight demo model.

These check the wiring with random weights in the shipped model's layout (its widths, read from the file), so
they hold for any trained file; test_toy_world.py measures what the shipped model does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pack
import pytest
import tiny
import torch
from PIL import Image
from toy_files import narrow_flux_config, random_flux_file

tiny.import_comfy()


def shipped_config():
    return pack.module("toy.model").read(pack.module("nodes.toy_nodes").MODEL_FILE)[0]


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> Path:
    """A demo-model file with random weights in the shipped file's layout."""
    model, train = pack.module("toy.model"), pack.module("toy.train")
    config = shipped_config()
    unet, clip, autoencoder = model.build_unet(config), model.build_clip(config), model.build_autoencoder(config)
    for seed, network in enumerate((unet.diffusion_model, model.text_encoder(clip).transformer, autoencoder)):
        train.initialise(network, seed)
    path = tmp_path_factory.mktemp("demo") / "demo.safetensors"
    tokens = [t for t, _ in clip.tokenize("a big red circle and a small blue square on a white background")["l"][0]]
    model.save(path, config, unet.diffusion_model, model.text_encoder(clip), autoencoder, tokens)
    return path


def test_demo_model_file_is_small_and_loads_back_as_an_sd15_model(demo_file):
    import comfy.supported_models

    toy_model = pack.module("toy.model")
    assert demo_file.stat().st_size <= 20 * 10 ** 6
    config, parts = toy_model.read(demo_file)
    assert config == shipped_config()
    model, clip, vae, _ = toy_model.load(demo_file)
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    assert vae.downscale_ratio == 8 and vae.latent_channels == 4
    unet = model.model.diffusion_model.state_dict()
    assert all(torch.equal(unet[k].float(), v) for k, v in parts["unet"].items())
    tokens = clip.tokenize("a big red circle")["l"][0]
    assert tokens[0][0] == 49406  # ComfyUI's CLIP tokenizer, BOS first
    embedding = pack.module("toy.model").TOKEN_EMBEDDING
    assert torch.count_nonzero(parts["clip"][embedding].abs().sum(1)) <= len(set(t for t, _ in tokens)) + 20


@pytest.fixture(scope="module")
def flux_demo_file(tmp_path_factory) -> Path:
    """A joint-attention demo-model file with random weights at the narrowest widths, at the Flux demo's size."""
    path = tmp_path_factory.mktemp("flux_demo") / "flux_demo.safetensors"
    return random_flux_file(path, narrow_flux_config(scale=pack.module("nodes.toy_nodes").FLUX_SIZE // 128)).path


def demo(output: Path, model_file: Path, flux_file: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMFYUI_PATH": tiny.comfyui_path(), "PROMPT_TO_PROMPT_DEMO_MODEL": str(model_file),
           "PROMPT_TO_PROMPT_FLUX_DEMO_MODEL": str(flux_file or output / "no_flux_model.safetensors")}
    return subprocess.run([sys.executable, str(pack.REPO_ROOT), "demo", "--output", str(output)], env=env,
                          capture_output=True, text=True)


def test_demo_runs_every_example_on_the_demo_models_and_writes_a_grid_each(tmp_path, demo_file, flux_demo_file):
    done = demo(tmp_path, demo_file, flux_demo_file)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [Path(line.removeprefix("wrote ")) for line in done.stdout.splitlines() if line.startswith("wrote ")]
    demo_module = pack.module("cli.demo")
    examples = demo_module.EXAMPLES + demo_module.FLUX_EXAMPLES
    # The sd35_ examples need an SD3-shaped demo model, which there is not: their graphs run on tiny SD3 models in
    # test_workflows.py.
    assert {e.workflow.removesuffix(".json") for e in examples} == {
        p.stem for p in (pack.REPO_ROOT / "example_workflows").glob("*.json")
        if not p.stem.startswith(("sd35_", "demo_"))}, "every UNet and Flux example workflow runs"
    assert [p.stem for p in written] == [e.name for e in examples]
    for grid in written:
        with Image.open(grid) as image:
            assert image.width >= 2 * 256 and image.height > 256, grid  # the source and at least the edit
    flux_photo = Image.open(tmp_path / "inputs" / f"toy_scene_{demo_module.FLUX_SIZE}.png")
    assert flux_photo.size == (demo_module.FLUX_SIZE, demo_module.FLUX_SIZE), "the Flux examples' photo at its size"


def test_demo_without_the_model_says_where_it_comes_from(tmp_path):
    done = demo(tmp_path, tmp_path / "missing.safetensors")
    assert done.returncode == 1
    assert "there is no such file" in done.stderr and "python -m toy.train" in done.stderr


def test_demo_with_a_file_that_is_not_a_demo_model_names_the_file(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "checkpoint.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    done = demo(tmp_path, other)
    assert done.returncode == 1
    assert "is not a demo-model file" in done.stderr and "checkpoint.safetensors" in done.stderr, done.stderr[-2000:]


IMAGE_SOURCES = {"LoadImage", "PromptToPromptDemoScene"}


def comparable(prompt: dict[str, dict]) -> dict[str, tuple]:
    """An API prompt's nodes without what a demo template may differ in: where its photo comes from (Demo Scene
    draws it where the demo loads its file) and the file names it saves under."""
    return {key: (node["class_type"], {k: v for k, v in node["inputs"].items()
                                       if node["class_type"] != "SaveImage" and not (k == "pixels" or k == "image")})
            for key, node in prompt.items() if node["class_type"] not in IMAGE_SOURCES}


@pytest.mark.parametrize("example", [e for e in pack.module("cli.demo").EXAMPLES if e.name != "word_swap_shape"],
                         ids=lambda e: e.name)
def test_each_demo_template_is_its_example_as_the_demo_runs_it(example, monkeypatch):
    """example_workflows/demo_<name>.json runs as shipped on the demo model with the demo's settings: the same
    graph as the checkpoint example once the demo has swapped in the demo model, its captions and steps."""
    import folder_paths

    import nodes

    # The demo points ComfyUI's input folder at its photo's: put it back for the tests that follow.
    monkeypatch.setattr(folder_paths, "input_directory", folder_paths.get_input_directory())

    demo_module, headless = pack.module("cli.demo"), pack.module("cli.headless")
    template = pack.REPO_ROOT / "example_workflows" / f"demo_{example.name}.json"
    shipped = headless.load_prompt(template, nodes.NODE_CLASS_MAPPINGS)
    assert comparable(shipped) == comparable(demo_module.demo_prompt(example, nodes.NODE_CLASS_MAPPINGS, Path("x")))
    assert not {n["class_type"] for n in shipped.values()} & {"CheckpointLoaderSimple", "LoadImage"}


@pytest.mark.parametrize("seed, size", [(0, 128), (1, 128), (2, 128), (0, 256)])
def test_demo_scene_draws_its_caption_left_to_right_at_the_size_asked(seed, size):
    caption = "on a white background, a big red circle, a small blue square and a big green triangle"
    image = pack.module("nodes.toy_nodes").DemoScene().draw(caption, seed, size)[0]
    assert image.shape == (1, size, size, 3) and image.dtype == torch.float32
    measure = pack.module("toy.measure")
    pixels = (image[0] * 255).round().byte().numpy()
    assert measure.check(pixels, caption).ok
    assert [f.colour for f in sorted(measure.objects(pixels), key=lambda f: f.centre[0])] == ["red", "blue", "green"]


@pytest.mark.parametrize("caption, says", [("a photo of a cat", "toy-world captions only"),
                                           ("on a white background, a big red circle and a small red square",
                                            "different colours")])
def test_demo_scene_refuses_what_the_toy_world_cannot_draw(caption, says):
    with pytest.raises(pack.error_type(), match=says):
        pack.module("nodes.toy_nodes").DemoScene().draw(caption, 0)


def test_demo_scene_refuses_a_size_the_toy_world_is_not_drawn_at():
    with pytest.raises(pack.error_type(), match="multiple of them.*got size 200"):
        pack.module("nodes.toy_nodes").DemoScene().draw("a big red circle on a white background", 0, 200)


def test_a_long_label_fits_its_tile():
    """The demo grid's tiles are 256 wide, whose strip's font (24 px) drew "word mask: background" 277 px wide."""
    labelled = pack.module("nodes.store_nodes").label(torch.zeros(256, 256, 3), "word mask: background")
    strip = labelled[256:]
    assert strip.max() > 0.5, "the label is drawn"
    assert strip[:, :2].max() < 0.5 and strip[:, -2:].max() < 0.5, "the label runs off the tile"


def test_a_lone_sentencepiece_word_mark_is_labelled_with_a_glyph_the_font_has():
    """T5 tokenizes 'a' as the word mark alone, then 'a': its heatmap's label was the font's empty box."""
    label = pack.module("nodes.store_nodes").label
    tile = torch.zeros(64, 64, 3)
    assert torch.equal(label(tile, "\u2581"), label(tile, "_"))


def test_a_grid_of_two_tiles_has_no_empty_columns_and_masks_are_framed():
    demo_module = pack.module("cli.demo")
    tile = torch.ones(demo_module.TILE, demo_module.TILE, 3)
    grid = demo_module._grid("title", [("source", "a")], [tile, tile])
    assert grid.width == 2 * demo_module.TILE
    framed = demo_module._framed(torch.zeros(8, 8, 3))
    assert framed[0].min() > 0 and framed[:, -1].min() > 0 and framed[4, 4].max() == 0
