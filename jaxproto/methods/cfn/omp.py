"""Batched orthogonal matching pursuit in JAX (cfn.md §8), matching scikit-learn's
``OrthogonalMatchingPursuit(n_nonzero_coefs, fit_intercept)`` (Cholesky OMP).

The D embedding coordinates are the samples: with the intercept, the dictionary columns and each
signal are centred over the coordinates; at each step the atom with the largest |X^T r| joins the
support, the support's least-squares fit is updated through an incremental Cholesky factor of
the Gram matrix, and a signal stops early when the best atom is already in its support or its
correlation vanishes (scikit-learn's break conditions).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_TINY = float(np.finfo(np.float32).tiny)


@functools.partial(jax.jit, static_argnames=("n_nonzero", "fit_intercept"))
def omp(
    dictionary: jax.Array, signals: jax.Array, n_nonzero: int, fit_intercept: bool = True
) -> tuple[jax.Array, jax.Array]:
    """dictionary (D, K) columns = atoms, signals (B, D) -> (weights (B, K), intercept (B,))."""
    x = dictionary.astype(jnp.float32)
    y = signals.astype(jnp.float32)
    if fit_intercept:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=1)
        x, y = x - x_mean, y - y_mean[:, None]
    b, k = y.shape[0], x.shape[1]
    n = min(n_nonzero, k)
    gram = x.T @ x
    alpha = y @ x  # (B, K) = X^T y
    slots = jnp.arange(n)

    def body(t, carry):
        L, idx, gamma, resid, done = carry
        corr = jnp.abs(resid @ x)
        lam = jnp.argmax(corr, axis=1)
        chosen = jnp.any((idx == lam[:, None]) & (slots < t), axis=1)
        best = jnp.take_along_axis(corr, lam[:, None], axis=1)[:, 0]
        g = jnp.where(slots < t, gram[idx, lam[:, None]], 0.0)
        w = jax.scipy.linalg.solve_triangular(L, g[..., None], lower=True)[..., 0]
        lkk = gram[lam, lam] - jnp.sum(w * w, axis=1)
        stop = done | chosen | (best**2 < _TINY) | (lkk <= _TINY)
        row = jnp.where(slots < t, w, 0.0).at[:, t].set(jnp.sqrt(jnp.maximum(lkk, _TINY)))
        L_new = L.at[:, t, :].set(row)
        idx_new = idx.at[:, t].set(lam)
        a = jnp.where(slots <= t, jnp.take_along_axis(alpha, idx_new, axis=1), 0.0)
        z = jax.scipy.linalg.solve_triangular(L_new, a[..., None], lower=True)
        g_new = jax.scipy.linalg.solve_triangular(L_new, z, lower=True, trans="T")[..., 0]
        coef = jnp.zeros((b, k)).at[jnp.arange(b)[:, None], idx_new].add(g_new)
        resid_new = y - coef @ x.T
        keep = stop[:, None]
        return (
            jnp.where(keep[..., None], L, L_new),
            jnp.where(keep, idx, idx_new),
            jnp.where(keep, gamma, g_new),
            jnp.where(keep, resid, resid_new),
            stop,
        )

    L0 = jnp.broadcast_to(jnp.eye(n), (b, n, n))
    init = (L0, jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n)), y, jnp.zeros((b,), bool))
    _, idx, gamma, _, _ = jax.lax.fori_loop(0, n, body, init)
    # Unused slots hold gamma 0 (their index may repeat a used one: add, not set).
    coef = jnp.zeros((b, k)).at[jnp.arange(b)[:, None], idx].add(gamma)
    if fit_intercept:
        intercept = y_mean - coef @ x_mean
    else:
        intercept = jnp.zeros((b,))
    return coef, intercept


def reconstruct(dictionary: jax.Array, coef: jax.Array, intercept: jax.Array) -> jax.Array:
    """f_hat = X w + beta 1 (scikit-learn's ``reg.predict(X)``), (B, D)."""
    return coef @ dictionary.T + intercept[:, None]


def omp_batched(
    dictionary: np.ndarray, signals: np.ndarray, n_nonzero: int, fit_intercept: bool, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """``omp`` over the rows of ``signals`` in chunks of ``chunk`` (last chunk padded)."""
    ws, bs = [], []
    d = jnp.asarray(dictionary, jnp.float32)
    for s in range(0, len(signals), chunk):
        part = np.asarray(signals[s : s + chunk], np.float32)
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        w, b = omp(d, jnp.asarray(part), n_nonzero, fit_intercept)
        ws.append(np.asarray(w)[: chunk - pad])
        bs.append(np.asarray(b)[: chunk - pad])
    return np.concatenate(ws), np.concatenate(bs)
