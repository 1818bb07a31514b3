"""Foundation used by every layer: user-facing errors, configs, parameter-path trees, CLI entry.

Imports nothing else from jaxproto, so ``kernels``, ``backbones``, ``data`` and ``viz`` (the
lowest layers) can use it without reaching upward.
"""
