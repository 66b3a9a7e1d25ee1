"""The event log without a node: parsing log records, materializing, the immutable archive."""

from __future__ import annotations

import gzip
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from indexshift.events import (
    ArchiveTampered,
    Event,
    addressed_to,
    archive_segments,
    closed_segments,
    events_of_log,
    load_log,
    materialize,
    materialize_events,
    merge_partial,
    parse_record,
    parse_until,
    read_manifest,
    to_ns,
    verify_archive,
)
from indexshift.wal import AppliedMarker, Outcome, WriteAheadLog, WriteRecord

JSON_HEADERS = (("content-type", "application/json"),)


def _record(seq: int, method: str, path: str, body: Any = b"", query: str = "",
            headers: tuple[tuple[str, str], ...] = JSON_HEADERS, time_ns: int = 0) -> WriteRecord:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WriteRecord(seq, time_ns or seq * 1000, method, path, query, headers, raw)


def _ndjson(*lines: Any) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _event(seq: int, op: str, doc_id: str, source: Any = None, upsert: Any = None) -> Event:
    return Event(seq, seq * 1000, "a", op, doc_id, source, upsert)  # type: ignore[arg-type]


# -- parsing -----------------------------------------------------------------------------------


def test_single_document_writes_become_events() -> None:
    index = parse_record(_record(1, "PUT", "/a/_doc/x", {"n": 1})).events
    create = parse_record(_record(2, "PUT", "/a/_create/y", {"n": 2})).events
    as_create = parse_record(_record(3, "PUT", "/a/_doc/z", {"n": 3}, query="op_type=create"))
    update = parse_record(_record(4, "POST", "/a/_update/x", {"doc": {"m": 1}})).events
    delete = parse_record(_record(5, "DELETE", "/a/_doc/x")).events
    encoded = parse_record(_record(6, "PUT", "/a/_doc/a%2Fb", {"n": 6})).events
    assert [(e.op, e.doc_id, e.source) for e in index] == [("index", "x", {"n": 1})]
    assert [(e.op, e.doc_id) for e in create] == [("create", "y")]
    assert [e.op for e in as_create.events] == ["create"]
    assert [(e.op, e.source, e.upsert) for e in update] == [("update", {"m": 1}, None)]
    assert [(e.op, e.doc_id, e.source) for e in delete] == [("delete", "x", None)]
    assert encoded[0].doc_id == "a/b" and encoded[0].index == "a"
    assert index[0].seq == 1 and index[0].time == datetime.fromtimestamp(1e-6, UTC)


def test_gzip_bodies_are_read() -> None:
    body = gzip.compress(json.dumps({"n": 1}).encode())
    record = _record(1, "PUT", "/a/_doc/x", body,
                     headers=(*JSON_HEADERS, ("content-encoding", "gzip")))
    assert parse_record(record).events[0].source == {"n": 1}
    broken = _record(2, "PUT", "/a/_doc/x", b"not gzip",
                     headers=(("content-encoding", "gzip"),))
    assert parse_record(broken).skipped == {"unreadable_body": 1}


def test_bulk_items_become_events_in_order() -> None:
    body = _ndjson({"index": {"_id": "1"}}, {"n": 1},
                   {"create": {"_index": "b", "_id": "2"}}, {"n": 2},
                   {"update": {"_id": "1"}}, {"doc": {"m": 1}, "doc_as_upsert": True},
                   {"delete": {"_id": "3"}},
                   {"index": {}}, {"n": 4},
                   {"update": {"_id": "5"}}, {"script": {"source": "ctx._source.n++"}})
    parsed = parse_record(_record(7, "POST", "/a/_bulk", body,
                                  headers=(("content-type", "application/x-ndjson"),)))
    assert [(e.index, e.op, e.doc_id) for e in parsed.events] == [
        ("a", "index", "1"), ("b", "create", "2"), ("a", "update", "1"), ("a", "delete", "3")]
    assert parsed.events[2].upsert == {"m": 1}
    assert parsed.skipped == {"auto_id": 1, "scripted_update": 1}
    assert all(e.seq == 7 for e in parsed.events)
    gzipped = parse_record(_record(8, "POST", "/_bulk", gzip.compress(
        _ndjson({"index": {"_index": "c", "_id": "9"}}, {"n": 9})),
        headers=(("content-encoding", "gzip"),)))
    assert [(e.index, e.doc_id, e.source) for e in gzipped.events] == [("c", "9", {"n": 9})]


def test_rejected_abandoned_auto_id_and_pipelines_are_not_applied() -> None:
    write = _record(1, "PUT", "/a/_doc/x", {"n": 1})
    rejected = parse_record(write, AppliedMarker(1, 0, Outcome.REJECTED, 409))
    abandoned = parse_record(write, AppliedMarker(1, 0, Outcome.ABANDONED, 0))
    applied = parse_record(write, AppliedMarker(1, 0, Outcome.APPLIED, 201))
    assert (rejected.events, rejected.skipped) == ([], {"rejected": 1})
    assert (abandoned.events, abandoned.skipped) == ([], {"abandoned": 1})
    assert len(applied.events) == 1
    auto = parse_record(_record(2, "POST", "/a/_doc", {"n": 1}))
    assert (auto.events, auto.skipped) == ([], {"auto_id": 1})
    piped = parse_record(_record(3, "PUT", "/a/_doc/x", {"n": 1}, query="pipeline=p"))
    assert piped.skipped == {"ingest_pipeline": 1}
    scripted = parse_record(_record(4, "POST", "/a/_update/x", {"script": "ctx._source.n=1"}))
    assert scripted.skipped == {"scripted_update": 1}
    not_json = parse_record(_record(5, "PUT", "/a/_doc/x", b"\xa1cbor"))
    assert not_json.skipped == {"not_json": 1}


def test_events_of_log_follow_sequence_order_and_outcomes() -> None:
    records = {2: _record(2, "PUT", "/a/_doc/x", {"n": 2}),
               1: _record(1, "PUT", "/a/_doc/x", {"n": 1}),
               3: _record(3, "PUT", "/a/_doc/x", {"n": 3})}
    outcomes = {3: AppliedMarker(3, 0, Outcome.REJECTED, 400)}
    parsed = events_of_log(records, outcomes)
    assert [e.seq for e in parsed.events] == [1, 2]
    assert parsed.skipped == {"rejected": 1}


def test_writes_belong_to_the_alias_or_its_versioned_indices() -> None:
    assert addressed_to("shop", "shop")
    assert addressed_to("shop", "shop-v1") and addressed_to("shop", "shop-v12-restored")
    assert not addressed_to("shop", "shop-rebuilt-20261126")
    assert not addressed_to("shop", "shopping") and not addressed_to("shop", "other-v1")


# -- materializing -----------------------------------------------------------------------------


def test_materialize_keeps_the_last_state_of_every_id() -> None:
    events = [
        _event(1, "index", "a", {"n": 1, "o": {"x": 1, "y": 1}, "l": [1, 2]}),
        _event(2, "update", "a", {"o": {"y": 2}, "l": [3]}),
        _event(3, "create", "a", {"n": 99}),  # refused by the cluster: the id exists
        _event(4, "index", "b", {"n": 2}),
        _event(5, "delete", "b"),
        _event(6, "update", "c", {"n": 3}),  # refused: no such document, no upsert
        _event(7, "update", "d", {"n": 4}, upsert={"n": 0}),
        _event(8, "update", "d", {"m": 5}, upsert={"n": 0}),
        _event(9, "create", "b", {"n": 6}),  # allowed: b was deleted
    ]
    assert materialize(events) == {
        "a": {"n": 1, "o": {"x": 1, "y": 2}, "l": [3]},
        "b": {"n": 6},
        "d": {"n": 0, "m": 5},
    }
    detail = materialize_events(events)
    assert detail.applied == 7
    assert detail.ignored == {"create_on_existing_id": 1, "update_of_missing_id": 1}


def test_materialize_until_stops_at_a_time_inclusive() -> None:
    events = [_event(1, "index", "a", {"n": 1}), _event(2, "update", "a", {"n": 2}),
              _event(3, "delete", "a")]
    at = datetime.fromtimestamp(0, UTC)
    at_seq_2 = at.replace(microsecond=2)  # event 2 happened at 2000 ns
    assert materialize(events, until=at_seq_2) == {"a": {"n": 2}}
    assert materialize(events, until=at) == {}
    assert materialize(events) == {"a": None}
    assert materialize_events(events, until=at_seq_2).after_until == 1


def test_merge_partial_merges_objects_and_replaces_the_rest() -> None:
    assert merge_partial({"a": {"b": 1, "c": [1]}, "d": 1},
                         {"a": {"c": [2], "e": None}, "d": {"x": 1}}) == {
        "a": {"b": 1, "c": [2], "e": None}, "d": {"x": 1}}


def test_times() -> None:
    moment = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
    assert to_ns(moment) == int(moment.timestamp()) * 1_000_000_000 + 123_456_000
    assert to_ns(moment.replace(tzinfo=None)) == to_ns(moment)
    assert parse_until("2026-11-26T10:00:00.123456Z") == moment
    assert parse_until("2026-11-26T10:00:00.123456") == moment


# -- the archive -------------------------------------------------------------------------------


def _log_with_segments(directory: Path, writes: int) -> None:
    with WriteAheadLog.open(directory, segment_bytes=300) as wal:
        for i in range(writes):
            seq = wal.append_durable("PUT", f"/a/_doc/{i}", "", JSON_HEADERS,
                                     json.dumps({"n": i, "pad": "x" * 100}).encode())
            wal.mark([(seq, Outcome.APPLIED, 201)])


def test_archive_copies_closed_segments_read_only_and_is_idempotent(tmp_path: Path) -> None:
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    _log_with_segments(wal, 6)
    closed = closed_segments(wal)
    assert len(closed) >= 2
    first = archive_segments(wal, archive)
    assert first["archived"] == [p.name for p in closed]
    for path in closed:
        copy = archive / path.name
        assert copy.read_bytes() == path.read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    again = archive_segments(wal, archive)
    assert again["archived"] == [] and again["already_archived"] == first["archived"]
    assert len(read_manifest(archive)) == len(closed)
    assert len((archive / "manifest.jsonl").read_text().splitlines()) == len(closed)
    assert verify_archive(archive)["segments"] == len(closed)
    # More writes close the segment that was being written: only that one is added.
    _log_with_segments(wal, 3)
    later = archive_segments(wal, archive)
    assert later["archived"] and set(later["archived"]).isdisjoint(first["archived"])
    records, outcomes = load_log([archive, wal])
    assert len(records) == 9 and len(outcomes) == 9


def test_a_changed_archived_segment_is_refused(tmp_path: Path) -> None:
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    _log_with_segments(wal, 6)
    archive_segments(wal, archive)
    victim = archive / closed_segments(wal)[0].name
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ArchiveTampered, match="changed"):
        verify_archive(archive)
    with pytest.raises(ArchiveTampered):
        load_log([archive])
    with pytest.raises(ArchiveTampered):
        archive_segments(wal, archive)


def test_a_segment_changed_in_the_log_after_archiving_is_refused(tmp_path: Path) -> None:
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    _log_with_segments(wal, 6)
    archive_segments(wal, archive)
    source = closed_segments(wal)[0]
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(ArchiveTampered, match="differs"):
        archive_segments(wal, archive)
