"""Headless Chromium for page tests (marker ``browser``): the Debian ``chromium`` and
``chromium-driver`` packages plus ``pip install selenium``; tests skip with the reason when
any is missing. Screenshots go to ``$JAXPROTO_ARTIFACTS`` (default: the pytest tmp dir)."""

from __future__ import annotations

import os
import pathlib

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

_IMAGES_JS = """
return Array.from(document.images).map(
    i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.getAttribute('alt') || '']);
"""
_EXTERNAL_JS = """
return performance.getEntriesByType('resource').map(e => e.name)
    .filter(n => !n.startsWith('file:'));
"""


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium WebDriver (1400 px wide), or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.skip(f"{path} missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> pathlib.Path:
    """Where screenshots are saved: ``$JAXPROTO_ARTIFACTS`` or a pytest tmp dir."""
    folder = os.environ.get("JAXPROTO_ARTIFACTS")
    path = pathlib.Path(folder) if folder else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def page_check(browser):
    """``page_check(page, texts, screenshot)``: `check_page` with the session's browser."""
    return lambda page, texts, screenshot: check_page(browser, page, texts, screenshot)


def check_page(driver, page: str, texts, screenshot: str) -> str:
    """Opens ``page`` (a local HTML file), asserts every <img> loaded (naturalWidth > 0) and has
    alt text, nothing outside file:// was requested, and each of ``texts`` is shown; saves a
    full-page screenshot to ``screenshot``; returns the page's visible text."""
    driver.set_window_size(1400, 1000)
    driver.get(pathlib.Path(page).resolve().as_uri())
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    images = driver.execute_script(_IMAGES_JS)
    assert images, f"{page}: no images"
    broken = [src for src, complete, width, _ in images if not (complete and width > 0)]
    assert not broken, f"{page}: images did not load: {broken}"
    no_alt = [src for src, *_, alt in images if not alt.strip()]
    assert not no_alt, f"{page}: images without alt text: {no_alt}"
    assert driver.execute_script(_EXTERNAL_JS) == [], f"{page}: external resources requested"
    text = driver.find_element("tag name", "body").text
    missing = [t for t in texts if t not in text]
    assert not missing, f"{page}: texts not shown: {missing}"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 40, 6000))
    driver.execute_script("window.scrollTo(0, 0)")
    os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
    assert driver.save_screenshot(screenshot), f"could not save {screenshot}"
    return text
