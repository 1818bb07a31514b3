"""Predictions outside the training loop: a split of the configured dataset, or image files
(the shared body of ``evaluate``, ``export``'s OOD statistics, ``predict`` and ``explain``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from jaxproto.common.errors import DataError, UserError
from jaxproto.core import parallel
from jaxproto.core.logging import Progress
from jaxproto.core.method import Method, State
from jaxproto.core.trainer import collect_predictions, stream_predictions
from jaxproto.data import registry
from jaxproto.data.records import BadSampleReport, Record

log = logging.getLogger(__name__)


def predict_split(
    config: ml_collections.ConfigDict,
    method: Method,
    state: State,
    split: str,
    limit: int | None = None,
) -> tuple[dict[str, np.ndarray], list[Record]]:
    """``method.predict`` outputs for (the first ``limit`` records of) ``split`` of the
    configured dataset, and those records; the state is placed on the configured mesh."""
    index = registry.load_index(config.data, BadSampleReport(config.data.on_bad_sample))
    method.index = index
    records = index.split(split)[:limit]
    mesh = parallel.make_mesh(config.mesh)
    state = jax.device_put(state, parallel.tree_shardings(state, mesh, config.mesh.rules))
    stream = stream_predictions(method, mesh, state, records, config.train.eval_batch_size)
    return collect_predictions(stream, len(records)), records


def predict_files(
    method: Method, state: State, paths: Sequence[str], batch_size: int, skip_bad: bool
) -> tuple[list[str], dict[str, np.ndarray], list[tuple[str, str]]]:
    """(kept paths, stacked predictions, skipped [(path, reason)]) for ``paths``."""
    predict = jax.jit(method.predict)
    n_classes = len(method.class_names())
    kept, skipped, parts = [], [], {}
    progress = Progress(len(paths), 0, "predict", 1)
    for start in range(0, len(paths), batch_size):
        examples, names = [], []
        for path in paths[start : start + batch_size]:
            record = Record(os.path.basename(path), path, np.zeros((n_classes,), np.float32))
            try:
                examples.append(method.eval_example(record))
            except (DataError, OSError) as e:
                if not skip_bad:
                    raise UserError(f"{path}: {e} (use --skip_bad to skip it)") from None
                log.warning("skipping %s: %s", path, e)
                skipped.append((path, str(e)))
                continue
            names.append(path)
        if examples:
            batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            out = jax.device_get(predict(state, batch))
            for k, v in out.items():
                parts.setdefault(k, []).append(np.asarray(v))
            kept.extend(names)
        progress.update(min(start + batch_size, len(paths)))  # after the batch's predictions
    progress.close()
    return kept, {k: np.concatenate(v) for k, v in parts.items()}, skipped
