"""Med-MICN losses (specs/medmicn.md §4): L = L_task(ỹ) + 0.1·BCE(ĉ, c) + 0.1·BCE(ŷ_neural, y)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

TASK_LOSSES = ("ce_on_sigmoid", "ce_on_logits")
LOG_CLAMP = -100.0  # torch.nn.BCELoss clamps each log term at -100


TORCH_BCE_GRAD_EPS = 1e-12  # torch's BCELoss backward divides by max(p·(1−p), 1e-12)


@jax.custom_vjp
def bce(probs: jax.Array, targets: jax.Array) -> jax.Array:
    """torch BCELoss on probabilities: mean of −[y·log p + (1−y)·log(1−p)], logs clamped at −100
    (a saturated ŷ_neural would otherwise give inf), with torch's backward
    (p − y) / max(p·(1 − p), 1e-12) / n, finite where the Gödel min/max makes p exactly 0 or 1
    (autodiff through the clamp gives 0·inf = NaN there)."""
    return _bce_value(probs, targets)


def _bce_value(probs: jax.Array, targets: jax.Array) -> jax.Array:
    log_p = jnp.maximum(jnp.log(probs), LOG_CLAMP)
    log_q = jnp.maximum(jnp.log1p(-probs), LOG_CLAMP)
    return -jnp.mean(targets * log_p + (1.0 - targets) * log_q)


def _bce_fwd(probs, targets):
    return _bce_value(probs, targets), (probs, targets)


def _bce_bwd(res, g):
    probs, targets = res
    scale = g / probs.size
    d_probs = scale * (probs - targets) / jnp.maximum(probs * (1.0 - probs), TORCH_BCE_GRAD_EPS)
    d_targets = scale * (
        jnp.maximum(jnp.log1p(-probs), LOG_CLAMP) - jnp.maximum(jnp.log(probs), LOG_CLAMP)
    )
    return d_probs, d_targets


bce.defvjp(_bce_fwd, _bce_bwd)


def task_loss(fused_logits: jax.Array, labels: jax.Array, mode: str) -> jax.Array:
    """Cross-entropy of the fused head. ``ce_on_sigmoid`` (the code): softmax-CE on σ(logits),
    values in [0, 1]; ``ce_on_logits``: softmax-CE on the logits (deviation, stronger gradients)."""
    if mode == "ce_on_sigmoid":
        scores = jax.nn.sigmoid(fused_logits)
    elif mode == "ce_on_logits":
        scores = fused_logits
    else:
        raise ValueError(f"loss.task_loss must be one of {TASK_LOSSES}, got {mode!r}")
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(scores, labels))


def total_loss(
    out: dict[str, jax.Array],
    labels: jax.Array,
    concepts: jax.Array,
    *,
    task_mode: str,
    w_task: float,
    w_concept: float,
    w_neural: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective and its terms (the side head's loss is reported, not added)."""
    num_classes = out["fused_logits"].shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    terms = {
        "task_loss": task_loss(out["fused_logits"], labels, task_mode),
        "concept_loss": bce(out["concept_probs"], concepts),
        "neural_loss": bce(out["y_neural"], onehot),
        "side_loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["side"], labels)),
    }
    loss = (
        w_task * terms["task_loss"]
        + w_concept * terms["concept_loss"]
        + w_neural * terms["neural_loss"]
    )
    return loss, terms
