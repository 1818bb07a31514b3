"""The same jaxproto step under several convolution settings, interleaved in one process.

Each setting is ``conv1x1:stem_conv[:conv_backend]`` (``model.conv1x1`` in ``matmul|xla``,
``model.stem_conv`` in ``im2col_grad|xla``, ``model.conv_backend`` in ``xla|onednn``, default
xla). Repetitions alternate between the settings so machine noise hits all of them; one JSON
line per setting: median seconds per step and the speed-up against the first setting. The steps
are ``compare_torch.py``'s jaxproto side (CIPL on DenseNet-121, the baseline on ResNet-50,
random data).

    python benchmarks/conv_options.py --step baseline_train --settings matmul:xla,matmul:im2col_grad
    python benchmarks/conv_options.py --step cipl_warmup --repeats 6
    python benchmarks/conv_options.py --step cipl_warmup --settings matmul:xla,xla:xla:onednn
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json  # noqa: E402
import statistics  # noqa: E402

import compare_torch  # noqa: E402  (sets XLA_FLAGS from --threads before jax is imported)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxproto.backbones import layers  # noqa: E402


def _setting(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    conv1x1, stem, backend = (parts + ["xla"])[:3] if len(parts) in (2, 3) else ("", "", "")
    if (
        conv1x1 not in layers.CONV1X1_MODES
        or stem not in layers.STEM_CONV_MODES
        or backend not in layers.CONV_BACKENDS
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected conv1x1:stem_conv[:conv_backend] with conv1x1 in "
            f"{layers.CONV1X1_MODES}, stem_conv in {layers.STEM_CONV_MODES} and conv_backend in "
            f"{layers.CONV_BACKENDS}"
        )
    return conv1x1, stem, backend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=compare_torch.STEPS, default="baseline_train")
    parser.add_argument(
        "--settings",
        default="matmul:xla,matmul:im2col_grad",
        help="comma-separated conv1x1:stem_conv[:conv_backend] settings; the first is the "
        "reference",
    )
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4, help="images (warm-up) or pairs (main)")
    parser.add_argument("--threads", type=int, default=compare_torch.THREADS)
    parser.add_argument("--backbone", default="densenet121", help="CIPL steps")
    parser.add_argument("--baseline-backbone", default="resnet50", help="baseline steps")
    args = parser.parse_args(argv)
    try:
        settings = [_setting(s) for s in args.settings.split(",") if s]
    except argparse.ArgumentTypeError as e:
        parser.error(f"--settings: {e}")
    build = (
        compare_torch._cipl_runs if args.step.startswith("cipl_") else compare_torch._baseline_runs
    )
    runs, compile_s = {}, {}
    for setting in settings:
        conv1x1, stem, backend = setting
        ns = argparse.Namespace(**vars(args), conv1x1=conv1x1, stem_conv=stem, conv_backend=backend)
        runs[setting] = build(ns, np.random.default_rng(0))[args.step][0]
        compile_s[setting] = compare_torch._seconds(runs[setting])
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, run in runs.items():
            times[k].append(compare_torch._seconds(run))
    reference = statistics.median(times[settings[0]])
    for (conv1x1, stem, backend), t in times.items():
        print(
            json.dumps(
                {
                    "bench": "conv_options",
                    "step": args.step,
                    "conv1x1": conv1x1,
                    "stem_conv": stem,
                    "conv_backend": backend,
                    "image_size": args.image_size,
                    "batch": args.batch,
                    "threads": args.threads,
                    "median_sec": statistics.median(t),
                    "speedup_vs_first": reference / statistics.median(t),
                    "faster_than_first_in": sum(
                        a < b for a, b in zip(t, times[settings[0]], strict=True)
                    ),
                    "sec": t,
                    "compile_sec": compile_s[(conv1x1, stem, backend)],
                    "load_average": os.getloadavg(),
                    "jax_version": jax.__version__,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
