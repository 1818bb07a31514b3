"""The X-MIR retrieval tool behind ``python -m jaxproto.retrieve`` (index, query, saliency-eval).

The CLI module parses the command line and hands each command a ``load_model(workdir, export)
-> (config, method, state)`` function; everything else -- batching and sharding the embedder,
the gallery files, the HTML page, the insertion/deletion loop -- lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.data.images import expand_image_paths
from jaxproto.data.records import BadSampleReport, Record
from jaxproto.data.registry import load_index
from jaxproto.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxproto.methods.xmir import insdel, search
from jaxproto.methods.xmir.data import class_labels
from jaxproto.methods.xmir.method import SALIENCY_METHODS, SaliencySettings, XmirMethod
from jaxproto.methods.xmir.saliency import upsample
from jaxproto.viz.overlays import heatmap_overlay, save_png
from jaxproto.viz.report import write_html_report

log = logging.getLogger(__name__)

LoadModel = Callable[[str | None, str | None], tuple[ml_collections.ConfigDict, object, dict]]

# ISIC 2017's companion files beside the photographs (the loader skips them too).
ISIC_SKIP_SUFFIXES = ("_superpixels", "_segmentation")


class Model:
    """A loaded X-MIR model with batched, device-sharded embedding."""

    def __init__(self, load_model: LoadModel, workdir: str | None, export: str | None):
        self.config, self.method, state = load_model(workdir, export)
        if not isinstance(self.method, XmirMethod):
            raise UserError(f"the model is a {self.config.method!r} model, not an xmir one")
        self.source = {
            "workdir": workdir and os.path.abspath(workdir),
            "export": export and os.path.abspath(export),
        }
        mesh = jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
        self.sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        self.variables = jax.device_put(variables, jax.sharding.NamedSharding(mesh, jax.P()))
        self.embed_fn = jax.jit(self.method.embed)

    def load(self, path: str) -> np.ndarray:
        """Normalised HxWx3 test-time image."""
        record = Record(
            image_id=os.path.basename(path), path=path, labels=np.zeros((0,), np.float32)
        )
        return self.method.eval_example(record)["image"]

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Unit embeddings of a batch; padded to a multiple of the device count and sharded."""
        n = len(images)
        pad = self.batch_size(n) - n
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        out = self.embed_fn(self.variables, jax.device_put(images, self.sharding))
        return np.asarray(out)[:n]

    def batch_size(self, requested: int) -> int:
        n = jax.device_count()
        return max(n, -(-requested // n) * n)

    def saliency_maps(
        self,
        query: np.ndarray,
        image: np.ndarray,
        methods: tuple[str, ...],
        negative: np.ndarray | None = None,
        query_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The configured saliency maps of ``image`` retrieved for ``query``."""
        settings = SaliencySettings.from_config(self.config.get("saliency", {}), jax.device_count())
        return self.method.saliency_maps(
            self.variables,
            jnp.asarray(query),
            jnp.asarray(image),
            methods,
            settings,
            negative=None if negative is None else jnp.asarray(negative),
            query_mask=None if query_mask is None else jnp.asarray(query_mask),
            batch_sharding=self.sharding,
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Normalised image back to uint8 RGB."""
    return np.clip(np.round((image * IMAGENET_STD + IMAGENET_MEAN) * 255.0), 0, 255).astype(
        np.uint8
    )


def gallery_paths(source: str, config: ml_collections.ConfigDict) -> list[str]:
    """The images of a folder (recursive) or list file; on an ISIC model's folder without the
    ``*_superpixels``/``*_segmentation`` companion files, as the ISIC loader reads it."""
    skip = ()
    if "isic" in str(config.data.get("like", "")) + str(config.data.get("name", "")):
        skip = ISIC_SKIP_SUFFIXES
        log.info("ISIC model: leaving out *%s files", "/*".join(skip))
    return expand_image_paths([source], skip_suffixes=skip)


def cmd_index(args: argparse.Namespace, load_model: LoadModel) -> None:
    model = Model(load_model, args.workdir, args.export)
    paths = gallery_paths(args.images, model.config)
    emb = search.embed_images(
        model.embed_batch, model.load, paths, model.batch_size(args.batch_size)
    )
    meta = {
        **model.source,
        "backbone": model.config.model.backbone,
        "image_size": int(model.config.model.image_size),
    }
    search.save_index(args.out, emb, paths, meta)
    log.info("indexed %d images (%d-d) into %s", len(paths), emb.shape[1], args.out)


def saliency_methods(text: str) -> tuple[str, ...]:
    """``--saliency``/``--methods`` text -> method names (``none`` or empty -> none)."""
    if text in ("", "none"):
        return ()
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SALIENCY_METHODS]
    if bad:
        raise UserError(f"--saliency: unknown {bad}; valid: {', '.join(SALIENCY_METHODS)}")
    return names


def box_mask(text: str, size: tuple[int, int]) -> np.ndarray | None:
    """``--query-box x,y,w,h`` (pixels of the model's input image) -> (H, W) 0/1 mask."""
    if not text:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise UserError(f"--query-box {text!r}: expected x,y,w,h (four numbers)") from None
    mask = np.zeros(size, np.float32)
    mask[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = 1.0
    if w <= 0 or h <= 0 or not mask.any():
        raise UserError(f"--query-box {text!r} covers no pixel of the {size[1]}x{size[0]} input")
    return mask


SELF_FORMS = {"sbsm": "self_sbsm", "simatt": "self_simatt", "simcam": "self_simcam"}


def self_saliency(model: Model, image: np.ndarray, methods: tuple[str, ...]) -> dict:
    """``--self-saliency``: the image against itself for each selected method with a self form
    (the original's ``compute_saliency.py --self-saliency``)."""
    forms = (SELF_FORMS.get(m, m) for m in methods)
    wanted = tuple(dict.fromkeys(m for m in forms if m in SELF_FORMS.values()))
    return model.saliency_maps(image, image, wanted) if wanted else {}


def cmd_query(args: argparse.Namespace, load_model: LoadModel) -> None:
    gallery, manifest = search.load_index(args.index)
    workdir, export = args.workdir, args.export
    if workdir is None and export is None:
        workdir, export = manifest.get("workdir"), manifest.get("export")
    if args.k <= 0:
        raise UserError(f"--k must be positive, got {args.k}")
    model = Model(load_model, workdir, export)
    methods = saliency_methods(args.saliency)
    query = model.load(args.image)
    q = model.embed_batch(query[None])
    if q.shape[1] != gallery.shape[1]:
        raise UserError(f"model embeds {q.shape[1]}-d but the index holds {gallery.shape[1]}-d")
    dist, idx = search.knn(q, gallery, min(args.k, gallery.shape[0]), args.chunk_size)
    os.makedirs(args.out, exist_ok=True)
    save_png(os.path.join(args.out, "query.png"), to_uint8(query))
    query_mask = box_mask(args.query_box, query.shape[:2])
    negative = None
    if "simatt_triplet" in methods:
        # the user's negative, else the least similar of the k neighbours
        negative = model.load(args.negative or manifest["paths"][int(idx[0, -1])])
    neighbours, figures = [], []
    if args.self_saliency:
        for method_name, sal in self_saliency(model, query, methods).items():
            file = f"query_{method_name}.png"
            np.save(os.path.join(args.out, f"query_{method_name}.npy"), sal)
            save_png(os.path.join(args.out, file), heatmap_overlay(to_uint8(query), sal))
            figures.append({"image": file, "caption": f"query {method_name}"})
    for rank, (d, i) in enumerate(zip(dist[0], idx[0], strict=True)):
        path = manifest["paths"][int(i)]
        neighbours.append({"rank": rank + 1, "file": path, "distance": float(d)})
        image = model.load(path)
        name = f"rank{rank + 1:03d}"
        save_png(os.path.join(args.out, f"{name}.png"), to_uint8(image))
        figures.append(
            {
                "image": f"{name}.png",
                "caption": f"#{rank + 1} {os.path.basename(path)} (d = {d:.4f})",
            }
        )
        if rank >= args.saliency_top or not methods:
            continue
        maps = model.saliency_maps(query, image, methods, negative, query_mask)
        for method_name, sal in maps.items():
            file = f"{name}_{method_name}.png"
            np.save(os.path.join(args.out, f"{name}_{method_name}.npy"), sal)
            save_png(os.path.join(args.out, file), heatmap_overlay(to_uint8(image), sal))
            figures.append({"image": file, "caption": f"#{rank + 1} {method_name} saliency"})
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"query": os.path.abspath(args.image), "neighbours": neighbours}, f, indent=1)
    page = write_html_report(
        os.path.join(args.out, "index.html"),
        f"Retrieval for {os.path.basename(args.image)}",
        [
            {
                "heading": "Query",
                "figures": [{"image": "query.png", "caption": os.path.basename(args.image)}],
            },
            {
                "heading": "Nearest gallery images",
                "table": neighbours,
                "caption": "Euclidean distance of unit embeddings (0 = identical, 2 = opposite)",
            },
            {
                "heading": "Neighbours and saliency",
                "text": "Saliency marks the regions of each retrieved image that make it "
                "similar to the query (SBSM: occlusion; SimAtt: similarity attention; SimCAM: "
                "similarity decomposition; SimScoreCAM: channel masks; self_*: an image "
                "against itself).",
                "figures": figures,
            },
        ],
    )
    log.info("wrote %s", page)


def random_map(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]):
    """The baseline map: uniform noise on the explanation layer's grid, upsampled bilinearly --
    as smooth as SimAtt/SimCAM maps (pixel-level noise would scatter deletions, which hurts a
    CNN far more than removing any region and would make every map look bad)."""
    noise = jnp.asarray(rng.random(tuple(grid)), jnp.float32)
    return np.asarray(upsample(noise, tuple(size)))


def cmd_saliency_eval(args: argparse.Namespace, load_model: LoadModel) -> dict:
    """Insertion/deletion of every saliency method on leave-one-out retrievals of a split;
    writes the per-query JSON, the summary and the mean curves; returns the summary."""
    model = Model(load_model, args.workdir, args.export)
    cfg = model.config
    s = cfg.get("saliency", {})
    methods = saliency_methods(args.methods or ",".join(s.get("methods", ())))
    topk = args.topk or int(s.get("topk", 5))
    mode = args.mode or s.get("insdel_mode", "intended")
    scorer_name = args.model or s.get("insdel_model", "retrieval_model")
    tie_break = args.tie_break or s.get("tie_break", "torch_parity")
    keying = args.keying or s.get("output_keying", "full_filename_rank_order")
    scorers = {"retrieval_model": model.method.embed, "gap1024_compat": model.method.gap_embed}
    if scorer_name not in scorers:
        raise UserError(f"insdel model must be one of {sorted(scorers)}, got {scorer_name!r}")
    scorer = scorers[scorer_name]

    records = load_index(cfg.data, BadSampleReport(cfg.data.on_bad_sample)).split(args.split)
    labels = class_labels(records)
    images = np.stack([model.method.eval_example(r)["image"] for r in records])
    emb = search.embed_images(
        model.embed_batch, lambda i: images[int(i)], list(range(len(records))), model.batch_size(64)
    )
    _, idx = search.knn(emb, emb, min(topk + 1, len(records)))
    query_mask = box_mask(args.query_box, images.shape[1:3])
    # simatt_triplet's negative: the nearest test image of another class
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    negatives = np.argmin(np.where(labels[:, None] != labels[None, :], d, np.inf), axis=1)
    n_queries = len(records) if args.num_queries <= 0 else min(args.num_queries, len(records))
    rng = np.random.default_rng(args.seed)
    names = [os.path.basename(r.path) or r.image_id for r in records]
    feat_hw = model.method.features(model.variables, images[:1]).shape[1:3]
    class_names = list(model.method.class_names())
    results, curves = [], {}
    for qi in range(n_queries):
        neighbours = [int(j) for j in idx[qi] if j != qi][:topk]
        q_img = jnp.asarray(images[qi])
        q_score = scorer(model.variables, q_img[None])[0]
        for rank, j in enumerate(neighbours):
            r_img = jnp.asarray(images[j])
            negative = images[negatives[qi]] if "simatt_triplet" in methods else None
            maps = model.saliency_maps(images[qi], images[j], methods, negative, query_mask)
            maps["random"] = random_map(rng, feat_hw, r_img.shape[:2])
            for method_name, sal in maps.items():
                out = insdel.insertion_deletion(
                    scorer,
                    model.variables,
                    q_score,
                    r_img,
                    sal,
                    step=args.step or None,
                    mode=mode,
                    tie_break=tie_break,
                )
                results.append(
                    {
                        "method": method_name,
                        "query": names[qi],
                        "class_name": class_names[labels[qi]],
                        "retrieved": names[j],
                        "rank": rank,
                        "insertion_auc": out["insertion_auc"],
                        "deletion_auc": out["deletion_auc"],
                    }
                )
                c = curves.setdefault(method_name, {"insertion": [], "deletion": []})
                c["insertion"].append(out["insertion"])
                c["deletion"].append(out["deletion"])
                if args.save_maps:
                    folder = os.path.join(args.out, "maps", method_name, names[qi])
                    os.makedirs(folder, exist_ok=True)
                    np.save(os.path.join(folder, f"{rank:02d}_{names[j]}.npy"), sal)
    return insdel.write_outputs(args.out, results, curves, keying)


COMMANDS = {"index": cmd_index, "query": cmd_query, "saliency-eval": cmd_saliency_eval}


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """The ``index``, ``query`` and ``saliency-eval`` sub-parsers (``args.command`` names one
    of ``COMMANDS``)."""
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(sp, required):
        g = sp.add_mutually_exclusive_group(required=required)
        g.add_argument("--export", help="export folder (python -m jaxproto.export)")
        g.add_argument("--workdir", help="training workdir (its best/latest checkpoint)")

    sp = sub.add_parser("index", help="embed a gallery of images")
    model_args(sp, True)
    sp.add_argument("--images", required=True, help="image folder or list file")
    sp.add_argument("--out", required=True, help="index folder to write")
    sp.add_argument("--batch-size", type=int, default=64)

    sp = sub.add_parser("query", help="retrieve the nearest gallery images, with saliency")
    model_args(sp, False)
    sp.add_argument("--index", required=True)
    sp.add_argument("--image", required=True)
    sp.add_argument("--k", type=int, default=10)
    sp.add_argument("--out", required=True, help="output folder (results.json, index.html)")
    sp.add_argument(
        "--saliency",
        default="sbsm,simatt,simcam",
        help="comma-separated saliency methods, or 'none'",
    )
    sp.add_argument(
        "--saliency-top",
        type=int,
        default=5,
        help="explain only the first N neighbours (the original: 5)",
    )
    sp.add_argument("--chunk-size", type=int, default=65536, help="gallery rows per search step")
    sp.add_argument(
        "--self-saliency",
        action="store_true",
        help="also map the query against itself (self_sbsm/self_simatt/self_simcam)",
    )
    sp.add_argument(
        "--negative", default="", help="simatt_triplet's negative image (default: the k-th hit)"
    )
    query_box_arg(sp)

    sp = sub.add_parser("saliency-eval", help="insertion/deletion scores on the test split")
    model_args(sp, True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="test")
    sp.add_argument("--num-queries", type=int, default=0, help="0 = every test image")
    sp.add_argument("--topk", type=int, default=0, help="0 = config.saliency.topk")
    sp.add_argument("--methods", default="", help="default: config.saliency.methods")
    sp.add_argument("--mode", choices=insdel.MODES)
    sp.add_argument("--model", choices=("retrieval_model", "gap1024_compat"))
    sp.add_argument("--tie-break", choices=insdel.TIE_BREAKS)
    sp.add_argument("--keying", choices=insdel.KEYINGS)
    sp.add_argument("--step", type=int, default=0, help="pixels per step; 0 = image width")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random baseline maps")
    sp.add_argument("--save-maps", action="store_true")
    query_box_arg(sp)


def query_box_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--query-box",
        default="",
        metavar="X,Y,W,H",
        help="sbsm_mask/sbsm_blur: the query region to match, in pixels of the model input "
        "(default the whole query)",
    )
