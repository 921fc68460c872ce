"""Prompt-to-Prompt attention control in pure torch: tokens, alignment, schedules, edits and attention.

Nothing here imports ComfyUI; `nodes/` adapts it to the host.
"""
