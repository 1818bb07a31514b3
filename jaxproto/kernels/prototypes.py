"""Prototype distance and similarity maps over NHWC feature maps.

Pure ``jnp`` functions: they are jit-friendly and work on arrays whose batch axis is sharded
(XLA partitions the contractions). Feature maps are ``(N, H, W, D)``, prototypes ``(P, D)``,
maps come out as ``(N, H, W, P)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def l2_distance_maps(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Squared L2 distance of every patch to every prototype, ProtoPNet/CIPL form.

    Computed as ReLU(sum_c z_c^2 + (-2 <z, p> + ||p||^2)) in this order (cipl.md §1.4), which
    is what the official conv trick evaluates; the ReLU clamps rounding negatives.
    """
    z2 = jnp.sum(features * features, axis=-1, keepdims=True)
    zp = jnp.einsum("nhwd,pd->nhwp", features, prototypes, precision=HIGHEST)
    p2 = jnp.sum(prototypes * prototypes, axis=-1)
    return jax.nn.relu(z2 + (-2.0 * zp + p2))


def l2_distance_maps_direct(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Reference formulation with explicit differences (memory N*H*W*P*D; benchmarks, tests)."""
    diff = features[..., None, :] - prototypes
    return jnp.sum(diff * diff, axis=-1)


def exp_similarity(distances: jax.Array, scale: float) -> jax.Array:
    """CIPL similarity exp(-d / scale) (scale = prototype dimension, cipl.md §1.4)."""
    return jnp.exp(-distances / scale)


def log_similarity(distances: jax.Array, epsilon: float = 1e-4) -> jax.Array:
    """ProtoPNet log activation log((d + 1) / (d + eps)); CIPL uses it only to draw push maps."""
    return jnp.log((distances + 1.0) / (distances + epsilon))


def min_pool(maps: jax.Array) -> jax.Array:
    """Global minimum over the spatial axes: (N, H, W, P) -> (N, P)."""
    return jnp.min(maps, axis=(1, 2))


def argmin_location(maps: jax.Array) -> jax.Array:
    """Row-major flat index h*W + w of the first spatial minimum: (N, H, W, P) -> (N, P) int32."""
    n, h, w, p = maps.shape
    return jnp.argmin(maps.reshape(n, h * w, p), axis=1).astype(jnp.int32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as ``torch.nn.functional.normalize`` and in that order of operations
    (sqrt, max, divide: X-MIR's training reproduces bit for bit), with a finite gradient at 0.

    The one L2 normalisation of the project (X-MIR embeddings, CSR concept vectors)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    norm = jnp.sqrt(jnp.maximum(sq, jnp.finfo(sq.dtype).tiny))  # tiny: no inf slope at 0
    return x / jnp.maximum(norm, eps)
