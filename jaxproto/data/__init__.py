"""Dataset loaders, synthetic data, grain pipeline and transforms."""
