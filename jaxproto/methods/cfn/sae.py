"""Sparse autoencoder on frozen embeddings (cfn.md §4), trained data-parallel over the mesh.

z = ReLU(W_e (x - b_d) + b_e), x_hat = z W_d + b_d with W_d (F, D) in Flax layout: its rows are
the dictionary atoms, kept unit-norm by removing each atom's parallel gradient component before
the Adam update and renormalising after it, every step. Loss (cfn.md §4):
mean_b [ mean_D (x - x_hat)^2 + lambda * sum_F |z| ].
"""

from __future__ import annotations

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.core import logging as log_lib
from jaxproto.core import parallel

log = logging.getLogger(__name__)


def _encoder_bias_init(dim: int):
    bound = 1.0 / math.sqrt(dim)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


class SparseAutoencoder(nn.Module):
    """``__call__(x) -> (z (B, F), x_hat (B, D))``."""

    num_latents: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = x.shape[-1]
        b_d = self.param("tied_bias", nn.initializers.zeros, (d,))
        # Kaiming-uniform for ReLU (gain sqrt 2): bound = sqrt(6 / fan_in).
        enc = nn.Dense(
            self.num_latents,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "uniform"),
            bias_init=_encoder_bias_init(d),
            name="encoder",
        )
        z = nn.relu(enc(x - b_d))
        atoms = self.param("decoder", _unit_rows_init, (self.num_latents, d))
        return z, z @ atoms + b_d


def _unit_rows_init(key, shape, dtype=jnp.float32):
    w = jax.random.normal(key, shape, dtype)
    return w / jnp.linalg.norm(w, axis=1, keepdims=True)


def sae_loss(x: jax.Array, z: jax.Array, x_hat: jax.Array, l1: float) -> tuple[jax.Array, dict]:
    """cfn.md §4: per-feature mean squared error + l1 * summed |z|, averaged over the batch."""
    mse = jnp.mean(jnp.square(x - x_hat), axis=-1)
    sparsity = jnp.sum(jnp.abs(z), axis=-1)
    return jnp.mean(mse + l1 * sparsity), {"mse": jnp.mean(mse), "l1": jnp.mean(sparsity)}


def project_atom_grads(grad_atoms: jax.Array, atoms: jax.Array) -> jax.Array:
    """g_j <- g_j - (w_j . g_j) w_j for each (unit) atom row w_j."""
    return grad_atoms - jnp.sum(grad_atoms * atoms, axis=1, keepdims=True) * atoms


def renormalise_atoms(atoms: jax.Array) -> jax.Array:
    return atoms / jnp.linalg.norm(atoms, axis=1, keepdims=True)


def make_step(model: SparseAutoencoder, tx: optax.GradientTransformation, l1: float, mesh):
    """The jitted data-parallel training step: batch on the mesh's batch axes, params replicated."""

    def step(params, opt_state, x):
        def loss_fn(p):
            z, x_hat = model.apply({"params": p}, x)
            return sae_loss(x, z, x_hat, l1)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = {**grads, "decoder": project_atom_grads(grads["decoder"], params["decoder"])}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {**params, "decoder": renormalise_atoms(params["decoder"])}
        return params, opt_state, {"loss": loss, **terms}

    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, batch), out_shardings=(rep, rep, rep))


def num_steps(n: int, batch_size: int, epochs: float, steps: int) -> tuple[int, int]:
    """(batch, steps): the paper's step count is epochs * ceil(N / batch) (≈ 400 on HAM)."""
    batch = min(batch_size, n)
    return batch, steps or max(1, int(round(epochs * math.ceil(n / batch))))


def train_sae(
    x: np.ndarray,
    num_latents: int,
    l1: float,
    lr: float,
    batch_size: int,
    steps: int,
    seed: int,
    mesh,
) -> tuple[dict, list[dict]]:
    """Trains on the rows of ``x`` (N, D); returns (numpy params, per-step metric history)."""
    model = SparseAutoencoder(num_latents)
    params = model.init(jax.random.key(seed), jnp.zeros((1, x.shape[1]), jnp.float32))["params"]
    tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    step = make_step(model, tx, l1, mesh)
    rep = parallel.replicated(mesh)
    params = jax.device_put(params, rep)
    opt_state = jax.device_put(tx.init(params), rep)
    batch = parallel.device_multiple(batch_size, mesh)
    batch = batch if batch <= len(x) else len(x) - len(x) % mesh.size
    rng = np.random.default_rng(seed)
    order, pos, history = rng.permutation(len(x)), 0, []
    progress = log_lib.Progress(steps, 0, "sae", batch)
    try:
        for i in range(steps):
            if pos + batch > len(x):
                order, pos = rng.permutation(len(x)), 0
            xb = np.asarray(x[order[pos : pos + batch]], np.float32)
            pos += batch
            params, opt_state, m = step(params, opt_state, parallel.global_batch(xb, mesh))
            if (i + 1) % 50 == 0 or i + 1 == steps:
                host = {k: float(v) for k, v in parallel.to_host(m).items()}
                if not all(math.isfinite(v) for v in host.values()):
                    raise FloatingPointError(f"SAE diverged at step {i + 1}: {host}")
                history.append({"step": i + 1, **host})
                progress.update(i + 1, {"loss": host["loss"]})
    finally:
        progress.close()
    return jax.tree.map(np.asarray, params), history


def encode(params: dict, x: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(z, x_hat) for the rows of ``x``, in chunks (numpy, float32)."""
    model = SparseAutoencoder(int(params["decoder"].shape[0]))
    fn = jax.jit(lambda p, xb: model.apply({"params": p}, xb))
    zs, xs = [], []
    for s in range(0, len(x), chunk):
        z, xh = fn(params, jnp.asarray(x[s : s + chunk], jnp.float32))
        zs.append(np.asarray(z))
        xs.append(np.asarray(xh))
    return np.concatenate(zs), np.concatenate(xs)


def statistics(x: np.ndarray, z: np.ndarray, x_hat: np.ndarray) -> dict:
    """Alive/dead latents (ever > 0 on these rows), reconstruction R^2 and mean L0."""
    alive = (z > 0).any(axis=0)
    ss_res = float(np.sum((x - x_hat) ** 2))
    ss_tot = float(np.sum((x - x.mean(axis=0)) ** 2))
    return {
        "alive": int(alive.sum()),
        "dead": int((~alive).sum()),
        "r2": 1.0 - ss_res / max(ss_tot, 1e-12),
        "l0": float((z > 0).sum(axis=1).mean()),
    }
