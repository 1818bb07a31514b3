"""Bad images found while decoding: skipped deterministically and reported once, or one error
naming the file and the line that listed it; and the report's one-entry-per-record counting."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxproto.common.errors import DataError
from jaxproto.data.images import ImageError, load_image
from jaxproto.data.pipeline import MAX_REPLACEMENTS, make_eval_batches, make_train_stream
from jaxproto.data.records import BadSampleReport, Record
from jaxproto.data.samplers import ShuffleSampler

N = 10
BAD = (3, 7)


def _records(tmp_path, bad=BAD):
    """N single-colour PNGs (pixel value 10 * i); the ``bad`` ones truncated mid-file."""
    records = []
    for i in range(N):
        path = str(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(path)
        if i in bad:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        where = f"{tmp_path}/labels.csv:{i + 2}"
        records.append(Record(f"img{i}", path, np.zeros(2, np.float32), meta={"where": where}))
    return records


class Decode:
    """Top-level (picklable) example function: decodes the record's image."""

    def __init__(self, records):
        self.records = records

    def __call__(self, entry, rng):
        img = load_image(self.records[int(entry)].path, channels=1)
        return {"value": np.int64(img[0, 0, 0] // 10), "r": np.float64(rng.random())}


def _reference(sampler, seed, bad, n):
    """The documented rule: position s takes the entry of the first position >= s whose image
    decodes, with position s's rng."""
    entries = np.concatenate([sampler.epoch(e) for e in range(n // len(sampler) + 3)])
    values, r = [], []
    for s in range(n):
        t = s
        while entries[t] in bad:
            t += 1
        values.append(entries[t])
        r.append(np.random.default_rng([seed, s]).random())
    return np.array(values), np.array(r)


def _stream(records, report, **kw):
    return make_train_stream(
        ShuffleSampler(N, seed=4), Decode(records), global_batch_size=4, seed=9,
        records=records, report=report, **kw,
    )  # fmt: skip


def test_skip_replaces_bad_examples_deterministically_and_reports_each_record_once(tmp_path):
    records = _records(tmp_path)
    report = BadSampleReport("skip")
    report.write(str(tmp_path))
    it = _stream(records, report)
    batches = [next(it) for _ in range(10)]  # 40 examples: four epochs, every bad one met
    assert all(b["value"].shape == (4,) for b in batches)
    want_v, want_r = _reference(ShuffleSampler(N, seed=4), 9, BAD, 40)
    np.testing.assert_array_equal(np.concatenate([b["value"] for b in batches]), want_v)
    np.testing.assert_allclose(np.concatenate([b["r"] for b in batches]), want_r)
    assert sorted(e["where"] for e in report.entries) == [
        f"{records[i].path} (listed at {tmp_path}/labels.csv:{i + 2})" for i in BAD
    ]
    for e in report.entries:
        assert e["stage"] == "decode" and len(e["reasons"]) == 1
        assert "cannot decode image" in e["problem"]
    with open(tmp_path / "data_report.json") as f:  # rewritten when the skips were found
        on_disk = json.load(f)
    assert on_disk["num_skipped"] == 2 and on_disk["skipped"] == report.entries


def test_skip_keeps_the_stream_independent_of_the_process_layout(tmp_path):
    records = _records(tmp_path)
    one = _stream(records, BadSampleReport("skip"))
    parts = [
        _stream(records, BadSampleReport("skip"), process_index=p, process_count=2)
        for p in range(2)
    ]
    for _ in range(8):
        whole = next(one)
        halves = [next(it) for it in parts]
        for k in ("value", "r"):
            np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])


def test_error_names_the_file_and_the_source_line(tmp_path):
    records = _records(tmp_path)
    it = _stream(records, BadSampleReport("error"))
    with pytest.raises(DataError) as e:
        for _ in range(10):
            next(it)
    msg = str(e.value)
    assert "\n" not in msg
    bad = next(i for i in BAD if records[i].path in msg)
    assert f"(listed at {tmp_path}/labels.csv:{bad + 2}): cannot decode image" in msg
    assert "data.on_bad_sample=skip" in msg


def test_without_a_report_bad_images_raise(tmp_path):
    records = _records(tmp_path)
    it = make_train_stream(ShuffleSampler(N, seed=4), Decode(records), global_batch_size=5, seed=0)
    with pytest.raises(DataError, match="cannot decode image"):
        for _ in range(4):
            next(it)


def test_a_run_of_bad_images_longer_than_the_limit_stops_the_stream(tmp_path):
    records = _records(tmp_path, bad=range(N))
    it = _stream(records, BadSampleReport("skip"))
    with pytest.raises(DataError, match=f"{MAX_REPLACEMENTS + 1} consecutive training examples"):
        next(it)


def test_eval_batches_raise_naming_the_file_and_line(tmp_path):
    records = _records(tmp_path, bad=(5,))

    def example(r):
        return {"x": load_image(r.path, channels=1)}

    with pytest.raises(DataError) as e:
        list(make_eval_batches(records, example, 4))
    assert str(e.value).startswith(f"{records[5].path} (listed at {tmp_path}/labels.csv:7): ")
    assert "evaluation needs every record" in str(e.value)


@pytest.mark.multiprocess
def test_skip_with_worker_processes_matches_in_process(tmp_path):
    records = _records(tmp_path)
    report = BadSampleReport("skip")
    want = [next(it) for it in [_stream(records, BadSampleReport("skip"))] for _ in range(6)]
    it = _stream(records, report, worker_count=2)
    got = [next(it) for _ in range(6)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["value"], b["value"])
        np.testing.assert_array_equal(a["r"], b["r"])
    assert len(report.entries) == 2


@pytest.mark.multiprocess
def test_error_in_a_worker_process_keeps_the_message(tmp_path):
    records = _records(tmp_path)
    it = _stream(records, BadSampleReport("error"), worker_count=1)
    with pytest.raises(Exception, match=r"labels\.csv:\d+\): cannot decode image"):
        for _ in range(10):
            next(it)


def test_report_has_one_entry_per_record_with_every_reason(tmp_path):
    report = BadSampleReport("skip")
    report.bad("a.csv:3", "empty Left-Fundus", "an image file name")
    report.bad("a.csv:3", "empty Right-Fundus", "an image file name")
    report.bad("a.csv:3", "empty Right-Fundus", "an image file name")  # the same reason again
    report.bad("a.csv:4", "unknown label 'x'")
    assert [(e["where"], e["reasons"]) for e in report.entries] == [
        ("a.csv:3", ["empty Left-Fundus (expected an image file name)",
                     "empty Right-Fundus (expected an image file name)"]),
        ("a.csv:4", ["unknown label 'x'"]),
    ]  # fmt: skip
    path = report.write(str(tmp_path))
    with open(path) as f:
        assert json.load(f)["num_skipped"] == 2


def test_resumed_run_keeps_the_decode_skips_of_the_earlier_run(tmp_path):
    first = BadSampleReport("skip")
    first.bad("x.csv:2", "duplicate image id 'a'", "each image once")
    first.write(str(tmp_path))
    first.bad("img.png (listed at x.csv:5)", "cannot decode image", stage="decode")
    second = BadSampleReport("skip")  # a resumed run: the loader finds its problems again
    second.bad("x.csv:2", "duplicate image id 'a'", "each image once")
    second.write(str(tmp_path))
    assert [e["where"] for e in second.entries] == ["x.csv:2", "img.png (listed at x.csv:5)"]
    with open(tmp_path / "data_report.json") as f:
        assert json.load(f)["num_skipped"] == 2


def test_image_error_survives_pickling_to_and_from_worker_processes():
    err = pickle.loads(pickle.dumps(ImageError("a.png", "a.png: cannot decode image")))
    assert isinstance(err, DataError) and err.path == "a.png"
    assert str(err) == "a.png: cannot decode image"
