"""The write-ahead gateway in front of a real node: clients, the log, outages, kill -9, modes."""

from __future__ import annotations

import errno
import gzip
import http.client
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import elasticsearch
import opensearchpy
import pytest
from elasticsearch import helpers as es_helpers
from opensearchpy import helpers as os_helpers

from indexshift.cluster import Cluster
from indexshift.gateway import BackgroundGateway, GatewayConfig
from indexshift.gateway_client import gateway_status, set_mode, wait_until_drained
from indexshift.gateway_protocol import Mode
from indexshift.wal import Outcome, WriteRecord, summarize_log
from tests.conftest import Node

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

Doc = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------


def _config(upstream: str, wal_dir: Path, **overrides: Any) -> GatewayConfig:
    return GatewayConfig(listen="127.0.0.1:0", upstream=upstream, wal_dir=wal_dir,
                         **overrides)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One keep-alive connection, sending requests byte for byte like curl would."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                                     parts.port or 80, timeout=timeout)

    def __call__(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> Reply:
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = dict(headers or {})
        if payload is not None and not any(k.lower() == "content-type" for k in all_headers):
            all_headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=payload, headers=all_headers)
            response = self.connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        except BaseException:
            self.connection.close()
            raise

    def close(self) -> None:
        self.connection.close()


def _docs(cluster: Cluster, index: str) -> dict[str, Doc]:
    cluster.refresh(index)
    hits = cluster.search(index, {"query": {"match_all": {}}, "size": 10_000})["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


def _make_index(cluster: Cluster, index: str) -> None:
    cluster.create_index(index, {"settings": {"number_of_shards": 1, "number_of_replicas": 0}})


def _client(node: Node, url: str, **options: Any) -> Any:
    if node.engine == "opensearch":
        return opensearchpy.OpenSearch(url, **options)
    return elasticsearch.Elasticsearch(url, **options)


class TcpProxy:
    """A TCP forwarder that can be stopped (connections cut, port refusing) and restarted."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Writer:
    """A client doing index/update/delete on its own ids, keeping a model of what the index
    must hold: a write counts once the gateway acknowledged it, queued it (202) or said it is
    logged and will be applied (503 with its seq). An answer lost to a crash makes that id's
    final state one of two, and the id is not touched again."""

    name: str
    index: str
    ids: list[str]
    seed: int
    model: dict[str, Doc] = field(default_factory=dict)
    unknown: dict[str, tuple[Doc | None, Doc | None]] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    counter: int = 0

    def run(self, url: str, stop: threading.Event) -> None:
        rng = random.Random(self.seed + self.counter)
        send = Http(url)
        try:
            while not stop.is_set():
                live = [i for i in self.ids if i not in self.unknown]
                if not live:
                    return
                doc_id = rng.choice(live)
                self.counter += 1
                n = self.counter
                before = self.model.get(doc_id)
                if before is None or rng.random() < 0.4:
                    after: Doc | None = {"writer": self.name, "id": doc_id, "v": n}
                    request = ("PUT", f"/{self.index}/_doc/{doc_id}", after)
                elif rng.random() < 0.6:
                    after = {**before, "u": n}
                    request = ("POST", f"/{self.index}/_update/{doc_id}", {"doc": {"u": n}})
                else:
                    after = None
                    request = ("DELETE", f"/{self.index}/_doc/{doc_id}", None)
                try:
                    reply = send(*request)
                except (OSError, http.client.HTTPException):
                    self.unknown[doc_id] = (before, after)
                    return
                self._account(doc_id, after, reply)
        finally:
            send.close()

    def _account(self, doc_id: str, after: Doc | None, reply: Reply) -> None:
        try:
            pending = (reply.status == 503 and reply.json()["error"]["type"]
                       == "indexshift_write_pending_exception")
        except (ValueError, KeyError, TypeError):
            pending = False
        if reply.status in (200, 201, 202) or pending:
            key = "pending" if pending else str(reply.status)
            self.answers[key] = self.answers.get(key, 0) + 1
            if after is None:
                self.model.pop(doc_id, None)
            else:
                self.model[doc_id] = after
        else:
            self.errors.append(f"{doc_id}: {reply.status} {reply.body[:300]!r}")

    def check(self, actual: dict[str, Doc]) -> list[str]:
        problems = list(self.errors)
        for doc_id in self.ids:
            found = actual.get(doc_id)
            if doc_id in self.unknown:
                if found not in self.unknown[doc_id]:
                    problems.append(f"{doc_id}: {found} is neither of {self.unknown[doc_id]}")
            elif found != self.model.get(doc_id):
                problems.append(
                    f"{doc_id}: index has {found}, acknowledged {self.model.get(doc_id)}")
        return problems


@contextmanager
def _writers(writers: list[Writer], url: str) -> Iterator[threading.Event]:
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(url, stop), daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def start_gateway_process(upstream: str, wal: str, port: int, log_dir: Path,
                          *extra: str) -> subprocess.Popen[str]:
    """``indexshift gateway`` as a process of its own on ``port`` (``wal``: a folder or a
    ``postgresql://`` URL); its log in ``log_dir``."""
    log_path = log_dir / f"gateway-{port}.log"
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "indexshift", "gateway", "--listen", f"127.0.0.1:{port}",
             "--upstream", upstream, "--wal", wal, *extra],
            stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True,
        )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on"):
        process.kill()
        raise AssertionError(f"the gateway did not start: {line!r}; see {log_path}")
    return process


def assert_writers_kept(cluster: Cluster, index: str, writers: list[Writer]) -> None:
    """Every acknowledged write is in the index with its last content; no delete undone."""
    actual = _docs(cluster, index)
    assert [p for w in writers for p in w.check(actual)] == []


def kill_twice_under_load(start: Callable[..., subprocess.Popen[str]], url: str,
                          writers: list[Writer], pending: Callable[[], list[int]]) -> list[int]:
    """kill -9 a gateway under load in normal mode; restart it, let a backlog build up in
    read-only mode under load and kill -9 it again; restart it once more and drain the log.
    ``start(*extra)`` starts the gateway on ``url``'s port; ``pending()`` reads the positions
    its log still owes upstream. Returns those pending at the second kill."""
    processes = []
    try:
        # Normal mode under load, then kill -9.
        processes.append(start("--write-hold", "1"))
        with _writers(writers, url):
            time.sleep(2)
            os.kill(processes[-1].pid, signal.SIGKILL)
            processes[-1].wait(30)
        # Restart; read-only under load (a backlog builds up), then kill -9 again.
        processes.append(start("--write-hold", "1"))
        set_mode(url, "read-only")
        with _writers(writers, url):
            time.sleep(1.5)
            os.kill(processes[-1].pid, signal.SIGKILL)
            processes[-1].wait(30)
        queued_when_killed: list[int] = pending()
        assert queued_when_killed, "read-only mode should have queued writes"
        # Restart on the same log: still read-only, every unapplied record comes back.
        processes.append(start())
        status = gateway_status(url)
        assert status["mode"] == "read-only"
        assert status["wal"]["replayed_on_open"] == len(queued_when_killed)
        set_mode(url, "normal")
        wait_until_drained(url, timeout=60)
        processes[-1].send_signal(signal.SIGTERM)
        assert processes[-1].wait(30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    assert sum(sum(w.answers.values()) for w in writers) > 20
    return queued_when_killed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    assert values, f"no metric line starts with {line_start}"
    return sum(values)


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/_indexshift/gateway/metrics") as response:
        text: str = response.read().decode()
        return text


# -- the official clients, unchanged ----------------------------------------------------------


def test_the_official_client_works_unchanged(node: Node, cluster: Cluster, alias_name: str,
                                             tmp_path: Path) -> None:
    index = f"{alias_name}-v1"
    _make_index(cluster, index)
    cluster.update_aliases([{"add": {"index": index, "alias": alias_name}}])
    with BackgroundGateway(_config(node.url, tmp_path / "wal")) as gw:
        client = _client(node, gw.url, http_compress=True)
        direct = _client(node, node.url)
        if node.engine == "opensearch":
            client.index(index=alias_name, id="a", body={"name": "alpha", "n": 1}, refresh=True)
            client.update(index=alias_name, id="a", body={"doc": {"n": 2}})
            client.index(index=alias_name, id="gone", body={"name": "x"})
            client.delete(index=alias_name, id="gone")
            with pytest.raises(opensearchpy.ConflictError):
                client.create(index=alias_name, id="a", body={"name": "again"})
            ok, failed = os_helpers.bulk(client, ({"_index": alias_name, "_id": f"b{i}", "n": i}
                                                  for i in range(300)), refresh=True)
            scanned = list(os_helpers.scan(client, index=alias_name, size=50,
                                           query={"query": {"match_all": {}}}))
            pit = client.create_pit(index=alias_name, params={"keep_alive": "1m"})["pit_id"]
            page = client.search(body={"pit": {"id": pit, "keep_alive": "1m"}, "size": 7,
                                       "sort": [{"_doc": "asc"}]})
            client.delete_pit(body={"pit_id": [pit]})
            opaque = client.transport.perform_request(
                "GET", f"/{alias_name}/_count", headers={"X-Opaque-Id": "gw-test-7"})
            assert opaque["count"] == 301
        else:
            client.index(index=alias_name, id="a", document={"name": "alpha", "n": 1},
                         refresh=True)
            client.update(index=alias_name, id="a", doc={"n": 2})
            client.index(index=alias_name, id="gone", document={"name": "x"})
            client.delete(index=alias_name, id="gone")
            with pytest.raises(elasticsearch.ConflictError):
                client.create(index=alias_name, id="a", document={"name": "again"})
            ok, failed = es_helpers.bulk(client, ({"_index": alias_name, "_id": f"b{i}", "n": i}
                                                  for i in range(300)), refresh=True)
            scanned = list(es_helpers.scan(client, index=alias_name, size=50,
                                           query={"query": {"match_all": {}}}))
            pit = client.open_point_in_time(index=alias_name, keep_alive="1m")["id"]
            page = client.search(pit={"id": pit, "keep_alive": "1m"}, size=7,
                                 sort=[{"_shard_doc": "asc"}])
            client.close_point_in_time(id=pit)
            opaque = client.options(opaque_id="gw-test-7").count(index=alias_name)
            assert opaque.meta.headers.get("X-Opaque-Id") == "gw-test-7"
        assert (ok, failed) == (300, [])
        assert len(scanned) == 301
        assert len(page["hits"]["hits"]) == 7
        assert client.get(index=alias_name, id="a")["_source"] == {"name": "alpha", "n": 2}
        assert client.exists(index=alias_name, id="a")
        assert not client.exists(index=alias_name, id="gone")
        assert client.count(index=alias_name)["count"] == 301
        # A read answers the same bytes through the gateway as directly.
        through = client.get(index=index, id="b7")
        straight = direct.get(index=index, id="b7")
        assert dict(through) == dict(straight)
        status = gateway_status(gw.url)
    # index, update, index, delete, a refused create, and one bulk: six records, all final.
    log = summarize_log(tmp_path / "wal")
    assert log.pending == []
    assert sorted(log.records) == list(range(1, len(log.records) + 1))
    assert len(log.records) >= 6
    assert [o.status for o in log.outcomes.values() if o.outcome == Outcome.REJECTED] == [409]
    assert status["wal"]["lag"] == 0 and status["mode"] == "normal"


def test_raw_requests_pass_through_byte_for_byte(node: Node, cluster: Cluster, alias_name: str,
                                                 tmp_path: Path) -> None:
    index = f"{alias_name}-raw"
    _make_index(cluster, index)
    with BackgroundGateway(_config(node.url, tmp_path / "wal", max_body_bytes=64 * 1024)) as gw:
        send = Http(gw.url)
        reply = send("PUT", f"/{index}/_doc/x%2Fy?refresh=true", {"path": "/usr/bin/x"})
        assert reply.status == 201 and reply.json()["_id"] == "x/y"
        seq = int(reply.headers["X-Indexshift-Seq"])

        # A gzip-compressed bulk body is logged as sent and forwarded with its encoding.
        bulk = b"".join(b'{"index":{"_id":"g%d"}}\n{"n":%d}\n' % (i, i) for i in range(50))
        reply = send("POST", f"/{index}/_bulk?refresh=true", gzip.compress(bulk),
                     {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
        assert reply.status == 200 and reply.json()["errors"] is False

        # A chunked write body (no Content-Length).
        send.connection.putrequest("PUT", f"/{index}/_doc/chunked?refresh=true")
        send.connection.putheader("Content-Type", "application/json")
        send.connection.putheader("Transfer-Encoding", "chunked")
        send.connection.endheaders()
        for piece in (b'{"part', b'": "one"}'):
            send.connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        send.connection.send(b"0\r\n\r\n")
        chunked = send.connection.getresponse()
        assert chunked.status == 201, chunked.read()
        chunked.read()

        # HEAD answers like the node: status and headers, no body.
        head, straight = send("HEAD", f"/{index}"), Http(node.url)("HEAD", f"/{index}")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["Content-Length"] == straight.headers["Content-Length"]
        assert send("HEAD", f"/{index}/_doc/nope").status == 404

        echoed = send("GET", f"/{index}/_count", None, {"X-Opaque-Id": "raw-7"})
        assert echoed.headers["X-Opaque-Id"] == "raw-7"

        # Text APIs and compressed answers pass through untouched.
        cat = send("GET", f"/_cat/indices/{index}?h=index,docs.count")
        assert cat.status == 200 and cat.body.decode().split() == [index, "52"]
        compressed = send("GET", f"/{index}/_search?size=100", None,
                          {"Accept-Encoding": "gzip"})
        if compressed.headers.get("Content-Encoding") == "gzip":
            assert len(json.loads(gzip.decompress(compressed.body))["hits"]["hits"]) == 52
        else:
            assert len(compressed.json()["hits"]["hits"]) == 52

        # curl's "Expect: 100-continue" is answered before the body is sent.
        with socket.create_connection((urlsplit(gw.url).hostname, urlsplit(gw.url).port)) as raw:
            body = json.dumps({"expect": "continue"}).encode()
            raw.sendall(f"PUT /{index}/_doc/expect HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        f"Expect: 100-continue\r\n\r\n".encode())
            assert raw.recv(1024).startswith(b"HTTP/1.1 100 Continue")
            raw.sendall(body)
            assert raw.recv(4096).startswith(b"HTTP/1.1 201")

        too_big = send("PUT", f"/{index}/_doc/big", {"blob": "x" * 70_000})
        assert too_big.status == 413
        assert too_big.json()["error"]["type"] == "indexshift_request_too_large"
        assert send("GET", "/_indexshift/gateway/nope").status == 404

        by_query = send("POST", f"/{index}/_delete_by_query?refresh=true",
                        {"query": {"term": {"_id": "g0"}}})
        assert by_query.status < 500
        text = _metrics(gw.url)
        assert _metric(
            text, 'indexshift_gateway_unrecorded_writes_total{api="_delete_by_query"}') == 1
        send.close()
    log = summarize_log(tmp_path / "wal")
    assert log.records[seq].path == f"/{index}/_doc/x%2Fy"
    gz = next(r for r in log.records.values() if r.path.endswith("/_bulk"))
    assert gz.header("content-encoding") == "gzip" and gzip.decompress(gz.body) == bulk
    assert log.pending == []
    assert "big" not in json.dumps([r.path for r in log.records.values()])
    assert _docs(cluster, index)["chunked"] == {"part": "one"}


# -- the log comes first -----------------------------------------------------------------------


def test_a_write_is_in_the_log_before_upstream_has_it(node: Node, cluster: Cluster,
                                                      alias_name: str, tmp_path: Path) -> None:
    index = f"{alias_name}-first"
    _make_index(cluster, index)
    wal = tmp_path / "wal"
    proxy = TcpProxy(node.url)
    proxy.start()
    with BackgroundGateway(_config(proxy.url, wal, write_hold_s=0.5)) as gw:
        send = Http(gw.url)
        assert send("PUT", f"/{index}/_doc/warm", {"n": 0}).status == 201
        proxy.stop()
        # Upstream is gone: the client hears the write is logged at a seq and will be applied.
        reply = send("PUT", f"/{index}/_doc/one", {"n": 1})
        assert reply.status == 503
        error = reply.json()
        assert error["error"]["type"] == "indexshift_write_pending_exception"
        seq = error["_indexshift"]["seq"]
        assert f"seq {seq}" in error["error"]["reason"]
        record = summarize_log(wal).records[seq]
        assert (record.method, record.path, json.loads(record.body)) == (
            "PUT", f"/{index}/_doc/one", {"n": 1})
        assert seq in summarize_log(wal).pending
        assert cluster.get_doc(index, "one") is None
        # Read-only mode: 202 with the position, logged, not yet upstream.
        set_mode(gw.url, "read-only")
        queued = send("PUT", f"/{index}/_doc/two", {"n": 2})
        assert queued.status == 202
        assert queued.json()["_indexshift"]["seq"] == seq + 1
        assert summarize_log(wal).pending == [seq, seq + 1]
        proxy.start()
        assert cluster.get_doc(index, "two") is None
        set_mode(gw.url, "normal")
        wait_until_drained(gw.url, timeout=30)
        send.close()
    proxy.stop()
    log = summarize_log(wal)
    assert log.pending == []
    assert log.outcomes[seq].outcome == Outcome.APPLIED
    assert log.outcomes[seq + 1].outcome == Outcome.APPLIED
    assert _docs(cluster, index) == {"warm": {"n": 0}, "one": {"n": 1}, "two": {"n": 2}}


def test_read_only_mode_queues_writes_and_applies_them_in_order(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    live, backup = f"{alias_name}-live", f"{alias_name}-backup"
    for index in (live, backup):
        _make_index(cluster, index)
    cluster.update_aliases([{"add": {"index": live, "alias": alias_name}}])
    cluster.put_doc(live, "d1", {"v": 0})
    cluster.put_doc(live, "d2", {"v": 0})
    cluster.put_doc(backup, "d1", {"v": "from backup"})
    for index in (live, backup):
        cluster.refresh(index)
    wal = tmp_path / "wal"
    with BackgroundGateway(_config(node.url, wal, fallback_index=backup)) as gw:
        send = Http(gw.url)
        assert set_mode(gw.url, "read-only")["previous"] == "normal"
        writes: list[tuple[str, str, Any, str | None]] = [
            ("PUT", f"/{alias_name}/_doc/d1", {"v": 1}, None),
            ("POST", f"/{alias_name}/_update/d1", {"doc": {"extra": True}}, None),
            ("PUT", f"/{alias_name}/_doc/d1", {"v": 2}, None),
            ("DELETE", f"/{alias_name}/_doc/d2", None, None),
            ("PUT", f"/{alias_name}/_create/d3", {"v": 3}, None),
            ("POST", f"/{alias_name}/_doc?refresh=wait_for", {"auto": True}, None),
            ("POST", "/_bulk",
             f'{{"index":{{"_index":"{alias_name}","_id":"d4"}}}}\n{{"v":4}}\n'
             f'{{"delete":{{"_index":"{alias_name}","_id":"d3"}}}}\n'.encode(),
             "application/x-ndjson"),
            ("POST", f"/{alias_name}/_update/d4", {"doc": {"after_bulk": True}}, None),
        ]
        seqs, answers = [], []
        for method, path, body, content_type in writes:
            reply = send(method, path, body, {"Content-Type": content_type or "application/json"})
            assert reply.status == 202, reply.body
            answers.append(reply.json())
            seqs.append(answers[-1]["_indexshift"]["seq"])
            assert int(reply.headers["X-Indexshift-Seq"]) == seqs[-1]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert answers[0]["result"] == "queued" and answers[0]["_id"] == "d1"
        # A queued bulk answers like a bulk, every item 202, so bulk helpers see success.
        assert answers[6]["errors"] is False
        assert [next(iter(item)) for item in answers[6]["items"]] == ["index", "delete"]
        assert {next(iter(item.values()))["status"] for item in answers[6]["items"]} == {202}
        # Reads keep working, served from the fallback index with a Warning.
        found = send("GET", f"/{alias_name}/_doc/d1")
        assert found.status == 200 and found.json()["_source"] == {"v": "from backup"}
        assert "fallback" in found.headers["Warning"]
        assert send("GET", f"/{live}/_count").json()["count"] == 1  # rewritten as well
        assert _docs(cluster, live) == {"d1": {"v": 0}, "d2": {"v": 0}}  # nothing applied
        # Writes that cannot be queued are refused in read-only mode.
        refused = send("POST", f"/{alias_name}/_delete_by_query", {"query": {"match_all": {}}})
        assert refused.status == 403
        status = gateway_status(gw.url)
        assert status["mode"] == "read-only" and status["queue"]["writes"] == len(writes)
        assert status["wal"]["lag"] == len(writes)
        set_mode(gw.url, "normal")
        wait_until_drained(gw.url, timeout=30)
        plain = send("GET", f"/{alias_name}/_doc/d1")
        assert "Warning" not in plain.headers and plain.json()["_source"] == {"v": 2}
        send.close()
    docs = _docs(cluster, live)
    auto = [doc_id for doc_id, doc in docs.items() if doc == {"auto": True}]
    assert len(auto) == 1
    assert {k: v for k, v in docs.items() if k not in auto} == {
        "d1": {"v": 2}, "d4": {"v": 4, "after_bulk": True}}
    log = summarize_log(wal)
    assert log.pending == [] and all(
        log.outcomes[s].outcome == Outcome.APPLIED for s in seqs)


def test_a_large_queue_replays_each_documents_writes_in_order(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    index = f"{alias_name}-order"
    _make_index(cluster, index)
    # Few documents, many writes each: batches run side by side and must not reorder them.
    writers = [Writer(f"o{w}", index, [f"o{w}-{i}" for i in range(8)], seed=20 + w)
               for w in range(4)]
    with BackgroundGateway(_config(node.url, tmp_path / "wal", replay_batch_docs=25)) as gw:
        set_mode(gw.url, "read-only")
        with _writers(writers, gw.url):
            time.sleep(2)
        queued = gateway_status(gw.url)["queue"]["writes"]
        set_mode(gw.url, "normal")
        wait_until_drained(gw.url, timeout=60)
        metrics = _metrics(gw.url)
    assert queued == sum(w.answers.get("202", 0) for w in writers) > 100
    assert _metric(metrics, 'indexshift_gateway_replay_requests_total{kind="batch"}') > 1
    assert_writers_kept(cluster, index, writers)


def test_the_mode_and_the_queue_survive_a_restart(node: Node, cluster: Cluster,
                                                  alias_name: str, tmp_path: Path) -> None:
    index = f"{alias_name}-restart"
    _make_index(cluster, index)
    wal = tmp_path / "wal"
    with BackgroundGateway(_config(node.url, wal)) as gw:
        gw.set_mode(Mode.READ_ONLY)
        send = Http(gw.url)
        for i in range(5):
            assert send("PUT", f"/{index}/_doc/{i}", {"i": i}).status == 202
        send.close()
    with BackgroundGateway(_config(node.url, wal)) as gw:
        status = gateway_status(gw.url)
        assert status["mode"] == "read-only"
        assert status["queue"]["writes"] == 5 and status["wal"]["replayed_on_open"] == 5
        set_mode(gw.url, "normal")
        wait_until_drained(gw.url, timeout=30)
    assert _docs(cluster, index) == {str(i): {"i": i} for i in range(5)}


# -- when the log cannot be written -------------------------------------------------------------


def _disk_full(operation: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_unwritable_log_refuses_writes_and_keeps_reads(node: Node, cluster: Cluster,
                                                          alias_name: str,
                                                          tmp_path: Path) -> None:
    index = f"{alias_name}-walfail"
    _make_index(cluster, index)
    cluster.put_doc(index, "kept", {"n": 0})
    cluster.refresh(index)
    with BackgroundGateway(_config(node.url, tmp_path / "refuse")) as gw:
        send = Http(gw.url)
        wal = gw.gateway.wal
        assert wal is not None
        wal.fault = _disk_full
        refused = send("PUT", f"/{index}/_doc/lost", {"n": 1})
        assert refused.status == 503
        assert refused.json()["error"]["type"] == "indexshift_wal_unavailable"
        assert "No space left on device" in refused.json()["error"]["reason"]
        assert "not forwarded" in refused.json()["error"]["reason"]
        assert send("GET", f"/{index}/_doc/kept").json()["_source"] == {"n": 0}
        assert send("POST", f"/{index}/_search", {"query": {"match_all": {}}}).status == 200
        assert gateway_status(gw.url)["wal"]["state"] == "failed"
        assert _metric(_metrics(gw.url),
                       'indexshift_gateway_refused_writes_total{reason="wal_unavailable"}') == 1
        wal.fault = None
        deadline = time.monotonic() + 10
        while (reply := send("PUT", f"/{index}/_doc/later", {"n": 2})).status == 503:
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.2)
        assert reply.status == 201
        assert gateway_status(gw.url)["wal"]["state"] == "ok"
        send.close()
    assert cluster.get_doc(index, "lost") is None
    with BackgroundGateway(_config(node.url, tmp_path / "forward",
                                   on_wal_failure="forward")) as gw:
        send = Http(gw.url)
        assert gw.gateway.wal is not None
        gw.gateway.wal.fault = _disk_full
        passed = send("PUT", f"/{index}/_doc/forwarded", {"n": 3})
        assert passed.status == 201
        assert "without the write-ahead log" in passed.headers["Warning"]
        assert _metric(_metrics(gw.url), "indexshift_gateway_unlogged_writes_total") == 1
        gw.gateway.wal.fault = None
        send.close()
    assert cluster.get_doc(index, "forwarded") is not None
    assert not any(isinstance(r, WriteRecord) and r.path.endswith("/forwarded")
                   for r in summarize_log(tmp_path / "forward").records.values())


# -- failures under load ------------------------------------------------------------------------


OUTAGE_S = 30  # upstream unreachable this long, under load


def test_an_upstream_outage_under_load_loses_nothing(node: Node, cluster: Cluster,
                                                     alias_name: str, tmp_path: Path) -> None:
    index = f"{alias_name}-outage"
    _make_index(cluster, index)
    proxy = TcpProxy(node.url)
    proxy.start()
    writers = [Writer(f"w{w}", index, [f"w{w}-{i}" for i in range(15)], seed=w)
               for w in range(3)]
    with BackgroundGateway(_config(proxy.url, tmp_path / "wal", write_hold_s=0.5)) as gw:
        with _writers(writers, gw.url):
            time.sleep(2)
            proxy.stop()
            outage_started = time.monotonic()
            time.sleep(OUTAGE_S)
            during = gateway_status(gw.url)
            proxy.start()
            time.sleep(2)
        assert time.monotonic() - outage_started >= OUTAGE_S
        assert during["queue"]["writes"] > 0 and during["upstream_ok"] is False
        final = wait_until_drained(gw.url, timeout=60)
        metrics = _metrics(gw.url)
    proxy.stop()
    assert final["wal"]["lag"] == 0
    assert _metric(metrics, "indexshift_gateway_upstream_failures_total") > 0
    assert sum(w.answers.get("pending", 0) for w in writers) > 0, [w.answers for w in writers]
    assert_writers_kept(cluster, index, writers)
    assert summarize_log(tmp_path / "wal").pending == []


def test_kill_9_under_load_then_restart_replays_everything(node: Node, cluster: Cluster,
                                                           alias_name: str,
                                                           tmp_path: Path) -> None:
    index = f"{alias_name}-kill"
    _make_index(cluster, index)
    wal = tmp_path / "wal"
    port = _free_port()
    writers = [Writer(f"k{w}", index, [f"k{w}-{i}" for i in range(20)], seed=10 + w)
               for w in range(3)]
    queued_when_killed = kill_twice_under_load(
        lambda *extra: start_gateway_process(node.url, str(wal), port, tmp_path, *extra),
        f"http://127.0.0.1:{port}", writers, lambda: summarize_log(wal).pending)
    assert_writers_kept(cluster, index, writers)
    log = summarize_log(wal)
    assert log.pending == []
    assert set(queued_when_killed) <= set(log.outcomes)


# -- what an operator sees -----------------------------------------------------------------------


def test_metrics_and_status(node: Node, cluster: Cluster, alias_name: str,
                            tmp_path: Path) -> None:
    index = f"{alias_name}-metrics"
    _make_index(cluster, index)
    with BackgroundGateway(_config(node.url, tmp_path / "wal")) as gw:
        barrier = threading.Barrier(8)

        def write(worker: int) -> None:
            send = Http(gw.url)
            barrier.wait()
            for i in range(10):
                assert send("PUT", f"/{index}/_doc/{worker}-{i}", {"n": i}).status == 201
            send.close()

        threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        Http(gw.url)("GET", f"/{index}/_count")
        text = _metrics(gw.url)
        status = gateway_status(gw.url)
    assert _metric(text, 'indexshift_gateway_requests_total{kind="write",status="201"}') == 80
    assert _metric(text, 'indexshift_gateway_requests_total{kind="read",status="200"}') >= 1
    for name in ("indexshift_gateway_request_seconds_bucket{kind=\"write\"",
                 "indexshift_gateway_request_seconds_bucket{kind=\"read\"",
                 "indexshift_gateway_upstream_seconds_count",
                 "indexshift_gateway_wal_fsync_batch_records_count",
                 "indexshift_gateway_wal_lag", "indexshift_gateway_queued_writes",
                 "indexshift_gateway_wal_applied_seq", "indexshift_gateway_wal_last_seq"):
        assert name in text, name
    assert 'indexshift_gateway_mode{mode="normal"} 1' in text
    assert 'indexshift_gateway_mode{mode="read-only"} 0' in text
    assert _metric(text, "indexshift_gateway_wal_fsync_batch_records_count") <= 80
    assert status["wal"]["last_seq"] == 80 and status["wal"]["lag"] == 0
    assert status["wal"]["mean_fsync_batch"] >= 1
    assert status["upstream_ok"] is True
