"""The toy world: a scene generator, its measurement, and the tiny demo model to train on it (README, "The toy
world")."""
