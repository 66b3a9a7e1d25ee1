"""The gateway on the PostgreSQL log: a real PostgreSQL (started here) and a real node upstream.

One PostgreSQL server is started for the session by :mod:`indexshift.pgsandbox` from the
binaries on this machine; each test gets a database of its own. Without the binaries these
tests fail (they never skip): the PostgreSQL log would go untested.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from indexshift import gateway_link, pgsandbox
from indexshift.cluster import Cluster
from indexshift.errors import EnvironmentProblem
from indexshift.gateway import BackgroundGateway, GatewayConfig
from indexshift.gateway_client import gateway_status, wait_until_drained
from indexshift.gateway_protocol import Mode
from indexshift.journal import Phase
from indexshift.wal import Outcome, WalUnavailable
from indexshift.wal_postgres import PostgresWriteLog
from tests.conftest import Node
from tests.integration.migration_support import assert_alias_matches_model
from tests.integration.test_gateway import (
    Http,
    TcpProxy,
    Writer,
    _docs,
    _free_port,
    _make_index,
    assert_writers_kept,
    kill_twice_under_load,
    start_gateway_process,
)
from tests.integration.test_gateway_migration import _checkpoint, _prepare, migrate_under_writes

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch")]

SCHEMA = "indexshift_gateway"


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgsandbox.PgServer]:
    try:
        server = pgsandbox.start()
    except EnvironmentProblem as exc:
        pytest.fail(f"PostgreSQL for the gateway's log could not start: {exc}")
    sys.stderr.write(f"\nPostgreSQL started in {server.started_in_s:.2f} s "
                     f"(initdb + start, port {server.port})\n")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: pgsandbox.PgServer) -> str:
    """A fresh database for one test."""
    return pg_server.create_database(f"wal_{uuid.uuid4().hex[:12]}")


def _config(upstream: str, state_dir: Path, wal_url: str, **overrides: Any) -> GatewayConfig:
    return GatewayConfig(listen="127.0.0.1:0", upstream=upstream, wal_dir=state_dir,
                         wal_url=wal_url, **overrides)


def _query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        rows: list[tuple[Any, ...]] = connection.execute(
            statement.replace("{s}", SCHEMA), params or None).fetchall()
        return rows


def _log(url: str) -> list[tuple[int, int, str, str, int | None, int | None]]:
    """(seq, instance, method, path, outcome, status) of every record, in order."""
    return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]).decode(), r[4], r[5])
            for r in _query(url, "SELECT r.seq, r.instance, r.method, r.path, o.outcome, "
                                 "o.status FROM {s}.records r LEFT JOIN {s}.outcomes o "
                                 "USING (seq) ORDER BY r.seq")]


def _pending(url: str) -> dict[int, int]:
    """seq → owning instance of every record not yet applied."""
    return {int(seq): int(owner) for seq, owner in
            _query(url, "SELECT seq, owner FROM {s}.pending ORDER BY seq")}


def _versions(cluster: Cluster, index: str) -> dict[str, int]:
    cluster.refresh(index)
    hits = cluster.search(index, {"query": {"match_all": {}}, "size": 10_000,
                                  "version": True})["hits"]["hits"]
    return {hit["_id"]: int(hit["_version"]) for hit in hits}


def _owe_writes(gateway: BackgroundGateway, index: str, prefix: str,
                count: int) -> dict[str, int]:
    """``count`` creates through a gateway whose upstream is cut: each answered "pending".
    Document id → its log position."""
    send = Http(gateway.url)
    owed = {}
    for i in range(count):
        reply = send("PUT", f"/{index}/_create/{prefix}-{i}", {"i": i})
        seq = _pending_answer(reply.status, reply.body)
        assert seq is not None, (reply.status, reply.body)
        owed[f"{prefix}-{i}"] = seq
    send.close()
    return owed


def _pending_answer(reply_status: int, body: bytes) -> int | None:
    """The log position of a write the gateway took but upstream has not applied yet."""
    if reply_status != 503:
        return None
    error = json.loads(body)["error"]
    assert error["type"] == "indexshift_write_pending_exception", error
    return int(json.loads(body)["_indexshift"]["seq"])


# -- tests -----------------------------------------------------------------------------------


def test_writes_through_a_gateway_on_postgres_land_upstream(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-pg"
    _make_index(cluster, index)
    bulk = b"".join(b'{"index":{"_index":"%s","_id":"bulk-%d"}}\n{"i":%d}\n'
                    % (index.encode(), i, i) for i in range(50))
    with BackgroundGateway(_config(node.url, tmp_path / "state", pg_url)) as gw:
        send = Http(gw.url)
        answers = [send("PUT", f"/{index}/_doc/a", {"n": 1}).status,
                   send("PUT", f"/{index}/_doc/b", {"n": 2}).status,
                   send("POST", f"/{index}/_update/a", {"doc": {"m": 3}}).status,
                   send("DELETE", f"/{index}/_doc/b").status,
                   send("POST", "/_bulk", bulk,
                        {"Content-Type": "application/x-ndjson"}).status]
        send.close()
        status = wait_until_drained(gw.url, timeout=30)
    assert answers == [201, 201, 200, 200, 200]
    assert _docs(cluster, index) == {"a": {"n": 1, "m": 3},
                                     **{f"bulk-{i}": {"i": i} for i in range(50)}}
    log = _log(pg_url)
    assert [row[0] for row in log] == [1, 2, 3, 4, 5]
    assert [(row[2], row[3]) for row in log] == [
        ("PUT", f"/{index}/_doc/a"), ("PUT", f"/{index}/_doc/b"),
        ("POST", f"/{index}/_update/a"), ("DELETE", f"/{index}/_doc/b"), ("POST", "/_bulk")]
    assert all(row[4] == Outcome.APPLIED for row in log), log
    assert _pending(pg_url) == {}
    assert status["wal"]["last_seq"] == 5 and status["wal"]["pending"] == 0
    with PostgresWriteLog.open(pg_url) as wal:  # the body is kept byte for byte
        record = wal.read_any(5)
        assert record is not None and record.body == bulk
        assert record.header("content-type") == "application/x-ndjson"


def test_two_gateways_on_one_database_write_one_gap_free_ordered_log(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-two"
    _make_index(cluster, index)
    per_client = 40
    sent: dict[str, list[int]] = {}  # client → the seqs of its writes, in the order sent
    failures: list[str] = []

    def client(name: str, url: str) -> None:
        send = Http(url)
        seqs: list[int] = []
        try:
            for k in range(per_client):
                reply = send("PUT", f"/{index}/_doc/{name}-{k}", {"client": name, "k": k})
                if reply.status not in (200, 201):
                    failures.append(f"{name}-{k}: {reply.status} {reply.body[:200]!r}")
                    continue
                seqs.append(int(reply.headers["X-Indexshift-Seq"]))
        finally:
            send.close()
            sent[name] = seqs

    with BackgroundGateway(_config(node.url, tmp_path / "a", pg_url)) as first, \
            BackgroundGateway(_config(node.url, tmp_path / "b", pg_url)) as second:
        threads = [threading.Thread(target=client, args=(f"{gw_name}{c}", gw.url))
                   for gw_name, gw in (("a", first), ("b", second)) for c in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_until_drained(first.url, timeout=30)
        wait_until_drained(second.url, timeout=30)
    assert failures == []
    total = per_client * len(sent)
    for name, seqs in sent.items():
        assert seqs == sorted(seqs) and len(set(seqs)) == per_client, name  # sequential client
    assert sorted(seq for seqs in sent.values() for seq in seqs) == list(range(1, total + 1))
    log = _log(pg_url)
    assert [row[0] for row in log] == list(range(1, total + 1))  # gap-free, one order
    by_seq = {seq: name for name, seqs in sent.items() for seq in seqs}
    for seq, _, method, path, outcome, status in log:
        assert (method, path) == ("PUT", f"/{index}/_doc/{by_seq[seq]}-"
                                         f"{sent[by_seq[seq]].index(seq)}")
        assert outcome == Outcome.APPLIED and status in (200, 201)
    instances = {row[1] for row in log}
    assert len(instances) == 2
    seqs_of = {i: [row[0] for row in log if row[1] == i] for i in instances}
    low, high = sorted(instances)
    # One shared order, not two blocks side by side: each instance's writes fall between the
    # other's.
    assert min(seqs_of[low]) < max(seqs_of[high]) and min(seqs_of[high]) < max(seqs_of[low])
    assert _query(pg_url, "SELECT last_seq FROM {s}.head") == [(total,)]
    assert _pending(pg_url) == {}
    assert len(_docs(cluster, index)) == total


def test_an_upstream_outage_queues_in_postgres_and_each_write_is_applied_once(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-outage"
    _make_index(cluster, index)
    proxy = TcpProxy(node.url)  # not started: upstream refuses connections
    per_gateway = 15
    queued: dict[str, int] = {}  # doc id → seq
    config = {"write_hold_s": 0.2}
    with BackgroundGateway(_config(proxy.url, tmp_path / "a", pg_url, **config)) as first, \
            BackgroundGateway(_config(proxy.url, tmp_path / "b", pg_url, **config)) as second:
        for name, gw in (("a", first), ("b", second)):
            send = Http(gw.url)
            for i in range(per_gateway):
                doc_id = f"{name}-{i}"
                reply = send("PUT", f"/{index}/_create/{doc_id}", {"from": name, "i": i})
                seq = _pending_answer(reply.status, reply.body)
                assert seq is not None, (reply.status, reply.body)
                queued[doc_id] = seq
            send.close()
        pending = _pending(pg_url)
        assert sorted(pending) == sorted(queued.values())
        assert len(set(pending.values())) == 2  # each instance owes its own writes
        assert gateway_status(first.url)["wal"]["pending"] == per_gateway
        # A second instance's queue does not leak into the first's: each replays its own.
        proxy.start()
        wait_until_drained(first.url, timeout=60)
        wait_until_drained(second.url, timeout=60)
    proxy.stop()
    versions = _versions(cluster, index)
    assert versions == dict.fromkeys(queued, 1)  # created once: a second apply would be 409
    outcomes = {row[0]: (row[4], row[5]) for row in _log(pg_url)}
    assert {outcomes[seq] for seq in queued.values()} == {(Outcome.APPLIED, 201)}
    assert _pending(pg_url) == {}


def test_the_queue_of_a_gone_instance_is_adopted_once_by_the_next(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-adopt"
    _make_index(cluster, index)
    proxy = TcpProxy(node.url)
    config = {"write_hold_s": 0.2}
    owed: dict[str, int] = {}
    with BackgroundGateway(_config(proxy.url, tmp_path / "stays", pg_url, **config)) as stays:
        with BackgroundGateway(_config(proxy.url, tmp_path / "gone", pg_url, **config)) as gone:
            for gw, prefix in ((gone, "gone"), (stays, "stays")):
                owed.update(_owe_writes(gw, index, prefix, 12))
        # "gone" stopped with 12 writes still owed upstream; two new instances open at once.
        gone_seqs = sorted(seq for doc_id, seq in owed.items() if doc_id.startswith("gone"))
        newcomers = [BackgroundGateway(_config(proxy.url, tmp_path / f"new{n}", pg_url,
                                               **config)) for n in range(2)]
        starters = [threading.Thread(target=gw.start) for gw in newcomers]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join(60)
        try:
            adopted = [set(gw.gateway.wal.pending_seqs()) if gw.gateway.wal else set()
                       for gw in newcomers]
            assert adopted[0].isdisjoint(adopted[1])
            assert sorted(adopted[0] | adopted[1]) == gone_seqs
            assert sum(gateway_status(gw.url)["wal"]["replayed_on_open"]
                       for gw in newcomers) == len(gone_seqs)
            assert gateway_status(stays.url)["wal"]["pending"] == 12  # a live one keeps its own
            proxy.start()
            for gw in [stays, *newcomers]:
                wait_until_drained(gw.url, timeout=60)
        finally:
            for gw in newcomers:
                gw.stop()
    proxy.stop()
    assert _versions(cluster, index) == dict.fromkeys(owed, 1)
    outcomes = {row[0]: (row[4], row[5]) for row in _log(pg_url)}
    assert {outcomes[seq] for seq in owed.values()} == {(Outcome.APPLIED, 201)}
    assert _pending(pg_url) == {}


def test_an_unreachable_database_refuses_writes_and_the_gateway_recovers(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path,
        pg_server: pgsandbox.PgServer, pg_url: str) -> None:
    index = f"{alias_name}-dbdown"
    _make_index(cluster, index)
    database = pg_url.rsplit("/", 1)[1]
    pg_proxy = TcpProxy(f"http://127.0.0.1:{pg_server.port}")
    pg_proxy.start()
    via_proxy = f"postgresql://{pg_server.user}@127.0.0.1:{pg_proxy.port}/{database}"
    try:
        with BackgroundGateway(_config(node.url, tmp_path / "state", via_proxy)) as gw:
            send = Http(gw.url)
            assert send("PUT", f"/{index}/_doc/before", {"n": 1}).status == 201
            pg_proxy.stop()
            refused = send("PUT", f"/{index}/_doc/during", {"n": 2})
            assert refused.status == 503, refused.body
            assert refused.json()["error"]["type"] == "indexshift_wal_unavailable"
            assert send("GET", f"/{index}/_doc/before").status == 200  # reads keep working
            assert gateway_status(gw.url)["wal"]["state"] == "failed"
            pg_proxy.start()
            deadline = time.monotonic() + 30
            while True:
                reply = send("PUT", f"/{index}/_doc/after", {"n": 3})
                if reply.status == 201 or time.monotonic() > deadline:
                    break
                assert reply.status == 503, reply.body
                time.sleep(0.2)
            assert reply.status == 201, reply.body
            status = wait_until_drained(gw.url, timeout=30)
            send.close()
        assert status["wal"]["state"] == "ok"
    finally:
        pg_proxy.stop()
    assert set(_docs(cluster, index)) == {"before", "after"}  # the refused write: nowhere
    log = _log(pg_url)
    paths = [row[3] for row in log]
    assert f"/{index}/_doc/during" not in paths or all(
        row[4] == Outcome.ABANDONED for row in log if row[3].endswith("/during"))
    assert _pending(pg_url) == {}


def test_kill_9_and_restart_on_postgres_loses_no_acknowledged_write(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-kill"
    _make_index(cluster, index)
    state = tmp_path / "state"
    port = _free_port()
    writers = [Writer(f"k{w}", index, [f"k{w}-{i}" for i in range(20)], seed=30 + w)
               for w in range(3)]
    # Each restart is a new instance: it adopts what the dead one owed in PostgreSQL; the
    # mode is kept in --state-dir.
    queued_when_killed = kill_twice_under_load(
        lambda *extra: start_gateway_process(node.url, pg_url, port, tmp_path, "--state-dir",
                                             str(state), *extra),
        f"http://127.0.0.1:{port}", writers, lambda: sorted(_pending(pg_url)))
    assert_writers_kept(cluster, index, writers)
    log = _log(pg_url)
    assert [row[0] for row in log] == list(range(1, len(log) + 1))
    outcomes = {row[0] for row in log if row[4] is not None}
    assert set(queued_when_killed) <= outcomes
    assert _pending(pg_url) == {}
    assert len(_query(pg_url, "SELECT id FROM {s}.instances")) == 3


def test_a_client_sees_the_log_position_of_a_queued_write(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-ro"
    _make_index(cluster, index)
    with BackgroundGateway(_config(node.url, tmp_path / "state", pg_url)) as gw:
        gw.set_mode(Mode.READ_ONLY)
        send = Http(gw.url)
        replies = [send("PUT", f"/{index}/_doc/{i}", {"i": i}) for i in range(5)]
        assert [r.status for r in replies] == [202] * 5
        seqs = [int(r.headers["X-Indexshift-Seq"]) for r in replies]
        assert seqs == [1, 2, 3, 4, 5]
        assert sorted(_pending(pg_url)) == seqs
        assert cluster.get_doc(index, "0") is None
        gw.set_mode(Mode.NORMAL)
        wait_until_drained(gw.url, timeout=30)
        send.close()
    assert _docs(cluster, index) == {str(i): {"i": i} for i in range(5)}
    assert _pending(pg_url) == {}


# -- the log alone, against the real PostgreSQL ------------------------------------------------


def _append(wal: PostgresWriteLog, doc_id: str) -> int:
    return wal.append_durable("PUT", f"/i/_doc/{doc_id}", "", [("content-type",
                                                                 "application/json")], b"{}")


def test_a_failed_transaction_leaves_no_gap_and_a_lost_commit_answer_is_abandoned(
        pg_url: str) -> None:
    def fail_before_commit(operation: str) -> None:
        if operation == "write":
            raise OSError("connection reset before COMMIT")

    def lose_commit_answer(operation: str) -> None:
        if operation == "commit":
            raise OSError("connection reset during COMMIT")

    with PostgresWriteLog.open(pg_url, retry_interval_s=0.05) as wal:
        assert _append(wal, "first") == 1
        wal.fault = fail_before_commit
        with pytest.raises(WalUnavailable, match="connection reset before COMMIT"):
            _append(wal, "rolled-back")
        wal.fault = lose_commit_answer
        time.sleep(0.1)  # within the retry interval an append is refused at once
        with pytest.raises(WalUnavailable, match="connection reset during COMMIT"):
            _append(wal, "committed-unknown")
        wal.fault = None
        time.sleep(0.1)  # the retry interval
        # The rolled-back transaction gave its number back; the committed one kept its own.
        assert _append(wal, "after") == 3
        assert wal.pending_seqs() == [1, 3]
        assert wal.snapshot_stats().failures == 2
    log = _log(pg_url)
    assert [(row[0], row[3], row[4]) for row in log] == [
        (1, "/i/_doc/first", None), (2, "/i/_doc/committed-unknown", Outcome.ABANDONED),
        (3, "/i/_doc/after", None)]
    with PostgresWriteLog.open(pg_url) as again:  # the client was refused: never replayed
        assert again.pending_seqs() == [1, 3]
        assert again.read(3).path == "/i/_doc/after"


def test_outcomes_are_committed_and_records_read_back_in_order(pg_url: str) -> None:
    with PostgresWriteLog.open(pg_url, marker_flush_interval_s=0.01) as wal:
        seqs = [_append(wal, str(n)) for n in range(600)]
        assert seqs == list(range(1, 601))
        wal.mark([(seq, Outcome.APPLIED, 201) for seq in seqs[:100]])
        wal.mark([(seqs[100], Outcome.REJECTED, 400)])
        assert not wal.is_pending(1) and wal.is_pending(102)
        with pytest.raises(KeyError):
            wal.read(1)
        # Read-ahead: one query serves the next records (the replay reads them in order).
        assert [wal.read(seq).path for seq in seqs[101:400]] == [
            f"/i/_doc/{n}" for n in range(101, 400)]
    outcomes = dict(_query(pg_url, "SELECT seq, outcome FROM {s}.outcomes"))
    assert len(outcomes) == 101 and outcomes[101] == Outcome.REJECTED
    with PostgresWriteLog.open(pg_url) as again:
        assert again.pending_seqs() == seqs[101:]
        assert again.snapshot_stats().applied_through == 101
        assert again.snapshot_stats().last_seq == 600


# -- the migration's side: the log served back, a migration through the gateway -------------


def _wait_for_outcomes(gateway_url: str, count: int) -> list[dict[str, Any]]:
    """The whole log once ``count`` records are there, each with its outcome (the PostgreSQL
    log commits outcomes a moment after the replay applied them)."""
    deadline = time.monotonic() + 30
    while True:
        records = gateway_link.read_log(gateway_url, 0)
        if len(records) >= count and all(r["outcome"] is not None for r in records):
            return records
        assert time.monotonic() < deadline, records
        time.sleep(0.05)


def _comparable(records: list[dict[str, Any]], index: str) -> list[tuple[Any, ...]]:
    """What two logs given the same writes agree on: all but the time, the index name aside."""
    return [(r["seq"], r["method"], r["path"].replace(index, "INDEX"), r["query"],
             r["headers"], base64.b64decode(r["body_b64"]).replace(index.encode(), b"INDEX"),
             r["outcome"], r["status"]) for r in records]


def _same_writes(url: str, index: str) -> list[int]:
    send = Http(url)
    bulk = b"".join(b'{"index":{"_id":"bulk-%d"}}\n{"i":%d}\n' % (i, i) for i in range(3))
    try:
        return [send("PUT", f"/{index}/_doc/a", {"n": 1}).status,
                send("PUT", f"/{index}/_doc/b?refresh=true", {"n": 2}).status,
                send("POST", f"/{index}/_update/a", {"doc": {"m": 3}}).status,
                send("PUT", f"/{index}/_create/a", {"n": 9}).status,  # refused: it exists
                send("DELETE", f"/{index}/_doc/b").status,
                send("POST", f"/{index}/_bulk", bulk,
                     {"Content-Type": "application/x-ndjson"}).status,
                send("PUT", f"/{index}/_doc/%C3%A9t%C3%A9", {"n": 5}).status]
    finally:
        send.close()


@pytest.mark.engines("opensearch", "elasticsearch")
def test_the_log_endpoint_serves_the_postgres_log_as_it_serves_the_file_log(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    on_files, on_postgres = f"{alias_name}-files", f"{alias_name}-pg"
    _make_index(cluster, on_files)
    _make_index(cluster, on_postgres)
    file_config = GatewayConfig(listen="127.0.0.1:0", upstream=node.url,
                                wal_dir=tmp_path / "wal")
    with BackgroundGateway(file_config) as files, \
            BackgroundGateway(_config(node.url, tmp_path / "state", pg_url)) as postgres:
        answers = _same_writes(files.url, on_files)
        assert _same_writes(postgres.url, on_postgres) == answers
        assert answers == [201, 201, 200, 409, 200, 200, 201]
        wait_until_drained(files.url, timeout=30)
        wait_until_drained(postgres.url, timeout=30)
        from_files = _wait_for_outcomes(files.url, len(answers))
        from_postgres = _wait_for_outcomes(postgres.url, len(answers))
        assert [r["seq"] for r in from_postgres] == list(range(1, len(answers) + 1))
        assert _comparable(from_postgres, on_postgres) == _comparable(from_files, on_files)
        assert [(r["outcome"], r["status"]) for r in from_postgres] == [
            ("applied", 201), ("applied", 201), ("applied", 200), ("rejected", 409),
            ("applied", 200), ("applied", 200), ("applied", 201)]
        assert from_postgres[6]["path"] == f"/{on_postgres}/_doc/%C3%A9t%C3%A9"
        # What a migration asks: its start position, then pages after it, up to a fence.
        assert gateway_link.log_position(postgres.url) == len(answers)
        send = Http(postgres.url)
        page = send("GET", "/_indexshift/gateway/log?after=2&limit=2").json()
        assert [r["seq"] for r in page["records"]] == [3, 4]
        assert page["more"] is True and page["next_after"] == 4
        assert page["last_seq"] == len(answers)
        tail = send("GET", "/_indexshift/gateway/log?after=4&limit=10").json()
        assert [r["seq"] for r in tail["records"]] == [5, 6, 7] and tail["more"] is False
        send.close()
        assert [r["seq"] for r in gateway_link.read_log(postgres.url, 2, until=5)] == [3, 4, 5]
        reduction = gateway_link.reduce_tail(from_postgres, {on_postgres}, 0)
        # Per document its last applied operation, in that operation's order (the refused
        # create of "a" changed nothing).
        assert list(reduction.last_ops) == ["a", "b", "bulk-0", "bulk-1", "bulk-2", "été"]
        assert reduction.through == len(answers) and reduction.unapplied == 1
        # The log is shared: another instance's writes are served too, in the one order.
        with BackgroundGateway(_config(node.url, tmp_path / "other", pg_url)) as other:
            assert Http(other.url)("PUT", f"/{on_postgres}/_doc/z", {"n": 0}).status == 201
        records = gateway_link.read_log(postgres.url, len(answers))
        assert [(r["seq"], r["path"]) for r in records] == [
            (len(answers) + 1, f"/{on_postgres}/_doc/z")]


def test_a_migration_through_a_gateway_on_postgres_keeps_every_acknowledged_write(
        reindex_node: Node, reindex_cluster: Cluster, reindex_alias: str, tmp_path: Path,
        pg_url: str) -> None:
    """~100 writes/s through a gateway on the PostgreSQL log while a migration copies, replays
    the log tail into green, holds writes to switch and monitors."""
    spec, source = _prepare(reindex_cluster, reindex_alias, tmp_path, 5000,
                            "rollout: {monitor_seconds: 2, interval_seconds: 1, "
                            "doc_count_drop_max: 100000}")
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    with BackgroundGateway(_config(reindex_node.url, tmp_path / "state", pg_url)) as gw:
        run = migrate_under_writes(reindex_node, gw.url, reindex_alias, source,
                                   tmp_path / "migrations", seed=7)
    report, writer, acknowledged_at, status = run.report, run.writer, run.acknowledged_at, \
        run.status
    assert report["completed"] is True, report
    assert writer.failures == [], writer.failures[:5]
    assert acknowledged_at[str(Phase.REINDEX_100)] > acknowledged_at[str(Phase.REINDEX_STARTED)]
    assert writer.acknowledged > acknowledged_at[str(Phase.ALIAS_SWITCHED)]
    assert next(iter(reindex_cluster.alias_targets(reindex_alias))) != blue
    assert_alias_matches_model(reindex_cluster, reindex_alias, writer.model, spec)
    copied = _checkpoint(reindex_cluster, reindex_alias, Phase.REINDEX_100)
    assert copied["gateway_replay"]["ids"] > 0  # the log tail was read back from PostgreSQL
    switched = _checkpoint(reindex_cluster, reindex_alias, Phase.ALIAS_SWITCHED)
    assert switched["hold_ms"] > 0 and "write_block_ms" not in switched
    assert status["hold"]["active"] is False and status["mirror"]["active"] is False
    assert status["wal"]["pending"] == 0 and _pending(pg_url) == {}
    logged = _log(pg_url)
    assert [row[0] for row in logged] == list(range(1, len(logged) + 1))
    assert len(logged) >= writer.acknowledged


# -- the replay worker on a shared log -------------------------------------------------------


@pytest.mark.engines("opensearch", "elasticsearch")
def test_a_running_instance_adopts_the_queue_of_a_gone_one_without_a_restart(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path, pg_url: str) -> None:
    index = f"{alias_name}-orphans"
    _make_index(cluster, index)
    proxy = TcpProxy(node.url)  # not started: upstream refuses, writes stay owed
    config = {"write_hold_s": 0.2}
    owed: dict[str, int] = {}
    with BackgroundGateway(_config(proxy.url, tmp_path / "a", pg_url, **config)) as first, \
            BackgroundGateway(_config(proxy.url, tmp_path / "b", pg_url, **config)) as second:
        for gw in (first, second):
            wal = gw.gateway.wal
            assert isinstance(wal, PostgresWriteLog)
            wal.orphan_grace_s = 0.5  # the default waits out a database restart
        instances = {}
        with BackgroundGateway(_config(proxy.url, tmp_path / "gone", pg_url, **config)) as gone:
            for gw, prefix in ((gone, "gone"), (first, "first"), (second, "second")):
                owed.update(_owe_writes(gw, index, prefix, 8))
                wal = gw.gateway.wal
                assert isinstance(wal, PostgresWriteLog)
                instances[prefix] = wal.instance
        # "gone" stopped owing 8 writes, and nothing restarts: the running instances take them.
        gone_seqs = {seq for doc_id, seq in owed.items() if doc_id.startswith("gone")}
        deadline = time.monotonic() + 30
        while any(_pending(pg_url).get(seq) == instances["gone"] for seq in gone_seqs):
            assert time.monotonic() < deadline, _pending(pg_url)
            time.sleep(0.2)
        owners = _pending(pg_url)
        assert sorted(owners) == sorted(owed.values())  # all still owed, none lost
        for prefix in ("first", "second"):  # a live instance keeps its own
            assert {owners[owed[f"{prefix}-{i}"]] for i in range(8)} == {instances[prefix]}
        adopted = [set(gw.gateway.wal.pending_seqs()) & gone_seqs if gw.gateway.wal else set()
                   for gw in (first, second)]
        assert adopted[0].isdisjoint(adopted[1]) and adopted[0] | adopted[1] == gone_seqs
        queued = sum(gateway_status(gw.url)["queue"]["writes"] for gw in (first, second))
        assert queued == len(owed)  # in the replay queues, not only in the database
        proxy.start()
        for gw in (first, second):
            wait_until_drained(gw.url, timeout=60)
    proxy.stop()
    assert _versions(cluster, index) == dict.fromkeys(owed, 1)  # each applied once
    outcomes = {row[0]: (row[4], row[5]) for row in _log(pg_url)}
    assert {outcomes[seq] for seq in owed.values()} == {(Outcome.APPLIED, 201)}
    assert _pending(pg_url) == {}


@pytest.mark.engines("opensearch", "elasticsearch")
def test_the_replay_waits_out_a_short_database_outage_and_loses_nothing(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path,
        pg_server: pgsandbox.PgServer, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    index = f"{alias_name}-pgblip"
    _make_index(cluster, index)
    database = pg_url.rsplit("/", 1)[1]
    pg_proxy = TcpProxy(f"http://127.0.0.1:{pg_server.port}")
    pg_proxy.start()
    via_proxy = f"postgresql://{pg_server.user}@127.0.0.1:{pg_proxy.port}/{database}"
    # No record kept in memory, and bulk requests (replayed as logged, not rewritten into a
    # batch beforehand): the replay reads every one back from the database.
    config = _config(node.url, tmp_path / "state", via_proxy, queue_memory_bytes=1)
    try:
        with BackgroundGateway(config) as gw:
            gw.set_mode(Mode.READ_ONLY)
            send = Http(gw.url)
            replies = [send("POST", "/_bulk", b'{"index":{"_index":"%s","_id":"%d"}}\n'
                                              b'{"i":%d}\n' % (index.encode(), i, i),
                            {"Content-Type": "application/x-ndjson"}) for i in range(20)]
            assert [r.status for r in replies] == [202] * 20
            pg_proxy.stop()
            deadline = time.monotonic() + 30
            while gateway_status(gw.url)["wal"]["state"] != "failed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            gw.set_mode(Mode.NORMAL)  # the replay starts while the database is away
            time.sleep(2)  # several attempts, each answered "not now"
            status = gateway_status(gw.url)
            assert status["queue"]["writes"] == 20, status  # still queued, none dropped
            assert cluster.get_doc(index, "0") is None
            assert any("to be read again later" in r.getMessage() for r in caplog.records)
            # A migration asking for the log meanwhile is told to come back, not given a hole.
            page = send("GET", "/_indexshift/gateway/log?after=0&limit=10")
            assert page.status == 503, page.body
            assert page.json()["error"]["type"] == "indexshift_wal_unavailable"
            pg_proxy.start()
            wait_until_drained(gw.url, timeout=60)
            send.close()
    finally:
        pg_proxy.stop()
    assert _docs(cluster, index) == {str(i): {"i": i} for i in range(20)}
    assert {row[4] for row in _log(pg_url)} == {Outcome.APPLIED}
    assert _pending(pg_url) == {}
