"""The pack as ComfyUI itself loads it (nodes.load_custom_node), for tests that call its nodes directly."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import executor

REPO_ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    """The pack's package module, loaded once through ComfyUI's custom-node loader."""
    executor.load_node_pack(str(REPO_ROOT))
    import nodes

    return sys.modules[nodes.NODE_CLASS_MAPPINGS["ReplaceEdit"].__module__.rsplit(".", 2)[0]]


def module(name: str) -> ModuleType:
    """A submodule of the loaded pack, e.g. module('p2p_core.errors')."""
    return importlib.import_module(f"{load().__name__}.{name}")


def error_type() -> type[Exception]:
    return module("p2p_core.errors").PromptToPromptError
