"""X-MIR retrieval: build a gallery index, query it with explanations, score the explanations.

  python -m jaxproto.retrieve index --export EXPORT --images DIR_OR_LIST --out INDEX
  python -m jaxproto.retrieve query --index INDEX --image X.png --k 10 --out DIR
  python -m jaxproto.retrieve saliency-eval --workdir RUN --out DIR [--num-queries 20]

``index`` embeds every image of a folder (recursive) or a list file (one path per line) and
writes INDEX/embeddings.npy + INDEX/manifest.json. ``query`` finds the k nearest gallery images
(Euclidean distance of unit embeddings) and writes DIR/results.json and DIR/index.html with the
query, its neighbours and a saliency overlay (SBSM, SimAtt, SimCAM) per pair. ``saliency-eval``
runs leave-one-out retrieval on the model's test split and writes insertion/deletion AUCs of each
saliency method and of a random map (noise on the feature grid, upsampled): per-query JSON,
summary and a mean-curve plot. The model comes from --export or --workdir (``query`` defaults
to the one recorded in the index).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import jax
import numpy as np

log = logging.getLogger("jaxproto.retrieve")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class Model:
    """A loaded X-MIR model with batched, device-sharded embedding."""

    def __init__(self, workdir: str | None, export: str | None):
        from jaxproto.core.restore import load_for_inference

        self.config, self.method, state = load_for_inference(workdir=workdir, export=export)
        if self.config.method != "xmir":
            raise ValueError(f"the model is a {self.config.method!r} model, not an xmir one")
        self.source = {
            "workdir": workdir and os.path.abspath(workdir),
            "export": export and os.path.abspath(export),
        }
        self.variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        mesh = jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
        self.sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
        self.variables = jax.device_put(self.variables, jax.sharding.NamedSharding(mesh, jax.P()))
        self._embed = jax.jit(self.method.embed)

    def load(self, path: str) -> np.ndarray:
        """Normalised HxWx3 test-time image."""
        from jaxproto.data.records import Record

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
        out = self._embed(self.variables, jax.device_put(images, self.sharding))
        return np.asarray(out)[:n]

    def batch_size(self, requested: int) -> int:
        n = jax.device_count()
        return max(n, -(-requested // n) * n)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Normalised image back to uint8 RGB."""
    return np.clip(np.round((image * IMAGENET_STD + IMAGENET_MEAN) * 255.0), 0, 255).astype(
        np.uint8
    )


def cmd_index(args) -> None:
    from jaxproto.methods.xmir import search

    model = Model(args.workdir, args.export)
    paths = search.list_images(args.images)
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


def _saliency_methods(text: str) -> tuple[str, ...]:
    from jaxproto.methods.xmir.method import SALIENCY_METHODS

    if text in ("", "none"):
        return ()
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SALIENCY_METHODS]
    if bad:
        raise ValueError(f"--saliency: unknown {bad}; valid: {', '.join(SALIENCY_METHODS)}")
    return names


def cmd_query(args) -> None:
    from jaxproto.methods.xmir import search
    from jaxproto.viz.overlays import heatmap_overlay, save_png
    from jaxproto.viz.report import write_html_report

    gallery, manifest = search.load_index(args.index)
    workdir, export = args.workdir, args.export
    if workdir is None and export is None:
        workdir, export = manifest.get("workdir"), manifest.get("export")
    model = Model(workdir, export)
    methods = _saliency_methods(args.saliency)
    query = model.load(args.image)
    q = model.embed_batch(query[None])
    if q.shape[1] != gallery.shape[1]:
        raise ValueError(f"model embeds {q.shape[1]}-d but the index holds {gallery.shape[1]}-d")
    dist, idx = search.knn(q, gallery, min(args.k, gallery.shape[0]), args.chunk_size)
    os.makedirs(args.out, exist_ok=True)
    save_png(os.path.join(args.out, "query.png"), to_uint8(query))
    neighbours, figures = [], []
    s = model.config.get("saliency", {})
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
        maps = model.method.saliency_maps(
            model.variables,
            jax.numpy.asarray(query),
            jax.numpy.asarray(image),
            methods,
            sbsm_window=int(s.get("sbsm_window", 24)),
            sbsm_stride=int(s.get("sbsm_stride", 5)),
            chunk_size=model.batch_size(int(s.get("chunk_size", 250))),
            batch_sharding=model.sharding,
        )
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
                "similarity decomposition).",
                "figures": figures,
            },
        ],
    )
    log.info("wrote %s", page)


def random_map(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]):
    """The baseline map: uniform noise on the explanation layer's grid, upsampled bilinearly --
    as smooth as SimAtt/SimCAM maps (pixel-level noise would scatter deletions, which hurts a
    CNN far more than removing any region and would make every map look bad)."""
    from jaxproto.kernels.saliency import upsample

    noise = jax.numpy.asarray(rng.random(tuple(grid)), jax.numpy.float32)
    return np.asarray(upsample(noise, tuple(size)))


def cmd_saliency_eval(args) -> None:
    from jaxproto.data.records import BadSampleReport
    from jaxproto.data.registry import load_index
    from jaxproto.methods.xmir import insdel, search
    from jaxproto.methods.xmir.method import class_labels

    model = Model(args.workdir, args.export)
    cfg = model.config
    s = cfg.get("saliency", {})
    methods = _saliency_methods(args.methods or ",".join(s.get("methods", ())))
    topk = args.topk or int(s.get("topk", 5))
    mode = args.mode or s.get("insdel_mode", "intended")
    scorer_name = args.model or s.get("insdel_model", "retrieval_model")
    tie_break = args.tie_break or s.get("tie_break", "torch_parity")
    keying = args.keying or s.get("output_keying", "full_filename_rank_order")
    scorers = {"retrieval_model": model.method.embed, "gap1024_compat": model.method.gap_embed}
    if scorer_name not in scorers:
        raise ValueError(f"insdel model must be one of {sorted(scorers)}, got {scorer_name!r}")
    scorer = scorers[scorer_name]

    records = load_index(cfg.data, BadSampleReport(cfg.data.on_bad_sample)).split(args.split)
    labels = class_labels(records)
    images = np.stack([model.method.eval_example(r)["image"] for r in records])
    emb = search.embed_images(
        model.embed_batch, lambda i: images[int(i)], list(range(len(records))), model.batch_size(64)
    )
    _, idx = search.knn(emb, emb, min(topk + 1, len(records)))
    n_queries = len(records) if args.num_queries <= 0 else min(args.num_queries, len(records))
    rng = np.random.default_rng(args.seed)
    names = [os.path.basename(r.path) or r.image_id for r in records]
    feat_hw = model.method.features(model.variables, images[:1]).shape[1:3]
    class_names = list(model.method.class_names())
    results, curves = [], {}
    for qi in range(n_queries):
        neighbours = [int(j) for j in idx[qi] if j != qi][:topk]
        q_img = jax.numpy.asarray(images[qi])
        q_score = scorer(model.variables, q_img[None])[0]
        for rank, j in enumerate(neighbours):
            r_img = jax.numpy.asarray(images[j])
            maps = model.method.saliency_maps(
                model.variables,
                q_img,
                r_img,
                methods,
                sbsm_window=int(s.get("sbsm_window", 24)),
                sbsm_stride=int(s.get("sbsm_stride", 5)),
                chunk_size=model.batch_size(int(s.get("chunk_size", 250))),
                batch_sharding=model.sharding,
            )
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
    summary = insdel.write_outputs(args.out, results, curves, keying)
    print(
        json.dumps(
            {m: {k: v for k, v in r.items() if k != "per_class"} for m, r in summary.items()}
        )
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxproto.retrieve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp, required):
        g = sp.add_mutually_exclusive_group(required=required)
        g.add_argument("--export", help="export folder (python -m jaxproto.export)")
        g.add_argument("--workdir", help="training workdir (its best/latest checkpoint)")

    sp = sub.add_parser("index", help="embed a gallery of images")
    model_args(sp, True)
    sp.add_argument("--images", required=True, help="image folder or list file")
    sp.add_argument("--out", required=True, help="index folder to write")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.set_defaults(fn=cmd_index)

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
    sp.set_defaults(fn=cmd_query)

    sp = sub.add_parser("saliency-eval", help="insertion/deletion scores on the test split")
    model_args(sp, True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="test")
    sp.add_argument("--num-queries", type=int, default=0, help="0 = every test image")
    sp.add_argument("--topk", type=int, default=0, help="0 = config.saliency.topk")
    sp.add_argument("--methods", default="", help="default: config.saliency.methods")
    sp.add_argument("--mode", choices=("intended", "bug_compat_flat_curves"))
    sp.add_argument("--model", choices=("retrieval_model", "gap1024_compat"))
    sp.add_argument("--tie-break", choices=("torch_parity", "stable"))
    sp.add_argument("--keying", choices=("full_filename_rank_order", "stem_compat"))
    sp.add_argument("--step", type=int, default=0, help="pixels per step; 0 = image width")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random baseline maps")
    sp.add_argument("--save-maps", action="store_true")
    sp.set_defaults(fn=cmd_saliency_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
