"""The pack's route on ComfyUI's server: the token preview the edit nodes show (web/token_preview.js)."""
