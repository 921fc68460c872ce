"""The ComfyUI adapter: the only part of the pack that imports comfy."""

from .edit_nodes import NODE_CLASS_MAPPINGS as _EDIT_NODES
from .edit_nodes import NODE_DISPLAY_NAME_MAPPINGS as _EDIT_NAMES

NODE_CLASS_MAPPINGS = {**_EDIT_NODES}
NODE_DISPLAY_NAME_MAPPINGS = {**_EDIT_NAMES}
