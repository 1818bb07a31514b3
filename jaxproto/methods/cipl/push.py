"""CIPL push (cipl.md §4): project each prototype onto its nearest class-restricted training
patch, greedily and without reusing a source image, then write the prototype atlas.

Both passes run through the trainer's prediction stream (eval transform, eval-mode BN, sharded
batches). Pass 1 over the training split merges each batch into per-prototype top-k candidate
lists of (distance, image, location) (``candidates``: O(P·k) memory); the lists are gathered to
the host and assigned greedily. Pass 2 over the chosen images (at most one per prototype)
recomputes their embeddings, takes the winning patches as the new prototypes and each one's
distance map for the atlas.
Artefacts go to ``<workdir>/push/<epoch>/``: per prototype a PNG with the log-activation
overlay and one with the >= 0.65 contour, ``atlas.json`` and ``atlas.html``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxproto.core import parallel, trainer
from jaxproto.core.method import HookContext, State
from jaxproto.data.images import load_image
from jaxproto.data.records import Record
from jaxproto.kernels.prototypes import argmin_location, l2_distance_maps, log_similarity, min_pool
from jaxproto.methods.cipl import candidates as cand_lib
from jaxproto.viz import atlas, overlays, report

log = logging.getLogger(__name__)


def _gather(tree):
    """Replicated global arrays -> numpy on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


class Stream(Protocol):
    """The trainer's prediction stream (``core.trainer.stream_predictions`` bound to a method
    and mesh): ``predict_fn`` over ``records`` in order, yielding (record indices, outputs)."""

    def __call__(
        self,
        state: State,
        records: Sequence[Record],
        batch_size: int,
        predict_fn: Callable[[State, dict], dict],
    ) -> Iterator[tuple[np.ndarray, dict]]: ...


def trainer_stream(method, mesh: jax.sharding.Mesh, worker_count: int = 0) -> Stream:
    """``core.trainer.stream_predictions`` for ``method`` on ``mesh``."""

    def stream(state, records, batch_size, predict_fn):
        return trainer.stream_predictions(
            method, mesh, state, records, batch_size, worker_count, predict_fn=predict_fn
        )

    return stream


def _row_ids(idx: np.ndarray, rows: int) -> np.ndarray:
    """Record index per row of a streamed global batch; -1 for its padding rows."""
    ids = np.full((rows,), -1, np.int32)
    ids[: len(idx)] = idx
    return ids


class _Fns(NamedTuple):
    nearest: Callable  # (state, batch) -> min distances, locations, class restriction (B, P)
    merge: Callable  # (candidates, nearest's outputs, image ids) -> candidates
    embed: Callable  # (state, batch) -> embeddings (B, h, w, D)
    patches: Callable  # (embeddings, locations (B,)) -> patch vectors (B, D), their maps


@functools.lru_cache(maxsize=4)
def _compiled(method, mesh: jax.sharding.Mesh) -> _Fns:
    """The push's jitted functions, built once per (method, mesh) so a second push (and a
    benchmark's repetition) reuses the compiled code."""
    identity = jnp.asarray(method.identity)
    repl = parallel.replicated(mesh)

    def nearest(state, batch):
        dist = method.apply_eval(state, batch["image"])["distances"]
        return {
            "min_distances": min_pool(dist),
            "locations": argmin_location(dist),
            "allowed": (batch["labels"] @ identity.T) > 0,  # image has the prototype's class
        }

    def merge(cands, out, ids):
        return cand_lib.merge_candidates(
            cands, out["min_distances"], out["locations"], ids, out["allowed"]
        )

    def embed(state, batch):
        return {"embeddings": method.apply_eval(state, batch["image"])["embeddings"]}

    def patches(z, locations):
        vectors = cand_lib.patches_at(z, locations)
        one = lambda zi, vi: l2_distance_maps(zi[None], vi[None])[0, :, :, 0]  # noqa: E731
        return vectors, jax.vmap(one)(z, vectors)

    return _Fns(
        jax.jit(nearest, out_shardings=repl),
        jax.jit(merge, out_shardings=repl, donate_argnums=0),
        jax.jit(embed, out_shardings=repl),
        jax.jit(patches, out_shardings=repl),
    )


def find_candidates(
    method,
    state: State,
    records: Sequence[Record],
    stream: Stream,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    k: int = 0,
) -> cand_lib.Candidates:
    """Pass 1 over ``records``: per-prototype top-k class-restricted nearest patches, as
    (distance, image, location) only."""
    num_p = method.identity.shape[0]
    k = k or cand_lib.exact_candidate_count(num_p, len(records))
    fns = _compiled(method, mesh)
    repl = parallel.replicated(mesh)
    cands = jax.device_put(cand_lib.init_candidates(num_p, k), repl)
    for idx, out in stream(state, records, batch_size, fns.nearest):
        ids = _row_ids(idx, out["locations"].shape[0])
        cands = fns.merge(cands, out, jax.device_put(ids, repl))
    return cand_lib.Candidates(*_gather(tuple(cands)))


def winning_patches(
    method,
    state: State,
    records: Sequence[Record],
    assignment: cand_lib.Assignment,
    stream: Stream,
    mesh: jax.sharding.Mesh,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2 over the chosen images only (each serves one prototype): the winning patches'
    embeddings (P, D) (zeros where nothing was assigned) and, for the atlas, each assigned
    prototype's eval-mode distance map to its new vector (P, h, w)."""
    chosen = np.flatnonzero(assignment.image >= 0)  # prototypes, by their source image order
    chosen = chosen[np.argsort(assignment.image[chosen], kind="stable")]
    repl = parallel.replicated(mesh)
    fns = _compiled(method, mesh)
    dim = int(method.model.proto_dim)
    vectors = np.zeros((assignment.image.shape[0], dim), np.float32)
    maps = None
    sources = [records[int(assignment.image[j])] for j in chosen]
    for idx, out in stream(state, sources, batch_size, fns.embed):
        rows = out["embeddings"].shape[0]
        locs = np.zeros((rows,), np.int32)
        locs[: len(idx)] = assignment.location[chosen[idx]]
        v, m = _gather(fns.patches(out["embeddings"], jax.device_put(locs, repl)))
        if maps is None:
            maps = np.zeros((assignment.image.shape[0],) + m.shape[1:], np.float32)
        vectors[chosen[idx]] = v[: len(idx)]
        maps[chosen[idx]] = m[: len(idx)]
    return vectors, maps


def apply_assignment(state: State, assignment: cand_lib.Assignment, vectors: np.ndarray) -> State:
    """Prototype j <- its winning patch's embedding (unchanged where nothing was assigned)."""
    old = state["params"]["prototype_vectors"]
    new = np.array(_gather(old), np.float32)
    hit = assignment.image >= 0
    new[hit] = vectors[hit]
    sharding = getattr(old, "sharding", None)
    value = jax.device_put(new, sharding) if sharding is not None else jnp.asarray(new)
    return {**state, "params": {**state["params"], "prototype_vectors": value}}


ACTIVATION_LABEL = "log similarity log((d + 1) / (d + 1e-4)) to the prototype, min-max normalised"


def atlas_header(method, source: str, epoch_note: str) -> report.Header:
    """The page header of a CIPL atlas written from ``source`` (a workdir)."""
    m = method.config.model
    return report.Header(
        model=f"CIPL, {m.backbone}, {int(m.prototypes_per_class)} prototypes per class",
        model_id=epoch_note,
        source=source,
        input="the training split (push: nearest class-restricted patch per prototype)",
        protocol=f"eval transform at {int(m.image_size)} px; patch box = 95th-percentile "
        "region of the activation (cipl.md §7); contour at 0.65 of the normalised map",
    )


def write_atlas(
    method,
    records: Sequence[Record],
    assignment: cand_lib.Assignment,
    maps: np.ndarray,
    out_dir: str,
    is_main: bool,
    header: report.Header | None = None,
) -> list[dict]:
    """Per-prototype PNGs of ``maps`` (P, h, w) (each prototype's distance map on its source
    image): the log-activation overlay, the >= 0.65 contour and the source image with the
    patch's box (image pixels, with the image's labels), plus atlas.json/atlas.html (main
    process writes)."""
    if not np.any(assignment.image >= 0):
        log.warning("push: no prototype was assigned; no atlas written")
        return []
    size = int(method.config.model.image_size)
    names = method.index.class_names
    ppc = int(method.config.model.prototypes_per_class)
    shown_size = max(size, overlays.DISPLAY_MIN)
    zoom = shown_size / size
    grid = None if method.grid is None else (method.grid[0] * zoom, method.grid[1] * zoom)
    entries = []
    for j, img_id in enumerate(assignment.image):
        if img_id < 0:
            continue
        rec = records[int(img_id)]
        act = np.asarray(log_similarity(maps[j]))
        h, w = divmod(int(assignment.location[j]), maps.shape[2])
        labels = [names[k] for k in np.flatnonzero(np.asarray(rec.labels) > 0.5)]
        box = overlays.high_activation_box(act, (shown_size, shown_size), grid=grid)
        entry = {
            "prototype_id": j,
            "class_name": names[j // ppc],
            "source_image_id": rec.image_id,
            "source_path": rec.path,
            "source_labels": labels,
            "image": f"{j}_overlay.png",
            "contour_image": f"{j}_contour.png",
            "source_image": f"{j}_source.png",
            "location": [h, w],
            "box_xywh": [round(v / zoom, 2) for v in box],  # network-input pixels
            "distance": float(assignment.distance[j]),
            "colorbar": {
                "label": ACTIVATION_LABEL,
                "min": float(act.min()),
                "max": float(act.max()),
            },
        }
        if is_main:
            image = cv2.resize(
                load_image(rec.path), (shown_size, shown_size), interpolation=cv2.INTER_LINEAR
            )
            overlays.save_png(
                os.path.join(out_dir, entry["image"]),
                overlays.heatmap_overlay(image, act, alpha=0.3, grid=grid),
            )
            overlays.save_png(
                os.path.join(out_dir, entry["contour_image"]),
                overlays.draw_contour(image, act, level=0.65, grid=grid),
            )
            overlays.save_png(
                os.path.join(out_dir, entry["source_image"]),
                overlays.draw_boxes(
                    image, [box], color=(255, 255, 0), labels=[f"p{j}: {', '.join(labels)}"]
                ),
            )
        entries.append(entry)
    if is_main:
        header = header or atlas_header(method, out_dir, "push atlas")
        atlas.write_atlas(out_dir, entries, header, title="CIPL prototype atlas")
    return entries


def push_prototypes(
    method,
    state: State,
    records: Sequence[Record],
    stream: Stream,
    mesh: jax.sharding.Mesh,
    out_dir: str,
    is_main: bool = True,
) -> tuple[State, list[dict]]:
    """Full push: candidates -> greedy assignment -> winning patches -> new prototypes ->
    atlas."""
    t = method.config.train
    bs = int(t.push_batch_size)
    k = int(t.get("push_candidates", 0))
    cands = find_candidates(method, state, records, stream, mesh, bs, k)
    assignment = cand_lib.greedy_assign(cands)
    missing = int(np.sum(assignment.image < 0))
    if missing:
        log.warning(
            "push: %d prototypes had no unused image of their class; left unchanged", missing
        )
    vectors, maps = winning_patches(method, state, records, assignment, stream, mesh, bs)
    state = apply_assignment(state, assignment, vectors)
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
    header = atlas_header(method, os.path.dirname(os.path.dirname(out_dir)), f"push at {out_dir}")
    entries = write_atlas(method, records, assignment, maps, out_dir, is_main, header)
    return state, entries


def push_hook(ctx: HookContext, state: State, *, method, epoch: int) -> State:
    """Phase ``after`` hook: push on the training split, artefacts in <workdir>/push/<epoch>/."""
    out_dir = os.path.join(ctx.workdir, "push", str(epoch))
    log.info("push at epoch %d -> %s", epoch, out_dir)
    stream = trainer_stream(method, ctx.mesh, int(ctx.config.train.worker_count))
    state, _ = push_prototypes(
        method, state, ctx.index.split("train"), stream, ctx.mesh, out_dir, ctx.is_main_process
    )
    return state
