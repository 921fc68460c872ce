"""The README's commands run as written: every `python ComfyUI/custom_nodes/comfyui-prompt-to-prompt ...` line of
its code blocks, from a folder holding ComfyUI with the pack cloned into custom_nodes as the install section says
(no COMFYUI_PATH: the command finds ComfyUI from where the pack is installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pack
import pytest
import tiny

PREFIX = "python ComfyUI/custom_nodes/comfyui-prompt-to-prompt "


def readme_commands() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", (pack.REPO_ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.startswith(PREFIX)]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A folder with ComfyUI in it (its files linked) and the pack in ComfyUI/custom_nodes."""
    home = tmp_path_factory.mktemp("user")
    comfyui = home / "ComfyUI"
    comfyui.mkdir()
    for entry in Path(tiny.comfyui_path()).iterdir():
        if entry.name not in ("custom_nodes", "output", "input", "temp", "user"):
            (comfyui / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (comfyui / "custom_nodes").mkdir()
    (comfyui / "custom_nodes" / "comfyui-prompt-to-prompt").symlink_to(pack.REPO_ROOT, target_is_directory=True)
    return home


def test_the_readme_shows_the_demo_and_a_demo_template_run():
    commands = readme_commands()
    assert any(" demo " in c for c in commands) and any("run " in c and "demo_" in c for c in commands), commands


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_runs_as_written(user_folder, command):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    done = subprocess.run([sys.executable, *command.split()[1:]], cwd=user_folder, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [Path(line.removeprefix("wrote ")) for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert written and all(path.is_file() for path in written), done.stdout[-2000:]
