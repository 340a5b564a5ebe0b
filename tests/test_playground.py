"""The playground page at `/`, driven in a real headless Chromium (Debian's chromium + chromium-driver).

The page is served by `api.build_api` (the same app the Serve ingress runs) over uvicorn on
loopback with tiny real bundles. The test loads the page, streams a text sample and watches it
grow, renders a seeded grid, walks the interpolation slider, uploads an image for VAE
reconstruction, and saves a screenshot to $CREAGEN_TEST_ARTIFACTS (default runs/test-artifacts).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch

from _serve_bundles import image_bundle, text_bundle
from creagen_ray.serving.plain import PlainServer
from creagen_ray.serving.settings import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CREAGEN_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1400",
]


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) on PATH, or skip saying how to get them."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no chromium + chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    return chrome, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """uvicorn serving the API over tiny rnn (model.temperature 0.5), vae and gan bundles."""
    root = tmp_path_factory.mktemp("playground")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        text_bundle(root / "rnn", steps=5, temperature=0.5)
        image_bundle(root / "vae", "vae", steps=3)
        image_bundle(root / "gan", "gan", steps=3)
    finally:
        torch.set_num_threads(threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PlainServer(ServeConfig(bundles=[str(root)]), port) as url:
        yield url


def test_page_is_served_without_build_step(server: str) -> None:
    """GET / is plain HTML with inline JS (no external script or stylesheet), open without an API key."""
    r = httpx.get(server + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script>" in r.text and "src=\"http" not in r.text and "/v1/text/generate" in r.text


def test_playground_in_headless_chromium(server: str, tmp_path: Path) -> None:
    """Stream text (it grows), seeded grid, interpolation slider, VAE upload; screenshot saved."""
    chrome, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='creagen-chromium-')}")
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    wait = WebDriverWait(drv, 60)
    js = drv.execute_script
    try:
        drv.get(server + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
        assert drv.title == "creagen-ray playground"

        # text: stream and watch it grow
        Select(drv.find_element(By.ID, "model")).select_by_value("rnn")
        assert drv.find_element(By.ID, "text-panel").is_displayed()
        assert not drv.find_element(By.ID, "image-panel").is_displayed()
        temperature = drv.find_element(By.ID, "temperature")  # blank: the model's default, shown as placeholder
        assert temperature.get_attribute("value") == "" and temperature.get_attribute("placeholder") == "0.5 (model's)"
        drv.find_element(By.ID, "prompt").send_keys("the ")
        js("document.getElementById('max-tokens').value = 600; document.getElementById('text-seed').value = 1;")
        js("""window.__lens = []; const out = document.getElementById('text-out');
              new MutationObserver(() => window.__lens.push(out.textContent.length))
                  .observe(out, {childList: true, characterData: true, subtree: true});""")
        drv.find_element(By.ID, "generate-text").click()
        wait.until(lambda d: len(d.find_element(By.ID, "text-out").text) >= 4 + 600 - 5)
        wait.until(lambda d: d.find_element(By.ID, "generate-text").is_enabled())
        lens = js("return window.__lens;")
        assert len(set(lens)) >= 3, f"the text did not grow in steps: {lens}"  # streamed, not one block
        assert lens == sorted(lens) and js("return document.getElementById('text-out').textContent.length") == 604
        assert drv.find_element(By.ID, "status").text == ""
        # the page sent no temperature: the text is the bundle's default (0.5) sample for that seed
        same = {"model": "rnn", "prompt": "the ", "max_new_tokens": 600, "seed": 1, "temperature": 0.5}
        assert "the " + httpx.post(server + "/v1/text/generate", json=same).json()["texts"][0] == \
            js("return document.getElementById('text-out').textContent")

        # images: a seeded grid
        Select(drv.find_element(By.ID, "model")).select_by_value("gan")
        js("document.getElementById('n').value = 8; document.getElementById('seed').value = 3;")
        drv.find_element(By.ID, "generate-grid").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid img")) == 8)
        wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('#grid img')].every(i => i.naturalWidth === 16)"))

        # interpolation slider between two seeds
        drv.find_element(By.ID, "interpolate").click()
        wait.until(lambda d: d.find_element(By.ID, "slider").is_enabled())
        first = drv.find_element(By.CSS_SELECTOR, "#walk img").get_attribute("src")
        js("const s = document.getElementById('slider'); s.value = s.max; s.dispatchEvent(new Event('input'));")
        assert drv.find_element(By.ID, "slider-pos").text == "9 / 9"
        assert drv.find_element(By.CSS_SELECTOR, "#walk img").get_attribute("src") != first

        # VAE reconstruct from an uploaded image
        Select(drv.find_element(By.ID, "model")).select_by_value("vae")
        assert drv.find_element(By.ID, "recon-panel").is_displayed()
        from PIL import Image

        upload = tmp_path / "square.png"
        img = Image.new("L", (16, 16))
        img.paste(255, (4, 4, 12, 12))
        img.save(upload)
        drv.find_element(By.ID, "upload").send_keys(str(upload))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recon img")) == 2)
        assert drv.find_element(By.ID, "status").text == ""

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "playground.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] >= 1000
    finally:
        drv.quit()
