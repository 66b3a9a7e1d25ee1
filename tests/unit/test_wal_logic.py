"""The write-ahead log: its record codec (pure) and the log on a temporary directory."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from indexshift.errors import EnvironmentProblem
from indexshift.wal import (
    FRAME_HEADER,
    SEGMENT_MAGIC,
    AppliedMarker,
    EntryKind,
    Outcome,
    SegmentSeal,
    WalCorrupt,
    WalUnavailable,
    WriteAheadLog,
    WriteRecord,
    advance_watermark,
    decode_frame,
    decode_payload,
    encode_entry,
    iter_log,
    list_segments,
    parse_segment_name,
    scan_frames,
    segment_name,
    summarize_log,
)

RECORD = WriteRecord(
    seq=42, time_ns=1_700_000_000_123_456_789, method="PUT",
    path="/file-index/_doc/a%2Fb", query="refresh=true&routing=r1",
    headers=(("content-type", "application/json"), ("x-opaque-id", "op-7")),
    body=b'{"name": "\xc3\xa9t\xc3\xa9", "n": 1}',
)


# -- codec ------------------------------------------------------------------------------------


def test_a_write_record_round_trips() -> None:
    frame = encode_entry(RECORD)
    length, _ = FRAME_HEADER.unpack_from(frame, 0)
    assert length == len(frame) - FRAME_HEADER.size
    assert decode_payload(frame[FRAME_HEADER.size:]) == RECORD


@pytest.mark.parametrize("entry", [
    WriteRecord(1, 0, "POST", "/_bulk", "", (), b""),
    WriteRecord(2, 5, "DELETE", "/i/_doc/\u00e9", "", (("content-encoding", "gzip"),),
                bytes(range(256)) * 3),
    AppliedMarker(7, 123, Outcome.APPLIED, 201),
    AppliedMarker(8, 124, Outcome.REJECTED, 409),
    AppliedMarker(9, 125, Outcome.ABANDONED, 0),
    SegmentSeal(100, 126, 4096),
])
def test_every_entry_kind_round_trips(entry: WriteRecord | AppliedMarker | SegmentSeal) -> None:
    frame = encode_entry(entry)
    scan = scan_frames(frame)
    assert scan.problem is None and scan.end == len(frame)
    assert decode_frame(frame, scan.frames[0]) == entry


def test_header_lookup_ignores_case() -> None:
    assert RECORD.header("Content-Type") == "application/json"
    assert RECORD.header("content-encoding") is None


def _three_frames() -> tuple[bytes, list[int]]:
    frames = [encode_entry(RECORD), encode_entry(AppliedMarker(42, 1, Outcome.APPLIED, 200)),
              encode_entry(WriteRecord(43, 2, "POST", "/i/_doc", "", (), b"{}"))]
    ends, at = [], 0
    for frame in frames:
        at += len(frame)
        ends.append(at)
    return b"".join(frames), ends


def test_scan_finds_every_frame_with_kind_and_seq() -> None:
    data, ends = _three_frames()
    scan = scan_frames(data)
    assert scan.problem is None and scan.end == len(data)
    assert [(f.kind, f.seq) for f in scan.frames] == [
        (EntryKind.WRITE, 42), (EntryKind.MARKER, 42), (EntryKind.WRITE, 43)]
    assert [f.offset + f.size for f in scan.frames] == ends


def test_a_torn_tail_is_detected_at_every_cut() -> None:
    data, ends = _three_frames()
    for cut in range(len(data)):
        scan = scan_frames(data[:cut])
        complete = [end for end in ends if end <= cut]
        assert len(scan.frames) == len(complete), cut
        assert scan.end == (complete[-1] if complete else 0), cut
        assert (scan.problem is None) == (cut in (0, *ends)), cut


def test_a_flipped_byte_is_a_crc_mismatch() -> None:
    data, ends = _three_frames()
    for position in (FRAME_HEADER.size + 3, ends[0] + FRAME_HEADER.size + 1, len(data) - 1):
        damaged = bytearray(data)
        damaged[position] ^= 0x40
        scan = scan_frames(bytes(damaged))
        assert scan.problem is not None and "CRC" in scan.problem
        assert scan.end == max([0, *[e for e in ends if e <= position]])


def test_a_zero_filled_tail_is_not_a_frame() -> None:
    data, ends = _three_frames()
    scan = scan_frames(data + b"\0" * 64)
    assert scan.end == ends[-1] and scan.problem is not None and len(scan.frames) == 3


def test_an_absurd_length_stops_the_scan() -> None:
    scan = scan_frames(FRAME_HEADER.pack(0xFFFFFFFF, 0) + b"x" * 32)
    assert scan.end == 0 and scan.problem is not None and "length" in scan.problem


def test_segment_names_sort_by_first_seq() -> None:
    assert parse_segment_name(segment_name(52817)) == 52817
    assert segment_name(9) < segment_name(10) < segment_name(10**12)
    assert parse_segment_name("LOCK") is None
    assert parse_segment_name("wal-abc.seg") is None


def test_the_watermark_advances_over_applied_and_missing_seqs() -> None:
    pending = {5, 9}
    assert advance_watermark(0, 12, pending.__contains__) == 4
    assert advance_watermark(5, 12, pending.__contains__) == 8
    assert advance_watermark(0, 3, pending.__contains__) == 3
    assert advance_watermark(12, 12, pending.__contains__) == 12


# -- the log on disk ---------------------------------------------------------------------------


def _append(wal: WriteAheadLog, n: int, doc: str = "d") -> list[int]:
    return [wal.append_durable("PUT", f"/i/_doc/{doc}{i}", "", [("content-type", "x")],
                               f'{{"i": {i}}}'.encode()) for i in range(n)]


def test_seqs_are_monotonic_and_survive_a_reopen(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        assert _append(wal, 3) == [1, 2, 3]
        wal.mark([(1, Outcome.APPLIED, 201), (3, Outcome.REJECTED, 409)])
        assert wal.pending_seqs() == [2]
        assert wal.applied_through == 1
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.pending_seqs() == [2]
        assert wal.read(2).path == "/i/_doc/d1"
        assert wal.read(2).body == b'{"i": 1}'
        assert _append(wal, 2) == [4, 5]
        wal.mark([(2, Outcome.APPLIED, 200)])
        assert wal.applied_through == 3
    summary = summarize_log(tmp_path)
    assert sorted(summary.records) == [1, 2, 3, 4, 5]
    assert summary.pending == [4, 5]
    assert summary.outcomes[3].outcome == Outcome.REJECTED and summary.outcomes[3].status == 409


def test_a_record_is_on_disk_before_append_durable_returns(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        seq = wal.append_durable("POST", "/_bulk", "", [], b'{"index":{}}\n{}\n')
        on_disk = [e for e in iter_log(tmp_path) if isinstance(e, WriteRecord)]
        assert [e.seq for e in on_disk] == [seq]


def test_a_torn_tail_is_truncated_on_open(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        _append(wal, 3)
    (_, path), = list_segments(tmp_path)
    whole = path.stat().st_size
    with open(path, "ab") as handle:  # half of a fourth frame, as a crash leaves it
        handle.write(encode_entry(WriteRecord(4, 0, "PUT", "/i/_doc/x", "", (), b"{}"))[:11])
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.stats.torn_bytes_truncated == 11
        assert path.stat().st_size == whole
        assert wal.pending_seqs() == [1, 2, 3]
        assert _append(wal, 1) == [4]


def test_a_corrupt_frame_in_an_older_segment_refuses_to_open(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=200) as wal:
        _append(wal, 6)
    segments = list_segments(tmp_path)
    assert len(segments) > 2
    first = segments[0][1]
    data = bytearray(first.read_bytes())
    data[len(SEGMENT_MAGIC) + FRAME_HEADER.size + 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="damaged"):
        WriteAheadLog.open(tmp_path)


def test_a_sealed_segment_is_truncated_where_its_seal_says(tmp_path: Path) -> None:
    good = encode_entry(WriteRecord(1, 0, "PUT", "/i/_doc/1", "", (), b"{}"))
    abandoned = encode_entry(WriteRecord(2, 0, "PUT", "/i/_doc/2", "", (), b"{}"))
    first = tmp_path / segment_name(1)
    first.write_bytes(SEGMENT_MAGIC + good + abandoned[:9])  # a disk that kept half a frame
    valid = len(SEGMENT_MAGIC) + len(good)
    (tmp_path / segment_name(3)).write_bytes(
        SEGMENT_MAGIC + encode_entry(SegmentSeal(1, 0, valid))
        + encode_entry(AppliedMarker(2, 0, Outcome.ABANDONED, 0)))
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.pending_seqs() == [1]
        assert first.stat().st_size == valid
        assert _append(wal, 1) == [3]


def test_rotation_keeps_every_record_readable(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=300) as wal:
        seqs = _append(wal, 20)
        wal.mark([(s, Outcome.APPLIED, 200) for s in seqs[:10]])
        assert wal.snapshot_stats().segments > 3
    with WriteAheadLog.open(tmp_path, segment_bytes=300) as wal:
        assert wal.pending_seqs() == seqs[10:]
        assert [wal.read(s).path for s in seqs[10:]] == [f"/i/_doc/d{i}" for i in range(10, 20)]
        removed = wal.prune_applied()
        assert removed and all(not p.exists() for p in removed)
        assert wal.pending_seqs() == seqs[10:]
    with WriteAheadLog.open(tmp_path, segment_bytes=300) as wal:
        assert wal.pending_seqs() == seqs[10:]
        assert _append(wal, 1) == [21]


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    batches: list[int] = []
    with WriteAheadLog.open(tmp_path, on_fsync=lambda n, _s: batches.append(n)) as wal:
        barrier = threading.Barrier(16)

        def writer(w: int) -> None:
            barrier.wait()
            for i in range(20):
                wal.append_durable("PUT", f"/i/_doc/{w}-{i}", "", [], b"{}")

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = wal.snapshot_stats()
    assert stats.appended == 320
    assert stats.fsynced_records == 320
    # Group commit: while one fsync runs, the others queue up behind one shared fsync.
    assert stats.fsyncs < stats.appended
    assert max(batches) > 1
    assert len(set(summarize_log(tmp_path).records)) == 320


def test_a_second_process_cannot_open_the_same_log(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path), pytest.raises(EnvironmentProblem, match="in use"):
        WriteAheadLog.open(tmp_path)


def test_a_failed_write_refuses_and_recovers(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, retry_interval_s=0.05) as wal:
        _append(wal, 2)

        def full_disk(operation: str) -> None:
            if operation == "write":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        wal.fault = full_disk
        with pytest.raises(WalUnavailable, match="No space left"):
            _append(wal, 1)
        assert wal.failed is not None
        # Refused fast while failed, without touching the disk.
        with pytest.raises(WalUnavailable):
            _append(wal, 1)
        wal.fault = None
        time.sleep(0.1)
        seqs = _append(wal, 1)
        assert wal.failed is None
        assert seqs[0] > 2
        assert wal.pending_seqs() == [1, 2, seqs[0]]
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.pending_seqs() == [1, 2, seqs[0]]


def test_a_failed_fsync_abandons_what_it_covered(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, retry_interval_s=0.05) as wal:
        _append(wal, 1)

        def broken_disk(operation: str) -> None:
            if operation == "fsync":
                raise OSError(errno.EIO, os.strerror(errno.EIO))

        wal.fault = broken_disk
        appended = wal.append("PUT", "/i/_doc/lost", "", [], b"{}")
        with pytest.raises(WalUnavailable, match="fsync failed"):
            wal.wait_durable(appended, timeout=10)
        # A waiter that comes after the failure is told at once, too.
        with pytest.raises(WalUnavailable):
            wal.wait_durable(appended, timeout=10)
        assert wal.pending_seqs() == [1]
        wal.fault = None
        time.sleep(0.1)
        later = _append(wal, 1)
    with WriteAheadLog.open(tmp_path) as wal:
        # The refused record is never replayed: truncated away, and marked abandoned.
        assert wal.pending_seqs() == [1, *later]
    outcomes = summarize_log(tmp_path).outcomes
    assert outcomes[appended.seq].outcome == Outcome.ABANDONED


def test_markers_written_while_failed_are_written_on_recovery(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, retry_interval_s=0.05) as wal:
        seqs = _append(wal, 2)
        wal.fault = lambda op: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
        wal.mark([(seqs[0], Outcome.APPLIED, 200)])
        assert wal.pending_seqs() == [seqs[1]]
        wal.fault = None
        time.sleep(0.1)
        _append(wal, 1)
    with WriteAheadLog.open(tmp_path) as wal:
        assert seqs[0] not in wal.pending_seqs()


def test_markers_become_durable_without_further_appends(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, marker_sync_interval_s=0.01) as wal:
        seqs = _append(wal, 1)
        before = wal.snapshot_stats().fsyncs
        wal.mark([(seqs[0], Outcome.APPLIED, 201)])
        deadline = time.monotonic() + 10
        while wal.snapshot_stats().fsyncs == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wal.snapshot_stats().fsyncs > before


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EnvironmentProblem, match="cannot use"):
        WriteAheadLog.open(blocker / "wal")
