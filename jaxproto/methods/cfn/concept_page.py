"""The browsable concept pages of a CFN run (issue #14): every alive SAE latent with its name
(and where the name came from), whether and how the CBM uses it, its activation statistics,
its probing images (the top-activating training images, naming's streaming top-k) and where
on each image it fires (`spatial`), so a clinician can check or rename concepts.

``report/concepts.html`` is the index: run summary, how to rename, and one table row per alive
latent (selected concepts first, by their largest |class weight| in the CBM, then the others by
how often they fire), linking to ``report/latents/page_NNN.html#latent-j``, the detail pages
(``cfn.report.latents_per_page`` latents each, so the pages stay quick to open for 8x
dictionaries of 8192 latents). Every page has a JSON twin. The pages carry no date: they are
stage artefacts, identical when a killed run is resumed.
"""

from __future__ import annotations

import functools
import json
import os

import cv2
import numpy as np
from PIL import Image

from jaxproto.core import metrics as metrics_lib
from jaxproto.methods.cfn import bottleneck, spatial
from jaxproto.methods.cfn import data as data_lib
from jaxproto.viz import overlays, report

PAGE_DIR = "latents"


def latent_aucs(z: np.ndarray, present: np.ndarray) -> np.ndarray:
    """AUC of every latent's activation for a binary ``present`` (ties count half)."""
    pos, n = int(present.sum()), len(present)
    if pos in (0, n):
        return np.full(z.shape[1], np.nan)
    out = np.empty(z.shape[1])
    for j in range(z.shape[1]):
        out[j] = metrics_lib.binary_auc(present, z[:, j])
    return out


def activation_stats(z, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per latent over the rows of ``z`` (N, F): fraction of rows where it fires, max, mean."""
    fired = np.zeros(z.shape[1])
    total = np.zeros(z.shape[1])
    peak = np.zeros(z.shape[1], np.float32)
    for s in range(0, len(z), chunk):
        part = np.asarray(z[s : s + chunk], np.float32)
        fired += (part > 0).sum(axis=0)
        total += part.sum(axis=0, dtype=np.float64)
        peak = np.maximum(peak, part.max(axis=0))
    return {"frequency": fired / len(z), "max": peak, "mean": total / len(z)}


def test_aucs(runner, latents: np.ndarray) -> np.ndarray | None:
    """Synthetic primitives only: (C, J) AUC of each latent's test activation for each planted
    concept (NaN where a concept is on every test image or on none); None for other data."""
    if runner.config.data.get("name") != "primitives":
        return None
    concepts = np.stack([r.concepts for r in runner.index.split("test")])
    z = np.asarray(runner.z("test"))[:, latents]
    return np.stack([latent_aucs(z, concepts[:, c]) for c in range(concepts.shape[1])])


def _truth(runner, alive: np.ndarray) -> dict[int, tuple[str, float]] | None:
    """Synthetic primitives only: per alive latent the planted primitive its test activations
    separate best, with that AUC."""
    aucs = test_aucs(runner, alive)
    if aucs is None:
        return None
    aucs = np.where(np.isnan(aucs), -np.inf, aucs)
    best = np.argmax(aucs, axis=0)
    return {
        int(j): (runner.index.concept_names[int(b)], float(aucs[b, i]))
        for i, (j, b) in enumerate(zip(alive, best, strict=True))
        if np.isfinite(aucs[b, i])
    }


def _name_source(source: str, latent: int, name: str) -> str:
    if source != "index" and name == f"latent #{latent}":
        return "none (index fallback)"
    return source


def latent_rows(runner) -> list[dict]:
    """One row per alive latent, in page order, with everything the pages show."""
    alive, rows, names = runner.naming()
    values = np.load(os.path.join(runner.d("naming"), "topk_values.npy"))
    stats = activation_stats(runner.z("train"))
    cavs, latents = runner.selected()
    with np.load(os.path.join(runner.d("cbm"), "cbm.npz")) as f:
        v = bottleneck.class_weights(str(runner.cfg.cbm.features), f["coef"], cavs)
    classes = runner.index.class_names
    concept_of = {int(j): k for k, j in enumerate(latents)}
    truth = _truth(runner, alive)
    out = []
    for j in (int(j) for j in alive):
        k = concept_of.get(j)
        row = {
            "latent": j,
            "name": names.get(j, f"latent #{j}"),
            "frequency": float(stats["frequency"][j]),
            "max": float(stats["max"][j]),
            "mean": float(stats["mean"][j]),
            "concept": k,
            "top": [(int(r), float(a)) for r, a in zip(rows[j], values[j], strict=True) if a > 0],
        }
        row["name_source"] = _name_source(str(runner.cfg.naming.source), j, row["name"])
        if k is not None:
            y = int(np.argmax(np.abs(v[:, k])))
            row["class_weight"], row["class"] = float(v[y, k]), classes[y]
        if truth is not None and j in truth:
            row["truth"] = truth[j]
        out.append(row)
    out.sort(
        key=lambda r: (
            r["concept"] is None,
            -abs(r.get("class_weight", 0.0)) if r["concept"] is not None else -r["frequency"],
            r["latent"],
        )
    )
    return out


def _role(row: dict) -> str:
    if row["concept"] is None:
        return "not selected"
    return f"concept {row['concept']}: V = {row['class_weight']:+.3g} for {row['class']}"


def _table_row(row: dict, rank: int, href: str | None) -> dict:
    cells = {
        "rank": rank,
        "latent": {"href": href, "text": f"#{row['latent']}"} if href else row["latent"],
        "name": row["name"],
        "name from": row["name_source"],
        "in the CBM": _role(row),
        "fires on": f"{row['frequency']:.1%}",
        "max": row["max"],
        "mean": row["mean"],
    }
    if "truth" in row:
        cells["best planted primitive (test AUC)"] = f"{row['truth'][0]} ({row['truth'][1]:.3f})"
    return cells


def _thumbnailer(records, size: int, thumb: int):
    """``fn(row) -> the training image as the model sees it (the input crop) at thumb px``,
    cached: frequent images are probing images of many latents."""

    @functools.lru_cache(maxsize=4096)
    def crop(r: int) -> np.ndarray:
        return cv2.resize(data_lib.display_image(records[r].path, size), (thumb, thumb))

    return crop


def _montage(row: dict, crops: list, maps, grid) -> tuple[np.ndarray, float]:
    """Probing images above their activation overlays, sharing one scale (0 .. the largest
    a_j over these images); (image, that largest value)."""
    shown, thumb = row["top"], crops[0].shape[0]
    titles = [f"#{t + 1} z={a:.3g}" for t, (_, a) in enumerate(shown)]
    top = overlays.side_by_side(crops, titles, height=thumb)
    if maps is None:
        return top, 0.0
    heat = [maps[(r, row["latent"])] for r, _ in shown]
    vmax = max(float(max(h.max() for h in heat)), 1e-12)
    over = [
        overlays.heatmap_overlay(c, h / vmax, normalize="none", grid=grid)
        for c, h in zip(crops, heat, strict=True)
    ]
    return np.concatenate([top, overlays.side_by_side(over, height=thumb)]), vmax


def _save_jpeg(path: str, image: np.ndarray) -> str:
    """JPEG (quality 90): about 45 KB a latent on the synthetic run, 4x less than PNG, so the
    pages of an 8x dictionary's 8192 latents stay near 0.4 GB."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=90)
    return path


def _detail_section(row: dict, rank: int, image: str, vmax: float, tap: str | None) -> dict:
    name, j = row["name"], row["latent"]
    figure = {
        "image": image,
        "wide": True,
        "alt": f"the {len(row['top'])} training images on which latent {j} ({name}) fires most"
        + (", and below each where on it the latent fires" if tap else ""),
        "caption": "top: probing images (the model's input crop) with the latent's activation z; "
        + (
            f"bottom: a_j(x, y), the SAE latent applied at each position of the {tap} map "
            "that is average-pooled into the embedding."
            if tap
            else "no activation map: this backbone's embedding is not an average of a spatial map."
        ),
    }
    if tap:
        figure["colorbar"] = {"label": f"a_j(x, y) of latent {j}", "min": 0.0, "max": vmax}
    return {
        "id": f"latent-{j}",
        "heading": f"{rank}. {name} (latent #{j})",
        "table": [_table_row(row, rank, None)],
        "figures": [figure],
    }


def _header(runner, n_train: int) -> report.Header:
    with open(os.path.join(runner.d("opaque"), "done.json")) as f:
        opaque = json.load(f)["stats"]
    model = runner.config.model
    return report.Header(
        model=f"CFN / {model.backbone} (embedding tap {model.tap})",
        model_id=f"opaque model: {opaque['checkpoint']} checkpoint, step {opaque['step']}",
        source="this workdir: cfn/opaque/model.npz, cfn/sae/sae.npz, cfn/cbm/cbm.npz",
        input=f"the training split ({n_train} images) for probing images and statistics",
        protocol=f"SAE latents named from their top-{int(runner.cfg.naming.top_k)} training "
        f"images (cfn.naming.source = {runner.cfg.naming.source}); CBM on "
        f"{runner.cfg.cbm.features}",
        date="not stamped (a reproducible stage artefact)",
    )


def write(runner, out: str, evaluation: dict) -> dict:
    """Writes the index ``concepts.html``, the detail pages and their images into ``out`` (the
    report stage folder), plus ``img/latent{j}_{t}.png`` thumbnails of the selected concepts'
    probing images (what ``explain`` shows); returns page statistics."""
    cfg, model = runner.cfg.report, runner.config.model
    rows = latent_rows(runner)
    for row in rows:
        row["top"] = row["top"][: int(cfg.images_per_latent)]
    records = runner.index.split("train")
    size, thumb = int(model.image_size), int(cfg.thumb_size)
    maps, tap, grid = None, None, None
    if spatial.has_maps(model.backbone, model.tap):
        pairs: dict[int, list[int]] = {}
        for row in rows:
            for r, _ in row["top"]:
                pairs.setdefault(r, []).append(row["latent"])
        maps = spatial.probing_maps(
            model, runner.opaque_state(), runner.sae_params(), records, pairs,
            bool(model.clip_norm), int(runner.cfg.embed_batch_size),
        )  # fmt: skip
        tap, grid = model.tap, spatial.grid(model.backbone, model.tap, thumb / size)
    header = _header(runner, len(records))
    per_page = max(1, int(cfg.latents_per_page))
    pages = [rows[s : s + per_page] for s in range(0, len(rows), per_page)]
    names = [f"{PAGE_DIR}/page_{p + 1:03d}.html" for p in range(len(pages))]
    details, index_rows, rank = [], [], 0
    thumb_of = _thumbnailer(records, size, thumb)
    for page, chunk in zip(names, pages, strict=True):
        sections = []
        for row in chunk:
            rank += 1
            crops = [thumb_of(r) for r, _ in row["top"]]
            montage, vmax = _montage(row, crops, maps, grid)
            image = _save_jpeg(
                os.path.join(out, PAGE_DIR, "img", f"latent{row['latent']}.jpg"), montage
            )
            sections.append(_detail_section(row, rank, image, vmax, tap))
            index_rows.append(_table_row(row, rank, f"{page}#latent-{row['latent']}"))
            if row["concept"] is not None:  # what explain shows of a selected concept
                for t, crop in enumerate(crops):
                    path = os.path.join(out, "img", f"latent{row['latent']}_{t}.png")
                    overlays.save_png(path, crop)
        title = f"CFN latents {rank - len(chunk) + 1}-{rank} of {len(rows)}"
        details.append((os.path.join(out, page), title, sections))
    # The index links into the detail pages and they link back and to each other: both sides
    # must exist when a page is written, so the detail pages are written once bare, then again
    # with their navigation once the index exists.
    for path, title, sections in details:
        report.write_html_report(path, title, sections, header)
    sections = _index_sections(runner, rows, index_rows, evaluation, len(pages))
    report.write_html_report(os.path.join(out, "concepts.html"), "CFN concepts", sections, header)
    for p, (path, title, sections) in enumerate(details):
        nav = [{"href": "../concepts.html#latents", "text": "index of every latent"}]
        nav += [{"href": os.path.basename(names[q]), "text": label}
                for q, label in ((p - 1, "previous page"), (p + 1, "next page"))
                if 0 <= q < len(pages)]  # fmt: skip
        report.write_html_report(path, title, [{"links": nav}, *sections], header)
    return {"latents_listed": len(rows), "pages": len(pages)}


def _index_sections(runner, rows, index_rows, evaluation: dict, n_pages: int) -> list[dict]:
    sae = evaluation["sae"]
    selected = sum(r["concept"] is not None for r in rows)
    summary = [
        {"quantity": "SAE latents (dictionary size)", "value": int(sae["num_latents"])},
        {"quantity": "alive (fire on some training image): listed below", "value": len(rows)},
        {"quantity": "dead (never fire on the training split)", "value": int(sae["train"]["dead"])},
        {"quantity": "selected as CBM concepts (facility location)", "value": selected},
        {
            "quantity": "named from the data (not the index fallback)",
            "value": sum(not r["name_source"].startswith(("none", "index")) for r in rows),
        },
        {
            "quantity": "opaque model test accuracy",
            "value": evaluation["opaque"]["test"]["accuracy"],
        },
        {"quantity": "CBM test accuracy", "value": evaluation["cbm"]["test"]["accuracy"]},
    ]
    truth = evaluation.get("truth")
    if truth:
        summary.append(
            {
                "quantity": "planted primitives with a latent of test AUC >= 0.9 / named right "
                "(table at the end)",
                "value": f"{truth['fraction_auc_0.9']:.0%} / {truth['fraction_named_right']:.0%}",
            }
        )
    sections = [
        {"heading": "Run summary", "table": summary},
        {
            "heading": "How to check or rename concepts",
            "text": [
                "Open a latent to see its probing images (the training images on which it fires "
                "most) and, under each, where on the image it fires. If the name does not fit, "
                "write a CSV with a header line 'latent,name' and one row per latent "
                "(e.g. '17,irregular pigment network'), then rerun training with "
                "--config.cfn.naming.source=csv --config.cfn.naming.csv=FILE: the naming stage "
                "and everything after it are rebuilt; latents missing from the file are named "
                "'latent #j'.",
                "'fires on' is the fraction of training images with z_j > 0; max and mean are "
                "z_j over the training split. 'in the CBM' gives, for a selected concept, its "
                "class weight V[y, k] of largest magnitude (its contribution to that class's "
                "logit per unit of OMP weight, cfn.md §8).",
            ],
        },
    ]
    sections.append(
        {
            "id": "latents",
            "heading": f"Every alive latent ({len(rows)}; selected concepts first)",
            "table": index_rows,
            "caption": f"{n_pages} detail page(s) of up to "
            f"{int(runner.cfg.report.latents_per_page)} latents each; follow a latent's link "
            "for its images.",
        }
    )
    truth = evaluation.get("truth")
    if truth:
        sections.append(
            {
                "heading": "Planted truth (synthetic primitives)",
                "text": "Per class-relevant primitive, the latent whose test-split activation "
                "separates it best and whether its name contains the primitive.",
                "table": [
                    {
                        "primitive": p,
                        "latent": t["latent"],
                        "test AUC": t["auc"],
                        "name": t["name"],
                        "named right": t["named_right"],
                    }
                    for p, t in truth["primitives"].items()
                ],  # fmt: skip
            }
        )
    return sections
