"""The X-MIR retrieval tool behind ``python -m jaxproto.retrieve`` (index, query, saliency-eval).

The CLI module parses the command line and hands each command a ``load_model(workdir, export)
-> (config, method, state)`` function; everything else -- batching and sharding the embedder,
the gallery files, the HTML page, the insertion/deletion loop -- lives here.
"""

from __future__ import annotations

import argparse
import csv
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
from jaxproto.viz.overlays import for_display, heatmap_overlay, relative_spread, save_png
from jaxproto.viz.report import Header, write_html_report

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


def gallery_labels(
    paths: list[str], class_names: list[str], labels_csv: str | None
) -> list[str | None]:
    """Each gallery image's diagnosis: from ``labels_csv`` (rows ``file,class``; the file by
    path or name), else its folder's name when that is a class name (``<gallery>/<class>/``),
    else None (unknown)."""
    by_lower = {n.lower(): n for n in class_names}
    given: dict[str, str] = {}
    if labels_csv:
        with open(labels_csv, newline="") as f:
            for line_no, row in enumerate(csv.reader(f), 1):
                if len(row) < 2 or row[0].strip().lower() in ("file", "image", "path"):
                    continue
                name = by_lower.get(row[1].strip().lower())
                if name is None:
                    raise UserError(
                        f"{labels_csv}, line {line_no}: class {row[1]!r} is not one of the "
                        f"model's classes {class_names}"
                    )
                given[row[0].strip()] = name
    out = []
    for p in paths:
        label = given.get(p) or given.get(os.path.abspath(p)) or given.get(os.path.basename(p))
        out.append(label or by_lower.get(os.path.basename(os.path.dirname(p)).lower()))
    return out


def _check_faiss_flags(args: argparse.Namespace, num_images: int) -> None:
    """``--faiss`` and its parameters, checked before the gallery is embedded."""
    for flag in ("nlist", "nprobe", "M", "ef_search"):
        if getattr(args, flag) < (0 if flag == "nlist" else 1):
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.faiss == "ivf" and args.nlist > num_images:
        raise UserError(f"--nlist {args.nlist} exceeds the {num_images} gallery images")
    if args.faiss == "hnsw" and args.M < 2:
        raise UserError(f"--M must be at least 2, got {args.M}")


def cmd_index(args: argparse.Namespace, load_model: LoadModel) -> None:
    if args.faiss:
        search.require_faiss()  # before the model loads and the gallery is embedded
    model = Model(load_model, args.workdir, args.export)
    paths = gallery_paths(args.images, model.config)
    if args.faiss:
        _check_faiss_flags(args, len(paths))
    emb = search.embed_images(
        model.embed_batch, model.load, paths, model.batch_size(args.batch_size)
    )
    approximate = None
    if args.faiss:
        approximate = search.FaissIndex.build(
            emb, args.faiss, args.nlist, args.nprobe, args.M, args.ef_search
        )
        log.info("FAISS %s index built: %s", args.faiss, approximate.params())
    labels = gallery_labels(paths, list(model.method.class_names()), args.labels)
    meta = {
        **model.source,
        "backbone": model.config.model.backbone,
        "image_size": int(model.config.model.image_size),
        "labels": labels,
    }
    log.info(
        "%d of %d gallery images have a known diagnosis",
        sum(x is not None for x in labels),
        len(labels),
    )
    search.save_index(args.out, emb, paths, meta, approximate)
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


UNIFORM_SPREAD = 0.02  # relative spread below which a saliency map is flagged uninformative
SALIENCY_LABEL = "saliency ({}), min-max normalised per map: 0 = least, 1 = most"


def _saliency_figure(out_dir, stem, image, sal, method_name, whose, tolerance) -> dict:
    """One saliency panel: the overlay, or the plain image flagged when the map is nearly
    uniform (min-max normalisation would stretch its noise into a rainbow)."""
    np.save(os.path.join(out_dir, f"{stem}.npy"), sal)
    spread = relative_spread(sal)
    uninformative = spread < tolerance
    shown = for_display(image)
    file = f"{stem}.png"
    if uninformative:
        save_png(os.path.join(out_dir, file), shown)
        caption = (
            f"{method_name} on {whose}: uninformative, the map is nearly uniform "
            f"(relative spread {spread:.2%} < {tolerance:.0%}); not drawn"
        )
        return {"image": file, "caption": caption, "alt": caption, "uninformative": True}
    save_png(os.path.join(out_dir, file), heatmap_overlay(shown, np.asarray(sal, np.float32)))
    return {
        "image": file,
        "caption": f"{method_name} on {whose}",
        "alt": f"{method_name} saliency over {whose}",
        "colorbar": {"label": SALIENCY_LABEL.format(method_name), "min": 0.0, "max": 1.0},
        "uninformative": False,
    }


def neighbour_summary(labels: list[str | None], class_names: list[str]) -> tuple[str, list]:
    """ "7 of 10 nearest cases are melanoma" and the per-class vote decisions (a class is
    positive when at least half of the labelled neighbours have it)."""
    known = [x for x in labels if x is not None]
    if not known:
        return f"none of the {len(labels)} nearest cases has a known diagnosis", []
    counts = {n: known.count(n) for n in class_names}
    top = max(class_names, key=lambda n: counts[n])
    text = f"{counts[top]} of {len(labels)} nearest cases are {top}"
    if len(known) < len(labels):
        text += f" ({len(labels) - len(known)} without a known diagnosis)"
    rows = [
        {
            "class": n,
            "probability": counts[n] / len(known),
            "threshold": 0.5,
            "decision": counts[n] / len(known) >= 0.5,
            "note": f"{counts[n]} of {len(known)} labelled neighbours",
        }
        for n in class_names
    ]
    return text, rows


def gallery_search(args: argparse.Namespace, gallery: np.ndarray, manifest: dict):
    """(description, search(queries, k) -> (distances, indices)) for ``--search``: ``faiss``
    (the index's faiss.index, with ``--nprobe``/``--ef_search`` overriding what it was built
    with), ``exact`` (blocked exact search, ``--chunk_size`` rows at a time), or ``auto``: the
    FAISS index when the index has one and faiss is installed, else exact."""
    use_faiss = args.search == "faiss"
    if args.search == "faiss" and "faiss" not in manifest:
        raise UserError(
            f"--search faiss: {args.index} has no FAISS index "
            "(build one with retrieve index ... --faiss ivf|hnsw)"
        )
    if args.search == "auto" and "faiss" in manifest:
        try:
            search.require_faiss()
            use_faiss = True
        except UserError as e:
            log.warning("%s has a FAISS index; searching exactly instead: %s", args.index, e)
    if not use_faiss:
        return "exact search", lambda q, k: search.knn(q, gallery, k, args.chunk_size)
    approximate = search.load_faiss(args.index, gallery.shape[0])
    approximate.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    params = approximate.params()
    how = "approximate FAISS search (" + ", ".join(f"{k} {v}" for k, v in params.items()) + ")"
    log.info("%s", how)
    return how, approximate.search


def cmd_query(args: argparse.Namespace, load_model: LoadModel) -> None:
    gallery, manifest = search.load_index(args.index)
    workdir, export = args.workdir, args.export
    if workdir is None and export is None:
        workdir, export = manifest.get("workdir"), manifest.get("export")
    if args.k <= 0:
        raise UserError(f"--k must be positive, got {args.k}")
    how, nearest = gallery_search(args, gallery, manifest)
    model = Model(load_model, workdir, export)
    methods = saliency_methods(args.saliency)
    tolerance = float(model.config.get("saliency", {}).get("uniform_spread", UNIFORM_SPREAD))
    query = model.load(args.image)
    q = model.embed_batch(query[None])
    if q.shape[1] != gallery.shape[1]:
        raise UserError(f"model embeds {q.shape[1]}-d but the index holds {gallery.shape[1]}-d")
    dist, idx = nearest(q, min(args.k, gallery.shape[0]))
    negative = None  # simatt_triplet's: --negative, else the k-th hit
    if "simatt_triplet" in methods:
        negative = model.load(args.negative or manifest["paths"][int(idx[0, -1])])
    query_mask = box_mask(args.query_box, query.shape[:2])
    os.makedirs(args.out, exist_ok=True)
    query_u8 = to_uint8(query)
    save_png(os.path.join(args.out, "query.png"), for_display(query_u8))
    class_names = list(model.method.class_names())
    gallery_dx = manifest.get("labels") or [None] * len(manifest["paths"])
    neighbours, rows, others = [], [], []
    for rank, (d, i) in enumerate(zip(dist[0], idx[0], strict=True)):
        path = manifest["paths"][int(i)]
        diagnosis = gallery_dx[int(i)]
        neighbours.append(
            {"rank": rank + 1, "file": path, "diagnosis": diagnosis, "distance": float(d)}
        )
        image = to_uint8(model.load(path))
        name = f"rank{rank + 1:03d}"
        save_png(os.path.join(args.out, f"{name}.png"), for_display(image))
        whose = f"#{rank + 1} {os.path.basename(path)}"
        tile = {
            "image": f"{name}.png",
            "caption": f"{whose}: {diagnosis or 'diagnosis unknown'}, d = {d:.4f}",
            "alt": f"neighbour {rank + 1}: {os.path.basename(path)}, {diagnosis or 'unknown'}",
        }
        if rank >= args.saliency_top or not methods:
            others.append(tile)
            continue
        n_maps = model.saliency_maps(query, model.load(path), methods, negative, query_mask)
        # the query's maps: the roles swapped (--query-box marks the query, so not used here)
        q_maps = model.saliency_maps(model.load(path), query, methods, negative)
        q_row = [{"image": "query.png", "caption": "the query", "alt": "the query image"}]
        n_row = [tile]
        for m in methods:
            q_row.append(
                _saliency_figure(
                    args.out, f"{name}_query_{m}", query_u8, q_maps[m], m, "the query", tolerance
                )
            )
            n_row.append(
                _saliency_figure(args.out, f"{name}_{m}", image, n_maps[m], m, whose, tolerance)
            )
        neighbours[-1]["saliency"] = {
            m: {
                "query": q["image"],
                "neighbour": n["image"],
                "uninformative": [q["uninformative"], n["uninformative"]],
            }
            for m, q, n in zip(methods, q_row[1:], n_row[1:], strict=True)
        }
        rows.append((rank, diagnosis, float(d), path, q_row + n_row))
    summary, decisions = neighbour_summary([n["diagnosis"] for n in neighbours], class_names)
    warnings = [] if decisions else [summary + ": no decision (index the gallery with labels)"]
    flagged = [
        f"#{rank + 1} {m}"
        for rank, *_, figs in rows
        for m, f in zip(
            methods * 2, figs[1 : 1 + len(methods)] + figs[2 + len(methods) :], strict=True
        )
        if f["uninformative"]
    ]
    if flagged:
        warnings.append(
            "nearly uniform saliency maps are flagged uninformative and not drawn: "
            + ", ".join(sorted(set(flagged)))
        )
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {
                "query": os.path.abspath(args.image),
                "search": how,
                "summary": summary,
                "decisions": decisions,
                "neighbours": neighbours,
            },
            f,
            indent=1,
        )
    sections = [
        {
            "heading": "Query",
            "figures": [
                {
                    "image": "query.png",
                    "caption": os.path.basename(args.image),
                    "alt": "the query image",
                }
            ],
        },
        {"heading": f"Summary: {summary}", "text": summary},
    ]
    if decisions:
        sections.append({"heading": "Decisions (neighbour vote)", "decisions": decisions})
    sections.append(
        {
            "heading": "Nearest gallery images",
            "table": [{k: v for k, v in n.items() if k != "saliency"} for n in neighbours],
            "caption": "Euclidean distance of unit embeddings (0 = identical, 2 = opposite)",
        }
    )
    for rank, diagnosis, d, path, figures in rows:
        sections.append(
            {
                "heading": f"#{rank + 1} {os.path.basename(path)}: "
                f"{diagnosis or 'diagnosis unknown'}, d = {d:.4f}",
                "text": "Top row: the query; bottom row: this neighbour. Saliency marks the "
                "regions that make the pair similar (SBSM: occlusion; SimAtt: similarity "
                "attention; SimCAM: similarity decomposition).",
                "figures": figures,
                "columns": 1 + len(methods),
            }
        )
    if others:
        sections.append({"heading": "Further neighbours (no saliency)", "figures": others})
    if args.self_saliency:
        self_maps = self_saliency(model, query, methods)
        if not self_maps:
            warnings.append(f"--self_saliency: none of {', '.join(methods)} has a self form")
        figures = [
            _saliency_figure(args.out, f"query_{m}", query_u8, sal, m, "the query", tolerance)
            for m, sal in self_maps.items()
        ]
        sections.append(
            {
                "heading": "Self-similarity of the query",
                "text": "The query against itself: what its own embedding depends on.",
                "figures": figures,
            }
        )
    header = Header(
        model=f"X-MIR, {model.config.model.backbone}",
        model_id=(model.method.provenance or {}).get("id", "unknown"),
        source=workdir or export,
        input=os.path.abspath(args.image),
        protocol=f"k = {len(neighbours)} nearest of {len(manifest['paths'])} gallery images "
        f"({os.path.abspath(args.index)}) by {how}, Euclidean distance of unit embeddings; "
        "decision: a class held by at least half (threshold 0.5) of the labelled neighbours",
        selection=(model.method.provenance or {}).get("selection", ""),
    )
    page = write_html_report(
        os.path.join(args.out, "index.html"),
        f"Retrieval for {os.path.basename(args.image)}",
        sections,
        header,
        warnings,
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
    sp.add_argument(
        "--labels",
        help="CSV of file,class for the gallery's diagnoses (default: the folder name when it "
        "is a class name)",
    )
    sp.add_argument(
        "--faiss",
        choices=search.FAISS_KINDS,
        help="also build an approximate FAISS index beside the exact one (pip install -e "
        '".[faiss]"): ivf = IndexIVFFlat, hnsw = IndexHNSWFlat; `query` then uses it',
    )
    sp.add_argument("--nlist", type=int, default=0, help="IVF cells; 0 = 4 sqrt(N)")
    sp.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    sp.add_argument("--M", type=int, default=32, help="HNSW links per node")
    sp.add_argument("--ef_search", type=int, default=128, help="HNSW candidates per query")

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
    sp.add_argument(
        "--search",
        choices=("auto", "exact", "faiss"),
        default="auto",
        help="exact: blocked exact search; faiss: the index's FAISS index; auto (default): "
        "FAISS when the index has one",
    )
    sp.add_argument("--chunk-size", type=int, default=65536, help="gallery rows per search step")
    sp.add_argument("--nprobe", type=int, default=0, help="FAISS IVF: cells visited (0 = built)")
    sp.add_argument("--ef_search", type=int, default=0, help="FAISS HNSW: candidates (0 = built)")
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
