"""The command line finds ComfyUI from the folder the pack was started in, also when that folder is a link."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def started_from(path: Path):
    """The pack's __main__.py loaded as Python loads it for `python <path> ...`."""
    spec = importlib.util.spec_from_file_location("pack_main", path / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pack_linked_into_custom_nodes_finds_the_comfyui_it_is_linked_into(tmp_path, monkeypatch):
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "nodes.py").touch()
    (root / "custom_nodes").mkdir()
    linked = root / "custom_nodes" / "comfyui-prompt-to-prompt"
    try:
        linked.symlink_to(REPO_ROOT, target_is_directory=True)
    except OSError:
        pytest.skip("this file system cannot make links")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert started_from(Path(os.path.relpath(linked))).comfyui_root(None) == root.resolve()
