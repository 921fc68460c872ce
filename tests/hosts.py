"""Run the pack's whole test suite against every ComfyUI install on this machine, each with its own Python.

    python3 tests/hosts.py            # what `bash .ci/run` runs; --list only shows the hosts found

The host is the user's ComfyUI, found, never built. Where it looks, in order (the same install is run once):
- `COMFYUI_PATH`: one or more ComfyUI folders separated by ':' (when set, nothing else is searched);
- the ComfyUI this pack is installed in (`ComfyUI/custom_nodes/<this pack>`);
- `~/ComfyUI*` and `/opt/ComfyUI*`: the folders users clone ComfyUI into.
A folder counts when it holds ComfyUI's `main.py` and `comfy/`. Each runs with the Python that runs it:
`COMFYUI_PYTHON`, else the virtual environment in the ComfyUI folder (`venv/` or `.venv/`), else the portable
build's `python_embeded/` beside it. pytest (and playwright, for the browser test) are installed into that Python
from PyPI when it lacks them; nothing else is.

It prints one line per host (its version, passed, failed, skipped) and a total line. A host whose suite fails,
or skips a test (nothing may skip where a host is present), fails the run. With no host found it runs the
host-free tests (tests/core) in a virtual environment of its own (.venv, torch pinned) and says loudly that the
host suite did not run.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("TORCH_VERSION", "2.13.0")
"""The torch of the host-free virtual environment: the CPU build this project's machines hold."""
TEST_TOOLS = {"pytest": "pytest", "playwright": "playwright"}
"""Module -> PyPI package of the test-only tools a host's Python is given when it lacks them."""


@dataclass(frozen=True)
class Host:
    """A ComfyUI install and the Python that runs it."""

    path: Path
    python: Path

    @property
    def version(self) -> str:
        """ComfyUI's own version (comfyui_version.py, else pyproject.toml), or 'unknown'."""
        for name, pattern in (("comfyui_version.py", r'__version__\s*=\s*"([^"]+)"'),
                              ("pyproject.toml", r'^version\s*=\s*"([^"]+)"')):
            file = self.path / name
            if file.is_file():
                match = re.search(pattern, file.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
                if match:
                    return match.group(1)
        return "unknown"


@dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.passed + other.passed, self.failed + other.failed, self.skipped + other.skipped)

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def is_comfyui(folder: Path) -> bool:
    return (folder / "main.py").is_file() and (folder / "comfy").is_dir()


def candidate_folders() -> list[Path]:
    """The folders to look at, in the order of the module docstring."""
    named = os.environ.get("COMFYUI_PATH", "")
    if named:
        return [Path(p).expanduser() for p in named.split(os.pathsep) if p]
    folders = []
    if REPO.parent.name == "custom_nodes":
        folders.append(REPO.parent.parent)
    for pattern in ("~/ComfyUI*", "/opt/ComfyUI*"):
        folders += [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern)))]
    return folders


def host_python(folder: Path) -> Path | None:
    """The Python that runs the ComfyUI in `folder` (see the module docstring), or None."""
    named = os.environ.get("COMFYUI_PYTHON")
    if named:
        return Path(named)
    for candidate in (folder / "venv" / "bin" / "python", folder / ".venv" / "bin" / "python",
                      folder / "venv" / "Scripts" / "python.exe", folder / ".venv" / "Scripts" / "python.exe",
                      folder.parent / "python_embeded" / "python.exe"):
        if candidate.is_file():
            return candidate
    return None


def find_hosts() -> tuple[list[Host], list[str]]:
    """(the ComfyUI installs found, why each other named or found folder is not one)."""
    hosts, problems, seen = [], [], set()
    named = bool(os.environ.get("COMFYUI_PATH"))
    for folder in candidate_folders():
        if not folder.is_dir() or not is_comfyui(folder):
            if named:
                problems.append(f"COMFYUI_PATH names {folder}, which is not a ComfyUI folder (no main.py and comfy/)")
            continue
        real = folder.resolve()
        if real in seen:
            continue
        seen.add(real)
        python = host_python(folder)
        if python is None:
            problems.append(f"{folder} is a ComfyUI folder, but the Python that runs it was not found: give it a "
                            "virtual environment in venv/ or .venv/, or name its Python in COMFYUI_PYTHON")
            continue
        hosts.append(Host(folder, python))
    return hosts, problems


def ensure_test_tools(python: Path) -> None:
    """Install pytest and playwright into `python` from PyPI where it lacks them."""
    missing = [package for module, package in TEST_TOOLS.items()
               if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode]
    if missing:
        print(f"hosts: installing {', '.join(missing)} into {python}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing],
                       check=True)


def run_pytest(python: Path, paths: list[str], env: dict[str, str]) -> tuple[int, Counts]:
    """Run pytest on `paths` with `python`, its output streamed; (exit code, counts from its JUnit report)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.xml"
        code = subprocess.run([str(python), "-m", "pytest", *paths, "-rs", f"--junitxml={report}"],
                              cwd=REPO, env=env).returncode
        if not report.is_file():
            return code or 1, Counts()
        suites = ElementTree.parse(report).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        total = failed = skipped = 0
        for suite in suites:
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
        return code, Counts(total - failed - skipped, failed, skipped)


def host_free_python() -> Path:
    """A virtual environment (.venv) with what the host-free tests need."""
    venv = REPO / ".venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"torch=={TORCH}",
                    "numpy", "pytest"], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="only list the ComfyUI installs found")
    args = parser.parse_args()
    hosts, problems = find_hosts()
    for problem in problems:
        print(f"hosts: {problem}", file=sys.stderr)
    if args.list:
        for host in hosts:
            print(f"ComfyUI {host.version} at {host.path} (Python {host.python})")
        return 1 if problems else 0
    if problems and os.environ.get("COMFYUI_PATH"):
        return 1

    results: list[tuple[str, int, Counts, float]] = []
    for host in hosts:
        label = f"ComfyUI {host.version} at {host.path}"
        print(f"\n===== {label} (Python {host.python}) =====", flush=True)
        ensure_test_tools(host.python)
        env = {**os.environ, "COMFYUI_PATH": str(host.path)}
        start = time.monotonic()
        code, counts = run_pytest(host.python, ["tests"], env)
        results.append((label, code, counts, time.monotonic() - start))

    if not hosts:
        banner = "NO ComfyUI FOUND: THE HOST SUITE DID NOT RUN (only the host-free tests in tests/core)."
        print(f"\n{'!' * len(banner)}\n{banner}\nSet COMFYUI_PATH to your ComfyUI folder(s), or see docs/tests.md "
              f"for where ComfyUI is looked for.\n{'!' * len(banner)}\n", flush=True)
        env = {key: value for key, value in os.environ.items() if key != "COMFYUI_PATH"}
        start = time.monotonic()
        code, counts = run_pytest(host_free_python(), ["tests/core"], env)
        results.append(("host-free tests (no ComfyUI)", code, counts, time.monotonic() - start))

    print("\n===== per host =====")
    failed = False
    for label, code, counts, seconds in results:
        bad = code != 0 or counts.failed or counts.skipped or counts.passed == 0
        failed |= bool(bad)
        why = " (skipped tests fail a host run)" if counts.skipped else ""
        print(f"{label}: {counts}{why}, {seconds:.0f} s -> {'FAILED' if bad else 'ok'}")
    if not hosts:
        print("host suite: NOT RUN (no ComfyUI found)")
    total = Counts()
    for _, _, counts, _ in results:
        total = total + counts
    print(f"total: {total}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
