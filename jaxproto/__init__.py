"""jaxproto: explainable medical-image models (CIPL, CSR, X-MIR) in JAX/Flax."""

__version__ = "0.1.0"
