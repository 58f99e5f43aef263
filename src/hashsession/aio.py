"""The asyncio flavour: ``AsyncSessionStore`` and ``AsyncSession`` on ``redis.asyncio``.

Same operations, same semantics and the same sans-I/O core as the sync
:class:`~hashsession.session.Session`; every method is awaitable. Dunder
methods cannot await, so the mapping syntax has named twins: ``get``/``set``/
``delete``/``has``/``length``/``keys`` stand for ``s[k]``, ``s[k] = v``,
``del s[k]``, ``k in s``, ``len(s)`` and ``iter(s)``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError

from hashsession.aionear import AsyncClusterLinks, AsyncTracker, cluster_mirror, link_settings
from hashsession.errors import ConfigurationError, ValueTypeError
from hashsession.nearcache import NearCache, NearLink
from hashsession.protocol import (
    AGAIN,
    BACKEND_ERRORS,
    CACHED,
    I64_MAX,
    I64_MIN,
    MISSING,
    After,
    Command,
    SessionCore,
    SessionView,
    Step,
    ValueEdit,
    dump_meta,
    load_meta,
    pairs_of,
)
from hashsession.session import ttl_ms
from hashsession.store import StoreBase, checked_client, reply_timeout
from hashsession.topology import AsyncClient, is_cluster
from hashsession.transport import apipeline, aresend
from hashsession.users import SessionInfo, UserId, arun, revoke, revoke_user, sessions_of, user_text
from hashsession.values import Recorder, adder

__all__ = ["AsyncSession", "AsyncSessionStore"]


def _from_url(url: str, socket_timeout: float) -> AsyncClient:
    """A new client for a URL of any topology (see :mod:`hashsession.topology`)."""
    from hashsession.topology import async_client

    return checked_client(async_client(url, socket_timeout=socket_timeout))  # type: ignore[no-any-return]


class _Clients:
    """One asyncio client per event loop for a URL (a client is bound to the loop it ran on).

    A ready client (a ``Redis``, one from Sentinel's ``master_for``, or a
    ``RedisCluster``) is used as it is, on whatever loop calls it.
    """

    def __init__(self, target: str | AsyncClient | None, socket_timeout: float) -> None:
        self.socket_timeout = socket_timeout
        if target is None:
            from hashsession.devserver import default_url

            target = default_url()
        self.url: str | None = None
        self.fixed: AsyncClient | None = None
        if isinstance(target, str):
            self.url = target
            # Made now to check the URL; it serves calls made outside any event loop.
            self.fixed = _from_url(target, socket_timeout)
        elif callable(getattr(target, "execute_command", None)):
            self.fixed = checked_client(target)
            self.url = None
        else:
            raise ConfigurationError(
                "redis", f"expected a URL or a redis.asyncio client, not {target!r}"
            )
        self.per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> AsyncClient:
        assert self.fixed is not None
        if self.url is None:
            return self.fixed
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.fixed
        client = self.per_loop.get(loop)
        if client is None:
            client = self.per_loop[loop] = _from_url(self.url, self.socket_timeout)
        return client


class AsyncSession(SessionView):
    """One request's session for asyncio code: every change is written when awaited."""

    __slots__ = ("_client", "_core", "_execute", "_late", "_opening")

    def __init__(self, core: SessionCore | Callable[[], SessionCore], client: AsyncClient) -> None:
        if isinstance(core, SessionCore):
            self._core, self._opening = core, None
        else:  # worked out when first needed (see SessionView)
            self._opening, self._late = core, False
        self._client = client
        self._execute: Callable[..., Awaitable[Any]] = client.execute_command

    # ------------------------------------------------------------ transport

    async def _send(self, cmd: Command | list[Command], key: str | None) -> Any:
        if isinstance(cmd, list):  # a write and its WAIT, or deletes and their unindexing
            try:
                return await apipeline(self._client, cmd, *self._core.config.patience)
            except BACKEND_ERRORS as exc:
                raise self._core.error(exc, key) from exc
        # The near cache's TTL refresh (core.link) goes through the pool here, not on the
        # tracking link: reading the link's reply would block the loop (hashsession.aionear).
        self._core.link = None
        try:
            return await self._execute(*cmd)
        except BACKEND_ERRORS as exc:
            return await self._resend(cmd, key, exc)

    async def _resend(self, cmd: Command, key: str | None, exc: Exception) -> Any:
        """As :meth:`Session._resend <hashsession.Session._resend>`."""
        # It may have changed the session: not cached (a script the server did not know
        # did not run: sent again with its source, its reply is as good as the first).
        if self._core.near is not None and not isinstance(exc, NoScriptError):
            self._core.near_drop()
        try:
            return await aresend(self._client, cmd, exc, *self._core.config.patience)
        except BACKEND_ERRORS as error:
            raise self._core.error(error, key) from error

    async def _run(self, plan: Callable[..., Step], key: str | None, *args: Any) -> Any:
        core = self._core
        while True:
            cmd, finish, value = plan(*args)
            if cmd is None:
                return value
            if core.before:
                await self._upkeep(core.before)
            if core.near is None:
                reply = await self._send(cmd, key)
            else:
                try:
                    reply = await self._send(cmd, key)
                finally:
                    core.near_sent(finish)
            if finish is None:
                return reply
            out = finish(reply)
            if out is not AGAIN:
                if core.after:
                    await self._upkeep(core.after)
                return out

    async def _run_critical(self, plan: Callable[..., Step], *args: Any) -> None:
        """As :meth:`Session._run_critical <hashsession.Session._run_critical>`."""
        await self._run(plan, None, *args)
        self._core.settle()

    async def _upkeep(self, queue: list[After]) -> None:
        """Send the commands a plan left before or after its step (a user's index)."""
        try:
            while queue:
                cmd, finish = queue.pop(0)
                reply = await self._send(cmd, None)
                if finish is not None:
                    finish(reply)
        finally:
            queue.clear()

    def __repr__(self) -> str:
        return f"<AsyncSession {self._core.state.value} id={'set' if self.id else None}>"

    # ---------------------------------------------------------------- reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; one ``HGET``."""
        core = self._core
        field = core.field(key)
        cmd = core.ready_get(field)
        if cmd is not None:  # the fast path of a live session: the plain command
            raw = cmd[1] if cmd[0] is CACHED else await self._send(cmd, field)
        else:
            raw = await self._run(core.plan_get, field, field)
        return default if raw is None else core.decode(field, raw)

    async def has(self, key: str) -> bool:
        """Whether ``key`` is set (``key in session``); one ``HEXISTS``."""
        core = self._core
        field = core.field(key)
        cmd = core.ready_has(field)
        if cmd is not None:
            return bool(cmd[1] if cmd[0] is CACHED else await self._send(cmd, field))
        return bool(await self._run(core.plan_has, field, field))

    async def keys(self) -> list[str]:
        """The keys, from one ``HKEYS``."""
        return list(await self._run(self._core.plan_keys, None))

    async def length(self) -> int:
        """How many keys the session holds (``len(session)``)."""
        return int(await self._run(self._core.plan_len, None))

    async def to_dict(self) -> dict[str, Any]:
        """Every key and value, from one ``HGETALL``."""
        raw = await self._run(self._core.plan_all, None)
        decode = self._core.decode
        return {k: decode(k, v) for k, v in raw.items()}

    async def items(self) -> list[tuple[str, Any]]:
        """Key/value pairs, from one ``HGETALL``."""
        return list((await self.to_dict()).items())

    async def values(self) -> list[Any]:
        """The values, from one ``HGETALL``."""
        return list((await self.to_dict()).values())

    async def get_many(self, *keys: str) -> list[Any]:
        """Several values (``None`` where missing) in one ``HMGET``."""
        fields = [self._core.field(k) for k in keys]
        raws = await self._run(self._core.plan_hmget, None, fields)
        decode = self._core.decode
        return [None if r is None else decode(f, r) for f, r in zip(fields, raws, strict=True)]

    # --------------------------------------------------------------- writes

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` now."""
        core = self._core
        field = core.field(key)
        raw = core.encode(field, value)
        cmd = core.ready_set(field, raw)
        if cmd is not None and core.written(await self._send(cmd, field)):
            return
        await self._run(core.plan_set, field, [(field, raw)])

    async def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store many keys in one ``HSET``: all of them or, on error, none."""
        pairs = pairs_of(self._core, other)
        if kwargs:
            pairs += pairs_of(self._core, kwargs)
        if pairs:
            await self._run(self._core.plan_set, pairs[0][0], pairs)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` if present; whether it was."""
        core = self._core
        field = core.field(key)
        cmd = core.ready_delete(field)
        if cmd is not None:
            return core.deleted(await self._send(cmd, field))
        return bool(await self._run(core.plan_delete, field, field))

    async def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if missing) with ``HINCRBY``."""
        core = self._core
        field = core.field(key)
        if type(amount) is not int or not I64_MIN <= amount <= I64_MAX:
            core.int_amount(field, amount)  # raises, naming the key
        return int(await self._incr(field, amount))

    async def incr_float(self, key: str, amount: float = 1.0) -> float:
        """Add ``amount`` to the number under ``key`` with ``HINCRBYFLOAT``."""
        core = self._core
        field = core.field(key)
        return float(await self._incr(field, core.float_amount(field, amount)))

    async def _incr(self, field: str, amount: int | float) -> Any:
        bound = self._core.config.bound_codec
        if bound is None:
            return await self._hincr(field, amount)
        if bound.counter_field(field):
            try:
                return await self._hincr(field, amount)
            except ValueTypeError:  # a sealed number, which the server cannot add to
                pass
        return await self.apply(field, adder(field, amount), 0)

    async def _hincr(self, field: str, amount: int | float) -> Any:
        core = self._core
        cmd = core.ready_incr(field, amount)
        if cmd is not None:
            reply = await self._send(cmd, field)
            if core.written(reply):
                return reply
        return await self._run(core.plan_incr, field, field, amount)

    async def setdefault(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, storing ``default`` first if missing; one atomic step."""
        core = self._core
        field = core.field(key)
        raw = await self._run(core.plan_setdefault, field, field, core.encode(field, default))
        return core.decode(field, raw)

    async def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its value, atomically."""
        field = self._core.field(key)
        raw = await self._run(self._core.plan_pop, field, field)
        if raw is None:
            if default is MISSING:
                raise KeyError(key)
            return default
        return self._core.decode(field, raw)

    async def clear(self) -> None:
        """End the session, as :meth:`invalidate` does: one ``DEL``; the response expires
        its cookie, and a later write starts a new session under a new id."""
        await self.invalidate()

    async def compare_and_set(
        self, expected: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> bool:
        """Apply ``changes`` only if every key in ``expected`` holds that value (one round trip)."""
        core = self._core
        return bool(
            await self._run(core.plan_cas, None, core.raw_items(expected), core.raw_items(changes))
        )

    # ---------------------------------------------------------- value edits

    async def append(self, key: str, item: Any, *, max_len: int | None = None) -> int:
        """Append ``item`` to the list under ``key``, atomically; as :meth:`Session.append`."""
        return int(await self._edit_value(self._core.edit_append(key, (item,), max_len)))

    async def extend(self, key: str, items: Iterable[Any], *, max_len: int | None = None) -> int:
        """Append every item of ``items`` at once; as :meth:`Session.extend`."""
        return int(await self._edit_value(self._core.edit_append(key, items, max_len)))

    async def add(self, key: str, item: Any) -> bool:
        """Append ``item`` unless it is in the list; as :meth:`Session.add`."""
        return bool(await self._edit_value(self._core.edit_add(key, item)))

    async def discard(self, key: str, item: Any) -> bool:
        """Remove ``item`` from the list; as :meth:`Session.discard`."""
        return bool(await self._edit_value(self._core.edit_discard(key, item)))

    async def set_in(self, key: str, sub: str, value: Any) -> None:
        """Set ``sub`` in the dict under ``key``; as :meth:`Session.set_in`."""
        await self._edit_value(self._core.edit_set_in(key, sub, value))

    async def delete_in(self, key: str, sub: str) -> bool:
        """Remove ``sub`` from the dict under ``key``; as :meth:`Session.delete_in`."""
        return bool(await self._edit_value(self._core.edit_delete_in(key, sub)))

    async def _edit_value(self, edit: ValueEdit) -> Any:
        if edit.plan is not None:
            return await self._run(edit.plan, edit.field)
        assert edit.change is not None
        return await self._optimistic(edit.field, edit.change)

    async def _optimistic(self, field: str, change: Callable[[bytes | None], Any]) -> Any:
        """As :meth:`Session._optimistic`, waiting with ``asyncio.sleep``."""
        core = self._core
        retries = core.retries()
        while True:
            raw = await self._run(core.plan_get, field, field)
            new_raw, result = change(raw)
            if new_raw is None or await self._run(
                core.plan_cas, field, [(field, raw)], [(field, new_raw)]
            ):
                return result
            await asyncio.sleep(retries.wait(field))

    # ----------------------------------------------------- optimistic edits

    @asynccontextmanager
    async def edit(self, key: str, default: Any = None) -> AsyncIterator[Any]:
        """``async with session.edit("cart", []) as cart:``, as :meth:`Session.edit`."""
        core = self._core
        field = core.field(key)
        raw = await self._run(core.plan_get, field, field)
        recorder = Recorder(core.initial_value(field, raw, default))
        yield recorder
        retries = core.retries()
        while True:
            new_raw = core.encode(field, recorder.target)
            if await self._run(core.plan_cas, field, [(field, raw)], [(field, new_raw)]):
                return
            await asyncio.sleep(retries.wait(key))
            raw = await self._run(core.plan_get, field, field)
            recorder = recorder.replay_on(core.initial_value(field, raw, default))

    async def apply(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Set ``key`` to ``fn(current value)`` atomically, rerunning ``fn`` on conflict."""
        core = self._core
        field = core.field(key)

        def change(raw: bytes | None) -> tuple[bytes, Any]:
            new = fn(core.initial_value(field, raw, default))
            return core.encode(field, new), new

        return await self._optimistic(field, change)

    # ------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------- metadata
    # Reserved fields for adapters (flash queues, CSRF token, owner): same hash, same TTL,
    # hidden from iteration and len(), always JSON whatever the codec.

    async def meta_get(self, name: str) -> Any:
        """Metadata ``name``, or ``None``; one ``HGET``."""
        field = self._core.meta_field(name)
        return load_meta(await self._run(self._core.plan_get, None, field), name)

    async def meta_set(self, name: str, value: Any) -> None:
        """Store metadata ``name`` now."""
        field = self._core.meta_field(name, write=True)
        await self._run(self._core.plan_set, None, [(field, dump_meta(value, name))])

    async def meta_setdefault(self, name: str, value: Any) -> Any:
        """Metadata ``name``, storing ``value`` first if it is unset; one atomic step."""
        field = self._core.meta_field(name, write=True)
        raw = await self._run(self._core.plan_setdefault, None, field, dump_meta(value, name))
        return load_meta(raw, name)

    async def meta_pop(self, name: str) -> Any:
        """Remove metadata ``name`` and return its raw bytes (or ``None``), atomically."""
        return await self._run(self._core.plan_pop, None, self._core.meta_field(name, write=True))

    async def meta_push(self, name: str, item: Any, unique: bool = False) -> bool:
        """Append ``item`` to queue ``name`` atomically; ``unique`` skips one already queued."""
        field = self._core.meta_field(name, write=True)
        return bool(
            await self._run(self._core.plan_push, None, field, dump_meta(item, name), unique)
        )

    async def set_cookie_lifetime(self, seconds: int) -> None:
        """Give this session's cookie a lifetime of its own (see ``Session``'s)."""
        await self._run(self._core.plan_lifetime, None, seconds)

    async def touch(self, ttl: int | float | timedelta | None = None) -> None:
        """Slide the idle timeout now; with ``ttl``, make it this session's timeout from now on."""
        await self._run(self._core.plan_touch, None, None if ttl is None else ttl_ms(ttl))

    async def adjust_timeout(self, ttl: int | float | timedelta) -> None:
        """Change this session's idle timeout for the rest of its life."""
        await self.touch(ttl)

    async def regenerate(self) -> None:
        """Give the session a new id, keeping its data and expiry; the old id stops working."""
        moved_from = self._core.key
        await self._run_critical(self._core.plan_regenerate)
        await self._rebind(moved_from)

    async def invalidate(self) -> None:
        """Delete the session now; the response expires its cookie."""
        await self._run_critical(self._core.plan_invalidate)

    async def login(self, user_id: UserId) -> None:
        """Make ``user_id`` the owner under a new id (data and expiry kept), and index it.

        Two round trips: the rename, then the owner's index (one more per session
        evicted by ``max_sessions_per_user``, and one when another user owned it).
        """
        moved_from = self._core.key
        await self._run_critical(self._core.plan_login, user_text(user_id))
        await self._rebind(moved_from)

    async def _rebind(self, old_key: str | None) -> None:
        """After a move from ``old_key``, bind the values to the new key, as
        :meth:`Session._rebind`."""
        core = self._core
        if core.config.bound_codec is None or old_key is None or core.key in (None, old_key):
            return
        retries = core.retries()
        while True:
            expected, changes = core.rebound(await self._run(core.plan_all, None), old_key)
            if not changes or await self._run(core.plan_cas, None, expected, changes):
                return
            await asyncio.sleep(retries.wait("(the values sealed for the old id)"))

    async def save(self) -> None:
        """Nothing to do: every change was written when it was made."""


class AsyncSessionStore(StoreBase):
    """The asyncio store: :class:`~hashsession.SessionStore`'s settings, on ``redis.asyncio``."""

    #: The class :meth:`open` makes sessions of; adapters subclass it.
    session_class: type[AsyncSession] = AsyncSession

    def __init__(self, *, redis: str | AsyncClient | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self._check_cookie_security(development=redis is None)
        self._clients = _Clients(redis, reply_timeout(self.config))
        if is_cluster(self._clients.fixed):
            self._on_cluster()
        self._unwatch = self._follow(self._clients.fixed)
        self._tracker: AsyncTracker | AsyncClusterLinks | None = None
        if self.config.near_cache is not None:
            try:
                self._near = self._start_near(self._clients.fixed)
            except BaseException:
                self._unwatch()
                raise

    @property
    def client(self) -> AsyncClient:
        """The client for the running event loop (a URL gets one client per loop)."""
        return self._clients.current()

    def open(
        self, cookie_header: str | None = None, *, plain_local: bool | Callable[[], bool] = False
    ) -> AsyncSession:
        """The session for a request, given its ``Cookie`` header; lazy, costs no round trip.

        ``plain_local=True`` says the request came over plain http to a loopback host,
        where the default cookie policy leaves ``Secure`` out.
        """
        session_class = self.session_class
        if session_class.__init__ is AsyncSession.__init__:  # its core is worked out when needed
            opening = partial(self.core_for, cookie_header, plain_local=plain_local)
            return session_class(opening, self.client)
        return session_class(self.core_for(cookie_header, plain_local=plain_local), self.client)

    def open_id(self, cookie_value: str | None, *, plain_local: bool = False) -> AsyncSession:
        """The session for a bare cookie value."""
        core = self.core_for_value(cookie_value, plain_local=plain_local)
        return self.session_class(core, self.client)

    async def sessions_of(
        self, user_id: UserId, current: AsyncSession | str | None = None
    ) -> list[SessionInfo]:
        """``user_id``'s live sessions, most recently seen first (see :mod:`hashsession.users`).

        ``current`` (a session or an id) is flagged ``current=True`` in the list.
        """
        return await arun(
            self.client, sessions_of(self.config, user_id, current), *self.config.patience
        )

    async def revoke(self, id_or_handle: str, *, user_id: UserId | None = None) -> bool:
        """Delete one session, by id or by a :class:`SessionInfo` handle; whether it lived.

        With ``user_id``, only a session of that user is deleted.
        """
        return await arun(
            self.client, revoke(self.config, id_or_handle, user_id), *self.config.patience
        )

    async def revoke_user(self, user_id: UserId, keep: AsyncSession | str | None = None) -> int:
        """Delete every session of ``user_id`` except ``keep`` (a session, id or handle).

        "Log out everywhere else"; returns how many live sessions were deleted.
        """
        return await arun(
            self.client, revoke_user(self.config, user_id, keep), *self.config.patience
        )

    def _start_near(self, client: Any) -> NearLink:
        """The near cache and its tracking link(s), kept by a task on the running loop
        (:mod:`hashsession.aionear`): a RESP3 connection to the pool's server or to the
        Sentinel master (following its switches), or one to every node of a cluster."""
        settings = self.config.near_cache
        assert settings is not None
        cache = NearCache(settings.max_sessions, settings.max_bytes)
        prefix = self.config.prefix
        link: AsyncTracker | AsyncClusterLinks
        try:
            if is_cluster(client):
                mirror, connect = cluster_mirror(client)
                link = AsyncClusterLinks(
                    cache, mirror, connect, prefix, clients=self._cluster_clients
                )
            else:
                link = AsyncTracker(cache, self._link_maker(client), prefix, fence=self._watch)
            link = link.start()
        except TypeError as exc:
            raise ConfigurationError("near_cache", str(exc)) from None
        except (redis.RedisError, OSError) as exc:
            raise ConfigurationError(
                "near_cache", f"needs client tracking (Redis 6.0+ or Valkey): {exc}"
            ) from exc
        self._tracker = link
        return NearLink(cache, link, b"%d" % round(settings.refresh_share * 1000))

    def _link_maker(self, client: Any) -> Callable[[], Any]:
        """How to make a sync RESP3 link to the server ``client``'s pool talks to: on
        Sentinel, to the master this process follows now (:meth:`Watch.locate`)."""
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            raise TypeError("the client has no connection pool")
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
        kind, settings = link_settings(pool.connection_class, kwargs)
        if not isinstance(pool, SentinelConnectionPool):
            return lambda: kind(**settings)
        watch = self._watch
        if watch is None or not pool.is_master:  # follow() gives every master pool one
            raise TypeError("needs the Sentinel master's client (not a replica's)")
        locate = watch.locate
        if getattr(pool, "watch", None) is not watch:
            # Its idle connections keep reading the old master after a switch (the
            # listener cannot close them from its thread): values cached off it would
            # outlive the failover, as no link reports the old master's data.
            raise TypeError(
                "on Sentinel, the asyncio store needs a redis+sentinel:// URL (a ready"
                " master_for() client reads the old master for a while after a failover)"
            )

        def to_master() -> Any:
            host, port = locate()
            return kind(**{**settings, "host": host, "port": port})

        return to_master

    def _cluster_clients(self) -> list[Any]:
        """The asyncio cluster clients sessions use (the near cache checks their nodes)."""
        return [self._clients.fixed, *list(self._clients.per_loop.values())]

    async def aclose(self) -> None:
        """Close the running loop's client; one built from a URL also drops its pool.

        On Sentinel, the store stops following the master (the listener thread ends
        with the last store using it). The near cache's tracking link and its task stop.
        """
        if self._tracker is not None:
            await self._tracker.aclose()
        client = self.client
        self._unwatch()
        for other in list(self._clients.per_loop.values()):
            unwatch = getattr(getattr(other, "connection_pool", None), "unwatch", None)
            if unwatch is not None:
                unwatch()
        if self._clients.url is not None and isinstance(client, aioredis.Redis):
            # Built with a pool of our own, which Redis.aclose() alone leaves connected.
            await client.aclose(close_connection_pool=True)
        else:
            await client.aclose()
