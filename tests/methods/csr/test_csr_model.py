"""CSR model pieces and losses against independent numpy references (specs/csr.md §1–3)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.methods.csr import losses
from jaxproto.methods.csr.model import (
    CsrModel,
    Projector,
    pool_scores,
    similarity_maps,
    spatial_softmax_pool,
)


class TinyBackbone(nn.Module):
    """Two strided convs + BatchNorm: a stand-in for F with batch statistics."""

    width: int = 8

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(self.width, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return {"stage4": nn.Conv(self.width, (3, 3), strides=2)(x)}


def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_logsumexp(x):
    m = x.max(-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


def _np_contrastive(v, ids, valid, protos, gamma, lam, delta, mode):
    """Loop-based reference of Eq. 9 in float64."""
    p = _np_normalize(protos.astype(np.float64))
    out = []
    for n in range(v.shape[0]):
        if not valid[n]:
            continue
        sims = []
        for k in range(p.shape[0]):
            cos = p[k] @ v[n].astype(np.float64)
            q = np.exp(gamma * (cos - cos.max()))
            q /= q.sum()
            sims.append(float((q * cos).sum()))
        sims = np.array(sims)
        own = sims[ids[n]]
        if mode == "softtriple_minus":
            num = lam * (own - delta)
            den = np.exp(num) + sum(np.exp(lam * s) for k, s in enumerate(sims) if k != ids[n])
        elif mode == "plus_ce":
            num = lam * (own + delta)
            den = np.exp(num) + sum(np.exp(lam * s) for k, s in enumerate(sims) if k != ids[n])
        else:
            num = lam * (own + delta)
            den = np.exp(lam * sims).sum()
        out.append(-(num - np.log(den)))
    return float(np.mean(out))


@pytest.mark.parametrize("mode", losses.MARGIN_MODES)
@pytest.mark.parametrize("gamma", [5.0, 1000.0])
def test_contrastive_matches_numpy_loop(mode, gamma):
    rng = np.random.default_rng(0)
    k, m, d, n = 3, 4, 6, 10
    v = _np_normalize(rng.normal(size=(n, d))).astype(np.float32)
    protos = rng.normal(size=(k, m, d)).astype(np.float32)
    ids = rng.integers(0, k, n)
    valid = rng.random(n) > 0.3
    got, aux = losses.multi_prototype_contrastive(
        jnp.asarray(v),
        jnp.asarray(ids),
        jnp.asarray(valid),
        jnp.asarray(protos),
        gamma=gamma,
        lam=20.0,
        delta=0.1,
        margin_mode=mode,
    )
    want = _np_contrastive(v, ids, valid, protos, gamma, 20.0, 0.1, mode)
    np.testing.assert_allclose(float(got), want, rtol=1e-4, atol=1e-4)
    assert 0.0 <= float(aux["con_acc"]) <= 1.0


def test_contrastive_gamma_1000_is_finite_with_finite_grads():
    rng = np.random.default_rng(1)
    v = jnp.asarray(_np_normalize(rng.normal(size=(8, 5))), jnp.float32)
    protos = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 4, 8))

    def f(p, a):
        return losses.multi_prototype_contrastive(a, ids, jnp.ones(8, bool), p, gamma=1000.0)[0]

    val, (gp, ga) = jax.value_and_grad(f, argnums=(0, 1))(protos, v)
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(gp))) and np.all(np.isfinite(np.asarray(ga)))
    # γ = 1000 makes q one-hot: sim_k equals max_m cos (spec §2.4).
    sim, cos = losses.concept_similarities(v, protos, 1000.0)
    np.testing.assert_allclose(np.asarray(sim), np.asarray(cos).max(-1), atol=1e-3)


def test_contrastive_margin_modes_differ_and_mean_concepts():
    rng = np.random.default_rng(2)
    v = jnp.asarray(_np_normalize(rng.normal(size=(6, 4))), jnp.float32)
    protos = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    ids = jnp.asarray([0, 0, 0, 0, 1, 1])
    valid = jnp.ones(6, bool)
    vals = {
        mode: float(losses.multi_prototype_contrastive(v, ids, valid, protos, margin_mode=mode)[0])
        for mode in losses.MARGIN_MODES
    }
    assert vals["softtriple_minus"] > vals["plus_ce"] > vals["plus_numerator_only"]
    per_anchor = [
        float(
            losses.multi_prototype_contrastive(v[i : i + 1], ids[i : i + 1], valid[:1], protos)[0]
        )
        for i in range(6)
    ]
    got = float(
        losses.multi_prototype_contrastive(v, ids, valid, protos, reduction="mean_concepts")[0]
    )
    np.testing.assert_allclose(
        got, 0.5 * (np.mean(per_anchor[:4]) + np.mean(per_anchor[4:])), rtol=1e-5
    )


def test_concept_bce_and_task_ce_match_numpy():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 3)).astype(np.float32)
    t = (rng.random((4, 3)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-z))
    want = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(
        float(losses.concept_bce(jnp.asarray(z), jnp.asarray(t))), want, rtol=1e-5
    )
    y = rng.integers(0, 3, 4)
    logp = z - _np_logsumexp(z)[:, None]
    np.testing.assert_allclose(
        float(losses.task_cross_entropy(jnp.asarray(z), jnp.asarray(y))),
        -np.mean(logp[np.arange(4), y]),
        rtol=1e-5,
    )


def test_spatial_softmax_pool_matches_numpy():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    cam = (5 * rng.normal(size=(2, 3, 4, 2))).astype(np.float32)
    got = np.asarray(spatial_softmax_pool(jnp.asarray(f), jnp.asarray(cam)))
    for b in range(2):
        for k in range(2):
            a = np.exp(cam[b, :, :, k] - cam[b, :, :, k].max())
            a /= a.sum()
            np.testing.assert_allclose(
                got[b, k], np.einsum("hw,hwc->c", a, f[b]), rtol=1e-5, atol=1e-6
            )


def _np_projector(params, stats, x, mask, train, mode):
    """Independent numpy forward of P (R1 layout) for (B, L, C) inputs."""
    x = x @ params["in_proj"]["kernel"] + params["in_proj"]["bias"]
    for i in range(3):
        blk, st = params[f"blocks_{i}"], stats[f"blocks_{i}"]["ibn"]["bn"]
        y = x @ blk["dense"]["kernel"] + blk["dense"]["bias"]
        half = y.shape[-1] // 2
        a, b = y[..., :half], y[..., half:]
        if mode == "r1_groupnorm":
            mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
        else:
            mu = np.stack([a[j][mask[j]].mean(0) for j in range(a.shape[0])])[:, None]
            var = np.stack([a[j][mask[j]].var(0) for j in range(a.shape[0])])[:, None]
        a = (a - mu) / np.sqrt(var + 1e-5) * blk["ibn"]["in_scale"] + blk["ibn"]["in_bias"]
        if train:
            bm, bv = b[mask].mean(0), b[mask].var(0)
        else:
            bm, bv = st["mean"], st["var"]
        b = (b - bm) / np.sqrt(bv + 1e-5) * blk["ibn"]["bn"]["scale"] + blk["ibn"]["bn"]["bias"]
        x = x + np.maximum(np.concatenate([a, b], -1), 0)
    return _np_normalize(x)


@pytest.mark.parametrize("mode", ["r1_groupnorm", "instancenorm_over_patches"])
@pytest.mark.parametrize("train", [False, True])
def test_projector_matches_numpy(mode, train):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 10)).astype(np.float32)
    mask = rng.random((3, 4)) > 0.3
    mask[:, 0] = True
    proj = Projector(features=8, ibn_mode=mode)
    variables = proj.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(mask), False)
    params = jax.tree.map(
        lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), variables["params"]
    )
    stats = jax.tree.map(
        lambda s: np.abs(s) + rng.random(s.shape).astype(np.float32), variables["batch_stats"]
    )
    out = proj.apply(
        {"params": params, "batch_stats": stats},
        jnp.asarray(x),
        jnp.asarray(mask),
        train,
        mutable=["batch_stats"] if train else False,
    )
    out = out[0] if train else out
    np_params = jax.tree.map(np.asarray, params)
    want = _np_projector(np_params, jax.tree.map(np.asarray, stats), x, mask, train, mode)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), 1.0, rtol=1e-5)


def test_similarity_maps_and_pool_scores_invariants():
    rng = np.random.default_rng(6)
    patches = _np_normalize(rng.normal(size=(2, 3, 3, 4))).astype(np.float32)
    protos = rng.normal(size=(2, 3, 4)).astype(np.float32)
    sims = np.asarray(similarity_maps(jnp.asarray(patches), jnp.asarray(protos)))
    assert sims.shape == (2, 2, 3, 3, 3)
    pn = _np_normalize(protos)
    np.testing.assert_allclose(sims[1, 0, 2, 1, 2], pn[0, 2] @ patches[1, 1, 2], rtol=1e-5)
    assert sims.min() >= -1 - 1e-6 and sims.max() <= 1 + 1e-6
    s = np.asarray(pool_scores(jnp.asarray(sims)))
    np.testing.assert_allclose(s, sims.max((-2, -1)).reshape(2, 6), rtol=1e-6)
    ones = np.ones((3, 3), np.float32)
    s1 = np.asarray(pool_scores(jnp.asarray(sims), ones))
    np.testing.assert_allclose(s1, np.maximum(s, 0), rtol=1e-6)
    sa = np.asarray(pool_scores(jnp.asarray(sims), 0.2 * ones))
    np.testing.assert_allclose(sa, 0.2 * np.maximum(s, 0), rtol=1e-5)
    rej = np.asarray(pool_scores(jnp.asarray(sims), rejected=jnp.asarray([0.0, 1.0])))
    np.testing.assert_array_equal(rej[:, 3:], 0.0)
    np.testing.assert_allclose(rej[:, :3], s[:, :3])
    pm = np.ones((2, 3), np.float32)
    pm[0, 1] = 0
    sm = np.asarray(pool_scores(jnp.asarray(sims), proto_mask=jnp.asarray(pm)))
    assert np.all(sm[:, 1] == 0) and np.allclose(sm[:, 2], s[:, 2])
    with pytest.raises(ValueError, match="clip_negative"):
        pool_scores(jnp.asarray(sims), clip_negative="sometimes")


def test_csr_model_shapes_and_param_tree():
    model = CsrModel(
        TinyBackbone(), num_concepts=3, num_classes=2, prototypes_per_concept=4, proj_dim=8
    )
    x = jnp.zeros((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    p = variables["params"]
    assert set(p) == {"backbone", "concept_head", "projector", "prototypes", "task_head"}
    assert p["concept_head"]["kernel"].shape == (8, 3) and "bias" not in p["concept_head"]
    assert p["prototypes"].shape == (3, 4, 8)
    assert set(p["projector"]["blocks_0"]["ibn"]) == {"in_scale", "in_bias", "bn"}
    out = model.apply(variables, x)
    assert out["sims"].shape == (2, 3, 4, 4, 4)
    assert out["logits"].shape == (2, 2)
    assert out["cam"].shape == (2, 4, 4, 3)
    assert out["v_proj"].shape == (2, 3, 8)


def test_head_bn_folds_into_the_linear_head():
    from jaxproto.methods.csr.model import fold_head_bn

    rng = np.random.default_rng(0)
    kw = dict(num_concepts=2, num_classes=3, prototypes_per_concept=3, proj_dim=4)
    with_bn = CsrModel(TinyBackbone(), head_input_bn=True, **kw)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    variables = with_bn.init(jax.random.key(0), x)
    params = jax.tree.map(lambda a: a, dict(variables["params"]))
    stats = dict(variables["batch_stats"])
    params["head_bn"] = {
        "scale": jnp.asarray(rng.uniform(0.5, 2, 6)),
        "bias": jnp.asarray(rng.normal(size=6)),
    }
    stats["head_bn"] = {
        "mean": jnp.asarray(rng.normal(size=6)),
        "var": jnp.asarray(rng.uniform(0.1, 3, 6)),
    }
    s = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    head = lambda mdl, v: mdl.head(v, train=False)  # noqa: E731
    want = with_bn.apply({"params": params, "batch_stats": stats}, s, method=head)
    p2, b2 = fold_head_bn(params, stats)
    got = CsrModel(TinyBackbone(), head_input_bn=False, **kw).apply(
        {"params": p2, "batch_stats": b2}, s, method=head
    )
    # Reference in numpy: (s - mean)/sqrt(var + 1e-5)*scale + bias, then the dense layer.
    bn, st, th = params["head_bn"], stats["head_bn"], params["task_head"]
    ref = (np.asarray(s) - st["mean"]) / np.sqrt(st["var"] + 1e-5) * bn["scale"] + bn["bias"]
    ref = ref @ np.asarray(th["kernel"]) + np.asarray(th["bias"])
    np.testing.assert_allclose(want, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert "head_bn" not in p2 and "head_bn" not in b2
