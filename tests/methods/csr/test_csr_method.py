"""CsrMethod phases (frozen groups per stage), pruning, atlas and evaluation (specs/csr.md §5–8)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import csr_tbx11k
from jaxproto.core.metrics import box_to_grid
from jaxproto.data.records import Box, DatasetIndex, Record
from jaxproto.methods.csr import atlas, evaluate
from jaxproto.methods.csr.method import CsrMethod, prune_prototypes


class TinyBackbone(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(8, (3, 3), strides=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return {"layer3": nn.Conv(8, (3, 3), strides=2)(x)}


def _index(n=8, k=3):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        c = (rng.random(k) < 0.5).astype(np.float32)
        c[i % k] = 1.0
        recs.append(
            Record(
                f"r{i}",
                f"/nonexistent/{i}.png",
                np.eye(2, dtype=np.float32)[i % 2],
                concepts=c,
                size=(16, 16),
            )
        )
    return DatasetIndex(
        "toy",
        ["a", "b"],
        {"train": recs, "test": recs},
        multilabel=False,
        concept_names=[f"c{j}" for j in range(k)],
    )


@pytest.fixture(scope="module")
def setup():
    cfg = csr_tbx11k.get_config("synthetic")
    cfg.model.image_size = 16
    cfg.model.prototypes_per_concept = 4
    cfg.model.proj_dim = 8
    index = _index()
    method = CsrMethod(cfg, index, backbone=TinyBackbone())
    state = method.init(jax.random.key(0))
    opts = method.optimizers(steps_per_epoch=2)
    state["opt"] = {name: tx.init(state["params"]) for name, tx in opts.items()}
    recs = index.split("train")
    batch = {
        "image": jax.random.normal(jax.random.key(1), (8, 16, 16, 3)),
        "concepts": jnp.asarray(np.stack([r.concepts for r in recs])),
        "label": jnp.asarray([i % 2 for i in range(8)], jnp.int32),
    }
    return method, state, opts, batch


def _step(method, state, opts, batch, phase):
    (loss, (metrics, upd)), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state["params"], state, batch, jax.random.key(0), phase
    )
    u, _ = opts[phase.optimizer].update(grads, state["opt"][phase.optimizer], state["params"])
    return optax.apply_updates(state["params"], u), upd, loss, metrics


def _changed(a, b):
    return {
        k: not all(
            np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k]), strict=True)
        )
        for k in a
    }


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_each_phase_trains_only_its_groups(setup, stage):
    method, state, opts, batch = setup
    phase = {p.optimizer: p for p in method.phases()}[f"stage{stage + 1}"]
    params, upd, loss, metrics = _step(method, state, opts, batch, phase)
    assert np.isfinite(float(loss))
    changed = _changed(params, state["params"])
    # The synthetic config standardises the head input (model.head_input_bn): stage 3 trains it.
    head = {"task_head", "head_bn"}
    want = [{"backbone", "concept_head"}, {"projector", "prototypes"}, head][stage]
    assert {k for k, v in changed.items() if v} == want
    # The returned batch_stats is the full tree; only the trained stage's statistics move.
    bs_changed = _changed(upd["batch_stats"], state["batch_stats"])
    assert set(upd["batch_stats"]) == set(state["batch_stats"])
    moved = [{"backbone"}, {"projector"}, {"head_bn"}][stage]
    assert {k for k, v in bs_changed.items() if v} == moved


def test_phases_and_config_validation(setup):
    method = setup[0]
    # One phase per stage-2 epoch (each ends with the usage/revival hook; the last adds the atlas).
    epochs = int(method.config.optim.stage2.epochs)
    names = ["concepts", *[f"prototypes_{e}" for e in range(1, epochs + 1)], "task_head"]
    assert [p.name for p in method.phases()] == names
    assert {p.optimizer for p in method.phases()[1:-1]} == {"stage2"}
    assert [len(p.after) for p in method.phases()[1:-1]] == [1] * (epochs - 1) + [2]
    cfg = csr_tbx11k.get_config("synthetic")
    cfg.loss.margin_mode = "minus"
    with pytest.raises(ValueError, match="margin_mode"):
        CsrMethod(cfg, _index(), backbone=TinyBackbone())
    bad = _index()
    bad.concept_names = []
    with pytest.raises(ValueError, match="concept"):
        CsrMethod(csr_tbx11k.get_config("synthetic"), bad, backbone=TinyBackbone())


def test_prune_masks_scores_in_predict(setup):
    method, state, _, batch = setup
    pruned = prune_prototypes(state, [0, 1, 2, 3, 5])
    mask = np.asarray(pruned["extra"]["proto_mask"])
    assert mask[0].sum() == 0 and mask[1, 1] == 0 and mask.sum() == 12 - 5
    out = method.predict(pruned, batch)
    assert float(out["alive_prototypes"][0]) == 7
    np.testing.assert_array_equal(np.asarray(out["concept_maps"])[:, 0], -1.0)
    with pytest.raises(ValueError, match="out of range"):
        prune_prototypes(state, [12])


def test_atlas_builder_matches_brute_force():
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(2, 3, 4))
    v = rng.normal(size=(10, 2, 4))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    present = rng.random((10, 2)) < 0.6
    b = atlas.AtlasBuilder(protos)
    for s in (slice(0, 4), slice(4, 10)):
        b.add(v[s], present[s], np.arange(10)[s])
    res = b.result()
    pn = protos / np.linalg.norm(protos, axis=-1, keepdims=True)
    for k in range(2):
        rows = np.flatnonzero(present[:, k])
        for m in range(3):
            cos = v[rows, k] @ pn[k, m]
            assert res["atlas_index"][k, m] == rows[np.argmax(cos)]
            np.testing.assert_allclose(res["atlas_score"][k, m], cos.max(), rtol=1e-6)
        nearest = np.argmax(v[rows, k] @ pn[k].T, axis=1)
        np.testing.assert_array_equal(res["hit_count"][k], np.bincount(nearest, minlength=3))


def test_pointing_game_protocols():
    # One 4x4 map per (image, concept) on a 64 px input (16 px cells).
    maps = np.zeros((2, 2, 4, 4), np.float32)
    maps[0, 0, 1, 2] = 1.0  # cell centre ~ (x=40, y=24)
    maps[1, 1, 3, 0] = 1.0  # cell centre ~ (x=8, y=56)
    recs = [
        Record("a", "", np.eye(2)[0], boxes=(Box(0, 34, 18, 10, 10, True),), size=(32, 32)),
        Record("b", "", np.eye(2)[1], boxes=(Box(1, 60, 0, 4, 4, True),), size=(64, 64)),
    ]
    # Record a's box (size 32 -> 64) is x 68..88: 28+ px right of the peak -> miss at 15 px.
    out = evaluate.pointing_game(maps, recs, 64, tolerance_px=15.0)
    assert out["pointing_count"] == 2 and out["pointing_game"] == 0.0
    recs[0] = Record("a", "", np.eye(2)[0], boxes=(Box(0, 17, 9, 5, 5, True),), size=(32, 32))
    out = evaluate.pointing_game(maps, recs, 64, tolerance_px=15.0)
    # a: box 34..44 x 18..28 contains the upsampled peak and touches cell (1, 2) -> hit both.
    # b: peak near (8, 56), box 60..64 x 0..4 is ~70 px away -> miss both.
    assert out["pointing_game"] == 0.5 and out["pointing_game_grid"] == 0.5
    far = evaluate.pointing_game(maps, recs, 64, tolerance_px=80.0)
    assert far["pointing_game"] == 1.0 and far["pointing_game_grid"] == 0.5


def test_box_to_grid_floor_ceil_clamped():
    # (c0, c1, r0, r1) on a 7x7 grid over 224 px: 32 px cells (spec pitfall 9).
    assert box_to_grid((40, 0, 60, 10), (224, 224), (7, 7), keep_one_cell=True) == (1, 4, 0, 1)
    assert box_to_grid((220, 220, 30, 30), (224, 224), (7, 7), keep_one_cell=True) == (6, 7, 6, 7)
    # Outside the image: CSR's evaluation keeps the nearest border cell, the default is empty.
    assert box_to_grid((230, 0, 5, 5), (224, 224), (7, 7), keep_one_cell=True) == (6, 7, 0, 1)
    assert box_to_grid((230, 0, 5, 5), (224, 224), (7, 7)) == (7, 7, 0, 1)


def test_pointing_tolerance_is_euclidean():
    # Peak cell centre (x=40, y=40) on a 64 px input; box corner at (50, 50): 14.1 px away on
    # the diagonal, so a hit at 15 px (Zhang et al.'s distance), a miss at 10 px.
    maps = np.zeros((1, 1, 4, 4), np.float32)
    maps[0, 0, 2, 2] = 1.0
    rec = Record("a", "", np.eye(2)[0], boxes=(Box(0, 50, 50, 10, 10, True),), size=(64, 64))
    up_peak = evaluate.upsample(maps[0, 0], 64).argmax()
    r, c = divmod(int(up_peak), 64)
    d = np.hypot(max(50 - (c + 0.5), 0), max(50 - (r + 0.5), 0))
    for tol in (10.0, 15.0, 20.0):
        got = evaluate.pointing_game(maps, [rec], 64, tolerance_px=tol)["pointing_game"]
        assert got == float(d <= tol), (tol, d)


@pytest.mark.parametrize("mode", ["mask", "mask_retrain"])
def test_refine_prunes_before_or_after_head_training(setup, mode):
    method0, state = setup[0], setup[1]
    cfg = method0.config.copy_and_resolve_references()
    cfg.refine.mode, cfg.refine.prune = mode, [1, 6]
    method = CsrMethod(cfg, _index(), backbone=TinyBackbone())
    head = method.phases()[-1]
    hooks = head.before if mode == "mask_retrain" else head.after
    other = head.after if mode == "mask_retrain" else head.before
    assert len(hooks) == 1 and not other
    mask = np.asarray(hooks[0](None, state)["extra"]["proto_mask"])
    assert mask[0, 1] == 0 and mask[1, 2] == 0 and mask.sum() == 10
