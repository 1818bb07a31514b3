"""Atlas pruning with a task-head re-fit on cached similarity scores (issue #15 item 2)."""

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
