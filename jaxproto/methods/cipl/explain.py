"""CIPL interpretable reasoning for one image (cipl.md §7, generalised to every predicted class).

For each predicted class (probability sigma(z_k - z_bg) >= ``config.explain.threshold``, or the
most probable class when none is), the class's prototypes are ranked by similarity
exp(-min d / scale); the top ``config.explain.top_prototypes`` similarity maps are upsampled
bicubically, min-max normalised after upsampling and overlaid (0.7 image + 0.3 JET) on the
image, next to the prototype's source patch from the push atlas when one is given. Writes PNGs,
``explanation.json`` and ``report.html`` into ``out_dir``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import cv2
import jax
import numpy as np

from jaxproto.core.method import State

DISPLAY_MIN = 320  # smallest side (px) of the explanation figures


def find_atlas(path: str | None) -> str | None:
    """The atlas folder for ``path``: itself if it holds atlas.json, else the latest
    ``<path>/push/<epoch>/`` with one (a workdir); None when there is none (e.g. no push yet)."""
    if not path:
        return None
    if os.path.isfile(os.path.join(path, "atlas.json")):
        return path
    push_dir = os.path.join(path, "push")
    epochs = sorted(
        (int(e) for e in os.listdir(push_dir) if e.isdigit()) if os.path.isdir(push_dir) else []
    )
    for e in reversed(epochs):
        if os.path.isfile(os.path.join(push_dir, str(e), "atlas.json")):
            return os.path.join(push_dir, str(e))
    return None


def _load_atlas(atlas_dir: str | None) -> dict[int, dict]:
    if not atlas_dir:
        return {}
    with open(os.path.join(atlas_dir, "atlas.json")) as f:
        data = json.load(f)
    entries = data["entries"] if isinstance(data, dict) else data
    return {int(e["prototype_id"]): e for e in entries}


def explain(
    method,
    state: State,
    image_path: str,
    out_dir: str,
    box: Sequence[float] | None = None,
    atlas_dir: str | None = None,
) -> dict:
    """Explains ``image_path``; ``box`` = (x, y, w, h) in original image pixels (drawn green).

    ``atlas_dir`` is a push folder or a workdir (its latest push is used); without an atlas the
    prototype patches are left out.
    """
    from jaxproto.data.images import load_image
    from jaxproto.data.transforms import eval_transform
    from jaxproto.viz import overlays, report

    cfg = method.config
    size = int(cfg.model.image_size)
    ppc = int(cfg.model.prototypes_per_class)
    scale = method.model.similarity_scale
    names = method.index.class_names
    os.makedirs(out_dir, exist_ok=True)

    original = load_image(image_path)
    out = jax.jit(method.apply_eval)(state, eval_transform(original, size)[None])
    logits = np.asarray(out["logits"])[0]
    dist = np.asarray(out["distances"])[0]  # (h, w, P)
    min_d = np.asarray(out["min_distances"])[0]
    weights = np.asarray(state["params"]["last_layer"]["kernel"])  # (P, C)
    bg = method.background
    probs = {
        names[k]: float(1.0 / (1.0 + np.exp(-(logits[k] - logits[bg])))) for k in method.fg_eval
    }
    predicted = [k for k in method.fg_eval if probs[names[k]] >= float(cfg.explain.threshold)]
    if not predicted:
        predicted = [max(method.fg_eval, key=lambda k: probs[names[k]])]

    # Figures at least DISPLAY_MIN px wide so small demo inputs stay readable; the maps' grid
    # (network-input pixels) is scaled with them.
    shown_size = max(size, DISPLAY_MIN)
    zoom = shown_size / size
    grid = None if method.grid is None else (method.grid[0] * zoom, method.grid[1] * zoom)
    shown = cv2.resize(original, (shown_size, shown_size), interpolation=cv2.INTER_LINEAR)
    boxes = []
    if box is not None:
        h0, w0 = original.shape[:2]
        x, y, w, h = (float(v) for v in box)
        sx, sy = shown_size / w0, shown_size / h0
        boxes = [(x * sx, y * sy, w * sx, h * sy)]
    atlas_dir = find_atlas(atlas_dir)
    atlas = _load_atlas(atlas_dir)
    result = {
        "image": image_path,
        "probabilities": probs,
        "predicted": [],
        "box": boxes,
        "atlas": atlas_dir,
    }
    sections = [{"heading": "Probabilities", "probabilities": probs}]
    for k in predicted:
        protos = np.arange(k * ppc, (k + 1) * ppc)
        sims = np.exp(-min_d[protos] / scale)
        order = np.argsort(-sims, kind="stable")[: int(cfg.explain.top_prototypes)]
        items, figures = [], []
        for rank, r in enumerate(order):
            j = int(protos[r])
            heat = overlays.heatmap_overlay(
                shown,
                np.exp(-dist[:, :, j] / scale),
                alpha=0.3,
                interpolation="bicubic",
                grid=grid,
            )
            if boxes:
                heat = overlays.draw_boxes(heat, boxes, color=(0, 255, 0))
            panels, titles = [heat], [f"prototype {j}: similarity {sims[r]:.3f}"]
            if j in atlas:
                patch = load_image(os.path.join(atlas_dir, atlas[j]["image"]))
                panels.append(patch)
                titles.append(f"source {atlas[j]['source_image_id']}")
            fname = f"{names[k]}_{rank:02d}_proto{j}.png".replace("/", "_").replace(" ", "_")
            overlays.save_png(os.path.join(out_dir, fname), overlays.side_by_side(panels, titles))
            item = {
                "prototype": j,
                "similarity": float(sims[r]),
                "weight": float(weights[j, k]),
                "contribution": float(weights[j, k] * sims[r]),
                "figure": fname,
            }
            items.append(item)
            figures.append(
                {
                    "image": fname,
                    "caption": f"#{rank + 1} prototype {j}: "
                    f"similarity {sims[r]:.3f} x weight {weights[j, k]:.3f}",
                }
            )
        result["predicted"].append(
            {
                "class": names[k],
                "probability": probs[names[k]],
                "logit": float(logits[k]),
                "prototypes": items,
            }
        )
        sections.append(
            {
                "heading": f"{names[k]} (p = {probs[names[k]]:.3f})",
                "table": [{k2: v for k2, v in it.items() if k2 != "figure"} for it in items],
                "figures": figures,
            }
        )
    with open(os.path.join(out_dir, "explanation.json"), "w") as f:
        json.dump(result, f, indent=1)
    report.write_html_report(
        os.path.join(out_dir, "report.html"),
        f"CIPL explanation: {os.path.basename(image_path)}",
        sections,
    )
    return result
