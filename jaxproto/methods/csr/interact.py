"""Doctor-in-the-loop interaction for CSR (specs/csr.md §4).

- Spatial interaction: positive boxes ("look here") and negative boxes ("ignore here") make an
  importance map A (1 inside positives, 0 inside negatives, α elsewhere; Eq. 12) that multiplies
  every similarity map before max-pooling (Eq. 13).
- Concept interaction: rejecting concept k zeroes all its prototype scores s^{k_m} (§4.2).
- Pruned prototypes (atlas refinement, §4.3) are zeroed through ``proto_mask``.

``CsrSession`` runs the backbone, projector and cosine maps once per image and caches S; every
re-prediction afterwards runs only the cheap part (mask, clip, max, linear head).
Boxes are (x, y, w, h) in pixels of the image they were drawn on (or ``records.Box``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.core.metrics import box_to_grid
from jaxproto.data import transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Box
from jaxproto.methods.csr.model import CLIP_MODES, CsrModel, pool_scores
from jaxproto.viz import overlays
from jaxproto.viz.report import Header, write_html_report

log = logging.getLogger(__name__)

GRID_MODES = ("feature", "image")
BoxLike = Box | Sequence[float]


class InteractionError(UserError, ValueError):
    """A doctor-in-the-loop request that cannot be applied (bad box, unknown concept, ...)."""


def _xywh(box: BoxLike) -> tuple[float, float, float, float]:
    if isinstance(box, Box):
        return box.x, box.y, box.w, box.h
    if len(box) != 4:
        raise InteractionError(f"a box is (x, y, w, h); got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise InteractionError(f"box {box!r} has non-positive width or height")
    return x, y, w, h


def _cells(box: BoxLike, grid_hw: tuple[int, int], img_hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows/cols of the grid a box overlaps at all: floor start, ceil end, clamped (spec §4.1)."""
    c0, c1, r0, r1 = box_to_grid(_xywh(box), img_hw[::-1], grid_hw[::-1])
    return slice(r0, r1), slice(c0, c1)


def importance_map(
    boxes_pos: Sequence[BoxLike],
    boxes_neg: Sequence[BoxLike],
    alpha: float,
    grid_hw: tuple[int, int],
    img_hw: tuple[int, int],
) -> np.ndarray:
    """A (H, W) float32 on the grid (Eq. 12): α everywhere, 0 on negative boxes, then 1 on
    positive boxes (positives override negatives where they overlap, R1)."""
    if not 0.0 <= alpha < 1.0:
        raise InteractionError(f"alpha must be in [0, 1), got {alpha}")
    a = np.full(grid_hw, alpha, np.float32)
    for box in boxes_neg:
        a[_cells(box, grid_hw, img_hw)] = 0.0
    for box in boxes_pos:
        a[_cells(box, grid_hw, img_hw)] = 1.0
    return a


def rejection_vector(rejected: Sequence[int | str], concept_names: Sequence[str]) -> np.ndarray:
    """(K,) float32 with 1 for every rejected concept (given by index or name)."""
    out = np.zeros(len(concept_names), np.float32)
    for c in rejected:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in concept_names:
                raise InteractionError(f"unknown concept {c!r}; concepts: {list(concept_names)}")
            out[list(concept_names).index(c)] = 1.0
        else:
            k = int(c)
            if not 0 <= k < len(concept_names):
                raise InteractionError(f"concept index {k} out of range [0, {len(concept_names)})")
            out[k] = 1.0
    return out


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(model: CsrModel, variables: dict, images: jax.Array):
    """The expensive part, run once per image: F, concept logits, S."""

    def fwd(mdl, x):
        f = mdl.features(x, train=False)
        _, z = mdl.concepts(f)
        return z, mdl.similarity(f)

    return model.apply(variables, images, method=fwd)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _rehead(model, variables, sims, importance, masks, clip_negative, image_size):
    """The cheap part: (optional upsampling) -> A ⊙ S -> max -> masks -> H."""
    proto_mask, rejected = masks
    if image_size:
        b, k, m, h, w = sims.shape
        sims = jax.image.resize(sims, (b, k, m, image_size, image_size), "bilinear")
    s = pool_scores(sims, importance, clip_negative, proto_mask, rejected)
    logits = model.apply(variables, s, method=lambda mdl, v: mdl.head(v, train=False))
    return logits, s


class CsrSession:
    """Cached encoding of a batch of images for repeated interactive re-prediction."""

    def __init__(
        self,
        model: CsrModel,
        state: dict,
        images: jax.Array,
        clip_negative: str = "interactive_only",
        interaction_grid: str = "feature",
    ):
        if clip_negative not in CLIP_MODES:
            raise ValueError(f"clip_negative must be one of {CLIP_MODES}, got {clip_negative!r}")
        if interaction_grid not in GRID_MODES:
            raise ValueError(
                f"interaction_grid must be one of {GRID_MODES}, got {interaction_grid!r}"
            )
        self.model = model
        self.variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        self.proto_mask = jnp.asarray(state["extra"]["proto_mask"])
        self.clip_negative = clip_negative
        self.interaction_grid = interaction_grid
        self.images = jnp.asarray(images, jnp.float32)
        self.img_hw = tuple(self.images.shape[1:3])
        self.concept_logits, self.sims = _encode(model, self.variables, self.images)
        self.grid_hw = tuple(self.sims.shape[-2:])

    def importance(self, boxes_pos: Sequence[BoxLike], boxes_neg: Sequence[BoxLike], alpha: float):
        """A on the interaction grid (feature cells, or input pixels for ``image``)."""
        grid = self.grid_hw if self.interaction_grid == "feature" else self.img_hw
        return importance_map(boxes_pos, boxes_neg, alpha, grid, self.img_hw)

    def predict(
        self,
        importance: np.ndarray | None = None,
        rejected: np.ndarray | None = None,
        proto_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Re-prediction from the cached S: logits, probs, scores s (B, K·M), and per-concept
        best prototype and its (interaction-weighted) map. ``importance`` (H, W) or (B, H, W) on
        the interaction grid; ``rejected`` (K,) or (B, K); ``proto_mask`` (K, M) replaces the
        state's mask."""
        k = self.sims.shape[1]
        mask = self.proto_mask if proto_mask is None else jnp.asarray(proto_mask, jnp.float32)
        rej = (
            jnp.zeros((k,), jnp.float32) if rejected is None else jnp.asarray(rejected, jnp.float32)
        )
        a = None if importance is None else jnp.asarray(importance, jnp.float32)
        size = self.img_hw[0] if self.interaction_grid == "image" else 0
        if size and self.img_hw[0] != self.img_hw[1]:
            raise ValueError(f"interaction_grid=image needs square inputs, got {self.img_hw}")
        logits, s = _rehead(
            self.model, self.variables, self.sims, a, (mask, rej), self.clip_negative, size
        )
        b = s.shape[0]
        s_km = np.asarray(s).reshape(b, k, -1)
        best = np.argmax(s_km, axis=-1)
        maps = np.take_along_axis(np.asarray(self.sims), best[:, :, None, None, None], axis=2)[
            :, :, 0
        ]
        if a is not None and self.interaction_grid == "feature":
            maps = np.maximum(maps, 0.0) * np.asarray(a).reshape((-1, 1) + self.grid_hw)
        return {
            "logits": np.asarray(logits),
            "probs": np.asarray(jax.nn.softmax(logits, axis=-1)),
            "scores": np.asarray(s),
            "best_prototype": best,
            "concept_maps": maps,
            "concept_probs": np.asarray(jax.nn.sigmoid(self.concept_logits)),
        }


def is_indecisive(probs: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Top-1 minus top-2 class probability below ``threshold`` (R1 quoting paper §5)."""
    top = np.sort(np.asarray(probs), axis=-1)
    return (top[..., -1] - top[..., -2]) < threshold


def _page_header(method, image: str | np.ndarray) -> Header:
    thr = method.thresholds
    protocol = (
        f"decisions at per-class operating thresholds ({thr.get('criterion', 'best F1')}, "
        f"one-vs-rest on the softmax) chosen on the {thr.get('split', '?')} split"
        if thr
        else "no operating thresholds saved with this model: no decisions"
    )
    m = method.config.model
    return method.page_header(
        f"CSR, {m.backbone}",
        image if isinstance(image, str) else None,
        f"{protocol}; prediction = arg-max class; alpha = {float(m.alpha):g}, "
        f"clip_negative = {m.clip_negative}, interaction grid = {m.interaction_grid}",
    )


def _page_warnings(method, result: dict) -> list[str]:
    warnings = []
    if not method.thresholds:
        warnings.append(
            "this model was saved without operating thresholds: probabilities are shown, "
            "per-class decisions are not"
        )
    if result["indecisive_before"]:
        warnings.append(
            "indecisive prediction: the two most probable classes differ by less than 0.3 "
            "(a case for doctor-in-the-loop correction)"
        )
    return warnings


def _page_sections(result: dict, figures: dict, interactive: bool) -> list[dict]:
    after = "after interaction" if interactive else "(no interaction requested)"
    return [
        {
            "heading": "Input",
            "text": "green: positive boxes (look here), red: negative boxes (ignore here)",
            "figures": [
                {
                    "image": "input.png",
                    "caption": "this image, with the doctor's boxes",
                    "alt": "the input image with the positive and negative boxes",
                }
            ],
        },
        {
            "heading": f"Decisions: predicted {result['prediction_before']}",
            "decisions": result["decisions_before"],
        },
        {
            "heading": f"Decisions {after}: predicted {result['prediction_after']}",
            "decisions": result["decisions_after"],
        },
        {"heading": "Concept maps before interaction", "figures": figures["before"]},
        {"heading": f"Concept maps {after}", "figures": figures["after"]},
    ]


def explain_image(
    method,
    state: dict,
    image: str | np.ndarray,
    out_dir: str,
    boxes_pos: Sequence[BoxLike] = (),
    boxes_neg: Sequence[BoxLike] = (),
    reject: Sequence[int | str] = (),
) -> dict:
    """Explains one image before and after interaction; writes PNGs, ``result.json`` and
    ``report.html`` into ``out_dir`` and returns the JSON content.

    ``image`` is a path or a uint8 HxWx3 array; boxes are (x, y, w, h) in that image's pixels;
    ``reject`` lists concepts by name or index. α, clipping and the grid come from
    ``method.config.model`` (``alpha``, ``clip_negative``, ``interaction_grid``). The returned
    dict is ``result.json``'s content plus the ``json`` and ``html`` paths.
    """
    raw = load_image(image) if isinstance(image, str) else np.asarray(image)
    if raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[-1] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {raw.dtype} {raw.shape}")
    cfg = method.config.model
    size = method.image_size
    x = transforms.eval_transform(raw, size)[None]
    sy, sx = size / raw.shape[0], size / raw.shape[1]

    def scale(boxes):
        return [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in map(_xywh, boxes)]

    pos, neg = scale(boxes_pos), scale(boxes_neg)
    session = CsrSession(method.model, state, x, cfg.clip_negative, cfg.interaction_grid)
    concept_names = list(method.index.concept_names)
    class_names = method.class_names()
    before = session.predict()
    interactive = bool(pos or neg or reject)
    a = session.importance(pos, neg, float(cfg.alpha)) if (pos or neg) else None
    rej = rejection_vector(reject, concept_names) if reject else None
    after = session.predict(a, rej)

    os.makedirs(out_dir, exist_ok=True)
    shown_size = max(size, overlays.DISPLAY_MIN)
    zoom = shown_size / size
    shown = cv2.resize(raw, (shown_size, shown_size), interpolation=cv2.INTER_AREA)

    def zoomed(boxes):
        return [tuple(v * zoom for v in b) for b in boxes]

    annotated = overlays.draw_boxes(shown, zoomed(pos), (0, 200, 0)) if pos else shown
    annotated = overlays.draw_boxes(annotated, zoomed(neg), (220, 0, 0)) if neg else annotated
    overlays.save_png(os.path.join(out_dir, "input.png"), annotated)
    atlas_index = np.asarray(jax.device_get(state["extra"]["atlas_index"]))
    train = method.index.splits.get("train", [])
    figures = {"before": [], "after": []}
    concepts = []
    m_count = atlas_index.shape[1]
    for k, name in enumerate(concept_names):
        row = {
            "concept": name,
            "probability": float(before["concept_probs"][0, k]),
            "rejected": bool(rej is not None and rej[k] > 0),
        }
        for tag, res in (("before", before), ("after", after)):
            m = int(res["best_prototype"][0, k])
            rel = os.path.join(tag, f"concept_{k:02d}.png")
            cmap = np.asarray(res["concept_maps"][0, k])
            label = f"cosine similarity to prototype {k * m_count + m} of {name}"
            lo, hi = float(cmap.min()), float(cmap.max())
            overlays.save_png(
                os.path.join(out_dir, rel),
                overlays.with_colorbar(overlays.heatmap_overlay(shown, cmap, 0.4), label, lo, hi),
            )
            score = float(res["scores"][0, k * m_count + m])
            linked = int(atlas_index[k, m])
            source = train[linked].image_id if 0 <= linked < len(train) else None
            row[tag] = {
                "prototype_id": k * m_count + m,
                "score": score,
                "map": rel,
                "atlas_image_id": source,
            }
            figures[tag].append(
                {
                    "image": rel,
                    "caption": f"{name}: prototype {k * m_count + m}, s = {score:.3f}"
                    + (f", atlas image {source}" if source else ""),
                    "alt": f"concept {name} map {tag} interaction over this image",
                    "colorbar": {"label": label, "min": lo, "max": hi},
                }
            )
        concepts.append(row)
    probs_before = dict(zip(class_names, map(float, before["probs"][0]), strict=True))
    probs_after = dict(zip(class_names, map(float, after["probs"][0]), strict=True))
    result = {
        "classes": class_names,
        "probs_before": probs_before,
        "probs_after": probs_after,
        "decisions_before": method.decisions(probs_before),
        "decisions_after": method.decisions(probs_after),
        "thresholds": method.thresholds,
        "prediction_before": class_names[int(np.argmax(before["probs"][0]))],
        "prediction_after": class_names[int(np.argmax(after["probs"][0]))],
        "indecisive_before": bool(is_indecisive(before["probs"][0])),
        "interaction": {
            "boxes_pos": pos,
            "boxes_neg": neg,
            "rejected": [str(r) for r in reject],
            "alpha": float(cfg.alpha),
            "clip_negative": cfg.clip_negative,
            "interaction_grid": cfg.interaction_grid,
            "applied": interactive,
        },
        "concepts": concepts,
    }
    json_path = os.path.join(out_dir, "result.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    html_path = write_html_report(
        os.path.join(out_dir, "report.html"),
        f"CSR explanation: {os.path.basename(image) if isinstance(image, str) else 'image'}",
        _page_sections(result, figures, interactive),
        _page_header(method, image),
        _page_warnings(method, result),
    )
    log.info("CSR explanation written to %s", out_dir)
    return {**result, "json": json_path, "html": html_path}
