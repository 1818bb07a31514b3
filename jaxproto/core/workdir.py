"""What a workdir holds besides checkpoints: the dataset description needed for inference."""

from __future__ import annotations

import json
import os

from jaxproto.data.records import DatasetIndex

DATASET_FILE = "dataset.json"


def dataset_meta(index: DatasetIndex) -> dict:
    """Class and concept names etc. -- enough to rebuild a model without the data."""
    return {
        "name": index.name,
        "class_names": list(index.class_names),
        "concept_names": list(index.concept_names),
        "multilabel": bool(index.multilabel),
        "background_class": index.background_class,
    }


def write_dataset_meta(workdir: str, meta: dict) -> str:
    path = os.path.join(workdir, DATASET_FILE)
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    return path


def read_dataset_meta(workdir: str) -> dict:
    path = os.path.join(workdir, DATASET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a complete jaxproto workdir")
    with open(path) as f:
        return json.load(f)


def index_from_meta(meta: dict) -> DatasetIndex:
    """A DatasetIndex with the dataset's names but no records (for inference)."""
    return DatasetIndex(
        name=meta["name"],
        class_names=list(meta["class_names"]),
        splits={},
        multilabel=bool(meta["multilabel"]),
        background_class=meta["background_class"],
        concept_names=list(meta.get("concept_names", [])),
    )
