"""Evaluate a trained model on a split and write the metrics.

  python -m jaxproto.evaluate --workdir runs/demo [--split test] [--checkpoint best|latest]
  python -m jaxproto.evaluate --export exports/demo --config.data.root=/data/odir --out eval.json

Prints a per-class table (AUC, best-threshold F1, ...) and writes ``<workdir>/eval/<split>.json``
(or ``--out``). ``--config.data.*`` overrides point an export at the data on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import flags

from jaxproto.common import cli

log = logging.getLogger("jaxproto.evaluate")


def evaluate(config, method, state, split: str) -> dict:
    """Runs ``method.evaluate`` on ``split`` of the configured dataset."""
    from jaxproto.core import parallel
    from jaxproto.core.trainer import collect_predictions, stream_predictions
    from jaxproto.data import registry
    from jaxproto.data.records import BadSampleReport

    index = registry.load_index(config.data, BadSampleReport(config.data.on_bad_sample))
    method.index = index
    records = index.split(split)
    mesh = parallel.make_mesh(config.mesh)
    stream = stream_predictions(method, mesh, state, records, config.train.eval_batch_size)
    preds = collect_predictions(stream, len(records))
    return method.evaluate(preds, records)


def main(argv):
    del argv
    from jaxproto.common import config as config_lib
    from jaxproto.core import logging as log_lib
    from jaxproto.core import metrics as metrics_lib
    from jaxproto.core import restore

    log_lib.setup_logging()
    config, method, state = restore.load_for_inference(
        flags.FLAGS.workdir, flags.FLAGS.export, flags.FLAGS.checkpoint
    )
    from jaxproto.common.cli import _State

    for key, value in _State.overrides:
        config_lib.apply_override(config, key, value)
    result = evaluate(config, method, state, flags.FLAGS.split)
    out = flags.FLAGS.out or os.path.join(
        flags.FLAGS.workdir or flags.FLAGS.export, "eval", f"{flags.FLAGS.split}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    sys.stdout.write(metrics_lib.format_summary(result) + "\n")
    log.info("wrote %s", out)


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "Training workdir.")
    flags.DEFINE_string("export", None, "Export folder (instead of --workdir).")
    flags.DEFINE_string("split", "test", "Dataset split to evaluate.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Workdir checkpoint.")
    flags.DEFINE_string("out", None, "Output JSON (default <workdir>/eval/<split>.json).")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
