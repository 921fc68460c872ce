"""Turn a UI-format workflow (what ComfyUI saves and example_workflows/ holds) into an API-format prompt.

The UI format stores widget values as a list in widget order; the executor wants named inputs. The order
comes from each node class's INPUT_TYPES, as the front end builds it: required then optional inputs, one
value per widget, plus the extra 'control after generate' value the front end keeps after seed widgets.
A widget the file has no value for (added to the node after the file was saved) gets its default, as the front
end gives it.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..p2p_core.errors import PromptToPromptError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MUTED_MODES = {2, 4}  # 2: never run, 4: bypassed


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec: tuple, options: Mapping[str, Any]) -> bool:
    """Seed-like INT widgets carry a second value ('fixed', 'randomize', ...) in widgets_values."""
    return spec[0] == "INT" and bool(options.get("control_after_generate", name in ("seed", "noise_seed")))


def to_api_prompt(workflow: Mapping[str, Any], node_classes: Mapping[str, type]) -> dict[str, dict]:
    """API-format prompt {node id: {"class_type", "inputs"}} for a UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in MUTED_MODES:
            continue
        if kind not in node_classes:
            raise PromptToPromptError(
                f"The workflow uses the node '{kind}', which is not installed. Install the node pack that provides "
                "it (ComfyUI Manager: 'Install Missing Custom Nodes').")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        spec = node_classes[kind].INPUT_TYPES()
        inputs: dict[str, Any] = {}
        cursor = 0
        for section in ("required", "optional"):
            for name, input_spec in spec.get(section, {}).items():
                options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
                if _is_widget(input_spec) and cursor < len(values):
                    inputs[name] = values[cursor]
                    cursor += 1 + _has_control_value(name, input_spec, options)
                elif _is_widget(input_spec) and "default" in options:
                    inputs[name] = options["default"]  # a widget added after the file was saved, as the front end does
                if name in linked:
                    link = links[linked[name]]
                    inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt
