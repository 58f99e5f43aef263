"""The demo's routing and actions: plain WSGI over :class:`~hashsession.wsgi.SessionMiddleware`.

Every page reads and writes the live session through the library's own calls; every
POST carries the session's CSRF token and answers 303 back to its page.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from hashsession.demo import pages
from hashsession.demo.hashview import read_hash
from hashsession.demo.race import COUNT, run_race
from hashsession.session import Session
from hashsession.store import SessionStore
from hashsession.wsgi import SessionMiddleware, StartResponse

__all__ = ["demo_store", "make_app"]

CSRF = "csrf"  # metadata name: the reserved field \x00csrf holds the session's token
_MAX_FORM = 4096
_USER = re.compile(r"[\w .@-]{1,40}")


def demo_store(redis: str | None = None) -> SessionStore:
    """A store with keys drawn for this run: cookies signed, user ids keyed, 30 min idle."""
    return SessionStore(
        redis=redis,
        secret_keys=[secrets.token_urlsafe(32)],
        user_key=secrets.token_bytes(32),
        ttl=1800,
    )


@dataclass
class Reply:
    """A response: status, headers, body."""

    status: str = "200 OK"
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def _html(text: str, status: str = "200 OK") -> Reply:
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
    return Reply(status, text.encode("utf-8"), headers)


def _see_other(path: str) -> Reply:
    return Reply("303 See Other", b"", [("Location", path)])


class Demo:
    """One request's view of the demo: the session, its form, and the page to answer."""

    def __init__(self, store: SessionStore, environ: dict[str, Any]) -> None:
        self.store = store
        self.environ = environ
        self.session: Session = environ["hashsession"]
        self.path: str = environ.get("PATH_INFO") or "/"
        self.form: dict[str, str] = {}

    # ------------------------------------------------------------------ plumbing

    def frame(self) -> pages.Frame:
        """Consume the flashes (one atomic pop), then the user and the CSRF token."""
        session = self.session
        flashes = session.pop("flash", None) or []
        notices = []
        if session.core.had_cookie and session.core.lost:
            notices.append(
                "Your previous session is gone (signed out, revoked from another browser,"
                " or expired): this is a new one."
            )
        csrf = str(session.meta_setdefault(CSRF, secrets.token_urlsafe(32)))
        user = session.get("user")
        return pages.Frame(self.path, csrf, user, session.id, [str(m) for m in flashes], notices)

    def page(self, body: Callable[[pages.Frame], str], status: str = "200 OK") -> Reply:
        frame = self.frame()
        path = "/403" if status.startswith("403") else None
        return _html(pages.render(frame, body(frame), path=path), status)

    def flash(self, message: str) -> None:
        self.session.append("flash", message, max_len=5)

    def csrf_ok(self) -> bool:
        """Whether the form's token is this session's, compared in constant time."""
        expected = self.session.meta_get(CSRF) if self.session.id else None
        supplied = self.form.get("csrf", "")
        if not isinstance(expected, str):
            return False
        return hmac.compare_digest(expected.encode(), supplied.encode())

    def read_form(self) -> bool:
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        if not 0 <= length <= _MAX_FORM:
            return False
        body = self.environ["wsgi.input"].read(length).decode("utf-8", "replace")
        self.form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        return True

    def user(self) -> str | None:
        user = self.session.get("user")
        return user if isinstance(user, str) else None

    # ------------------------------------------------------------------ dispatch

    def respond(self) -> Reply:
        method = self.environ.get("REQUEST_METHOD", "GET")
        if method == "POST":
            action = _ACTIONS.get(self.path)
            if action is None:
                return _html("not found", "404 Not Found")
            if not self.read_form():
                return _html("form too large", "413 Content Too Large")
            if not self.csrf_ok():
                return self.page(lambda f: pages.forbidden_page(), "403 Forbidden")
            return _see_other(action(self))
        if method not in ("GET", "HEAD"):
            return Reply("405 Method Not Allowed", b"", [("Allow", "GET, HEAD, POST")])
        if self.path == "/style.css":  # touches no session: no Redis command, no cookie
            return Reply("200 OK", pages.CSS.encode(), [("Content-Type", "text/css")])
        if self.path == "/live.json":
            data = read_hash(self.store, self.session.core.key).as_json()
            headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return Reply("200 OK", json.dumps(data).encode(), headers)
        view = _VIEWS.get(self.path)
        if view is None:
            return _html(pages.render(pages.Frame(self.path, ""), ""), "404 Not Found")
        return self.page(lambda frame: view(self, frame))

    # ------------------------------------------------------------------ pages

    def login_view(self, frame: pages.Frame) -> str:
        return pages.login_page(frame, self.session.get("signin"))

    def cart_view(self, frame: pages.Frame) -> str:
        cart, qty = self.session.get_many("cart", "qty")
        return pages.cart_page(frame, cart or [], qty or {})

    def counter_view(self, frame: pages.Frame) -> str:
        return pages.counter_page(frame, int(self.session.get("count", 0)))

    def sessions_view(self, frame: pages.Frame) -> str:
        if not frame.user:
            return pages.sessions_page(frame, [])
        return pages.sessions_page(frame, self.store.sessions_of(frame.user, self.session))

    def live_view(self, frame: pages.Frame) -> str:
        return pages.live_page(read_hash(self.store, self.session.core.key))

    def race_view(self, frame: pages.Frame) -> str:
        return pages.race_page(frame, self.session.get("race_result"), COUNT)

    # ------------------------------------------------------------------ actions

    def login(self) -> str:
        name = self.form.get("user", "").strip()
        if not _USER.fullmatch(name):
            self.flash("A user name is 1 to 40 letters, digits, spaces or . @ _ -")
            return "/login"
        before = self.session.id
        self.session.login(name)  # new id, owner recorded and indexed
        self.session.update(
            user=name,
            signin={
                "user": name,
                "before": pages.short_id(before),
                "after": pages.short_id(self.session.id),
            },
        )
        self.flash(f"Signed in as {name}.")
        return "/login"

    def logout(self) -> str:
        self.session.invalidate()
        self.flash("Signed out: that session was deleted from Redis; this is a new one.")
        return "/login"

    def cart_add(self) -> str:
        item = self.form.get("item", "")
        qty = self.form.get("qty", "1")
        if item in pages.CATALOG and qty in {"1", "2", "3", "4", "5"}:
            self.session.add("cart", item)
            self.session.set_in("qty", item, int(qty))
            self.flash(f"Added {qty} x {item}.")
        return "/cart"

    def cart_remove(self) -> str:
        item = self.form.get("item", "")
        if self.session.discard("cart", item):
            self.session.delete_in("qty", item)
            self.flash(f"Removed {item}.")
        return "/cart"

    def counter(self) -> str:
        by = -1 if self.form.get("by") == "-1" else 1
        self.session.incr("count", by)
        return "/counter"

    def send_flash(self) -> str:
        message = self.form.get("message", "").strip()[:200]
        if message:
            self.flash(message)
        return "/flash"

    def revoke(self) -> str:
        user = self.user()
        if user:
            ended = self.store.revoke(self.form.get("handle", ""), user_id=user)
            self.flash("Revoked that session." if ended else "That session had already ended.")
        return "/sessions"

    def revoke_others(self) -> str:
        user = self.user()
        if user:
            ended = self.store.revoke_user(user, keep=self.session)
            self.flash(f"Signed out {ended} other session(s).")
        return "/sessions"

    def race(self) -> str:
        result = run_race(self.store, self.session)
        self.session["race_result"] = {
            "expected": result.expected,
            "hashsession": result.hashsession,
            "naive": result.naive,
        }
        return "/race"


_VIEWS: dict[str, Callable[[Demo, pages.Frame], str]] = {
    "/": lambda demo, frame: pages.home(),
    "/login": Demo.login_view,
    "/cart": Demo.cart_view,
    "/counter": Demo.counter_view,
    "/flash": lambda demo, frame: pages.flash_page(frame),
    "/sessions": Demo.sessions_view,
    "/live": Demo.live_view,
    "/race": Demo.race_view,
}
_ACTIONS: dict[str, Callable[[Demo], str]] = {
    "/login": Demo.login,
    "/logout": Demo.logout,
    "/cart/add": Demo.cart_add,
    "/cart/remove": Demo.cart_remove,
    "/counter": Demo.counter,
    "/flash": Demo.send_flash,
    "/sessions/revoke": Demo.revoke,
    "/sessions/revoke-others": Demo.revoke_others,
    "/race": Demo.race,
}


def make_app(store: SessionStore) -> SessionMiddleware:
    """The demo WSGI app on ``store`` (which needs a ``user_key``: see :func:`demo_store`)."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        reply = Demo(store, environ).respond()
        start_response(reply.status, reply.headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [reply.body]

    return SessionMiddleware(app, store=store)
