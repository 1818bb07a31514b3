"""Procedural medical-looking datasets with lesion boxes and concepts (the embedded demo data).

Each "like" mimics one real dataset's label structure so every method and demo runs without
downloads: ``chestxray14`` (15 classes, No Finding = background, multi-label, grey CXR),
``vindr`` (same with the VinDr-CXR vocabulary, concepts = the 14 findings), ``odir`` (colour
fundus, 8 classes, Normal = background), ``covidx`` (3-class retrieval), ``isic2017`` (3 classes
decided by 4 dermoscopic concepts) and ``tbx11k`` (Healthy / Sick-but-non-TB / TB decided by
lesion-type concepts).

The pixels and geometry are ``jaxproto.data.procedural``'s (record paths
``synthetic://<like>/<seed>/<index>?size=<n>[&hans=1]``, decoded by ``images.load_image``); this
module names the classes and concepts (the real loaders' own, so ``write_real_format``
round-trips the index) and builds the ``DatasetIndex``. ``synthetic_index`` puts the Clever-Hans
marker on every training image of ``hans_class`` (or of concept ``hans_concept``; on a seeded
share ``hans_fraction`` of them) and on a random half of the evaluation images (CSR's
spurious-feature test).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

from jaxproto.common import cli
from jaxproto.data import (
    chestxray14,
    covidct,
    ddi,
    fitzpatrick,
    isic,
    kermany,
    odir,
    procedural,
    tbx11k,
    vindr,
    write_real_format,
)
from jaxproto.data.loading import AUTO
from jaxproto.data.records import DatasetIndex, Record

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LikeSpec:
    """Label structure of one synthetic dataset: names, multi-label or not, and its look."""

    class_names: list[str]
    multilabel: bool
    concept_names: list[str]
    look: procedural.Look

    def __post_init__(self):
        if (len(self.class_names), len(self.concept_names)) != (
            self.look.num_classes,
            self.look.num_concepts,
        ):
            raise ValueError(
                f"LikeSpec: {len(self.class_names)} classes / {len(self.concept_names)} concepts "
                f"named, the look renders {self.look.num_classes} / {self.look.num_concepts}"
            )

    @property
    def background_class(self) -> int | None:
        return self.look.background_class

    @property
    def style(self) -> str:
        return self.look.style


_VINDR = list(vindr.KAGGLE_CLASSES)
# The two TB lesion types (COCO categories 1, 2 of the real json) plus non-TB findings for
# the sick class (real TBX11K has no concept labels; csr.md §7).
_TBX_CONCEPTS = [*tbx11k.CONCEPT_NAMES[:2], "Nodule/Mass", "Pleural effusion", "Cardiomegaly"]
_LOOKS = procedural.LOOKS

LIKES: dict[str, LikeSpec] = {
    "chestxray14": LikeSpec(chestxray14.class_names(), True, [], _LOOKS["chestxray14"]),
    "vindr": LikeSpec(_VINDR, True, _VINDR[:14], _LOOKS["vindr"]),
    "odir": LikeSpec(list(odir.CLASS_NAMES), True, [], _LOOKS["odir"]),
    "covidx": LikeSpec(
        ["normal", "pneumonia", "COVID-19"],
        False,
        ["consolidation", "ground_glass_opacity"],
        _LOOKS["covidx"],
    ),
    "isic2017": LikeSpec(
        list(isic.CLASS_NAMES), False, list(isic.CONCEPT_NAMES), _LOOKS["isic2017"]
    ),
    "tbx11k": LikeSpec(list(tbx11k.CLASS_NAMES), False, _TBX_CONCEPTS, _LOOKS["tbx11k"]),
    # Med-MICN's concept-rule sets (procedural.CONCEPT_RULES; writers in synthetic_concepts).
    "ddi_concepts": LikeSpec(ddi.CLASS_NAMES, False, ddi.CONCEPT_NAMES, _LOOKS["ddi_concepts"]),
    "fitzpatrick_concepts": LikeSpec(
        fitzpatrick.CLASS_NAMES, False, ddi.CONCEPT_NAMES, _LOOKS["fitzpatrick_concepts"]
    ),
    "covidct_concepts": LikeSpec(
        covidct.CLASS_NAMES, False, covidct.CONCEPT_NAMES, _LOOKS["covidct_concepts"]
    ),
    "kermany_concepts": LikeSpec(
        kermany.CLASS_NAMES, False, kermany.CONCEPT_NAMES, _LOOKS["kermany_concepts"]
    ),
}


def _spec(like: str) -> LikeSpec:
    if like not in LIKES:
        raise ValueError(f"unknown synthetic dataset like={like!r}; choose from {sorted(LIKES)}")
    return LIKES[like]


def synthetic_index(data_cfg) -> DatasetIndex:
    """Builds the synthetic DatasetIndex from a data ConfigDict (or mapping).

    Fields: ``like``, ``num_train``, ``num_test``, ``num_val`` (0 = no val split, -1 = as many
    as ``num_test``),
    ``image_size``, ``seed``, ``clever_hans`` (bool), ``hans_class`` (default 1),
    ``hans_concept`` (default -1; >= 0: mark the training images showing that concept instead),
    ``hans_fraction`` (default 1; the seeded share of those training images that are marked),
    ``images_per_patient`` (default 1; consecutive images of a split share a patient id).
    Splits occupy consecutive index ranges train, test, val so no image is shared.
    """
    get = data_cfg.get
    like = get("like", None)
    spec = _spec(like)
    size, seed = int(get("image_size", 64)), int(get("seed", 0))
    counts = {s: int(get(f"num_{s}", 0)) for s in ("train", "test", "val")}
    if counts["val"] == AUTO:
        counts["val"] = counts["test"]  # the validation protocol's split (core.protocol)
    for s, n in counts.items():
        if n < 0 or (s != "val" and n == 0):
            raise ValueError(f"data.num_{s} must be {'>= 0' if s == 'val' else '> 0'}, got {n}")
    hans_on = bool(get("clever_hans", False))
    hans_class = int(get("hans_class", 1))
    if hans_on and not 0 <= hans_class < len(spec.class_names):
        raise ValueError(f"data.hans_class={hans_class} out of range for {like}")
    hans_concept = int(get("hans_concept", -1))
    if hans_on and not -1 <= hans_concept < len(spec.concept_names):
        raise ValueError(
            f"data.hans_concept={hans_concept} out of range for {like} "
            f"({len(spec.concept_names)} concepts; -1 = mark by hans_class)"
        )
    hans_fraction = float(get("hans_fraction", 1.0))
    if hans_on and not 0.0 < hans_fraction <= 1.0:
        raise ValueError(f"data.hans_fraction={hans_fraction} must be in (0, 1]")
    per_patient = int(get("images_per_patient", 1))
    if per_patient <= 0:
        raise ValueError(f"data.images_per_patient must be > 0, got {per_patient}")
    splits: dict[str, list[Record]] = {}
    start = 0
    for split in ("train", "test", "val"):
        if counts[split] == 0:
            continue
        recs = []
        for j in range(counts[split]):
            i = start + j
            lay = procedural.layout(like, seed, i)
            hans = hans_on and procedural.hans_marker(
                like,
                seed,
                i,
                lay.labels,
                split,
                hans_class,
                lay.concepts,
                hans_concept,
                hans_fraction,
            )
            recs.append(
                Record(
                    image_id=f"{like}_{seed}_{i:06d}.png",
                    path=procedural.make_path(like, seed, i, size, hans),
                    labels=lay.labels,
                    boxes=procedural.layout_boxes(lay, size),
                    concepts=lay.concepts,
                    patient_id=f"{like}-{seed}-{split}-{j // per_patient}",
                    size=(size, size),
                    meta={"like": like, "index": i, "hans": hans},
                )
            )
        splits[split] = recs
        start += counts[split]
    return DatasetIndex(
        name=f"synthetic-{like}",
        class_names=list(spec.class_names),
        splits=splits,
        multilabel=spec.multilabel,
        background_class=spec.background_class,
        concept_names=list(spec.concept_names),
    )


# --------------------------------------------------------------------------- CLI


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(
        "Render a synthetic dataset and lay it out like the real one (file names, label files),\n"
        "so the real loaders can read it.\n\n"
        "  python -m jaxproto.data.synthetic --like odir --num 64 --image_size 128 --out fundus\n\n"
        + __doc__,
        "python -m jaxproto.data.synthetic",
    )
    parser.add_argument("--like", required=True, choices=sorted(LIKES), help="dataset to mimic")
    parser.add_argument("--num", type=int, required=True, help="number of training images")
    parser.add_argument("--num_test", type=int, default=None, help="test images (default num/4)")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--image_size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--clever_hans", action="store_true", help="plant the spurious marker")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Writes a synthetic dataset in the real dataset's published on-disk format."""
    parser = build_parser()
    args = cli.parse(parser, argv)
    for flag in ("num", "image_size"):
        if getattr(args, flag) <= 0:
            parser.error(f"argument --{flag}: must be > 0, got {getattr(args, flag)}")
    if args.num_test is not None and args.num_test < 0:
        parser.error(f"argument --num_test: must be >= 0, got {args.num_test}")
    num_test = args.num_test if args.num_test is not None else max(1, args.num // 4)
    cli.output_dir(args.out)
    cfg = {
        "like": args.like, "num_train": args.num, "num_test": num_test, "num_val": 0,
        "image_size": args.image_size, "seed": args.seed, "clever_hans": args.clever_hans,
    }  # fmt: skip
    index = synthetic_index(cfg)
    write_real_format.write(args.like, index, lambda r: procedural.render_path(r.path), args.out)
    logging.info("wrote %s synthetic %s images to %s", args.num + num_test, args.like, args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(cli.run(main))
