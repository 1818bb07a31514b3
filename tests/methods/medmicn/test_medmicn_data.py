"""Med-MICN data: the synthetic concept-rule sets, their real layouts read back by the loaders
(DDI + SkinCon join, COVID-CT, Kermany, Fitzpatrick17k + SkinCon), bad input, pseudo-labeller."""

import os

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import procedural, synthetic, synthetic_concepts
from jaxproto.data.records import BadSampleReport
from jaxproto.data.registry import default_data_config, load_index
from jaxproto.methods.medmicn import pseudo_labels


def _index(like, n=24, n_val=0, size=32):
    cfg = {"like": like, "num_train": n, "num_test": 8, "num_val": n_val, "image_size": size}
    return synthetic.synthetic_index(cfg)


def _load(name, root, **fields):
    cfg = default_data_config(name)
    cfg.root = str(root)
    cfg.update(fields)
    return load_index(cfg, BadSampleReport())


@pytest.mark.parametrize("like", sorted(synthetic_concepts.REAL_LAYOUT))
def test_class_is_the_planted_rule_of_the_concepts(like):
    index = _index(like, n=200)
    rule = synthetic_concepts.RULES[like]
    for r in index.splits["train"]:
        c = r.concepts > 0.5
        holds = all(c[k] for k in rule.present) and not any(c[k] for k in rule.absent)
        assert int(np.argmax(r.labels)) == (rule.positive if holds else 1 - rule.positive)
        assert len(r.boxes) == int(c.sum())  # one planted primitive per present concept
    labels = np.stack([r.labels for r in index.splits["train"]])
    assert 0.15 < labels[:, rule.positive].mean() < 0.6
    planted = synthetic_concepts.planted_rules(like)
    spec = synthetic.LIKES[like]
    pos = spec.class_names[rule.positive]
    assert planted[pos] == [
        [(spec.concept_names[rule.present[0]], True), (spec.concept_names[rule.absent[0]], False)]
    ]


def test_concepts_are_visible_where_planted():
    r = _index("ddi_concepts", n=4, size=64).splits["train"][0]
    img = procedural.render_path(r.path).astype(float)
    np.testing.assert_array_equal(img, procedural.render_path(r.path))  # pure function of path
    assert len(r.boxes) == int(r.concepts.sum()) > 0
    for b in r.boxes:
        patch = img[int(b.y) : int(b.y + b.h), int(b.x) : int(b.x + b.w)]
        assert patch.std() > 10


def _same(written, loaded):
    got = {r.image_id: r for recs in loaded.splits.values() for r in recs}
    n = 0
    for recs in written.splits.values():
        for r in recs:
            key = next(
                k for k in got if os.path.splitext(k)[0].endswith(os.path.splitext(r.image_id)[0])
            )
            np.testing.assert_array_equal(got[key].labels, r.labels)
            np.testing.assert_array_equal(got[key].concepts, r.concepts)
            n += 1
    assert n == sum(len(v) for v in loaded.splits.values())


def test_ddi_layout_round_trip_and_skincon_join(tmp_path):
    index = _index("ddi_concepts")
    synthetic_concepts.write_layout("ddi_concepts", index, str(tmp_path))
    loaded = _load("ddi", tmp_path, test_fraction=0.25)
    assert loaded.concept_names[1] == "Papule" and len(loaded.concept_names) == 13
    _same(index, loaded)
    # SkinCon's own table instead of the joined one: ImageID key, a 'Do not consider' flag.
    joined = (tmp_path / "ddi_metadata_concept.csv").read_text().splitlines()
    os.remove(tmp_path / "ddi_metadata_concept.csv")
    header = joined[0].split(",")
    rows = [line.split(",") for line in joined[1:]]
    lines = ["ImageID," + ",".join(header[4:]) + ",Do not consider this image"]
    for k, row in enumerate(rows):
        lines.append(",".join([row[1], *row[4:], "1" if k == 0 else "0"]))
    (tmp_path / "annotations_ddi.csv").write_text("\n".join(lines) + "\n")
    skin = _load("ddi", tmp_path, test_fraction=0.25)
    assert sum(len(v) for v in skin.splits.values()) == len(rows) - 1  # the flagged one excluded
    bad = lines[:2] + [lines[2].replace(",0,", ",maybe,", 1)] + lines[3:]
    (tmp_path / "annotations_ddi.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"annotations_ddi.csv:3: .*'maybe'"):
        _load("ddi", tmp_path)


def test_covidct_official_lists_and_random_split(tmp_path):
    index = _index("covidct_concepts", n=20, n_val=6)
    synthetic_concepts.write_layout("covidct_concepts", index, str(tmp_path))
    loaded = _load("covidct", tmp_path)
    assert {s: len(v) for s, v in loaded.splits.items()} == {"train": 20, "val": 6, "test": 8}
    _same(index, loaded)
    rnd = _load("covidct", tmp_path, covidct_split="random", test_fraction=0.2)
    assert sum(len(v) for v in rnd.splits.values()) == 34 and len(rnd.splits["test"]) < 10
    (tmp_path / "covidct_concepts.csv").write_text("image,Crazy-paving pattern\nx.png,1\n")
    with pytest.raises(DataError, match="covidct_concepts.csv: wrong header"):
        _load("covidct", tmp_path)


def test_kermany_folders(tmp_path):
    index = _index("kermany_concepts", n=16)
    synthetic_concepts.write_layout("kermany_concepts", index, str(tmp_path))
    loaded = _load("kermany", tmp_path, val_fraction=0.0)  # no val/ folder and none carved
    assert len(loaded.splits["train"]) == 16 and len(loaded.splits["test"]) == 8
    _same(index, loaded)


def test_fitzpatrick_with_skincon(tmp_path):
    index = _index("fitzpatrick_concepts", n=20)
    synthetic_concepts.write_layout("fitzpatrick_concepts", index, str(tmp_path))
    loaded = _load("fitzpatrick17k", tmp_path, test_fraction=0.2)
    assert sum(len(v) for v in loaded.splits.values()) == 28
    labels = {r.image_id: r.labels for v in loaded.splits.values() for r in v}
    written = [r for v in index.splits.values() for r in v]
    for k, r in enumerate(written):
        np.testing.assert_array_equal(labels[f"{k:032x}.jpg"], r.labels)
    csv = tmp_path / "fitzpatrick17k.csv"
    lines = csv.read_text().splitlines()
    lines[2] = (
        lines[2]
        .replace("malignant", "unknown")
        .replace("benign,", "x,")
        .replace("non-neoplastic", "unknown")
    )
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fitzpatrick17k.csv:3: three_partition_label"):
        _load("fitzpatrick17k", tmp_path)


def test_pseudo_labeller_with_stub_encoders(tmp_path):
    rng = np.random.default_rng(0)
    texts = {"red": np.array([1.0, 0, 0]), "green": np.array([0, 1.0, 0])}

    def text_encoder(names):
        return np.stack([texts[n] for n in names])

    def image_encoder(images):  # the mean colour per 2x2 cell, as a "feature map"
        b, h, w, _ = images.shape
        return images.reshape(b, 2, h // 2, 2, w // 2, 3).mean(axis=(2, 4)).astype(float)

    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[0, ..., 0] = 200  # red
    images[1, ..., 1] = 200  # green
    images[2] = rng.integers(0, 255, (4, 4, 3))
    s = pseudo_labels.concept_scores(images, ["red", "green"], image_encoder, text_encoder)
    v = image_encoder(images)
    want = np.zeros((3, 2))
    for b in range(3):
        for i, t in enumerate([texts["red"], texts["green"]]):
            cos = [v[b, y, x] @ t / (np.linalg.norm(v[b, y, x]) * np.linalg.norm(t) + 1e-300)
                   for y in range(2) for x in range(2)]  # fmt: skip
            want[b, i] = np.mean(cos)
    np.testing.assert_allclose(s, want, atol=1e-9)
    labels = pseudo_labels.threshold(s, 0.9)
    np.testing.assert_array_equal(labels[:2], [[1, 0], [0, 1]])
    assert list(pseudo_labels.keep_concepts(s, 0.45)) == [0, 1]
    path = pseudo_labels.write_concept_table(
        str(tmp_path / "c.csv"), ["a.png", "b.png", "c.png"], ["red", "green"], labels
    )
    assert open(path).readline().strip() == "image,red,green"
