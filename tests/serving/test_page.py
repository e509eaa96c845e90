"""The web page in a real headless Chromium: upload a face photo, see the API's labels drawn."""

import os
import shutil

import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("server")]  # one server per run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download: the system one
    yield driver
    driver.quit()


def test_upload_shows_the_api_answer(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=95)
    status, answer, _ = server.request("POST", "/v1/analyze", photo.read_bytes(), {"Content-Type": "image/jpeg"})
    assert status == 200
    api_faces = answer["photos"][0]["faces"]

    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(browser, 90).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                     in ("done", "error"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
        browser.find_element(By.ID, "status").text
    cards = browser.find_elements(By.CSS_SELECTOR, "#faces .face")
    assert len(cards) == len(api_faces) == 1
    for card, face in zip(cards, api_faces):
        assert card.get_attribute("data-expression") == face["expression"]["label"] == "happy"
        # The page shows the API's own open-set answer; the astronaut is none of the 12 trained people.
        assert card.get_attribute("data-name") == face["identity"]["label"] == "unknown"
        assert face["identity"]["closest"] in card.find_element(By.TAG_NAME, "h2").text
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("data-expression") for b in bars] == list(face["expression"]["probabilities"])
        assert card.find_element(By.CSS_SELECTOR, ".bar.top").get_attribute("data-expression") == "happy"
        # Release 4's age and gender, as the API answered them.
        about = card.find_element(By.CSS_SELECTOR, ".attributes").text
        assert f"Apparent age {int(face['age'] + 0.5)} years" in about and face["gender"]["label"] in about
    # The photo was drawn at its own size, with the box: the canvas is not blank where the face is.
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert size == [512, 512]
    x, y, w, h = (int(v) for v in api_faces[0]["box"])
    edge = browser.execute_script(
        f"return Array.from(document.getElementById('canvas').getContext('2d').getImageData({x}, {y + h // 2}, 1, 1).data);")
    assert edge[:3] == [0xE8, 0x59, 0x0C]  # the box's left edge in the colour of "happy"
    shot = os.environ.get("FACEMTL_SCREENSHOT") or str(tmp_path / "page.png")
    browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000
