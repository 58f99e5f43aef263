"""Another process that changes sessions, for the near cache's never-stale tests.

:class:`Writer` runs a sync store without the near cache in a child process; each
:meth:`~Writer.ask` sends it one change and returns once Redis acknowledged it.
"""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType

#: One change per line of stdin ("set COOKIE N", "del COOKIE 0", "revoke USER 0");
#: "ok" once Redis acknowledged it.
_SCRIPT = r"""
import sys
from hashsession import SessionStore
store = SessionStore(redis=sys.argv[1], ttl=100, user_key="k" * 32)
for line in sys.stdin:
    op, arg, n = line.split()
    if op == "set":
        store.open(arg)["cart"] = int(n)
    elif op == "del":
        store.open(arg).invalidate()
    else:
        store.revoke_user(arg)
    print("ok", flush=True)
"""


class Writer:
    """The writer process on ``url``, for the length of a ``with`` block."""

    def __init__(self, url: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> None:
        """Make one change; returns once the writer has Redis's acknowledgement."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        assert stdout.readline().strip() == "ok"

    def change(self, op: str, cookie: str, n: int) -> None:
        """``op`` "set" stores ``n`` under "cart"; anything else logs the session out."""
        self.ask(f"set {cookie} {n}" if op == "set" else f"del {cookie} 0")

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=20)
