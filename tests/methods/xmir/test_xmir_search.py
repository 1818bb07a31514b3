"""Exact chunked k-NN search and index files against a brute-force numpy reference."""

import json
import re
import sys

import numpy as np
import pytest

from jaxproto.common.errors import DataError, UserError
from jaxproto.methods.xmir import config as xmir_config
from jaxproto.methods.xmir import retrieval, search


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_knn_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng, 100, 16), _unit(rng, 5, 16)
    d, idx = search.knn(queries, gallery, k=10, chunk_size=chunk_size)
    ref = np.linalg.norm(queries[:, None].astype(np.float64) - gallery[None], axis=-1)
    ref_idx = np.argsort(ref, axis=1)[:, :10]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(d, np.take_along_axis(ref, ref_idx, 1), atol=1e-3)


def test_index_roundtrip_and_memmap_search(tmp_path):
    rng = np.random.default_rng(1)
    emb = _unit(rng, 30, 8)
    paths = [str(tmp_path / f"img{i}.png") for i in range(30)]
    search.save_index(str(tmp_path / "idx"), emb, paths, {"export": "e"})
    loaded, manifest = search.load_index(str(tmp_path / "idx"))
    assert isinstance(loaded, np.memmap) and manifest["export"] == "e"
    d, idx = search.knn(emb[3:4], loaded, k=1, chunk_size=8)
    assert idx[0, 0] == 3 and d[0, 0] < 1e-3
    with pytest.raises(ValueError, match="k=31"):
        search.knn(emb[:1], loaded, k=31)
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps({"paths": paths[:2]}))
    with pytest.raises(DataError, match="2 paths"):
        search.load_index(str(tmp_path / "idx"))


def test_gallery_skips_isic_companion_files_only_for_isic_models(tmp_path):
    for name in ("ISIC_0000000.jpg", "ISIC_0000000_superpixels.png", "sub/ISIC_1.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    isic = xmir_config.get_config("isic2017", "runlocal")
    names = [p[len(str(tmp_path)) + 1 :] for p in retrieval.gallery_paths(str(tmp_path), isic)]
    assert names == ["ISIC_0000000.jpg", "sub/ISIC_1.png"]
    covid = xmir_config.get_config("covidx", "runlocal")
    assert len(retrieval.gallery_paths(str(tmp_path), covid)) == 3
    with pytest.raises(DataError, match="no such image file"):
        retrieval.gallery_paths(str(tmp_path / "missing"), covid)


def test_embed_images_pads_last_batch():
    seen = []

    def embed_batch(images):
        seen.append(images.shape[0])
        return images.reshape(images.shape[0], -1)[:, :2]

    paths = [str(i) for i in range(5)]
    out = search.embed_images(
        embed_batch, lambda p: np.full((2, 2, 1), float(p)), paths, batch_size=2, progress=False
    )
    assert seen == [2, 2, 2]
    np.testing.assert_array_equal(out[:, 0], np.arange(5))


@pytest.mark.parametrize(
    "chunk_size,resident", [(5, False), (64, False), (1000, False), (64, True), (1000, True)]
)
def test_knn_sharded_over_devices_matches_brute_force(chunk_size, resident):
    import jax

    rng = np.random.default_rng(4)
    gallery, queries = _unit(rng, 203, 16), _unit(rng, 6, 16)
    mesh = search.gallery_mesh(jax.devices())  # 8 fake CPU devices in the tests
    if resident:  # the gallery kept on the devices in blocks, one program per search
        d, idx = search.ExactIndex(gallery, mesh=mesh, chunk_size=chunk_size).search(queries, 9)
    else:
        d, idx = search.knn(queries, gallery, k=9, chunk_size=chunk_size, mesh=mesh)
    ref = np.linalg.norm(queries[:, None].astype(np.float64) - gallery[None], axis=-1)
    ref_idx = np.argsort(ref, axis=1)[:, :9]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(d, np.take_along_axis(ref, ref_idx, 1), atol=1e-3)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_index_recall_against_exact(kind):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    centres = _unit(rng, 20, 32)
    gallery = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    queries = gallery[:50] + 0.01
    _, exact = search.knn(queries, gallery, k=10)
    index = search.FaissIndex.build(gallery, kind=kind, nlist=32, nprobe=16)
    d, approx = index.search(queries, 10)
    assert search.recall_at_k(approx, exact) >= 0.95
    assert np.all(np.diff(d, axis=1) >= -1e-6)
    assert search.recall_at_k(exact, exact) == 1.0


def _query_args(index_dir, search_mode, nprobe=0, ef_search=0):
    import argparse

    return argparse.Namespace(
        index=index_dir, search=search_mode, chunk_size=64, nprobe=nprobe, ef_search=ef_search
    )


def test_faiss_index_beside_the_exact_one(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    emb, queries = _unit(rng, 300, 16), _unit(rng, 4, 16)
    paths = [str(tmp_path / f"img{i}.png") for i in range(300)]
    folder = str(tmp_path / "idx")
    hnsw = search.FaissIndex.build(emb, "hnsw", m=8, ef_search=16)
    search.save_index(folder, emb, paths, {}, hnsw)
    gallery, manifest = search.load_index(folder)
    assert manifest["faiss"] == {"kind": "hnsw", "M": 8, "ef_search": 16}
    _, exact = search.knn(queries, gallery, 10)
    # auto: the stored FAISS index, with the query-time parameter overriding the built one
    how, nearest = retrieval.gallery_search(
        _query_args(folder, "auto", ef_search=300), gallery, manifest
    )
    assert how == "approximate FAISS search (kind hnsw, M 8, ef_search 300)"
    d, idx = nearest(queries, 10)
    np.testing.assert_array_equal(idx, exact)  # ef_search >= N visits the whole graph
    np.testing.assert_allclose(d, search.knn(queries, gallery, 10)[0], atol=1e-4)
    how, nearest = retrieval.gallery_search(_query_args(folder, "exact"), gallery, manifest)
    assert how == "exact search"
    np.testing.assert_array_equal(nearest(queries, 10)[1], exact)
    # a stored IVF index; rebuilding without one removes the stale file
    search.save_index(folder, emb, paths, {}, search.FaissIndex.build(emb, "ivf", nlist=4))
    gallery, manifest = search.load_index(folder)
    assert manifest["faiss"] == {"kind": "ivf", "nlist": 4, "nprobe": 16}
    _, nearest = retrieval.gallery_search(_query_args(folder, "faiss"), gallery, manifest)
    np.testing.assert_array_equal(nearest(queries, 10)[1], exact)  # nprobe >= nlist: all cells
    search.save_index(folder, emb, paths, {})
    gallery, manifest = search.load_index(folder)
    assert "faiss" not in manifest and not (tmp_path / "idx" / search.FAISS_FILE).exists()
    with pytest.raises(UserError, match=r"--search faiss: .* has no FAISS index"):
        retrieval.gallery_search(_query_args(folder, "faiss"), gallery, manifest)
    with pytest.raises(UserError, match="nlist=301 must be in"):
        search.FaissIndex.build(emb, "ivf", nlist=301)


def test_faiss_missing_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from jaxproto import retrieve
    from jaxproto.common import cli

    rng = np.random.default_rng(7)
    emb = _unit(rng, 20, 8)
    folder = str(tmp_path / "idx")
    search.save_index(folder, emb, [f"{i}.png" for i in range(20)], {})
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["faiss"] = {"kind": "ivf", "nlist": 2, "nprobe": 2}
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "idx" / search.FAISS_FILE).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    gallery, manifest = search.load_index(folder)
    how, nearest = retrieval.gallery_search(_query_args(folder, "auto"), gallery, manifest)
    assert how == "exact search" and nearest(emb[:1], 1)[1][0, 0] == 0
    hint = 'pip install -e ".[faiss]"'
    with pytest.raises(UserError, match=re.escape(hint)):
        retrieval.gallery_search(_query_args(folder, "faiss"), gallery, manifest)
    argv = ["index", "--export", str(tmp_path), "--images", str(tmp_path), "--out", folder]
    assert cli.run(retrieve.main, argv + ["--faiss", "ivf"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]  # warnings may precede
    assert len(errors) == 1 and hint in errors[0] and "Traceback" not in err, err


def test_faiss_flags_parse():
    from jaxproto import retrieve

    parser = retrieve.build_parser()
    base = ["index", "--export", "e", "--images", "i", "--out", "o"]
    args = parser.parse_args(base + ["--faiss", "hnsw", "--M", "8", "--ef_search", "64"])
    assert (args.faiss, args.M, args.ef_search) == ("hnsw", 8, 64)
    args = parser.parse_args(["query", "--index", "x", "--image", "q", "--out", "o"])
    assert (args.search, args.nprobe, args.ef_search) == ("auto", 0, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--faiss", "flat"])
