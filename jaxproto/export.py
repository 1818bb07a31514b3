"""Export a trained model as a self-contained folder for evaluation, prediction and sharing.

  python -m jaxproto.export --workdir runs/demo --out exports/demo [--checkpoint best|latest]

``--out`` must be a new (or empty) folder; the export is written under a temporary name and
appears complete or not at all.

The export holds params, batch_stats and extra state (no optimizer state) as msgpack, the
resolved config, the dataset's class names, the preprocessing, a format version and a SHA-256
checksum over everything (``jaxproto.inference`` writes and checks it). When the training data
is readable here, it also stores out-of-distribution statistics (``ood.json``: mean and shrunk
precision of the model's features on up to ``--ood_samples`` training images, and the distance
threshold at the ``--ood_quantile`` quantile) that ``predict`` and ``explain`` use to flag
foreign input, with the DICOM modality and body part of the training images (always).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import ml_collections

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import ood, prediction, workdir
from jaxproto.core.method import Method, State

log = logging.getLogger("jaxproto.export")


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.export")
    parser.add_argument("--workdir", required=True, help="training workdir to export")
    parser.add_argument("--out", required=True, help="export folder to write")
    parser.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "latest"),
        help="best by train.best_metric (falls back to latest), or latest",
    )
    parser.add_argument(
        "--ood_quantile",
        type=float,
        default=0.99,
        help="training-set quantile of the OOD threshold",
    )
    parser.add_argument(
        "--ood_samples", type=int, default=2000, help="training images for the OOD statistics"
    )
    return parser


def ood_statistics(
    config: ml_collections.ConfigDict, method: Method, state: State, quantile: float, samples: int
) -> dict:
    """OOD statistics of the model's features on the training split and what the training
    images are (``ood.training_imaging``); only the latter, with a warning, when the training
    data cannot be read here."""
    try:
        preds, records = prediction.predict_split(config, method, state, "train", samples)
    except (UserError, ValueError, OSError) as e:
        log.warning("no out-of-distribution statistics (training data not readable: %s)", e)
        return {"imaging": ood.training_imaging(config.data, [])}
    features, keys = ood.feature_matrix(preds)
    stats = ood.fit(features, keys, quantile)
    stats["imaging"] = ood.training_imaging(config.data, records)
    log.info(
        "OOD statistics: %d training images, features %s (%d-d), threshold %.3f",
        len(records),
        "+".join(keys),
        features.shape[1],
        stats["threshold"],
    )
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    cli.refuse_non_empty_dir(args.out)
    cli.output_dir(os.path.dirname(os.path.abspath(args.out)))
    log_lib.setup_logging()
    if not 0.0 < args.ood_quantile <= 1.0 or args.ood_samples <= 0:
        raise UserError("--ood_quantile must be in (0, 1] and --ood_samples positive")
    config, method, state = inference.load_for_inference(
        workdir=args.workdir, which=args.checkpoint
    )
    meta = workdir.read_dataset_meta(args.workdir)
    stats = ood_statistics(config, method, state, args.ood_quantile, args.ood_samples)
    with cli.atomic_dir(args.out) as tmp:
        ood.write_stats(tmp, stats)  # before the manifest, so that its checksum covers it
        inference.write_export(
            tmp, config, meta, state, workdir=args.workdir, written=[ood.OOD_FILE]
        )
    log.info("wrote %s", os.path.join(args.out, "manifest.json"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
