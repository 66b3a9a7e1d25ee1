"""Applied markers encoded in one pass are the same bytes as one entry at a time; a
record read back by its place is checked as thoroughly as a scanned one."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexshift.wal import (
    AppliedMarker,
    Outcome,
    WalCorrupt,
    WriteAheadLog,
    decode_frame,
    encode_entry,
    encode_markers,
    scan_frames,
)


def test_encode_markers_equals_encode_entry_of_each() -> None:
    outcomes = [(1, Outcome.APPLIED, 201), (2**40, Outcome.REJECTED, 409),
                (7, Outcome.ABANDONED, 0)]
    expected = b"".join(encode_entry(AppliedMarker(seq, 123, outcome, status))
                        for seq, outcome, status in outcomes)
    assert encode_markers(outcomes, 123) == expected


def test_encoded_markers_read_back() -> None:
    data = encode_markers([(5, Outcome.APPLIED, 200), (6, Outcome.REJECTED, 400)], -1)
    scan = scan_frames(data)
    assert scan.problem is None
    assert [decode_frame(data, frame) for frame in scan.frames] == [
        AppliedMarker(5, -1, Outcome.APPLIED, 200), AppliedMarker(6, -1, Outcome.REJECTED, 400)]


def test_no_markers_no_bytes() -> None:
    assert encode_markers([], 0) == b""


def test_read_gives_the_record_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        first = wal.append_durable("PUT", "/i/_doc/1", "refresh=true",
                                   [("content-type", "application/json")], b'{"a":1}')
        second = wal.append_durable("DELETE", "/i/_doc/2", "", [], b"")
        record = wal.read(first)
        assert (record.seq, record.method, record.path, record.query, record.headers,
                record.body) == (first, "PUT", "/i/_doc/1", "refresh=true",
                                 (("content-type", "application/json"),), b'{"a":1}')
        assert wal.read(second).method == "DELETE"
        (segment,) = tmp_path.glob("wal-*.seg")
        data = bytearray(segment.read_bytes())
        data[-3] ^= 0xFF  # inside the second record's path
        segment.write_bytes(bytes(data))
        with pytest.raises(WalCorrupt, match="no longer reads back"):
            wal.read(second)
        assert wal.read(first).body == b'{"a":1}'
