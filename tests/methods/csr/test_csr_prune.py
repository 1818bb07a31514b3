"""Atlas pruning with a task-head re-fit on cached similarity scores (issue #15 item 2)."""

import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxproto.data.records import Record
from jaxproto.methods.csr import atlas as atlas_lib
from jaxproto.methods.csr import prune
from tests.methods.csr.hans_model import _build_method, render_uint8


def _records(folder, raw, concepts, labels, prefix):
    out = []
    for i, img in enumerate(raw):
        path = os.path.join(folder, f"{prefix}{i}.png")
        cv2.imwrite(path, np.ascontiguousarray(img[..., ::-1]))
        out.append(
            Record(
                f"{prefix}{i}", path, np.eye(2, dtype=np.float32)[labels[i]], concepts=concepts[i]
            )
        )
    return out


def _tiny_model_and_patches(tmp_path, n):
    """The untrained tiny model on ``n`` rendered training images, with their eval inputs x
    and projected patches P(f(h, w)) (n, 6, 6, D)."""
    raw, concepts, labels = render_uint8(np.random.default_rng(3), n, marker_on_class=1)
    train = _records(str(tmp_path), raw, concepts, labels, "tr")
    method, _ = _build_method(labels, concepts)
    state = method.init(jax.random.key(1))
    x = jnp.asarray(np.stack([method.eval_example(r)["image"] for r in train]))

    def patches(mdl, x):
        f = mdl.features(x)
        b, h, w, c = f.shape
        return mdl.projector(f.reshape(b, h * w, c), None, False).reshape(b, h, w, -1)

    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    p = np.asarray(method.model.apply(variables, x, method=patches))
    return method, state, train, concepts, labels, x, p


def test_prune_masks_and_refits_only_the_head(tmp_path):
    raw, concepts, labels = render_uint8(np.random.default_rng(0), 24, marker_on_class=1)
    train = _records(str(tmp_path), raw[:16], concepts[:16], labels[:16], "tr")
    test = _records(str(tmp_path), raw[16:], concepts[16:], labels[16:], "te")
    method, _ = _build_method(labels[:16], concepts[:16])
    method.config.train.batch_size = 8
    state = method.init(jax.random.key(0))
    new_state, record = prune.prune(method, state, [1, 6], train, test, by="tester")

    mask = np.asarray(new_state["extra"]["proto_mask"])
    assert mask[0, 1] == 0 and mask[1, 2] == 0 and mask.sum() == 6
    assert record["removed"] == [1, 6] and record["by"] == "tester" and record["at"].endswith("Z")
    assert record["before"]["num_prototypes"] == 8 and record["after"]["num_prototypes"] == 6
    for key in ("macro_f1", "pointing_game_grid"):
        assert key in record["after"] or key not in record["before"]
    # Only the task head changed ...
    for name in ("backbone", "concept_head", "projector", "prototypes"):
        for a, b in zip(
            jax.tree.leaves(state["params"][name]),
            jax.tree.leaves(new_state["params"][name]),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and it fits the masked training scores better than before (its training objective).
    cache = prune.CachedScores(method, state, train)
    s = jnp.asarray(cache.scores(mask))
    y = jnp.asarray(labels[:16])

    def ce(st):
        h = st["params"]["task_head"]
        return float(
            optax.softmax_cross_entropy_with_integer_labels(s @ h["kernel"] + h["bias"], y).mean()
        )

    assert ce(new_state) < ce(state)
    # The cached scores are the max of each prototype's map, pruned ones zero (numpy reference).
    ref = np.asarray(cache.sims).max(axis=(-2, -1)) * mask
    np.testing.assert_allclose(np.asarray(s), ref.reshape(16, -1), rtol=1e-6)


def test_prototypes_in_box_finds_the_atlas_patches_in_the_box(tmp_path):
    """Prototypes set to the projected patch of a chosen cell of their atlas image (cosine 1
    there): exactly those whose cell the box touches are found; unlinked ones never."""
    method, state, train, concepts, labels, x, p = _tiny_model_and_patches(tmp_path, 8)
    # p: (8, 6, 6, D) projected patches, 4 px cells
    # (concept, prototype) -> (atlas image, row, col); rows are y, columns x.
    chosen = {(0, 0): (2, 0, 1), (0, 1): (3, 1, 4), (1, 0): (5, 4, 0), (1, 3): (6, 1, 1)}
    protos = np.asarray(state["params"]["prototypes"]).copy()
    atlas = np.full(protos.shape[:2], -1, np.int32)
    for (k, m), (i, r, c) in chosen.items():
        protos[k, m] = p[i, r, c]
        atlas[k, m] = i
    state = {
        **state,
        "params": {**state["params"], "prototypes": jnp.asarray(protos)},
        "extra": {**state["extra"], "atlas_index": jnp.asarray(atlas)},
    }
    m_count = protos.shape[1]
    # Box x 0..8, y 0..8 touches rows 0-1 and columns 0-1 (cells of 4 px).
    found = prune.prototypes_in_box(method, state, train, (0.0, 0.0, 8.0, 8.0))
    assert found == [0 * m_count + 0, 1 * m_count + 3]
    # x 16..20, y 4..8: column 4, row 1 only (catches a row/column swap: (5, 4, 0) is not in it).
    found = prune.prototypes_in_box(method, state, train, (16.0, 4.0, 4.0, 4.0))
    assert found == [0 * m_count + 1]
    # A margin: also the prototypes whose map in the box comes that close to their maximum
    # (numpy reference on the same maps).
    sims = prune.CachedScores(method, state, train).sims
    box_max = {km: sims[i, km[0], km[1], 1, 4] for km, (i, _, _) in chosen.items()}
    peak = {km: sims[i, km[0], km[1]].max() for km, (i, _, _) in chosen.items()}
    margin = 0.5 * max(peak[km] - box_max[km] for km in chosen)
    want = sorted(k * m_count + m for (k, m) in chosen if box_max[k, m] >= peak[k, m] - margin)
    found = prune.prototypes_in_box(method, state, train, (16.0, 4.0, 4.0, 4.0), margin)
    assert found == want and 0 * m_count + 1 in found and len(found) < len(chosen)


def test_studio_prune_cli_writes_the_record_and_the_mask_only_export(tmp_path):
    """``studio --prune ... --mask_only`` on an export: the new export masks the ids, records
    them (and both metric sets) and keeps the export's own head (the re-fit's head is what the
    library test above checks)."""
    from jaxproto import inference, studio
    from jaxproto.common.errors import UserError
    from jaxproto.core import workdir
    from jaxproto.data import registry
    from jaxproto.data.records import BadSampleReport
    from jaxproto.methods.csr import config as csr_config
    from jaxproto.methods.csr.method import CsrMethod

    config = csr_config.get_config("tbx11k", "synthetic,image_size=32")
    config.model.prototypes_per_concept, config.model.proj_dim = 3, 8
    config.data.update({"num_train": 16, "num_test": 8, "num_val": 0})
    config.train.batch_size = 8
    config.optim.stage3.epochs = 1.0
    index = registry.load_index(config.data, BadSampleReport("error"))
    method = CsrMethod(config, index)
    src = str(tmp_path / "export")
    inference.write_export(src, config, workdir.dataset_meta(index), method.init(jax.random.key(0)))
    _, _, original = inference.load_for_inference(export=src)

    out = str(tmp_path / "pruned")
    argv = ["--export", src, "--prune", "4,0", "--out", out, "--by", "t", "--mask_only"]
    assert studio.main(argv) == 0
    record = json.load(open(os.path.join(out, "pruning.json")))
    assert record["removed"] == [0, 4] and record["by"] == "t" and record["source"] == src
    assert record["exported"] == "mask_only" and {"before", "mask_only", "after"} <= set(record)
    saved, _, state = inference.load_for_inference(export=out)
    assert list(saved.refine.prune) == [0, 4]
    mask = np.asarray(state["extra"]["proto_mask"])
    assert mask[0, 0] == 0 and mask[1, 1] == 0 and mask.sum() == mask.size - 2
    np.testing.assert_array_equal(
        np.asarray(state["params"]["task_head"]["kernel"]),
        np.asarray(original["params"]["task_head"]["kernel"]),
    )
    # --prune_marker with the default atlas_share rule records the rule, its settings and the
    # share of every prototype it selected; --prune_margin belongs to the argmax rule.
    out2 = str(tmp_path / "pruned_marker")
    argv = ["--export", src, "--prune", "1", "--prune_marker", "0,0,8,8", "--out", out2]
    assert studio.main([*argv, "--prune_top", "2", "--prune_share", "0.5"]) == 0
    record = json.load(open(os.path.join(out2, "pruning.json")))
    sel = record["selection"]
    assert sel["rule"] == "atlas_share" and sel["box"] == [0.0, 0.0, 8.0, 8.0]
    assert (sel["top_n"], sel["min_share"], sel["tolerance"]) == (2, 0.5, 0.05)
    assert all(float(v) >= 0.5 for v in sel["share"].values())
    assert set(record["removed"]) == {1} | {int(i) for i in sel["share"]}
    with pytest.raises(UserError, match="--prune_margin is for --prune_rule argmax"):
        studio.main([*argv[:-1], str(tmp_path / "p3"), "--prune_margin", "0.1"])


def test_top_atlas_is_the_sorted_top_n_over_images_with_the_concept():
    """Streamed in uneven batches, equal to sorting every prototype's cosines over the images
    that show its concept (numpy loop; ties to the earlier record); slot 0 = Eq. 11's image."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(23, 3, 5))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)  # unit v', as the projector gives
    v[7] = v[2]  # an exact tie: record 2 must come first
    present = rng.random((23, 3)) < 0.5
    present[:, 2] = False
    present[[2, 7, 9], 2] = True  # concept 2: only 3 images for n = 4
    protos = rng.normal(size=(3, 2, 5))
    top = atlas_lib.TopAtlas(protos, 4)
    builder = atlas_lib.AtlasBuilder(protos)
    for lo, hi in ((0, 5), (5, 6), (6, 23)):
        top.add(v[lo:hi], present[lo:hi], np.arange(lo, hi))
        builder.add(v[lo:hi], present[lo:hi], np.arange(lo, hi))
    for k in range(3):
        for m in range(2):
            p = protos[k, m] / np.linalg.norm(protos[k, m])
            cos = [
                (-(v[i, k] @ p) / np.linalg.norm(v[i, k]), i) for i in range(23) if present[i, k]
            ]
            want = [i for _, i in sorted(cos)][:4]
            want += [-1] * (4 - len(want))
            assert top.index[k, m].tolist() == want, (k, m)
    np.testing.assert_array_equal(top.index[..., 0], builder.result()["atlas_index"])


def test_box_cells_takes_cells_the_box_covers_at_least_half():
    """Against counting the box's pixels in each 4x4-px cell of a 24-px input (6x6 grid)."""

    def reference(x, y, w, h):
        pix = np.zeros((24, 24))
        pix[y : y + h, x : x + w] = 1
        cover = pix.reshape(6, 4, 6, 4).mean(axis=(1, 3))
        return cover >= 0.5 if (cover >= 0.5).any() else cover == cover.max()

    for box in (
        (0, 0, 5, 5),
        (0, 0, 6, 6),
        (1, 1, 2, 2),
        (3, 3, 2, 2),
        (10, 2, 9, 3),
        (4, 8, 4, 4),
    ):
        got = prune.box_cells(tuple(float(b) for b in box), (6, 6), (24, 24))
        np.testing.assert_array_equal(got, reference(*box), err_msg=str(box))
    # x runs along columns: a wide flat box takes cells of one row.
    assert prune.box_cells((0.0, 0.0, 24.0, 4.0), (6, 6), (24, 24)).sum(axis=1).tolist() == [
        6,
        0,
        0,
        0,
        0,
        0,
    ]
    with pytest.raises(prune.interact.InteractionError, match="outside"):
        prune.box_cells((30.0, 0.0, 4.0, 4.0), (6, 6), (24, 24))


def test_marker_share_counts_atlas_maps_that_come_near_their_peak_in_the_box():
    """numpy loop reference: per map, (max over the cells - min) / (max - min) >= 1 - tol."""
    rng = np.random.default_rng(1)
    maps = rng.uniform(-1, 1, size=(2, 3, 5, 4, 4))
    maps[0, 0, :, 0, 0] = 2.0  # peak in the box on every image: share 1
    maps[1, 2, 1] = 0.3  # a constant map fires nowhere
    valid = np.ones((2, 3, 5), bool)
    valid[0, 1, 3:] = False  # two atlas slots empty
    valid[1, 0] = False  # no atlas image at all
    cells = np.zeros((4, 4), bool)
    cells[0, :2] = True
    for tol in (0.0, 0.1, 0.3):
        want = np.zeros((2, 3))
        for k in range(2):
            for m in range(3):
                fired = []
                for j in range(5):
                    if not valid[k, m, j]:
                        continue
                    a = maps[k, m, j]
                    fired.append(
                        a.max() > a.min() and (a[cells].max() - a.min()) >= (1 - tol) * np.ptp(a)
                    )
                want[k, m] = np.mean(fired) if fired else 0.0
        got = prune.marker_share(maps, valid, cells, tol)
        np.testing.assert_allclose(got, want, err_msg=f"tolerance {tol}")
    assert got[0, 0] == 1.0 and got[1, 0] == 0.0


def test_prototypes_on_marker_matches_a_numpy_reference(tmp_path):
    """The tiny model with two prototypes set to the marker patch of two marked training images:
    ids and shares equal a numpy reference built from the model's own v' and maps over the whole
    training split (top-n by cosine, cells per ``box_cells``, ``marker_share``'s rule), and the
    marker prototypes are among those found."""
    method, state, train, concepts, labels, x, p = _tiny_model_and_patches(tmp_path, 12)
    marked = [i for i in range(12) if labels[i] == 1 and concepts[i, 0] > 0.5]
    protos = np.asarray(state["params"]["prototypes"]).copy()
    protos[0, 2] = p[marked[0], 0, 0]
    protos[0, 3] = p[marked[1], 0, 0]
    state = {**state, "params": {**state["params"], "prototypes": jnp.asarray(protos)}}
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    out = method.model.apply(variables, x)
    v, sims = np.asarray(out["v_proj"], np.float64), np.asarray(out["sims"], np.float64)

    box, n, tol = (0.0, 0.0, 5.0, 5.0), 3, 0.05
    cells = np.zeros((6, 6), bool)
    cells[0, 0] = True  # 0..5 px covers cell (0, 0) fully, its neighbours 1/4: only (0, 0)
    want = np.zeros(protos.shape[:2])
    for k in range(protos.shape[0]):
        for m in range(protos.shape[1]):
            pk = protos[k, m] / np.linalg.norm(protos[k, m])
            idx = [i for i in range(12) if concepts[i, k] > 0.5]
            cos = [v[i, k] @ pk / np.linalg.norm(v[i, k]) for i in idx]
            top = [idx[j] for j in np.argsort(cos, kind="stable")[::-1][:n]]
            fired = []
            for i in top:
                a = sims[i, k, m]
                fired.append((a[cells].max() - a.min()) >= (1 - tol) * np.ptp(a))
            want[k, m] = np.mean(fired) if fired else 0.0
    ids, share = prune.prototypes_on_marker(method, state, train, box, n, tol, 0.5)
    np.testing.assert_allclose(share, want, atol=1e-6)
    m_count = protos.shape[1]
    assert ids == [k * m_count + m for k, m in zip(*np.nonzero(want >= 0.5), strict=True)]
    assert {2, 3} <= set(ids) and len(ids) < protos.size
