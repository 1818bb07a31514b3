"""CIPL loss terms (cipl.md §2). All functions are pure jnp and take float32 arrays.

Notation: logits (N, C) with a background ("No Finding") class ``bg``; ``fg`` an int array of
foreground class indices K; labels multi-hot (N, C); ``identity`` the (P, C) prototype-class
one-hot matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
COATTN_DISTANCES = ("explicit", "expanded")


def foreground_classes(num_classes: int, background: int, fix_last_class: bool) -> np.ndarray:
    """Foreground set K for the main/last-layer CE, L_co and L_pred (cipl.md §2.1).

    All classes except the background; the official code drops the last foreground class
    (Hernia on ChestX-ray14) — kept unless ``fix_last_class``.
    """
    if not 0 <= background < num_classes:
        raise ValueError(f"background class {background} outside [0, {num_classes})")
    fg = np.array([c for c in range(num_classes) if c != background], np.int32)
    return fg if fix_last_class else fg[:-1]


def all_foreground(num_classes: int, background: int) -> np.ndarray:
    """K used by the warm-up CE and evaluation: every class except the background."""
    return foreground_classes(num_classes, background, fix_last_class=True)


def background_ce(logits: jax.Array, labels: jax.Array, fg: np.ndarray, bg: int) -> jax.Array:
    """Mean over (sample, k in K) of the binary CE of sigmoid(z_k - z_bg) vs y_k (§2.1)."""
    margin = logits[:, fg] - logits[:, bg : bg + 1]
    y = labels[:, fg]
    return -jnp.mean(y * jax.nn.log_sigmoid(margin) + (1.0 - y) * jax.nn.log_sigmoid(-margin))


def cluster_separation(
    min_distances: jax.Array, labels: jax.Array, identity: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(L_clst, L_sep) of §2.2: batch means of the per-label-summed own-class minimum and of the
    minimum over prototypes of no positive class. Apply the hinge ReLU(2 - L_sep) afterwards."""
    big = jax.lax.stop_gradient(jnp.max(min_distances)) + 1.0  # masked-min sentinel
    own = identity.T[None, :, :] > 0  # (1, C, P)
    per_class_min = jnp.min(jnp.where(own, min_distances[:, None, :], big), axis=-1)  # (N, C)
    cluster = jnp.sum(per_class_min * labels, axis=-1)
    positive_protos = (labels @ identity.T) > 0  # (N, P)
    separation = jnp.min(jnp.where(positive_protos, big, min_distances), axis=-1)
    return jnp.mean(cluster), jnp.mean(separation)


def _neg_sq_distances(a: jax.Array, b: jax.Array, mode: str) -> jax.Array:
    """A2[n, i, j] = -||a[n, i] - b[n, j]||^2 for a (N, M, D), b (N, M, D)."""
    if mode == "explicit":
        diff = a[:, :, None, :] - b[:, None, :, :]
        return -jnp.sum(diff * diff, axis=-1)
    if mode == "expanded":
        ab = jnp.einsum("nid,njd->nij", a, b, precision=HIGHEST)
        return -(jnp.sum(a * a, -1)[:, :, None] + jnp.sum(b * b, -1)[:, None, :] - 2.0 * ab)
    raise ValueError(f"loss.coattn_distance must be one of {COATTN_DISTANCES}, got {mode!r}")


def co_attention(fa: jax.Array, fb: jax.Array, mode: str = "explicit") -> tuple[jax.Array, ...]:
    """Cross-image co-attention of §1.6 on embeddings (N, H, W, D).

    Returns (F_a^{a∩b}, F_b^{a∩b}) shaped like the inputs: each position of one image becomes a
    softmax(-||.||^2)-weighted mix of the other image's positions (no temperature).
    """
    n, h, w, d = fa.shape
    a, b = fa.reshape(n, h * w, d), fb.reshape(n, h * w, d)
    a2 = _neg_sq_distances(a, b, mode)  # (N, i over a, j over b)
    attn_a = jax.nn.softmax(a2, axis=1)  # A = softmax_i(A2)
    attn_b = jax.nn.softmax(a2, axis=2)  # B^T: softmax over j of A2[i, :]
    fb_co = jnp.einsum("nij,nid->njd", attn_a, a, precision=HIGHEST)
    fa_co = jnp.einsum("nij,njd->nid", attn_b, b, precision=HIGHEST)
    return fa_co.reshape(n, h, w, d), fb_co.reshape(n, h, w, d)


def interpretation_alignment(
    student: jax.Array, teacher: jax.Array, eps: float = 1e-12
) -> jax.Array:
    """L_int of §2.4: sum over positions of 1 - cos(student, teacher) along the prototype axis,
    mean over samples. Maps are (N, H, W, P); the teacher is not differentiated."""
    teacher = jax.lax.stop_gradient(teacher)
    sn = student / jnp.maximum(jnp.linalg.norm(student, axis=-1, keepdims=True), eps)
    tn = teacher / jnp.maximum(jnp.linalg.norm(teacher, axis=-1, keepdims=True), eps)
    cos = jnp.sum(sn * tn, axis=-1)
    return jnp.mean(jnp.sum(1.0 - cos, axis=(1, 2)))


def prediction_alignment(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    fg: np.ndarray,
    bg: int,
    temperature: float = 1.0,
) -> jax.Array:
    """L_pred of §2.4: squared difference of per-class sample Gram matrices of the two-way
    softmax([z_bg, z_k] / T), normalised by |K| * N^2."""

    def probs(z):
        pair = jnp.stack([jnp.broadcast_to(z[:, bg : bg + 1], z[:, fg].shape), z[:, fg]], -1)
        return jax.nn.softmax(pair / temperature, axis=-1)  # (N, K, 2)

    qs = probs(student_logits)
    qt = probs(jax.lax.stop_gradient(teacher_logits))
    gram_s = jnp.einsum("ikc,jkc->kij", qs, qs, precision=HIGHEST)
    gram_t = jnp.einsum("ikc,jkc->kij", qt, qt, precision=HIGHEST)
    n = student_logits.shape[0]
    return jnp.sum((gram_t - gram_s) ** 2) / (len(fg) * n * n)
