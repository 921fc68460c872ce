"""ComfyUI's real server on loopback, for the tests that drive it over HTTP as a user's browser or script does.

A test makes a base directory (`base_directory`): custom_nodes holds this pack (a symlink to the repository,
as a git clone would be) and the tests' own node pack (`server_nodes`: the tiny random-weight models, the
capture nodes); the user settings skip the front end's tutorial. `running` starts main.py on a free port with
that base directory and an in-memory database, waits until the pack's nodes are listed, and stops it after.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pack
import pytest
import tiny

PACK_FOLDER = "comfyui-prompt-to-prompt"
TEST_NODES = Path(__file__).resolve().parent / "server_nodes"


def base_directory(root: Path) -> Path:
    """`root` made a ComfyUI base directory with the pack and the test nodes installed; models/, input/ and
    the rest are the caller's to fill."""
    custom_nodes = root / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    (custom_nodes / PACK_FOLDER).symlink_to(pack.REPO_ROOT, target_is_directory=True)
    (custom_nodes / "p2p_test_nodes").symlink_to(TEST_NODES, target_is_directory=True)
    (root / "user" / "default").mkdir(parents=True)
    (root / "user" / "default" / "comfy.settings.json").write_text('{"Comfy.TutorialCompleted": true}')
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(base: Path) -> Iterator[str]:
    """The URL of a ComfyUI server running on `base`; its log is base/server.log."""
    port = _free_port()
    with open(base / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--disable-auto-launch", "--base-directory", str(base), "--database-url", "sqlite:///:memory:"],
            cwd=tiny.comfyui_path(), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                if process.poll() is not None:
                    pytest.fail("ComfyUI exited:\n" + (base / "server.log").read_text()[-3000:])
                try:
                    get_json(url + "/object_info/ReplaceEdit", timeout=5)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail("ComfyUI did not start")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
    """POST `body` (bytes as they are, anything else as JSON); (status, parsed JSON answer or None), error
    statuses included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def history(url: str, prompt_id: str, timeout: float = 300) -> dict:
    """The history entry of a queued prompt, once it has finished (successfully or not)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = get_json(f"{url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.2)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")
