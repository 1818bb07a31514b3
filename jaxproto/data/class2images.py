"""CFN's split files: ``root/class2images_{train,val,test}.p`` (cfn.md §2, §9).

Each file is a pickled dict {class name -> [image paths relative to ``root/images/``]}. The pickles
are read with an unpickler that resolves no global at all (only dict, list and str survive), so a
crafted file cannot run code; anything else is a DataError naming the file.

Class order is the sorted key order of the train pickle unless ``data.class_names`` is given.
MIMIC-CXR keys are 13-character 0/1 strings (the label vector): they are parsed as multi-label
only when a component of ``data.root`` is literally ``mimic_cxr`` (as the original code does) or
``data.multilabel_keys`` is true. Optional ``data.reports_file`` (JSON {relative path: text})
attaches a report / clinical note to each record as ``meta["report"]``; ``data.concepts_file`` (JSON
{"names": [...], "present": {relative path: [names]}}) attaches known concepts (synthetic data).
"""

from __future__ import annotations

import io
import json
import os
import pickle

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading as R
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

SPLITS = ("train", "val", "test")
DEFAULTS: dict = {
    "class_names": [],
    "multilabel_keys": False,
    "reports_file": "",
    "concepts_file": "",
    "images_dir": "images",
}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def read_split_pickle(path: str) -> dict[str, list[str]]:
    """{class key -> [relative paths]} from one split pickle; DataError for anything else."""
    R.require_file(path, "CFN split pickle")
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _NoGlobals(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a plain pickled dict of lists of str ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict {{class: [paths]}}, got {type(obj).__name__}")
    for key, paths in obj.items():
        if not isinstance(key, str):
            raise DataError(f"{path}: class key {key!r} is not a str")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DataError(f"{path}: entry {key!r} must be a list of str paths")
    return obj


def write_split_pickle(path: str, class2images: dict[str, list[str]]) -> None:
    """Writes a split pickle in the original format (used by the synthetic generator)."""
    with open(path, "wb") as f:
        pickle.dump({str(k): [str(p) for p in v] for k, v in class2images.items()}, f, protocol=4)


def _read_json(path: str, what: str) -> dict:
    R.require_file(path, what)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _is_mimic(root: str, cfg) -> bool:
    parts = os.path.normpath(os.path.abspath(root)).split(os.sep)
    return "mimic_cxr" in parts or bool(R.option(cfg, "multilabel_keys", DEFAULTS))


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport, name: str = "") -> DatasetIndex:
    """Reads the three split pickles under ``cfg.root``; see the module docstring."""
    root = R.require_root(cfg)
    opt = lambda k: R.option(cfg, k, DEFAULTS)  # noqa: E731
    tables = {s: read_split_pickle(os.path.join(root, f"class2images_{s}.p")) for s in SPLITS}
    multilabel = _is_mimic(root, cfg)
    if multilabel:
        width = {len(k) for t in tables.values() for k in t}
        if len(width) != 1:
            raise DataError(
                f"{root}: MIMIC label keys must share one length, found {sorted(width)}"
            )
        n = width.pop()
        class_names = list(opt("class_names")) or [f"label_{i}" for i in range(n)]
        if len(class_names) != n:
            raise DataError(f"data.class_names has {len(class_names)} names for {n}-bit keys")
    else:
        class_names = list(opt("class_names")) or sorted(tables["train"])
    reports = {}
    if opt("reports_file"):
        reports = _read_json(os.path.join(root, opt("reports_file")), "reports file")
    concept_names, present = [], {}
    if opt("concepts_file"):
        c = _read_json(os.path.join(root, opt("concepts_file")), "concepts file")
        concept_names, present = list(c["names"]), dict(c["present"])
    images = os.path.join(root, opt("images_dir"))
    splits: dict[str, list[Record]] = {}
    for split, table in tables.items():
        where = os.path.join(root, f"class2images_{split}.p")
        records = []
        for key in sorted(table):
            labels = _labels(key, class_names, multilabel, where)
            for rel in table[key]:
                meta = {"where": f"{where}[{key!r}]", "relpath": rel}
                if reports:
                    if rel not in reports:
                        report.bad(meta["where"], f"no report for {rel!r}", "a reports_file entry")
                        continue
                    meta["report"] = str(reports[rel])
                concepts = None
                if concept_names:
                    idx = [concept_names.index(c) for c in present.get(rel, [])]
                    concepts = multi_hot(idx, len(concept_names))
                records.append(
                    Record(rel, os.path.join(images, rel), labels, concepts=concepts, meta=meta)
                )
        splits[split] = R.check_files(records, report)
    index = DatasetIndex(
        name=name or os.path.basename(os.path.normpath(root)),
        class_names=class_names,
        splits=splits,
        multilabel=multilabel,
        concept_names=concept_names,
    )
    return R.finish(index, cfg, {**DEFAULTS, "val_fraction": 0.0})


def _labels(key: str, class_names: list[str], multilabel: bool, where: str) -> np.ndarray:
    if multilabel:
        if set(key) - {"0", "1"}:
            raise DataError(f"{where}: label key {key!r} is not a 0/1 string")
        return np.array([float(ch) for ch in key], np.float32)
    if key not in class_names:
        raise DataError(f"{where}: class {key!r} not in data.class_names {class_names}")
    return multi_hot([class_names.index(key)], len(class_names))
