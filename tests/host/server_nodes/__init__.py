"""A test-only custom node pack for the ComfyUI servers the tests start (see live_server.py).

It gives API graphs the tests' tiny random-weight checkpoint and capture nodes (executor.py), so sampling takes
milliseconds, and keeps the real front end working on this CPU host (see UpscaleModelLoader below).
"""

import sys
from pathlib import Path

import folder_paths
from comfy import sd1_clip

import nodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/host: executor.py, tiny.py

import executor  # noqa: E402


class P2PTestTinyCheckpoint(executor.P2PTestTinyCheckpoint):
    """The tiny checkpoint, with a CLIP that looks embeddings up in ComfyUI's embeddings folders as the CLIP of
    CheckpointLoaderSimple does (the in-process tests' CLIP has none)."""

    def load(self, family: str, seed: int) -> tuple:
        model, clip, vae = super().load(family, seed)
        for tokenizer in vars(clip.tokenizer).values():
            if isinstance(tokenizer, sd1_clip.SDTokenizer):
                tokenizer.embedding_directory = folder_paths.get_folder_paths("embeddings")
        return model, clip, vae


NODE_CLASS_MAPPINGS = {**executor.TEST_NODE_CLASS_MAPPINGS, "P2PTestTinyCheckpoint": P2PTestTinyCheckpoint}


# ComfyUI's front end (1.27) registers UpscaleModelLoader as a model provider at start-up and breaks every
# checkpoint combo when that node is missing, as it is on this CPU host (it needs torchvision). A stand-in
# keeps the page working; it is only defined where the real node failed to import.
if "UpscaleModelLoader" not in nodes.NODE_CLASS_MAPPINGS:
    class UpscaleModelLoader:
        CATEGORY = "loaders"
        RETURN_TYPES = ("UPSCALE_MODEL",)
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls) -> dict:
            return {"required": {"model_name": ([],)}}

    NODE_CLASS_MAPPINGS["UpscaleModelLoader"] = UpscaleModelLoader
