"""The ComfyUI node classes (thin: their inputs, checks and outputs; the work is p2p_core's and runtime/'s)."""

from . import blend_nodes, edit_nodes, flow_inversion, inversion_nodes, store_nodes, toy_nodes
from .inputs import refuse_bad_numbers

_MODULES = (edit_nodes, store_nodes, blend_nodes, inversion_nodes, flow_inversion, toy_nodes)
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
NODE_CLASS_MAPPINGS = {k: refuse_bad_numbers(v, NODE_DISPLAY_NAME_MAPPINGS[k])
                       for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
