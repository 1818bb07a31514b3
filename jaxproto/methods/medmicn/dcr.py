"""The DCR-style neural-symbolic layer in Gödel logic (specs/medmicn.md §3), as pure jnp.

``a ∧ b = min``, ``a ∨ b = max``, ``¬a = 1 - a``, ``a ⇔ b = min(max(1-a, b), max(a, 1-b))``.
Polarity s = σ(Φ(E)), relevance r = gate(Ψ(E)), φ = max(s ⇔ ĉ, 1 - r), ŷ = min over concepts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RELEVANCE_GATES = ("softselect", "sigmoid", "softmax_max")


def iff(a: jax.Array, b: jax.Array) -> jax.Array:
    """Gödel biconditional."""
    return jnp.minimum(jnp.maximum(1.0 - a, b), jnp.maximum(a, 1.0 - b))


def softselect(values: jax.Array, temperature: float, axis: int = 1) -> jax.Array:
    """DCR's relevance: σ(ℓ_i − T·mean_k ℓ_k) with ℓ = log_softmax over concepts (§3).

    All ℓ ≤ 0, so for T ≥ N every argument is ≥ 0 and r ≥ 0.5 (in practice ≈ 1): the filter
    keeps every concept. T < N gives sparse rules."""
    logp = jax.nn.log_softmax(values, axis=axis)
    return jax.nn.sigmoid(logp - temperature * jnp.mean(logp, axis=axis, keepdims=True))


def relevance(filter_logits: jax.Array, gate: str, temperature: float) -> jax.Array:
    """Relevance r (B, N, K) from Ψ's logits. ``softselect`` is the code's; ``sigmoid`` is
    σ(Ψ) per concept (no competition); ``softmax_max`` is softmax over concepts divided by its
    maximum (the most relevant concept gets 1)."""
    if gate == "softselect":
        return softselect(filter_logits, temperature, axis=1)
    if gate == "sigmoid":
        return jax.nn.sigmoid(filter_logits)
    if gate == "softmax_max":
        p = jax.nn.softmax(filter_logits, axis=1)
        return p / jnp.max(p, axis=1, keepdims=True)
    raise ValueError(f"model.relevance_gate must be one of {RELEVANCE_GATES}, got {gate!r}")


def reason(concept_probs: jax.Array, sign: jax.Array, rel: jax.Array) -> jax.Array:
    """ŷ_neural (B, K) = min_i max(s_ij ⇔ ĉ_i, 1 − r_ij)."""
    terms = jnp.maximum(iff(sign, concept_probs[:, :, None]), 1.0 - rel)
    return jnp.min(terms, axis=1)
