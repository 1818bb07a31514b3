"""Input-pipeline throughput at 512 x 512: does the input stream keep up with the step?

One run measures, on the same images (a synthetic ChestX-ray14 laid out in the real format,
``--raw-size`` PNGs, 1024 like NIH's):

- ``pil_loop``: a plain single-process loop, ``PIL.Image.open`` -> RGB -> bilinear resize to 512
  -> float32 ImageNet normalisation (the floor any pipeline must beat);
- ``make_train_stream`` (``jaxproto.data.pipeline``) with 0 (threads in-process), 1, 2 and 4
  grain worker processes, reading the raw PNGs or a prepared ArrayRecord folder (PNG-encoded at
  512, ``python -m jaxproto.data.prepare``), for each transform: ``resize_512`` (decode + resize
  + normalise, the same work as ``pil_loop``) and CIPL's warm-up train augmentation at 512.

Prints one JSON line per measurement (images/s over ``--batches`` timed batches after one
untimed batch; start-up, i.e. worker spawn + first batch, reported separately), with the CPU
count: compare ``images_per_s`` with the training step's images/s (``benchmarks/train_step.py``,
``benchmarks/accelerator.py``) to see whether the step is input-bound.

    python benchmarks/input_pipeline.py --num-images 64 --raw-size 1024 --batches 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from jaxproto.data import images, pipeline, prepare, prepared, registry, synthetic, transforms
from jaxproto.data.records import BadSampleReport
from jaxproto.data.samplers import ShuffleSampler
from jaxproto.methods.cipl.data import CiplTrainTransform

SIZE = 512


class Resize:
    """Decode + bilinear resize to ``size`` + ImageNet normalisation (``eval_transform``)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return transforms.eval_transform(img, self.size)


TRANSFORMS = {
    "resize_512": lambda: Resize(SIZE),
    "cipl_warmup_512": lambda: CiplTrainTransform(SIZE),
}


class DecodeTransform:
    """Picklable example function: load the record's image, apply the transform."""

    def __init__(self, paths: list[str], transform_name: str):
        self.paths, self.transform = paths, TRANSFORMS[transform_name]()

    def __call__(self, entry, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"image": self.transform(images.load_image(self.paths[int(entry)]), rng)}


def _write_raw(out_dir: str, num: int, size: int):
    synthetic.main(
        ["--like", "chestxray14", "--num", str(num), "--num_test", "1", "--out", out_dir,
         "--image_size", str(size)]
    )  # fmt: skip
    cfg = registry.default_data_config("chestxray14")
    cfg.root = out_dir
    return cfg, [r.path for r in registry.load_index(cfg, BadSampleReport()).split("train")]


def _prepared(cfg, out_dir: str) -> list[str]:
    prepare.prepare(cfg, out_dir, SIZE)
    return [r.path for r in prepared.load_prepared_index(out_dir).split("train")]


def _pil_loop(paths: list[str], n: int) -> dict:
    """The plain baseline: PIL decode + resize + normalise, one image after the other."""
    mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
    t0 = time.perf_counter()
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as im:
            img = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        x = (np.asarray(img, np.float32) / 255.0 - mean) / std
    assert x.shape == (SIZE, SIZE, 3)
    return {"images_per_s": round(n / (time.perf_counter() - t0), 2), "images": n}


def _measure(paths, transform_name, workers, batch, batches) -> dict:
    fn = DecodeTransform(paths, transform_name)
    t0 = time.perf_counter()
    it = pipeline.make_train_stream(
        ShuffleSampler(len(paths), seed=0), fn, global_batch_size=batch, seed=0,
        worker_count=workers,
    )  # fmt: skip
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    t2 = time.perf_counter()
    return {
        "startup_s": round(t1 - t0, 3),
        "images_per_s": round(batches * batch / (t2 - t1), 2),
        "batches": batches,
        "batch_size": batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--raw-size", type=int, default=1024, help="side of the raw PNGs")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", default="0,1,2,4", help="comma-separated worker counts")
    ap.add_argument("--transforms", default=",".join(TRANSFORMS))
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    common = {"cpu_count": os.cpu_count(), "size": SIZE, "raw_size": args.raw_size}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, raw = _write_raw(os.path.join(tmp, "raw"), args.num_images, args.raw_size)
        sources = {"raw_png": raw, "arrayrecord": _prepared(cfg, os.path.join(tmp, "prepared"))}
        n = args.batches * args.batch_size
        print(json.dumps({"reader": "pil_loop", "source": "raw_png", **_pil_loop(raw, n),
                          **common}), flush=True)  # fmt: skip
        for name in args.transforms.split(","):
            for source, paths in sources.items():
                for w in (int(w) for w in args.workers.split(",")):
                    res = _measure(paths, name, w, args.batch_size, args.batches)
                    line = {"reader": "make_train_stream", "transform": name, "source": source,
                            "workers": w, **res, **common}  # fmt: skip
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
