"""Naming interface (reports log-odds, CSV, external command) and the streaming top-k."""

import sys

import numpy as np
import pytest

from jaxproto.common.errors import ConfigError, DataError
from jaxproto.methods.cfn import naming


def test_report_namer_finds_the_distinguishing_word():
    rng = np.random.default_rng(0)
    words = ["ring", "cross", "stripes", "dots"]
    texts = []
    for _ in range(200):
        picked = rng.choice(words, size=2, replace=False)
        texts.append(f"image shows {picked[0]} and {picked[1]}; follow up advised.")
    namer = naming.ReportNamer(texts, n_max=2)
    top = [t for t in texts if "stripes" in t][:20]
    assert namer(3, top, []) == "stripes"
    scores = dict(namer.scores(top))
    assert scores["stripes"] > scores["follow"]  # shared by every report: no evidence


def test_ngrams_skip_stopword_edges():
    assert naming.ngrams("The ring of dots", 2) == ["dots", "ring"]


def test_csv_namer(tmp_path):
    p = tmp_path / "names.csv"
    p.write_text("latent,name\n3,irregular border\n")
    namer = naming.CsvNamer(str(p))
    assert namer(3, [], []) == "irregular border"
    assert namer(4, [], []) == "latent #4"
    p.write_text("latent,name\nx,bad\n")
    with pytest.raises(DataError, match=r"names.csv:2"):
        naming.CsvNamer(str(p))
    p.write_text("id,label\n")
    with pytest.raises(DataError, match="header"):
        naming.CsvNamer(str(p))


def test_command_namer_with_stub(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(
        "import json, sys\n"
        "req = json.load(sys.stdin)\n"
        "print(f\"concept {req['latent']} from {len(req['texts'])} texts {req['images'][0]}\")\n"
    )
    namer = naming.CommandNamer(f"{sys.executable} {stub}")
    assert namer(7, ["a", "b"], ["x.png"]) == "concept 7 from 2 texts x.png"
    bad = naming.CommandNamer(f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(ConfigError, match="exited 3"):
        bad(1, [], [])


def test_streaming_topk_matches_full_sort():
    rng = np.random.default_rng(1)
    z = np.maximum(rng.normal(size=(103, 9)), 0).astype(np.float32)
    chunks = ((s, z[s : s + 17]) for s in range(0, 103, 17))
    values, rows = naming.streaming_topk(chunks, 5)
    for j in range(9):
        ref = sorted(range(103), key=lambda i: (-z[i, j], i))[:5]
        assert list(rows[j]) == ref
        np.testing.assert_allclose(values[j], z[ref, j])
