"""CFN's final stage: evaluation (opaque model beside the CBM, concept statistics, and for the
synthetic primitives the planted-truth check) plus the browsable concept pages
(``concepts.html``, `concept_page`: every alive latent with its name, statistics, probing
images and activation overlays) for clinicians to check or rename concepts (write the
corrections into a ``latent,name`` CSV, cfn.naming.source=csv)."""

from __future__ import annotations

import json
import os

import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.data import primitives
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.methods.cfn import concept_page


def write(runner, out: str) -> dict:
    """Writes ``evaluation.json`` and the concept pages into ``out``; returns the summary."""
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
    _, latents = runner.selected()
    _, _, names = runner.naming()
    result["concepts"] = {"num_selected": len(latents), "num_named": len(names)}
    truth = planted_truth(runner, names)
    if truth is not None:
        result["truth"] = truth
    with open(os.path.join(out, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    pages = concept_page.write(runner, out, result)
    summary = {
        "opaque_test_accuracy": opaque_acc,
        "cbm_test_accuracy": cbm_acc,
        "ratio": result["cbm_over_opaque_test_accuracy"],
        **pages,
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


def planted_truth(runner, names: dict[int, str]) -> dict | None:
    """For primitives data: per class-relevant primitive, the best-separating latent on the
    test split (AUC), its report-derived name and whether the name contains the primitive's."""
    alive = np.array(sorted(names))
    aucs = concept_page.test_aucs(runner, alive)
    if aucs is None:
        return None
    relevant, _ = primitives.primitive_names(runner.config.data.like)
    rows = {}
    for p in relevant:
        col = aucs[runner.index.concept_names.index(p)]
        best = int(np.nanargmax(col))
        latent = int(alive[best])
        name = names[latent]
        rows[p] = {
            "latent": latent, "auc": float(col[best]), "name": name,
            "named_right": p in name.split(),
        }  # fmt: skip
    good = [r for r in rows.values() if r["auc"] >= 0.9]
    return {
        "primitives": rows,
        "min_auc": min(r["auc"] for r in rows.values()),
        "fraction_auc_0.9": len(good) / len(rows),
        "fraction_named_right": sum(r["named_right"] for r in rows.values()) / len(rows),
    }
