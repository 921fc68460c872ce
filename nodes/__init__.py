"""The ComfyUI adapter: the only part of the pack that imports comfy."""

from . import blend_nodes, edit_nodes, inversion_nodes, store_nodes, token_preview

_MODULES = (edit_nodes, store_nodes, blend_nodes, inversion_nodes)
NODE_CLASS_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}

token_preview.register_routes()
