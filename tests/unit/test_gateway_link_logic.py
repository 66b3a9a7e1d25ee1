"""The gateway's migration link without a node: reducing a log tail, the mirror's rewrite, and
reading the log back from segments."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from indexshift.gateway import (
    DocumentLocks,
    LogGap,
    log_records_after,
    mirror_keys,
    mirror_write,
)
from indexshift.gateway_link import LoggedOp, ops_of_record, reduce_tail
from indexshift.wal import Outcome, WriteAheadLog, WriteRecord


def _record(seq: int, method: str, path: str, body: bytes = b"", outcome: str | None = "applied",
            query: str = "", headers: list[list[str]] | None = None) -> dict[str, Any]:
    return {"seq": seq, "method": method, "path": path, "query": query,
            "headers": headers or [["content-type", "application/json"]],
            "body_b64": base64.b64encode(body).decode(), "outcome": outcome,
            "status": 200 if outcome == "applied" else None}


def _bulk(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_ops_of_single_writes_and_a_bulk() -> None:
    assert ops_of_record(_record(3, "PUT", "/a/_doc/x", b'{"n":1}')) == [
        LoggedOp(3, "index", "a", "x")]
    assert ops_of_record(_record(4, "POST", "/a/_update/y%2Fz", b'{"doc":{}}')) == [
        LoggedOp(4, "update", "a", "y/z")]
    assert ops_of_record(_record(5, "DELETE", "/a/_doc/x")) == [LoggedOp(5, "delete", "a", "x")]
    assert ops_of_record(_record(6, "POST", "/a/_doc", b"{}")) == [LoggedOp(6, "index", "a", None)]
    body = _bulk({"index": {"_id": "1"}}, {"n": 1}, {"delete": {"_index": "b", "_id": "2"}},
                 {"update": {"_id": "3"}}, {"doc": {"n": 2}})
    assert ops_of_record(_record(7, "POST", "/a/_bulk", gzip.compress(body),
                                 headers=[["content-encoding", "gzip"]])) == [
        LoggedOp(7, "index", "a", "1"), LoggedOp(7, "delete", "b", "2"),
        LoggedOp(7, "update", "a", "3")]
    assert ops_of_record(_record(8, "GET", "/a/_search")) == []


def test_reduce_tail_keeps_the_last_op_per_id_in_sequence_order() -> None:
    records = [
        _record(12, "DELETE", "/alias/_doc/a"),
        _record(11, "PUT", "/alias/_doc/a", b'{"v":1}'),  # out of order on purpose
        _record(13, "PUT", "/blue/_doc/b", b'{"v":1}'),
        _record(14, "PUT", "/other/_doc/c", b'{"v":1}'),
        _record(15, "PUT", "/alias/_doc/d", b'{"bad":1}', outcome="rejected"),
        _record(16, "POST", "/alias/_doc", b'{"v":1}'),
        _record(17, "POST", "/alias/_update/b", b'{"doc":{"v":2}}'),
    ]
    reduced = reduce_tail(records, {"alias", "blue"}, after=10)
    assert list(reduced.last_ops) == ["a", "b"]  # a's last op (12) before b's (17)
    assert reduced.last_ops["a"] == LoggedOp(12, "delete", "alias", "a")
    assert reduced.last_ops["b"] == LoggedOp(17, "update", "alias", "b")
    assert (reduced.through, reduced.without_id, reduced.unapplied, reduced.elsewhere) == \
        (17, 1, 1, 1)


def test_reduce_tail_stops_its_position_before_a_write_not_applied_yet() -> None:
    records = [_record(21, "PUT", "/alias/_doc/a", b"{}"),
               _record(22, "PUT", "/alias/_doc/b", b"{}", outcome=None),
               _record(23, "PUT", "/alias/_doc/c", b"{}")]
    reduced = reduce_tail(records, {"alias"}, after=20)
    # Every document is synced now, but the next round reads from 22 again: 22 may still
    # reach blue after this round looked at it.
    assert list(reduced.last_ops) == ["a", "b", "c"]
    assert reduced.through == 21
    assert reduce_tail([], {"alias"}, after=20).through == 20


def test_mirror_rewrites_a_single_write_and_drops_conditions_of_the_other_index() -> None:
    mirrored = mirror_write("PUT", "/alias/_doc/a%2Fb", "if_seq_no=4&if_primary_term=1&refresh="
                            "true", "application/json", None, b'{"n":1}', alias="alias",
                            index="alias-v1")
    assert mirrored is not None
    assert mirrored.target == "/alias-v1/_doc/a%2Fb?refresh=true"
    assert (mirrored.method, mirrored.body) == ("PUT", b'{"n":1}')
    assert mirror_write("PUT", "/other/_doc/a", "", None, None, b"{}", alias="alias",
                        index="alias-v1") is None
    assert mirror_write("GET", "/alias/_doc/a", "", None, None, b"", alias="alias",
                        index="alias-v1") is None


def test_mirror_keeps_only_accepted_bulk_items_on_the_alias() -> None:
    body = _bulk({"index": {"_id": "1", "if_seq_no": 3, "if_primary_term": 1}}, {"n": 1},
                 {"delete": {"_index": "other", "_id": "2"}},
                 {"index": {"_id": "3"}}, {"n": 3},
                 {"delete": {"_id": "4"}})
    mirrored = mirror_write("POST", "/alias/_bulk", "refresh=wait_for&require_alias=true",
                            "application/x-ndjson", "gzip", gzip.compress(body), alias="alias",
                            index="blue", item_statuses=[201, 200, 400, 200])
    assert mirrored is not None
    assert mirrored.target == "/_bulk?refresh=wait_for"
    assert mirrored.content_encoding is None
    lines = [json.loads(line) for line in mirrored.body.splitlines()]
    assert lines == [{"index": {"_id": "1", "_index": "blue"}}, {"n": 1},
                     {"delete": {"_id": "4", "_index": "blue"}}]
    assert mirror_write("POST", "/_bulk", "", None, None,
                        _bulk({"delete": {"_index": "other", "_id": "2"}}), alias="alias",
                        index="blue") is None


def test_log_records_after_reads_applied_and_pending_records_across_segments(
        tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=400) as wal:
        seqs = []
        for n in range(12):
            seqs.append(wal.append_durable("PUT", f"/a/_doc/{n}", "", [], b'{"n":%d}' % n))
        wal.mark([(seq, Outcome.APPLIED, 201) for seq in seqs[:10]])
        wal.mark([(seqs[10], Outcome.REJECTED, 400)])
    page = log_records_after(tmp_path, after=seqs[2], limit=5)
    assert [r["seq"] for r in page["records"]] == seqs[3:8]
    assert page["more"] is True and page["next_after"] == seqs[7]
    rest = log_records_after(tmp_path, after=page["next_after"], limit=100)
    assert [r["seq"] for r in rest["records"]] == seqs[8:]
    assert [r["outcome"] for r in rest["records"]] == ["applied", "applied", "rejected", None]
    assert base64.b64decode(rest["records"][0]["body_b64"]) == b'{"n":8}'
    bounded = log_records_after(tmp_path, after=0, limit=100, until=seqs[1])
    assert [r["seq"] for r in bounded["records"]] == seqs[:2]


def test_log_records_after_says_when_records_are_gone(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=300) as wal:
        seqs = [wal.append_durable("PUT", f"/a/_doc/{n}", "", [], b"{}") for n in range(8)]
        wal.mark([(seq, Outcome.APPLIED, 201) for seq in seqs])
        assert wal.prune_applied()
    with pytest.raises(LogGap):
        log_records_after(tmp_path, after=0, limit=10)


def test_mirror_keys_name_the_documents_of_the_alias_a_write_touches() -> None:
    def record(method: str, path: str, body: bytes = b"") -> WriteRecord:
        return WriteRecord(1, 0, method, path, "", (), body)

    assert mirror_keys(record("PUT", "/alias/_doc/a"), "alias") == ["a"]
    assert mirror_keys(record("POST", "/alias/_doc", b"{}"), "alias") == []
    bulk = _bulk({"index": {"_id": "1"}}, {}, {"delete": {"_index": "other", "_id": "2"}},
                 {"delete": {"_index": "alias", "_id": "3"}})
    assert mirror_keys(record("POST", "/alias/_bulk", bulk), "alias") == ["1", "3"]
    assert len(mirror_keys(record("POST", "/_bulk", b"not json\n"), "alias")) == 1


def test_document_locks_serialize_one_document_and_are_dropped_after_use() -> None:
    async def scenario() -> tuple[list[str], int]:
        locks = DocumentLocks()
        order: list[str] = []

        async def write(name: str, keys: list[str], pause: float) -> None:
            async with locks.hold(keys):
                order.append(f"{name}+")
                await asyncio.sleep(pause)
                order.append(f"{name}-")

        await asyncio.gather(write("a", ["x", "y"], 0.02), write("b", ["y"], 0),
                             write("c", ["z"], 0))
        return order, len(locks)

    order, left = asyncio.run(scenario())
    assert order.index("b+") > order.index("a-")  # b waited for a on y
    assert order.index("c+") < order.index("a-")  # c's document is another one
    assert left == 0
