"""Evaluate a trained model on a split and write the metrics.

  python -m jaxproto.evaluate --workdir runs/demo [--split test] [--checkpoint best|latest]
  python -m jaxproto.evaluate --export exports/demo --config.data.root=/data/odir --out eval.json

Prints the method's summary (per-class AUC, best-threshold F1, localisation or retrieval
metrics) and writes ``<workdir>/eval/<split>.json`` (or ``--out``). ``--config.data.*``
overrides point a workdir or export at the data on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.core import logging as log_lib
from jaxproto.core import parallel
from jaxproto.core.method import Method, State
from jaxproto.core.trainer import collect_predictions, stream_predictions
from jaxproto.data import registry
from jaxproto.data.records import BadSampleReport

log = logging.getLogger("jaxproto.evaluate")


def evaluate(config: ml_collections.ConfigDict, method: Method, state: State, split: str) -> dict:
    """Runs ``method.evaluate`` on ``split`` of the configured dataset."""
    index = registry.load_index(config.data, BadSampleReport(config.data.on_bad_sample))
    method.index = index
    records = index.split(split)
    mesh = parallel.make_mesh(config.mesh)
    state = jax.device_put(state, parallel.tree_shardings(state, mesh, config.mesh.rules))
    stream = stream_predictions(method, mesh, state, records, config.train.eval_batch_size)
    preds = collect_predictions(stream, len(records))
    return method.evaluate(preds, records)


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
    log_lib.setup_logging()
    config, method, state = inference.load_for_inference(args.workdir, args.export, args.checkpoint)
    cli.apply_overrides(config, args)
    result = evaluate(config, method, state, args.split)
    out = args.out or os.path.join(args.workdir or args.export, "eval", f"{args.split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    sys.stdout.write(method.summarize(result) + "\n")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
