"""The landing page in real headless Chromium (Debian's `chromium` and `chromium-driver`)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pingforward.forward import parse_forward
from tests.servers import run_cli_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# CI sets REQUIRE_CHROMIUM=1 so that a missing browser fails instead of skipping.
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        raise RuntimeError("REQUIRE_CHROMIUM=1 but chromium or chromedriver is not on PATH")
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

# Never let selenium's driver manager look for downloads or send usage statistics.
os.environ["SE_OFFLINE"] = "true"
os.environ["SE_AVOID_STATS"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
)
ENDPOINT = "https://webmention.io/example.com/webmention?token=a+b&x=1#frag"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_cli_server(tmp_path_factory.mktemp("server")) as process:
        yield process.base


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from _browser()


def _browser(scripts: bool = True) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM and CHROMEDRIVER
    options = webdriver.ChromeOptions()
    if not scripts:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="pingforward-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def after_submit(driver: webdriver.Chrome, element_id: str) -> WebElement:
    """Wait for the page the form leads to, known by an element the form's page does not have."""
    wait = WebDriverWait(driver, 15)  # bounded; the page is served from 127.0.0.1
    found: WebElement = wait.until(expected_conditions.presence_of_element_located((By.ID, element_id)))
    return found


def screenshot(driver: webdriver.Chrome, name: str, width: int, tmp_path: Path, scheme: str = "light") -> Path:
    """A full-page PNG at `width` CSS pixels, in $SCREENSHOT_DIR or the test's temporary directory."""
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    features = [{"name": "prefers-color-scheme", "value": scheme}]
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
    if scheme != "light":
        name = f"{name}-{scheme}"
    metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": int(height)})
    path = folder / f"{name}-{width}.png"
    assert driver.save_screenshot(str(path))
    return path


def test_form_builds_a_tag_that_round_trips(server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(server + "/")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert [h.text for h in browser.find_elements(By.TAG_NAME, "h1")] == ["pingforward"]
    label = browser.find_element(By.CSS_SELECTOR, "label[for=endpoint]")
    assert label.text == "Your Webmention endpoint"
    screenshot(browser, "landing", 1280, tmp_path)

    field = browser.find_element(By.ID, "endpoint")
    field.send_keys(ENDPOINT)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    link = after_submit(browser, "link-tag").text
    header = browser.find_element(By.ID, "header-line").text
    assert parse_qs(urlsplit(browser.current_url).query) == {"endpoint": [ENDPOINT]}  # a shareable link
    assert browser.find_element(By.ID, "endpoint").get_attribute("value") == ENDPOINT

    # Read the tag the way the Pingback spec's client does, then the forward the way the proxy does.
    match = re.fullmatch(r'<link rel="pingback" href="([^"]+)">', link)
    assert match is not None, link
    href = match[1]
    assert href.startswith(server + "/?forward=https%3A%2F%2F")
    assert header == f"X-Pingback: {href}"
    assert parse_forward(urlsplit(href).query) == ENDPOINT

    screenshot(browser, "result", 1280, tmp_path)
    screenshot(browser, "result", 375, tmp_path)
    # Nothing sticks out sideways at phone width.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 375


def test_bad_input_is_explained_not_executed(server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(server + "/webmention")
    browser.find_element(By.ID, "endpoint").send_keys('javascript:alert("x")//<script>alert(1)</script>')
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = after_submit(browser, "endpoint-error").text
    assert "full URL" in error
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # the page's own, nothing injected
    assert browser.find_elements(By.ID, "link-tag") == []
    assert browser.find_element(By.ID, "endpoint").get_attribute("aria-invalid") == "true"
    screenshot(browser, "error", 375, tmp_path)


def test_example_tag_and_copy_buttons(server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(server + "/")
    # Before anything is typed, an example shows what the tag looks like.
    example = browser.find_element(By.ID, "example-tag").text
    assert example.startswith(f'<link rel="pingback" href="{server}/?forward=https%3A%2F%2Fwebmention.io')
    assert browser.find_elements(By.ID, "link-tag") == []
    # The fault table is folded away until asked for.
    assert not browser.find_element(By.CSS_SELECTOR, "details table").is_displayed()
    for width in (1280, 375):
        for scheme in ("light", "dark"):
            screenshot(browser, "landing", width, tmp_path, scheme)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 375

    browser.find_element(By.ID, "endpoint").send_keys(ENDPOINT)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    link = after_submit(browser, "link-tag").text
    # The script ran (the policy allows its hash) and put a Copy button after each block.
    buttons = browser.find_elements(By.CSS_SELECTOR, "button.copy")
    assert [b.get_attribute("aria-label") for b in buttons] == [
        "Copy the link element",
        "Copy the header",
        "Copy the commands",
    ]
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    buttons[0].click()
    WebDriverWait(browser, 10).until(lambda driver: buttons[0].text == "Copied")
    copied = browser.execute_async_script("navigator.clipboard.readText().then(arguments[0])")
    assert copied == link
    for width in (1280, 375):
        for scheme in ("light", "dark"):
            screenshot(browser, "result", width, tmp_path, scheme)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 375


def test_usable_without_scripts(server: str, tmp_path: Path) -> None:
    for driver in _browser(scripts=False):
        driver.get(server + "/")
        driver.find_element(By.ID, "endpoint").send_keys(ENDPOINT)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        link = after_submit(driver, "link-tag").text
        assert link.startswith('<link rel="pingback" href="')
        assert driver.find_elements(By.CSS_SELECTOR, "button.copy") == []  # nothing that would not work
        screenshot(driver, "no-script", 375, tmp_path)


def test_an_endpoint_at_this_proxy_is_refused(server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(server + "/")
    browser.find_element(By.ID, "endpoint").send_keys(server + "/webmention")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = after_submit(browser, "endpoint-error").text
    assert "this pingforward instance itself" in error
    assert browser.find_elements(By.ID, "link-tag") == []
    screenshot(browser, "itself", 375, tmp_path)
