"""Exact chunked k-NN search and index files against a brute-force numpy reference."""

import json

import numpy as np
import pytest

from jaxproto.common.errors import DataError
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
