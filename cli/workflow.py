"""Turn a UI-format workflow (what ComfyUI saves and example_workflows/ holds) into an API-format prompt.

The UI format stores widget values as a list in widget order; the executor wants named inputs. The order
comes from each node class's INPUT_TYPES, as the front end builds it: required then optional inputs, one
value per widget, plus the extra 'control after generate' value the front end keeps after seed widgets.
A widget the file has no value for (added to the node after the file was saved) gets its default, as the front
end gives it. Links are followed as the front end follows them when it queues a workflow: through Reroutes and
bypassed nodes (to their input of the same type), and a PrimitiveNode's value is the widget value it feeds.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..p2p_core.errors import PromptToPromptError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
NEVER, BYPASSED = 2, 4  # node modes


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec: tuple, options: Mapping[str, Any]) -> bool:
    """Seed-like INT widgets carry a second value ('fixed', 'randomize', ...) in widgets_values."""
    return spec[0] == "INT" and bool(options.get("control_after_generate", name in ("seed", "noise_seed")))


def _title(node: Mapping[str, Any]) -> str:
    return f"node {node['id']} ({node.get('title') or node['type']})"


def _source(link_id: int, nodes: Mapping[int, Mapping], links: Mapping[int, list]) -> list | None:
    """The [node id, output slot] a link reads once Reroutes and bypassed nodes are passed through, or None
    where nothing feeds it (a PrimitiveNode, whose value is already the widget's; a bypassed node without an
    input of the link's type)."""
    seen = set()
    while link_id not in seen:
        seen.add(link_id)
        link = links.get(link_id)
        origin = nodes.get(link[1]) if link else None
        if origin is None:
            raise PromptToPromptError(f"The workflow's link {link_id} leads from a node it does not have: the file is "
                                      "damaged. Open it in ComfyUI and save it again.")
        if origin["type"] == "PrimitiveNode":
            return None
        if origin.get("mode", 0) == NEVER:
            raise PromptToPromptError(f"{_title(origin)} is muted, but another node takes its output. Unmute it, "
                                      "bypass it, or disconnect its output.")
        if origin["type"] != "Reroute" and origin.get("mode", 0) != BYPASSED:
            return [str(origin["id"]), link[2]]
        inputs = [i for i in origin.get("inputs", []) if i.get("link") is not None]
        if origin["type"] != "Reroute":  # the front end's bypass: the input of the output's type, same slot first
            same = [i for i in inputs if i.get("type") == link[5]]
            inputs = sorted(same, key=lambda i: origin["inputs"].index(i) != link[2])
        if not inputs:
            return None
        link_id = inputs[0]["link"]
    raise PromptToPromptError("The workflow's Reroutes or bypassed nodes form a loop: open it in ComfyUI and "
                              "reconnect them.")


def to_api_prompt(workflow: Mapping[str, Any], node_classes: Mapping[str, type]) -> dict[str, dict]:
    """API-format prompt {node id: {"class_type", "inputs"}} for a UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    nodes = {node["id"]: node for node in workflow["nodes"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (NEVER, BYPASSED):
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
                source = _source(linked[name], nodes, links) if name in linked else None
                if source is not None:
                    inputs[name] = source
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt
