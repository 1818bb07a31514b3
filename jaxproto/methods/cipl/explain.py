"""CIPL interpretable reasoning for one image (cipl.md §7, generalised to every predicted class).

Each foreground class gets its probability sigma(z_k - z_bg), the operating threshold saved
with the model (best F1 on the validation split, else on the evaluated split; ``thresholds.json``)
and the decision; the background class is positive when no finding is. For each positive class
(the most probable one when none is; without saved thresholds ``config.explain.threshold``
decides) the class's prototypes are ranked by similarity exp(-min d / scale) and the top
``config.explain.top_prototypes`` are shown as "this looks like that": the similarity map
(upsampled bicubically, min-max normalised after upsampling, 0.7 image + 0.3 JET, with its colour
bar) over this image with the 95th-percentile box of the best-matching region, next to the
prototype's source image from the push atlas with its patch's box and labels. Writes the PNGs,
``explanation.json`` and ``report.html`` (+ its JSON twin ``report.json``) into ``out_dir``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import cv2
import jax
import numpy as np

from jaxproto.core.method import State
from jaxproto.data.images import load_image
from jaxproto.data.transforms import eval_transform
from jaxproto.viz import overlays, report

EXPLANATION_JSON = "explanation.json"
REPORT_HTML = "report.html"
ATLAS_EXPORT_DIR = "atlas"  # where an export carries the atlas


def find_atlas(path: str | None) -> str | None:
    """The atlas folder for ``path``: itself if it holds atlas.json, an export's ``atlas/``,
    else the latest ``<path>/push/<epoch>/`` with one (a workdir); None when there is none
    (e.g. no push yet, or an export written without it)."""
    if not path:
        return None
    for folder in (path, os.path.join(path, ATLAS_EXPORT_DIR)):
        if os.path.isfile(os.path.join(folder, "atlas.json")):
            return folder
    push_dir = os.path.join(path, "push")
    epochs = sorted(
        (int(e) for e in os.listdir(push_dir) if e.isdigit()) if os.path.isdir(push_dir) else []
    )
    for e in reversed(epochs):
        if os.path.isfile(os.path.join(push_dir, str(e), "atlas.json")):
            return os.path.join(push_dir, str(e))
    return None


def export_files(workdir: str) -> dict[str, str]:
    """The latest push atlas of ``workdir`` as export files (``atlas/<name>``), so that
    ``explain --export`` shows the prototype source panels."""
    folder = find_atlas(workdir)
    if folder is None:
        return {}
    return {
        f"{ATLAS_EXPORT_DIR}/{name}": os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, name))
    }


def _load_atlas(atlas_dir: str | None) -> dict[int, dict]:
    if not atlas_dir:
        return {}
    with open(os.path.join(atlas_dir, "atlas.json")) as f:
        data = json.load(f)
    entries = data["entries"] if isinstance(data, dict) else data
    return {int(e["prototype_id"]): e for e in entries}


def page_header(method, image_path: str) -> report.Header:
    """Model, provenance, input and protocol (thresholds and where they come from)."""
    m = method.config.model
    thr = method.thresholds
    protocol = (
        f"decisions at per-class operating thresholds ({thr.get('criterion', 'best F1')}) "
        f"chosen on the {thr.get('split', '?')} split"
        if thr
        else f"no operating thresholds saved with this model: classes at p >= "
        f"{float(method.config.explain.threshold):.2f} are explained, no decisions are made"
    )
    model = f"CIPL, {m.backbone}, {int(m.prototypes_per_class)} prototypes per class"
    return method.page_header(
        model,
        image_path,
        f"{protocol}; eval transform at {int(m.image_size)} px; probabilities are "
        "sigma(z_k - z_background)",
    )


def _decision_rows(method, probs: dict[str, float]) -> list[dict]:
    rows = method.decisions(probs)
    bg_name = method.index.class_names[method.background]
    any_known = any(r["decision"] is not None for r in rows)
    rows.append(
        {
            "class": bg_name,
            "probability": None,
            "threshold": None,
            "decision": (not any(r["decision"] for r in rows)) if any_known else None,
            "note": "background (reference class): positive when no finding is",
        }
    )
    return rows


def _source_panel(atlas_dir: str, entry: dict) -> tuple[np.ndarray, str]:
    source = os.path.join(atlas_dir, entry.get("source_image") or entry["image"])
    if not os.path.isfile(source):  # an atlas from before the source panels
        source = os.path.join(atlas_dir, entry["image"])
    image = load_image(source)
    labels = ", ".join(entry.get("source_labels", [])) or "no labels recorded"
    title = (
        f"prototype p{entry['prototype_id']} of {entry['class_name']}, from training image "
        f"{entry['source_image_id']} ({labels})"
    )
    return image, title


def explain(
    method,
    state: State,
    image_path: str,
    out_dir: str,
    box: Sequence[float] | None = None,
    atlas_dir: str | None = None,
) -> dict:
    """Explains ``image_path``; ``box`` = (x, y, w, h) in original image pixels (drawn green).

    ``atlas_dir`` is a push folder, a workdir (its latest push is used) or an export (its
    ``atlas/``); without an atlas the prototype source panels are left out (the page says so).
    """
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
    decisions = _decision_rows(method, probs)
    warnings = []
    if method.thresholds:
        positive = {r["class"] for r in decisions if r["decision"] and r["probability"] is not None}
        predicted = [k for k in method.fg_eval if names[k] in positive]
    else:
        warnings.append(
            "this model was saved without operating thresholds (an export from before "
            "thresholds.json): probabilities are shown, decisions are not"
        )
        predicted = [k for k in method.fg_eval if probs[names[k]] >= float(cfg.explain.threshold)]
    explained_top = not predicted
    if not predicted:
        predicted = [max(method.fg_eval, key=lambda k: probs[names[k]])]

    # Figures at least DISPLAY_MIN px wide so small inputs stay readable; the maps' grid
    # (network-input pixels) is scaled with them.
    shown_size = max(size, overlays.DISPLAY_MIN)
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
    if not atlas:
        warnings.append(
            "no prototype atlas found with this model (no push yet, or an export written "
            "without it): the prototypes' source images are left out"
        )
    header = page_header(method, image_path)
    result = {
        "image": image_path,
        "probabilities": probs,
        "decisions": decisions,
        "thresholds": method.thresholds,
        "predicted": [],
        "box": boxes,
        "atlas": atlas_dir,
    }
    sections = [
        {
            "heading": "Decisions",
            "text": "Each finding is positive when its probability reaches its operating "
            "threshold."
            + (
                " No finding is positive; the most probable one is explained."
                if explained_top and method.thresholds
                else ""
            ),
            "decisions": decisions,
        }
    ]
    if atlas_dir:
        sections.append(
            {
                "heading": "Prototype atlas",
                "links": [
                    {"href": os.path.join(atlas_dir, "atlas.html"), "text": "all prototypes"}
                ],
            }
        )
    for k in predicted:
        protos = np.arange(k * ppc, (k + 1) * ppc)
        sims = np.exp(-min_d[protos] / scale)
        order = np.argsort(-sims, kind="stable")[: int(cfg.explain.top_prototypes)]
        items, figures = [], []
        for rank, r in enumerate(order):
            j = int(protos[r])
            sim_map = np.exp(-dist[:, :, j] / scale)
            heat = overlays.heatmap_overlay(
                shown, sim_map, alpha=0.3, interpolation="bicubic", grid=grid
            )
            patch = overlays.high_activation_box(sim_map, (shown_size, shown_size), grid=grid)
            heat = overlays.draw_boxes(heat, [patch], color=(255, 255, 0))
            if boxes:
                heat = overlays.draw_boxes(heat, boxes, color=(0, 255, 0))
            panels = [heat]
            titles = [f"this image: the region most like prototype p{j} (similarity {sims[r]:.3f})"]
            if j in atlas:
                source, title = _source_panel(atlas_dir, atlas[j])
                panels.append(source)
                titles.append(title)
            label = f"similarity exp(-d / {scale:g}) to p{j}"
            lo, hi = float(sim_map.min()), float(sim_map.max())
            figure = overlays.with_colorbar(
                overlays.side_by_side(panels, titles, height=shown_size), label, lo, hi
            )
            fname = f"{names[k]}_{rank:02d}_proto{j}.png".replace("/", "_").replace(" ", "_")
            overlays.save_png(os.path.join(out_dir, fname), figure)
            item = {
                "prototype": j,
                "similarity": float(sims[r]),
                "weight": float(weights[j, k]),
                "contribution": float(weights[j, k] * sims[r]),
                "patch_box_xywh": [round(v / zoom, 2) for v in patch],
                "source_image_id": atlas[j]["source_image_id"] if j in atlas else None,
                "figure": fname,
            }
            items.append(item)
            what = f"looks like {titles[1]}" if len(titles) > 1 else f"prototype p{j} (no atlas)"
            caption = (
                f"#{rank + 1}: this image {what}. Similarity {sims[r]:.3f} x weight "
                f"{weights[j, k]:.3f}. Yellow: the 95th-percentile region; green: the reference "
                "box."
            )
            figures.append(
                {
                    "image": fname,
                    "caption": caption,
                    "alt": f"{names[k]} evidence #{rank + 1}: " + "; next to it: ".join(titles),
                    "colorbar": {"label": label, "min": lo, "max": hi},
                    "wide": True,
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
                "heading": f"{names[k]} (p = {probs[names[k]]:.3f}): this looks like that",
                "table": [{k2: v for k2, v in it.items() if k2 != "figure"} for it in items],
                "figures": figures,
            }
        )
    with open(os.path.join(out_dir, EXPLANATION_JSON), "w") as f:
        json.dump(result, f, indent=1)
    report.write_html_report(
        os.path.join(out_dir, REPORT_HTML),
        f"CIPL explanation: {os.path.basename(image_path)}",
        sections,
        header,
        warnings,
    )
    return result
