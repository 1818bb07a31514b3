"""CIPL push on a tiny synthetic set (sharded stream vs brute force), atlas and explanation."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from jaxproto.core import parallel
from jaxproto.core.method import ExplainRequest
from jaxproto.data.synthetic import synthetic_index
from jaxproto.methods.cipl import candidates, config
from jaxproto.methods.cipl import push as cpush
from jaxproto.methods.cipl.method import CiplMethod


@pytest.fixture(scope="module")
def setup():
    cfg = config.get_config("chestxray14", "synthetic")
    cfg.model.update(image_size=64, prototypes_per_class=2, proto_dim=8)
    cfg.data.update(num_train=12, num_test=4, image_size=64)
    cfg.train.push_batch_size = 8
    index = synthetic_index(cfg.data)
    method = CiplMethod(cfg, index)
    state = jax.jit(method.init)(jax.random.key(1))
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    state = jax.device_put(state, parallel.replicated(mesh))  # as the trainer holds it
    return method, state, mesh


def _brute_force(method, state, records):
    """Spec §4 literally, on embeddings computed one image at a time."""
    imgs = np.stack([method.eval_example(r)["image"] for r in records])
    emb = np.asarray(jax.jit(method.apply_eval)(state, imgs)["embeddings"], np.float64)
    protos = np.asarray(state["params"]["prototype_vectors"], np.float64)
    ppc = method.config.model.prototypes_per_class
    used, out = set(), []
    for j in range(protos.shape[0]):
        cands = []
        for i, r in enumerate(records):
            if r.labels[j // ppc] > 0:
                d = ((emb[i] - protos[j]) ** 2).sum(-1).reshape(-1)
                cands.append((d.min(), i, int(d.argmin())))
        chosen = (-1, None)
        for _, i, loc in sorted(cands):
            if i not in used:
                used.add(i)
                chosen = (i, emb[i].reshape(-1, emb.shape[-1])[loc])
                break
        out.append(chosen)
    return out


def test_push_matches_brute_force_and_writes_atlas(setup, tmp_path):
    method, state, mesh = setup
    records = method.index.split("train")
    ref = _brute_force(method, state, records)
    stream = cpush.trainer_stream(method, mesh)
    new_state, entries = cpush.push_prototypes(method, state, records, stream, mesh, str(tmp_path))
    protos = np.asarray(new_state["params"]["prototype_vectors"])
    old = np.asarray(state["params"]["prototype_vectors"])
    ids = {e["prototype_id"]: e for e in entries}
    for j, (img, vec) in enumerate(ref):
        if img < 0:
            np.testing.assert_array_equal(protos[j], old[j])
            assert j not in ids
        else:
            np.testing.assert_allclose(protos[j], vec, rtol=1e-4, atol=1e-5)
            assert ids[j]["source_image_id"] == records[img].image_id
    assert any(img >= 0 for img, _ in ref)
    # The atlas maps (recomputed in pass 2) are the new prototypes' maps on their sources.
    cands = cpush.find_candidates(method, state, records, stream, mesh, 8)
    assignment = candidates.greedy_assign(cands)
    _, maps = cpush.winning_patches(method, state, records, assignment, stream, mesh, 8)
    for j, img in enumerate(assignment.image):
        if img >= 0:
            x = method.eval_example(records[int(img)])["image"][None]
            want = np.asarray(jax.jit(method.apply_eval)(new_state, x)["distances"])[0, :, :, j]
            np.testing.assert_allclose(maps[j], want, rtol=1e-4, atol=1e-5)
    assert os.path.isfile(tmp_path / "atlas.json") and os.path.isfile(tmp_path / "atlas.html")
    for e in entries:
        assert os.path.isfile(tmp_path / e["image"]) and os.path.isfile(
            tmp_path / e["contour_image"]
        )

    rec = method.index.split("test")[0]
    out_dir = tmp_path / "explain"
    epoch_dir = tmp_path / "push" / "3"  # a workdir layout: <workdir>/push/<epoch>/
    os.makedirs(epoch_dir)
    for name in ["atlas.json"] + [e["image"] for e in entries]:
        os.rename(tmp_path / name, epoch_dir / name)
    files = method.explain(
        new_state,
        ExplainRequest(rec.path, str(out_dir), str(tmp_path), boxes=((4, 4, 20, 20),)),
    )
    assert files == {
        "html": str(out_dir / "report.html"),
        "json": str(out_dir / "explanation.json"),
    }
    result = json.loads((out_dir / "explanation.json").read_text())
    assert set(result["probabilities"]) == {method.index.class_names[k] for k in method.fg_eval}
    assert result["predicted"] and os.path.isfile(out_dir / "report.html")
    assert result["atlas"] == str(tmp_path / "push" / "3")
    for p in result["predicted"]:
        for item in p["prototypes"]:
            assert os.path.isfile(out_dir / item["figure"])
            np.testing.assert_allclose(
                item["contribution"], item["weight"] * item["similarity"], rtol=1e-6
            )
