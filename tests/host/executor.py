"""Run API-format workflows through ComfyUI's real validator and executor, without HTTP.

``run_workflow`` initialises ComfyUI's built-in nodes once per process, loads custom
node packs (our pack root) with ``nodes.load_custom_node`` exactly as ComfyUI does,
registers the test-only nodes below, validates the prompt with
``execution.validate_prompt`` and executes it with ``execution.PromptExecutor``.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import hashlib
import inspect
import logging
import os
import uuid
from collections.abc import Iterable
from typing import Any, TypedDict

import tiny
import torch

#: Tensors captured by the P2PTestSave* nodes during the latest run, keyed by node id.
CAPTURED: dict[str, torch.Tensor] = {}

_BUNDLES: dict[tuple[str, int], tuple[Any, Any, Any]] = {}


def tiny_bundle(family: str, seed: int = 0) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) for ``family``, cached so repeated loads return the same objects.

    AuraFlow and the deep SD1 get the tiny SD1 CLIP; Flux and SD3 a 16-channel VAE.
    """
    key = (family, seed)
    if key not in _BUNDLES:
        clip_family = "sd1" if family in ("aura", "sd1_deep") else family
        _BUNDLES[key] = (tiny.make_model(family, seed), tiny.make_clip(clip_family, seed),
                         tiny.make_vae(seed, 16 if family in ("flux", "sd3") else 4))
    return _BUNDLES[key]


class P2PTestTinyCheckpoint:
    """Test-only stand-in for CheckpointLoaderSimple returning tiny random models."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "family": (list(tiny.FAMILIES), {"default": "sd1"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "p2p_tests"

    def load(self, family: str, seed: int) -> tuple[Any, Any, Any]:
        return tiny_bundle(family, seed)


class _CaptureNode:
    """Output node storing its input tensor in ``CAPTURED[node_id]``, and reporting in its UI output (what a
    server's history shows) the tensor's shape, whether it is finite, and a digest of its bytes.

    ``IS_CHANGED`` returns NaN (never equal to itself), so the node re-executes on every
    run even when the executor's output cache is kept.
    """

    INPUT_NAME = ""
    INPUT_TYPE = ""
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "p2p_tests"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {cls.INPUT_NAME: (cls.INPUT_TYPE,)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return float("nan")

    def _store(self, tensor: torch.Tensor, unique_id: str) -> dict[str, Any]:
        CAPTURED[str(unique_id)] = tensor.detach().clone()
        digest = hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        return {"ui": {"shape": [list(tensor.shape)], "finite": [bool(torch.isfinite(tensor).all())],
                       "digest": [digest]}, "result": ()}


class P2PTestSaveLatent(_CaptureNode):
    """Captures a LATENT's samples for the test to read."""

    INPUT_NAME = "samples"
    INPUT_TYPE = "LATENT"

    def capture(self, samples: dict[str, torch.Tensor], unique_id: str) -> dict[str, Any]:
        return self._store(samples["samples"], unique_id)


class P2PTestSaveImage(_CaptureNode):
    """Captures an IMAGE tensor (e.g. VAEDecode output) for the test to read."""

    INPUT_NAME = "images"
    INPUT_TYPE = "IMAGE"

    def capture(self, images: torch.Tensor, unique_id: str) -> dict[str, Any]:
        return self._store(images, unique_id)


class P2PTestSaveMask(_CaptureNode):
    """Captures a MASK tensor (e.g. ShowAttention's word masks) for the test to read."""

    INPUT_NAME = "mask"
    INPUT_TYPE = "MASK"

    def capture(self, mask: torch.Tensor, unique_id: str) -> dict[str, Any]:
        return self._store(mask, unique_id)


TEST_NODE_CLASS_MAPPINGS: dict[str, type] = {
    "P2PTestTinyCheckpoint": P2PTestTinyCheckpoint,
    "P2PTestSaveLatent": P2PTestSaveLatent,
    "P2PTestSaveImage": P2PTestSaveImage,
    "P2PTestSaveMask": P2PTestSaveMask,
}


class ServerStub:
    """The part of server.PromptServer that PromptExecutor and progress handlers use."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.events: list[tuple[Any, Any]] = []

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass


class WorkflowResult(TypedDict):
    """Outcome of :func:`run_workflow`.

    ``error`` is the executor's ``execution_error`` message (node_id, node_type,
    exception_type, exception_message, traceback, ...) or None; ``error_message`` is
    its ``exception_message`` without the trailing newline ComfyUI adds.
    """

    prompt_id: str
    success: bool
    outputs: dict[str, Any]
    captured: dict[str, torch.Tensor]
    error: dict[str, Any] | None
    error_message: str | None
    messages: list[tuple[str, dict[str, Any]]]


class _LogCollector(logging.Handler):
    """Collects log records; load_custom_node reports import failures only by logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_STATE: dict[str, Any] = {"nodes_ready": False, "executor": None, "server": None}
_LOADED_DIRS: set[str] = set()


def _release_models() -> None:
    """Free cached models while ComfyUI's modules still exist.

    Otherwise ModelPatcher.__del__ runs during interpreter teardown and prints
    "AttributeError: 'NoneType' object has no attribute 'ON_DETACH'".
    """
    _BUNDLES.clear()
    if _STATE["executor"] is not None:
        _STATE["executor"].reset()
    gc.collect()


atexit.register(_release_models)


def _init_nodes() -> None:
    """Import ComfyUI's built-in node set once per process and add the test nodes."""
    if _STATE["nodes_ready"]:
        return
    tiny.import_comfy()
    import nodes

    # Failures of optional comfy_extras (e.g. no torchaudio) are logged and non-fatal.
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODE_CLASS_MAPPINGS)
    _STATE["nodes_ready"] = True


def load_node_pack(path: str) -> None:
    """Load a custom node pack directory once, raising if ComfyUI could not import it."""
    _init_nodes()
    import nodes

    # ComfyUI names the module after the path ('.' -> '_x_'), so normalise it.
    path = os.path.abspath(path)
    if path in _LOADED_DIRS:
        return
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise RuntimeError(f"{path} is not a custom node pack (no __init__.py)")
    collector = _LogCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        ok = asyncio.run(nodes.load_custom_node(path))
    finally:
        root.removeHandler(collector)
    if not ok:
        details = "\n".join(collector.lines)
        raise RuntimeError(f"ComfyUI failed to load custom node pack {path}:\n{details}")
    _LOADED_DIRS.add(path)
    # A pack must not shadow the test nodes.
    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODE_CLASS_MAPPINGS)


def _executor() -> Any:
    """The process-wide PromptExecutor (the server also keeps exactly one)."""
    if _STATE["executor"] is None:
        import execution

        _STATE["server"] = ServerStub()
        # As ComfyUI's main.py makes it: newer executors read RAM headroom from cache_args on every run.
        extra = {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}} \
            if "cache_args" in inspect.signature(execution.PromptExecutor).parameters else {}
        _STATE["executor"] = execution.PromptExecutor(_STATE["server"], cache_type=execution.CacheType.CLASSIC,
                                                      **extra)
    return _STATE["executor"]


def validate(prompt: dict[str, Any], prompt_id: str | None = None) -> list[str]:
    """Validate ``prompt`` like POST /prompt does; return the output node ids to execute.

    Raises AssertionError carrying ComfyUI's error and per-node errors on failure.
    """
    import execution

    prompt_id = prompt_id or uuid.uuid4().hex
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not ok:
        raise AssertionError(f"prompt failed validation: {error}; node_errors={node_errors}")
    return sorted(outputs)  # a set in ComfyUI; sorted so runs are reproducible


def run_workflow(
    prompt: dict[str, Any], extra_node_dirs: Iterable[str] = (), keep_cache: bool = False
) -> WorkflowResult:
    """Validate and execute an API-format ``prompt`` with ComfyUI's PromptExecutor.

    ``extra_node_dirs`` are custom node pack directories to load first (once each).
    By default the executor's node-output cache is cleared so each run is isolated;
    ``keep_cache=True`` behaves like re-queuing on a running server (unchanged nodes
    are not re-executed). Execution errors do not raise: check ``success`` and
    ``error_message``.
    """
    _init_nodes()
    for path in extra_node_dirs:
        load_node_pack(path)
    prompt_id = uuid.uuid4().hex
    execute_outputs = validate(prompt, prompt_id)

    executor = _executor()
    if not keep_cache:
        executor.reset()
    _STATE["server"].events.clear()
    CAPTURED.clear()
    executor.execute(prompt, prompt_id, {}, execute_outputs)

    messages = list(executor.status_messages)
    error = next((data for event, data in messages if event == "execution_error"), None)
    finished = any(event == "execution_success" for event, _ in messages)
    return WorkflowResult(
        prompt_id=prompt_id,
        success=bool(executor.success) and finished and error is None,
        outputs=dict(executor.history_result.get("outputs", {})),
        captured=dict(CAPTURED),
        error=error,
        # ComfyUI formats it with traceback.format_exception_only: trailing newline.
        error_message=None if error is None else str(error.get("exception_message", "")).strip(),
        messages=messages,
    )
