"""The gateway's keep-alive connections to upstream for the writes it forwards.

A write through the gateway waits for two round trips to upstream's node in the worst case
(forward, then replay); what the client feels is the gateway's own time around them. The
general-purpose client (aiohttp) costs ~0.5 ms of CPU per request in its request and response
objects; a forwarded write needs none of that: one HTTP/1.1 request out, one buffered answer
back. So writes go through this small pool of asyncio stream connections; reads, which stream
answers of any size back to the client, keep the general client.

Two rules keep it safe:

* A connection is reused only when upstream left it open (no FIN seen, nothing unread) and the
  previous answer said so (HTTP/1.1 without ``Connection: close``, a framed body).
* A request is never sent again by this module. If a reused connection turns out dead, the
  caller gets :class:`UpstreamFailed`, exactly as for a node that is down: the write is in the
  log, and the replay worker decides how to apply it (idempotently), not a blind resend here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

# Larger heads than this are not an OpenSearch/Elasticsearch answer to a write.
MAX_HEAD_BYTES: Final = 128 * 1024
# An idle connection older than this is closed rather than reused: proxies and load balancers
# in front of a cluster commonly drop idle connections after 60 s.
IDLE_KEEP_S: Final = 50.0
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_TOKEN_FORBIDDEN: Final = frozenset(" \t\r\n\x00:")


class UpstreamFailed(Exception):
    """No whole answer came back: not connected, reset, timed out, or a malformed answer."""


class UnsendableRequest(ValueError):
    """The request cannot be written as HTTP/1.1 (a control character in a header, say)."""


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


# -- the wire format (pure) --------------------------------------------------------------------


def encode_request(method: str, target: str, host: str, headers: Mapping[str, str],
                   body: bytes) -> bytes:
    """One HTTP/1.1 request with a ``Content-Length`` body; :class:`UnsendableRequest` for
    what would let a header or the target be split (CR, LF, NUL, spaces in the target)."""
    if not method.isalpha() or not method.isascii():
        raise UnsendableRequest(f"invalid method {method!r}")
    if not target.startswith("/") or any(c in target for c in " \t\r\n\x00"):
        raise UnsendableRequest(f"invalid request target {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not name or any(c in _TOKEN_FORBIDDEN for c in name):
            raise UnsendableRequest(f"invalid header name {name!r}")
        if any(c in "\r\n\x00" for c in value):
            raise UnsendableRequest(f"invalid value of header {name}")
        lowered = name.lower()
        if lowered in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # framing is this module's: the body it holds, on a kept-alive connection
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise UnsendableRequest(f"a header is not latin-1: {exc}") from exc
    return head + body


@dataclass(frozen=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def connection_tokens(self) -> set[str]:
        return {token.strip().lower() for key, value in self.headers
                if key.lower() == "connection" for token in value.split(",")}


def parse_head(head: bytes) -> ResponseHead:
    """Status line and headers of an answer (``head`` ends with the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
        raise UpstreamFailed(f"malformed answer head: {exc}") from exc
    lines = text.split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise UpstreamFailed(f"malformed status line {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError as exc:
        raise UpstreamFailed(f"malformed status line {lines[0][:80]!r}") from exc
    if not 100 <= status <= 599:
        raise UpstreamFailed(f"status {status} out of range")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise UpstreamFailed(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return ResponseHead(status_line[0], status, status_line[2] if len(status_line) > 2 else "",
                        headers)


@dataclass(frozen=True)
class Framing:
    """How the answer's body ends: ``length`` bytes, chunks, or the connection's close."""

    kind: str  # "none", "length", "chunked" or "close"
    length: int = 0


def body_framing(method: str, head: ResponseHead) -> Framing:
    if method == "HEAD" or head.status in _NO_BODY_STATUSES or 100 <= head.status < 200:
        return Framing("none")
    encoding = head.header("transfer-encoding")
    if encoding is not None:
        if encoding.lower().split(",")[-1].strip() == "chunked":
            return Framing("chunked")
        return Framing("close")
    length = head.header("content-length")
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise UpstreamFailed(f"malformed Content-Length {length!r}")
        return Framing("length", int(next(iter(values))))
    return Framing("close")


def reusable(head: ResponseHead, framing: Framing) -> bool:
    """Whether the connection may carry the next request after this answer."""
    if framing.kind == "close":
        return False
    tokens = head.connection_tokens()
    if head.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def read_body(reader: asyncio.StreamReader, framing: Framing) -> bytes:
    if framing.kind == "none":
        return b""
    if framing.kind == "length":
        return await reader.readexactly(framing.length) if framing.length else b""
    if framing.kind == "close":
        return await reader.read()
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise UpstreamFailed(f"malformed chunk size {size_text[:20]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers: not forwarded
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise UpstreamFailed("a chunk does not end with CRLF")


# -- the pool ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self, now: float) -> bool:
        # A FIN from upstream while idle shows as EOF once the loop has read it.
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and now - self.idle_since < IDLE_KEEP_S)

    def close(self) -> None:
        self.writer.close()


@dataclass
class PoolStats:
    opened: int = 0
    reused: int = 0
    discarded: int = 0


class UpstreamPool:
    """At most ``limit`` keep-alive connections to one upstream, most recently used first."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None, limit: int,
                 connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host:port, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = parts.port is None
        bracketed = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = bracketed if default_port else f"{bracketed}:{self._port}"
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._url_authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._url_authorization = "Basic " + base64.b64encode(
                credentials.encode()).decode("ascii")
        self._connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._closed = False
        self.stats = PoolStats()

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes, timeout_s: float) -> UpstreamAnswer:
        """Send one request and read its whole answer. :class:`UnsendableRequest` before
        anything is sent; :class:`UpstreamFailed` when no whole answer came back."""
        if self._url_authorization is not None and not any(
                name.lower() == "authorization" for name in headers):
            headers = {**headers, "Authorization": self._url_authorization}
        payload = encode_request(method, target, self._host_header, headers, body)
        async with self._slots:
            if self._closed:
                raise UpstreamFailed("the gateway is stopping")
            try:
                async with asyncio.timeout(timeout_s):
                    connection = await self._take()
                    try:
                        answer, keep = await self._exchange(connection, method, payload)
                    except BaseException:
                        connection.close()
                        self.stats.discarded += 1
                        raise
            except TimeoutError as exc:
                raise UpstreamFailed(f"no answer within {timeout_s:g} s") from exc
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ssl.SSLError) as exc:
                raise UpstreamFailed(describe_error(exc)) from exc
            if keep and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError, ssl.SSLError):
                await connection.writer.wait_closed()

    async def _take(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now):
                self.stats.reused += 1
                return connection
            connection.close()
            self.stats.discarded += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ssl,
                                        limit=MAX_HEAD_BYTES),
                self._connect_timeout_s)
        except TimeoutError as exc:
            raise UpstreamFailed(f"cannot connect within {self._connect_timeout_s:g} s") from exc
        self.stats.opened += 1
        return _Connection(reader, writer)

    @staticmethod
    async def _exchange(connection: _Connection, method: str,
                        payload: bytes) -> tuple[UpstreamAnswer, bool]:
        connection.writer.write(payload)
        await connection.writer.drain()
        while True:
            head = parse_head(await connection.reader.readuntil(b"\r\n\r\n"))
            if head.status >= 200:
                break  # 100 Continue and other interim answers precede the real one
        framing = body_framing(method, head)
        body = await read_body(connection.reader, framing)
        return (UpstreamAnswer(head.status, head.reason, head.headers, body),
                reusable(head, framing))


def describe_error(exc: BaseException) -> str:
    """One line for an upstream failure, naming the exception's type when its text does not."""
    if isinstance(exc, UpstreamFailed):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        return "upstream closed the connection before a whole answer"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "upstream's answer head is too large"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
