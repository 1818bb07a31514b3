"""Concept activation vectors per SAE latent (cfn.md §6; no released code, TCAV-style default).

``linear_probe``: positives are latent j's top-n training images (``top20``) or every image with
z_j > 0 (``active``), negatives a seeded random sample of the others (``negatives_per_positive``
times as many, at least ``min_negatives``); a logistic regression or linear SVM on f(x) gives the
normal w, c_j = w / ||w||. ``logreg`` is scikit-learn's default LogisticRegression (L2, C = 1,
unpenalised intercept) solved for all latents at once by batched Newton steps in JAX;
``linear_svm`` is scikit-learn's LinearSVC per latent. ``decoder_column``: c_j = the SAE's unit
decoder atom (a deviation, no fitting).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.core import logging as log_lib

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("iters",))
def logreg_newton(
    x: jax.Array, y: jax.Array, mask: jax.Array, c: float = 1.0, iters: int = 30
) -> jax.Array:
    """Batched L2 logistic regression, min 0.5 |w|^2 + C sum_i m_i log(1 + exp(-s_i (x_i w + b)))
    (scikit-learn's objective). x (L, N, D), y/mask (L, N) -> (L, D + 1) = (w, b) per problem."""
    xb = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)
    d1 = xb.shape[-1]
    reg = jnp.diag(jnp.ones(d1).at[-1].set(1e-10))

    def newton(theta, _):
        p = jax.nn.sigmoid(jnp.einsum("lnd,ld->ln", xb, theta))
        grad = theta @ reg + c * jnp.einsum("ln,lnd->ld", mask * (p - y), xb)
        curv = c * mask * p * (1 - p)
        hess = reg + jnp.einsum("ln,lnd,lne->lde", curv, xb, xb)
        return theta - jnp.linalg.solve(hess, grad[..., None])[..., 0], None

    theta, _ = jax.lax.scan(newton, jnp.zeros(x.shape[:1] + (d1,), x.dtype), None, length=iters)
    return theta


def positives_of(z_col: np.ndarray, top: np.ndarray, mode: str) -> np.ndarray:
    """Row indices of latent j's positive images."""
    if mode == "top20":
        return np.asarray(top)
    if mode == "active":
        return np.flatnonzero(z_col > 0)
    raise ValueError(f"cfn.cav.positives must be 'top20' or 'active', got {mode!r}")


def linear_probe_cavs(
    emb: np.ndarray,
    z: np.ndarray,
    latents: np.ndarray,
    topk: np.ndarray,
    positives: str,
    classifier: str,
    negatives_per_positive: float,
    min_negatives: int,
    seed: int,
    chunk: int = 64,
) -> np.ndarray:
    """(len(latents), D) unit CAVs; ``topk[i]`` are latent ``latents[i]``'s top image rows."""
    if classifier not in ("logreg", "linear_svm"):
        raise ValueError(f"cfn.cav.classifier must be logreg or linear_svm, got {classifier!r}")
    n = len(emb)
    problems = []
    for i, j in enumerate(latents):
        rng = np.random.default_rng([seed, int(j)])
        pos = positives_of(z[:, j], topk[i], positives)
        others = np.setdiff1d(np.arange(n), pos)
        n_neg = min(len(others), max(min_negatives, int(negatives_per_positive * len(pos))))
        problems.append((pos, rng.choice(others, size=n_neg, replace=False)))
    out = np.zeros((len(latents), emb.shape[1]), np.float32)
    progress = log_lib.Progress(len(latents), 0, "cav", 1)
    try:
        for s in range(0, len(latents), chunk):
            part = problems[s : s + chunk]
            out[s : s + len(part)] = _fit(emb, part, classifier, seed)
            progress.update(s + len(part))
    finally:
        progress.close()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _fit(emb: np.ndarray, problems, classifier: str, seed: int) -> np.ndarray:
    if classifier == "linear_svm":
        from sklearn.svm import LinearSVC

        rows = []
        for pos, neg in problems:
            ys = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            rows.append(LinearSVC(random_state=seed).fit(emb[np.r_[pos, neg]], ys).coef_[0])
        return np.stack(rows)
    width = max(len(p) + len(q) for p, q in problems)
    xs = np.zeros((len(problems), width, emb.shape[1]), np.float32)
    ys = np.zeros((len(problems), width), np.float32)
    ms = np.zeros((len(problems), width), np.float32)
    for i, (pos, neg) in enumerate(problems):
        rows = np.r_[pos, neg]
        xs[i, : len(rows)] = emb[rows]
        ys[i, : len(pos)] = 1.0
        ms[i, : len(rows)] = 1.0
    return np.asarray(logreg_newton(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ms)))[:, :-1]


def decoder_cavs(decoder: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """The SAE's decoder atoms (Flax rows) of ``latents``, renormalised."""
    atoms = np.asarray(decoder, np.float32)[latents]
    return atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)
