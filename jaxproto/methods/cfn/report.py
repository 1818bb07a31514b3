"""CFN's final stage: evaluation (opaque model beside the CBM, concept statistics, and for the
synthetic primitives the planted-truth check) plus the browsable concept page ``concepts.html``
(every selected concept: name, SAE latent, statistics, probing images) for clinicians to check
or rename concepts (write the corrections into a ``latent,name`` CSV, cfn.naming.source=csv)."""

from __future__ import annotations

import html
import json
import os

import cv2
import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.core import metrics as metrics_lib
from jaxproto.data.images import load_image
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.viz.overlays import save_png

THUMBS = 6


def write(runner, out: str) -> dict:
    """Writes ``evaluation.json`` and ``concepts.html`` into ``out``; returns the summary."""
    index, ml = runner.index, bool(runner.index.multilabel)
    result = {"opaque": {}, "cbm": {}}
    for split in ("val", "test"):
        labels = np.load(os.path.join(runner.d("embeddings"), f"labels_{split}.npy"))
        for who, folder in (("opaque", "embeddings"), ("cbm", "cbm")):
            scores = np.load(os.path.join(runner.d(folder), f"logits_{split}.npy"))
            result[who][split] = cbm_lib.classification_metrics(
                labels, scores, index.class_names, ml
            )
    opaque_acc, cbm_acc = result["opaque"]["test"]["accuracy"], result["cbm"]["test"]["accuracy"]
    result["cbm_over_opaque_test_accuracy"] = cbm_acc / max(opaque_acc, 1e-12)
    with open(os.path.join(runner.d("sae"), "done.json")) as f:
        result["sae"] = json.load(f)["stats"]
    cavs, latents = runner.selected()
    _, rows, names = runner.naming()
    result["concepts"] = {"num_selected": len(latents), "num_named": len(names)}
    truth = planted_truth(runner, names)
    if truth is not None:
        result["truth"] = truth
    with open(os.path.join(out, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    _concept_page(runner, out, latents, rows, names)
    summary = {
        "opaque_test_accuracy": opaque_acc,
        "cbm_test_accuracy": cbm_acc,
        "ratio": result["cbm_over_opaque_test_accuracy"],
    }
    if truth is not None:
        summary.update({k: v for k, v in truth.items() if k != "primitives"})
    return summary


def check_source_model(root: str, feats: np.ndarray, image_ids: list[str]) -> None:
    """UserError when ``feats`` are embeddings of a stored split (same image ids, in order)
    but differ from what the embeddings stage stored: the evaluated checkpoint is not the model
    the bottleneck was built on."""
    emb_dir = os.path.join(root, "embeddings")
    for split in ("train", "val", "test"):
        ids_path = os.path.join(emb_dir, f"ids_{split}.json")
        if not os.path.isfile(ids_path):
            continue
        with open(ids_path) as f:
            if json.load(f) != list(image_ids):
                continue
        stored = np.load(os.path.join(emb_dir, f"emb_{split}.npy"), mmap_mode="r")
        if not np.allclose(stored, feats, rtol=1e-3, atol=1e-4):
            with open(os.path.join(root, "opaque", "done.json")) as f:
                used = json.load(f)["stats"]
            raise UserError(
                f"{root}: the evaluated checkpoint gives other {split} embeddings than the "
                f"model the concept bottleneck was built on ({used['checkpoint']} state, step "
                f"{used['step']}); evaluate with the matching --checkpoint"
            )
        return


def concept_statistics(cbm, feats: np.ndarray, w: np.ndarray, beta: np.ndarray) -> dict:
    """The bottleneck's concepts and how well a few of them rebuild these embeddings."""
    with open(os.path.join(cbm.root, "sae", "done.json")) as f:
        sae = json.load(f)["stats"]
    f_hat = w @ cbm.cavs + beta[:, None]
    ss_res = float(np.sum((feats - f_hat) ** 2))
    ss_tot = float(np.sum((feats - feats.mean(axis=0)) ** 2))
    named = sum(1 for j in cbm.latents if int(j) in cbm.names)
    return {
        "num_latents": int(sae["num_latents"]),
        "alive_latents_train": int(sae["train"]["alive"]),
        "sae_r2_train": float(sae["train"]["r2"]),
        "sae_l0_train": float(sae["train"]["l0"]),
        "selected": len(cbm.latents),
        "named": named,
        "omp_mean_nonzero": float((w != 0).sum(axis=1).mean()),
        "omp_r2": 1.0 - ss_res / max(ss_tot, 1e-12),
        "concepts_used": int((w != 0).any(axis=0).sum()),
    }


def summary_text(result: dict) -> str:
    """``evaluate``'s text: opaque model beside the CBM (accuracy, mean AUC; per label for
    multi-label data), then the concept statistics."""
    opaque, cbm = result["opaque"], result["cbm"]
    lines = [f"{'':24s}{'opaque':>10s}{'CBM':>10s}"]

    def row(name, a, b):
        fa = "n/a" if a is None else f"{a:.4f}"
        fb = "n/a" if b is None else f"{b:.4f}"
        lines.append(f"{name[:24]:24s}{fa:>10s}{fb:>10s}")

    row("accuracy", opaque["accuracy"], cbm["accuracy"])
    row("mean AUC", opaque["mean_auc"], cbm["mean_auc"])
    for name in opaque["classes"]:
        row(f"AUC {name}", opaque["classes"][name]["auc"], cbm["classes"][name]["auc"])
    for name in opaque.get("label_accuracy", {}):
        row(f"acc {name}", opaque["label_accuracy"][name], cbm["label_accuracy"][name])
    lines.append(f"CBM / opaque accuracy   {result['cbm_over_opaque_accuracy']:.4f}")
    lines.append("concepts: " + ", ".join(f"{k}={v:.4g}" for k, v in result["concepts"].items()))
    return "\n".join(lines)


def latent_aucs(z: np.ndarray, present: np.ndarray) -> np.ndarray:
    """AUC of every latent's activation for a binary ``present`` (ties count half)."""
    pos, n = int(present.sum()), len(present)
    if pos in (0, n):
        return np.full(z.shape[1], np.nan)
    out = np.empty(z.shape[1])
    for j in range(z.shape[1]):
        out[j] = metrics_lib.binary_auc(present, z[:, j])
    return out


def planted_truth(runner, names: dict[int, str]) -> dict | None:
    """For primitives data: per class-relevant primitive, the best-separating latent on the
    test split (AUC), its report-derived name and whether the name contains the primitive's."""
    cfg = runner.config.data
    if cfg.get("name") != "primitives":
        return None
    from jaxproto.data import primitives

    relevant, _ = primitives.primitive_names(cfg.like)
    records = runner.index.split("test")
    concepts = np.stack([r.concepts for r in records])
    z = np.asarray(runner.z("test"))
    alive = np.array(sorted(names))
    rows = {}
    for p in relevant:
        col = runner.index.concept_names.index(p)
        aucs = latent_aucs(z[:, alive], concepts[:, col])
        best = int(np.nanargmax(aucs))
        latent = int(alive[best])
        name = names[latent]
        rows[p] = {
            "latent": latent, "auc": float(aucs[best]), "name": name,
            "named_right": p in name.split(),
        }  # fmt: skip
    good = [r for r in rows.values() if r["auc"] >= 0.9]
    return {
        "primitives": rows,
        "min_auc": min(r["auc"] for r in rows.values()),
        "fraction_auc_0.9": len(good) / len(rows),
        "fraction_named_right": sum(r["named_right"] for r in rows.values()) / len(rows),
    }


def _concept_page(runner, out: str, latents, rows, names) -> None:
    records = runner.index.split("train")
    z = runner.z("train")
    img_dir = os.path.join(out, "img")
    os.makedirs(img_dir, exist_ok=True)
    cards = []
    for rank, j in enumerate(latents):
        j = int(j)
        thumbs = []
        for t, r in enumerate(rows[j][:THUMBS]):
            img = load_image(records[int(r)].path)
            img = cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA)
            rel = f"img/latent{j}_{t}.png"
            save_png(os.path.join(out, rel), img)
            thumbs.append(
                f'<figure><img src="{rel}" width="96"><figcaption>'
                f"{float(z[int(r), j]):.3g}</figcaption></figure>"
            )
        col = np.asarray(z[:, j])
        cards.append(
            f'<div class="c"><h3>#{rank + 1} {html.escape(names.get(j, f"latent #{j}"))}</h3>'
            f"<p>latent {j} &middot; active on {float((col > 0).mean()):.1%} of training images"
            f" &middot; max {float(col.max()):.3g}</p>{''.join(thumbs)}</div>"
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>CFN concepts</title><style>"
        "body{font-family:sans-serif}.c{border:1px solid #ccc;margin:6px;padding:6px}"
        "figure{display:inline-block;margin:2px;text-align:center}</style>"
        f"<h1>CFN concepts ({len(latents)} selected)</h1>"
        "<p>To rename, write <code>latent,name</code> rows into a CSV and rerun with "
        "<code>--config.cfn.naming.source=csv --config.cfn.naming.csv=FILE</code>.</p>"
        + "".join(cards)
    )
    with open(os.path.join(out, "concepts.html"), "w") as f:
        f.write(page)
