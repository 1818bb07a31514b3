"""Prototype atlas (specs/csr.md §6, Eq. 11): for every prototype p^{k_m}, the training image whose
projected local concept vector v'^k_i is most similar, over images that contain concept k
(argmax of cosine; the paper's argmin is a sign typo). Also the per-prototype hit count (number of
training vectors whose nearest same-concept prototype is p^{k_m}; 0 = dead prototype)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import cv2
import jax.numpy as jnp
import numpy as np

from jaxproto.data.images import load_image
from jaxproto.data.records import Record
from jaxproto.viz.atlas import write_atlas
from jaxproto.viz.overlays import DISPLAY_MIN, save_png
from jaxproto.viz.report import Header

ATLAS_KEYS = ("atlas_index", "atlas_score", "hit_count")


def empty_atlas(num_concepts: int, num_prototypes: int) -> dict[str, jnp.ndarray]:
    """Atlas arrays before stage 2 ends: no image linked (-1), score -2 (below any cosine)."""
    shape = (num_concepts, num_prototypes)
    return {
        "atlas_index": jnp.full(shape, -1, jnp.int32),
        "atlas_score": jnp.full(shape, -2.0, jnp.float32),
        "hit_count": jnp.zeros(shape, jnp.int32),
    }


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class AtlasBuilder:
    """Streams (v', concept presence, record index) batches and keeps the running argmax."""

    def __init__(self, prototypes: np.ndarray):
        self.protos = _normalize(np.asarray(prototypes, np.float64))
        k, m, d = self.protos.shape
        self.index = np.full((k, m), -1, np.int64)
        self.score = np.full((k, m), -np.inf)
        self.vector = np.zeros((k, m, d), np.float32)
        self.hits = np.zeros((k, m), np.int64)

    def add(self, v_proj: np.ndarray, present: np.ndarray, record_ids: np.ndarray) -> None:
        """v_proj (b, K, D) projected local concept vectors, present (b, K), record_ids (b,)."""
        cos = np.einsum("bkd,kmd->bkm", np.asarray(v_proj, np.float64), self.protos)
        masked = np.where(present[..., None], cos, -np.inf)
        best = np.argmax(masked, axis=0)  # (K, M): best row of this batch per prototype
        best_score = np.take_along_axis(masked, best[None], axis=0)[0]
        better = best_score > self.score
        kk, mm = np.nonzero(better)
        self.score[better] = best_score[better]
        self.index[better] = np.asarray(record_ids)[best[better]]
        self.vector[kk, mm] = np.asarray(v_proj)[best[kk, mm], kk]
        nearest = np.argmax(cos, axis=-1)  # (b, K)
        for b, k in zip(*np.nonzero(present), strict=True):
            self.hits[k, nearest[b, k]] += 1

    def result(self) -> dict[str, np.ndarray]:
        return {
            "atlas_index": self.index.astype(np.int32),
            "atlas_score": np.where(np.isfinite(self.score), self.score, -2.0).astype(np.float32),
            "hit_count": self.hits.astype(np.int32),
            "nearest_vector": self.vector,
        }


class TopAtlas:
    """The ``n`` training images most similar to each prototype, best first: Eq. 11's arg-max
    extended to the top n over images that contain the concept (what a clinician browses in
    the atlas; ``index[..., 0]`` is Eq. 11's image, ties to the earliest record as in
    ``AtlasBuilder``). Streams (v', presence, record index) batches."""

    def __init__(self, prototypes: np.ndarray, n: int):
        if n < 1:
            raise ValueError(f"the atlas needs n >= 1 images per prototype, got {n}")
        self.protos = _normalize(np.asarray(prototypes, np.float64))
        k, m, _ = self.protos.shape
        self.index = np.full((k, m, n), -1, np.int64)
        self.score = np.full((k, m, n), -np.inf)

    def add(self, v_proj: np.ndarray, present: np.ndarray, record_ids: np.ndarray) -> None:
        """v_proj (b, K, D) projected (unit) local concept vectors, present (b, K), record_ids
        (b,)."""
        cos = np.einsum("bkd,kmd->kmb", np.asarray(v_proj, np.float64), self.protos)
        cos = np.where(np.asarray(present, bool).T[:, None, :], cos, -np.inf)
        ids = np.broadcast_to(np.asarray(record_ids, np.int64), cos.shape)
        scores = np.concatenate([self.score, cos], axis=-1)
        order = np.argsort(-scores, axis=-1, kind="stable")[..., : self.index.shape[-1]]
        self.score = np.take_along_axis(scores, order, axis=-1)
        self.index = np.take_along_axis(np.concatenate([self.index, ids], -1), order, axis=-1)
        self.index[~np.isfinite(self.score)] = -1


def linked_prototypes(atlas_index: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Yields (k, m, training record index) for every prototype linked to an atlas image."""
    index = np.asarray(atlas_index)
    for k in range(index.shape[0]):
        for m in range(index.shape[1]):
            if int(index[k, m]) >= 0:
                yield k, m, int(index[k, m])


def write_prototype_atlas(
    out_dir: str,
    atlas: dict[str, np.ndarray],
    records: Sequence[Record],
    concept_names: Sequence[str],
    image_size: int,
    proto_mask: np.ndarray | None = None,
) -> tuple[str, str]:
    """Writes ``atlas.html`` / ``atlas.json`` (browsable, grouped by concept) and one PNG per
    linked training image under ``out_dir``; returns the (json, html) paths."""
    m_count = np.shape(atlas["atlas_index"])[1]
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    written: dict[int, str] = {}
    entries = []
    for k, m, i in linked_prototypes(atlas["atlas_index"]):
        if i not in written:
            rel = os.path.join("images", f"train_{i:06d}.png")
            shown = max(image_size, DISPLAY_MIN)
            img = cv2.resize(
                load_image(records[i].path), (shown, shown), interpolation=cv2.INTER_AREA
            )
            save_png(os.path.join(out_dir, rel), img)
            written[i] = rel
        entries.append(
            {
                "prototype_id": k * m_count + m,
                "class_name": str(concept_names[k]),
                "source_image_id": records[i].image_id,
                "image": written[i],
                "similarity": float(atlas["atlas_score"][k, m]),
                "hit_count": int(atlas["hit_count"][k, m]),
                "pruned": bool(proto_mask is not None and proto_mask[k, m] == 0),
            }
        )
    if not entries:
        raise ValueError("no prototype could be linked to a training image (no concept present)")
    header = Header(
        model="CSR",
        model_id="training workdir (stage-2 atlas)",
        source=os.path.dirname(os.path.abspath(out_dir)),
        input="the training split: for each prototype the image with the most similar "
        "projected concept vector (csr.md §6, Eq. 11)",
        protocol=f"eval transform at {image_size} px; cosine similarity; hit count = training "
        "vectors whose nearest same-concept prototype it is",
    )
    return write_atlas(out_dir, entries, header, title="CSR prototype atlas")
