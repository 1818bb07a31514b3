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

from jaxproto.core import outputs
from jaxproto.methods.cfn import bottleneck
from jaxproto.methods.cfn import cbm as cbm_lib


def explain(method, state, request) -> dict[str, str]:
    """Writes ``explanation.json`` and ``explanation.html`` into ``request.out_dir``."""
    cbm = bottleneck.load(request.source, method.config.cfn)
    image = method.eval_example_path(request.image)
    out = method.predict(state, {"image": jnp.asarray(image[None])})
    emb = np.asarray(jax.device_get(out[outputs.FEATURES]))
    logits, w, beta = cbm.scores(emb)
    logits, w, beta = logits[0], w[0], float(beta[0])
    probs = cbm_lib.probabilities(logits[None], bool(method.index.multilabel))[0]
    cls = int(np.argmax(logits))
    contrib, residual = cbm.contributions(w, beta, cls)
    top = np.argsort(-contrib)[: int(method.config.cfn.explain_top)]
    rows = []
    for k in top:
        j = int(cbm.latents[k])
        rows.append(
            {
                "concept": int(k),
                "latent": j,
                "name": cbm.names.get(j, f"latent #{j}"),
                "weight": float(w[k]),
                "contribution": float(contrib[k]),
                "probing_images": cbm.thumbnails(j),
            }
        )
    result = {
        "image": request.image,
        "probabilities": dict(zip(method.class_names(), map(float, probs), strict=True)),
        "predicted": method.class_names()[cls],
        "top_concepts": rows,
        "residual_term": residual,
        "class_bias": float(cbm.intercept[cls]),
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
