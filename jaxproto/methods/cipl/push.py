"""CIPL push (cipl.md §4): project each prototype onto its nearest class-restricted training
patch, greedily and without reusing a source image, then write the prototype atlas.

One streaming pass over the training split (eval transform, eval-mode BN) merges each sharded
batch into per-prototype top-k candidate lists (``jaxproto.kernels.push``); the lists are
gathered to the host, assigned greedily, and the chosen embeddings replace the prototypes.
Artefacts go to ``<workdir>/push/<epoch>/``: per prototype a PNG with the log-activation
overlay and one with the >= 0.65 contour, ``atlas.json`` and ``atlas.html``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxproto.core import parallel
from jaxproto.core.method import State
from jaxproto.data.records import Record
from jaxproto.kernels import push as kpush
from jaxproto.kernels.prototypes import log_similarity

log = logging.getLogger(__name__)


def _gather(tree):
    """Replicated global arrays -> numpy on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _batches(
    method, records: Sequence[Record], mesh, batch_size: int
) -> Iterator[tuple[np.ndarray, dict]]:
    """(record ids with -1 for padding, global batch) over ``records`` in order."""
    from jaxproto.core.parallel import device_multiple
    from jaxproto.data import pipeline

    batch_size = device_multiple(batch_size, mesh)
    it = pipeline.make_eval_batches(
        records,
        method.eval_example,
        batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for idx, local, valid in it:
        ids = np.where(valid, idx, -1).astype(np.int32)
        local = {"image": local["image"], "labels": local["labels"], "ids": ids}
        yield ids, parallel.global_batch(local, mesh)


def find_candidates(
    method, state: State, records: Sequence[Record], mesh, batch_size: int, k: int = 0
) -> kpush.Candidates:
    """One pass over ``records``: per-prototype top-k class-restricted nearest patches."""
    num_p = method.identity.shape[0]
    k = k or kpush.exact_candidate_count(num_p, len(records))
    identity = jnp.asarray(method.identity)
    repl = parallel.replicated(mesh)

    def step(state, batch, cands):
        out = method.apply_eval(state, batch["image"])
        allowed = (batch["labels"] @ identity.T) > 0  # image has the prototype's class
        return kpush.merge_candidates(
            cands, out["distances"], out["embeddings"], batch["ids"], allowed
        )

    step = jax.jit(step, out_shardings=repl)
    cands = jax.device_put(kpush.init_candidates(num_p, k, method.model.proto_dim), repl)
    for _, batch in _batches(method, records, mesh, batch_size):
        cands = step(state, batch, cands)
    return kpush.Candidates(*_gather(tuple(cands)))


def apply_assignment(state: State, assignment: kpush.Assignment) -> State:
    """Prototype j <- its assigned embedding (unchanged where nothing was assigned)."""
    old = state["params"]["prototype_vectors"]
    new = np.array(_gather(old), np.float32)
    hit = assignment.image >= 0
    new[hit] = assignment.embedding[hit]
    sharding = getattr(old, "sharding", None)
    value = jax.device_put(new, sharding) if sharding is not None else jnp.asarray(new)
    return {**state, "params": {**state["params"], "prototype_vectors": value}}


def _distance_maps(
    method, state: State, records: Sequence[Record], mesh, batch_size: int
) -> np.ndarray:
    """Eval-mode distance maps (N, h, w, P) for a few records (the push sources)."""
    fn = jax.jit(
        lambda s, b: method.apply_eval(s, b["image"])["distances"],
        out_shardings=parallel.replicated(mesh),
    )
    parts = []
    for ids, batch in _batches(method, records, mesh, batch_size):
        parts.append(np.asarray(_gather(fn(state, batch)))[ids >= 0])
    return np.concatenate(parts)


def write_atlas(
    method,
    state: State,
    records: Sequence[Record],
    assignment: kpush.Assignment,
    out_dir: str,
    mesh,
    batch_size: int,
    is_main: bool,
) -> list[dict]:
    """Per-prototype overlay/contour PNGs plus atlas.json/atlas.html (main process writes)."""
    from jaxproto.data.images import load_image
    from jaxproto.viz import atlas, overlays

    chosen = sorted({int(i) for i in assignment.image if i >= 0})
    if not chosen:
        log.warning("push: no prototype was assigned; no atlas written")
        return []
    maps = _distance_maps(method, state, [records[i] for i in chosen], mesh, batch_size)
    row_of = {img: r for r, img in enumerate(chosen)}
    size = int(method.config.model.image_size)
    names = method.index.class_names
    ppc = int(method.config.model.prototypes_per_class)
    entries = []
    for j, img_id in enumerate(assignment.image):
        if img_id < 0:
            continue
        rec = records[int(img_id)]
        dmap = maps[row_of[int(img_id)], :, :, j]
        act = np.asarray(log_similarity(dmap))
        h, w = divmod(int(assignment.location[j]), dmap.shape[1])
        entry = {
            "prototype_id": j,
            "class_name": names[j // ppc],
            "source_image_id": rec.image_id,
            "source_path": rec.path,
            "image": f"{j}_overlay.png",
            "contour_image": f"{j}_contour.png",
            "location": [h, w],
            "distance": float(assignment.distance[j]),
        }
        if is_main:
            import cv2

            image = cv2.resize(load_image(rec.path), (size, size), interpolation=cv2.INTER_LINEAR)
            overlays.save_png(
                os.path.join(out_dir, entry["image"]),
                overlays.heatmap_overlay(image, act, alpha=0.3, grid=method.grid),
            )
            overlays.save_png(
                os.path.join(out_dir, entry["contour_image"]),
                overlays.draw_contour(image, act, level=0.65, grid=method.grid),
            )
        entries.append(entry)
    if is_main:
        atlas.write_atlas(out_dir, entries, title="CIPL prototype atlas")
    return entries


def push_prototypes(
    method, state: State, records: Sequence[Record], mesh, out_dir: str, is_main: bool = True
) -> tuple[State, list[dict]]:
    """Full push: candidates -> greedy assignment -> new prototypes -> atlas."""
    t = method.config.train
    bs = int(t.push_batch_size)
    cands = find_candidates(method, state, records, mesh, bs, int(t.get("push_candidates", 0)))
    assignment = kpush.greedy_assign(cands)
    missing = int(np.sum(assignment.image < 0))
    if missing:
        log.warning(
            "push: %d prototypes had no unused image of their class; left unchanged", missing
        )
    state = apply_assignment(state, assignment)
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
    entries = write_atlas(method, state, records, assignment, out_dir, mesh, bs, is_main)
    return state, entries


def push_hook(ctx, state: State, *, method, epoch: int) -> State:
    """Phase ``after`` hook: push on the training split, artefacts in <workdir>/push/<epoch>/."""
    out_dir = os.path.join(ctx.workdir, "push", str(epoch))
    log.info("push at epoch %d -> %s", epoch, out_dir)
    state, _ = push_prototypes(
        method, state, ctx.index.split("train"), ctx.mesh, out_dir, ctx.is_main_process
    )
    return state
