"""The registry package (`.comfyignore`): what users never run stays out, and everything that ships imports only
what ships with it."""

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ignored(path: str, patterns: list[str]) -> bool:
    """gitignore's matching for the plain patterns .comfyignore uses: a folder (trailing /) or a file path."""
    return any(path.startswith(p) if p.endswith("/") else path == p for p in patterns)


def shipped() -> set[str]:
    patterns = [line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {path for path in tracked.splitlines() if not ignored(path, patterns)}


def relative_imports(path: Path) -> set[Path]:
    """The pack's own modules that ``path`` imports (``from .x import y``, ``from .. import x``)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                module = base.joinpath(*name.split("."))
                targets.add(module.with_suffix(".py") if module.with_suffix(".py").exists() else module / "__init__.py")
    return targets


def test_tests_ci_bench_training_and_demo_grids_stay_out():
    files = shipped()
    assert not [f for f in files if f.startswith(("tests/", ".ci/", "bench/", "docs/demo/", "docs/images/"))]
    assert not {"toy/train.py", "toy/flux_train.py", "toy/evaluate.py"} & files
    assert {"__init__.py", "nodes/__init__.py", "p2p_core/joint.py", "web/token_preview.js",
            "toy/prompt_to_prompt_toy.safetensors", "example_workflows/replace_word_swap.json"} <= files


def test_every_module_that_ships_imports_only_modules_that_ship():
    files = shipped()
    missing = {f"{py} imports {target.relative_to(ROOT)}" for py in files if py.endswith(".py")
               for target in relative_imports(ROOT / py) if str(target.relative_to(ROOT)) not in files}
    assert missing == set()
