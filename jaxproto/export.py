"""Export a trained model as a self-contained folder for evaluation, prediction and sharing.

  python -m jaxproto.export --workdir runs/demo --out exports/demo [--checkpoint best|latest]

``--out`` must be a new (or empty) folder; the export is written under a temporary name and
appears complete or not at all.

The export holds params, batch_stats and extra state (no optimizer state) as msgpack, the
resolved config, the dataset's class names, the preprocessing, a format version and a SHA-256
checksum over everything (``jaxproto.inference`` writes and checks it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.core import logging as log_lib
from jaxproto.core import workdir

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    cli.refuse_non_empty_dir(args.out)
    cli.output_dir(os.path.dirname(os.path.abspath(args.out)))
    log_lib.setup_logging()
    config, _, state = inference.load_for_inference(workdir=args.workdir, which=args.checkpoint)
    meta = workdir.read_dataset_meta(args.workdir)
    with cli.atomic_dir(args.out) as tmp:
        inference.write_export(tmp, config, meta, state)
    log.info("wrote %s", os.path.join(args.out, "manifest.json"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
