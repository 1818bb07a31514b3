"""CFN explanation of one image (cfn.md §8): class probabilities of the concept bottleneck and,
for the predicted class y, the top concept contributions w_k V[y, k] (named, with each concept's
probing images), the OMP residual/bias term beta (a_y . 1) shown as such, not as a concept."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxproto.core import outputs
from jaxproto.methods.cfn import bottleneck
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.viz import overlays, report

MULTILABEL_THRESHOLD = 0.5  # per-label decision on the CBM's sigmoid


def explain(method, state, request) -> dict[str, str]:
    """Writes ``explanation.json`` and ``report.html`` (with the input and probing images beside
    it) into ``request.out_dir``."""
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
    hpath = _page(method, request, result, bool(method.index.multilabel))
    return {"json": jpath, "html": hpath}


def _copy(src: str, dst_dir: str, name: str) -> str:
    """``src`` copied into the page's folder (the page opens offline, moved or not)."""
    dst = os.path.join(dst_dir, name)
    shutil.copyfile(src, dst)
    return dst


def _decisions(result: dict, multilabel: bool) -> list[dict]:
    """Multi-label: each finding's CBM sigmoid against 0.5; single-label: the arg-max class."""
    rows = []
    for name, p in result["probabilities"].items():
        if multilabel:
            t = MULTILABEL_THRESHOLD
            row = {"probability": p, "threshold": t, "decision": p >= t}
        else:
            row = {"probability": p, "threshold": None, "decision": name == result["predicted"]}
        rows.append({"class": name, **row})
    return rows


def _page(method, request, r: dict, multilabel: bool) -> str:
    """report.html in the shared page template: decisions, the input image, then each top
    concept with its contribution and probing images, then the residual term as such."""
    out = request.out_dir
    shown = _copy(request.image, out, "input" + os.path.splitext(request.image)[1])
    sections = [
        {
            "heading": f"Concept-bottleneck prediction: {r['predicted']}",
            "text": "Probabilities of the logistic regression on the concept rebuild (CBM); "
            + (
                f"a finding is positive at probability ≥ {MULTILABEL_THRESHOLD}."
                if multilabel
                else "the decision is the most probable class (arg-max), so there is no "
                "per-class threshold."
            ),
            "decisions": _decisions(r, multilabel),
            "figures": [{"image": shown, "caption": "input image", "alt": "the input image"}],
        }
    ]
    for rank, c in enumerate(r["top_concepts"]):
        strip = [np.asarray(Image.open(pth).convert("RGB")) for pth in c["probing_images"]]
        figures = []
        if strip:
            montage = overlays.side_by_side(
                strip, [f"top {i + 1}" for i in range(len(strip))], height=96
            )
            path = os.path.join(out, "probing", f"latent{c['latent']}.png")
            figures.append(
                {
                    "image": overlays.save_png(path, montage),
                    "alt": f"the {len(strip)} training images on which {c['name']} fires most",
                    "caption": "top-activating training images",
                    "wide": True,
                }
            )
        section = {
            "heading": f"{rank + 1}. {c['name']}: contribution {c['contribution']:+.3f}",
            "text": f"w_k·V_yk to the logit of {r['predicted']} (concept weight w_k = "
            f"{c['weight']:+.3f}; SAE latent #{c['latent']}). The images are the training "
            "images on which this latent fires most (what the concept looks like).",
        }
        if figures:
            section["figures"] = figures
        sections.append(section)
    sections.append(
        {
            "heading": "Not a concept",
            "text": f"Residual / bias term β(a_y·1) = {r['residual_term']:+.3f} and class bias "
            f"{r['class_bias']:+.3f}; the logit of {r['predicted']} is {r['logit']:.3f} = the "
            "sum of every concept's contribution plus these two.",
        }
    )
    protocol = (
        f"concept bottleneck (cbm_features = {method.config.cfn.cbm.features}), top "
        f"{len(r['top_concepts'])} contributions of the predicted class"
    )
    header = method.page_header(f"CFN / {method.config.model.backbone}", request.image, protocol)
    warnings = [] if r["top_concepts"] else ["no concept contributes to this class"]
    path = os.path.join(out, "report.html")
    return report.write_html_report(path, "CFN explanation", sections, header, warnings)
