"""The demo page, driven in a real headless Chromium, and the CLI entry point."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from hashsession import SessionStore
from hashsession.demo import make_app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def demo_url(redis_url: str) -> Iterator[str]:
    store = SessionStore(redis=redis_url)
    server = make_server("127.0.0.1", 0, make_app(store), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    store.close()


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.environ.get("HASHSESSION_REQUIRE_BROWSER"):
        pytest.fail("HASHSESSION_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
    pytest.skip("no chromium + chromedriver here (CI installs them)")


def test_demo_counts_visits_in_a_real_browser(demo_url: str, redis_client: object) -> None:
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="hs-chrome-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(demo_url)
        assert browser.find_element(By.ID, "visits").text == "1"
        assert browser.find_element(By.ID, "state").text == "new"
        browser.find_element(By.ID, "again").click()
        _wait_for_text(browser, "visits", "2")
        assert browser.find_element(By.ID, "state").text == "live"
        cookie = browser.get_cookie("session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert len(redis_client.keys("hs:*")) == 1  # type: ignore[attr-defined]
        browser.find_element(By.ID, "logout").click()
        _wait_for_text(browser, "state", "new")
        assert browser.find_element(By.ID, "visits").text == "1"
        assert browser.get_cookie("session")["value"] != cookie["value"]  # type: ignore[index]
        assert len(redis_client.keys("hs:*")) == 1  # type: ignore[attr-defined]
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for_text(browser: object, element_id: str, text: str) -> None:
    """Wait for the next page to load: a click returns before navigation ends."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shows(driver: object) -> bool:
        try:
            return bool(driver.find_element(By.ID, element_id).text == text)  # type: ignore[attr-defined]
        except StaleElementReferenceException:
            return False

    WebDriverWait(browser, 10).until(shows)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_demo_serves_the_page_on_an_embedded_redis() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashsession.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                    body = reply.read().decode()
                    cookie = reply.headers["Set-Cookie"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert 'id="visits">1<' in body
        assert cookie.startswith("session=")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"Cookie": cookie.split(";")[0]}
        )
        with urllib.request.urlopen(request, timeout=2) as reply:
            assert 'id="visits">2<' in reply.read().decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "for development only" in out or "development" in out
