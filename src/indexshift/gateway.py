"""The write-ahead gateway: an HTTP reverse proxy in front of OpenSearch / Elasticsearch.

Applications point their client (opensearch-py, elasticsearch-py, curl) at the gateway instead
of the cluster. Reads pass through, streamed. Document writes — index, create, update, delete
and bulk, on an alias or an index — are appended to the write-ahead log (:mod:`indexshift.wal`)
and fsynced *before* they are forwarded; the record is marked applied when upstream answers.
The client is acknowledged only after upstream succeeded (normal mode), or after the durable
append (read-only mode: ``202 Accepted`` with the log position). A write that upstream could
not take (connection refused, timeout, 5xx) stays in the log and a replay worker applies it,
in log order, with backoff, until upstream accepts it; after a crash, a restart on the same log
directory replays every record not marked applied.

This module is the one sanctioned exception to "only :mod:`indexshift.cluster` talks HTTP to a
cluster": a proxy must speak raw HTTP, byte for byte, with the client's own headers.

Guarantees and limits, precisely:

* The log order is the order in which the gateway received the writes. Writes in flight at the
  same time have no order between them (as against the cluster directly); once a write is
  waiting for replay, every later write queues behind it, so the writes of one sequential
  client are never reordered, and a replay never overtakes a newer write.
* A write whose outcome upstream never told (a timeout, a dropped connection) is retried, so it
  may apply twice: harmless for index and delete by id, visible for scripted updates and
  auto-id documents (at-least-once, never lost).
* ``_update_by_query`` and ``_delete_by_query`` pass through unrecorded (the log cannot replay
  a query's effect faithfully); they are counted in the metrics. Index management (create an
  index, mappings, aliases) passes through too: it is not a document write.
* Credentials are not written to the log; replayed writes carry ``replay_authorization``.
* Item-level failures inside a ``_bulk`` answer belong to whoever receives that answer: the
  client when it is waiting for it, the replay worker otherwise (it retries 429/5xx items).
* A write upstream cannot take now holds its client up to ``write_hold_s`` for the real
  answer; after that the client hears 503 with the write's log position (it is not lost; a
  client that resends it logs it again, which is harmless for index and delete by id).
* The replay worker sends consecutive single-document writes as one ``_bulk`` (at most one
  write per document per batch), two batches at a time on disjoint documents; a write that a
  bulk item cannot express exactly is replayed alone, as it was sent.
* ``on_wal_failure="forward"`` trades the guarantee for availability: while the log cannot be
  written, writes go upstream unlogged (counted) and may overtake writes still queued.
* A migration (:mod:`indexshift.gateway_link`) drives three admin endpoints: ``/log`` serves
  the logged writes after a position with their outcomes; ``/hold`` holds every write logged
  after a fence (logged, not forwarded, answered once released; the hold ends by itself at its
  timeout) and answers once every write before the fence is applied; ``/mirror`` applies each
  write on an alias to a second index too (dual write), one write per document at a time so
  both indices take a document's writes in the same order, and survives restarts. A mirrored
  write that the second index refuses is counted (``failed``), not retried for ever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import random
import re
import signal
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from indexshift import read_rollout
from indexshift.errors import BadInput
from indexshift.gateway_metrics import Counter, GatewayMetrics, gauge_lines
from indexshift.gateway_protocol import (
    ADMIN_PREFIX,
    BulkLine,
    Classified,
    Mode,
    RequestKind,
    WriteOp,
    classify,
    decode_body,
    decoded_headers,
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
from indexshift.gateway_upstream import (
    UnsendableRequest,
    UpstreamAnswer,
    UpstreamFailed,
    UpstreamPool,
    describe_error,
)
from indexshift.wal import (
    AppliedMarker,
    LogPage,
    WalUnavailable,
    WriteAheadLog,
    WriteLog,
    WriteRecord,
    read_records_after,
)
from indexshift.wal import LogGap as LogGap  # noqa: PLC0414  # re-exported: /log's error
from indexshift.wal_postgres import (
    PostgresWriteLog,
    RecordUnreadable,
    check_postgres_url,
    gateway_state_dir,
    is_postgres_url,
)

log = logging.getLogger(__name__)

MODE_FILE: Final = "gateway-mode.json"
DEFAULT_MAX_BODY_BYTES: Final = 100 * 1024 * 1024
WalFailurePolicy = Literal["refuse", "forward"]
JSON = dict[str, Any]


# -- progressive read rollout (the decisions are in indexshift.read_rollout) -----------------


@dataclass(frozen=True)
class RoutedRead:
    """Where one read of a rolled-out alias goes."""

    alias: str
    target: read_rollout.Target
    index: str
    path: str  # the rewritten path, without the query
    endpoint: str


class ReadRollouts:
    """The gateway's read rollouts, by alias: it routes reads, keeps their samples over the
    window, applies what :func:`read_rollout.evaluate` decides and counts it. Used on the
    gateway's event loop only, so it needs no lock."""

    # Per alias and target: the newest of the window, whatever the read rate. Each target has
    # its own, so that at 1 % green's samples are not pushed out by blue's.
    MAX_SAMPLES: Final = 10_000
    # Sorting the window's latencies on every read would cost more than the read itself; a
    # quarter of a second is soon enough to stop sending reads to a failing green.
    EVALUATE_EVERY_S: Final = 0.25

    def __init__(self) -> None:
        self._states: dict[str, read_rollout.RolloutState] = {}
        self._samples: dict[str, dict[read_rollout.Target, deque[read_rollout.ReadSample]]] = {}
        self._evaluated_at: dict[str, float] = {}
        self.reads = Counter("indexshift_gateway_rollout_reads_total",
                             "Reads of a rolled-out alias, by alias, target and outcome.")
        self.rollbacks = Counter("indexshift_gateway_rollout_rollbacks_total",
                                 "Rollouts sent back to blue automatically, by alias and cause.")
        self.share_changes = Counter(
            "indexshift_gateway_rollout_share_changes_total",
            "Changes of a rollout's share, by alias and by whom (operator, schedule, rollback).")

    @property
    def active(self) -> bool:
        return bool(self._states)

    def start(self, spec: read_rollout.RolloutSpec) -> JSON:
        now = time.monotonic()
        previous = self._states.get(spec.alias)
        state = read_rollout.begin(spec, now, previous)
        if not read_rollout.continues(previous, state):
            self._samples[spec.alias] = {target: deque(maxlen=self.MAX_SAMPLES)
                                         for target in read_rollout.Target}
        self._states[spec.alias] = state
        self.share_changes.inc(alias=spec.alias, by="operator")
        log.warning("gateway: read rollout of %s: %g %% of reads to %s, the rest to %s",
                    spec.alias, state.share, spec.green, spec.blue)
        return self._describe(spec.alias, now)

    def stop(self, alias: str) -> JSON | None:
        if alias not in self._states:
            return None
        last = self._describe(alias, time.monotonic())
        del self._states[alias]
        self._samples.pop(alias, None)
        self._evaluated_at.pop(alias, None)
        log.warning("gateway: read rollout of %s stopped; its reads reach the alias again",
                    alias)
        return last

    def route(self, method: str, path: str, query: str,
              session: str | None) -> RoutedRead | None:
        found = read_rollout.read_endpoint(method, path)
        if found is None:
            return None
        names, endpoint = found
        alias = next((name for name in names if name in self._states), None)
        if alias is None:
            return None
        state = self._states[alias]
        key = read_rollout.routing_key(query, session)
        target = read_rollout.choose_target(state.share, alias, key, random.random())
        index = state.spec.green if target is read_rollout.Target.GREEN else state.spec.blue
        return RoutedRead(alias, target, index,
                          read_rollout.rewrite_target(path, alias, index), endpoint)

    def record(self, routed: RoutedRead, status: int | None, seconds: float) -> None:
        """One routed read's outcome (``status`` None: upstream gave no answer)."""
        error = status is None or read_rollout.is_error(status, routed.endpoint)
        self.reads.inc(alias=routed.alias, target=routed.target.value,
                       outcome="error" if error else "ok")
        state = self._states.get(routed.alias)
        samples = self._samples.get(routed.alias)
        if (state is None or samples is None or state.phase is not read_rollout.Phase.ACTIVE
                or routed.index not in (state.spec.blue, state.spec.green)):
            return  # stopped, rolled back or replaced while the read was in flight
        now = time.monotonic()
        samples[routed.target].append(read_rollout.ReadSample(now, routed.target, seconds,
                                                              error))
        if now - self._evaluated_at.get(routed.alias, 0.0) >= self.EVALUATE_EVERY_S:
            self._evaluate(routed.alias, now)

    def _evaluate(self, alias: str, now: float) -> read_rollout.RolloutState:
        state = self._states[alias]
        since = now - state.spec.thresholds.window_s
        for samples in self._samples[alias].values():
            while samples and samples[0].at < since:
                samples.popleft()
        self._evaluated_at[alias] = now
        after = read_rollout.evaluate(state, self._all_samples(alias), now)
        self._states[alias] = after
        if after.phase is not state.phase:
            self.rollbacks.inc(alias=alias, cause=str(after.cause))
            self.share_changes.inc(alias=alias, by="rollback")
            log.error("gateway: read rollout of %s rolled back, every read goes to %s: %s",
                      alias, after.spec.blue, after.reason)
        elif after.share != state.share:
            self.share_changes.inc(alias=alias, by="schedule")
            log.warning("gateway: read rollout of %s stepped up to %g %%", alias, after.share)
        return after

    def _describe(self, alias: str, now: float) -> JSON:
        state = self._evaluate(alias, now)
        described = read_rollout.state_to_json(state, self._all_samples(alias), now)
        described["reads"] = {
            target.value: int(sum(self.reads.value(alias=alias, target=target.value,
                                                   outcome=outcome)
                                  for outcome in ("ok", "error")))
            for target in read_rollout.Target}
        return described

    def _all_samples(self, alias: str) -> Iterable[read_rollout.ReadSample]:
        return itertools.chain.from_iterable(self._samples[alias].values())

    def describe(self, alias: str) -> JSON | None:
        return self._describe(alias, time.monotonic()) if alias in self._states else None

    def status(self) -> list[JSON]:
        now = time.monotonic()
        return [self._describe(alias, now) for alias in sorted(self._states)]

    def metric_lines(self) -> list[str]:
        states = sorted(self._states.items())
        lines = gauge_lines("indexshift_gateway_rollout_share",
                            "Percent of an alias's reads sent to green now.",
                            [({"alias": alias, "blue": state.spec.blue,
                               "green": state.spec.green}, state.share)
                             for alias, state in states])
        lines += gauge_lines("indexshift_gateway_rollout_rolled_back",
                             "1 when the rollout sent every read back to blue.",
                             [({"alias": alias},
                               1 if state.phase is read_rollout.Phase.ROLLED_BACK else 0)
                              for alias, state in states])
        for counter in (self.reads, self.rollbacks, self.share_changes):
            lines += counter.render()
        return lines


# -- the replay queue --------------------------------------------------------------------------


@dataclass(eq=False)
class QueuedWrite:
    """A logged write not yet applied upstream."""

    seq: int
    record: WriteRecord | None  # None: read it back from the log when needed
    classified: Classified | None = None
    waiter: asyncio.Future[UpstreamAnswer] | None = None  # a client waits for the answer
    attempts: int = 0
    last_error: str | None = None
    retry_body: bytes | None = None  # a replayed bulk: only the items still to apply
    bulk_line: BulkLine | None = None
    bulk_checked: bool = False
    send_alone: bool = False  # a batch with it was refused as a whole
    removed: bool = False  # finished: skipped by the queue, dropped once at its front

    @property
    def client_waiting(self) -> bool:
        return self.waiter is not None and not self.waiter.done()


class ReplayQueue:
    """Logged writes waiting for upstream, in sequence order.

    Writes arrive almost always in increasing order (appended at the end); a write that failed
    on the fast path may arrive later than writes logged after it and is slotted in by seq.
    Finished writes are flagged and skipped, and dropped once they reach the front, so that
    batches finishing out of order cost nothing.
    """

    def __init__(self) -> None:
        self._ordered: deque[QueuedWrite] = deque()
        self._late: list[QueuedWrite] = []  # sorted by seq, small
        self._seqs: set[int] = set()

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq: object) -> bool:
        return seq in self._seqs

    def add(self, entry: QueuedWrite) -> None:
        if entry.seq in self._seqs:
            return
        entry.removed = False
        self._seqs.add(entry.seq)
        if not self._ordered or entry.seq > self._ordered[-1].seq:
            self._ordered.append(entry)
            return
        at = len(self._late)
        while at > 0 and self._late[at - 1].seq > entry.seq:
            at -= 1
        self._late.insert(at, entry)

    def head(self, limit: int) -> list[QueuedWrite]:
        """The first ``limit`` writes in sequence order (they stay queued)."""
        out: list[QueuedWrite] = []
        if not self._late:  # the common case, on the replay's hot path
            for entry in self._ordered:
                if not entry.removed:
                    out.append(entry)
                    if len(out) >= limit:
                        break
            return out
        late = (e for e in self._late if not e.removed)
        ordered = (e for e in self._ordered if not e.removed)
        next_late, next_ordered = next(late, None), next(ordered, None)
        while len(out) < limit and (next_late is not None or next_ordered is not None):
            if next_ordered is None or (next_late is not None
                                        and next_late.seq < next_ordered.seq):
                assert next_late is not None
                out.append(next_late)
                next_late = next(late, None)
            else:
                out.append(next_ordered)
                next_ordered = next(ordered, None)
        return out

    def remove(self, entries: Iterable[QueuedWrite]) -> None:
        late_removed = False
        for entry in entries:
            if not entry.removed:
                entry.removed = True
                self._seqs.discard(entry.seq)
                late_removed = late_removed or bool(self._late)
        while self._ordered and self._ordered[0].removed:
            self._ordered.popleft()
        if late_removed:
            self._late = [e for e in self._late if not e.removed]

    def all(self) -> list[QueuedWrite]:
        return self.head(len(self))


@dataclass(eq=False)
class ReplayBatch:
    """Writes sent upstream together: one ``_bulk`` (``lines``), or one write alone."""

    entries: list[QueuedWrite]
    lines: list[BulkLine] | None  # None: the single entry is sent exactly as it was logged
    keys: set[tuple[str, str, str]] = field(default_factory=set)  # documents it writes
    record: WriteRecord | None = None  # the record of a write sent alone
    barrier: bool = False  # nothing may be in flight with it (a client bulk, a waiting client)


def plan_batch(candidates: Sequence[tuple[QueuedWrite, BulkLine | None]],
               running: Sequence[ReplayBatch], *, max_docs: int,
               max_bytes: int) -> tuple[list[int], bool]:
    """Which of the first queued writes (in seq order, those in flight left out) to send next.

    Returns the positions chosen and whether they form a barrier. ``candidates`` pairs each
    write with its bulk item, or None when it must be sent alone (a client's bulk, a client
    waiting for the answer, a write a bulk item cannot express): such a write goes only when
    nothing is in flight, and nothing after it goes before it is done. Otherwise a batch holds
    at most one write per document (index, id, routing), none whose document has a write in
    flight or an earlier write not chosen, and one refresh policy: so one document's writes
    apply in log order even when batches run side by side and some fail.
    """
    if any(batch.barrier for batch in running):
        return [], False
    blocked = {key for batch in running for key in batch.keys}
    chosen: list[int] = []
    refresh: str | None = None
    size = 0
    for position, (_, line) in enumerate(candidates):
        if line is None:
            if not chosen and not running:
                return [position], True
            break
        if line.key is not None and line.key in blocked:
            continue  # an earlier write of that document is in flight or still to go
        if refresh is not None and line.refresh != refresh:
            break
        if chosen and size + len(line.lines) > max_bytes:
            break
        chosen.append(position)
        refresh = line.refresh
        size += len(line.lines)
        if line.key is not None:
            blocked.add(line.key)
        if len(chosen) >= max_docs:
            break
    return chosen, False


# -- the migration link: write hold, mirror (dual write), reading the log back ----------------

MIRROR_FILE: Final = "gateway-mirror.json"
# Conditions that only make sense on the index the client aimed at: blue's sequence numbers
# differ from green's, and blue is no alias.
_MIRROR_DROPPED: Final = frozenset({"if_seq_no", "if_primary_term", "require_alias"})
MIRROR_ATTEMPTS: Final = 5
MAX_LOG_PAGE: Final = 10_000
ADOPT_ORPHANS_EVERY_S: Final = 2.0  # on a shared log: how often to look for gone instances


@dataclass(frozen=True)
class MirroredWrite:
    """A write on the mirrored alias, rewritten to reach the mirror index instead."""

    method: str
    target: str  # path and query
    body: bytes
    content_type: str | None
    content_encoding: str | None


def _mirror_query(query: str) -> str:
    if not query:
        return ""
    return urlencode([(name, value) for name, value in parse_qsl(query, keep_blank_values=True)
                      if name not in _MIRROR_DROPPED])


def mirror_write(method: str, path: str, query: str, content_type: str | None,
                 content_encoding: str | None, body: bytes, *, alias: str, index: str,
                 item_statuses: Sequence[int] | None = None) -> MirroredWrite | None:
    """The part of a write addressed to ``alias`` that ``index`` must take as well, or None.

    A single-document write keeps its body and endpoint with the index name swapped. A bulk
    keeps only its items on the alias (those upstream accepted, when ``item_statuses`` says),
    each renamed. ``ValueError`` when the body cannot be read.
    """
    classified = classify(method, path)
    if classified.kind != RequestKind.WRITE:
        return None
    mirrored_query = _mirror_query(query)
    suffix = f"?{mirrored_query}" if mirrored_query else ""
    if classified.op != WriteOp.BULK:
        if classified.index != alias:
            return None
        parts = path_segments(path)
        target = "/" + "/".join([quote(index, safe=""), *parts[1:]])
        return MirroredWrite(method, target + suffix, body, content_type, content_encoding)
    items = split_bulk(decode_body(body, content_encoding))
    if item_statuses is not None and len(item_statuses) != len(items):
        item_statuses = None
    lines: list[bytes] = []
    for position, item in enumerate(items):
        if (item.index or classified.index) != alias:
            continue
        if item_statuses is not None and not 200 <= item_statuses[position] < 300:
            continue  # refused by the index the client aimed at: not a write that happened
        head, _, rest = item.lines.partition(b"\n")
        ((op, meta),) = json.loads(head).items()
        renamed = {k: v for k, v in (meta if isinstance(meta, dict) else {}).items()
                   if k not in _MIRROR_DROPPED}
        renamed["_index"] = index
        lines.append(json.dumps({op: renamed}).encode() + b"\n" + rest)
    if not lines:
        return None
    return MirroredWrite("POST", "/_bulk" + suffix, b"".join(lines), "application/x-ndjson",
                         None)


def mirror_keys(record: WriteRecord, alias: str) -> list[str]:
    """The documents of ``alias`` a logged write touches (ids the cluster chooses are new
    documents: no key); one key for everything when a bulk body cannot be read."""
    classified = classify(record.method, record.path)
    if classified.op != WriteOp.BULK:
        return [classified.doc_id] if classified.doc_id is not None else []
    try:
        items = split_bulk(decode_body(record.body, record.header("content-encoding")))
    except (ValueError, OSError, EOFError, zlib.error):
        return ["\0every document"]
    return [item.doc_id for item in items
            if item.doc_id is not None and (item.index or classified.index) == alias]


class DocumentLocks:
    """One asyncio lock per document, made on demand and dropped when nobody holds or waits
    for it; several are taken in sorted order, so two bulks never wait for each other."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for key in ordered:
            lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        acquired: list[asyncio.Lock] = []
        try:
            for key in ordered:
                lock = self._locks[key][0]
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in acquired:
                lock.release()
            for key in ordered:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def record_to_json(record: WriteRecord, marker: AppliedMarker | None) -> JSON:
    return {"seq": record.seq, "time_ns": record.time_ns, "method": record.method,
            "path": record.path, "query": record.query,
            "headers": [list(pair) for pair in record.headers],
            "body_b64": base64.b64encode(record.body).decode("ascii"),
            "outcome": marker.outcome.name.lower() if marker is not None else None,
            "status": marker.status if marker is not None else None}


def log_page_to_json(page: LogPage, after: int) -> JSON:
    """The ``/log`` endpoint's answer for a page of the log read after ``after``."""
    return {"records": [record_to_json(w.record, w.marker) for w in page.writes],
            "more": page.more, "next_after": page.next_after(after)}


def log_records_after(directory: Path, after: int, limit: int,
                      until: int | None = None) -> JSON:
    """As the ``/log`` endpoint answers, from the segments of a file log's directory (see
    :func:`indexshift.wal.read_records_after`); safe while a gateway writes the log."""
    return log_page_to_json(read_records_after(directory, after, limit, until), after)


@dataclass(eq=False)
class WriteHold:
    """Writes logged after ``fence`` wait (logged, not forwarded) until the hold ends."""

    hold_id: str
    fence: int
    timeout_s: float
    started: float  # monotonic
    released: asyncio.Event
    expiry: asyncio.TimerHandle | None = None
    waiting: int = 0
    held: int = 0
    expired: bool = False

    def to_json(self) -> JSON:
        age = time.monotonic() - self.started
        return {"active": not self.released.is_set(), "hold_id": self.hold_id,
                "fence_seq": self.fence, "waiting": self.waiting, "held": self.held,
                "age_ms": round(age * 1000, 1),
                "remaining_s": round(max(0.0, self.timeout_s - age), 3),
                "expired": self.expired}


@dataclass(eq=False)
class Mirror:
    """Every write on ``alias`` logged after ``since_seq`` is applied to ``index`` too."""

    alias: str
    index: str
    since_seq: int
    mirrored: int = 0
    failed: int = 0
    last_error: str | None = None
    failed_seqs: list[int] = field(default_factory=list)

    def to_json(self) -> JSON:
        return {"active": True, "alias": self.alias, "index": self.index,
                "since_seq": self.since_seq, "mirrored": self.mirrored, "failed": self.failed,
                "last_error": self.last_error, "failed_seqs": self.failed_seqs[-100:]}


def _read_mirror(directory: Path) -> Mirror | None:
    """The mirror survives restarts: a rollback after a restart must still find blue whole."""
    try:
        saved = json.loads((directory / MIRROR_FILE).read_text())
        return Mirror(str(saved["alias"]), str(saved["index"]), int(saved["since_seq"]),
                      failed=int(saved.get("failed", 0)),
                      last_error=saved.get("last_error"),
                      failed_seqs=[int(s) for s in saved.get("failed_seqs", [])])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_mirror(directory: Path, mirror: Mirror | None) -> None:
    target = directory / MIRROR_FILE
    try:
        if mirror is None:
            target.unlink(missing_ok=True)
            return
        temporary = directory / f"{MIRROR_FILE}.tmp"
        temporary.write_text(json.dumps({
            "alias": mirror.alias, "index": mirror.index, "since_seq": mirror.since_seq,
            "failed": mirror.failed, "last_error": mirror.last_error,
            "failed_seqs": mirror.failed_seqs[-1000:]}))
        os.replace(temporary, target)
    except OSError as exc:
        log.error("gateway: the mirror setting could not be saved (%s)", exc)


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    listen: str
    upstream: str
    wal_dir: Path
    on_wal_failure: WalFailurePolicy = "refuse"
    fallback_index: str | None = None
    fallback_for: str | None = None  # serve only this alias from the fallback (None: any)
    write_hold_s: float = 5.0  # how long a client waits for a write upstream cannot take now
    upstream_timeout_s: float = 60.0  # a forwarded write; reads wait read_timeout_s per chunk
    read_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    upstream_connections: int = 64
    verify_tls: bool = True
    ca_bundle: Path | None = None
    replay_authorization: str | None = None
    replay_batch_docs: int = 1000
    replay_concurrency: int = 2  # batches in flight at once (on disjoint documents)
    replay_batch_bytes: int = 8 * 1024 * 1024
    queue_memory_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 64 * 1024 * 1024
    shutdown_timeout_s: float = 10.0
    # A postgresql:// URL: the log is kept there, shared by every gateway given the same URL
    # (wal_dir then holds only this instance's own state, such as its mode).
    wal_url: str | None = None

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.wal_url is not None:
            check_postgres_url(self.wal_url)
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"--upstream expects http(s)://host:port, got {self.upstream!r}")
        if self.on_wal_failure not in ("refuse", "forward"):
            raise BadInput(f"--on-wal-failure expects refuse or forward, "
                           f"got {self.on_wal_failure!r}")
        if self.replay_batch_docs < 1 or self.replay_concurrency < 1:
            raise BadInput("replay batch size and concurrency must be at least 1")
        if self.fallback_index is not None and (not self.fallback_index
                                                or self.fallback_index.startswith("_")):
            raise BadInput(f"--fallback-index {self.fallback_index!r} is not an index name")


# -- the gateway -------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class _UpstreamFailed(Exception):
    """Upstream gave no answer (refused, reset, timed out)."""


class Gateway:
    """One gateway: the HTTP server, the upstream session, the log and the replay worker."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.queue = ReplayQueue()
        self.rollouts = ReadRollouts()  # progressive read rollouts, by alias
        self.mode = Mode.NORMAL
        self.wal: WriteLog | None = None
        self.url = ""
        self._upstream_base = config.upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None  # reads, streamed
        self._writes_upstream: UpstreamPool | None = None  # writes, buffered
        self._runner: web.ServerRunner | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None  # new work for an idle replay worker
        self._interrupt: asyncio.Event | None = None  # a mode change or stop ends a backoff
        self._stopping = False
        self._queue_body_bytes = 0
        self._started_at = time.time()
        self._last_upstream_error: str | None = None
        self._upstream_ok = True
        self._write_hold: WriteHold | None = None  # a cut-over holds writes
        self._mirror: Mirror | None = None  # dual write during a migration's monitoring
        self._mirror_locks = DocumentLocks()
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        self._mirrors_in_flight = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Open the log, load what it still owes upstream, and start serving; the URL."""
        loop = asyncio.get_running_loop()
        config = self.config

        def open_log() -> WriteLog:
            if config.wal_url is not None:
                # The log is shared in PostgreSQL; wal_dir keeps this instance's own state.
                config.wal_dir.mkdir(parents=True, exist_ok=True)
                return PostgresWriteLog.open(config.wal_url, on_fsync=self.metrics.on_fsync)
            return WriteAheadLog.open(config.wal_dir, segment_bytes=config.segment_bytes,
                                      on_fsync=self.metrics.on_fsync)

        self.wal = await loop.run_in_executor(None, open_log)
        try:
            self.mode = _read_mode(config.wal_dir)
            self._mirror = _read_mirror(config.wal_dir)
            for seq in self.wal.pending_seqs():
                self.queue.add(QueuedWrite(seq, None))
            if len(self.queue):
                log.info("gateway: %d logged writes still to apply upstream", len(self.queue))
            self._wake = asyncio.Event()
            self._interrupt = asyncio.Event()
            self._session = self._new_session()
            self._writes_upstream = UpstreamPool(
                config.upstream, ssl_context=self._ssl_context(),
                limit=config.upstream_connections, connect_timeout_s=config.connect_timeout_s)
            server = web.Server(self.handle, auto_decompress=False, access_log=None,
                                max_line_size=65536, max_field_size=65536,
                                handler_cancellation=False)
            self._runner = web.ServerRunner(server, shutdown_timeout=config.shutdown_timeout_s)
            await self._runner.setup()
            host, port = parse_listen(config.listen)
            site = web.TCPSite(self._runner, host, port, reuse_address=True)
            await site.start()
        except BaseException:
            await self._close_resources()
            raise
        bound = self._runner.addresses[0]
        bound_host = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        self.url = f"http://{bound_host}:{bound[1]}"
        self._replay_task = asyncio.create_task(self._replay_loop(), name="indexshift-replay")
        self._wake.set()
        return self.url

    def _ssl_context(self) -> ssl.SSLContext:
        config = self.config
        if not config.verify_tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if config.ca_bundle is not None:
            return ssl.create_default_context(cafile=str(config.ca_bundle))
        return ssl.create_default_context()

    def _new_session(self) -> aiohttp.ClientSession:
        config = self.config
        ssl_option = self._ssl_context()
        connector = aiohttp.TCPConnector(limit=config.upstream_connections, limit_per_host=0,
                                         keepalive_timeout=60, ssl=ssl_option)
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s,
                                          sock_read=config.read_timeout_s),
            max_line_size=65536, max_field_size=65536, cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, fsync the log and close it."""
        self._stopping = True
        if self._write_hold is not None:
            self._release(self._write_hold)  # held writes are logged: they go to the queue
        for entry in self.queue.all():
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.cancel()  # its handler answers "logged, will be applied"
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._replay_task is not None:
            assert self._wake is not None and self._interrupt is not None
            self._wake.set()
            self._interrupt.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._replay_task),
                                       self.config.shutdown_timeout_s)
            except TimeoutError:
                self._replay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._replay_task
            self._replay_task = None
        await self._close_resources()

    async def _close_resources(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._writes_upstream is not None:
            await self._writes_upstream.close()
            self._writes_upstream = None
        if self.wal is not None:
            wal, self.wal = self.wal, None
            await asyncio.get_running_loop().run_in_executor(None, wal.close)

    # -- modes -------------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> JSON:
        previous = self.mode
        persisted = _write_mode(self.config.wal_dir, mode)
        self.mode = mode
        if self._wake is not None and self._interrupt is not None:
            self._wake.set()
            self._interrupt.set()
        log.warning("gateway mode: %s → %s", previous.value, mode.value)
        return {"mode": mode.value, "previous": previous.value, "persisted": persisted,
                "queued": len(self.queue)}

    # -- the request handler -----------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        kind = "read"
        response: web.StreamResponse | None = None
        try:
            path, _, query = request.raw_path.partition("?")
            if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
                kind = "admin"
                response = await self._admin(request, path[len(ADMIN_PREFIX):], query)
                return response
            classified = classify(request.method, path)
            kind = classified.kind.value
            if classified.kind == RequestKind.WRITE:
                response = await self._write(request, classified, path, query)
            elif classified.kind == RequestKind.UNRECORDED_WRITE:
                response = await self._unrecorded_write(request, classified)
            else:
                response = await self._read(request, path, query)
            return response
        except _BodyTooLarge:
            response = _json_response(413, error_body(
                413, "indexshift_request_too_large",
                f"the request body is larger than the gateway's limit of "
                f"{self.config.max_body_bytes} bytes; split the bulk request"))
            return response
        except Exception as exc:
            log.exception("gateway: %s %s failed", request.method, request.raw_path)
            response = _json_response(500, error_body(
                500, "indexshift_gateway_exception", f"the gateway failed: {exc}"))
            return response
        finally:
            status = response.status if response is not None else 500
            self.metrics.requests.inc(kind=kind, status=str(status))
            if kind != "admin":
                self.metrics.request_seconds.observe(time.perf_counter() - started,
                                                     kind="write" if "write" in kind else kind)

    # -- reads -------------------------------------------------------------------------------

    async def _read(self, request: web.BaseRequest, path: str,
                    query: str) -> web.StreamResponse:
        warning = None
        target = request.raw_path
        if self.mode == Mode.READ_ONLY and self.config.fallback_index:
            rewritten = fallback_path(path, self.config.fallback_index, self.config.fallback_for)
            if rewritten is not None:
                target = rewritten + (f"?{query}" if query else "")
                warning = (f'299 indexshift "served from the fallback index '
                           f'{self.config.fallback_index}: the gateway is in read-only mode"')
        routed: RoutedRead | None = None
        if warning is None and self.rollouts.active:
            routed = self.rollouts.route(request.method, path, query,
                                         request.headers.get(read_rollout.SESSION_HEADER))
            if routed is not None:
                target = routed.path + (f"?{query}" if query else "")
        headers = forward_request_headers(decoded_headers(request.raw_headers))
        data: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            await _continue_if_expected(request)
            if length is not None and length <= 1024 * 1024:
                data = await request.content.readexactly(length) if length else b""
            else:
                data = request.content  # large or chunked: streamed through
                if length is not None:
                    headers["Content-Length"] = str(length)
        assert self._session is not None
        started = time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method, URL(self._upstream_base + target, encoded=True),
                headers=headers, data=data, allow_redirects=False)
        except (aiohttp.InvalidURL, ValueError) as exc:
            return _json_response(400, error_body(
                400, "indexshift_unsendable_request",
                f"the gateway cannot send this request upstream: {describe_error(exc)}"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._upstream_failed(exc)
            if routed is not None:
                self.rollouts.record(routed, None, time.perf_counter() - started)
            return _json_response(502, error_body(
                502, "indexshift_upstream_unreachable",
                f"the gateway could not reach {self._upstream_base}: {describe_error(exc)}"))
        self.metrics.upstream_seconds.observe(time.perf_counter() - started, kind="read")
        self._upstream_ok = upstream.status < 500
        if routed is not None:
            # Time to the answer's headers: the engine sends them once the query has run.
            self.rollouts.record(routed, upstream.status, time.perf_counter() - started)
        try:
            out_headers = response_headers(decoded_headers(upstream.raw_headers), keep_length=True)
            if routed is not None:
                out_headers[read_rollout.TARGET_HEADER] = f"{routed.target.value} {routed.index}"
            if warning is not None:
                out_headers.add("Warning", warning)
            length = upstream.content_length
            if request.method == "HEAD" or (length is not None and length <= 65536):
                body = await upstream.read()
                out_headers.popall("Content-Length", None)
                response = web.Response(status=upstream.status, reason=upstream.reason,
                                        headers=out_headers,
                                        body=None if request.method == "HEAD" else body)
                if request.method == "HEAD" and length is not None:
                    response.headers["Content-Length"] = str(length)
                return response
            streamed = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=out_headers)
            await streamed.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await streamed.write(chunk)
                await streamed.write_eof()
            except (ConnectionError, aiohttp.ClientError, TimeoutError) as exc:
                # Headers are out: all that is left is to cut the connection.
                log.warning("gateway: streaming %s aborted: %s", request.raw_path, exc)
                if request.transport is not None:
                    request.transport.close()
            return streamed
        finally:
            upstream.release()

    async def _rollout_admin(self, request: web.BaseRequest, alias: str,
                             query: str) -> web.Response:
        """``/rollout[/ALIAS]``: GET shows, POST/PUT starts or changes, DELETE stops."""
        alias = alias or dict(parse_qsl(query)).get("alias", "")
        if request.method in ("GET", "HEAD"):
            if not alias:
                return _json_response(200, {"rollouts": self.rollouts.status()})
            described = self.rollouts.describe(alias)
            if described is None:
                return _json_response(404, error_body(
                    404, "indexshift_no_rollout", f"no read rollout runs for {alias}"))
            return _json_response(200, described)
        if request.method == "DELETE":
            stopped = self.rollouts.stop(alias) if alias else None
            if stopped is None:
                return _json_response(404, error_body(
                    404, "indexshift_no_rollout",
                    f"no read rollout runs for {alias or '(no alias given)'}; see "
                    f"{ADMIN_PREFIX}/rollout"))
            return _json_response(200, {"stopped": alias, "last": stopped})
        if request.method not in ("POST", "PUT"):
            return _json_response(405, error_body(
                405, "indexshift_method_not_allowed",
                f"{request.method} is not allowed on {ADMIN_PREFIX}/rollout; use GET, POST or "
                f"DELETE"))
        try:
            decoded = json.loads(await request.read() or b"{}")
            if alias and isinstance(decoded, dict):
                decoded.setdefault("alias", alias)
            spec = read_rollout.spec_from_json(decoded)
        except ValueError as exc:
            return _json_response(400, error_body(
                400, "indexshift_bad_rollout", f"the rollout body is not JSON: {exc}"))
        except BadInput as exc:
            return _json_response(400, error_body(400, "indexshift_bad_rollout", str(exc)))
        for role, index in (("blue", spec.blue), ("green", spec.green)):
            missing = await self._index_missing(index, request.headers.get("Authorization"))
            if missing is not None:
                return _json_response(missing[0], error_body(
                    missing[0], "indexshift_bad_rollout",
                    f"{role} {index!r}: {missing[1]}; nothing was changed"))
        return _json_response(200, self.rollouts.start(spec))

    async def _index_missing(self, index: str,
                             authorization: str | None) -> tuple[int, str] | None:
        """Why a rollout cannot use ``index`` (status, reason), or None when it exists or the
        cluster does not let the gateway tell."""
        assert self._session is not None
        headers = {"Authorization": authorization or self.config.replay_authorization or ""}
        if not headers["Authorization"]:
            headers.clear()
        try:
            async with self._session.head(
                    URL(f"{self._upstream_base}/{quote(index, safe='')}", encoded=True),
                    headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s)) as answer:
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._upstream_failed(exc)
            return 502, f"upstream cannot be asked whether it exists ({describe_error(exc)})"
        if status == 404:
            return 400, "no such index or alias upstream"
        return None

    async def _unrecorded_write(self, request: web.BaseRequest,
                                classified: Classified) -> web.StreamResponse:
        api = classified.api or "unknown"
        self.metrics.unrecorded_writes.inc(api=api)
        if self.mode == Mode.READ_ONLY:
            return _json_response(403, error_body(
                403, "indexshift_read_only_exception",
                f"the gateway is read-only and {api} cannot be queued (the log cannot replay "
                f"a query); run it when the mode is normal"))
        path, _, query = request.raw_path.partition("?")
        return await self._read(request, path, query)

    # -- writes ------------------------------------------------------------------------------

    async def _write(self, request: web.BaseRequest, classified: Classified, path: str,
                     query: str) -> web.StreamResponse:
        body = await self._read_body(request)
        assert self.wal is not None
        raw_headers = decoded_headers(request.raw_headers)
        kept_headers = tuple(logged_headers(raw_headers))
        try:
            appended = self.wal.append(request.method, path, query, kept_headers, body)
            await self.wal.wait_durable_async(appended)
        except WalUnavailable as exc:
            return await self._write_without_log(request, raw_headers, body, exc)
        seq = appended.seq
        record = WriteRecord(seq, 0, request.method, path, query, kept_headers, body)
        try:
            return await self._write_linked(request, classified, record, raw_headers)
        except Exception as exc:
            # Logged but not answered: make sure the log's promise is kept in this run too.
            log.exception("gateway: write seq %d failed after it was logged", seq)
            assert self.wal is not None
            pending = self.wal.is_pending(seq)
            if pending and seq not in self.queue:
                self._enqueue(QueuedWrite(seq, record, classified))
            fate = "it will be applied from the log" if pending else "upstream applied it"
            return _json_response(500, error_body(
                500, "indexshift_gateway_exception",
                f"the gateway failed after logging this write at seq {seq} ({exc}); {fate}; "
                f"do not send it again", seq=seq, queued=pending))

    async def _write_logged(self, request: web.BaseRequest, classified: Classified,
                            record: WriteRecord,
                            raw_headers: list[tuple[str, str]]) -> web.StreamResponse:
        seq, body = record.seq, record.body
        if self.mode == Mode.READ_ONLY:
            self._enqueue(QueuedWrite(seq, record, classified))
            return self._queued_answer(classified, record)
        if len(self.queue) or self._stopping:
            return await self._hold(QueuedWrite(seq, record, classified), classified, record)
        headers = forward_request_headers(raw_headers)
        try:
            answer = await self._send(request.method, request.raw_path, headers, body)
        except _UpstreamFailed as exc:
            entry = QueuedWrite(seq, record, classified, last_error=str(exc), attempts=1)
            return await self._hold(entry, classified, record)
        if is_retryable_status(answer.status, client_waiting=True):
            entry = QueuedWrite(seq, record, classified, attempts=1,
                                last_error=f"upstream answered {answer.status}")
            return await self._hold(entry, classified, record)
        assert self.wal is not None
        self.wal.mark([(seq, outcome_of(answer.status), answer.status)])
        return _answer_response(answer, seq)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise _BodyTooLarge
        if not request.body_exists:
            return b""
        await _continue_if_expected(request)
        if length is not None:
            return await request.content.readexactly(length) if length else b""
        chunks, total = [], 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            if total > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _write_without_log(self, request: web.BaseRequest,
                                 raw_headers: list[tuple[str, str]], body: bytes,
                                 exc: WalUnavailable) -> web.StreamResponse:
        if self.config.on_wal_failure == "forward" and self.mode == Mode.NORMAL:
            self.metrics.unlogged_writes.inc()
            try:
                answer = await self._send(request.method, request.raw_path,
                                          forward_request_headers(raw_headers), body)
            except _UpstreamFailed as failure:
                return _json_response(502, error_body(
                    502, "indexshift_upstream_unreachable",
                    f"the write-ahead log cannot be written and upstream is unreachable "
                    f"({failure}); the write was not applied"))
            response = _answer_response(answer, None)
            response.headers.add("Warning", '299 indexshift "forwarded without the '
                                            'write-ahead log: it cannot be written"')
            return response
        self.metrics.refused_writes.inc(reason="wal_unavailable")
        return _json_response(503, error_body(
            503, "indexshift_wal_unavailable",
            f"{exc.message}; the write was refused and not forwarded (nothing changed); "
            f"retry it later", wal_error=exc.message))

    def _enqueue(self, entry: QueuedWrite) -> None:
        if entry.seq in self.queue:
            return
        if entry.record is not None:
            # Rewritten for a replay batch now, while the client waits for its fsync anyway,
            # rather than on the replay's critical path.
            self._bulk_line(entry, entry.record)
            size = len(entry.record.body)
            if self._queue_body_bytes + size > self.config.queue_memory_bytes:
                entry.record = None  # read back from the log when its turn comes
            else:
                self._queue_body_bytes += size
        self.queue.add(entry)
        if self._wake is not None:
            self._wake.set()

    def _queued_answer(self, classified: Classified, record: WriteRecord) -> web.Response:
        self.metrics.queued_writes.inc(answer="202")
        body = queued_body(classified, record.seq, self.mode, record.body,
                           record.header("content-encoding"))
        response = _json_response(202, body)
        response.headers["X-Indexshift-Seq"] = str(record.seq)
        return response

    async def _hold(self, entry: QueuedWrite, classified: Classified,
                    record: WriteRecord) -> web.StreamResponse:
        """Queue the write behind those before it and wait a while for its real answer."""
        loop = asyncio.get_running_loop()
        entry.waiter = loop.create_future()
        self._enqueue(entry)
        if self._stopping:
            entry.waiter.cancel()
        try:
            answer = await asyncio.wait_for(asyncio.shield(entry.waiter),
                                            self.config.write_hold_s)
            return _answer_response(answer, record.seq)
        except (TimeoutError, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this handler itself is being cancelled, not just the wait
            if not entry.waiter.done():
                entry.waiter.cancel()  # nobody waits now: the replay may batch it
            elif not entry.waiter.cancelled():
                return _answer_response(entry.waiter.result(), record.seq)
        if self.mode == Mode.READ_ONLY:
            return self._queued_answer(classified, record)
        self.metrics.queued_writes.inc(answer="503")
        reason = entry.last_error or "writes logged before it are still being applied"
        response = _json_response(503, error_body(
            503, "indexshift_write_pending_exception",
            f"upstream has not applied this write yet ({reason}); it is durably logged at seq "
            f"{record.seq} and will be applied in order; do not send it again",
            seq=record.seq, queued=True))
        response.headers["X-Indexshift-Seq"] = str(record.seq)
        return response

    async def _send(self, method: str, target: str, headers: Mapping[str, str],
                    body: bytes | None) -> UpstreamAnswer:
        assert self._writes_upstream is not None
        started = time.perf_counter()
        try:
            answer = await self._writes_upstream.request(method, target, headers, body or b"",
                                                         self.config.upstream_timeout_s)
        except UnsendableRequest as exc:
            # The request cannot even be formed (a malformed path or header): that is a final
            # answer, not an upstream failure to retry for ever.
            return UpstreamAnswer(400, "Bad Request", [("Content-Type", "application/json")],
                                  json.dumps(error_body(
                                      400, "indexshift_unsendable_request",
                                      f"the gateway cannot send this request upstream: "
                                      f"{exc}")).encode())
        except UpstreamFailed as exc:
            self._upstream_failed(exc)
            raise _UpstreamFailed(describe_error(exc)) from exc
        self.metrics.upstream_seconds.observe(time.perf_counter() - started, kind="write")
        self._upstream_ok = answer.status < 500
        return answer

    def _upstream_failed(self, exc: BaseException) -> None:
        self._upstream_ok = False
        self._last_upstream_error = describe_error(exc)
        self.metrics.upstream_failures.inc(reason=type(exc).__name__)

    # -- the replay worker -------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        running: dict[asyncio.Task[bool], ReplayBatch] = {}
        adopting = (asyncio.create_task(self._adopt_orphans(), name="indexshift-adopt")
                    if isinstance(self.wal, PostgresWriteLog) else None)
        try:
            await self._replay(running)
        finally:
            if adopting is not None:
                adopting.cancel()
                await asyncio.gather(adopting, return_exceptions=True)
            for task in running:  # cancelled (a stop that timed out): they stay in the log
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _adopt_orphans(self) -> None:
        """On a shared log, queue what other instances that are gone still owe upstream: they
        may never restart."""
        wal = self.wal
        assert isinstance(wal, PostgresWriteLog) and self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(ADOPT_ORPHANS_EVERY_S)
            try:
                adopted = await loop.run_in_executor(None, wal.adopt_orphans)
            except WalUnavailable as exc:
                log.debug("gateway: no adoption of orphaned writes now: %s", exc.message)
                continue
            for seq in adopted:
                self.queue.add(QueuedWrite(seq, None))
            if adopted:
                log.info("gateway: %d logged writes of gone instances to apply upstream",
                         len(adopted))
                self._wake.set()

    async def _replay(self, running: dict[asyncio.Task[bool], ReplayBatch]) -> None:
        assert self._wake is not None and self._interrupt is not None
        delay = 0.0
        resume_at = 0.0  # backoff: no new batch starts before this time
        while True:
            if self._stopping and not running:
                return
            if not self._stopping and self.mode == Mode.NORMAL:
                while (len(running) < self.config.replay_concurrency
                       and time.monotonic() >= resume_at):
                    try:
                        batch = self._plan(list(running.values()))
                    except RecordUnreadable:
                        # The log cannot be read now: back off as after a failed batch.
                        delay = min(2.0, max(0.05, delay * 2))
                        resume_at = time.monotonic() + delay
                        self._interrupt.clear()
                        break
                    if batch is None:
                        break
                    running[asyncio.create_task(self._apply(batch))] = batch
            if running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.pop(task)
                    try:
                        progressed = task.result()
                    except Exception:
                        log.exception("gateway: replay failed unexpectedly; retrying")
                        progressed = False
                    if progressed:
                        delay = 0.0
                    else:
                        # Backoff: new writes do not cut it short (they would hammer a
                        # struggling upstream); a mode change or a stop does.
                        delay = min(2.0, max(0.05, delay * 2))
                        resume_at = time.monotonic() + delay
                        self._interrupt.clear()
                continue
            if self._stopping or self.mode != Mode.NORMAL or not len(self.queue):
                self._wake.clear()
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(),
                                       max(0.01, resume_at - time.monotonic()))
            if self._interrupt.is_set():
                resume_at = 0.0

    def _load(self, entry: QueuedWrite) -> WriteRecord | None:
        if entry.record is not None:
            return entry.record
        assert self.wal is not None
        try:
            return self.wal.read(entry.seq)
        except RecordUnreadable:
            raise  # not now (the log's database is away): the caller retries it later
        except KeyError:
            return None  # marked meanwhile: nothing left to do

    def _bulk_line(self, entry: QueuedWrite, record: WriteRecord) -> BulkLine | None:
        if not entry.bulk_checked:
            entry.bulk_checked = True
            classified = entry.classified or classify(record.method, record.path)
            entry.classified = classified
            if (classified.op not in (None, WriteOp.BULK) and classified.index is not None
                    and entry.retry_body is None):
                entry.bulk_line = single_to_bulk(
                    classified.op, classified.index, classified.doc_id, record.query,
                    record.header("content-type"), record.header("content-encoding"),
                    record.body)
        return None if entry.send_alone else entry.bulk_line

    def _plan(self, running: list[ReplayBatch]) -> ReplayBatch | None:
        """The next batch to send beside ``running`` (see :func:`plan_batch`)."""
        busy = {entry.seq for batch in running for entry in batch.entries}
        window = self.config.replay_batch_docs + len(busy)
        candidates: list[tuple[QueuedWrite, BulkLine | None]] = []
        records: list[WriteRecord | None] = []
        gone: list[QueuedWrite] = []
        for entry in self.queue.head(window):
            if entry.seq in busy:
                continue
            waiter = entry.waiter
            client_waits = waiter is not None and not waiter.done()
            if (not client_waits and entry.bulk_checked and not entry.send_alone
                    and entry.bulk_line is not None):
                # Its bulk item is all a batch needs: no read back from the log (a write
                # chosen alone is loaded below, where it is sent).
                candidates.append((entry, entry.bulk_line))
                records.append(None)
                continue
            record = entry.record or self._load(entry)
            if record is None:
                gone.append(entry)
                continue
            if client_waits:
                line = None  # its client waits for the exact answer of its own request
            elif entry.bulk_checked and not entry.send_alone:
                line = entry.bulk_line
            else:
                line = self._bulk_line(entry, record)
            candidates.append((entry, line))
            records.append(record)
            if line is None:
                break  # nothing after a write that goes alone can be chosen
        if gone:
            self._finish(gone)
        chosen, barrier = plan_batch(candidates, running,
                                     max_docs=self.config.replay_batch_docs,
                                     max_bytes=self.config.replay_batch_bytes)
        if not chosen:
            return None
        if len(chosen) == 1:
            # One write alone is sent exactly as it was logged (same endpoint, same answer).
            entry, line = candidates[chosen[0]]
            record = records[chosen[0]] or self._load(entry)
            if record is None:
                self._finish([entry])  # marked meanwhile: nothing left to do
                return None
            keys = {line.key} if line is not None and line.key is not None else set()
            return ReplayBatch([entry], None, keys, record, barrier)
        lines = [line for i in chosen if (line := candidates[i][1]) is not None]
        return ReplayBatch([candidates[i][0] for i in chosen], lines,
                           {line.key for line in lines if line.key is not None})

    async def _apply(self, batch: ReplayBatch) -> bool:
        if batch.lines is None:
            assert batch.record is not None
            return await self._replay_alone(batch.entries[0], batch.record)
        return await self._replay_batch(list(zip(batch.entries, batch.lines, strict=True)),
                                        batch.lines[0].refresh)

    async def _replay_alone(self, entry: QueuedWrite, record: WriteRecord) -> bool:
        headers: CIMultiDict[str] = CIMultiDict(record.headers)
        body = record.body
        if entry.retry_body is not None:
            body = entry.retry_body
            headers.popall("content-encoding", None)
        if self.config.replay_authorization:
            headers["Authorization"] = self.config.replay_authorization
        target = record.path + (f"?{record.query}" if record.query else "")
        waiting = entry.client_waiting
        entry.attempts += 1
        self.metrics.replay_requests.inc(kind="alone")
        try:
            answer = await self._send(record.method, target, headers, body)
        except _UpstreamFailed as exc:
            entry.last_error = str(exc)
            return False
        if is_retryable_status(answer.status, client_waiting=waiting):
            entry.last_error = f"upstream answered {answer.status}"
            return False
        entry.classified = entry.classified or classify(record.method, record.path)
        if not waiting and entry.classified.op == WriteOp.BULK:
            remaining = bulk_items_to_retry(answer, record, body, entry.retry_body is not None)
            if remaining:
                entry.retry_body = remaining
                entry.last_error = "some bulk items were rejected for now (429/5xx)"
                self.metrics.replayed.inc(outcome="partial")
                return False
        self._finish([entry], {entry.seq: answer.status})
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(answer)
        self.metrics.replayed.inc(outcome=outcome_of(answer.status).name.lower())
        return True

    async def _replay_batch(self, batch: list[tuple[QueuedWrite, BulkLine]],
                            refresh: str) -> bool:
        body = b"".join(line.lines for _, line in batch)
        headers: dict[str, str] = {"Content-Type": "application/x-ndjson"}
        if self.config.replay_authorization:
            headers["Authorization"] = self.config.replay_authorization
        target = "/_bulk" + (f"?refresh={refresh}" if refresh else "")
        for entry, _ in batch:
            entry.attempts += 1
        self.metrics.replay_requests.inc(kind="batch")
        try:
            answer = await self._send("POST", target, headers, body)
        except _UpstreamFailed as exc:
            for entry, _ in batch:
                entry.last_error = str(exc)
            return False
        if is_retryable_status(answer.status, client_waiting=False):
            for entry, _ in batch:
                entry.last_error = f"upstream answered {answer.status} to a replay batch"
            return False
        items = _bulk_answer_items(answer, len(batch))
        if answer.status != 200 or items is None or len(items) != len(batch):
            # Refused as a whole (a malformed rewrite?): replay each exactly as it was sent.
            log.warning("gateway: replay batch answered %d; replaying its writes one by one",
                        answer.status)
            for entry, _ in batch:
                entry.send_alone = True
            return True
        finished: list[QueuedWrite] = []
        statuses: dict[int, int] = {}
        retry = False
        rejected = 0
        for (entry, _), status in zip(batch, items, strict=True):
            if 200 <= status < 300:
                finished.append(entry)
                statuses[entry.seq] = status
                continue
            if is_retryable_status(status, client_waiting=False):
                entry.last_error = f"upstream answered {status} to this item"
                retry = True
                continue
            finished.append(entry)
            statuses[entry.seq] = status
            rejected += 1
        # Counted once per batch, not per item: a replay finishes thousands per second.
        if len(finished) > rejected:
            self.metrics.replayed.inc(len(finished) - rejected, outcome="applied")
        if rejected:
            self.metrics.replayed.inc(rejected, outcome="rejected")
        self._finish(finished, statuses)
        return not retry

    def _finish(self, entries: Sequence[QueuedWrite],
                statuses: Mapping[int, int] | None = None) -> None:
        """Mark writes applied (or finally rejected) in the log; drop them from the queue."""
        if statuses and self._mirror is not None:
            self._mirror_replayed(entries, statuses)
        if statuses:
            assert self.wal is not None
            self.wal.mark([(e.seq, outcome_of(statuses[e.seq]), statuses[e.seq])
                           for e in entries if e.seq in statuses])
        for entry in entries:
            if entry.record is not None:
                self._queue_body_bytes -= len(entry.record.body)
                entry.record = None
        self.queue.remove(entries)

    # -- the migration link: hold, mirror, log -----------------------------------------------

    async def _write_linked(self, request: web.BaseRequest, classified: Classified,
                            record: WriteRecord,
                            raw_headers: list[tuple[str, str]]) -> web.StreamResponse:
        """A logged write, held while a cut-over holds writes, mirrored while a mirror runs."""
        hold = self._write_hold
        if hold is not None and record.seq > hold.fence:
            # Logged (durable) but not forwarded: after the release it goes wherever the alias
            # points then. The hold ends by itself at its timeout, so a write never waits for
            # ever.
            hold.held += 1
            hold.waiting += 1
            try:
                await hold.released.wait()
            finally:
                hold.waiting -= 1
        mirror = self._mirror
        if mirror is None or record.seq <= mirror.since_seq or not (
                classified.index == mirror.alias
                or (classified.op == WriteOp.BULK and classified.index is None)):
            return await self._write_logged(request, classified, record, raw_headers)
        # One write per document at a time while mirroring: blue then takes one document's
        # writes in the order green took them.
        self._mirrors_in_flight += 1
        try:
            async with self._mirror_locks.hold(mirror_keys(record, mirror.alias)):
                response = await self._write_logged(request, classified, record, raw_headers)
                if 200 <= response.status < 300 and self._mirror is mirror:
                    statuses = None
                    if classified.op == WriteOp.BULK and isinstance(response, web.Response) \
                            and isinstance(response.body, bytes):
                        with contextlib.suppress(ValueError, OSError, EOFError, zlib.error):
                            statuses = bulk_answer_statuses(decode_body(
                                response.body, response.headers.get("Content-Encoding")))
                    auth = _header(raw_headers, "authorization")
                    await self._mirror_send(mirror, record, statuses, auth)
                return response
        finally:
            self._mirrors_in_flight -= 1

    async def _mirror_send(self, mirror: Mirror, record: WriteRecord,
                           statuses: Sequence[int] | None, authorization: str | None) -> None:
        try:
            mirrored = mirror_write(record.method, record.path, record.query,
                                    record.header("content-type"),
                                    record.header("content-encoding"), record.body,
                                    alias=mirror.alias, index=mirror.index,
                                    item_statuses=statuses)
        except (ValueError, KeyError, AttributeError, OSError, EOFError, zlib.error) as exc:
            self._mirror_failed(mirror, record.seq, f"cannot rewrite seq {record.seq}: {exc}")
            return
        if mirrored is None:
            return
        headers: CIMultiDict[str] = CIMultiDict()
        authorization = authorization or self.config.replay_authorization
        if authorization:
            headers["Authorization"] = authorization
        if mirrored.content_type:
            headers["Content-Type"] = mirrored.content_type
        if mirrored.content_encoding:
            headers["Content-Encoding"] = mirrored.content_encoding
        error = "not sent"
        delay = 0.05
        for _ in range(MIRROR_ATTEMPTS):
            try:
                answer = await self._send(mirrored.method, mirrored.target, headers,
                                          mirrored.body)
            except _UpstreamFailed as exc:
                error = str(exc)
            else:
                if not is_retryable_status(answer.status, client_waiting=False):
                    if answer.status == 404 and record.method == "DELETE":
                        answer = UpstreamAnswer(200, "OK", [], b"")  # already gone there too
                    items = _bulk_answer_items(answer) if mirrored.target.startswith(
                        "/_bulk") else []
                    bad = [s for s in items or [] if s >= 400 and s != 404]
                    if 200 <= answer.status < 300 and not bad:
                        mirror.mirrored += 1
                        return
                    error = (f"{mirror.index} answered {answer.status}"
                             + (f" ({len(bad)} items refused)" if bad else ""))
                    break
                error = f"{mirror.index} answered {answer.status}"
            await asyncio.sleep(delay)
            delay *= 2
        self._mirror_failed(mirror, record.seq, error)

    def _mirror_failed(self, mirror: Mirror, seq: int, error: str) -> None:
        log.error("gateway: mirroring seq %d to %s failed: %s", seq, mirror.index, error)
        mirror.failed += 1
        mirror.last_error = error
        mirror.failed_seqs.append(seq)
        if self._mirror is mirror:
            _write_mirror(self.config.wal_dir, mirror)

    def _mirror_replayed(self, entries: Sequence[QueuedWrite],
                         statuses: Mapping[int, int]) -> None:
        """Mirror writes the replay worker applied while no client waited for them (a waiting
        client's handler mirrors its own write)."""
        mirror = self._mirror
        if mirror is None:
            return
        for entry in entries:
            status = statuses.get(entry.seq)
            if status is None or not 200 <= status < 300 or entry.seq <= mirror.since_seq \
                    or entry.client_waiting:
                continue
            try:
                record = entry.record or self._load(entry)
            except RecordUnreadable:
                self._mirror_failed(mirror, entry.seq, "its record could not be read back")
                continue
            if record is None:
                continue
            self._mirrors_in_flight += 1
            task = asyncio.create_task(self._mirror_in_order(mirror, record))
            self._mirror_tasks.add(task)
            task.add_done_callback(self._mirror_tasks.discard)

    async def _mirror_in_order(self, mirror: Mirror, record: WriteRecord) -> None:
        try:
            async with self._mirror_locks.hold(mirror_keys(record, mirror.alias)):
                await self._mirror_send(mirror, record, None, None)
        finally:
            self._mirrors_in_flight -= 1

    async def set_hold(self, timeout_s: float, drain_timeout_s: float) -> tuple[int, JSON]:
        """Hold every write logged from now on; answer once every write logged before is
        applied upstream (and mirrored), so the log up to the fence is final."""
        assert self.wal is not None
        if self._write_hold is not None:
            return 409, error_body(409, "indexshift_hold_exists",
                                   f"writes are already held (hold "
                                   f"{self._write_hold.hold_id}); release it first")
        hold = WriteHold(os.urandom(6).hex(), self.wal.last_seq, timeout_s, time.monotonic(),
                         asyncio.Event())
        hold.expiry = asyncio.get_running_loop().call_later(timeout_s, self._expire_hold, hold)
        self._write_hold = hold
        log.warning("gateway: writes after seq %d held (hold %s, at most %.1f s)", hold.fence,
                    hold.hold_id, timeout_s)
        deadline = time.monotonic() + drain_timeout_s
        while True:
            pending = self.wal.pending_seqs()
            if (not pending or pending[0] > hold.fence) and not self._mirrors_in_flight:
                break
            if time.monotonic() > deadline or self._write_hold is not hold:
                self._release(hold)
                first = pending[0] if pending else None
                return 409, error_body(
                    409, "indexshift_hold_not_drained",
                    f"writes logged up to seq {hold.fence} were not all applied upstream "
                    f"within {drain_timeout_s} s (first pending: {first}); the hold is "
                    f"released; retry when the gateway's queue is empty")
            await asyncio.sleep(0.005)
        return 200, {**hold.to_json(),
                     "drain_ms": round((time.monotonic() - hold.started) * 1000, 1)}

    def release_hold(self, hold_id: str | None) -> tuple[int, JSON]:
        hold = self._write_hold
        if hold is None:
            return 200, {"released": False, "reason": "no hold is active"}
        if hold_id and hold_id != hold.hold_id:
            return 409, error_body(409, "indexshift_other_hold",
                                   f"the active hold is {hold.hold_id}, not {hold_id}")
        return 200, self._release(hold)

    def _release(self, hold: WriteHold, *, expired: bool = False) -> JSON:
        if hold.expiry is not None:
            hold.expiry.cancel()
        hold.expired = hold.expired or expired
        if self._write_hold is hold:
            self._write_hold = None
        hold.released.set()
        return {"released": True, "hold_id": hold.hold_id, "fence_seq": hold.fence,
                "held_writes": hold.held, "expired": hold.expired,
                "hold_ms": round((time.monotonic() - hold.started) * 1000, 1)}

    def _expire_hold(self, hold: WriteHold) -> None:
        log.error("gateway: hold %s reached its %.1f s timeout; %d held writes released",
                  hold.hold_id, hold.timeout_s, hold.waiting)
        self._release(hold, expired=True)

    def set_mirror(self, alias: str, index: str) -> tuple[int, JSON]:
        assert self.wal is not None
        if not alias or not index or alias == index or alias.startswith("_") \
                or index.startswith("_"):
            return 400, error_body(400, "indexshift_bad_mirror",
                                   "a mirror needs an alias and a different index name")
        current = self._mirror
        if current is not None and (current.alias, current.index) == (alias, index):
            return 200, current.to_json()
        if current is not None:
            return 409, error_body(409, "indexshift_mirror_exists",
                                   f"writes on {current.alias} are mirrored to "
                                   f"{current.index} already; clear that mirror first")
        # Under a hold the writes held back are mirrored too: they reach the alias after it.
        since = self._write_hold.fence if self._write_hold is not None else self.wal.last_seq
        mirror = Mirror(alias, index, since)
        self._mirror = mirror
        _write_mirror(self.config.wal_dir, mirror)
        log.warning("gateway: writes on %s after seq %d are mirrored to %s", alias, since, index)
        return 200, mirror.to_json()

    def clear_mirror(self) -> JSON:
        mirror, self._mirror = self._mirror, None
        _write_mirror(self.config.wal_dir, None)
        if mirror is None:
            return {"active": False, "cleared": False}
        return {**mirror.to_json(), "active": False, "cleared": True}

    def link_status(self) -> JSON:
        hold, mirror = self._write_hold, self._mirror
        return {"hold": hold.to_json() if hold is not None else {"active": False},
                "mirror": mirror.to_json() if mirror is not None else {"active": False}}

    async def _link_admin(self, request: web.BaseRequest, sub: str,
                          query: str) -> web.Response | None:
        """The endpoints a migration drives; None when ``sub`` is none of them."""
        params = dict(parse_qsl(query))
        if sub == "/log" and request.method in ("GET", "HEAD"):
            try:
                after = int(params.get("after", "0"))
                limit = min(MAX_LOG_PAGE, max(1, int(params.get("limit", "1000"))))
                until = int(params["until"]) if params.get("until") else None
            except ValueError:
                return _json_response(400, error_body(
                    400, "indexshift_bad_log_range", "after, limit and until are integers"))
            wal = self.wal
            assert wal is not None
            try:
                page = await asyncio.get_running_loop().run_in_executor(
                    None, wal.records_after, after, limit, until)
            except LogGap as exc:
                return _json_response(410, error_body(410, "indexshift_log_gap", str(exc)))
            except WalUnavailable as exc:
                return _json_response(503, error_body(503, "indexshift_wal_unavailable",
                                                      f"{exc.message}; retry later"))
            return _json_response(200, {**log_page_to_json(page, after),
                                        "last_seq": wal.last_seq})
        if sub not in ("/hold", "/mirror"):
            return None
        decoded: Any = {}
        if request.method in ("PUT", "POST"):
            raw = await request.read()
            try:
                decoded = json.loads(raw) if raw.strip() else {}
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                return _json_response(400, error_body(400, "indexshift_bad_body",
                                                      "the body must be a JSON object"))
        if sub == "/hold":
            if request.method in ("GET", "HEAD"):
                return _json_response(200, self.link_status()["hold"])
            if request.method in ("PUT", "POST"):
                try:
                    timeout_s = float(decoded.get("timeout_s", 30))
                    drain_s = float(decoded.get("drain_timeout_s", min(10.0, timeout_s)))
                except (TypeError, ValueError):
                    timeout_s = drain_s = -1
                if not 0 < timeout_s <= 600 or not 0 < drain_s <= timeout_s:
                    return _json_response(400, error_body(
                        400, "indexshift_bad_hold",
                        "timeout_s must be in (0, 600] and drain_timeout_s in (0, timeout_s]"))
                status, body = await self.set_hold(timeout_s, drain_s)
                return _json_response(status, body)
            if request.method == "DELETE":
                status, body = self.release_hold(params.get("hold_id"))
                return _json_response(status, body)
        if sub == "/mirror":
            if request.method in ("GET", "HEAD"):
                return _json_response(200, self.link_status()["mirror"])
            if request.method in ("PUT", "POST"):
                status, body = self.set_mirror(str(decoded.get("alias") or ""),
                                               str(decoded.get("index") or ""))
                return _json_response(status, body)
            if request.method == "DELETE":
                return _json_response(200, self.clear_mirror())
        return _json_response(405, error_body(
            405, "indexshift_method_not_allowed",
            f"{request.method} is not allowed on {ADMIN_PREFIX}{sub}"))

    # -- admin endpoints ---------------------------------------------------------------------

    async def _admin(self, request: web.BaseRequest, sub: str, query: str) -> web.Response:
        sub = sub.rstrip("/")
        if sub in ("", "/status") and request.method in ("GET", "HEAD"):
            return _json_response(200, self.status())
        if sub == "/metrics" and request.method in ("GET", "HEAD"):
            return web.Response(status=200, body=self.render_metrics().encode(),
                                headers={"Content-Type": "text/plain; version=0.0.4"})
        if sub == "/mode":
            if request.method in ("GET", "HEAD"):
                return _json_response(200, {"mode": self.mode.value})
            if request.method in ("PUT", "POST"):
                wanted = dict(parse_qsl(query)).get("mode")
                raw = await request.read()
                if raw.strip():
                    try:
                        decoded = json.loads(raw)
                        wanted = decoded.get("mode") if isinstance(decoded, dict) else None
                    except ValueError:
                        wanted = None
                try:
                    mode = Mode(str(wanted))
                except ValueError:
                    return _json_response(400, error_body(
                        400, "indexshift_bad_mode",
                        f"mode must be one of {', '.join(m.value for m in Mode)}, "
                        f"got {wanted!r}"))
                return _json_response(200, self.set_mode(mode))
        linked = await self._link_admin(request, sub, query)
        if linked is not None:
            return linked
        if sub == "/rollout" or sub.startswith("/rollout/"):
            return await self._rollout_admin(request, unquote(sub[len("/rollout"):].strip("/")),
                                             query)
        return _json_response(404, error_body(
            404, "indexshift_no_such_endpoint",
            f"{request.method} {ADMIN_PREFIX}{sub} is not a gateway endpoint; try "
            f"{ADMIN_PREFIX}/status, /metrics or /mode"))

    def status(self) -> JSON:
        assert self.wal is not None
        stats = self.wal.snapshot_stats()
        head = self.queue.head(1)
        return {
            "mode": self.mode.value,
            "url": self.url,
            "upstream": self._upstream_base,
            "upstream_ok": self._upstream_ok,
            "last_upstream_error": self._last_upstream_error,
            "on_wal_failure": self.config.on_wal_failure,
            "fallback_index": self.config.fallback_index,
            **self.link_status(),
            "rollouts": self.rollouts.status(),
            "uptime_s": round(time.time() - self._started_at, 3),
            "wal": {
                "dir": str(self.config.wal_dir),
                "state": stats.state,
                "error": stats.error,
                "last_seq": stats.last_seq,
                "applied_through": stats.applied_through,
                "lag": stats.last_seq - stats.applied_through,
                "pending": stats.pending,
                "segments": stats.segments,
                "appended": stats.appended,
                "fsyncs": stats.fsyncs,
                "mean_fsync_batch": (round(stats.fsynced_records / stats.record_fsyncs, 2)
                                     if stats.record_fsyncs else None),
                "replayed_on_open": stats.opened_pending,
            },
            "queue": {
                "writes": len(self.queue),
                "head_seq": head[0].seq if head else None,
                "head_attempts": head[0].attempts if head else None,
                "head_error": head[0].last_error if head else None,
            },
        }

    def render_metrics(self) -> str:
        assert self.wal is not None
        stats = self.wal.snapshot_stats()
        m = self.metrics
        lines: list[str] = []
        for metric in (m.requests, m.upstream_failures, m.unrecorded_writes, m.unlogged_writes,
                       m.refused_writes, m.queued_writes, m.replayed, m.replay_requests):
            lines += metric.render()
        for histogram in (m.request_seconds, m.upstream_seconds, m.fsync_batch,
                          m.fsync_seconds):
            lines += histogram.render()
        lines += gauge_lines("indexshift_gateway_wal_last_seq",
                             "Sequence number of the last logged write.",
                             [({}, stats.last_seq)])
        lines += gauge_lines("indexshift_gateway_wal_applied_seq",
                             "Every write up to this sequence number is applied.",
                             [({}, stats.applied_through)])
        lines += gauge_lines("indexshift_gateway_wal_lag",
                             "Logged minus applied sequence number.",
                             [({}, stats.last_seq - stats.applied_through)])
        lines += gauge_lines("indexshift_gateway_queued_writes",
                             "Logged writes waiting to be applied upstream.",
                             [({}, len(self.queue))])
        lines += gauge_lines("indexshift_gateway_wal_failed",
                             "1 when the log cannot be written.",
                             [({}, 1 if stats.state != "ok" else 0)])
        lines += gauge_lines("indexshift_gateway_wal_fsyncs", "Fsyncs of the log.",
                             [({}, stats.fsyncs)])
        lines += gauge_lines("indexshift_gateway_mode", "The current mode (1) and the others (0).",
                             [({"mode": mode.value}, 1 if mode == self.mode else 0)
                              for mode in Mode])
        lines += gauge_lines("indexshift_gateway_upstream_up",
                             "1 when the last upstream call got an answer below 500.",
                             [({}, 1 if self._upstream_ok else 0)])
        lines += self.rollouts.metric_lines()
        return "\n".join(lines) + "\n"


# -- helpers of the handler ------------------------------------------------------------------


def _json_response(status: int, body: JSON) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json; charset=UTF-8"})


def _answer_response(answer: UpstreamAnswer, seq: int | None) -> web.Response:
    headers = response_headers(answer.headers, keep_length=False)
    if seq is not None:
        headers["X-Indexshift-Seq"] = str(seq)
    return web.Response(status=answer.status, reason=answer.reason or None, headers=headers,
                        body=answer.body)


async def _continue_if_expected(request: web.BaseRequest) -> None:
    # The low-level server leaves "Expect: 100-continue" to the handler (curl sends it).
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


_ITEM_STATUS = re.compile(rb'"status":(\d{3})[,}]')


def bulk_answer_statuses(body: bytes, expected: int | None = None) -> list[int] | None:
    """The status of every item of a ``_bulk`` answer, or None when it is not one.

    An answer without errors holds exactly one ``"status"`` per item, so when their count is
    the one expected they are read without parsing the whole answer (a replay reads thousands
    per second); anything else is parsed properly.
    """
    if expected is not None and b'"errors":false' in body[:256]:
        found = _ITEM_STATUS.findall(body)
        if len(found) == expected:
            return [int(status) for status in found]
    try:
        decoded = json.loads(body)
        return [int(next(iter(item.values())).get("status", 0)) for item in decoded["items"]]
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None


def _bulk_answer_items(answer: UpstreamAnswer, expected: int | None = None) -> list[int] | None:
    """The status of every item of a bulk answer, or None when it is not one."""
    try:
        body = decode_body(answer.body, _header(answer.headers, "content-encoding"))
        return bulk_answer_statuses(body, expected)
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration, OSError,
            EOFError, zlib.error):
        return None


def bulk_items_to_retry(answer: UpstreamAnswer, record: WriteRecord, sent: bytes,
                         sent_decoded: bool) -> bytes | None:
    """The items of a replayed bulk that upstream turned away for now (429/5xx), as a body."""
    statuses = _bulk_answer_items(answer)
    if answer.status != 200 or statuses is None:
        return None
    try:
        plain = sent if sent_decoded else decode_body(sent, record.header("content-encoding"))
        items = split_bulk(plain)
    except (ValueError, OSError, EOFError, zlib.error):
        return None
    if len(items) != len(statuses):
        return None
    again = [item.lines for item, status in zip(items, statuses, strict=True)
             if is_retryable_status(status, client_waiting=False)]
    return b"".join(again) or None


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _read_mode(directory: Path) -> Mode:
    """The mode the gateway was last set to (it survives restarts): an emergency read-only
    mode must not end because the process restarted."""
    try:
        return Mode(json.loads((directory / MODE_FILE).read_text())["mode"])
    except (OSError, ValueError, KeyError, TypeError):
        return Mode.NORMAL


def _write_mode(directory: Path, mode: Mode) -> bool:
    temporary = directory / f"{MODE_FILE}.tmp"
    try:
        temporary.write_text(json.dumps({"mode": mode.value, "since": time.time()}))
        os.replace(temporary, directory / MODE_FILE)
    except OSError as exc:
        log.error("gateway: the mode could not be saved (%s); it holds until a restart", exc)
        return False
    return True


# -- running it ------------------------------------------------------------------------------


async def run_until(config: GatewayConfig, stop: asyncio.Event,
                    ready: Callable[[Gateway], None] | None = None) -> None:
    """Run one gateway until ``stop`` is set, then stop it gracefully."""
    gateway = Gateway(config)
    await gateway.start()
    try:
        if ready is not None:
            ready(gateway)
        await stop.wait()
    finally:
        await gateway.stop()


def log_location(wal: str, listen: str, state_dir: Path | None) -> tuple[Path, str | None]:
    """Where a gateway keeps its log and its own state, from ``--wal``: a folder holds both;
    with a ``postgresql://`` URL the log is shared there and the state stays in ``state_dir``
    (by default a folder named after the listen address, so that instances on one host differ).
    Returns ``(wal_dir, wal_url)`` as :class:`GatewayConfig` takes them."""
    if is_postgres_url(wal):
        return state_dir or gateway_state_dir(listen), wal
    return Path(wal), None


def serve(listen: str, upstream: str, wal: str, *, state_dir: Path | None = None,
          on_wal_failure: WalFailurePolicy = "refuse", fallback_index: str | None = None,
          fallback_for: str | None = None, write_hold_s: float = 5.0,
          upstream_timeout_s: float = 60.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          verify_tls: bool = True, ca_bundle: Path | None = None,
          replay_authorization: str | None = None, replay_batch_docs: int = 1000,
          replay_concurrency: int = 2,
          announce: Callable[[str], None] | None = None) -> None:
    """Run the gateway in the foreground until SIGTERM/SIGINT; then stop gracefully (requests
    in flight finish, the log is fsynced). ``wal`` is a folder or a ``postgresql://`` URL (see
    :func:`log_location`); ``announce`` receives the URL once it listens."""
    wal_dir, wal_url = log_location(wal, listen, state_dir)
    config = GatewayConfig(
        listen=listen, upstream=upstream, wal_dir=wal_dir, on_wal_failure=on_wal_failure,
        fallback_index=fallback_index, fallback_for=fallback_for, write_hold_s=write_hold_s,
        upstream_timeout_s=upstream_timeout_s, max_body_bytes=max_body_bytes,
        verify_tls=verify_tls, ca_bundle=ca_bundle, replay_authorization=replay_authorization,
        replay_batch_docs=replay_batch_docs, replay_concurrency=replay_concurrency,
        wal_url=wal_url)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)

        def ready(gateway: Gateway) -> None:
            if announce is not None:
                announce(gateway.url)

        await run_until(config, stop, ready)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise BadInput(f"cannot listen on {listen}: {exc.strerror or exc}",
                       hint="pick a free host:port for --listen") from exc


class BackgroundGateway:
    """A gateway running on its own event loop in a background thread (for tests and tools).

    ``with BackgroundGateway(config) as running: ...`` — ``running.url`` is where it listens,
    ``running.gateway`` the live object (touch only thread-safe things from outside, such as
    ``running.gateway.wal.fault``), and :meth:`call` runs a coroutine on its loop.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._gateway: Gateway | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="indexshift-gateway",
                                        daemon=True)

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "the gateway is not running"
        return self._gateway

    @property
    def url(self) -> str:
        return self.gateway.url

    def start(self, timeout: float = 60) -> BackgroundGateway:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the gateway did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def call(self, make: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
        """Run ``make()`` on the gateway's loop and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def set_mode(self, mode: Mode) -> JSON:
        async def change() -> JSON:
            return self.gateway.set_mode(mode)

        result: JSON = self.call(change)
        return result

    def stop(self, timeout: float = 60) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(gateway: Gateway) -> None:
                self._gateway = gateway
                self._ready.set()

            await run_until(self.config, self._stop, ready)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()


# -- command line (``python -m indexshift.gateway``) -----------------------------------------
