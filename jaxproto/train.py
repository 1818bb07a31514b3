"""Train a jaxproto model.

  python -m jaxproto.train --config configs/cipl_odir.py:synthetic --workdir runs/demo
  python -m jaxproto.train --config configs/cipl_odir.py --config.data.root=/data/ODIR-5K \\
      --config.train.batch_size=16 --workdir runs/odir

--workdir holds checkpoints, metrics.jsonl, TensorBoard events and config.json; re-running the
same command with the same workdir resumes. A workdir holding a run of another config is refused
with the differing keys (``--config.train.allow_config_change=true`` resumes across keys that do
not change the train state; the new config goes to config.<n>.json, config.json is kept). While
a run writes the workdir it holds ``lock.json`` (host, pid, start time); a second run on it stops
at once. The same command runs as N processes on a TPU pod or GPU cluster (see launch/).

``--dry_run`` checks the config and the data (reads every record's image header; decodes every
image with ``--config.data.verify=true``), compiles each phase's step, times one, and prints the
phase plan with an estimated time per phase; it writes nothing.

Exit status: 0 finished (or stopped at train.max_steps); 2 a mistake the message names;
75 stopped by SIGTERM after saving a checkpoint ("preempted": resubmit the same command).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence

from jaxproto import inference, methods
from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import parallel, validate
from jaxproto.core import workdir as workdir_lib
from jaxproto.core.trainer import Trainer, TrainingDiverged
from jaxproto.data import images
from jaxproto.methods import build_trainer

log = logging.getLogger("jaxproto.train")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM, checkpoint saved; rerunning resumes


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.train", config="required")
    parser.add_argument(
        "--workdir", required=True, help="output directory (resumes if it has checkpoints)"
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="validate config and data, print the phase plan and time estimates; write nothing",
    )
    return parser


def check_records(trainer: Trainer, decode: bool) -> int:
    """Reads every record's image header (or decodes it); returns the count. The first
    unreadable image stops with its name (like training would)."""
    records = [r for split in trainer.index.splits.values() for r in split]
    progress = log_lib.Progress(len(records), 0, "check data", 1)
    for i, r in enumerate(records):
        images.load_image(r.path) if decode else images.image_size(r.path)
        progress.update(i + 1)
    progress.close()
    return len(records)


def dry_run(config) -> str:
    """The phase plan with estimated times, after checking config, data and every step."""
    with tempfile.TemporaryDirectory(prefix="jaxproto-dry-run-") as tmp:
        trainer = build_trainer(config, tmp)
        validate.validate_with_index(config, trainer.index)
        n = check_records(trainer, bool(config.data.get("verify", False)))
        lines = [
            f"{config.method} on {trainer.index.name}: {len(trainer.train_records)} train "
            f"images, global batch {trainer.global_batch}, {trainer.steps_per_epoch} steps/epoch,"
            f" mesh {dict(trainer.mesh.shape)}; {n} images checked",
        ]
        state = trainer.create_state()
        total = 0.0
        for i, (phase, steps) in enumerate(zip(trainer.phases, trainer.phase_steps, strict=True)):
            stream, step_fn = trainer.train_stream(i), trainer.step_fn(i)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, parallel.global_batch(next(stream), trainer.mesh))
            parallel.to_host(metrics)
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            state, metrics = step_fn(state, parallel.global_batch(next(stream), trainer.mesh))
            parallel.to_host(metrics)
            step_s = time.perf_counter() - t0
            total += compile_s + step_s * steps
            lines.append(
                f"  phase {i + 1} {phase.name}: {steps} steps (optimizer {phase.optimizer}, "
                f"trains {phase.trainable!r}); ~{step_s:.3f} s/step -> ~{step_s * steps:.0f} s "
                f"+ {compile_s:.0f} s compile"
            )
    lines.append(f"estimated total ~{total / 60:.1f} min (without evaluations and hooks)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    config = cli.load_config(args)
    log_lib.setup_logging()
    # Before anything touches the devices (validation builds the mesh to check the batch size).
    parallel.initialize_distributed(config.get("distributed"))
    validate.validate_config(config, methods.method_names())
    methods.resolve_protocol(config)  # train.eval_split and val sizes follow eval.protocol
    if args.dry_run:
        sys.stdout.write(dry_run(config) + "\nconfig and data OK; nothing was written\n")
        return 0
    is_main = parallel.is_main_process()
    workdir_lib.adopt_added_keys(args.workdir, config)  # every process: one program for all
    if is_main:
        workdir_lib.check_config_change(args.workdir, config)  # before any work
    created = not os.path.exists(args.workdir)
    try:
        with workdir_lib.lock(args.workdir, enabled=is_main):
            trainer = build_trainer(config, args.workdir)
            validate.validate_with_index(config, trainer.index)
            trainer.train()
            if not trainer.preempted:
                inference.save_thresholds(args.workdir)  # operating points for reports/predict
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    except BaseException:
        if created:
            workdir_lib.remove_if_empty(args.workdir)  # e.g. data.root unset: leave nothing
        raise
    if trainer.preempted:
        log.warning("preempted: exit status %d, rerun the same command to resume", EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    log.info("done: %s", trainer.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
