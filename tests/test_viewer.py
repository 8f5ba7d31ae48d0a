"""The viewer page in a real browser (headless Chromium through Selenium): it loads, an align request
renders the overlay and the phrase table, a search renders a grid of results. A screenshot is written to
test-artifacts/viewer.png."""

import shutil
import threading
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (.ci/run installs it)")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KEY = "viewer-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from werkzeug.serving import make_server

    from crossmodal.api.http import wsgi_app
    from crossmodal.lab.scenes import generate_scene
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    data = tmp_path_factory.mktemp("viewer-store")
    folder = tmp_path_factory.mktemp("viewer-images")
    paths = []
    for k in range(6):
        path = folder / f"scene-{k}.png"
        generate_scene(890_000_000 + k, 320, 320, 1).image.save(path)
        paths.append(path)
    service = Service(Settings(data_dir=str(data), model="demo-shapes", collection="gallery"))
    service.ingest([IngestItem(image=ImageInput.from_path(p)) for p in paths], "gallery")
    service.store.close()
    httpd = make_server("127.0.0.1", 0, wsgi_app({"api_key": KEY, "data_dir": str(data), "model": "demo-shapes",
                                                  "default_collection": "gallery"}), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", paths
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options)
    yield driver
    driver.quit()


def test_viewer_aligns_and_searches(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    base, paths = server
    browser.get(f"{base}/viewer")
    assert "Crossmodal viewer" in browser.title
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "align-image").send_keys(str(paths[0]))
    browser.find_element(By.ID, "align-text").send_keys("a red circle and a blue star")
    browser.find_element(By.ID, "align-run").click()
    wait = WebDriverWait(browser, 60)
    overlay = wait.until(ready.visibility_of_element_located((By.ID, "overlay")))
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return document.getElementById('overlay').naturalWidth") == 320
    rows = browser.find_elements(By.CSS_SELECTOR, "#phrases tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == ["a red circle", "a blue star"]

    browser.find_element(By.ID, "search-text").send_keys("a green square")
    browser.find_element(By.ID, "search-run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .hit img")) == 6)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "viewer.png"))

    browser.find_element(By.ID, "key").clear()
    browser.find_element(By.ID, "key").send_keys("wrong")
    browser.find_element(By.ID, "search-run").click()
    wait.until(lambda d: "API key is wrong" in d.find_element(By.ID, "search-error").text)
