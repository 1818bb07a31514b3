"""Overlays, HTML report, prototype atlas and line plots."""

import json
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from jaxproto.data.records import Box
from jaxproto.viz import atlas, overlays, plots, report

HEADER = report.Header(
    model="CIPL, resnet_tiny",
    model_id="export sha256 0123",
    source="exports/x",
    input="x.png",
    protocol="best-F1 thresholds on the val split",
    date="2026-01-01 00:00:00Z",
)


def _image(h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(60, 200, (h, w, 3), dtype=np.uint8)


def _blob(h=8, w=10, peak=(2, 7)):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - peak[0]) ** 2 + (xx - peak[1]) ** 2) / 3.0).astype(np.float32)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_heatmap_overlay_blends_jet_at_image_size(interpolation):
    img = _image()
    out = overlays.heatmap_overlay(img, _blob(), interpolation=interpolation)
    assert out.shape == img.shape and out.dtype == np.uint8
    # Independent reference: cv2 resize, min-max after upsampling, JET (BGR -> RGB), 0.7/0.3.
    inter = cv2.INTER_LINEAR if interpolation == "bilinear" else cv2.INTER_CUBIC
    up = cv2.resize(_blob(), (80, 64), interpolation=inter)
    up = (up - up.min()) / (up.max() - up.min())
    heat = cv2.applyColorMap(np.round(up * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    want = np.clip(np.round(0.7 * img + 0.3 * heat.astype(np.float64)), 0, 255)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_hottest_location_is_reddest_and_coldest_is_bluest():
    gray = np.full((64, 80, 3), 128, np.uint8)
    heat = _blob(peak=(2, 7))
    out = overlays.heatmap_overlay(gray, heat, alpha=0.5).astype(int)
    up = cv2.resize(heat, (80, 64), interpolation=cv2.INTER_LINEAR)
    redness = out[..., 0] - np.maximum(out[..., 1], out[..., 2])
    blueness = out[..., 2] - np.maximum(out[..., 0], out[..., 1])
    hot = np.unravel_index(np.argmax(up), up.shape)
    cold = np.unravel_index(np.argmin(up), up.shape)
    # JET's top end (>= ~0.8) is pure red; the reddest pixel must lie in that hot region.
    reddest = np.unravel_index(np.argmax(redness), redness.shape)
    norm = (up - up.min()) / (up.max() - up.min())
    assert norm[reddest] > 0.8 and redness[hot] > 0 and blueness[cold] > 0
    assert out[hot][0] > out[hot][2] and out[cold][2] > out[cold][0]


def test_overlay_input_checks_and_grayscale():
    g = _image()[:, :, 0]
    assert overlays.heatmap_overlay(g, _blob()).shape == (64, 80, 3)
    with pytest.raises(ValueError, match="uint8"):
        overlays.heatmap_overlay(g.astype(np.float32), _blob())
    with pytest.raises(ValueError, match="interpolation"):
        overlays.heatmap_overlay(g, _blob(), interpolation="nearest")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlays.heatmap_overlay(g, _blob() * 3, normalize="none")


def test_draw_contour_outlines_the_thresholded_region():
    img = np.zeros((40, 40, 3), np.uint8)
    heat = np.zeros((40, 40), np.float32)
    heat[10:20, 15:30] = 1.0
    out = overlays.draw_contour(img, heat, level=0.65, color=(255, 255, 0), dilate=1)
    yellow = np.all(out == (255, 255, 0), axis=2)
    ring = np.zeros((40, 40), bool)
    ring[10:20, 15:30] = True
    ring[11:19, 16:29] = False
    assert np.array_equal(yellow, ring)
    thick = np.all(overlays.draw_contour(img, heat, dilate=6) == (255, 255, 0), axis=2)
    assert thick.sum() > yellow.sum() and thick[14, 15]
    assert not np.any(img)  # input untouched


def test_draw_boxes_crop_and_side_by_side(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    out = overlays.draw_boxes(
        img,
        [(10, 20, 30, 20), Box(0, 40, 50, 10, 10)],
        color=(0, 255, 0),
        labels=["Mass", "Nodule"],
        thickness=1,
    )
    assert np.all(out[30, 10] == (0, 255, 0)) and np.all(out[30, 39] == (0, 255, 0))
    assert np.all(out[30, 25] == 0)  # box interior untouched
    assert np.any(out[:20, 10:40] != 0)  # label drawn above the first box
    patch = overlays.crop_patch(out, (50, 50, 30, 30))
    assert patch.shape == (14, 14, 3)
    with pytest.raises(ValueError, match="does not overlap"):
        overlays.crop_patch(out, (70, 70, 5, 5))
    panel = overlays.side_by_side([img, np.zeros((32, 48), np.uint8)], ["input", "overlay"], pad=4)
    assert panel.dtype == np.uint8 and panel.shape[1] == 64 + 96 + 3 * 4
    assert np.any(panel[:20] < 128)  # titles are dark text on the white background
    path = overlays.save_png(str(tmp_path / "sub" / "panel.png"), panel)
    assert np.array_equal(np.asarray(Image.open(path)), panel)


def test_report_escapes_text_and_links_existing_images(tmp_path):
    fig_dir = tmp_path / "figs"
    overlays.save_png(str(fig_dir / "a.png"), _image())
    abs_fig = overlays.save_png(str(tmp_path / "b.png"), _image())
    path = report.write_html_report(
        str(tmp_path / "report.html"),
        "Patient <01> & co",
        [
            {
                "heading": "Prediction",
                "text": "p < 0.5 & <script>x</script>",
                "probabilities": {"Mass": 0.81, "Effusion <L>": 0.12},
            },
            {
                "table": [{"class": "Mass", "auc": 0.91234}, {"class": "Nodule", "n": 3}],
                "caption": "per-class",
            },
            {
                "figures": [
                    {"image": "figs/a.png", "caption": 'prototype "3"'},
                    {"image": abs_fig, "wide": True},
                ]
            },
        ],
        HEADER,
        warnings=["out of distribution <maybe>"],
    )
    page = open(path, encoding="utf-8").read()
    twin = json.load(open(tmp_path / "report.json"))
    assert (
        twin["header"]["model id"] == "export sha256 0123" and twin["title"] == "Patient <01> & co"
    )
    assert twin["warnings"] == ["out of distribution <maybe>"]
    assert [f["image"] for f in twin["sections"][2]["figures"]] == ["figs/a.png", "b.png"]
    assert (
        "best-F1 thresholds on the val split" in page
        and "out of distribution &lt;maybe&gt;" in page
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Patient &lt;01&gt; &amp; co" in page and "Effusion &lt;L&gt;" in page
    assert "prototype &quot;3&quot;" in page and "0.9123" in page and "n/a" in page
    assert page.index("Mass") < page.index("Effusion")  # sorted by probability
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["figs/a.png", "b.png"] and page.count('<figure class="wide">') == 1
    assert all(os.path.isfile(tmp_path / s) for s in srcs)
    with pytest.raises(ValueError, match="does not exist"):
        report.write_html_report(
            str(tmp_path / "r2.html"), "t", [{"figures": [{"image": "x.png"}]}], HEADER
        )
    with pytest.raises(ValueError, match="not a local file"):
        report.write_html_report(
            str(tmp_path / "r2.html"), "t", [{"figures": [{"image": "http://x/a.png"}]}], HEADER
        )
    with pytest.raises(ValueError, match="unknown keys"):
        report.write_html_report(str(tmp_path / "r3.html"), "t", [{"txt": "typo"}], HEADER)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        report.write_html_report(
            str(tmp_path / "r4.html"), "t", [{"probabilities": {"a": 1.5}}], HEADER
        )


def test_page_shows_decisions_thresholds_colour_bar_and_alt_text(tmp_path):
    overlays.save_png(str(tmp_path / "a.png"), _image())
    rows = [
        {"class": "Mass", "probability": 0.7, "threshold": 0.42, "decision": True},
        {"class": "Nodule", "probability": 0.1, "threshold": 0.3, "decision": False},
        {"class": "Effusion", "probability": 0.2, "threshold": None, "decision": None},
    ]
    fig = {
        "image": "a.png",
        "caption": "p3",
        "alt": "prototype p3 of Mass",
        "colorbar": {"label": "similarity", "min": 0.25, "max": 0.75},
    }
    path = report.write_html_report(
        str(tmp_path / "r.html"),
        "t",
        [{"decisions": rows}, {"figures": [fig, fig], "columns": 2}],
        HEADER,
    )
    page = open(path, encoding="utf-8").read()
    body = re.search(r"<tbody>(.*?)</tbody>", page).group(1)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", body)]
    assert [(c[0], c[3], c[4]) for c in cells] == [
        ("Mass", "0.42", "positive"),
        ("Nodule", "0.3", "negative"),
        ("Effusion", "n/a", "n/a"),
    ]
    assert page.count('alt="prototype p3 of Mass"') == 2
    assert page.count("<span>0.25</span><span>0.5</span><span>0.75</span>") == 2
    assert "similarity (JET: blue = low, red = high)" in page
    assert "grid-template-columns:repeat(2," in page
    assert "http" not in page.replace("http-equiv", "")  # no external resource


def test_sections_have_anchors_and_table_cells_link_to_local_pages(tmp_path):
    detail = report.write_html_report(
        str(tmp_path / "sub" / "d.html"), "d", [{"id": "item-3", "text": "three"}], HEADER
    )
    rows = [
        {"item": {"href": "sub/d.html#item-3", "text": "#3 <x>"}, "n": 3},
        {"item": {"href": "#top", "text": "here"}, "n": 1},
    ]
    path = report.write_html_report(str(tmp_path / "i.html"), "i", [{"table": rows}], HEADER)
    page = open(path, encoding="utf-8").read()
    assert '<section id="item-3">' in open(detail, encoding="utf-8").read()
    assert '<td><a href="sub/d.html#item-3">#3 &lt;x&gt;</a></td>' in page
    assert '<td><a href="#top">here</a></td>' in page
    with pytest.raises(ValueError, match="does not exist"):
        report.write_html_report(
            str(tmp_path / "j.html"), "j", [{"table": [{"a": {"href": "no.html#x"}}]}], HEADER
        )


def test_atlas_groups_by_class_and_writes_json(tmp_path):
    for k in range(3):
        overlays.save_png(str(tmp_path / "protos" / f"{k}.png"), _image(seed=k))
    entries = [
        {
            "prototype_id": 2,
            "class_name": "Mass",
            "source_image_id": "img_b",
            "location": [3, 4],
            "distance": np.float32(0.25),
            "image": "protos/2.png",
            "hit_count": np.int64(7),
        },
        {
            "prototype_id": 0,
            "class_name": "Effusion & more",
            "source_image_id": "img_a",
            "similarity": 0.9,
            "image": "protos/0.png",
        },
        {
            "prototype_id": 1,
            "class_name": "Mass",
            "source_image_id": "<img_c>",
            "location": (1, 1),
            "distance": 0.5,
            "image": "protos/1.png",
        },
    ]
    overlays.save_png(str(tmp_path / "protos" / "2c.png"), _image(seed=5))
    entries[0]["contour_image"] = "protos/2c.png"
    json_path, html_path = atlas.write_atlas(str(tmp_path), entries, HEADER, title="Atlas")
    data = json.load(open(json_path))
    assert data["classes"] == ["Mass", "Effusion & more"] and data["num_prototypes"] == 3
    assert [e["prototype_id"] for e in data["entries"]] == [1, 2, 0]
    assert data["entries"][1]["hit_count"] == 7 and data["entries"][0]["location"] == [1, 1]
    page = open(html_path, encoding="utf-8").read()
    anchors = re.findall(r'<section id="([^"]+)"', page)
    assert len(anchors) == 2 and all(f'href="#{a}"' in page for a in anchors)
    assert "&lt;img_c&gt;" in page and "Effusion &amp; more" in page and "hit count" in page
    assert page.index('id="prototype-1"') < page.index('id="prototype-2"')
    assert (
        '<img src="protos/2c.png" alt="prototype 2 of Mass: contour, training image img_b"' in page
    )
    assert data["header"]["model"] == "CIPL, resnet_tiny"
    with pytest.raises(ValueError, match="missing keys"):
        atlas.write_atlas(str(tmp_path), [{"prototype_id": 0}], HEADER)
    with pytest.raises(ValueError, match="repeat"):
        atlas.write_atlas(str(tmp_path), [entries[0], entries[0]], HEADER)
    with pytest.raises(ValueError, match="inside the atlas folder"):
        atlas.write_atlas(str(tmp_path), [{**entries[0], "image": "../x.png"}], HEADER)
    with pytest.raises(ValueError, match="contour_image file"):
        atlas.write_atlas(str(tmp_path), [{**entries[0], "contour_image": "nope.png"}], HEADER)


def test_colorbar_ramp_ticks_and_relative_spread():
    panel = np.zeros((40, 330, 3), np.uint8)
    out = overlays.with_colorbar(panel, "saliency", 0.0, 1.0, pad=12)
    assert out.shape[1] == 330 and out.shape[0] > 40 and np.array_equal(out[:40], panel)
    ramp_row = out[40 + 12 + 2, 12 : 330 - 12].astype(int)
    want = cv2.applyColorMap(
        np.round(np.linspace(0, 1, 330 - 24) * 255).astype(np.uint8)[None], cv2.COLORMAP_JET
    )[0, :, ::-1]
    assert np.abs(ramp_row - want).max() <= 1  # left = low (blue), right = high (red)
    assert overlays.relative_spread(np.full((4, 4), 3.0)) == 0.0
    assert overlays.relative_spread(np.zeros((4, 4))) == 0.0
    m = np.array([[1.0, 1.01], [1.0, 1.0]])
    assert abs(overlays.relative_spread(m) - 0.01 / 1.01) < 1e-12
    assert overlays.for_display(np.zeros((32, 64, 3), np.uint8)).shape == (320, 640, 3)
    assert overlays.for_display(np.zeros((400, 500, 3), np.uint8)).shape == (400, 500, 3)


def test_high_activation_box_is_the_95th_percentile_region():
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 5:7] = 1.0  # 4 of 64 cells: above the 95th percentile
    x, y, w, h = overlays.high_activation_box(heat, (64, 64))
    up = cv2.resize(heat, (64, 64), interpolation=cv2.INTER_LINEAR)
    rows, cols = np.nonzero(up >= np.percentile(up, 95))
    assert (x, y, w, h) == (
        cols.min(),
        rows.min(),
        cols.max() + 1 - cols.min(),
        rows.max() + 1 - rows.min(),
    )
    assert 36 <= x < 48 and 12 <= y < 24


def test_nice_ticks():
    np.testing.assert_allclose(plots.nice_ticks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(plots.nice_ticks(0, 224), [0, 50, 100, 150, 200])
    np.testing.assert_allclose(plots.nice_ticks(-3, 7.5), [-2.5, 0, 2.5, 5, 7.5])


def test_line_plot_writes_png_of_requested_size(tmp_path):
    t = np.linspace(0, 1, 50)
    path = plots.line_plot(
        str(tmp_path / "curves.png"),
        {
            "insertion": (t, 1 - np.exp(-4 * t)),
            "deletion": (t, np.exp(-4 * t)),
            "single": ([0.5], [0.5]),
        },
        title="Insertion / deletion",
        xlabel="fraction",
        ylabel="score",
        size=(400, 300),
    )
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (300, 400, 3)
    for color in plots.PALETTE[:3]:  # every curve (and the legend swatch) is drawn
        assert np.sum(np.abs(img - color).sum(axis=2) < 30) > 20
    with pytest.raises(ValueError, match="NaN"):
        plots.line_plot(str(tmp_path / "bad.png"), {"a": ([0, 1], [0, np.nan])})
    with pytest.raises(ValueError, match="must be equal"):
        plots.line_plot(str(tmp_path / "bad.png"), {"a": ([0, 1], [0])})


def _bilinear_reference(m: np.ndarray, size: int, cell: float, centre: float) -> np.ndarray:
    """Loop reference: pixel x reads cell coordinate (x + 0.5 - centre) / cell, clamped."""
    n = m.shape[0]
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            u = np.clip((np.array([y, x]) + 0.5 - centre) / cell, 0, n - 1)
            i0, j0 = np.minimum(np.floor(u).astype(int), n - 2)
            fy, fx = u - [i0, j0]
            top = (1 - fx) * m[i0, j0] + fx * m[i0, j0 + 1]
            bottom = (1 - fx) * m[i0 + 1, j0] + fx * m[i0 + 1, j0 + 1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


def test_upsample_map_places_cells_at_receptive_field_centres():
    m = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    got = overlays.upsample_map(m, (32, 32), grid=(8.0, 0.5))
    np.testing.assert_allclose(got, _bilinear_reference(m, 32, 8.0, 0.5), atol=2e-3)
    peak = np.zeros((4, 4), np.float32)
    peak[2, 1] = 1.0
    assert np.unravel_index(
        overlays.upsample_map(peak, (32, 32), grid=(8.0, 0.5)).argmax(), (32, 32)
    ) == (16, 8)
    # centre = cell / 2 is the plain stretch of cv2.resize.
    np.testing.assert_allclose(
        overlays.upsample_map(m, (32, 32), grid=(8.0, 4.0)),
        overlays.upsample_map(m, (32, 32)),
        atol=2e-3,
    )
    with pytest.raises(ValueError, match="cell size"):
        overlays.upsample_map(m, (32, 32), grid=(0.0, 0.5))
