"""Run logging: a log file, metrics.jsonl, TensorBoard events and a progress bar (process 0)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import jax
import numpy as np

log = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to the ``sys.stderr`` of the moment, so that a redirected
    or replaced stderr (a test's capture, a notebook) never leaves it writing to a closed
    stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        del value  # always sys.stderr


def setup_logging(workdir: str | None = None, level: int = logging.INFO) -> None:
    """Logs to stderr and, on process 0, to ``<workdir>/log.txt``."""
    root = logging.getLogger()
    root.setLevel(level)
    from absl import logging as absl_logging

    root.removeHandler(absl_logging.get_absl_handler())  # one line per message, ours
    for h in list(root.handlers):  # absl's pre-init log calls logging.basicConfig()
        if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.__stderr__):
            root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_jaxproto", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(fmt)
        handler._jaxproto = True
        root.addHandler(handler)
    if workdir and jax.process_index() == 0:
        path = os.path.abspath(os.path.join(workdir, "log.txt"))
        if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(fmt)
            root.addHandler(fh)
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Appends JSON lines to metrics.jsonl and scalars to TensorBoard; no-op off process 0."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=30)

    def write(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key in ("step", "kind", "time"):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{key}", value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """tqdm bar with images/s and ETA on process 0 (plain log lines when not a terminal)."""

    def __init__(self, total: int, initial: int, desc: str, images_per_step: int):
        from tqdm import tqdm

        self.images_per_step = images_per_step
        self.enabled = jax.process_index() == 0
        self._t0 = time.perf_counter()
        self._n0 = initial
        self.bar = (
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                dynamic_ncols=True,
                mininterval=2.0,
                file=sys.stderr,
            )
            if self.enabled
            else None
        )

    def update(self, step: int, postfix: dict | None = None) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        ips = (step - self._n0) * self.images_per_step / elapsed
        shown = {"img/s": f"{ips:.1f}"}
        shown.update({k: f"{v:.4g}" for k, v in (postfix or {}).items()})
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def images_per_second(self, step: int) -> float:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        return (step - self._n0) * self.images_per_step / elapsed

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
