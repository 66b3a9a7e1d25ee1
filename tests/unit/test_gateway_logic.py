"""The gateway's pure logic: which requests are writes, headers, bulk rewriting, answers."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from pathlib import Path

import pytest

from indexshift.errors import BadInput, ExitCode
from indexshift.gateway import (
    GatewayConfig,
    QueuedWrite,
    ReplayBatch,
    ReplayQueue,
    bulk_answer_statuses,
    bulk_items_to_retry,
    log_location,
    plan_batch,
)
from indexshift.gateway_metrics import Counter, Histogram, gauge_lines
from indexshift.gateway_protocol import (
    BulkLine,
    Classified,
    Mode,
    RequestKind,
    WriteOp,
    classify,
    decode_body,
    error_body,
    fallback_path,
    forward_request_headers,
    is_retryable_status,
    logged_headers,
    outcome_of,
    parse_listen,
    path_segments,
    queued_body,
    response_headers,
    single_to_bulk,
    split_bulk,
)
from indexshift.gateway_upstream import UpstreamAnswer
from indexshift.wal import Outcome, WriteRecord
from tests.helpers import run_cli

W, R, U = RequestKind.WRITE, RequestKind.READ, RequestKind.UNRECORDED_WRITE


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("PUT", "/files/_doc/1", Classified(W, WriteOp.INDEX, "files", "1")),
    ("POST", "/files/_doc/1", Classified(W, WriteOp.INDEX, "files", "1")),
    ("POST", "/files/_doc", Classified(W, WriteOp.INDEX, "files")),
    ("POST", "/files/_doc/", Classified(W, WriteOp.INDEX, "files")),
    ("PUT", "/files/_create/1", Classified(W, WriteOp.CREATE, "files", "1")),
    ("POST", "/files/_create/1", Classified(W, WriteOp.CREATE, "files", "1")),
    ("POST", "/files/_update/1", Classified(W, WriteOp.UPDATE, "files", "1")),
    ("DELETE", "/files/_doc/1", Classified(W, WriteOp.DELETE, "files", "1")),
    ("delete", "/files/_doc/1", Classified(W, WriteOp.DELETE, "files", "1")),
    ("POST", "/_bulk", Classified(W, WriteOp.BULK)),
    ("PUT", "/_bulk", Classified(W, WriteOp.BULK)),
    ("POST", "/files/_bulk", Classified(W, WriteOp.BULK, "files")),
    ("PUT", "/files/_bulk", Classified(W, WriteOp.BULK, "files")),
    # ids and names are percent-decoded; a slash in an id stays one segment
    ("PUT", "/file-index/_doc/a%2Fb%20c", Classified(W, WriteOp.INDEX, "file-index", "a/b c")),
    ("PUT", "/%3Cfiles-%7Bnow%2Fd%7D%3E/_doc/1",
     Classified(W, WriteOp.INDEX, "<files-{now/d}>", "1")),
    # reads
    ("GET", "/files/_doc/1", Classified(R)),
    ("HEAD", "/files/_doc/1", Classified(R)),
    ("GET", "/files/_search", Classified(R)),
    ("POST", "/files/_search", Classified(R)),
    ("POST", "/_search", Classified(R)),
    ("POST", "/files/_count", Classified(R)),
    ("POST", "/_mget", Classified(R)),
    ("POST", "/files/_mget", Classified(R)),
    ("POST", "/files/_search/point_in_time", Classified(R)),
    ("POST", "/files/_pit", Classified(R)),
    ("DELETE", "/_search/point_in_time", Classified(R)),
    ("POST", "/_search/scroll", Classified(R)),
    ("DELETE", "/_search/scroll", Classified(R)),
    ("GET", "/_cat/indices", Classified(R)),
    ("GET", "/_cluster/health", Classified(R)),
    ("GET", "/", Classified(R)),
    ("GET", "/_bulk", Classified(R)),
    ("PUT", "/files", Classified(R)),  # index management is not a document write
    ("POST", "/_aliases", Classified(R)),
    ("GET", "/files/_update/1", Classified(R)),
    # passed through, counted
    ("POST", "/files/_update_by_query", Classified(U, index="files", api="_update_by_query")),
    ("POST", "/files/_delete_by_query", Classified(U, index="files", api="_delete_by_query")),
])
def test_classify(method: str, path: str, expected: Classified) -> None:
    assert classify(method, path) == expected


def test_path_segments_keep_encoding_and_drop_empty_ends() -> None:
    assert path_segments("/i/_doc/a%2Fb/") == ["i", "_doc", "a%2Fb"]
    assert path_segments("/") == []
    assert path_segments("") == []


def test_forwarded_request_headers_drop_hop_by_hop_and_keep_the_rest() -> None:
    compat = "application/vnd.elasticsearch+json; compatible-with=8"
    out = forward_request_headers([
        ("Host", "gateway:9201"), ("Connection", "keep-alive, X-Private"),
        ("X-Private", "drop me"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"), ("Expect", "100-continue"), ("TE", "trailers"),
        ("Accept", compat), ("Content-Type", compat), ("Content-Encoding", "gzip"),
        ("X-Opaque-Id", "job-7"), ("Authorization", "Basic eDp5"),
        ("X-Elastic-Client-Meta", "es=8"),
    ])
    assert dict(out) == {
        "Accept": compat, "Content-Type": compat, "Content-Encoding": "gzip",
        "X-Opaque-Id": "job-7", "Authorization": "Basic eDp5", "X-Elastic-Client-Meta": "es=8",
    }


def test_response_headers_keep_repeated_ones_and_length_only_when_relayed() -> None:
    raw = [("content-type", "application/json"), ("Warning", "299 a"), ("Warning", "299 b"),
           ("content-length", "10"), ("Transfer-Encoding", "chunked"),
           ("X-elastic-product", "Elasticsearch")]
    relayed = response_headers(raw, keep_length=True)
    assert relayed.getall("Warning") == ["299 a", "299 b"]
    assert relayed["Content-Length"] == "10"
    assert "Transfer-Encoding" not in relayed
    assert relayed["X-Elastic-Product"] == "Elasticsearch"
    assert "Content-Length" not in response_headers(raw, keep_length=False)


def test_only_replay_relevant_headers_are_logged() -> None:
    assert logged_headers([("Content-Type", "application/json"), ("Authorization", "secret"),
                           ("Content-Encoding", "gzip"), ("X-Opaque-Id", "o"),
                           ("Accept", "a"), ("User-Agent", "u")]) == [
        ("content-type", "application/json"), ("content-encoding", "gzip"),
        ("x-opaque-id", "o"), ("accept", "a")]


@pytest.mark.parametrize(("status", "waiting", "retry"), [
    (500, True, True), (502, False, True), (503, True, True), (504, False, True),
    (501, False, False), (429, True, False), (429, False, True), (409, False, False),
    (400, True, False), (404, False, False), (200, False, False), (201, True, False),
])
def test_retryable_statuses(status: int, waiting: bool, retry: bool) -> None:
    assert is_retryable_status(status, client_waiting=waiting) is retry


def test_outcomes() -> None:
    assert outcome_of(201) == Outcome.APPLIED
    assert outcome_of(409) == Outcome.REJECTED


def test_decode_body() -> None:
    raw = b'{"a": 1}\n'
    assert decode_body(gzip.compress(raw), "gzip") == raw
    assert decode_body(zlib.compress(raw), "deflate") == raw
    assert decode_body(raw, None) == raw
    assert decode_body(raw, "identity") == raw
    with pytest.raises(ValueError, match="br"):
        decode_body(raw, "br")


BULK = (b'{"index":{"_index":"a","_id":"1"}}\n{"x":1}\n'
        b'{"delete":{"_index":"a","_id":"2"}}\n'
        b"\n"
        b'{"update":{"_id":"3"}}\n{"doc":{"y":2}}\n'
        b'{"create":{"_index":"b"}}\n{"z":3}\n')


def test_split_bulk_pairs_actions_with_their_sources() -> None:
    items = split_bulk(BULK)
    assert [(i.op, i.index, i.doc_id) for i in items] == [
        ("index", "a", "1"), ("delete", "a", "2"), ("update", None, "3"), ("create", "b", None)]
    assert items[0].lines == b'{"index":{"_index":"a","_id":"1"}}\n{"x":1}\n'
    assert items[1].lines == b'{"delete":{"_index":"a","_id":"2"}}\n'
    assert b"".join(i.lines for i in items) == BULK.replace(b"\n\n", b"\n")


def test_split_bulk_refuses_a_malformed_body() -> None:
    with pytest.raises(ValueError):
        split_bulk(b'{"index":{}}\n')
    with pytest.raises(ValueError):
        split_bulk(b"not json\n")


def _action(line: BulkLine) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(line.lines.split(b"\n")[0])
    return decoded


def test_single_writes_become_bulk_items() -> None:
    line = single_to_bulk(WriteOp.INDEX, "files", "a/b",
                          "routing=r&version=3&version_type=external",
                          "application/json", None, b'{\n  "n": 1\n}\n')
    assert line is not None
    assert _action(line) == {"index": {"_index": "files", "_id": "a/b", "routing": "r",
                                       "version": 3, "version_type": "external"}}
    assert line.lines.split(b"\n")[1] == b'{   "n": 1 }'  # one line, same document
    assert line.key == ("files", "a/b", "r")
    assert line.refresh == ""

    auto = single_to_bulk(WriteOp.INDEX, "files", None, "", None, None, b'{"n":1}')
    assert auto is not None and auto.key is None and _action(auto) == {"index": {"_index": "files"}}

    create = single_to_bulk(WriteOp.INDEX, "files", "1", "op_type=create&refresh=wait_for",
                            "application/json", None, b"{}")
    assert create is not None and _action(create) == {"create": {"_index": "files", "_id": "1"}}
    assert create.refresh == "wait_for"

    update = single_to_bulk(WriteOp.UPDATE, "files", "1", "retry_on_conflict=3&refresh",
                            "application/vnd.elasticsearch+json; compatible-with=8", None,
                            b'{"doc":{"n":2}}')
    assert update is not None and update.refresh == "true"
    assert _action(update) == {"update": {"_index": "files", "_id": "1", "retry_on_conflict": 3}}

    delete = single_to_bulk(WriteOp.DELETE, "files", "1", "if_seq_no=4&if_primary_term=1&pretty",
                            None, None, b"")
    assert delete is not None and delete.lines.count(b"\n") == 1
    assert _action(delete) == {"delete": {"_index": "files", "_id": "1", "if_seq_no": 4,
                                          "if_primary_term": 1}}


@pytest.mark.parametrize(("op", "doc_id", "query", "content_type", "encoding", "body"), [
    (WriteOp.INDEX, "1", "timeout=5s", None, None, b"{}"),  # no bulk-item equivalent
    (WriteOp.INDEX, "1", "wait_for_active_shards=2", None, None, b"{}"),
    (WriteOp.INDEX, "1", "version=x", None, None, b"{}"),
    (WriteOp.INDEX, "1", "refresh=maybe", None, None, b"{}"),
    (WriteOp.UPDATE, "1", "version=2", None, None, b"{}"),
    (WriteOp.UPDATE, "1", "_source=true", None, None, b'{"doc":{}}'),
    (WriteOp.INDEX, "1", "", None, "gzip", gzip.compress(b"{}")),
    (WriteOp.INDEX, "1", "", "application/vnd.elasticsearch+json; compatible-with=7", None, b"{}"),
    (WriteOp.INDEX, "1", "", "application/x-yaml", None, b"a: 1"),
    (WriteOp.INDEX, "1", "", None, None, b"[1]"),
    (WriteOp.CREATE, None, "", None, None, b"{}"),
    (WriteOp.BULK, None, "", None, None, BULK),
])
def test_writes_a_bulk_item_cannot_say_exactly_are_replayed_as_sent(
        op: WriteOp, doc_id: str | None, query: str, content_type: str | None,
        encoding: str | None, body: bytes) -> None:
    assert single_to_bulk(op, "files", doc_id, query, content_type, encoding, body) is None


def test_error_bodies_look_like_the_clusters() -> None:
    body = error_body(503, "indexshift_wal_unavailable", "disk full", seq=3)
    assert body["status"] == 503
    assert body["error"]["type"] == "indexshift_wal_unavailable"
    assert body["error"]["root_cause"][0]["reason"] == "disk full"
    assert body["_indexshift"] == {"seq": 3}


def test_queued_answers_carry_the_log_position() -> None:
    single = queued_body(Classified(W, WriteOp.INDEX, "files", "1"), 9, Mode.READ_ONLY, b"{}", None)
    assert single["result"] == "queued" and single["_id"] == "1"
    assert single["_indexshift"]["seq"] == 9 and single["_indexshift"]["mode"] == "read-only"
    bulk = queued_body(Classified(W, WriteOp.BULK, "dflt"), 10, Mode.READ_ONLY,
                       gzip.compress(BULK), "gzip")
    assert bulk["errors"] is False
    assert [next(iter(i.values()))["status"] for i in bulk["items"]] == [202] * 4
    assert bulk["items"][2] == {"update": {"_index": "dflt", "_id": "3", "status": 202,
                                           "result": "queued"}}
    garbled = queued_body(Classified(W, WriteOp.BULK), 11, Mode.READ_ONLY, b"{oops", None)
    assert garbled["items"] == [] and garbled["_indexshift"]["seq"] == 11


def test_fallback_paths() -> None:
    assert fallback_path("/files/_search", "files-backup") == "/files-backup/_search"
    assert fallback_path("/files/_doc/a%2Fb", "bk") == "/bk/_doc/a%2Fb"
    assert fallback_path("/_search", "bk") is None
    assert fallback_path("/_cat/indices", "bk") is None
    assert fallback_path("/files/_search", "bk", only_for="files") == "/bk/_search"
    assert fallback_path("/other/_search", "bk", only_for="files") is None


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9201") == ("127.0.0.1", 9201)
    assert parse_listen(":0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9201") == ("::1", 9201)
    for bad in ("9201x", "host:", "host:70000"):
        with pytest.raises(BadInput):
            parse_listen(bad)


def test_config_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="upstream"):
        GatewayConfig(listen="127.0.0.1:0", upstream="localhost:9200", wal_dir=tmp_path)
    with pytest.raises(BadInput, match="fallback"):
        GatewayConfig(listen="127.0.0.1:0", upstream="http://h:1", wal_dir=tmp_path,
                      fallback_index="_all")
    with pytest.raises(BadInput, match="on-wal-failure"):
        GatewayConfig(listen="127.0.0.1:0", upstream="http://h:1", wal_dir=tmp_path,
                      on_wal_failure="ignore")  # type: ignore[arg-type]


def test_prometheus_rendering() -> None:
    counter = Counter("x_total", "Things.")
    counter.inc(kind="read", status="200")
    counter.inc(2, kind="read", status="200")
    assert counter.render() == ["# HELP x_total Things.", "# TYPE x_total counter",
                                'x_total{kind="read",status="200"} 3']
    histogram = Histogram("lat_seconds", "Latency.", (0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 7.0):
        histogram.observe(value, kind="w")
    assert histogram.count(kind="w") == 4
    assert histogram.render()[2:] == [
        'lat_seconds_bucket{kind="w",le="0.1"} 1',
        'lat_seconds_bucket{kind="w",le="1"} 3',
        'lat_seconds_bucket{kind="w",le="+Inf"} 4',
        'lat_seconds_sum{kind="w"} 8.05',
        'lat_seconds_count{kind="w"} 4',
    ]
    assert gauge_lines("g", "G.", [({"mode": "normal"}, 1)])[-1] == 'g{mode="normal"} 1'


def test_the_replay_queue_keeps_seq_order_with_late_arrivals() -> None:
    queue = ReplayQueue()
    entries = {seq: QueuedWrite(seq, None) for seq in (3, 5, 6, 4, 1, 8)}
    for entry in entries.values():
        queue.add(entry)
    assert [e.seq for e in queue.head(10)] == [1, 3, 4, 5, 6, 8]
    assert [e.seq for e in queue.head(3)] == [1, 3, 4]
    queue.remove(queue.head(2))
    assert [e.seq for e in queue.all()] == [4, 5, 6, 8]
    queue.add(QueuedWrite(2, None))  # a fast-path write that failed late
    assert [e.seq for e in queue.head(2)] == [2, 4]
    queue.remove([entries[6], entries[4]])
    assert [e.seq for e in queue.all()] == [2, 5, 8]
    assert len(queue) == 3


def test_status_commands_fail_clearly_without_a_gateway() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("gateway", "status", "--gateway", f"http://127.0.0.1:{port}")
    assert result.code == ExitCode.UNREACHABLE
    assert "no gateway answers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _line(doc_id: str | None, refresh: str = "", size: int = 10) -> BulkLine:
    key = None if doc_id is None else ("files", doc_id, "")
    return BulkLine(b"x" * size, refresh, key)


def _candidates(*lines: BulkLine | None) -> list[tuple[QueuedWrite, BulkLine | None]]:
    return [(QueuedWrite(seq, None), line) for seq, line in enumerate(lines, start=1)]


def test_a_batch_holds_one_write_per_document() -> None:
    candidates = _candidates(_line("a"), _line("b"), _line("a"), _line("c"), _line(None))
    chosen, barrier = plan_batch(candidates, [], max_docs=100, max_bytes=10_000)
    # The second write of "a" waits for the first; "c" and the auto-id one need not.
    assert (chosen, barrier) == ([0, 1, 3, 4], False)


def test_a_batch_beside_one_in_flight_skips_its_documents() -> None:
    in_flight = ReplayBatch([QueuedWrite(1, None)], [_line("a")], {("files", "a", "")})
    candidates = _candidates(_line("a"), _line("b"), _line("a"))
    chosen, _ = plan_batch(candidates, [in_flight], max_docs=100, max_bytes=10_000)
    assert chosen == [1]


def test_a_write_that_must_go_alone_is_a_barrier() -> None:
    candidates = _candidates(None, _line("a"))
    assert plan_batch(candidates, [], max_docs=100, max_bytes=10_000) == ([0], True)
    in_flight = ReplayBatch([QueuedWrite(9, None)], [_line("z")], {("files", "z", "")})
    assert plan_batch(candidates, [in_flight], max_docs=100, max_bytes=10_000) == ([], False)
    # Writes before it may go; nothing after it.
    before = _candidates(_line("a"), _line("b"), None, _line("c"))
    assert plan_batch(before, [], max_docs=100, max_bytes=10_000) == ([0, 1], False)
    # While it is in flight nothing else starts.
    alone = ReplayBatch([QueuedWrite(1, None)], None, barrier=True)
    assert plan_batch(_candidates(_line("q")), [alone], max_docs=100,
                      max_bytes=10_000) == ([], False)


def test_a_batch_keeps_one_refresh_policy_and_its_limits() -> None:
    mixed = _candidates(_line("a"), _line("b", refresh="wait_for"), _line("c"))
    assert plan_batch(mixed, [], max_docs=100, max_bytes=10_000)[0] == [0]
    many = _candidates(*[_line(str(i), size=100) for i in range(10)])
    assert plan_batch(many, [], max_docs=4, max_bytes=10_000)[0] == [0, 1, 2, 3]
    assert plan_batch(many, [], max_docs=100, max_bytes=350)[0] == [0, 1, 2]
    huge = _candidates(_line("a", size=5000))
    assert plan_batch(huge, [], max_docs=100, max_bytes=350)[0] == [0]  # one always goes


def test_the_queue_skips_writes_finished_out_of_order() -> None:
    queue = ReplayQueue()
    entries = [QueuedWrite(seq, None) for seq in range(1, 7)]
    for entry in entries:
        queue.add(entry)
    queue.remove(entries[2:4])  # a later batch finished first
    assert [e.seq for e in queue.head(10)] == [1, 2, 5, 6]
    assert len(queue) == 4
    queue.remove(entries[:2])
    assert [e.seq for e in queue.all()] == [5, 6]
    queue.remove(entries[2:4])  # removing twice changes nothing
    assert len(queue) == 2


def test_bulk_answer_statuses_fast_and_full() -> None:
    ok = json.dumps({"took": 3, "errors": False, "items": [
        {"index": {"_id": "1", "result": "created", "status": 201,
                   "_shards": {"total": 1, "successful": 1, "failed": 0}}},
        {"delete": {"_id": "2", "result": "deleted", "status": 200}}]},
        separators=(",", ":")).encode()
    assert bulk_answer_statuses(ok, expected=2) == [201, 200]
    assert bulk_answer_statuses(ok) == [201, 200]
    failed = json.dumps({"took": 3, "errors": True, "items": [
        {"create": {"_id": "1", "status": 409, "error": {"type": "version_conflict"}}},
        {"index": {"_id": "2", "status": 429, "error": {"type": "es_rejected_execution"}}}]})
    assert bulk_answer_statuses(failed.encode(), expected=2) == [409, 429]
    # A document field called "status" (an update returning its source) is not an item status.
    tricky = json.dumps({"errors": False, "items": [{"update": {
        "_id": "1", "status": 200, "get": {"_source": {"status": 404}}}}]},
        separators=(",", ":")).encode()
    assert bulk_answer_statuses(tricky, expected=1) == [200]
    assert bulk_answer_statuses(b'{"error": "nope"}', expected=1) is None
    assert bulk_answer_statuses(b"not json") is None


def test_a_replayed_bulk_retries_only_the_items_turned_away() -> None:
    sent = (b'{"index":{"_id":"1"}}\n{"n":1}\n'
            b'{"delete":{"_id":"2"}}\n'
            b'{"index":{"_id":"3"}}\n{"n":3}\n')
    record = WriteRecord(5, 0, "POST", "/files/_bulk", "", (("content-encoding", "gzip"),),
                         gzip.compress(sent))
    answer = UpstreamAnswer(200, "OK", [("content-type", "application/json")], json.dumps({
        "errors": True, "items": [
            {"index": {"_id": "1", "status": 429, "error": {"type": "es_rejected_execution"}}},
            {"delete": {"_id": "2", "status": 404, "result": "not_found"}},
            {"index": {"_id": "3", "status": 503, "error": {"type": "unavailable_shards"}}}]},
    ).encode())
    again = bulk_items_to_retry(answer, record, record.body, sent_decoded=False)
    assert again == b'{"index":{"_id":"1"}}\n{"n":1}\n{"index":{"_id":"3"}}\n{"n":3}\n'
    # The next answer concerns the retried body only (already decoded).
    done = UpstreamAnswer(200, "OK", [], json.dumps({"errors": False, "items": [
        {"index": {"_id": "1", "status": 200}}, {"index": {"_id": "3", "status": 201}}]}).encode())
    assert bulk_items_to_retry(done, record, again, sent_decoded=True) is None
    assert bulk_items_to_retry(UpstreamAnswer(400, "", [], b"{}"), record, sent, True) is None


def test_wal_option_is_a_folder_or_a_shared_postgres_log_with_a_state_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_location(str(tmp_path / "wal"), "127.0.0.1:9201", None) == (tmp_path / "wal", None)
    url = "postgresql://gw@127.0.0.1:5432/indexshift"
    assert log_location(url, "127.0.0.1:9201", tmp_path / "state") == (tmp_path / "state", url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    state, shared = log_location(url, "127.0.0.1:9201", None)
    assert shared == url and state == tmp_path / "indexshift" / "gateway-127.0.0.1_9201"


def test_a_rollout_with_a_bad_step_is_refused_before_reaching_the_gateway() -> None:
    # Port 1 answers nobody: the error must be about the steps, not the connection.
    result = run_cli("gateway", "rollout", "logs", "--blue", "logs-v1", "--green", "logs-v2",
                     "--steps", "1,ten,100", "--gateway", "http://127.0.0.1:1")
    assert result.code == ExitCode.BAD_INPUT, result.stderr
    assert "each step must be a number, got 'ten'" in result.stderr
