"""Med-MICN's three aligned explanations of one prediction (specs/medmicn.md §1, §8): the
concept-probability bar chart, the Gödel rule of the predicted class with each literal's truth
degree, and Grad-CAM saliency on the backbone's last conv block — for the predicted class and
for each concept (its own gradient map) — all from the same forward pass, as PNG + JSON + HTML.

Grad-CAM (Selvaraju et al. 2017): weights α_k = spatial mean of ∂score/∂A_k, map ReLU(Σ α_k A_k).
For global-average-pooled backbones (ResNet, DenseNet, and the ``pooled`` feature) α is the
gradient w.r.t. the pooled vector (∂/∂A_hwk = ∂/∂pooled_k / HW), read at the input of the first
Dense after pooling (the ImageNet head, or the pre-projection) through a Linen method
interceptor; VGG's head sees the 7x7 adaptive pool, whose gradient is averaged over the cells.
Scores are the fused logit of the class and each concept's logit.
"""

from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxproto.backbones import get_spec
from jaxproto.core.method import ExplainRequest
from jaxproto.data.images import load_image
from jaxproto.methods.medmicn import data as data_lib
from jaxproto.methods.medmicn import rules as rules_lib
from jaxproto.viz import overlays, report

HEAD_INPUT = {
    "resnet": "fc",
    "densenet": "classifier",
    "vgg": "classifier_0",
    "convnext": "head_fc",
}


def _head_module(model) -> str:
    if model.backbone_feature == "pooled":
        return "pre_proj"
    return HEAD_INPUT[get_spec(model.backbone).family]


def _forward(model, variables: dict, image: jax.Array, eps: jax.Array | None, seen: list):
    """Eval-mode outputs with ``eps`` added to the input of the head module (Grad-CAM probe)."""
    target = _head_module(model)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name == target:
            x = args[0]
            seen.append(x.shape)
            return next_fun(x if eps is None else x + eps, *args[1:], **kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        return model.apply(variables, image, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _grad_cam(model, variables: dict, image: jax.Array) -> tuple[dict, jax.Array]:
    seen: list = []
    out = _forward(model, variables, image, None, seen)
    if not seen:
        raise RuntimeError(f"Grad-CAM: no module named {_head_module(model)!r} in the model")

    def scores(eps):
        o = _forward(model, variables, image, eps, [])
        return jnp.concatenate([o["fused_logits"][0], o["concept_logits"][0]])

    jac = jax.jacrev(scores)(jnp.zeros(seen[0], jnp.float32))[:, 0]  # (K + N, D)
    fmap = out["cam_map"][0]  # (h, w, C)
    c = fmap.shape[-1]
    if jac.shape[-1] != c:  # VGG: the head sees a (C, 7, 7) flatten
        jac = jac.reshape(jac.shape[0], c, -1).mean(axis=-1)
    return out, jax.nn.relu(jnp.einsum("hwc,mc->mhw", fmap, jac))


def grad_cam(model, variables: dict, image: jax.Array) -> tuple[dict, np.ndarray]:
    """(outputs for ``image`` (1, H, W, 3) in eval mode, maps (K + N, h, w)): Grad-CAM of each
    class's fused logit, then of each concept's logit, on ``model``'s CAM tap."""
    out, maps = _grad_cam(model, variables, image)
    return out, np.asarray(maps)


def bar_chart(names: list[str], probs: np.ndarray, highlight: dict[int, str], path: str) -> str:
    """Horizontal bars of concept probabilities with the 0.5 threshold; concepts used by the
    rule are coloured (green: positive literal, red: negated literal)."""
    size, row, left, width = 15, 26, 260, 360
    h = row * len(names) + 50
    img = Image.new("RGB", (left + width + 80, h), "white")
    d = ImageDraw.Draw(img)
    f = overlays.font(size)
    for i, (name, p) in enumerate(zip(names, probs, strict=True)):
        y = 20 + i * row
        color = {"+": (46, 125, 50), "-": (198, 40, 40)}.get(highlight.get(i, ""), (31, 95, 168))
        d.text((8, y + 2), name[:32], fill=(33, 33, 33), font=f)
        d.rectangle([left, y + 3, left + width, y + row - 5], fill=(232, 234, 237))
        d.rectangle([left, y + 3, left + int(width * float(p)), y + row - 5], fill=color)
        d.text((left + width + 8, y + 2), f"{float(p):.2f}", fill=(33, 33, 33), font=f)
    x = left + width // 2
    d.line([x, 12, x, h - 22], fill=(95, 99, 104), width=1)
    d.text((x - 30, h - 20), "p = 0.5", fill=(95, 99, 104), font=f)
    img.save(path, format="PNG")
    return path


def explain(method, state: dict, request: ExplainRequest) -> dict[str, str]:
    """Writes ``bars.png``, ``gradcam.png``, ``concept_maps.png``, ``explanation.json`` and
    ``report.html`` into ``request.out_dir``; returns them by role."""
    os.makedirs(request.out_dir, exist_ok=True)
    raw = load_image(request.image)
    x = data_lib.preprocess(raw, method.image_size, int(method.config.model.resize))
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    out, maps = grad_cam(method.model, variables, jnp.asarray(x[None]))
    out = {k: np.asarray(v)[0] for k, v in out.items()}
    classes, concepts = method.class_names(), list(method.index.concept_names)
    k = len(classes)
    pred = int(np.argmax(out["fused"]))
    local = rules_lib.local_rules(
        out["concept_probs"][None],
        out["sign"][None],
        out["relevance"][None],
        out["y_neural"][None],
        concepts,
        classes,
    )
    rule = next((r for r in local if r.class_index == pred), None)
    view = np.asarray(Image.fromarray(raw).resize((method.image_size,) * 2, Image.BILINEAR))
    if view.ndim == 2:
        view = np.repeat(view[..., None], 3, axis=2)
    files = {}
    highlight = {
        lit.concept: "+" if lit.positive else "-" for lit in (rule.literals if rule else ())
    }
    files["bars"] = bar_chart(
        concepts, out["concept_probs"], highlight, os.path.join(request.out_dir, "bars.png")
    )
    cam = overlays.heatmap_overlay(view, maps[pred], alpha=0.45)
    files["gradcam"] = overlays.save_png(
        os.path.join(request.out_dir, "gradcam.png"),
        overlays.side_by_side([view, cam], ["input", f"Grad-CAM: {classes[pred]}"], height=256),
    )
    order = sorted(highlight) + [i for i in range(len(concepts)) if i not in highlight]
    panels = [overlays.heatmap_overlay(view, maps[k + i], alpha=0.45) for i in order]
    titles = [
        f"{concepts[i]} p={out['concept_probs'][i]:.2f}" + (" (in rule)" if i in highlight else "")
        for i in order
    ]
    rows = [
        overlays.side_by_side(panels[j : j + 5], titles[j : j + 5], height=160)
        for j in range(0, len(panels), 5)
    ]
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    files["concept_maps"] = overlays.save_png(
        os.path.join(request.out_dir, "concept_maps.png"), grid
    )
    rule_text = rule.text() if rule else ""
    literals = [
        {"concept": lit.name, "positive": lit.positive, "truth": lit.truth,
         "probability": float(out["concept_probs"][lit.concept])}
        for lit in (rule.literals if rule else ())
    ]  # fmt: skip
    info = {
        "image": os.path.abspath(request.image),
        "source": request.source,
        "predicted_class": classes[pred],
        "class_probabilities": {n: float(out["fused"][i]) for i, n in enumerate(classes)},
        "neural_symbolic": {n: float(out["y_neural"][i]) for i, n in enumerate(classes)},
        "concept_probabilities": {
            n: float(out["concept_probs"][i]) for i, n in enumerate(concepts)
        },
        "rule": rule_text,
        "rule_literals": literals,
        "rule_active": rule is not None,
        "dcr_temperature": float(method.config.model.dcr_temperature),
        "saliency": "Grad-CAM on backbone tap "
        f"{method.model.conv_tap()!r} (fused logit of {classes[pred]!r}; one map per concept)",
        "files": {r: os.path.basename(p) for r, p in files.items()},
    }
    files["json"] = os.path.join(request.out_dir, "explanation.json")
    with open(files["json"], "w") as f:
        json.dump(info, f, indent=1)
    if rule is not None:
        why = (
            f"The rule layer concludes {classes[pred]} because {rule_text} holds with truth "
            f"{rule.truth:.2f}: "
            + "; ".join(
                f"{lit['concept']} is {'present' if lit['positive'] else 'absent'} "
                f"(p = {lit['probability']:.2f})"
                for lit in literals
            )
            + "."
        )
    else:
        why = (
            f"The rule layer does not support {classes[pred]} (ŷ_neural = "
            f"{out['y_neural'][pred]:.2f} ≤ 0.5): the fused head and the rules disagree here."
        )
    sections = [
        {
            "heading": f"Prediction: {classes[pred]}",
            "text": [
                f"Fused head ỹ (sigmoid per class) and the neural-symbolic head ŷ_neural for "
                f"{os.path.basename(request.image)}.",
                why,
            ],
            "table": [
                {
                    "class": n,
                    "fused ỹ": round(float(out["fused"][i]), 4),
                    "rule ŷ_neural": round(float(out["y_neural"][i]), 4),
                }
                for i, n in enumerate(classes)
            ],
        },  # fmt: skip
        {
            "heading": "Concepts the model sees",
            "text": "Concept probabilities ĉ; green / red bars are the positive / negated "
            "literals of the rule below. The line marks 0.5.",
            "figures": [{"image": "bars.png", "caption": "concept probabilities", "wide": True}],
        },
        {
            "heading": "Rule for the predicted class",
            "text": [rule_text or "(no active rule)", "Truth degree of each literal (s ⇔ ĉ):"],
            "table": literals or [{"concept": "-", "positive": "-", "truth": "-"}],
        },
        {
            "heading": "Where the model looked",
            "text": "Grad-CAM of the predicted class on the backbone's last conv block, then "
            "each concept's own gradient map (concepts of the rule first).",
            "figures": [
                {"image": "gradcam.png", "caption": info["saliency"], "wide": True},
                {"image": "concept_maps.png", "caption": "per-concept Grad-CAM", "wide": True},
            ],
        },
    ]
    protocol = (
        f"eval-mode BatchNorm (fair protocol), DCR temperature "
        f"{method.config.model.dcr_temperature:g}, preprocessing Resize+CenterCrop "
        f"{method.image_size}"
    )
    header = method.page_header(
        f"Med-MICN / {method.config.model.backbone}", request.image, protocol
    )
    files["html"] = report.write_html_report(
        os.path.join(request.out_dir, "report.html"), "Med-MICN explanation", sections, header
    )
    return files
