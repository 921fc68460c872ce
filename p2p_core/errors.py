"""The one exception type the pack raises for bad input.

ComfyUI shows an exception's message in the node's error box, so every message says what is wrong
and how to fix it; catching this type lets tests tell our checks apart from failures deep in torch.
"""


class PromptToPromptError(ValueError):
    """Bad input to a Prompt-to-Prompt edit, with a message that names the fix."""
