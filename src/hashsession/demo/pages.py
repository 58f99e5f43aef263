"""The demo's HTML: one layout, one small stylesheet, and the body of each page.

Plain functions from data to escaped HTML; the app (:mod:`hashsession.demo.app`)
does the session work and hands the results here.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hashsession.demo.hashview import RawHash
from hashsession.users import SessionInfo

__all__ = [
    "CATALOG",
    "CSS",
    "PAGES",
    "Frame",
    "cart_page",
    "counter_page",
    "flash_page",
    "forbidden_page",
    "home",
    "live_page",
    "login_page",
    "race_page",
    "render",
    "sessions_page",
    "short_id",
]

#: (path, nav label, the one sentence saying what the page proves), in nav order.
PAGES: list[tuple[str, str, str]] = [
    (
        "/",
        "Overview",
        "Each session is one Redis hash and every change is written the moment it is made;"
        " each page of this demo shows one thing that follows from it.",
    ),
    (
        "/login",
        "Sign in",
        "Signing in gives the session a new id (so an id planted before sign-in is useless)"
        " and records its owner, keeping what the session already held.",
    ),
    (
        "/cart",
        "Cart",
        "Each add or remove is one atomic script on one field of the hash, so two tabs"
        " editing the cart at once never undo each other.",
    ),
    (
        "/counter",
        "Counter",
        "Each click is one HINCRBY: the count is added to inside Redis, never read,"
        " changed and written back.",
    ),
    (
        "/flash",
        "Flash & CSRF",
        "Messages wait in a list in the session and are taken by one atomic pop, and a form"
        " without this session's CSRF token is refused with 403.",
    ),
    (
        "/sessions",
        "Your sessions",
        "Redis knows every session of a user, so one browser can list and end the others.",
    ),
    (
        "/live",
        "Live hash",
        "There is nothing else: one Redis hash per session, metadata in NUL-prefixed fields,"
        " and a TTL that slides on every request.",
    ),
    (
        "/race",
        "Race",
        "Fifty concurrent increments: hashsession keeps all fifty, a load-then-save session"
        " loses some.",
    ),
]
_PAGE = {path: (label, proves) for path, label, proves in PAGES}

#: What the cart page sells.
CATALOG = ("apples", "bread", "cheese", "dates", "eggs")

CSS = """\
:root{--ink:#1d2330;--muted:#5b6475;--line:#dde1e8;--bg:#f6f7f9;--accent:#c0392b;--ok:#1e7d4f}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,sans-serif;color:var(--ink);background:var(--bg)}
header{background:var(--ink);color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;
gap:.4rem 1rem;align-items:center}
header a{color:#fff;text-decoration:none}.brand{font-weight:700;margin-right:.5rem}
nav{display:flex;flex-wrap:wrap;gap:.2rem}nav a{padding:.15rem .5rem;border-radius:4px}
nav a.here,nav a:hover{background:#ffffff26}
.who{margin-left:auto;display:flex;gap:.5rem;align-items:center}.who form{margin:0}
main{max-width:52rem;margin:1.5rem auto;padding:0 1rem}
h1{margin:.2rem 0 .3rem}
.proves{font-size:1.05rem;color:var(--muted);border-left:4px solid var(--accent);
padding-left:.7rem;margin:0 0 1.2rem}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem;margin:0 0 1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(15rem,1fr));gap:1rem}
.cards .card{margin:0}.cards h2{font-size:1.05rem;margin:0 0 .3rem;color:var(--accent)}
a.card{display:block;color:inherit;text-decoration:none}a.card:hover{border-color:var(--ink)}
.flash{background:#e8f5ee;border:1px solid #b9e0c9;color:var(--ok);border-radius:6px;
padding:.5rem .8rem;margin:0 0 .6rem}
.notice{background:#fdf0e6;border-color:#f3cda9;color:#8a4b12}
.error{background:#fdecea;border-color:#f5c2bd;color:var(--accent)}
button{font:inherit;padding:.3rem .8rem;border-radius:5px;border:1px solid var(--ink);
background:var(--ink);color:#fff;cursor:pointer}
button.quiet{background:#fff;color:var(--ink)}button.danger{background:var(--accent);
border-color:var(--accent)}
input,select{font:inherit;padding:.25rem .4rem;border:1px solid var(--line);border-radius:5px}
form.inline{display:inline}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);
vertical-align:top}
td code{font-family:ui-monospace,monospace;font-size:.9rem;word-break:break-all}
td:first-child code{white-space:nowrap;word-break:normal}
tr.reserved td{color:var(--muted)}
.big{font-size:2.4rem;font-weight:700}
.score{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.lost{color:var(--accent)}.kept{color:var(--ok)}
footer{max-width:52rem;margin:2rem auto;padding:0 1rem;color:var(--muted);font-size:.85rem}
"""

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{label} · hashsession demo</title><link rel="stylesheet" href="/style.css"></head>
<body><header><a class="brand" href="/">hashsession demo</a><nav>{nav}</nav>
<div class="who">{who}</div></header>
<main id="page-{name}"><h1>{label}</h1><p class="proves" id="proves">{proves}</p>
{messages}{body}</main>
<footer>A demo: no passwords, and a signing key drawn at each start (restarting it signs
everyone out). This session's id starts <code id="sid">{sid}</code>: pages show only the
first 8 characters, because an id is a secret, whoever holds it <em>is</em> you
(the cookie holding it is HttpOnly, and Redis keys hold a digest of it).</footer>
</body></html>
"""


def e(value: object) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def short_id(session_id: str | None) -> str:
    """The first 8 characters of an id and an ellipsis (never the whole secret)."""
    return f"{session_id[:8]}…" if session_id else "(none yet)"


@dataclass
class Frame:
    """What every page shows around its body: who, which session, its messages."""

    path: str
    csrf: str
    user: str | None = None
    sid: str | None = None
    flashes: Sequence[str] = ()
    notices: list[str] = field(default_factory=list)


def form(frame: Frame, action: str, inner: str, *, cls: str = "", ident: str = "") -> str:
    """A POST form to ``action`` carrying this session's CSRF token."""
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' id="{ident}"' if ident else ""
    return (
        f'<form method="post" action="{e(action)}"{attrs}>'
        f'<input type="hidden" name="csrf" value="{e(frame.csrf)}">{inner}</form>'
    )


def render(frame: Frame, body: str, *, path: str | None = None) -> str:
    """The whole page: layout, nav bar, messages, and ``body``."""
    here = path or frame.path
    label, proves = _PAGE.get(here, ("Not found", "There is no such page."))
    if here == "/403":
        label, proves = "Forbidden", "A POST without this session's CSRF token changes nothing."
    nav = "".join(
        f'<a href="{p}"{" class=here" if p == here else ""}>{e(name)}</a>' for p, name, _ in PAGES
    )
    if frame.user:
        button = '<button class="quiet" id="signout">Sign out</button>'
        who = f'signed in as <b id="user">{e(frame.user)}</b>' + form(frame, "/logout", button)
    else:
        who = '<span id="user-none">not signed in</span>'
    messages = "".join(f'<p class="flash notice">{e(n)}</p>' for n in frame.notices)
    messages += "".join(f'<p class="flash" data-flash>{e(m)}</p>' for m in frame.flashes)
    return _LAYOUT.format(
        label=e(label),
        proves=e(proves),
        nav=nav,
        who=who,
        messages=messages,
        body=body,
        name=e(here.strip("/") or "home"),
        sid=e(short_id(frame.sid)),
    )


# ---------------------------------------------------------------- page bodies


def home() -> str:
    cards = "".join(
        f'<a class="card" href="{p}"><h2>{e(label)}</h2>{e(proves)}</a>'
        for p, label, proves in PAGES[1:]
    )
    return (
        "<p>Sign in as anyone (no password, this is a demo), then open this page in a second"
        " browser, sign in there as the same name, and try <a href=/sessions>Your sessions</a>."
        f'</p><div class="cards">{cards}</div>'
    )


def login_page(frame: Frame, signin: dict[str, Any] | None) -> str:
    if frame.user:
        out = f'<div class="card"><p>You are signed in as <b>{e(frame.user)}</b>.</p>'
    else:
        fields = (
            '<label>User name <input name="user" id="username" required maxlength="40"'
            ' autocomplete="off"></label> <button id="signin">Sign in</button>'
        )
        out = '<div class="card"><p>Any name will do: there are no passwords in this demo.</p>'
        out += form(frame, "/login", fields, ident="signin-form")
    if signin:
        out += (
            f"<p>At sign-in as <b>{e(signin['user'])}</b> the session id changed from"
            f' <code id="id-before">{e(signin["before"])}</code> to'
            f' <code id="id-after">{e(signin["after"])}</code>: the old id no longer works,'
            " while the cart and counter came along. (The first 4 characters stay: they pick"
            " the Redis Cluster slot; the 43 after them are drawn anew.)</p>"
        )
    out += (
        f"<p>Session id now: <code id='id-now'>{e(short_id(frame.sid))}</code>"
        " (only its first 8 characters: whoever holds the whole id is signed in as you).</p>"
    )
    return out + "</div>"


def cart_page(frame: Frame, cart: list[Any], qty: dict[str, Any]) -> str:
    options = "".join(f"<option>{e(item)}</option>" for item in CATALOG)
    counts = "".join(f"<option>{n}</option>" for n in range(1, 6))
    add = (
        f'<select name="item" id="item">{options}</select> &times;'
        f' <select name="qty" id="qty">{counts}</select> <button id="add">Add</button>'
    )
    rows = "".join(
        f'<tr><td class="item">{e(item)}</td><td>{e(qty.get(str(item), 1))}</td><td>'
        + form(
            frame,
            "/cart/remove",
            f'<input type="hidden" name="item" value="{e(item)}">'
            f'<button class="quiet" id="remove-{e(item)}">Remove</button>',
            cls="inline",
        )
        + "</td></tr>"
        for item in cart
    )
    table = (
        f'<table id="cart"><tr><th>item</th><th>qty</th><th></th></tr>{rows}</table>'
        if cart
        else '<p id="cart-empty">Your cart is empty.</p>'
    )
    return (
        f'<div class="card">{form(frame, "/cart/add", add)}</div><div class="card">{table}'
        "<p>Add is <code>session.add('cart', item)</code> plus"
        " <code>session.set_in('qty', item, n)</code>; remove is"
        " <code>session.discard</code> plus <code>session.delete_in</code>: each one script"
        " on one field, run inside Redis.</p></div>"
    )


def counter_page(frame: Frame, count: int) -> str:
    plus = form(
        frame, "/counter", '<button id="incr" name="by" value="1">+1</button>', cls="inline"
    )
    minus = form(
        frame,
        "/counter",
        '<button class="quiet" id="decr" name="by" value="-1">&minus;1</button>',
        cls="inline",
    )
    return (
        f'<div class="card"><p class="big" id="count">{count}</p>{plus} {minus}'
        "<p><code>session.incr('count', by)</code> is one <code>HINCRBY</code> on this"
        " session's hash: open two tabs and click in both, no click is lost.</p></div>"
    )


def flash_page(frame: Frame) -> str:
    send = (
        '<label>Message <input name="message" id="message" maxlength="200" required></label>'
        ' <button id="send">Send with the token</button>'
    )
    no_token = '<button class="danger" id="no-token">POST without a token</button>'
    wrong = (
        '<input type="hidden" name="csrf" value="not-the-token">'
        '<button class="danger" id="wrong-token">POST with a wrong token</button>'
    )
    return (
        f'<div class="card">{form(frame, "/flash", send)}<p>The message is appended to the'
        " list <code>flash</code> in the session (<code>session.append</code>) and shown on"
        " the next page, which takes it with one atomic <code>session.pop('flash')</code>:"
        " two tabs never both show it, nor lose it.</p></div>"
        '<div class="card"><p>Every form carries this session\'s token, kept in a reserved'
        " field and compared in constant time (<code>hmac.compare_digest</code>). These two"
        " forms leave it out or send another one; both get 403 and change nothing.</p>"
        f'<form method="post" action="/flash" class="inline"><input type="hidden"'
        f' name="message" value="forged">{no_token}</form> '
        f'<form method="post" action="/flash" class="inline"><input type="hidden"'
        f' name="message" value="forged">{wrong}</form></div>'
    )


def forbidden_page() -> str:
    return (
        '<div class="card flash error" id="forbidden">403 Forbidden: this form did not carry'
        " this session's CSRF token, so nothing was changed. A page on another site could"
        " have sent it.</div><p><a href=/flash>Back to the form</a></p>"
    )


def sessions_page(frame: Frame, sessions: Iterable[SessionInfo]) -> str:
    if not frame.user:
        return (
            '<div class="card" id="signed-out"><p>Sign in first, then sign in as the same'
            " name in a second browser (or a private window): both sessions show up here."
            ' <a href="/login">Sign in</a></p></div>'
        )
    rows = []
    for n, info in enumerate(sessions):
        if info.current:
            action = '<b class="this">this browser</b>'
        else:
            action = form(
                frame,
                "/sessions/revoke",
                f'<input type="hidden" name="handle" value="{e(info.handle)}">'
                f'<button class="danger revoke" id="revoke-{n}">Revoke</button>',
            )
        rows.append(
            f'<tr class="session"><td>{info.created:%H:%M:%S}</td>'
            f"<td>{info.last_seen:%H:%M:%S}</td><td>{info.expires_at:%H:%M:%S}</td>"
            f"<td>{action}</td></tr>"
        )
    others = form(
        frame,
        "/sessions/revoke-others",
        '<button class="quiet" id="revoke-others">Sign out everywhere else</button>',
    )
    return (
        f'<div class="card"><p>Sessions of <b>{e(frame.user)}</b>'
        " (<code>store.sessions_of(user, current=session)</code>; times in UTC):</p>"
        '<table id="sessions"><tr><th>created</th><th>last seen</th><th>expires</th>'
        f"<th></th></tr>{''.join(rows)}</table></div>"
        f'<div class="card">{others}<p>Revoke is <code>store.revoke(handle, user_id=...)</code>'
        " and the button above <code>store.revoke_user(user, keep=session)</code>: the"
        " sessions are deleted from Redis, so the other browser is signed out on its next"
        " page. A handle names a session without being its id.</p></div>"
    )


_POLL = """<script>
async function poll(){const r=await fetch('/live.json',{cache:'no-store'});if(!r.ok)return;
const d=await r.json();document.getElementById('pttl').textContent=d.pttl;
const rows=document.getElementById('fields');rows.replaceChildren(...d.rows.map(f=>{
const tr=document.createElement('tr');if(f[3])tr.className='reserved';
f.slice(0,3).forEach((t,i)=>{const td=document.createElement('td');
if(i<2){const c=document.createElement('code');c.textContent=t;td.append(c)}
else td.textContent=t;tr.append(td)});return tr}))}
setInterval(poll,2000);
</script>"""


def live_page(raw: RawHash) -> str:
    if raw.key is None:
        return '<div class="card"><p id="no-key">No session yet.</p></div>'
    rows = "".join(
        f"<tr{' class=reserved' if r.reserved else ''}><td><code>{e(r.field)}</code></td>"
        f"<td><code>{e(r.value)}</code></td><td>{e(r.label)}</td></tr>"
        for r in raw.rows
    )
    return (
        f'<div class="card"><p>Key <code id="key">{e(raw.key)}</code> (a digest of the id,'
        " so listing keys reveals no usable id). <code>PTTL</code>:"
        f' <b id="pttl">{raw.pttl}</b> ms, set back to the idle timeout by the first command'
        " of each request that uses the session; this page reads with a plain client, so"
        " watching does not slide it (refreshed every 2 s).</p>"
        "<table><thead><tr><th>field</th><th>value</th><th>what</th></tr></thead>"
        f'<tbody id="fields">{rows}</tbody></table>'
        "<p>Fields starting with a NUL byte (shown <code>\\x00</code>) are reserved:"
        " no session key can name them, and <code>len()</code>, <code>keys()</code> and"
        f" <code>dict(session)</code> leave them out.</p></div>{_POLL}"
    )


def race_page(frame: Frame, result: dict[str, Any] | None, count: int) -> str:
    button = f'<button id="race">Fire {count} concurrent increments at each</button>'
    out = (
        f'<div class="card">{form(frame, "/race", button)}<p>Each of {count} threads acts as'
        " a request that reads its session, works for 2 ms, and counts one more hit."
        " <b>hashsession</b>: <code>session.incr('race')</code> on this session. <b>Naive"
        " (the foil, written in this demo, not part of hashsession)</b>: <code>GET</code>"
        " the whole session as one JSON blob, add one, <code>SET</code> it back, as"
        " load-then-save session libraries do.</p></div>"
    )
    if result:
        expected = result["expected"]

        def side(name: str, ident: str) -> str:
            got = int(result[ident])
            cls = "kept" if got == expected else "lost"
            return (
                f'<div class="card"><h2>{e(name)}</h2><p>expected {expected}, got'
                f' <span class="big {cls}" id="race-{ident}">{got}</span></p>'
                f'<p class="{cls}">lost <b id="lost-{ident}">{expected - got}</b></p></div>'
            )

        out += (
            f'<div class="score">{side("hashsession", "hashsession")}'
            f"{side('naive load-then-save (foil)', 'naive')}</div>"
        )
    return out
