"""Insertion/deletion scores of retrieval saliency maps (specs/xmir.md §5, from RISE).

For a query q and a retrieved image x_r with saliency map S, pixels of x_r are visited in
descending saliency, ``step`` pixels (default: one image row, 224 at 224^2) per step:

* deletion starts at x_r and sets visited pixels to 0 (the mean colour in normalised space);
* insertion starts at blur(x_r) and restores visited pixels of x_r.

Each of the n + 1 states scores s_t = max(0, <e_q, f(x_t)>) (unit embeddings) and
AUC = (sum_t s_t - s_0/2 - s_n/2) / n. Higher insertion and lower deletion AUCs are better.

Flags (defaults faithful to the intended behaviour):

* ``mode``: "intended" or "bug_compat_flat_curves" -- on GPU the original never modifies the
  image (§5.3), so every curve is flat at the score of its start image;
* ``tie_break``: "torch_parity" (numpy quicksort of the float32 map, reversed, as the original)
  or "stable" (descending saliency, ties in raster order);
* ``output_keying``: "full_filename_rank_order" or "stem_compat" (query name up to the first dot,
  repeated stems append another [insertion, deletion] pair, §5.4).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

MODES = ("intended", "bug_compat_flat_curves")
TIE_BREAKS = ("torch_parity", "stable")
KEYINGS = ("full_filename_rank_order", "stem_compat")


def gaussian_kernel(size: int = 51, sigma: float = math.sqrt(50.0)) -> np.ndarray:
    """RISE's ``gkern``: scipy's Gaussian filter of a centred delta, (size, size) float32."""
    delta = np.zeros((size, size), np.float64)
    delta[size // 2, size // 2] = 1.0
    return ndimage.gaussian_filter(delta, sigma).astype(np.float32)


@jax.jit
def blur(image: jax.Array, kernel: jax.Array) -> jax.Array:
    """Per-channel convolution of an HxWxC image with a (k, k) kernel, zero padding k//2."""
    c = image.shape[-1]
    k = kernel.shape[0]
    rhs = jnp.broadcast_to(kernel[:, :, None, None], (k, k, 1, c))
    out = jax.lax.conv_general_dilated(
        image[None],
        rhs,
        window_strides=(1, 1),
        padding=[(k // 2, k // 2)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )
    return out[0]


def saliency_order(saliency: np.ndarray, tie_break: str = "torch_parity") -> np.ndarray:
    """Flat pixel indices in descending saliency (see the module docstring for ``tie_break``)."""
    flat = np.asarray(saliency, np.float32).ravel()
    if tie_break == "torch_parity":
        return np.argsort(flat)[::-1].copy()
    if tie_break == "stable":
        return np.argsort(-flat, kind="stable")
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")


def curve_auc(scores: np.ndarray) -> float:
    """Trapezoid area of a curve of n + 1 scores over n unit steps, divided by n."""
    scores = np.asarray(scores, np.float64)
    n = len(scores) - 1
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / n)


@functools.partial(jax.jit, static_argnames=("embed_fn", "step", "chunk_size"))
def causal_curve(
    embed_fn: Callable,
    params,
    query_embedding: jax.Array,
    start: jax.Array,
    finish: jax.Array,
    order: jax.Array,
    *,
    step: int,
    chunk_size: int = 32,
) -> jax.Array:
    """Scores max(0, <e_q, f(x_t)>) for t = 0..n, x_t = start with the first t*step pixels of
    ``order`` copied from ``finish`` (all channels); states are embedded in batches."""
    h, w = start.shape[:2]
    n_steps = -(-(h * w) // step)
    rank = jnp.zeros((h * w,), jnp.int32).at[order].set(jnp.arange(h * w, dtype=jnp.int32))
    n_chunks = -(-(n_steps + 1) // chunk_size)
    ts = jnp.arange(n_chunks * chunk_size).reshape(n_chunks, chunk_size)

    def one_chunk(t):
        copied = (rank[None, :] < t[:, None] * step).reshape(-1, h, w, 1)
        states = jnp.where(copied, finish[None], start[None])
        return embed_fn(params, states) @ query_embedding

    scores = jax.lax.map(one_chunk, ts).reshape(-1)[: n_steps + 1]
    return jax.nn.relu(scores)


def insertion_deletion(
    embed_fn: Callable,
    params,
    query_embedding: jax.Array,
    image: jax.Array,
    saliency: np.ndarray,
    *,
    step: int | None = None,
    mode: str = "intended",
    tie_break: str = "torch_parity",
    chunk_size: int = 32,
    kernel: np.ndarray | None = None,
) -> dict:
    """Insertion and deletion curves and AUCs of one (query, retrieved image, map) triple.

    ``image`` is the retrieved HxWxC normalised image, ``saliency`` its (H, W) map; ``step``
    defaults to W (224 at 224^2, as the original's ``net_in_size``).
    """
    if mode not in MODES:
        raise ValueError(f"insdel mode must be one of {MODES}, got {mode!r}")
    h, w = image.shape[:2]
    if np.shape(saliency) != (h, w):
        raise ValueError(f"saliency map shape {np.shape(saliency)} != image size {(h, w)}")
    step = w if step is None else step
    n_steps = -(-(h * w) // step)
    image = jnp.asarray(image, jnp.float32)
    kernel = gaussian_kernel() if kernel is None else kernel
    blurred = blur(image, jnp.asarray(kernel))
    starts = {"deletion": image, "insertion": blurred}
    finishes = {"deletion": jnp.zeros_like(image), "insertion": image}
    out: dict = {}
    for name in ("insertion", "deletion"):
        if mode == "intended":
            order = jnp.asarray(saliency_order(saliency, tie_break))
            curve = causal_curve(
                embed_fn,
                params,
                query_embedding,
                starts[name],
                finishes[name],
                order,
                step=step,
                chunk_size=chunk_size,
            )
            curve = np.asarray(curve)
        else:
            s0 = jax.nn.relu(embed_fn(params, starts[name][None])[0] @ query_embedding)
            curve = np.full((n_steps + 1,), float(s0), np.float32)
        out[name] = curve
        out[f"{name}_auc"] = curve_auc(curve)
    return out


def query_key(filename: str, keying: str) -> str:
    """JSON key of a query: its file name, or (stem_compat) the name up to its first dot."""
    name = os.path.basename(filename)
    if keying == "full_filename_rank_order":
        return name
    if keying == "stem_compat":
        return name.split(".")[0]
    raise ValueError(f"output_keying must be one of {KEYINGS}, got {keying!r}")


def per_query_json(entries: Sequence[dict], keying: str = "full_filename_rank_order") -> dict:
    """Per-query AUCs. ``entries``: {"query", "retrieved": [names in rank order],
    "insertion_auc": [...], "deletion_auc": [...]} per query, for one saliency method."""
    out: dict = {}
    for entry in entries:
        key = query_key(entry["query"], keying)
        ins, dele = (
            list(map(float, entry["insertion_auc"])),
            list(map(float, entry["deletion_auc"])),
        )
        if keying == "stem_compat":
            out.setdefault(key, []).extend([ins, dele])
        else:
            if key in out:
                raise ValueError(f"query file name {key!r} appears twice")
            out[key] = {
                "retrieved": list(entry["retrieved"]),
                "insertion_auc": ins,
                "deletion_auc": dele,
            }
    return out


def aggregate(results: Sequence[dict]) -> dict:
    """Mean insertion/deletion AUC per method and per (method, query class).

    ``results``: one dict per scored pair with "method", "class_name", "insertion_auc",
    "deletion_auc"; per class, each query's mean over its retrieved images is averaged (§5.4).
    """
    out: dict = {}
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    for method, rows in by_method.items():
        per_query: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            per_query.setdefault((r["query"], r["class_name"]), []).append(r)
        classes: dict[str, dict[str, list[float]]] = {}
        for (_, cls), qrows in per_query.items():
            c = classes.setdefault(cls, {"insertion_auc": [], "deletion_auc": []})
            for key in c:
                c[key].append(float(np.mean([r[key] for r in qrows])))
        out[method] = {
            "insertion_auc": float(np.mean([r["insertion_auc"] for r in rows])),
            "deletion_auc": float(np.mean([r["deletion_auc"] for r in rows])),
            "num_pairs": len(rows),
            "per_class": {
                cls: {k: float(np.mean(v)) for k, v in c.items()} for cls, c in classes.items()
            },
        }
    return out


def write_outputs(
    out_dir: str,
    results: Sequence[dict],
    curves: dict[str, dict[str, list[np.ndarray]]],
    keying: str = "full_filename_rank_order",
) -> dict:
    """Writes insdel_<method>.json (per query), insdel_summary.json and insdel_curves.png.

    ``results`` as in :func:`aggregate` plus "retrieved" (name) and "rank"; ``curves[method]
    [name]`` lists the insertion/deletion curves of every pair. Returns the summary."""
    os.makedirs(out_dir, exist_ok=True)
    for method in sorted({r["method"] for r in results}):
        rows = [r for r in results if r["method"] == method]
        entries: dict[str, dict] = {}
        for r in sorted(rows, key=lambda r: (r["query"], r["rank"])):
            e = entries.setdefault(
                r["query"],
                {"query": r["query"], "retrieved": [], "insertion_auc": [], "deletion_auc": []},
            )
            e["retrieved"].append(r["retrieved"])
            e["insertion_auc"].append(r["insertion_auc"])
            e["deletion_auc"].append(r["deletion_auc"])
        with open(os.path.join(out_dir, f"insdel_{method}.json"), "w") as f:
            json.dump(per_query_json(list(entries.values()), keying), f, indent=1)
    summary = aggregate(results)
    with open(os.path.join(out_dir, "insdel_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_mean_curves(os.path.join(out_dir, "insdel_curves.png"), curves)
    return summary


def plot_mean_curves(path: str, curves: dict[str, dict[str, list[np.ndarray]]]) -> None:
    """PNG line plot of the mean insertion and deletion curve of every method."""
    from jaxproto.viz.plots import line_plot

    lines = {}
    for method, by_name in curves.items():
        for name, cs in by_name.items():
            mean = np.mean(np.stack(cs), axis=0)
            x = np.linspace(0.0, 1.0, len(mean))
            lines[f"{method} {name}"] = (x, mean)
    line_plot(
        path,
        lines,
        title="Insertion / deletion (mean curves)",
        xlabel="fraction of pixels",
        ylabel="similarity",
    )
