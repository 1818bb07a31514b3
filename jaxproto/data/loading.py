"""The checks and helpers every dataset loader shares, so all datasets report problems alike.

Header checks, file checks, CSV reading and grouped (patient-wise) splits; problems go through
``BadSampleReport`` with the file, the line and what was expected. ``COMMON_DEFAULTS`` are the
``config.data`` fields every dataset has (``jaxproto.data.registry`` adds each loader's own).
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.images import image_size, walk_images
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record

log = logging.getLogger(__name__)

# ``data.val_fraction`` / ``data.num_val`` value meaning "whatever the evaluation protocol needs"
# (``core.protocol``): a validation split -- the dataset's official list, else AUTO_VAL_FRACTION
# of the training patients (synthetic: as many images as the test split) -- or, under a protocol
# that selects on the test split, none.
AUTO = -1
AUTO_VAL_FRACTION = 0.1

COMMON_DEFAULTS: dict = {
    "name": "",
    "root": "",
    "image_size": 224,
    "on_bad_sample": "error",
    "val_fraction": float(AUTO),
    "seed": 0,
    "prepared": "",
    # What the images are, as DICOM codes (comma lists; "" = the dataset's own, see
    # ``registry.IMAGING``): checked against a DICOM's Modality / BodyPartExamined at predict.
    "modality": "",
    "body_part": "",
}


def option(cfg: Mapping, key: str, defaults: Mapping):
    """``cfg[key]`` if the data config has it, else the loader's documented default."""
    if key in cfg:
        return cfg[key]
    if key in defaults:
        return defaults[key]
    return COMMON_DEFAULTS[key]


def root_and_options(cfg: Mapping, defaults: Mapping) -> tuple[str, Callable[[str], Any]]:
    """The checked ``data.root`` and ``opt(key)``: ``option(cfg, key, defaults)``."""
    return require_root(cfg), functools.partial(option, cfg, defaults=defaults)


def require_root(cfg: Mapping) -> str:
    root = cfg.get("root", "")
    if not root:
        raise ValueError(f"data.root is empty: set it to the {cfg.get('name')} dataset folder")
    if not os.path.isdir(root):
        raise DataError(f"data.root {root!r} is not a directory")
    return root


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file, else a DataError saying which published file is missing."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")
    return path


def open_text(path: str) -> io.TextIOBase:
    """Opens a text file (``.gz`` transparently), universal newlines, UTF-8 with optional BOM."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def check_header(path: str, found: Sequence[str], required: Sequence[str]) -> dict[str, int]:
    """Column name -> position; a DataError naming the file, missing and found columns."""
    found = [f.strip() for f in found]
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(f"{path}: wrong header: missing column(s) {missing}; found columns {found}")
    return {name: i for i, name in enumerate(found) if name}


def read_csv_rows(
    path: str, required: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields (line number, {column: stripped value}) for each data row of a CSV file.

    ``aliases`` maps a canonical column name to alternative spellings found in published copies
    (e.g. ``Patient Gender`` / ``Patient Sex``); the row dict uses the canonical name. Rows with
    more fields than the header keep only the named fields when the extra ones are empty.
    """
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: file is empty (expected a header line)") from None
        for canon, alts in (aliases or {}).items():
            if canon not in header:
                for alt in alts:
                    if alt in header:
                        header[header.index(alt)] = canon
                        break
        cols = check_header(path, header, required)
        for row in reader:
            line = reader.line_num
            if not any(v.strip() for v in row):
                continue
            values = [v.strip() for v in row]
            if len(values) < len(header):
                values += [""] * (len(header) - len(values))
            elif len(values) > len(header) and any(values[len(header) :]):
                raise DataError(
                    f"{path}:{line}: {len(values)} fields but the header names {len(header)}"
                )
            yield line, {name: values[i] for name, i in cols.items()}


def list_images(root: str, exts: Sequence[str], skip_suffixes: Sequence[str] = ()) -> dict:
    """File name -> path for every image under ``root`` (any depth), for layouts that spread
    images over sub-folders (``images_001/images/``, ``HAM10000_images_part_1``); a file name
    found twice is a DataError naming both paths."""
    found: dict[str, str] = {}
    for path in walk_images(root, exts, skip_suffixes):
        name = os.path.basename(path)
        if name in found:
            raise DataError(f"image file name {name!r} occurs twice: {found[name]} and {path}")
        found[name] = path
    return found


def first_sighting(seen: set, image_id: str, where: str, report: BadSampleReport) -> bool:
    """True (and ``image_id`` added to ``seen``) the first time a row names ``image_id``; a
    repeated id goes to the report as a duplicate."""
    if image_id in seen:
        report.bad(where, f"duplicate image id {image_id!r}", "each image once")
        return False
    seen.add(image_id)
    return True


def check_duplicates(records: Sequence[Record], where: str, report: BadSampleReport) -> list:
    """Drops (through the report) records whose image_id was already seen."""
    seen: set[str] = set()
    return [
        r for r in records if first_sighting(seen, r.image_id, r.meta.get("where", where), report)
    ]


def check_files(records: Sequence[Record], report: BadSampleReport) -> list[Record]:
    """Keeps records whose image file exists; the others go to the report."""
    out = []
    for r in records:
        if not os.path.isfile(r.path):
            report.bad(
                r.meta.get("where", r.path),
                f"image file not found: {r.path}",
                "an existing image file",
            )
            continue
        out.append(r)
    return out


def fill_box_sizes(records: Sequence[Record]) -> None:
    """Sets ``size`` from the image header for records with boxes and no size yet."""
    for r in records:
        if r.boxes and r.size is None:
            r.size = image_size(r.path)


def grouped_split(
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    strata: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Splits item indices into ``len(fractions) + 1`` parts with no group in two parts.

    Groups (patients, lesions) are shuffled with a seeded generator, separately per stratum when
    ``strata`` is given (one value per item; a group takes its first item's stratum), and cut where
    the cumulative item count passes each fraction; the last part takes the rest.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1.0:
        raise ValueError(f"split fractions must be >= 0 and sum to < 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict[int, list[str]] = {}
    for g, idx in members.items():
        by_stratum.setdefault(0 if strata is None else int(strata[idx[0]]), []).append(g)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for s in sorted(by_stratum):
        names = sorted(by_stratum[s])
        order = rng.permutation(len(names))
        total = sum(len(members[g]) for g in names)
        bounds = np.cumsum(fractions) * total
        count = 0
        for j in order:
            part = int(np.searchsorted(bounds, count, side="right"))
            parts[part].extend(members[names[j]])
            count += len(members[names[j]])
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def carve_split(
    index: DatasetIndex,
    source: str,
    fraction: float,
    seed: int,
    new_name: str,
) -> None:
    """Moves a patient-disjoint ``fraction`` of ``index.splits[source]`` into ``new_name``.

    Records without a patient id are their own group. Used for validation splits (datasets without
    one) and for test splits of datasets that publish only labelled training data.
    """
    if fraction <= 0:
        return
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction for {new_name!r} must be in (0, 1), got {fraction}")
    records = index.splits[source]
    groups = [r.patient_id or f"image:{r.image_id}" for r in records]
    rest, carved = grouped_split(groups, [1.0 - fraction], seed)
    index.splits[source] = [records[i] for i in rest]
    index.splits[new_name] = [records[i] for i in carved]


def finish(index: DatasetIndex, cfg: Mapping, defaults: Mapping) -> DatasetIndex:
    """Common tail of every loader: optional patient-wise val split, then the empty-split check.

    ``data.val_fraction`` ``AUTO`` (-1) keeps the dataset's official val list where it has one
    and carves ``AUTO_VAL_FRACTION`` of the training patients otherwise; > 0 carves that
    fraction (an error for a dataset with a val list); 0 carves nothing."""
    val_fraction = float(option(cfg, "val_fraction", defaults))
    auto = val_fraction == AUTO
    if auto:
        val_fraction = 0.0 if "val" in index.splits else AUTO_VAL_FRACTION
    if val_fraction > 0:
        if "val" in index.splits:
            raise ValueError(
                f"data.val_fraction={val_fraction} but {index.name} already has a 'val' split; "
                "set data.val_fraction=0"
            )
        carve_split(index, "train", val_fraction, int(option(cfg, "seed", defaults)), "val")
        if auto and not index.splits["val"]:
            del index.splits["val"]
            log.warning(
                "%s: too few training patients for a %.0f%% validation split; none carved",
                index.name,
                100 * val_fraction,
            )
    for split, records in index.splits.items():
        if not records:
            raise DataError(
                f"dataset {index.name!r} (root {cfg.get('root')!r}): split {split!r} is empty "
                "after reading the published files"
            )
        fill_box_sizes(records)
    return index
