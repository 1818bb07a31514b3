"""Train a jaxproto model.

  python -m jaxproto.train --config configs/cipl_odir.py:synthetic --workdir runs/demo

  --config FILE.py[:ARG]   config file; ARG = comma-separated key=value/flags, e.g.
                           configs/cipl_odir.py:synthetic,image_size=96
  --config.KEY.SUB=VALUE   override one config leaf (e.g. --config.train.batch_size=8)
  --workdir DIR            checkpoints, metrics.jsonl, TensorBoard events, config.json;
                           re-running the same command with the same workdir resumes.

The same command runs as N processes on a TPU pod or GPU cluster (see launch/).
"""

from __future__ import annotations

import logging

from absl import flags

from jaxproto.common import cli
from jaxproto.common.errors import UserError

log = logging.getLogger("jaxproto.train")


def main(argv):
    del argv
    config = cli.config_from_flags()
    if not flags.FLAGS.workdir:
        raise UserError("--workdir is required")
    from jaxproto.core import logging as log_lib
    from jaxproto.core import parallel

    log_lib.setup_logging()
    parallel.initialize_distributed(config.get("distributed"))
    from jaxproto.core.trainer import Trainer, TrainingDiverged

    trainer = Trainer(config, flags.FLAGS.workdir)
    try:
        trainer.train()
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    log.info("done: %s", trainer.workdir)


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "Output directory (resumes if it has checkpoints).")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
