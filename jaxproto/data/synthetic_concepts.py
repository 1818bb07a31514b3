"""Med-MICN's synthetic concept-rule sets: the true rules and the real on-disk layouts.

Every concept is a planted visual primitive and the class is a known logical function of the
concepts (``jaxproto.data.procedural.CONCEPT_RULES``, rendered there; names in
``jaxproto.data.synthetic.LIKES``), so learned rules can be checked: ``ddi_concepts`` (DDI's 13
SkinCon concepts; malignant ⇔ Papule ∧ ¬Xerosis), ``fitzpatrick_concepts`` (the same 13;
malignant ⇔ Vesicle ∧ ¬Fissure), ``covidct_concepts`` (Table 3's 8 COVID-CT concepts; CT_COVID ⇔
Peripheral ground-glass opacities ∧ ¬Absence of lobar consolidation), ``kermany_concepts`` (6
chest X-ray findings; PNEUMONIA ⇔ Consolidation ∧ ¬Clear lung fields).

CLI: ``python -m jaxproto.data.synthetic_concepts --like ddi_concepts --num 800 --out DIR``
writes the real layout (DDI + ``ddi_metadata_concept.csv``; COVID-CT folders + split lists +
concept CSV; Kermany folders + concept CSV; Fitzpatrick17k CSV + SkinCon table).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from jaxproto.common import cli
from jaxproto.data import covidct, procedural, synthetic, write_real_format
from jaxproto.data.records import DatasetIndex

log = logging.getLogger(__name__)

RULES = procedural.CONCEPT_RULES
# The real layout each look-alike writes, and the registry name that reads it back.
REAL_LAYOUT = {
    "ddi_concepts": "ddi",
    "fitzpatrick_concepts": "fitzpatrick17k",
    "covidct_concepts": "covidct",
    "kermany_concepts": "kermany",
}


def planted_rules(like: str) -> dict[str, list[list[tuple[str, bool]]]]:
    """Class name -> the true rule of ``like`` as a DNF (alternatives of (concept, positive)):
    the positive class is the conjunction, the other class its negation (one literal each)."""
    spec, rule = synthetic.LIKES[like], RULES[like]
    names = spec.concept_names
    conj = [(names[k], True) for k in rule.present] + [(names[k], False) for k in rule.absent]
    return {
        spec.class_names[rule.positive]: [conj],
        spec.class_names[1 - rule.positive]: [[(n, not pos)] for n, pos in conj],
    }


# --------------------------------------------------------------------------- real layouts


def _rows(index: DatasetIndex):
    for split in ("train", "val", "test"):
        for r in index.splits.get(split, []):
            yield split, r


def _concept_csv(path: str, key: str, names: list[str], rows: list) -> None:
    write_real_format._csv(path, [key, *names], rows)


def _write_covidct(index: DatasetIndex, images, out: str) -> None:
    lists: dict[tuple[str, str], list[str]] = {}
    concept_rows = []
    for split, r in _rows(index):
        cls = index.class_names[int(np.argmax(r.labels))]
        write_real_format._save(images(r), os.path.join(out, "Images-processed", cls, r.image_id))
        lists.setdefault((split, cls), []).append(r.image_id)
        concept_rows.append([r.image_id, *[int(c) for c in r.concepts]])
    for split in ("train", "val", "test"):
        for cls in index.class_names:
            path = os.path.join(out, "Data-split", covidct.SPLIT_FOLDERS[cls], f"{split}{cls}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.writelines(f"{name}\n" for name in lists.get((split, cls), []))
    _concept_csv(
        os.path.join(out, "covidct_concepts.csv"), "image", index.concept_names, concept_rows
    )


def _write_kermany(index: DatasetIndex, images, out: str) -> None:
    concept_rows = []
    for split, r in _rows(index):
        folder = "train" if split == "train" else split
        cls = index.class_names[int(np.argmax(r.labels))]
        rel = f"{folder}/{cls}/{os.path.splitext(r.image_id)[0]}.jpeg"
        write_real_format._save(images(r), os.path.join(out, "chest_xray", rel), quality=95)
        concept_rows.append([rel, *[int(c) for c in r.concepts]])
    _concept_csv(
        os.path.join(out, "chest_xray", "kermany_concepts.csv"),
        "image",
        index.concept_names,
        concept_rows,
    )


def _write_fitzpatrick(index: DatasetIndex, images, out: str) -> None:
    rows, concept_rows = [], []
    for k, (_, r) in enumerate(_rows(index)):
        md5 = f"{k:032x}"
        write_real_format._save(images(r), os.path.join(out, "images", f"{md5}.jpg"), quality=95)
        part = "malignant" if int(np.argmax(r.labels)) == 1 else ("benign", "non-neoplastic")[k % 2]
        rows.append([md5, 3, -1, "synthetic lesion", "benign dermal", part, "1 Diagnostic", ""])
        concept_rows.append([f"{md5}.jpg", *[int(c) for c in r.concepts], 0])
    write_real_format._csv(
        os.path.join(out, "fitzpatrick17k.csv"),
        ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
         "three_partition_label", "qc", "url"],
        rows,
    )  # fmt: skip
    _concept_csv(
        os.path.join(out, "annotations_fitzpatrick17k.csv"),
        "ImageID",
        [*index.concept_names, "Do not consider this image"],
        concept_rows,
    )


_WRITERS = {"covidct": _write_covidct, "kermany": _write_kermany}
_WRITERS["fitzpatrick17k"] = _write_fitzpatrick


def write_layout(like: str, index: DatasetIndex, out: str) -> str:
    """Writes ``index`` in the real layout of ``like``; returns the registry dataset name."""
    real = REAL_LAYOUT[like]
    images = lambda r: procedural.render_path(r.path)  # noqa: E731
    if real in _WRITERS:
        os.makedirs(out, exist_ok=True)
        _WRITERS[real](index, images, out)
    else:
        write_real_format.write(real, index, images, out)
    return real


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(
        "Render a Med-MICN concept-rule dataset in a real dataset's published layout.\n\n"
        "  python -m jaxproto.data.synthetic_concepts --like ddi_concepts --num 800 --out ddi\n",
        "python -m jaxproto.data.synthetic_concepts",
    )
    parser.add_argument("--like", required=True, choices=sorted(REAL_LAYOUT))
    parser.add_argument("--num", type=_positive, required=True, help="training images")
    parser.add_argument("--num_test", type=int, default=None, help="test images (default num/4)")
    parser.add_argument("--num_val", type=int, default=0, help="validation images (COVID-CT)")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--image_size", type=_positive, default=128, help="image side in px")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Writes a synthetic concept-rule dataset in the real dataset's layout."""
    args = cli.parse(build_parser(), argv)
    cli.output_dir(args.out)
    cfg = {
        "like": args.like, "num_train": args.num, "num_val": args.num_val,
        "num_test": args.num_test if args.num_test is not None else max(1, args.num // 4),
        "image_size": args.image_size, "seed": args.seed,
    }  # fmt: skip
    real = write_layout(args.like, synthetic.synthetic_index(cfg), args.out)
    log.info("wrote synthetic %s in the %s layout to %s", args.like, real, args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(cli.run(main))
