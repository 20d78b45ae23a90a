"""Cached public reads with ETags: lists and pages are rebuilt only after a write (issue 15).

Every committed write bumps ``catalogue_state.generation`` (``UnitOfWork.commit``). A public GET
(API lists and objects, pages, signed image lists) is answered from the bytes made for the current
generation, with a strong ``ETag`` of those bytes; a client that sends it back in ``If-None-Match``
gets ``304 Not Modified`` (also after a write that did not change that answer).

The generation is read from the database when this process committed a write (at once) and at most
every ``recheck`` seconds otherwise, so a write by another process on the same database (an
in-process publish) is visible within that time. Pages also show how close versions are to expiry,
so their entries live at most ``page_ttl`` seconds. A route whose answer goes stale at a known time
without any write (a list due for re-signing, a layered version whose base expires) says when in
``X-Vmi-Cache-Until``. Memory is bounded (entries and bytes, LRU).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.catalogue.uow import local_writes

API_PREFIXES = ("/api/v1/appliances", "/api/v1/images", "/api/v1/vos")  # public reads only (no users, tokens)
PAGE_PREFIXES = ("/appliances", "/vos")
LIST_PREFIX = "/vo/"  # signed image lists: cached only as long as the route allows (CACHE_UNTIL)
CACHE_UNTIL = b"x-vmi-cache-until"  # a route's limit (Unix time) on how long its answer may be served; never sent
MAX_ENTRY_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Entry:
    generation: int
    expires: float
    etag: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def cacheable(path: str) -> bool:
    return path == "/" or path.startswith((*API_PREFIXES, *PAGE_PREFIXES, LIST_PREFIX))


def _matches(if_none_match: bytes, etag: bytes) -> bool:
    tags = [t.strip().removeprefix(b"W/") for t in if_none_match.split(b",")]
    return b"*" in tags or etag in tags


class ResponseCache:
    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        recheck: float = 0.5,
        page_ttl: float = 60.0,
        max_entries: int = 1024,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.app = app
        self.engine = engine
        self.recheck = recheck
        self.page_ttl = page_ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str, bytes], Entry] = OrderedDict()
        self.size = 0
        self._generation = -1
        self._seen_writes = -1
        self._checked = 0.0

    async def generation(self) -> int | None:
        """The database's write generation (re-read after a local write or every ``recheck`` s)."""
        now = time.monotonic()
        writes = local_writes()
        if writes != self._seen_writes or now >= self._checked + self.recheck:
            value = await anyio.to_thread.run_sync(self._read)  # never block the event loop on the database
            if value is None:
                return None
            self._generation, self._seen_writes, self._checked = value, writes, now
        return self._generation

    def _read(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                value = conn.execute(text("SELECT generation FROM catalogue_state WHERE id = 1")).scalar()
        except SQLAlchemyError:
            return None  # no cache while the database cannot say; the request itself will report why
        return None if value is None else int(value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("GET", "HEAD") or not cacheable(scope["path"]):
            await self.app(scope, receive, send)
            return
        generation = await self.generation()
        if generation is None:
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("query_string", b""))
        entry = self.entries.get(key)
        if entry is not None and entry.generation == generation and entry.expires > time.monotonic():
            self.entries.move_to_end(key)
            await self._answer(scope, send, entry)
            return
        await self._fill(scope, receive, send, key, generation)

    async def _answer(self, scope: Scope, send: Send, entry: Entry) -> None:
        if_none_match = dict(scope["headers"]).get(b"if-none-match")
        if if_none_match is not None and _matches(if_none_match, entry.etag):
            headers = [(b"etag", entry.etag), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": entry.headers})
        body = b"" if scope["method"] == "HEAD" else entry.body
        await send({"type": "http.response.body", "body": body})

    async def _fill(self, scope: Scope, receive: Receive, send: Send, key: tuple[str, bytes], generation: int) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app({**scope, "method": "GET"}, receive, capture)  # a HEAD fills the cache like a GET
        assert start is not None, "the app sent no response"
        body = b"".join(chunks)
        sent = {k.lower(): v for k, v in start.get("headers", [])}
        headers = [h for h in start.get("headers", []) if h[0].lower() not in (b"etag", b"cache-control", CACHE_UNTIL)]
        if start["status"] != 200 or len(body) > MAX_ENTRY_BYTES:
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            return
        # the content decides the tag: after a write that did not change this answer, clients still get 304s
        etag = sent.get(b"etag") or b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        headers += [(b"etag", etag), (b"cache-control", b"no-cache")]
        is_list = scope["path"].startswith(LIST_PREFIX)
        ttl = float("inf") if is_list or scope["path"].startswith(API_PREFIXES) else self.page_ttl
        until = sent.get(CACHE_UNTIL)  # a list due again, a version whose base expires: the route says when
        if until is not None or is_list:
            ttl = min(ttl, float(until or b"0") - time.time())
        entry = Entry(generation, time.monotonic() + ttl, etag, headers, body)
        self._store(key, entry)
        await self._answer(scope, send, entry)

    def _store(self, key: tuple[str, bytes], entry: Entry) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(old.body)
        self.entries[key] = entry
        self.size += len(entry.body)
        while self.entries and (len(self.entries) > self.max_entries or self.size > self.max_bytes):
            _, dropped = self.entries.popitem(last=False)
            self.size -= len(dropped.body)
