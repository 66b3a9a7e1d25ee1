"""The gateway's write-ahead log: every write is on disk, fsynced, before it goes upstream.

Layout of the log directory::

    LOCK                          held (flock) by the one process that writes the log
    wal-00000000000000000001.seg  segments, named after the first sequence number they may hold
    wal-00000000000000052817.seg
    checkpoint.json               {"applied_through": W, "next_seq": N}: a hint to skip old segments

A segment is an 8-byte magic header followed by frames. A frame is ``u32 payload length``,
``u32 CRC32 of the payload`` (little endian), then the payload. Two kinds of payload exist:

* a **write record**: format version, kind, sequence number, wall-clock time (ns), HTTP method,
  path, query string, the headers replay needs (content type and encoding, ...), and the body
  bytes exactly as the client sent them (compressed bodies stay compressed);
* an **applied marker**: the sequence number of a record, its outcome (applied, rejected by
  upstream with a final 4xx answer, or abandoned because the log itself failed) and the HTTP
  status upstream gave;
* a **seal**: after a disk error the log continues in a new segment and first records how long
  the failed segment is valid (its fsynced part), so bytes the failed disk kept beyond that are
  ignored instead of being taken for corruption.

Sequence numbers increase monotonically across restarts. A record is pending until a marker for
it exists; after a crash every pending record is replayed. A frame cut short by a crash (torn
tail) or whose CRC does not match is detected on open; in the last segment the bad tail is
truncated (only bytes never acknowledged can be there, because every acknowledged byte was
fsynced and a segment is fsynced whole before the next one starts); anywhere else it is
corruption and the log refuses to open.

Durability: :meth:`WriteAheadLog.append` writes the frame at once (so it survives the process
being killed) and returns its position; :meth:`WriteAheadLog.wait_durable` (or the ``async``
twin) returns when an ``fsync`` covering that position has completed. One background thread
runs the fsyncs, so every append that arrives while one fsync runs shares the next one (group
commit); a lone writer on a fast disk fsyncs on its own thread instead (two thread hand-offs
cost more than the fsync itself). Markers are written at once too, and fsynced by the next
group commit or at most about twice ``marker_sync_interval_s`` later: a killed process never
replays an acknowledged write, a power loss may replay the few acknowledged in that last
interval (at-least-once, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import heapq
import itertools
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Final, Protocol

from indexshift.errors import EnvironmentProblem, ExitCode, IndexshiftError

log = logging.getLogger(__name__)

SEGMENT_MAGIC: Final = b"ISWAL01\n"
FRAME_HEADER: Final = struct.Struct("<II")  # payload length, CRC32 of the payload
FORMAT_VERSION: Final = 1
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
# A body is capped by the gateway (100 MiB by default); a length beyond this is garbage.
MAX_PAYLOAD_BYTES: Final = 1024 * 1024 * 1024
SEGMENT_PREFIX: Final = "wal-"
SEGMENT_SUFFIX: Final = ".seg"
CHECKPOINT_NAME: Final = "checkpoint.json"
LOCK_NAME: Final = "LOCK"

# payload heads: version, kind, seq, time_ns, then per kind
_COMMON = struct.Struct("<BBQq")
_WRITE_LENGTHS = struct.Struct("<BIIH")  # method, path, query lengths; header count
_HEADER_LENGTHS = struct.Struct("<HI")  # header name length, value length
_MARKER_TAIL = struct.Struct("<BH")  # outcome, HTTP status
_SEAL_TAIL = struct.Struct("<Q")  # valid length of the sealed segment


class EntryKind(IntEnum):
    WRITE = 1
    MARKER = 2
    SEAL = 3


class Outcome(IntEnum):
    """What became of a logged write."""

    APPLIED = 1  # upstream acknowledged it (2xx)
    REJECTED = 2  # upstream's final answer was an error (4xx): passed back, never retried
    ABANDONED = 3  # the log failed while writing it: refused, never forwarded, never replayed


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One logged write request, exactly as it must be replayed."""

    seq: int
    time_ns: int
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key == lowered or key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True, slots=True)
class AppliedMarker:
    """The outcome of the write record with the same ``seq``."""

    seq: int
    time_ns: int
    outcome: Outcome
    status: int  # upstream HTTP status; 0 when there was none


@dataclass(frozen=True, slots=True)
class SegmentSeal:
    """The segment named after ``first_seq`` is valid up to ``length`` bytes, no further."""

    first_seq: int
    time_ns: int
    length: int


Entry = WriteRecord | AppliedMarker | SegmentSeal


class WalCorrupt(IndexshiftError):
    exit_code = ExitCode.ENVIRONMENT


class WalUnavailable(IndexshiftError):
    """The log cannot be written now (disk full, I/O error, unwritable directory)."""

    exit_code = ExitCode.ENVIRONMENT


# -- the pure codec --------------------------------------------------------------------------


def encode_entry(entry: Entry) -> bytes:
    """One framed entry: length, CRC32, payload."""
    payload = _encode_payload(entry)
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


_MARKER_PAYLOAD = struct.Struct("<BBQqBH")  # _COMMON then _MARKER_TAIL, in one pack


def encode_markers(outcomes: Sequence[tuple[int, Outcome, int]], time_ns: int) -> bytes:
    """The framed applied markers ``(seq, outcome, http_status)``, all stamped ``time_ns``:
    the bytes :func:`encode_entry` gives for each, made without an object per marker (a
    replay marks thousands per second)."""
    pack, crc32, frame = _MARKER_PAYLOAD.pack, zlib.crc32, FRAME_HEADER.pack
    size = _MARKER_PAYLOAD.size
    parts = []
    for seq, outcome, status in outcomes:
        payload = pack(FORMAT_VERSION, EntryKind.MARKER, seq, time_ns, outcome, status)
        parts.append(frame(size, crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


def _encode_payload(entry: Entry) -> bytes:
    if isinstance(entry, AppliedMarker):
        return (_COMMON.pack(FORMAT_VERSION, EntryKind.MARKER, entry.seq, entry.time_ns)
                + _MARKER_TAIL.pack(int(entry.outcome), entry.status))
    if isinstance(entry, SegmentSeal):
        return (_COMMON.pack(FORMAT_VERSION, EntryKind.SEAL, entry.first_seq, entry.time_ns)
                + _SEAL_TAIL.pack(entry.length))
    method = entry.method.encode("ascii")
    path = entry.path.encode("utf-8", "surrogateescape")
    query = entry.query.encode("utf-8", "surrogateescape")
    parts = [
        _COMMON.pack(FORMAT_VERSION, EntryKind.WRITE, entry.seq, entry.time_ns),
        _WRITE_LENGTHS.pack(len(method), len(path), len(query), len(entry.headers)),
        method, path, query,
    ]
    for name, value in entry.headers:
        name_bytes, value_bytes = name.encode("latin-1"), value.encode("latin-1")
        parts += [_HEADER_LENGTHS.pack(len(name_bytes), len(value_bytes)), name_bytes, value_bytes]
    parts.append(entry.body)
    return b"".join(parts)


def decode_payload(payload: bytes | memoryview) -> Entry:
    """The entry a CRC-checked payload holds; ``ValueError`` when it is not one."""
    view = memoryview(payload)
    if len(view) < _COMMON.size:
        raise ValueError(f"payload of {len(view)} bytes is shorter than an entry head")
    version, kind, seq, time_ns = _COMMON.unpack_from(view, 0)
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown entry format version {version}")
    at = _COMMON.size
    if kind == EntryKind.MARKER:
        if len(view) != at + _MARKER_TAIL.size:
            raise ValueError("applied marker of the wrong size")
        outcome, status = _MARKER_TAIL.unpack_from(view, at)
        return AppliedMarker(seq, time_ns, Outcome(outcome), status)
    if kind == EntryKind.SEAL:
        if len(view) != at + _SEAL_TAIL.size:
            raise ValueError("segment seal of the wrong size")
        (length,) = _SEAL_TAIL.unpack_from(view, at)
        return SegmentSeal(seq, time_ns, length)
    if kind != EntryKind.WRITE:
        raise ValueError(f"unknown entry kind {kind}")
    method_len, path_len, query_len, header_count = _WRITE_LENGTHS.unpack_from(view, at)
    at += _WRITE_LENGTHS.size

    def take(length: int) -> bytes:
        nonlocal at
        if at + length > len(view):
            raise ValueError("a field runs past the end of the payload")
        chunk = bytes(view[at:at + length])
        at += length
        return chunk

    method = take(method_len).decode("ascii")
    path = take(path_len).decode("utf-8", "surrogateescape")
    query = take(query_len).decode("utf-8", "surrogateescape")
    headers = []
    for _ in range(header_count):
        if at + _HEADER_LENGTHS.size > len(view):
            raise ValueError("a header runs past the end of the payload")
        name_len, value_len = _HEADER_LENGTHS.unpack_from(view, at)
        at += _HEADER_LENGTHS.size
        headers.append((take(name_len).decode("latin-1"), take(value_len).decode("latin-1")))
    return WriteRecord(seq, time_ns, method, path, query, tuple(headers), bytes(view[at:]))


@dataclass(frozen=True, slots=True)
class Frame:
    """Where one valid frame sits in a buffer, and what it is (without decoding the body)."""

    offset: int
    size: int
    kind: EntryKind
    seq: int  # for a seal: the first seq of the segment it seals


@dataclass(frozen=True)
class Scan:
    """The valid frames of a buffer, where the valid part ends, and why it ends there."""

    frames: list[Frame]
    end: int
    problem: str | None  # None: the buffer ends exactly after its last frame


def scan_frames(data: bytes | memoryview, start: int = 0) -> Scan:
    """Walk the frames of ``data`` from ``start``; stop at the first torn or corrupt one."""
    view = memoryview(data)
    frames: list[Frame] = []
    at = start
    while at < len(view):
        if at + FRAME_HEADER.size > len(view):
            return Scan(frames, at, f"torn frame header at offset {at}")
        length, crc = FRAME_HEADER.unpack_from(view, at)
        if length < _COMMON.size or length > MAX_PAYLOAD_BYTES:
            # A zero-filled tail (a file extended before its data reached the disk) lands here.
            return Scan(frames, at, f"impossible frame length {length} at offset {at}")
        body_at = at + FRAME_HEADER.size
        if body_at + length > len(view):
            return Scan(frames, at, f"torn frame at offset {at}: {length} bytes announced, "
                                    f"{len(view) - body_at} present")
        payload = view[body_at:body_at + length]
        if zlib.crc32(payload) != crc:
            return Scan(frames, at, f"CRC mismatch in the frame at offset {at}")
        version, kind, seq, _ = _COMMON.unpack_from(payload, 0)
        if version != FORMAT_VERSION or kind not in EntryKind.__members__.values():
            return Scan(frames, at, f"unknown version/kind {version}/{kind} at offset {at}")
        frames.append(Frame(at, FRAME_HEADER.size + length, EntryKind(kind), seq))
        at = body_at + length
    return Scan(frames, at, None)


def decode_frame(data: bytes | memoryview, frame: Frame) -> Entry:
    view = memoryview(data)
    return decode_payload(view[frame.offset + FRAME_HEADER.size:frame.offset + frame.size])


def segment_name(first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first sequence number a segment file is named after, or None for other files."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def advance_watermark(watermark: int, last_seq: int, pending: Callable[[int], bool]) -> int:
    """The highest ``W`` ≥ ``watermark`` such that no seq in (watermark, W] is pending."""
    while watermark < last_seq and not pending(watermark + 1):
        watermark += 1
    return watermark


# -- reading a log directory -----------------------------------------------------------------


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        first = parse_segment_name(path.name)
        if first is not None:
            found.append((first, path))
    return sorted(found)


def iter_log(directory: Path) -> Iterator[Entry]:
    """Every entry of a log directory in file order, read-only (a torn tail ends the walk).

    Safe to call while a gateway writes the log: it reads what is on disk now.
    """
    for _, path in list_segments(directory):
        data = path.read_bytes()
        if len(data) < len(SEGMENT_MAGIC):
            continue
        if data[:len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            raise WalCorrupt(f"{path} is not a write-ahead log segment (bad magic)")
        scan = scan_frames(data, len(SEGMENT_MAGIC))
        for frame in scan.frames:
            yield decode_frame(data, frame)


@dataclass(frozen=True)
class LogSummary:
    """What a log directory holds: every record's seq, and each record's outcome if any."""

    records: dict[int, WriteRecord]
    outcomes: dict[int, AppliedMarker]

    @property
    def pending(self) -> list[int]:
        return sorted(seq for seq in self.records if seq not in self.outcomes)


def summarize_log(directory: Path) -> LogSummary:
    records: dict[int, WriteRecord] = {}
    outcomes: dict[int, AppliedMarker] = {}
    for entry in iter_log(directory):
        if isinstance(entry, WriteRecord):
            records[entry.seq] = entry
        elif isinstance(entry, AppliedMarker):
            outcomes[entry.seq] = entry
    return LogSummary(records, outcomes)


class LogGap(Exception):
    """Records after the position asked for are no longer in the log (segments removed)."""


@dataclass(frozen=True, slots=True)
class LoggedWrite:
    """A write record as the log holds it now, with its outcome (None: none recorded yet)."""

    record: WriteRecord
    marker: AppliedMarker | None


@dataclass(frozen=True)
class LogPage:
    """Consecutive logged writes in sequence order; ``more``: the range asked holds more."""

    writes: list[LoggedWrite]
    more: bool

    def next_after(self, after: int) -> int:
        """Where the next page starts: the last seq of this one (``after`` when empty)."""
        return self.writes[-1].record.seq if self.writes else after


def read_records_after(directory: Path, after: int, limit: int,
                       until: int | None = None) -> LogPage:
    """Up to ``limit`` records of a log directory with ``after < seq <= until``, in order,
    applied or not, each with its outcome when the log has one. Reads the segments on disk, so
    it is safe while a gateway writes the log; :class:`LogGap` when the segments holding the
    first of them were removed."""
    segments = list_segments(directory)
    if segments and segments[0][0] > after + 1:
        raise LogGap(f"the log starts at seq {segments[0][0]}; records after {after} were "
                     f"removed")
    start = 0
    for position, (first, _) in enumerate(segments):
        if first <= after + 1:
            start = position
    records: list[WriteRecord] = []
    markers: dict[int, AppliedMarker] = {}
    more = False
    for _, path in segments[start:]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if data[:len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            continue
        for frame in scan_frames(data, len(SEGMENT_MAGIC)).frames:
            entry = decode_frame(data, frame)
            if isinstance(entry, WriteRecord):
                if entry.seq <= after or (until is not None and entry.seq > until):
                    continue
                if len(records) >= limit:
                    more = True
                    continue
                records.append(entry)
            elif isinstance(entry, AppliedMarker):
                markers[entry.seq] = entry
    records.sort(key=lambda r: r.seq)
    return LogPage([LoggedWrite(r, markers.get(r.seq)) for r in records], more)


# -- the log ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordLocation:
    segment: Path
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Appended:
    """A record written to the log; durable once an fsync covers ``position``."""

    seq: int
    position: int
    epoch: int  # the log's failure epoch when it was written


@dataclass
class WalStats:
    """Counters of the log since it was opened (read them through ``WriteAheadLog.stats``)."""

    last_seq: int = 0
    applied_through: int = 0
    pending: int = 0
    segments: int = 0
    appended: int = 0
    appended_bytes: int = 0
    markers: int = 0
    fsyncs: int = 0
    record_fsyncs: int = 0  # fsyncs that made at least one write record durable
    fsynced_records: int = 0
    failures: int = 0
    state: str = "ok"
    error: str | None = None
    torn_bytes_truncated: int = 0
    opened_pending: int = 0


@dataclass
class _Failure:
    reason: str
    last_attempt: float
    abandoned: list[int] = field(default_factory=list)
    markers_to_rewrite: list[bytes] = field(default_factory=list)
    seals: list[SegmentSeal] = field(default_factory=list)


Waiter = Callable[[BaseException | None], None]


def wait_settled(register: Callable[[Waiter], None], timeout: float | None, what: str) -> None:
    """Block until the waiter ``register`` hands on is called; raise what it was called with,
    or :class:`WalUnavailable` after ``timeout`` seconds (``what``: the awaited step)."""
    done = threading.Event()
    outcome: list[BaseException | None] = []

    def waiter(error: BaseException | None) -> None:
        outcome.append(error)
        done.set()

    register(waiter)
    if not done.wait(timeout):
        raise WalUnavailable(f"the write-ahead log did not {what} within {timeout} s")
    if outcome[0] is not None:
        raise outcome[0]


async def wait_settled_async(register: Callable[[Waiter], None]) -> None:
    """As :func:`wait_settled`, without blocking the event loop (and without a timeout)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    loop_thread = threading.get_ident()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def waiter(error: BaseException | None) -> None:
        if threading.get_ident() == loop_thread:
            settle(error)  # settled while registering (already durable): no wake-up needed
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    register(waiter)
    await future
FaultHook = Callable[[str], None]  # called with "write", "fsync" or "open"; raises to fail
# A writer fsyncs on its own thread (blocking it, an event loop included) only while recent
# fsyncs took less than this; a slower disk goes through the fsync thread only.
INLINE_FSYNC_MAX_S: Final = 0.001
# After a marker, the idle fsync thread checks every marker_sync_interval_s for this long
# instead of being woken once per marker (a wake-up per write costs more than the check).
MARKER_POLL_LINGER_S: Final = 2.0


class _GroupCommitter:
    """The fsync thread: one fsync covers every frame written before it started.

    ``durable`` only moves while the log's lock is held, so a failure (which truncates the
    segment back to ``durable``) never races with an fsync that is being confirmed. Each waiter
    carries the failure epoch it was written in: a waiter of an epoch that already failed is
    told at once, even if it registers after the failure.
    """

    def __init__(self, wal: WriteAheadLog, marker_sync_interval_s: float) -> None:
        self._wal = wal
        self._cond = threading.Condition()
        self._durable = 0
        self._epoch = 0
        self._epoch_error: BaseException | None = None
        self._requested = 0
        self._lazy_requested = 0
        self._lazy_since = 0.0
        self._marker_sync_interval_s = marker_sync_interval_s
        self._waiters: list[tuple[int, int, Waiter]] = []
        self._counter = itertools.count()
        self._stopping = False
        self._syncing = False  # an fsync runs, on the thread or inline
        self._thread_asleep = False  # the thread waits without a timeout: notify to wake it
        self._thread_waits_for_inline = False  # ... for an inline fsync to end
        self._last_marker = 0.0
        self._fsync_estimate_s = 0.0  # moving average of recent fsyncs
        self._thread = threading.Thread(target=self._run, name="indexshift-wal-fsync",
                                        daemon=True)

    def start(self, durable: int) -> None:
        self._durable = durable
        self._thread.start()

    @property
    def durable(self) -> int:
        with self._cond:
            return self._durable

    def wait_for(self, epoch: int, position: int, waiter: Waiter) -> None:
        with self._cond:
            if epoch != self._epoch:
                error = self._epoch_error or WalUnavailable("the write-ahead log failed")
            elif position > self._durable:
                heapq.heappush(self._waiters, (position, next(self._counter), waiter))
                self._requested = max(self._requested, position)
                self._cond.notify()
                return
            else:
                error = None
        waiter(error)

    def request_lazy(self, position: int) -> None:
        with self._cond:
            if position > self._lazy_requested:
                starts = self._lazy_requested <= self._durable
                if starts:
                    self._lazy_since = time.monotonic()
                self._lazy_requested = position
                self._last_marker = time.monotonic()
                if starts and self._thread_asleep:
                    # Only a thread asleep needs waking: one already polling or holding a
                    # deadline sees it (a wake per marker would cost a thread switch per write).
                    self._cond.notify()

    def advance(self, position: int) -> list[Waiter]:
        """Everything up to ``position`` is durable (the caller holds the log's lock); the
        waiters to release, to be called once the lock is released."""
        ready: list[Waiter] = []
        with self._cond:
            self._durable = max(self._durable, position)
            while self._waiters and self._waiters[0][0] <= self._durable:
                ready.append(heapq.heappop(self._waiters)[2])
        return ready

    def fail(self, new_epoch: int, error: BaseException) -> list[Waiter]:
        """Every waiter not yet durable will never be: fail them (call them after unlocking)."""
        with self._cond:
            failed = [w[2] for w in self._waiters]
            self._waiters = []
            self._epoch = new_epoch
            self._epoch_error = error
            self._requested = self._durable
            self._lazy_requested = min(self._lazy_requested, self._durable)
        return failed

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def sync_inline(self, epoch: int, position: int) -> None:
        """Make ``position`` durable with an fsync on the calling thread, if no fsync runs and
        recent ones were fast; otherwise do nothing and the caller waits for the fsync thread
        as usual (as it does after this call too, finding the position durable at once)."""
        with self._cond:
            if (epoch != self._epoch or position <= self._durable or self._syncing
                    or self._stopping or self._fsync_estimate_s > INLINE_FSYNC_MAX_S):
                return
            self._syncing = True
        try:
            self._sync_once()
        finally:
            self._sync_done()

    def _sync_done(self) -> None:
        with self._cond:
            self._syncing = False
            if self._thread_waits_for_inline:
                self._cond.notify()

    def _next_target(self) -> bool:
        """Wait until there is something to fsync and claim it; False when the log closes."""
        with self._cond:
            while True:
                if self._syncing:
                    self._thread_waits_for_inline = True
                    try:
                        self._cond.wait()
                    finally:
                        self._thread_waits_for_inline = False
                    continue
                if self._requested > self._durable:
                    break
                if self._lazy_requested > self._durable:
                    due = self._lazy_since + self._marker_sync_interval_s - time.monotonic()
                    if due <= 0 or self._stopping:
                        break
                    self._cond.wait(timeout=due)
                    continue
                if self._stopping:
                    return False
                if time.monotonic() - self._last_marker < MARKER_POLL_LINGER_S:
                    self._cond.wait(timeout=self._marker_sync_interval_s)
                    continue
                self._thread_asleep = True
                try:
                    self._cond.wait()
                finally:
                    self._thread_asleep = False
            self._syncing = True
            return True

    def _run(self) -> None:
        while self._next_target():
            try:
                failed = not self._sync_once()
            finally:
                self._sync_done()
            if failed:  # the log failed; its waiters were told
                if self._stopping:
                    return
                time.sleep(0.01)

    def _sync_once(self) -> bool:
        """One fsync of everything written so far; False when the log has failed."""
        snapshot = self._wal._sync_snapshot()
        if snapshot is None:
            return False
        epoch, target, fd, records = snapshot
        started = time.perf_counter()
        try:
            self._wal._fault("fsync")
            _sync_data(fd)
        except OSError as exc:
            _call(self._wal._sync_failed(epoch, exc), None)
            return True
        finally:
            os.close(fd)
        seconds = time.perf_counter() - started
        with self._cond:
            self._fsync_estimate_s = 0.8 * self._fsync_estimate_s + 0.2 * seconds
        _call(self._wal._synced(epoch, target, records, seconds), None)
        return True


def _call(waiters: list[Waiter], error: BaseException | None) -> None:
    for waiter in waiters:
        waiter(error)


class AppendTicket(Protocol):
    """What an append hands back: its sequence number is known once it is durable."""

    @property
    def seq(self) -> int: ...


class WriteLog(Protocol):
    """The part of a write-ahead log the gateway uses; the file log (:class:`WriteAheadLog`)
    and the PostgreSQL log (:class:`indexshift.wal_postgres.PostgresWriteLog`) both provide it.

    ``append`` must not block on I/O beyond a local write (it runs on the gateway's event loop);
    durability is awaited with ``wait_durable_async``. ``pending_seqs``, ``is_pending`` and
    ``read`` speak of the records this log object owes upstream.
    """

    fault: FaultHook | None

    @property
    def last_seq(self) -> int: ...

    def append(self, method: str, path: str, query: str,
               headers: Sequence[tuple[str, str]], body: bytes) -> AppendTicket: ...

    async def wait_durable_async(self, appended: AppendTicket) -> None: ...

    def mark(self, outcomes: Sequence[tuple[int, Outcome, int]]) -> object: ...

    def pending_seqs(self) -> list[int]: ...

    def is_pending(self, seq: int) -> bool: ...

    def read(self, seq: int) -> WriteRecord: ...

    def records_after(self, after: int, limit: int, until: int | None = None) -> LogPage:
        """Up to ``limit`` records of the whole log with ``after < seq <= until`` in order,
        applied or not, with their outcomes (what a migration replays); blocking I/O, so not
        on the event loop. :class:`LogGap` when some were removed, :class:`WalUnavailable`
        when the log cannot be read now."""
        ...

    def snapshot_stats(self) -> WalStats: ...

    def close(self) -> None: ...


class WriteAheadLog:
    """A durable, append-only log of write requests with applied markers. Thread-safe."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 marker_sync_interval_s: float = 0.05, retry_interval_s: float = 1.0,
                 on_fsync: Callable[[int, float], None] | None = None) -> None:
        """Use :meth:`open`; this constructor does no I/O."""
        self.directory = directory
        self.fault: FaultHook | None = None  # fault injection for tests: raise OSError to fail
        self._segment_bytes = segment_bytes
        self._retry_interval_s = retry_interval_s
        self._on_fsync = on_fsync
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._fd = -1
        self._segment_path = directory
        self._segment_first_seq = 0
        self._segment_size = 0
        self._segment_base = 0  # global position of byte 0 of the current segment
        self._segments = 0
        self._written = 0  # global position: bytes written through this object, ever
        self._epoch = 0
        self._next_seq = 1
        self._pending: dict[int, RecordLocation] = {}
        self._watermark = 0
        self._unsynced_seqs: list[tuple[int, int]] = []  # (end position, seq) not yet fsynced
        self._unsynced_markers: list[tuple[int, bytes]] = []
        self._records_since_sync = 0
        self._failure: _Failure | None = None
        self._read_fds: dict[Path, int] = {}
        self._closed = False
        self.stats = WalStats()
        self._committer = _GroupCommitter(self, marker_sync_interval_s)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             marker_sync_interval_s: float = 0.05, retry_interval_s: float = 1.0,
             on_fsync: Callable[[int, float], None] | None = None) -> WriteAheadLog:
        """Open (or create) the log in ``directory``, truncating a torn tail, loading pending."""
        wal = cls(directory, segment_bytes=segment_bytes,
                  marker_sync_interval_s=marker_sync_interval_s,
                  retry_interval_s=retry_interval_s, on_fsync=on_fsync)
        try:
            wal._recover()
        except BaseException:
            wal._release_files()
            raise
        wal._committer.start(wal._written)
        return wal

    def _recover(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot use {self.directory} for the write-ahead log: {exc.strerror}",
                hint="pass a --wal directory this user can create and write",
            ) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip()
            raise EnvironmentProblem(
                f"the write-ahead log in {self.directory} is in use by another process "
                f"(pid {holder or 'unknown'})",
                hint="stop the other gateway, or give this one its own --wal directory",
            ) from exc
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

        checkpoint = _read_checkpoint(self.directory)
        applied_through = checkpoint.get("applied_through", 0)
        segments = list_segments(self.directory)
        records: dict[int, RecordLocation] = {}
        outcomes: set[int] = set()
        seals: dict[int, int] = {}
        damaged: list[tuple[int, Path, Scan]] = []
        last_seq = max(0, checkpoint.get("next_seq", 1) - 1)

        def take(path: Path, frames: Sequence[Frame]) -> None:
            nonlocal last_seq
            for frame in frames:
                if frame.kind == EntryKind.WRITE:
                    records[frame.seq] = RecordLocation(path, frame.offset, frame.size)
                    last_seq = max(last_seq, frame.seq)
                elif frame.kind == EntryKind.MARKER:
                    outcomes.add(frame.seq)

        for i, (first_seq, path) in enumerate(segments):
            is_last = i == len(segments) - 1
            last_seq = max(last_seq, first_seq - 1)
            if not is_last and segments[i + 1][0] - 1 <= applied_through:
                continue  # every record it can hold was applied (checkpoint)
            data = path.read_bytes()
            if len(data) < len(SEGMENT_MAGIC) and is_last:
                self._reset_segment(path)  # a crash while creating it
                continue
            if data[:len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
                raise WalCorrupt(f"{path} is not a write-ahead log segment (bad magic)",
                                 hint="move the file out of the --wal directory")
            scan = scan_frames(data, len(SEGMENT_MAGIC))
            for frame in scan.frames:
                if frame.kind == EntryKind.SEAL:
                    seal = decode_frame(data, frame)
                    assert isinstance(seal, SegmentSeal)
                    seals[seal.first_seq] = min(seal.length, seals.get(seal.first_seq, 1 << 62))
            if scan.problem is not None and not is_last:
                damaged.append((first_seq, path, scan))  # judged once every seal is known
                continue
            if scan.problem is not None:
                self._truncate_torn(path, len(data), scan)
            take(path, scan.frames)
        for first_seq, path, scan in damaged:
            sealed = seals.get(first_seq)
            if sealed is None or scan.end < sealed:
                raise WalCorrupt(
                    f"{path} is damaged: {scan.problem}",
                    hint="inspect it; records after that offset cannot be read; move the "
                         "segment aside only if you accept losing them",
                )
            # Bytes past the seal were never acknowledged: the log failed while writing them.
            self._truncate_torn(path, path.stat().st_size,
                                Scan([], sealed, f"sealed at {sealed} after a disk error"))
            take(path, [f for f in scan.frames if f.offset + f.size <= sealed])
        self._pending = {seq: loc for seq, loc in sorted(records.items())
                         if seq not in outcomes and seq > applied_through}
        self._next_seq = last_seq + 1
        self._watermark = advance_watermark(min(applied_through, last_seq), last_seq,
                                            self._pending.__contains__)
        self.stats.opened_pending = len(self._pending)
        self._segments = len(segments)
        if segments:
            self._open_for_append(segments[-1][1])
        else:
            self._start_segment(self._next_seq)

    def _truncate_torn(self, path: Path, size: int, scan: Scan) -> None:
        torn = size - scan.end
        log.warning("write-ahead log %s: dropping a torn tail of %d bytes (%s)",
                    path, torn, scan.problem)
        self.stats.torn_bytes_truncated += torn
        with open(path, "r+b") as handle:
            handle.truncate(scan.end)
            handle.flush()
            os.fsync(handle.fileno())

    def _reset_segment(self, path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(SEGMENT_MAGIC)
            handle.flush()
            os.fsync(handle.fileno())

    def _open_for_append(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._fd = fd
        self._segment_first_seq = parse_segment_name(path.name) or 0
        self._segment_path = path
        self._segment_size = os.fstat(fd).st_size
        self._segment_base = self._written - self._segment_size

    def _start_segment(self, first_seq: int) -> None:
        """Create and fsync a new segment (and its directory entry); make it current."""
        self._fault("open")
        # A segment holding only markers (or a failed one) may already bear this name: skip
        # to the next number; sequence numbers may have gaps, never repeats.
        while (self.directory / segment_name(first_seq)).exists():
            first_seq += 1
        self._next_seq = max(self._next_seq, first_seq)
        path = self.directory / segment_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o644)
        try:
            _write_all(fd, SEGMENT_MAGIC)
            os.fsync(fd)
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd = fd
        self._segment_first_seq = first_seq
        self._segment_path = path
        self._segment_size = len(SEGMENT_MAGIC)
        self._written += len(SEGMENT_MAGIC)
        self._segment_base = self._written - self._segment_size
        self._segments += 1

    # -- appending ---------------------------------------------------------------------------

    def append(self, method: str, path: str, query: str,
               headers: Sequence[tuple[str, str]], body: bytes) -> Appended:
        """Write one record now and give it the next sequence number. Not yet durable:
        wait with :meth:`wait_durable` / :meth:`wait_durable_async` before forwarding it."""
        with self._lock:
            self._ensure_writable()
            seq = self._next_seq
            frame = encode_entry(WriteRecord(seq, time.time_ns(), method, path, query,
                                             tuple(headers), body))
            if (self._segment_size + len(frame) > self._segment_bytes
                    and self._segment_size > len(SEGMENT_MAGIC)):
                self._rotate()
            offset = self._segment_size
            self._write(frame)
            self._next_seq = seq + 1
            self._pending[seq] = RecordLocation(self._segment_path, offset, len(frame))
            self._unsynced_seqs.append((self._written, seq))
            self._records_since_sync += 1
            self.stats.appended += 1
            self.stats.appended_bytes += len(frame)
            return Appended(seq, self._written, self._epoch)

    def append_durable(self, method: str, path: str, query: str,
                       headers: Sequence[tuple[str, str]], body: bytes) -> int:
        """Append and wait for the fsync; the record's sequence number."""
        appended = self.append(method, path, query, headers, body)
        self.wait_durable(appended)
        return appended.seq

    def mark(self, outcomes: Sequence[tuple[int, Outcome, int]]) -> int:
        """Write applied markers ``(seq, outcome, http_status)`` now (one write call); they
        become durable with the next group commit. Returns their end position."""
        if not outcomes:
            return self._written
        frames = encode_markers(outcomes, time.time_ns())
        with self._lock:
            for seq, _, _ in outcomes:
                self._pending.pop(seq, None)
            self._watermark = advance_watermark(self._watermark, self._next_seq - 1,
                                                self._pending.__contains__)
            if self._failure is not None:
                # Written once the log works again; until then only memory knows.
                self._failure.markers_to_rewrite.append(frames)
                return self._written
            try:
                self._write(frames)
            except WalUnavailable:
                assert self._failure is not None
                self._failure.markers_to_rewrite.append(frames)
                return self._written
            self._unsynced_markers.append((self._written, frames))
            self.stats.markers += len(outcomes)
            position = self._written
        self._committer.request_lazy(position)
        return position

    def wait_durable(self, appended: AppendTicket, timeout: float | None = None) -> None:
        """Block until an fsync covers the record; :class:`WalUnavailable` if it never will."""
        if not isinstance(appended, Appended):
            raise TypeError(f"not an append of this log: {appended!r}")
        wait_settled(lambda waiter: self._committer.wait_for(appended.epoch, appended.position,
                                                             waiter),
                     timeout, "fsync")

    async def wait_durable_async(self, appended: AppendTicket) -> None:
        """As :meth:`wait_durable`, without blocking the event loop for longer than one fast
        fsync (a lone write on a fast disk is fsynced right here: see ``sync_inline``)."""
        if not isinstance(appended, Appended):
            raise TypeError(f"not an append of this log: {appended!r}")
        # One turn of the loop first: the writes that arrived with this one are appended too,
        # and share its fsync.
        await asyncio.sleep(0)
        self._committer.sync_inline(appended.epoch, appended.position)
        await wait_settled_async(
            lambda waiter: self._committer.wait_for(appended.epoch, appended.position, waiter))

    # -- reading -----------------------------------------------------------------------------

    def pending_seqs(self) -> list[int]:
        """Sequence numbers of every record without a marker, in order."""
        with self._lock:
            return sorted(self._pending)

    def is_pending(self, seq: int) -> bool:
        with self._lock:
            return seq in self._pending

    def read(self, seq: int) -> WriteRecord:
        """The pending record ``seq``, read back from its segment."""
        with self._lock:
            location = self._pending.get(seq)
            if location is None:
                raise KeyError(f"record {seq} is not pending in the write-ahead log")
            fd = self._read_fds.get(location.segment)
            if fd is None:
                if len(self._read_fds) >= 8:
                    os.close(self._read_fds.pop(next(iter(self._read_fds))))
                fd = os.open(location.segment, os.O_RDONLY | os.O_CLOEXEC)
                self._read_fds[location.segment] = fd
            data = os.pread(fd, location.size, location.offset)
        # One frame whose place is known: checked directly, without a scan (a replay after a
        # restart reads thousands per second).
        problem = None
        if len(data) < FRAME_HEADER.size:
            problem = f"{len(data)} bytes where a frame of {location.size} was"
        else:
            length, crc = FRAME_HEADER.unpack_from(data, 0)
            payload = memoryview(data)[FRAME_HEADER.size:]
            if length != len(payload) or zlib.crc32(payload) != crc:
                problem = "its length or CRC does not match"
            else:
                try:
                    entry = decode_payload(payload)
                except ValueError as exc:
                    problem = str(exc)
                else:
                    if isinstance(entry, WriteRecord) and entry.seq == seq:
                        return entry
                    problem = "another entry is there"
        raise WalCorrupt(f"record {seq} in {location.segment} at offset {location.offset} "
                         f"no longer reads back: {problem}")

    def records_after(self, after: int, limit: int, until: int | None = None) -> LogPage:
        """See :meth:`WriteLog.records_after`: read from the segments on disk."""
        return read_records_after(self.directory, after, limit, until)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def applied_through(self) -> int:
        return self._watermark

    @property
    def failed(self) -> str | None:
        failure = self._failure
        return failure.reason if failure is not None else None

    def snapshot_stats(self) -> WalStats:
        with self._lock:
            stats = WalStats(**{k: getattr(self.stats, k) for k in WalStats.__dataclass_fields__})
            stats.last_seq = self._next_seq - 1
            stats.applied_through = self._watermark
            stats.pending = len(self._pending)
            stats.segments = self._segments
            stats.state = "failed" if self._failure else "ok"
            stats.error = self._failure.reason if self._failure else None
            return stats

    # -- maintenance -------------------------------------------------------------------------

    def prune_applied(self) -> list[Path]:
        """Delete segments older than the current one whose records are all applied."""
        with self._lock:
            segments = list_segments(self.directory)
            removed = []
            for (_, path), (next_first, _) in itertools.pairwise(segments):
                if next_first - 1 > self._watermark or path == self._segment_path:
                    break
                self._write_checkpoint()
                if path in self._read_fds:
                    os.close(self._read_fds.pop(path))
                path.unlink()
                removed.append(path)
                self._segments -= 1
            if removed:
                _fsync_directory(self.directory)
            return removed

    def close(self) -> None:
        """Fsync what was written, record a checkpoint, release the directory."""
        if self._closed:
            return
        self._closed = True
        self._committer.stop()
        with self._lock:
            if self._fd >= 0 and self._failure is None:
                try:
                    os.fsync(self._fd)
                    self._write_checkpoint()
                except OSError as exc:
                    log.error("write-ahead log: final fsync failed: %s", exc)
            self._release_files()

    def _release_files(self) -> None:
        for fd in [self._fd, *self._read_fds.values()]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = -1
        self._read_fds.clear()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (the caller holds self._lock unless said otherwise) -----------------------

    def _fault(self, operation: str) -> None:
        hook = self.fault
        if hook is not None:
            hook(operation)

    def _write(self, data: bytes) -> None:
        try:
            self._fault("write")
            _write_all(self._fd, data)
        except OSError as exc:
            self._fail(f"write failed: {exc.strerror or exc}")
            raise WalUnavailable(self._failure.reason if self._failure else str(exc)) from exc
        self._segment_size += len(data)
        self._written += len(data)

    def _rotate(self) -> None:
        """Seal the current segment (fsync) and start the next; only the last can be torn."""
        try:
            self._fault("fsync")
            _sync_data(self._fd)
        except OSError as exc:
            self._fail(f"fsync failed: {exc.strerror or exc}")
            raise WalUnavailable(self._failure.reason if self._failure else str(exc)) from exc
        self._mark_synced(self._written)
        _call(self._committer.advance(self._written), None)
        os.close(self._fd)
        self._fd = -1
        self._write_checkpoint()
        try:
            self._start_segment(self._next_seq)
        except OSError as exc:
            self._fail(f"cannot start a new segment: {exc.strerror or exc}")
            raise WalUnavailable(self._failure.reason if self._failure else str(exc)) from exc
        _call(self._committer.advance(self._written), None)

    def _mark_synced(self, position: int) -> None:
        self._unsynced_seqs = [(end, seq) for end, seq in self._unsynced_seqs if end > position]
        self._unsynced_markers = [(end, f) for end, f in self._unsynced_markers if end > position]

    def _write_checkpoint(self) -> None:
        payload = json.dumps({"format": FORMAT_VERSION, "applied_through": self._watermark,
                              "next_seq": self._next_seq}).encode()
        temporary = self.directory / f"{CHECKPOINT_NAME}.tmp"
        with contextlib.suppress(OSError):
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.directory / CHECKPOINT_NAME)
            _fsync_directory(self.directory)

    def _fail(self, reason: str) -> None:
        """The log cannot be trusted to hold what was written since the last fsync."""
        durable = self._committer.durable
        self._epoch += 1
        self.stats.failures += 1
        abandoned = [seq for _, seq in self._unsynced_seqs]
        markers = [frames for _, frames in self._unsynced_markers]
        for seq in abandoned:
            self._pending.pop(seq, None)
        self._unsynced_seqs = []
        self._unsynced_markers = []
        seals = []
        if self._fd >= 0:
            # Drop the bytes no fsync confirmed, so a restart cannot replay a refused write; the
            # seal written on recovery covers a disk that refuses even that.
            valid = max(len(SEGMENT_MAGIC), durable - self._segment_base)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, valid)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            seals.append(SegmentSeal(self._segment_first_seq, time.time_ns(), valid))
        previous = self._failure
        self._failure = _Failure(
            reason=f"the write-ahead log in {self.directory} cannot be written ({reason})",
            last_attempt=time.monotonic(),
            abandoned=(previous.abandoned if previous else []) + abandoned,
            markers_to_rewrite=(previous.markers_to_rewrite if previous else []) + markers,
            seals=(previous.seals if previous else []) + seals,
        )
        log.error("%s; writes are refused until it recovers", self._failure.reason)
        _call(self._committer.fail(self._epoch, WalUnavailable(self._failure.reason)),
              WalUnavailable(self._failure.reason))

    def _ensure_writable(self) -> None:
        if self._closed:
            raise WalUnavailable("the write-ahead log is closed")
        failure = self._failure
        if failure is None:
            return
        if time.monotonic() - failure.last_attempt < self._retry_interval_s:
            raise WalUnavailable(failure.reason)
        failure.last_attempt = time.monotonic()
        # Recover into a fresh segment: a file whose fsync failed is not trusted again.
        try:
            self._start_segment(self._next_seq)
            now = time.time_ns()
            frames = b"".join(
                [encode_entry(seal) for seal in failure.seals]
                + [encode_entry(AppliedMarker(seq, now, Outcome.ABANDONED, 0))
                   for seq in failure.abandoned]
                + failure.markers_to_rewrite)
            if frames:
                self._fault("write")
                _write_all(self._fd, frames)
                self._segment_size += len(frames)
                self._written += len(frames)
            self._fault("fsync")
            os.fsync(self._fd)
        except OSError as exc:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
                # Nothing of value is in it yet (all of it is written again next time); a
                # leftover must not stand, unsealed, before the next segment.
                try:
                    self._segment_path.unlink()
                except OSError:
                    failure.seals.append(SegmentSeal(self._segment_first_seq, time.time_ns(),
                                                     len(SEGMENT_MAGIC)))
            failure.reason = (f"the write-ahead log in {self.directory} cannot be written "
                              f"({exc.strerror or exc})")
            raise WalUnavailable(failure.reason) from exc
        log.warning("write-ahead log in %s writable again (new segment %s)", self.directory,
                    self._segment_path.name)
        self._failure = None
        _call(self._committer.advance(self._written), None)

    # -- called by the fsync thread ----------------------------------------------------------

    def _sync_snapshot(self) -> tuple[int, int, int, int] | None:
        with self._lock:
            if self._failure is not None or self._fd < 0:
                return None
            records, self._records_since_sync = self._records_since_sync, 0
            return self._epoch, self._written, os.dup(self._fd), records

    def _synced(self, epoch: int, position: int, records: int,
                seconds: float) -> list[Waiter]:
        with self._lock:
            if epoch != self._epoch:
                return []  # a failure happened meanwhile; its waiters were told
            self._mark_synced(position)
            self.stats.fsyncs += 1
            self.stats.record_fsyncs += 1 if records else 0
            self.stats.fsynced_records += records
            ready = self._committer.advance(position)
        if self._on_fsync is not None:
            self._on_fsync(records, seconds)
        return ready

    def _sync_failed(self, epoch: int, exc: OSError) -> list[Waiter]:
        with self._lock:
            if epoch == self._epoch:
                self._fail(f"fsync failed: {exc.strerror or exc}")
        return []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _sync_data(fd: int) -> None:
    # fdatasync flushes the data and the size needed to read it back, skipping timestamps.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_checkpoint(directory: Path) -> dict[str, int]:
    try:
        raw = json.loads((directory / CHECKPOINT_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items()
            if k in ("applied_through", "next_seq") and isinstance(v, int) and v >= 0}
