"""The admin page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, which
`.ci/run` installs) driven by Selenium. Log in, see the accounts, add one, disable one, see a usage figure
change after a chat made with the openai SDK, take screenshots (a test artefact, also copied to
tests/artifacts/), log out, and the old cookie no longer opens the page. Skipped outside CI without Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fake_qwen import make_jwt

ADMIN_KEY = "fake-admin-key-browser-0001"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing; .ci/run must install chromium and chromium-driver")
    pytest.skip(f"{', '.join(missing)} missing (apt-get install chromium chromium-driver); CI runs this test")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def submit(driver, css: str, then: str) -> None:
    """Click a form's button and wait (bounded) for the page it leads to: an element matching ``then``."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")

    def replaced(_driver) -> bool:
        try:
            old.tag_name  # noqa: B018 (a round trip to the old page's element)
        except WebDriverException:  # stale, or mid-navigation ("does not belong to the document")
            return True
        return False

    driver.find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(driver, 15).until(replaced)
    WebDriverWait(driver, 15).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, then)))


def rows(driver) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    return {r.get_attribute("data-account"): r.get_attribute("data-state")
            for r in driver.find_elements(By.CSS_SELECTOR, "#accounts tr[data-account]")}


def figure(driver, element_id: str) -> int:
    from selenium.webdriver.common.by import By
    return int(driver.find_element(By.ID, element_id).text)


def save(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    return shot


def test_admin_page_in_a_real_browser(browser, make_proxy, fake, tmp_path):
    from selenium.webdriver.common.by import By

    proxy = make_proxy(COOKIE=f"token={make_jwt('user-browser-1')}", ADMIN_KEY=ADMIN_KEY,
                       STATE_FILE=str(tmp_path / "state.sqlite3"))
    driver = browser
    driver.get(proxy.url + "/admin")
    driver.find_element(By.ID, "key").send_keys(ADMIN_KEY)
    submit(driver, "form.login button", "#accounts")
    assert len(rows(driver)) == 1 and figure(driver, "requests-today") == 0
    assert driver.find_element(By.ID, "models-source").text

    driver.find_element(By.ID, "cookie").send_keys(make_jwt("user-browser-2"))
    driver.find_element(By.ID, "proxy").send_keys("http://someone:fake-secret@127.0.0.1:3128")
    submit(driver, "#add-account button", ".notice")
    assert "Account added." in driver.page_source and len(rows(driver)) == 2
    added = next(a for a in rows(driver) if "127.0.0.1:3128" in
                 driver.find_element(By.CSS_SELECTOR, f'tr[data-account="{a}"]').text)
    assert "fake-secret" not in driver.page_source

    submit(driver, f'tr[data-account="{added}"] button[value="disable"]', ".notice")
    assert "Account disabled." in driver.page_source and rows(driver)[added] == "disabled"

    answer = proxy.client().chat.completions.create(model="qwen3.7-plus",
                                                    messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    driver.get(proxy.url + "/admin")
    assert figure(driver, "requests-today") == 1 and figure(driver, "tokens-today") > 0
    key_cells = driver.find_elements(By.CSS_SELECTOR, '#keys td[data-figure="requests-today"]')
    assert [c.text for c in key_cells] == ["1"]
    save(driver, tmp_path, "admin.png")
    driver.set_window_size(390, 1600)  # a phone: the page must still lay out
    driver.get(proxy.url + "/admin")
    save(driver, tmp_path, "admin-phone.png")

    cookie = driver.get_cookie("qwen2openai_admin")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    submit(driver, "#logout", "#key")
    assert "Logged out." in driver.page_source and driver.find_elements(By.ID, "key")
    old = requests.get(proxy.url + "/admin", cookies={cookie["name"]: cookie["value"]}, timeout=10)
    assert old.status_code == 200 and 'id="accounts"' not in old.text and 'type="password"' in old.text
