"""Dataset name -> loader, default data configs, and ``load_index`` (the top of ``jaxproto.data``).

``load_index(cfg, report)`` dispatches on ``cfg.name``: ``"synthetic"`` goes to
``jaxproto.data.synthetic``, a non-empty ``cfg.prepared`` reads an ArrayRecord folder written by
``jaxproto.data.prepare`` (through ``jaxproto.data.prepared``), and every other name to
``jaxproto.data.<name>.load``. Loaders import optional dependencies (pydicom, openpyxl) only when
they read a dataset that needs them.
"""

from __future__ import annotations

import logging
from types import ModuleType

import ml_collections

from jaxproto.data import (
    chestxray14,
    class2images,
    covidct,
    covidx,
    ddi,
    fairvlmed,
    fitzpatrick,
    ham10000,
    isic,
    kermany,
    mimic_cxr,
    odir,
    prepared,
    primitives,
    synthetic,
    tbx11k,
    vindr,
)
from jaxproto.data.loading import COMMON_DEFAULTS
from jaxproto.data.records import BadSampleReport, DatasetIndex

log = logging.getLogger(__name__)

LOADERS: dict[str, ModuleType] = {
    "chestxray14": chestxray14,
    "odir": odir,
    "covidx": covidx,
    "isic2017": isic,
    "tbx11k": tbx11k,
    "vindr": vindr,
    "ddi": ddi,
    "ham10000": ham10000,
    "covidct": covidct,
    "kermany": kermany,
    "fitzpatrick17k": fitzpatrick,
    "class2images": class2images,
    "fairvlmed": fairvlmed,
    "mimic_cxr": mimic_cxr,
    "primitives": primitives,
}
# Datasets that generate their images (in a cache folder) when ``data.root`` is empty.
GENERATED = frozenset({"synthetic", "primitives"})


# What each dataset's images are, as DICOM Modality (0008,0060) and BodyPartExamined (0018,0015)
# codes: CR/DX radiographs, CT, OP/XC ophthalmic or external-camera photographs, DMS dermoscopy.
# Skin-lesion sets name no body part (the lesions are anywhere on the body).
CHEST_XRAY = (("CR", "DX"), ("CHEST",))
IMAGING: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chestxray14": CHEST_XRAY,
    "covidx": CHEST_XRAY,
    "kermany": CHEST_XRAY,
    "tbx11k": CHEST_XRAY,
    "vindr": CHEST_XRAY,
    "covidct": (("CT",), ("CHEST",)),
    "odir": (("OP", "XC"), ("EYE",)),
    "fairvlmed": (("OP",), ("EYE",)),
    "mimic_cxr": CHEST_XRAY,
    "isic2017": (("DMS", "XC"), ()),
    "ham10000": (("DMS", "XC"), ()),
    "ddi": (("XC", "DMS"), ()),
    "fitzpatrick17k": (("XC", "DMS"), ()),
}
# Synthetic look-alikes -> the dataset they imitate.
SYNTHETIC_LIKES = {
    "ddi_concepts": "ddi",
    "fitzpatrick_concepts": "fitzpatrick17k",
    "covidct_concepts": "covidct",
    "kermany_concepts": "kermany",
}


def imaging(cfg: ml_collections.ConfigDict) -> dict[str, list[str]]:
    """``{"modality": [...], "body_part": [...]}`` the data config's images are: the config's
    ``data.modality`` / ``data.body_part`` (comma lists) where set, else the dataset's own
    (``IMAGING``; a synthetic dataset is what it imitates); empty lists where unknown."""
    name = str(cfg.get("name", ""))
    if name == "synthetic":
        like = str(cfg.get("like", ""))
        name = SYNTHETIC_LIKES.get(like, like)
    modalities, parts = IMAGING.get(name, ((), ()))
    out = {}
    for key, default in (("modality", modalities), ("body_part", parts)):
        given = [v.strip().upper() for v in str(cfg.get(key, "") or "").split(",") if v.strip()]
        out[key] = given or list(default)
    return out


def _loader_module(name: str) -> ModuleType:
    if name not in LOADERS:
        raise ValueError(
            f"unknown dataset data.name={name!r}; known: {', '.join(sorted(LOADERS))}, synthetic"
        )
    return LOADERS[name]


def default_data_config(name: str) -> ml_collections.ConfigDict:
    """The ``config.data`` block for dataset ``name`` with every field its loader reads."""
    cfg = dict(COMMON_DEFAULTS)
    cfg["name"] = name
    if name != "synthetic":
        cfg.update(_loader_module(name).DEFAULTS)
    return ml_collections.ConfigDict(cfg)


def load_index(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Builds the ``DatasetIndex`` described by the data config ``cfg``."""
    if cfg.get("prepared", ""):
        return prepared.load_prepared_index(cfg.prepared)
    if cfg.name == "synthetic":
        return synthetic.synthetic_index(cfg)
    index = _loader_module(cfg.name).load(cfg, report)
    for split, records in index.splits.items():
        log.info("%s/%s: %d records", index.name, split, len(records))
    return index
