"""The toy world: a scene generator, its measurement, and the tiny demo model trained on it (see MODEL.md)."""
