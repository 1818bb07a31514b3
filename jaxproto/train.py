"""Train a jaxproto model.

  python -m jaxproto.train --config configs/cipl_odir.py:synthetic --workdir runs/demo
  python -m jaxproto.train --config configs/cipl_odir.py --config.data.root=/data/ODIR-5K \\
      --config.train.batch_size=16 --workdir runs/odir

--workdir holds checkpoints, metrics.jsonl, TensorBoard events and config.json; re-running the
same command with the same workdir resumes. The same command runs as N processes on a TPU pod
or GPU cluster (see launch/).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import parallel
from jaxproto.core.trainer import TrainingDiverged
from jaxproto.methods import build_trainer

log = logging.getLogger("jaxproto.train")


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.train", config="required")
    parser.add_argument(
        "--workdir", required=True, help="output directory (resumes if it has checkpoints)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    config = cli.load_config(args)
    log_lib.setup_logging()
    parallel.initialize_distributed(config.get("distributed"))
    trainer = build_trainer(config, args.workdir)
    try:
        trainer.train()
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    log.info("done: %s", trainer.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
