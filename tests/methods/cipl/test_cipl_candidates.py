"""Streaming top-k push vs a brute-force greedy over all distances (cipl.md §4)."""

import jax
import numpy as np
import pytest

from jaxproto.kernels.prototypes import argmin_location, l2_distance_maps, min_pool
from jaxproto.methods.cipl import candidates as kpush


def _merge(cands, z, protos, ids, allowed):
    d = l2_distance_maps(z, protos)
    return kpush.merge_candidates(cands, min_pool(d), argmin_location(d), ids, allowed)


def _brute_force(z, protos, labels, proto_class):
    """Spec §4 literally: all (prototype, image) minima, greedy by index, global used set."""
    n, h, w, _ = z.shape
    used = set()
    out = []
    for j in range(protos.shape[0]):
        cands = []
        for i in range(n):
            if labels[i, proto_class[j]] <= 0:
                continue
            d = ((z[i].astype(np.float64) - protos[j]) ** 2).sum(-1).reshape(-1)
            cands.append((d.min(), i, int(np.argmin(d))))
        cands.sort(key=lambda t: (t[0], t[1]))
        chosen = (-1, 0, None)
        for _dist, i, loc in cands:
            if i not in used:
                used.add(i)
                chosen = (i, loc, z[i].reshape(h * w, -1)[loc])
                break
        out.append(chosen)
    return out


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_streaming_push_equals_brute_force(batch):
    rng = np.random.default_rng(batch)
    n, h, w, d, c, ppc = 13, 3, 3, 4, 3, 3
    z = rng.random((n, h, w, d), np.float32)
    labels = (rng.random((n, c)) < 0.45).astype(np.float32)
    labels[0] = 1.0
    labels[1, :] = 0.0
    labels[1, c - 1] = 1.0
    proto_class = np.repeat(np.arange(c), ppc)
    # prototypes near a few shared images so that many prototypes compete for the same images
    protos = z[rng.integers(0, 3, size=c * ppc), 1, 1] + 0.01 * rng.random((c * ppc, d))
    protos = protos.astype(np.float32)
    k = kpush.exact_candidate_count(len(proto_class), n)
    cands = kpush.init_candidates(len(proto_class), k)
    merge = jax.jit(_merge)
    for s in range(0, n + batch - 1, batch):
        idx = np.arange(s, s + batch)
        valid = idx < n
        idx_c = np.where(valid, idx, 0)
        zb = z[idx_c]
        allowed = labels[idx_c][:, proto_class] > 0
        cands = merge(cands, zb, protos, np.where(valid, idx, -1).astype(np.int32), allowed)
    got = kpush.greedy_assign(jax.device_get(cands))
    ref = _brute_force(z, protos, labels, proto_class)
    for j, (img, loc, emb) in enumerate(ref):
        assert got.image[j] == img, j
        if img >= 0:
            assert got.location[j] == loc
            patch = kpush.patches_at(z[img][None], np.array([got.location[j]]))[0]
            np.testing.assert_allclose(patch, emb, rtol=1e-6)


def test_small_k_can_break_exactness_but_exact_count_does_not():
    # 3 prototypes of one class, all nearest to image 0 then 1 then 2: greedy needs k_j = j+1.
    z = np.array([0.0, 0.1, 0.2, 0.3], np.float32).reshape(4, 1, 1, 1)
    protos = np.zeros((3, 1), np.float32)
    ids = np.arange(4, dtype=np.int32)
    allowed = np.ones((4, 3), bool)
    for k, expect in [(1, [0, -1, -1]), (kpush.exact_candidate_count(3, 4), [0, 1, 2])]:
        cands = _merge(kpush.init_candidates(3, k), z, protos, ids, allowed)
        assert list(kpush.greedy_assign(jax.device_get(cands)).image) == expect


def test_exact_candidate_count_validates():
    assert kpush.exact_candidate_count(10) == 10
    assert kpush.exact_candidate_count(10, 4) == 4
    with pytest.raises(ValueError):
        kpush.exact_candidate_count(0)
