"""Host tests need a ComfyUI checkout; without one every module here is skipped.

A module-level ``pytest.skip`` in a conftest breaks runs that name a test file
directly (the conftest is then loaded before collection), so the skip happens at
module collection instead, before the test module is imported. Test modules may
therefore import ``comfy``/``nodes`` at top level after ``tiny.import_comfy()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # so `import tiny` / `import executor` work in any import mode
    sys.path.insert(0, _HERE)

import tiny  # noqa: E402


class _SkippedModule(pytest.Module):
    """A test module that reports a skip instead of being imported."""

    def collect(self) -> Any:
        pytest.skip(tiny.skip_reason())


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if tiny.comfyui_path() is None:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


def pytest_report_header(config: pytest.Config) -> str:
    return f"host tests: {tiny.COMFYUI_ENV}={os.environ.get(tiny.COMFYUI_ENV, '<unset>')}"


@pytest.fixture(scope="module")
def p2p() -> dict[str, type]:
    """ComfyUI's node classes with the pack loaded through ComfyUI's own custom-node loader."""
    import pack

    pack.load()
    import nodes

    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def error() -> type[Exception]:
    """The pack's PromptToPromptError class (as loaded by ComfyUI)."""
    import pack

    return pack.error_type()


@pytest.fixture(scope="module")
def sd1() -> tuple:
    """The tiny SD1-shaped model and its CLIP (cached, shared by the tests that use them)."""
    import executor

    model, clip, _ = executor.tiny_bundle("sd1")
    return model, clip


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real ComfyUI server (live_server) with the pack, the tiny test models, and one textual-inversion
    embedding of the tiny CLIP's width, 'tinystyle'."""
    import live_server
    import safetensors.torch
    import torch

    base = live_server.base_directory(tmp_path_factory.mktemp("comfy-tiny-server"))
    (base / "models" / "embeddings").mkdir(parents=True)
    safetensors.torch.save_file({"clip_l": torch.full((2, tiny.CLIP_HIDDEN), 0.1)},
                                str(base / "models" / "embeddings" / "tinystyle.safetensors"))
    with live_server.running(base) as url:
        yield url
