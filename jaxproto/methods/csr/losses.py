"""CSR losses (specs/csr.md): concept BCE (§1.2), multi-prototype contrastive loss (§2.4, Eqs. 6–9)
and task cross-entropy (§3.3). All maths in float32 (γ = 1000 softmax, spec pitfall 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxproto.kernels.prototypes import l2_normalize

MARGIN_MODES = ("softtriple_minus", "plus_ce", "plus_numerator_only")
REDUCTIONS = ("mean_anchors", "mean_concepts")


def concept_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Multi-label binary cross-entropy over K concepts, mean over batch and concepts."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets))


def concept_similarities(
    anchors: jax.Array, prototypes: jax.Array, gamma: float
) -> tuple[jax.Array, jax.Array]:
    """sim_k(v') = Σ_m softmax_m(γ⟨p^{k_m}, v'⟩)·⟨p^{k_m}, v'⟩ (Eqs. 6–8).

    anchors (N, D) unit vectors, prototypes raw (K, M, D) -> (sim (N, K), cos (N, K, M)).
    ``jax.nn.softmax`` subtracts the max, so γ = 1000 is safe in float32.
    """
    cos = jnp.einsum("nd,kmd->nkm", anchors.astype(jnp.float32), l2_normalize(prototypes))
    q = jax.nn.softmax(gamma * cos, axis=-1)
    return jnp.sum(q * cos, axis=-1), cos


def multi_prototype_contrastive(
    anchors: jax.Array,
    concept_ids: jax.Array,
    valid: jax.Array,
    prototypes: jax.Array,
    gamma: float = 1000.0,
    lam: float = 20.0,
    delta: float = 0.1,
    margin_mode: str = "softtriple_minus",
    reduction: str = "mean_anchors",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ℓ_con-m (Eq. 9) for projected local concept vectors.

    anchors (N, D) unit vectors, concept_ids (N,) int ground-truth concept k̃, valid (N,) bool
    (only present concepts are anchors, spec §2.1). ``margin_mode`` places δ (spec §2.4):
    ``softtriple_minus`` λ(sim_k̃ − δ) in numerator and denominator; ``plus_ce``
    λ(sim_k̃ + δ) in both; ``plus_numerator_only`` λ(sim_k̃ + δ) on top of
    log Σ_k exp(λ sim_k) (may be negative).
    ``reduction``: mean over anchors, or mean per concept then over concepts with anchors.
    Returns (loss, {"con_acc": fraction of anchors whose own concept has the largest sim}).
    """
    if margin_mode not in MARGIN_MODES:
        raise ValueError(f"margin_mode must be one of {MARGIN_MODES}, got {margin_mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    sim, _ = concept_similarities(anchors, prototypes, gamma)
    k = prototypes.shape[0]
    onehot = jax.nn.one_hot(concept_ids, k, dtype=jnp.float32)
    logits = lam * sim
    own = jnp.sum(logits * onehot, axis=-1)
    if margin_mode == "softtriple_minus":
        logits = logits - lam * delta * onehot
        per = jax.nn.logsumexp(logits, axis=-1) - (own - lam * delta)
    elif margin_mode == "plus_ce":
        logits = logits + lam * delta * onehot
        per = jax.nn.logsumexp(logits, axis=-1) - (own + lam * delta)
    else:
        per = jax.nn.logsumexp(logits, axis=-1) - (own + lam * delta)
    w = valid.astype(jnp.float32)
    if reduction == "mean_anchors":
        loss = jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
    else:
        per_k = jnp.sum(onehot * (per * w)[:, None], axis=0)
        n_k = jnp.sum(onehot * w[:, None], axis=0)
        has = (n_k > 0).astype(jnp.float32)
        loss = jnp.sum(has * per_k / jnp.maximum(n_k, 1.0)) / jnp.maximum(jnp.sum(has), 1.0)
    correct = (jnp.argmax(sim, axis=-1) == concept_ids).astype(jnp.float32)
    acc = jnp.sum(correct * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {"con_acc": acc}


def task_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy on integer class labels, mean over the batch."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )
