"""The toy world: a scene generator, its measurement, and the tiny demo model to train on it (docs/toy-world.md)."""
