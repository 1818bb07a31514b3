"""Training-time interaction (specs/csr.md §4.3, issue #15 item 2): remove prototypes from the
atlas and re-fit only the task head H on cached similarity scores.

The backbone, projector and cosine maps run once per image (``interact.CsrSession``); the
re-fit trains H (``optim.stage3`` settings, from its current weights) on the masked training
scores s ⊙ mask, so no backbone pass is repeated. ``prune`` returns the new state, a record of
what was removed (who, when) and the test metrics before, after masking only (``refine.mode
= mask``) and after masking and re-fitting (``mask_retrain``).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.core import outputs
from jaxproto.core.logging import Progress
from jaxproto.data.records import Record
from jaxproto.methods.csr import atlas as atlas_lib
from jaxproto.methods.csr import interact, losses
from jaxproto.methods.csr.data import concepts_of
from jaxproto.methods.csr.model import ALIVE_PROTOTYPES, CONCEPT_MAPS, V_PROJ

log = logging.getLogger(__name__)


# The atlas-share rule's defaults (``prototypes_on_marker``; studio --prune_top/_tolerance/_share).
MARKER_TOP_N = 10
MARKER_TOLERANCE = 0.05
MARKER_MIN_SHARE = 0.3


def _image_batches(
    method, records: Sequence[Record], batch_size: int, what: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, eval-transformed images) of ``records`` in batches, with a progress bar."""
    starts = range(0, len(records), batch_size)
    bar = Progress(len(starts), 0, what, batch_size)
    for step, start in enumerate(starts):
        chunk = records[start : start + batch_size]
        yield start, np.stack([method.eval_example(r)["image"] for r in chunk])
        bar.update(step + 1)
    bar.close()


class CachedScores:
    """Similarity maps S of ``records`` computed once, in batches, and what follows from them."""

    def __init__(self, method, state: dict, records: Sequence[Record], batch_size: int = 64):
        sims, concept_probs = [], []
        for _, x in _image_batches(method, records, batch_size, "similarity maps"):
            session = interact.CsrSession(method.model, state, x, method.config.model.clip_negative)
            sims.append(np.asarray(session.sims))
            concept_probs.append(np.asarray(jax.nn.sigmoid(session.concept_logits)))
        self.sims = np.concatenate(sims)  # (N, K, M, H, W)
        self.concept_probs = np.concatenate(concept_probs)
        self.records = list(records)

    def scores(self, mask: np.ndarray) -> np.ndarray:
        """s (N, K·M): max over the map of each prototype, pruned ones zeroed (no interaction,
        so clipping follows ``clip_negative="interactive_only"``: none)."""
        s = self.sims.max(axis=(-2, -1)) * mask[None]
        return s.reshape(len(s), -1).astype(np.float32)

    def predictions(self, method, state: dict, mask: np.ndarray) -> dict[str, np.ndarray]:
        """What ``method.evaluate`` needs, for the mask and the state's head."""
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        logits = method.model.apply(
            variables, jnp.asarray(self.scores(mask)), method=lambda m, v: m.head(v, train=False)
        )
        alive = mask[None, :, :, None, None] > 0
        return {
            outputs.LOGITS: np.asarray(logits),
            outputs.CONCEPT_PROBS: self.concept_probs,
            CONCEPT_MAPS: np.where(alive, self.sims, -1.0).max(axis=2),
            ALIVE_PROTOTYPES: np.full(len(logits), mask.sum(), np.float32),
        }


def refit_head(method, state: dict, scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """State with H (and its input BN, if any) re-trained with cross-entropy on cached scores,
    starting from the current head, with the ``optim.stage3`` schedule and batch size."""
    o = method.config.optim.stage3
    batch = int(method.config.train.batch_size)
    steps_per_epoch = max(1, len(scores) // batch)
    steps = max(1, int(round(float(o.epochs) * steps_per_epoch)))
    if o.schedule == "cosine":
        lr = optax.cosine_decay_schedule(o.lr, steps, alpha=o.end_lr / o.lr)
    else:
        lr = optax.constant_schedule(o.lr)
    head_keys = [k for k in ("task_head", "head_bn") if k in state["params"]]
    params = {k: state["params"][k] for k in head_keys}
    stats = dict(state["batch_stats"])
    tx = optax.adamw(lr, weight_decay=o.wd)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, stats, s, y):
        def loss_fn(p):
            logits, upd = method.model.apply(
                {"params": {**state["params"], **p}, "batch_stats": stats},
                s,
                method=lambda m, v: m.head(v, train=True),
                mutable=["batch_stats"],
            )
            return losses.task_cross_entropy(logits, y), upd["batch_stats"]

        (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, {**stats, **new_stats}, loss

    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    for _ in range(steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(scores))])
        idx, order = order[:batch], order[batch:]
        params, opt, stats, loss = step(
            params, opt, stats, jnp.asarray(scores[idx]), jnp.asarray(labels[idx])
        )
    log.info("task head re-fitted: %d steps, last loss %.4f", steps, float(loss))
    return {**state, "params": {**state["params"], **params}, "batch_stats": stats}


def prototypes_in_box(
    method,
    state: dict,
    train: Sequence[Record],
    box: tuple[float, float, float, float],
    margin: float = 0.0,
) -> list[int]:
    """Flat ids of the prototypes whose atlas patch — the arg-max of their similarity map on
    their atlas image — lies in ``box`` (x, y, w, h in network-input pixels), e.g. a spurious
    marker. ``margin`` > 0 also takes a prototype whose map in the box comes within ``margin``
    of its maximum (a near tie: its atlas image shows both, e.g. marker and lesion)."""
    atlas = np.asarray(jax.device_get(state["extra"]["atlas_index"]))
    m_count = atlas.shape[1]
    linked = sorted({int(i) for i in atlas.ravel() if i >= 0})
    if not linked:
        return []
    cache = CachedScores(method, state, [train[i] for i in linked])
    row = {i: n for n, i in enumerate(linked)}
    gh, gw = cache.sims.shape[-2:]
    size = method.image_size
    cells = interact.importance_map([box], [], 0.0, (gh, gw), (size, size)) > 0
    out = []
    for k, m, i in atlas_lib.linked_prototypes(atlas):
        sim = cache.sims[row[i], k, m]
        if sim[cells].max() >= sim.max() - margin:
            out.append(k * m_count + m)
    return out


def box_cells(
    box: tuple[float, float, float, float], grid_hw: tuple[int, int], img_hw: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool: the grid cells ``box`` (x, y, w, h in input pixels) covers at least half
    of, or, if it covers none that much, the cells it covers most. Stricter than the
    interaction's any-overlap cells (§4.1): a box drawn round a marker smaller than a cell
    should not take in the neighbouring cells, where lesions may lie."""
    x, y, w, h = (float(v) for v in box)

    def cover(lo: float, size: float, n: int, extent: int) -> np.ndarray:
        edges = np.arange(n + 1) * (extent / n)
        inside = np.minimum(lo + size, edges[1:]) - np.maximum(lo, edges[:-1])
        return np.clip(inside, 0.0, None) / (extent / n)

    covered = np.outer(cover(y, h, grid_hw[0], img_hw[0]), cover(x, w, grid_hw[1], img_hw[1]))
    if covered.max() <= 0:
        raise interact.InteractionError(
            f"box {box} (x, y, w, h) lies outside the {img_hw[1]}x{img_hw[0]} input"
        )
    cells = covered >= 0.5
    return cells if cells.any() else covered == covered.max()


def marker_share(
    maps: np.ndarray, valid: np.ndarray, cells: np.ndarray, tolerance: float
) -> np.ndarray:
    """(K, M) share of each prototype's atlas images on which it fires on the box: its map's
    maximum over ``cells`` is within ``tolerance`` of the map's peak, relative to the map's
    range ((max_box S - min S) / (max S - min S) >= 1 - tolerance; 0 tolerance = the peak is
    in the box). ``maps`` (K, M, n, H, W) the maps on the top-n atlas images, ``valid`` (K, M,
    n) which atlas slots hold an image; a constant map fires nowhere; no image -> share 0."""
    flat = maps.reshape(*maps.shape[:3], -1).astype(np.float64)
    lo, hi = flat.min(-1), flat.max(-1)
    in_box = flat[..., np.asarray(cells, bool).ravel()].max(-1)
    span = hi - lo
    rel = np.where(span > 0, (in_box - lo) / np.where(span > 0, span, 1.0), 0.0)
    fires = (rel >= 1.0 - tolerance) & (span > 0) & valid
    return fires.sum(-1) / np.maximum(valid.sum(-1), 1)


def atlas_top(method, state: dict, train: Sequence[Record], n: int) -> np.ndarray:
    """(K, M, n) training-record indices of each prototype's top-n atlas images (-1: fewer
    images show the concept): ``atlas.TopAtlas`` over v' of the whole training split."""
    k_count = method.num_concepts
    top = atlas_lib.TopAtlas(np.asarray(jax.device_get(state["params"]["prototypes"])), n)
    vectors = jax.jit(lambda st, x: method.concept_vectors(st, {"image": x})[V_PROJ])
    batch = int(method.config.train.eval_batch_size)
    for start, x in _image_batches(method, train, batch, "atlas concept vectors"):
        chunk = train[start : start + len(x)]
        present = np.stack([concepts_of(r, k_count) for r in chunk]) > 0.5
        top.add(
            np.asarray(vectors(state, jnp.asarray(x))), present, np.arange(start, start + len(x))
        )
    return top.index


def prototypes_on_marker(
    method,
    state: dict,
    train: Sequence[Record],
    box: tuple[float, float, float, float],
    top_n: int = MARKER_TOP_N,
    tolerance: float = MARKER_TOLERANCE,
    min_share: float = MARKER_MIN_SHARE,
) -> tuple[list[int], np.ndarray]:
    """The atlas-share rule: (flat ids, (K, M) shares) of the prototypes that fire on ``box``
    (x, y, w, h in network-input pixels; its cells per ``box_cells``) on at least
    ``min_share`` of their ``top_n`` atlas images (``atlas_top``, ``marker_share``): what a
    clinician sees browsing a prototype's atlas with the marker lit up on many of its images.
    Unlike the arg-max on Eq. 11's single image, it still finds a prototype that fires about
    as much on the marker as on the lesion (a near tie), and a relative tolerance does not
    take flat maps."""
    index = atlas_top(method, state, train, top_n)
    linked = sorted({int(i) for i in index.ravel() if i >= 0})
    if not linked:
        return [], np.zeros(index.shape[:2])
    sims = CachedScores(method, state, [train[i] for i in linked]).sims
    row = np.full(len(train), 0, np.int64)
    row[linked] = np.arange(len(linked))
    k_count, m_count, _ = index.shape
    kk, mm = np.meshgrid(np.arange(k_count), np.arange(m_count), indexing="ij")
    maps = sims[row[np.maximum(index, 0)], kk[..., None], mm[..., None]]  # (K, M, n, H, W)
    size = method.image_size
    cells = box_cells(box, sims.shape[-2:], (size, size))
    share = marker_share(maps, index >= 0, cells, tolerance)
    ids = [int(k * m_count + m) for k, m in zip(*np.nonzero(share >= min_share), strict=True)]
    return ids, share


def prune(
    method,
    state: dict,
    prototype_ids: Sequence[int],
    train: Sequence[Record],
    test: Sequence[Record],
    by: str,
) -> tuple[dict, dict]:
    """(new state, record): prototypes masked, H re-fitted on cached training scores; the
    record names what was removed, by whom and when, with test metrics before/after."""
    from_state = np.asarray(jax.device_get(state["extra"]["proto_mask"]))
    mask = from_state.copy()
    k_count, m_count = mask.shape
    for pid in prototype_ids:
        if not 0 <= int(pid) < k_count * m_count:
            raise interact.InteractionError(
                f"prototype id {pid} out of range [0, {k_count * m_count}) (K={k_count}, "
                f"M={m_count})"
            )
        mask[int(pid) // m_count, int(pid) % m_count] = 0.0
    train_cache = CachedScores(method, state, train)
    test_cache = CachedScores(method, state, test)
    labels = np.array([int(np.argmax(r.labels)) for r in train], np.int32)
    refit = refit_head(
        method, state, train_cache.scores(mask), labels, int(method.config.train.seed)
    )
    new_state = {**refit, "extra": {**refit["extra"], "proto_mask": jnp.asarray(mask)}}

    def metrics(st, msk):
        res = method.evaluate(test_cache.predictions(method, st, msk), test)
        keep = ("macro_f1", "accuracy", "pointing_game", "pointing_game_grid", "num_prototypes")
        return {k: res[k] for k in keep if k in res}

    record = {
        "removed": sorted(int(p) for p in prototype_ids),
        "by": by,
        "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "refit": "task head on cached similarity scores (optim.stage3)",
        "before": metrics(state, from_state),
        "mask_only": metrics(state, mask),
        "after": metrics(new_state, mask),
    }
    return new_state, record
