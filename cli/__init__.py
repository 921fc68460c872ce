"""The command line's work (`python <pack> run | demo`, __main__.py): workflow conversion, headless runs through
ComfyUI's executor, and the demo's grids."""
