"""CSR studio (issue #15 items 3–5): the API over HTTP on a small model (bad requests get a 4xx
and a message, the server keeps serving), and, with marker ``browser``, a real headless
Chromium drawing a negative box over the Clever-Hans marker and rejecting a concept."""

import http.client
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto import studio
from jaxproto.methods.csr import interact
from jaxproto.methods.csr.studio import MAX_UPLOAD_BYTES, StudioApp
from tests.methods.csr.hans_model import SIZE, _build_method, render_uint8, trained_uint8_method


def _save(folder, name, image):
    path = os.path.join(folder, name)
    cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1]))
    return path


def _with_atlas(state, k=2, m=4):
    extra = {
        **state["extra"],
        "atlas_index": jnp.zeros((k, m), jnp.int32),
        "hit_count": jnp.ones((k, m), jnp.int32),
    }
    return {**state, "extra": extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An untrained tiny model behind a real server on a free port."""
    folder = tmp_path_factory.mktemp("images")
    raw, concepts, labels = render_uint8(np.random.default_rng(0), 4, marker_on_class=1)
    for i, img in enumerate(raw):
        _save(str(folder), f"img{i}.png", img)
    (folder / "broken.png").write_bytes(b"not a png")
    method, _ = _build_method(labels, concepts)
    state = _with_atlas(method.init(jax.random.key(0)))
    app = StudioApp(method, state, str(folder))
    srv = studio.serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, app, raw
    srv.shutdown()
    srv.server_close()


def _call(srv, path, body=None, raw=False):
    data = None if body is None else (body if raw else json.dumps(body).encode())
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=data)
    try:
        with urllib.request.urlopen(req) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_predicts_from_cached_maps_and_rejects_bad_requests(server):
    srv, app, raw = server
    status, info = _call(srv, "/api/info")
    assert status == 200 and info["concepts"] == ["red", "blue"]
    assert info["images"] == ["broken.png", "img0.png", "img1.png", "img2.png", "img3.png"]
    status, opened = _call(srv, "/api/open", {"name": "img0.png"})
    assert status == 200 and opened["decision_before"]["class"] in ("negative", "positive")
    image_id = opened["image_id"]

    # Re-prediction equals the independent computation from the session's cached maps.
    req = {"image_id": image_id, "negative": [[0, 0, 5, 5]], "rejected": ["blue"], "alpha": 0.2}
    status, out = _call(srv, "/api/predict", req)
    assert status == 200
    session = app.opened[image_id].session
    sims = np.asarray(session.sims)[0]
    a = session.importance([], [(0, 0, 5, 5)], 0.2)
    s = (np.maximum(sims, 0) * a).max((-2, -1))
    s[1] = 0.0  # rejected concept
    w = np.asarray(app.state["params"]["task_head"]["kernel"])
    b = np.asarray(app.state["params"]["task_head"]["bias"])
    logits = s.reshape(-1) @ w + b
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(list(out["probs_after"].values()), probs, rtol=1e-4, atol=1e-6)
    assert out["concepts"][1]["rejected"] and out["concepts"][1]["score"] == 0.0
    assert out["concepts"][0]["map"].startswith("data:image/jpeg;base64,")
    assert "indecisive when top-1 minus top-2" in out["decision_after"]["rule"]

    bad = [
        ("/api/upload?name=x.png", b"definitely not an image", True, 400, "decode"),
        ("/api/open", {"name": "broken.png"}, False, 400, "broken.png"),
        ("/api/open", {"name": "missing.png"}, False, 404, "no image"),
        ("/api/predict", {**req, "negative": [[500, 500, 10, 10]]}, False, 400, "outside"),
        ("/api/predict", {**req, "negative": [[1, 2, 3]]}, False, 400, "x, y, w, h"),
        ("/api/predict", {**req, "rejected": ["purple"]}, False, 400, "unknown concept"),
        ("/api/predict", {**req, "alpha": 1.5}, False, 400, "alpha"),
        ("/api/predict", {**req, "image_id": "nope"}, False, 404, "unknown image"),
        ("/api/mark", {"ids": [99]}, False, 400, "out of range"),
        ("/api/nothing", {}, False, 404, "no such endpoint"),
    ]
    for path, body, raw_body, want, words in bad:
        status, err = _call(srv, path, body, raw_body)
        assert status == want and words in err["error"], (path, status, err)
    # A huge upload is refused from its Content-Length, before its body is read.
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1])
    conn.putrequest("POST", "/api/upload?name=big.png")
    conn.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and "exceeds" in json.loads(res.read())["error"]
    conn.close()
    # ... and the server still answers.
    assert _call(srv, "/api/predict", req)[0] == 200

    # Marked prototypes are masked at once; corrections export as JSON lines.
    assert _call(srv, "/api/mark", {"ids": [0, 1, 2, 3]})[1]["marked_for_pruning"] == [0, 1, 2, 3]
    out = _call(srv, "/api/predict", {"image_id": image_id})[1]
    assert out["concepts"][0]["score"] == 0.0
    _call(srv, "/api/mark", {"ids": [0, 1, 2, 3], "marked": False})
    assert _call(srv, "/api/record", req)[1] == {"recorded": 1}
    with urllib.request.urlopen(srv.url.rstrip("/") + "/api/corrections.jsonl") as res:
        lines = res.read().decode().splitlines()
    row = json.loads(lines[0])
    assert row["image"] == "img0.png" and row["negative_boxes"] == [[0, 0, 5, 5]]
    assert row["rejected_concepts"] == ["blue"] and set(row["probs_after"]) == set(info["classes"])


def test_token_required_off_loopback(server):
    _, app, _ = server
    srv = studio.serve(app, "127.0.0.1", 0, token="s3cret")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert srv.url.endswith("?token=s3cret")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url.split("?")[0] + "api/info")
        assert e.value.code == 403
        with urllib.request.urlopen(srv.url.split("?")[0] + "api/info?token=s3cret") as res:
            assert res.status == 200
    finally:
        srv.shutdown()
        srv.server_close()


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium (Debian: apt-get install chromium chromium-driver) absent")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def hans_studio(tmp_path_factory):
    """The tiny model trained with the Clever-Hans marker on class 1, served with a folder of
    class-0 test images that carry the marker and that the model gets wrong."""
    method, state = trained_uint8_method()
    raw, _, labels = render_uint8(np.random.default_rng(2), 64, marker_on_class=0)
    x = np.stack([interact.transforms.eval_transform(img, SIZE) for img in raw])
    session = interact.CsrSession(method.model, state, x)
    before = np.argmax(session.predict()["probs"], -1)
    boxed = np.argmax(session.predict(session.importance([], [(0, 0, 5, 5)], 0.2))["probs"], -1)
    fooled = np.flatnonzero((labels == 0) & (before == 1) & (boxed == 0))
    assert fooled.size, "the tiny model shows no Clever-Hans error fixed by the box"
    folder = tmp_path_factory.mktemp("hans")
    _save(str(folder), "fooled.png", raw[fooled[0]])
    app = StudioApp(method, _with_atlas(state), str(folder))
    srv = studio.serve(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _decision(driver):
    return driver.find_element("id", "decision-after").get_attribute("data-cls")


@pytest.mark.browser
def test_browser_negative_box_on_marker_and_reject(hans_studio, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.get(hans_studio.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements("css selector", "#pick option"))
        driver.find_element("id", "open").click()
        wait.until(lambda d: _decision(d) in ("negative", "positive"))
        assert _decision(driver) == "positive"  # fooled by the marker
        canvas = driver.find_element("id", "canvas")
        cell = canvas.size["width"] / SIZE  # canvas pixels per image pixel
        # Drag from the canvas's top-left corner over the 5x5 marker (offsets from the centre).
        half = canvas.size["width"] / 2
        ActionChains(driver).move_to_element_with_offset(
            canvas, -half + 1, -half + 1
        ).click_and_hold().move_by_offset(int(5.5 * cell), int(5.5 * cell)).release().perform()
        wait.until(lambda d: _decision(d) == "negative")
        driver.save_screenshot(str(tmp_path / "studio_negative_box.png"))
        if os.environ.get("ARTIFACTS_DIR"):  # CI keeps it (README screenshot)
            os.makedirs(os.environ["ARTIFACTS_DIR"], exist_ok=True)
            driver.save_screenshot(os.path.join(os.environ["ARTIFACTS_DIR"], "csr_studio.png"))

        # Second case: undo the box, then reject the concept the marker drives (red = 0).
        driver.find_element("id", "undo").click()
        wait.until(lambda d: _decision(d) == "positive")
        driver.find_elements("css selector", "input.reject")[0].click()
        wait.until(lambda d: _decision(d) == "negative")
        # Bad request on the page: a message, and the page keeps working.
        driver.execute_script("api('/api/predict', {image_id: 'nope'}).catch(() => {});")
        wait.until(lambda d: "unknown image" in d.find_element("id", "error").text)
    finally:
        driver.quit()


def test_colour_scale_rows_equal_the_colour_bar_under_a_panel():
    from jaxproto.methods.csr.studio import SCALE_LABEL, colour_scale
    from jaxproto.viz import overlays

    panel = np.random.default_rng(0).integers(0, 256, (40, 96, 3), dtype=np.uint8)
    want = overlays.with_colorbar(panel, SCALE_LABEL, -0.25, 0.75)
    got = np.concatenate([panel, colour_scale(96, -0.25, 0.75)])
    np.testing.assert_array_equal(got, want)
