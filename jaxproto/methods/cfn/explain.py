"""CFN explanation of one image (cfn.md §8): class probabilities of the concept bottleneck and,
for the predicted class y, the top concept contributions w_k V[y, k] (named, with each concept's
probing images), the OMP residual/bias term beta (a_y . 1) shown as such, not as a concept."""

from __future__ import annotations

import html
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.methods.cfn import omp as omp_lib
from jaxproto.methods.cfn import stages


def _artefacts(source: str) -> str:
    root = os.path.join(source, "cfn")
    for stage in ("opaque", "selection", "cbm", "report"):
        if not os.path.isfile(os.path.join(root, stage, "done.json")):
            raise UserError(f"{source}: CFN stage {stage!r} not finished; rerun jaxproto.train")
    return root


def contributions(cavs, coef, intercept, w, beta, cls: int, features: str) -> tuple:
    """(per-concept contributions (K,), residual term, class bias) for class ``cls``."""
    if features == "reconstruction":
        v = coef[cls] @ cavs.T  # V[y, k] = a_y . c_k
        return w * v, beta * float(coef[cls].sum()), float(intercept[cls])
    return w * coef[cls], 0.0, float(intercept[cls])


def explain(method, request) -> dict[str, str]:
    """Writes ``explanation.json`` and ``explanation.html`` into ``request.out_dir``."""
    root = _artefacts(request.source)
    opaque = stages.load_tree(os.path.join(root, "opaque", "model.npz"))
    image = method.eval_example_path(request.image)
    out = method.predict(opaque, {"image": jnp.asarray(image[None])})
    emb = np.asarray(jax.device_get(out["embedding"]))
    sel = np.load(os.path.join(root, "selection", "select_idx.npy"))
    cavs = np.load(os.path.join(root, "cav", "concept_cav.npy"))[sel]
    latents = np.load(os.path.join(root, "cav", "latents.npy"))[sel]
    with open(os.path.join(root, "naming", "names.json")) as f:
        names = json.load(f)
    cfg = method.config.cfn
    w, beta = omp_lib.omp(
        jnp.asarray(cavs.T), jnp.asarray(emb), int(cfg.omp.n_nonzero), bool(cfg.omp.fit_intercept)
    )
    w, beta = np.asarray(w)[0], float(np.asarray(beta)[0])
    with np.load(os.path.join(root, "cbm", "cbm.npz")) as f:
        coef, intercept = f["coef"], f["intercept"]
    feats = stages.cbm_features(cfg.cbm.features, cavs, w[None], np.array([beta]))
    logits = feats[0] @ coef.T + intercept
    if method.index.multilabel:
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
    cls = int(np.argmax(logits))
    contrib, residual, bias = contributions(cavs, coef, intercept, w, beta, cls, cfg.cbm.features)
    top = np.argsort(-contrib)[: int(cfg.explain_top)]
    rows = []
    for k in top:
        j = int(latents[k])
        img_dir = os.path.join(root, "report", "img")
        thumbs = sorted(p for p in os.listdir(img_dir) if p.startswith(f"latent{j}_"))
        rows.append(
            {
                "concept": int(k),
                "latent": j,
                "name": names.get(str(j), f"latent #{j}"),
                "weight": float(w[k]),
                "contribution": float(contrib[k]),
                "probing_images": [os.path.join(img_dir, t) for t in thumbs],
            }
        )
    result = {
        "image": request.image,
        "probabilities": dict(zip(method.class_names(), map(float, probs), strict=True)),
        "predicted": method.class_names()[cls],
        "top_concepts": rows,
        "residual_term": residual,
        "class_bias": bias,
        "logit": float(logits[cls]),
    }
    os.makedirs(request.out_dir, exist_ok=True)
    jpath = os.path.join(request.out_dir, "explanation.json")
    with open(jpath, "w") as f:
        json.dump(result, f, indent=1)
    hpath = os.path.join(request.out_dir, "explanation.html")
    with open(hpath, "w") as f:
        f.write(_page(result))
    return {"json": jpath, "html": hpath}


def _page(r: dict) -> str:
    probs = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in r["probabilities"].items()
    )
    concepts = ""
    for c in r["top_concepts"]:
        imgs = "".join(f'<img src="file://{p}" width="64">' for p in c["probing_images"])
        concepts += (
            f"<tr><td>{html.escape(c['name'])}</td><td>{c['contribution']:.3f}</td>"
            f"<td>{imgs}</td></tr>"
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>CFN explanation</title>"
        f"<h1>{html.escape(r['predicted'])}</h1><table>{probs}</table>"
        f"<h2>Top concepts (w_k &middot; V_yk)</h2><table>{concepts}</table>"
        f"<p>Residual / bias term &beta;(a_y&middot;1) = {r['residual_term']:.3f} (not a concept);"
        f" class bias {r['class_bias']:.3f}; logit {r['logit']:.3f}</p>"
    )
