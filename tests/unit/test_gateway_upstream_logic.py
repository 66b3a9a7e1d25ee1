"""The gateway's write connections: HTTP/1.1 framing (pure) and when a connection is reused.

The pool's tests talk to a small local asyncio peer that speaks HTTP/1.1 the way a node or a
proxy may (chunked answers, ``Connection: close``, closing while idle): they test the protocol
handling, not a cluster; the gateway's integration tests cover a real node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from indexshift.gateway_upstream import (
    Framing,
    UnsendableRequest,
    UpstreamFailed,
    UpstreamPool,
    body_framing,
    encode_request,
    parse_head,
    read_body,
    reusable,
)


def test_a_request_is_framed_by_its_length_and_keeps_its_headers() -> None:
    raw = encode_request("PUT", "/i/_doc/1?refresh=true", "node:9200",
                         {"Content-Type": "application/json", "Content-Length": "999",
                          "Connection": "close", "X-Opaque-Id": "a"}, b'{"a":1}')
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "PUT /i/_doc/1?refresh=true HTTP/1.1"
    assert "Host: node:9200" in lines and "Content-Length: 7" in lines
    assert "Content-Length: 999" not in lines and "Connection: close" not in lines
    assert "X-Opaque-Id: a" in lines and body == b'{"a":1}'


@pytest.mark.parametrize("method, target, headers", [
    ("PUT", "/i/_doc/1\r\nX-Evil: 1", {}),
    ("PUT", "/i/_doc/a b", {}),
    ("PUT", "i/_doc/1", {}),
    ("P UT", "/i/_doc/1", {}),
    ("PUT", "/i/_doc/1", {"X-A": "v\r\nX-Evil: 1"}),
    ("PUT", "/i/_doc/1", {"X A": "v"}),
    ("PUT", "/i/_doc/1", {"X-A": "ümlaut€"}),
])
def test_what_would_split_a_request_is_refused_before_sending(
        method: str, target: str, headers: dict[str, str]) -> None:
    with pytest.raises(UnsendableRequest):
        encode_request(method, target, "h", headers, b"")


def test_heads_parse_and_say_how_the_body_ends() -> None:
    head = parse_head(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                      b"content-length: 12\r\n\r\n")
    assert (head.status, head.reason, head.header("Content-Length")) == (201, "Created", "12")
    assert body_framing("PUT", head) == Framing("length", 12)
    assert reusable(head, Framing("length", 12))
    chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert body_framing("POST", chunked) == Framing("chunked")
    unframed = parse_head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert body_framing("POST", unframed) == Framing("close")
    assert not reusable(unframed, Framing("close"))
    closing = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not reusable(closing, body_framing("DELETE", closing))
    old = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not reusable(old, body_framing("PUT", old))
    assert body_framing("HEAD", head) == Framing("none")
    no_content = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
    assert body_framing("DELETE", no_content) == Framing("none")


@pytest.mark.parametrize("head", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 999 Odd\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
])
def test_malformed_heads_are_an_upstream_failure(head: bytes) -> None:
    with pytest.raises(UpstreamFailed):
        parse_head(head)


def test_conflicting_lengths_are_an_upstream_failure() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n")
    with pytest.raises(UpstreamFailed, match="Content-Length"):
        body_framing("PUT", head)


def _read(data: bytes, framing: Framing) -> bytes:
    async def run() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_body(reader, framing)
    return asyncio.run(run())


def test_chunked_bodies_are_joined_and_trailers_dropped() -> None:
    data = b"4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n"
    assert _read(data, Framing("chunked")) == b"Wikipedia in \r\n\r\nchunks."
    assert _read(b"abc", Framing("close")) == b"abc"
    with pytest.raises(UpstreamFailed, match="chunk size"):
        _read(b"zz\r\n", Framing("chunked"))
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"ab", Framing("length", 5))


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_peer(answer: Answer, test: Callable[[str], Awaitable[None]]) -> int:
    """Run ``test`` against a local HTTP/1.1 peer; how many connections the peer accepted."""
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await test(f"http://127.0.0.1:{port}")
    return accepted


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


def test_one_connection_carries_many_writes_and_chunked_answers() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await _read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            await writer.drain()

    async def test(url: str) -> None:
        pool = UpstreamPool(url, ssl_context=None, limit=4, connect_timeout_s=5)
        for i in range(20):
            got = await pool.request("PUT", f"/i/_doc/{i}", {}, b"doc %d" % i, 5)
            assert (got.status, got.body) == (201, b"doc %d" % i)
        assert (pool.stats.opened, pool.stats.reused) == (1, 19)
        await pool.close()

    assert asyncio.run(_with_peer(answer, test)) == 1


def test_a_connection_upstream_closes_is_not_reused() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then closed while idle, as a proxy's idle timeout does

    async def test(url: str) -> None:
        pool = UpstreamPool(url, ssl_context=None, limit=4, connect_timeout_s=5)
        for _ in range(3):
            assert (await pool.request("POST", "/_bulk", {}, b"x", 5)).body == b"ok"
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
        assert (pool.stats.opened, pool.stats.reused) == (3, 0)
        await pool.close()

    assert asyncio.run(_with_peer(answer, test)) == 3


def test_no_whole_answer_is_a_failure_and_nothing_is_sent_again() -> None:
    requests = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        if await _read_request(reader) is not None:
            requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")

    async def test(url: str) -> None:
        pool = UpstreamPool(url, ssl_context=None, limit=1, connect_timeout_s=5)
        with pytest.raises(UpstreamFailed, match="before a whole answer"):
            await pool.request("PUT", "/i/_doc/1", {}, b"{}", 5)
        assert pool.stats.discarded == 1
        await pool.close()

    asyncio.run(_with_peer(answer, test))
    assert requests == 1


def test_no_answer_in_time_and_no_listener_are_failures() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def test(url: str) -> None:
        pool = UpstreamPool(url, ssl_context=None, limit=1, connect_timeout_s=5)
        with pytest.raises(UpstreamFailed, match=r"no answer within 0\.2 s"):
            await pool.request("PUT", "/i/_doc/1", {}, b"{}", 0.2)
        await pool.close()

    asyncio.run(_with_peer(answer, test))

    async def refused() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = UpstreamPool(f"http://127.0.0.1:{port}", ssl_context=None, limit=1,
                            connect_timeout_s=5)
        with pytest.raises(UpstreamFailed, match="ConnectionRefusedError"):
            await pool.request("PUT", "/i/_doc/1", {}, b"{}", 5)

    asyncio.run(refused())


def test_credentials_in_the_upstream_url_are_sent_unless_the_client_brings_its_own() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            seen.extend(line for line in head.split(b"\r\n")
                        if line.lower().startswith(b"authorization"))
            await reader.readexactly(0)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def test(url: str) -> None:
        with_credentials = url.replace("http://", "http://admin:s%40cret@")
        pool = UpstreamPool(with_credentials, ssl_context=None, limit=1, connect_timeout_s=5)
        await pool.request("DELETE", "/i/_doc/1", {}, b"", 5)
        await pool.request("DELETE", "/i/_doc/1", {"Authorization": "Bearer t"}, b"", 5)
        await pool.close()

    asyncio.run(_with_peer(answer, test))
    assert seen == [b"Authorization: Basic YWRtaW46c0BjcmV0", b"Authorization: Bearer t"]
