"""Atlas pruning with a task-head re-fit on cached similarity scores (issue #15 item 2)."""

import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.data.records import Record
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
    raw, concepts, labels = render_uint8(np.random.default_rng(3), 8, marker_on_class=1)
    train = _records(str(tmp_path), raw, concepts, labels, "tr")
    method, _ = _build_method(labels, concepts)
    state = method.init(jax.random.key(1))
    x = jnp.asarray(np.stack([method.eval_example(r)["image"] for r in train]))

    def patches(mdl, x):
        f = mdl.features(x)
        b, h, w, c = f.shape
        return mdl.projector(f.reshape(b, h * w, c), None, False).reshape(b, h, w, -1)

    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    p = np.asarray(method.model.apply(variables, x, method=patches))  # (8, 6, 6, D), 4 px cells
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
