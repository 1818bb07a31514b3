"""Dataset-independent records: what every dataset loader produces and every pipeline consumes.

A loader turns a dataset's published files into a `DatasetIndex`: class names, optional concept
names and one list of `Record`s per split. Problems found while reading (missing files, bad rows)
go through a `BadSampleReport`, which raises under ``on_bad_sample='error'`` and counts and lists
them under ``'skip'`` -- nothing is ever dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from jaxproto.common.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in the original image's pixel coordinates (x, y = top-left corner).

    ``label`` indexes the dataset's class names, or its concept names when ``is_concept``.
    """

    label: int
    x: float
    y: float
    w: float
    h: float
    is_concept: bool = False


@dataclasses.dataclass
class Record:
    """One image and its annotations.

    ``path`` is a file path, or ``synthetic://<like>/<seed>/<index>`` for procedural images.
    ``labels`` is a float32 multi-hot vector over the dataset's classes (one-hot for
    multi-class datasets). ``size`` is the original (width, height) when known, so boxes can be
    rescaled to the network input.
    """

    image_id: str
    path: str
    labels: np.ndarray
    boxes: tuple[Box, ...] = ()
    concepts: np.ndarray | None = None
    patient_id: str = ""
    size: tuple[int, int] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DatasetIndex:
    """Every split of one dataset, as records.

    ``background_class`` is the index of the "no finding"/"normal" class that prototype methods
    use as a shared background logit (None when the dataset has none).
    """

    name: str
    class_names: list[str]
    splits: dict[str, list[Record]]
    multilabel: bool = True
    background_class: int | None = None
    concept_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> list[Record]:
        if name not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no split {name!r}; available: {sorted(self.splits)}"
            )
        records = self.splits[name]
        if not records:
            raise DataError(f"dataset {self.name!r}: split {name!r} is empty")
        return records


@dataclasses.dataclass
class BadSampleReport:
    """Collects bad inputs. ``policy='error'`` raises at the first one; ``'skip'`` records it.

    One entry per bad record, keyed by ``where`` (the record's file and line, or for an image
    that fails to decode in the input pipeline, its path and the line that listed it): a second
    problem of the same record is added to that entry's ``reasons``, a repeat (the same image
    failing again in a later epoch) changes nothing. Once ``write`` has named the report file,
    every new entry rewrites it, so skips found mid-training are on disk at once.
    """

    policy: str = "error"
    entries: list[dict] = dataclasses.field(default_factory=list)
    path: str | None = None

    def __post_init__(self):
        if self.policy not in ("error", "skip"):
            raise DataError(f"data.on_bad_sample must be 'error' or 'skip', got {self.policy!r}")

    def bad(self, where: str, problem: str, expected: str = "", stage: str = "load") -> None:
        """Reports a bad sample: ``where`` names the file (and line), ``problem`` what is wrong;
        ``stage`` is ``"load"`` (reading the dataset files) or ``"decode"`` (input pipeline)."""
        reason = problem + (f" (expected {expected})" if expected else "")
        if self.policy == "error":
            raise DataError(
                f"{where}: {reason}  [set data.on_bad_sample=skip to skip and list such samples]"
            )
        entry = next((x for x in self.entries if x["where"] == where), None)
        if entry is None:
            entry = {"where": where, "problem": problem, "expected": expected, "stage": stage}
            entry["reasons"] = []
            self.entries.append(entry)
        if reason in entry["reasons"]:
            return
        entry["reasons"].append(reason)
        log.warning("skipping bad sample: %s: %s", where, reason)
        if self.path is not None:
            self._dump()

    def write(self, workdir: str) -> str:
        """Writes ``<workdir>/data_report.json`` and keeps it up to date from now on. Entries of
        an earlier run in the same workdir found while decoding (a resumed run) are kept."""
        path = os.path.join(workdir, "data_report.json")
        if os.path.isfile(path) and self.path != path:
            self._merge_decode_entries(path)
        self.path = path
        self._dump()
        if self.entries:
            log.warning("%d bad samples skipped; listed in %s", len(self.entries), path)
        return path

    def _merge_decode_entries(self, path: str) -> None:
        try:
            with open(path) as f:
                old = json.load(f).get("skipped", [])
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: unreadable bad-sample report ({e}); move it away") from e
        known = {x["where"] for x in self.entries}
        self.entries.extend(
            x for x in old if x.get("stage") == "decode" and x.get("where") not in known
        )

    def _dump(self) -> None:
        body = {"policy": self.policy, "num_skipped": len(self.entries), "skipped": self.entries}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)
        os.replace(tmp, self.path)


def multi_hot(indices: Sequence[int], num: int) -> np.ndarray:
    v = np.zeros((num,), np.float32)
    v[list(indices)] = 1.0
    return v


def single_class(record: Record, method: str) -> int:
    """The record's one task class (arg-max of its labels); DataError naming the record when it
    has no positive class. ``method`` names who needs it, for the message."""
    labels = np.asarray(record.labels)
    if labels.ndim != 1 or labels.sum() < 0.5:
        raise DataError(
            f"record {record.image_id!r} ({record.path}): labels {labels.tolist()} have no "
            f"positive class ({method} expects a one-hot class vector)"
        )
    return int(np.argmax(labels))


def concept_vector(record: Record, num_concepts: int, method: str) -> np.ndarray:
    """The record's ``num_concepts`` concept labels as float32; DataError naming the record when
    they are missing or mis-sized (``method`` names who needs them)."""
    if record.concepts is None or np.shape(record.concepts) != (num_concepts,):
        got = None if record.concepts is None else np.shape(record.concepts)
        raise DataError(
            f"record {record.image_id!r} ({record.path}): concepts {got}, expected a vector "
            f"of {num_concepts} concept labels ({method} needs concept annotations)"
        )
    return np.asarray(record.concepts, np.float32)
