"""Core: config, sharding, checkpoints, trainer, metrics."""
