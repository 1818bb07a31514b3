"""End to end: a few training steps, then ``retrieve index`` and ``retrieve query``."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import xmir_isic
from jaxproto import retrieve
from jaxproto.common import cli


@pytest.mark.slow
def test_index_and_query_write_html(tmp_path):
    import jax

    from jaxproto.data.images import load_image
    from jaxproto.data.synthetic import synthetic_index
    from jaxproto.methods import build_trainer

    config = xmir_isic.get_config("synthetic,runlocal,image_size=32")
    config.train.max_steps = 2
    config.saliency.sbsm_window, config.saliency.sbsm_stride = 8, 8
    workdir = tmp_path / "run"
    build_trainer(config, str(workdir), devices=jax.devices()[:1]).train()
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, r in enumerate(synthetic_index(config.data).split("test")[:6]):
        Image.fromarray(load_image(r.path)).save(gallery / f"img{i}.png")
    index = tmp_path / "index"
    assert (
        retrieve.main(
            [
                "index",
                "--workdir",
                str(workdir),
                "--images",
                str(gallery),
                "--out",
                str(index),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    assert np.load(index / "embeddings.npy").shape[0] == 6
    out = tmp_path / "query"
    assert (
        retrieve.main(
            [
                "query",
                "--index",
                str(index),
                "--image",
                str(gallery / "img2.png"),
                "--k",
                "3",
                "--saliency-top",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "results.json").read_text())
    assert result["neighbours"][0]["file"].endswith("img2.png")  # itself, distance 0
    assert result["neighbours"][0]["distance"] < 1e-3
    page = (out / "index.html").read_text()
    assert "rank001_sbsm.png" in page and "rank001_simcam.png" in page
    bad = ["query", "--index", str(tmp_path / "nope"), "--image", "x.png", "--out", str(out)]
    assert cli.run(retrieve.main, bad) == 2
