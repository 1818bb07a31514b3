"""Evaluate a trained model on a split and write the metrics.

  python -m jaxproto.evaluate --workdir runs/demo [--split test] [--checkpoint best|latest]
  python -m jaxproto.evaluate --export exports/demo --config.data.root=/data/odir --out eval.json

Prints the method's summary (per-class AUC, best-threshold F1, localisation or retrieval
metrics) and writes ``<workdir>/eval/<split>.json`` (or ``--out``), which names the evaluation
protocol that selected the checkpoint (``protocol``; ``selection``: its split, metric and the
checkpoint evaluated; see ``jaxproto.core.protocol``). ``--config.data.*``
overrides point a workdir or export at the data on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

import ml_collections

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.core import logging as log_lib
from jaxproto.core import prediction, protocol
from jaxproto.core.method import Method, State

log = logging.getLogger("jaxproto.evaluate")


def evaluate(config: ml_collections.ConfigDict, method: Method, state: State, split: str) -> dict:
    """``method.evaluate`` on ``split`` of the configured dataset, with ``operating_point``
    (F1 at the model's saved thresholds, ``Method.operating_point_metrics``) where it has them."""
    preds, records = prediction.predict_split(config, method, state, split)
    result = method.evaluate(preds, records)
    point = method.operating_point_metrics(preds, records)
    return result if point is None else {**result, "operating_point": point}


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.evaluate", config="overrides")
    cli.exclusive_source(parser)
    parser.add_argument("--split", default="test", help="dataset split to evaluate")
    parser.add_argument(
        "--checkpoint", default="best", choices=("best", "latest"), help="workdir checkpoint"
    )
    parser.add_argument("--out", help="output JSON (default <workdir>/eval/<split>.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    out = args.out or os.path.join(args.workdir or args.export, "eval", f"{args.split}.json")
    if args.out:
        cli.output_file(out)
    log_lib.setup_logging()
    config, method, state = inference.load_for_inference(args.workdir, args.export, args.checkpoint)
    cli.apply_overrides(config, args)
    result = evaluate(config, method, state, args.split)
    point = result.pop("operating_point", None)  # the method's summary sees its own result
    selection = protocol.describe(config, method.provenance.get("id", ""))
    written = {"protocol": selection["protocol"], **result, "selection": selection}
    if point:
        written["operating_point"] = point
    cli.output_dir(os.path.dirname(os.path.abspath(out)))
    with cli.atomic_write(out) as f:
        json.dump(written, f, indent=1, default=float)
    sys.stdout.write(method.summarize(result) + "\n")
    if point and point["mean_f1"] is not None:
        sys.stdout.write(
            f"mean F1 at the operating thresholds chosen on the {point['thresholds_split']} "
            f"split: {point['mean_f1']:.4f}\n"
        )
    sys.stdout.write(f"{args.split} split; {protocol.note(config, selection['checkpoint'])}\n")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
