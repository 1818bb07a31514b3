"""Input-pipeline throughput: decode + train augmentation through ``make_train_stream``.

Measures images/s for the CIPL transforms at 512 (warm-up single view, main-stage pair views)
and X-MIR's at 224, with 0/1/2 grain worker processes, reading raw PNGs (a synthetic
ChestX-ray14 laid out in the real format) vs a prepared ArrayRecord folder. Prints one JSON
line per measurement. Start-up (worker spawn, first batch) is reported separately and excluded
from the rate.

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

from jaxproto.data import images, pipeline, prepare, prepared, registry, synthetic
from jaxproto.data.records import BadSampleReport
from jaxproto.data.samplers import ShuffleSampler
from jaxproto.methods.cipl.data import CiplPairViewTransform, CiplTrainTransform
from jaxproto.methods.xmir.data import TrainTransform as XmirTrainTransform

TRANSFORMS = {
    "cipl_warmup_512": lambda: CiplTrainTransform(512),
    "cipl_pair_512": lambda: CiplPairViewTransform(512),
    "xmir_224": lambda: XmirTrainTransform(224),
}


class DecodeAugment:
    """Picklable example function: load the record's image, apply the train transform."""

    def __init__(self, paths: list[str], transform_name: str):
        self.paths, self.transform_name = paths, transform_name
        self.transform = TRANSFORMS[transform_name]()

    def __call__(self, entry, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = self.transform(images.load_image(self.paths[int(entry)]), rng)
        if isinstance(out, tuple):
            return {"image": out[0], "image2": out[1]}
        return {"image": out}


def _write_raw(out_dir: str, num: int, size: int) -> list[str]:
    synthetic.main(
        ["--like", "chestxray14", "--num", str(num), "--num-test", "1", "--out", out_dir,
         "--image-size", str(size)]
    )  # fmt: skip
    cfg = registry.default_data_config("chestxray14")
    cfg.root = out_dir
    return cfg, [r.path for r in registry.load_index(cfg, BadSampleReport()).split("train")]


def _prepared(cfg, out_dir: str, size: int) -> list[str]:
    prepare.prepare(cfg, out_dir, size)
    return [r.path for r in prepared.load_prepared_index(out_dir).split("train")]


def _measure(paths, transform_name, workers, batch, batches) -> dict:
    fn = DecodeAugment(paths, transform_name)
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
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--transforms", default=",".join(TRANSFORMS))
    args = ap.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    workers = [int(w) for w in args.workers.split(",")]
    names = args.transforms.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, raw = _write_raw(os.path.join(tmp, "raw"), args.num_images, args.raw_size)
        sources = {"raw_png": raw}
        try:
            sources["arrayrecord"] = {
                size: _prepared(cfg, os.path.join(tmp, f"prepared{size}"), size)
                for size in (512, 256)
            }
        except ImportError as e:  # array_record missing: raw PNG only
            print(json.dumps({"skipped": "arrayrecord", "reason": str(e)}), flush=True)
        for name in names:
            for source, paths in sources.items():
                if source == "arrayrecord":
                    paths = paths[256 if name.startswith("xmir") else 512]
                for w in workers:
                    res = _measure(paths, name, w, args.batch_size, args.batches)
                    line = {"transform": name, "source": source, "workers": w, **res,
                            "cpu_count": os.cpu_count()}  # fmt: skip
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
