"""The demo app: every page and action through WSGI on the private server, the same
pages driven in two real headless Chromium browsers, and the CLI entry point."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest

from hashsession import SessionStore
from hashsession.demo import demo_store, make_app
from hashsession.demo.hashview import escaped
from hashsession.demo.pages import PAGES
from hashsession.wsgi import SessionMiddleware

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
PATHS = [path for path, _, _ in PAGES]


# ------------------------------------------------------------ a WSGI browser


class Reply:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.text = status, headers, body.decode()
        self.code = int(status.split()[0])

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def by_id(self, ident: str) -> str:
        """The text inside the element with ``id=ident`` (no nested tags)."""
        match = re.search(rf'id="{re.escape(ident)}"[^>]*>([^<]*)<', self.text)
        assert match, f"no #{ident} in the page"
        return match.group(1)


class Client:
    """One browser: keeps the session cookie and the last page's CSRF token."""

    def __init__(self, app: SessionMiddleware) -> None:
        self.app = app
        self.cookie: str | None = None
        self.csrf = ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        body = urlencode(form or {}).encode()
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ.update(
            REQUEST_METHOD=method,
            PATH_INFO=path,
            CONTENT_TYPE="application/x-www-form-urlencoded",
            CONTENT_LENGTH=str(len(body)),
        )
        environ["wsgi.input"] = io.BytesIO(body)
        if self.cookie:
            environ["HTTP_COOKIE"] = f"session={self.cookie}"
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        out = b"".join(self.app(environ, start_response))
        reply = Reply(started[0], started[1], out)
        set_cookie = reply.header("Set-Cookie")
        if set_cookie:
            value = set_cookie.split(";", 1)[0].split("=", 1)[1]
            self.cookie = None if "Max-Age=0" in set_cookie else value
        token = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        if token and token.group(1) != "not-the-token":
            self.csrf = token.group(1)
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, **form: str) -> Reply:
        """POST with this session's token (unless ``csrf`` is given); expects 303 back."""
        form.setdefault("csrf", self.csrf)
        return self.request("POST", path, form)

    def sign_in(self, user: str) -> Reply:
        self.get("/login")
        reply = self.post("/login", user=user)
        assert (reply.code, reply.header("Location")) == (303, "/login")
        return self.get("/login")


@pytest.fixture
def store(redis_url: str) -> Iterator[SessionStore]:
    store = demo_store(redis_url)
    yield store
    store.close()


@pytest.fixture
def app(store: SessionStore) -> SessionMiddleware:
    return make_app(store)


def _session_keys(redis_client: Any) -> list[bytes]:
    return [k for k in redis_client.keys("hs:*") if not k.startswith(b"hs:u:")]


# ------------------------------------------------------------ pages and actions


def test_every_page_answers_with_the_nav_bar_and_what_it_proves(app: SessionMiddleware) -> None:
    client = Client(app)
    for path in PATHS:
        reply = client.get(path)
        assert reply.code == 200, path
        assert reply.header("Content-Type") == "text/html; charset=utf-8"
        for other in PATHS:
            assert f'href="{other}"' in reply.text
        assert len(reply.by_id("proves")) > 40
    css = Client(app).get("/style.css")
    assert css.code == 200 and css.header("Content-Type") == "text/css"
    assert css.header("Set-Cookie") is None  # the stylesheet touches no session
    assert client.get("/nope").code == 404
    assert client.request("DELETE", "/").code == 405
    assert client.request("POST", "/nope").code == 404


def test_sign_in_changes_the_id_and_shows_only_prefixes(
    app: SessionMiddleware, store: SessionStore, redis_client: Any
) -> None:
    client = Client(app)
    client.get("/counter")
    client.post("/counter", by="1")
    cookie_before = client.cookie
    assert cookie_before is not None
    id_before = store.config.id_from_cookie(cookie_before)
    assert id_before is not None
    page = client.sign_in("ada")
    id_after = store.config.id_from_cookie(client.cookie or "")
    assert id_after is not None and id_after != id_before
    assert page.by_id("id-before") == id_before[:8] + "…"
    assert page.by_id("id-after") == id_after[:8] + "…"
    assert page.by_id("user") == "ada"
    assert "Signed in as ada." in page.text
    assert id_after not in page.text and id_before not in page.text  # never the whole secret
    assert client.get("/counter").by_id("count") == "1"  # the data came along
    old = Client(app)
    old.cookie = cookie_before
    assert "user-none" in old.get("/login").text  # the old id is dead
    assert len(_session_keys(redis_client)) == 2  # ada's, and the one the old cookie just made

    reply = client.post("/logout")
    assert (reply.code, reply.header("Location")) == (303, "/login")
    page = client.get("/login")
    assert "user-none" in page.text and "Signed out" in page.text
    assert store.config.id_from_cookie(client.cookie or "") not in (None, id_after)
    assert store.sessions_of("ada") == []


def test_a_bad_user_name_is_refused_with_a_message(app: SessionMiddleware) -> None:
    client = Client(app)
    client.get("/login")
    assert client.post("/login", user="<script>").code == 303
    page = client.get("/login")
    assert "A user name is 1 to 40" in page.text and "user-none" in page.text


def test_cart_adds_and_removes_with_the_value_edits(
    app: SessionMiddleware, store: SessionStore
) -> None:
    client = Client(app)
    assert "cart-empty" in client.get("/cart").text
    assert client.post("/cart/add", item="apples", qty="3").code == 303
    client.post("/cart/add", item="bread", qty="1")
    client.post("/cart/add", item="apples", qty="2")  # already in: only its quantity changes
    client.post("/cart/add", item="caviar", qty="1")  # not sold here: ignored
    page = client.get("/cart")
    assert re.findall(r'<td class="item">(\w+)</td><td>(\d)</td>', page.text) == [
        ("apples", "2"),
        ("bread", "1"),
    ]
    session = store.open(f"session={client.cookie}")
    assert session["cart"] == ["apples", "bread"] and session["qty"] == {"apples": 2, "bread": 1}
    client.post("/cart/remove", item="apples")
    assert "Removed apples." in client.get("/cart").text
    assert session["cart"] == ["bread"] and session["qty"] == {"bread": 1}


def test_counter_is_hincrby_on_the_hash(
    app: SessionMiddleware, store: SessionStore, redis_client: Any
) -> None:
    client = Client(app)
    client.get("/counter")
    for by in ("1", "1", "1", "-1"):
        assert client.post("/counter", by=by).code == 303
    assert client.get("/counter").by_id("count") == "2"
    (key,) = _session_keys(redis_client)
    assert redis_client.hget(key, "count") == b"2"  # decimal text: HINCRBY counts on it


def test_flash_messages_are_shown_once(app: SessionMiddleware, redis_client: Any) -> None:
    client = Client(app)
    client.get("/flash")
    client.post("/flash", message="hello <b>there</b>")
    client.post("/flash", message="again")
    (key,) = _session_keys(redis_client)
    assert json.loads(redis_client.hget(key, "flash")) == ["hello <b>there</b>", "again"]
    page = client.get("/flash")
    assert re.findall(r"<p class=\"flash\" data-flash>([^<]*)</p>", page.text) == [
        "hello &lt;b&gt;there&lt;/b&gt;",
        "again",
    ]
    assert redis_client.hexists(key, "flash") == 0  # popped in the same step it was read
    assert "data-flash" not in client.get("/flash").text


@pytest.mark.parametrize("path", ["/flash", "/counter", "/login", "/race", "/logout"])
def test_a_post_without_or_with_a_wrong_token_gets_403(
    app: SessionMiddleware, store: SessionStore, path: str
) -> None:
    client = Client(app)
    client.get("/counter")
    assert client.post("/counter").code == 303
    for token in ("", "not-the-token", client.csrf[:-1]):
        reply = client.post(path, csrf=token, message="forged", user="mallory", by="1")
        assert reply.code == 403
        assert "did not carry this session's CSRF token" in reply.text
    stranger = Client(app)  # no session at all
    assert stranger.post(path, csrf=client.csrf, by="1").code == 403
    assert client.get("/counter").by_id("count") == "1"  # nothing changed
    session = store.open(f"session={client.cookie}")
    assert "user" not in session and "flash" not in session and "race" not in session


def test_your_sessions_lists_both_browsers_and_revokes_one(
    app: SessionMiddleware, store: SessionStore, redis_client: Any
) -> None:
    first, second, third = Client(app), Client(app), Client(app)
    assert "signed-out" in first.get("/sessions").text
    for client in (first, second, third):
        client.sign_in("ada")
    page = first.get("/sessions")
    assert page.text.count('<tr class="session">') == 3
    assert page.text.count("this browser") == 1
    handles = re.findall(r'name="handle" value="([^"]+)"', page.text)
    assert len(handles) == 2
    assert first.cookie and all(first.cookie.split(".")[0] not in h for h in handles)
    mine = store.config.id_from_cookie(first.cookie)
    second_id = store.config.id_from_cookie(second.cookie or "")
    assert mine and second_id and mine not in page.text and second_id not in page.text

    listed = store.sessions_of("ada", current=second_id)
    (handle,) = [info.handle for info in listed if info.current]
    assert handle in handles
    assert first.post("/sessions/revoke", handle=handle).code == 303
    assert "Revoked that session." in first.get("/sessions").text
    page = second.get("/sessions")
    assert "signed-out" in page.text and "user-none" in page.text
    assert "Your previous session is gone" in page.text
    assert first.get("/sessions").text.count('<tr class="session">') == 2

    assert first.post("/sessions/revoke-others").code == 303
    page = first.get("/sessions")
    assert "Signed out 1 other session(s)." in page.text
    assert page.text.count('<tr class="session">') == 1
    assert "user-none" in third.get("/login").text
    assert len(store.sessions_of("ada")) == 1


def test_live_view_shows_the_raw_hash_and_its_ttl(
    app: SessionMiddleware, redis_client: Any
) -> None:
    client = Client(app)
    client.sign_in("ada")
    page = client.get("/live")
    (key,) = _session_keys(redis_client)
    assert page.by_id("key") == key.decode()
    assert 0 < int(page.by_id("pttl")) <= 1800 * 1000
    for field in (r"\x00c", r"\x00u", r"\x00s", r"\x00csrf"):
        assert f"<code>{field}</code>" in page.text
    assert "reserved: owner (NUL + keyed digest" in page.text
    assert "<code>user</code></td><td><code>&quot;ada&quot;</code>" in page.text

    redis_client.pexpire(key, 500_000)
    data = json.loads(client.get("/live.json").text)
    assert data["key"] == key.decode()
    assert 0 < data["pttl"] <= 500_000  # the poll reads with a plain client: no slide
    rows = {row[0]: row for row in data["rows"]}
    assert rows["user"][1:] == ['"ada"', "your data (JSON)", False]
    assert rows[r"\x00u"][1].startswith(r"\x00") and rows[r"\x00u"][3] is True
    assert set(rows) == {escaped(f) for f in redis_client.hgetall(key)}
    assert int(client.get("/live").by_id("pttl")) > 500_000  # a page does slide it
    assert json.loads(Client(app).get("/live.json").text) == {"key": None, "pttl": -2, "rows": []}


def test_escaped_shows_nul_and_other_unprintables() -> None:
    assert escaped(b"\x00u") == r"\x00u"
    assert escaped("zoë\\".encode()) == "zoë\\\\"
    assert escaped(b"\xff\x00a") == r"\xff\x00a"


def test_race_hashsession_keeps_all_50(
    app: SessionMiddleware, store: SessionStore, redis_client: Any
) -> None:
    client = Client(app)
    client.get("/race")
    assert client.post("/race").code == 303
    page = client.get("/race")
    assert page.by_id("race-hashsession") == "50"
    assert page.by_id("lost-hashsession") == "0"
    naive = int(page.by_id("race-naive"))
    assert 0 < naive <= 50
    assert page.by_id("lost-naive") == str(50 - naive)
    assert page.text.count("expected 50, got") == 2
    session = store.open(f"session={client.cookie}")
    assert session["race"] == 50
    assert redis_client.keys("demo-naive:*") == []  # the foil cleans up after itself


# ------------------------------------------------------------ two real browsers


@pytest.fixture
def demo_url(store: SessionStore) -> Iterator[str]:
    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    class Threading(ThreadingMixIn, WSGIServer):  # a browser's idle preconnect blocks no one
        daemon_threads = True

    server = make_server("127.0.0.1", 0, make_app(store), Threading, Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.environ.get("HASHSESSION_REQUIRE_BROWSER"):
        pytest.fail("HASHSESSION_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
    pytest.skip("no chromium + chromedriver here (CI installs them)")


@pytest.fixture
def browsers() -> Iterator[list[Any]]:
    """Two headless Chromiums, each with a profile (and so a cookie jar) of its own."""
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started: list[tuple[Any, str]] = []
    try:
        for _ in range(2):
            profile = tempfile.mkdtemp(prefix="hs-chrome-")
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1200,1000",
                f"--user-data-dir={profile}",
            ):
                options.add_argument(flag)
            try:
                browser = webdriver.Chrome(service=Service(driver_path), options=options)
            except Exception:
                shutil.rmtree(profile, ignore_errors=True)
                raise
            started.append((browser, profile))
        yield [browser for browser, _ in started]
    finally:
        for browser, profile in started:
            browser.quit()
            shutil.rmtree(profile, ignore_errors=True)


def _text(browser: Any, ident: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, ident).text)


def _click(browser: Any, target: str) -> None:
    """Click ``#target`` (or the one element a CSS ``target`` with a dot finds), and wait
    for the page its POST redirects to."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    by = By.CSS_SELECTOR if "." in target else By.ID
    browser.find_element(by, target).click()

    def replaced(_: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:  # Chromium may say so in its own words
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, 15).until(replaced)


def _shot(browser: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def _sign_in(browser: Any, base: str, user: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/login")
    browser.find_element(By.ID, "username").send_keys(user)
    _click(browser, "signin")
    assert _text(browser, "user") == user


def test_two_browsers_as_one_user_and_every_page(browsers: list[Any], demo_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    alice, other = browsers
    alice.get(f"{demo_url}/")
    assert _text(alice, "user-none") == "not signed in"
    _shot(alice, "home")
    _sign_in(alice, demo_url, "ada")
    assert _text(alice, "id-before") != _text(alice, "id-after")
    cookie = alice.get_cookie("session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    _shot(alice, "login")

    alice.get(f"{demo_url}/cart")
    Select(alice.find_element(By.ID, "item")).select_by_visible_text("cheese")
    _click(alice, "add")
    assert alice.find_elements(By.CSS_SELECTOR, "#cart td.item")
    _shot(alice, "cart")

    alice.get(f"{demo_url}/counter")
    _click(alice, "incr")
    _click(alice, "incr")
    assert _text(alice, "count") == "2"
    _shot(alice, "counter")

    alice.get(f"{demo_url}/flash")
    alice.find_element(By.ID, "message").send_keys("hello from a browser")
    _click(alice, "send")
    assert "hello from a browser" in alice.page_source
    _shot(alice, "flash")
    _click(alice, "wrong-token")
    assert "403" in _text(alice, "forbidden")
    _shot(alice, "csrf-403")

    _sign_in(other, demo_url, "ada")
    for browser in (alice, other):
        browser.get(f"{demo_url}/sessions")
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr.session")) == 2
        assert len(browser.find_elements(By.CSS_SELECTOR, "button.revoke")) == 1
    _shot(alice, "sessions")
    _click(alice, "button.revoke")
    assert len(alice.find_elements(By.CSS_SELECTOR, "tr.session")) == 1
    other.refresh()
    assert _text(other, "user-none") == "not signed in"
    assert other.find_elements(By.ID, "signed-out")
    assert "Your previous session is gone" in other.page_source

    alice.get(f"{demo_url}/live")
    assert r"\x00u" in alice.page_source and int(_text(alice, "pttl")) > 0
    _shot(alice, "live")
    shown = _text(alice, "pttl")
    WebDriverWait(alice, 15).until(lambda b: _text(b, "pttl") != shown)  # the fetch() poll
    assert 0 < int(_text(alice, "pttl")) < int(shown)  # watching does not slide it

    alice.get(f"{demo_url}/race")
    _click(alice, "race")
    assert _text(alice, "race-hashsession") == "50"
    assert 0 < int(_text(alice, "race-naive")) <= 50
    _shot(alice, "race")
    assert sorted(p.stem for p in SCREENSHOTS.glob("*.png")) >= sorted(
        ["home", "login", "cart", "counter", "flash", "csrf-403", "sessions", "live", "race"]
    )


# ------------------------------------------------------------ the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_demo_serves_the_pages_on_an_embedded_redis() -> None:
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
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/counter", timeout=2) as r:
                    body = r.read().decode()
                    cookie = r.headers["Set-Cookie"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert 'id="count">0<' in body
        assert cookie.startswith("session=") and "HttpOnly" in cookie
        token = re.search(r'name="csrf" value="([^"]+)"', body)
        assert token
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/counter",
            data=urlencode({"csrf": token.group(1), "by": "1"}).encode(),
            headers={"Cookie": cookie.split(";")[0]},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # follows the 303
            assert 'id="count">1<' in reply.read().decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "for development only" in out
