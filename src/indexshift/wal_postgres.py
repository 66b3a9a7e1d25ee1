"""The gateway's write log in PostgreSQL: one ordered log shared by several gateway instances.

``indexshift gateway --wal postgresql://user@host:port/db`` selects it. Tables, in a schema of
their own (``indexshift_gateway`` by default)::

    head       one row: last_seq, the last sequence number handed out
    records    seq, time_ns, instance, method, path, query, headers, body: every logged write
    outcomes   seq, time_ns, instance, outcome, status: the applied markers
    pending    seq, owner: records without an outcome, and which instance owes them upstream
    instances  id, started_at, host, pid: every log object that opened the log (for audits)

**Order without gaps.** Sequence numbers come from the ``head`` row, taken in the same
transaction that inserts the records (``UPDATE head SET last_seq = last_seq + n``). A
``bigserial`` would be simpler, but PostgreSQL sequences are not transactional: every
rolled-back insert leaves a hole, and two instances commit out of sequence order, so a reader
could see seq 8 committed while 7 is not yet. The row lock on ``head`` makes the commit order
the sequence order and a rollback gives its numbers back; each instance commits its appends in
batches (group commit), so the lock is taken once per batch, not once per write.

**Durable = committed.** Every session sets ``synchronous_commit = on``: an append is durable
when its transaction's commit returned, i.e. PostgreSQL flushed its own WAL. Applied markers
are committed lazily (with the next batch of appends, or ``marker_flush_interval_s`` later): a
killed gateway may replay the few writes it applied in that interval (at-least-once, as the
file log).

**Several instances.** Each log object registers an instance id and holds a session-level
advisory lock ``(namespace, id)`` for as long as it is open: the lease. The records it logs
are pending under its id. When an instance dies its session ends, PostgreSQL drops the lock,
and its pending records become orphans; the next instance that opens the log adopts them
(``UPDATE pending SET owner = me ... FOR UPDATE SKIP LOCKED`` over the orphans, so two
instances adopting at once take disjoint sets) and replays them. Running instances adopt too
(the gateway calls :meth:`PostgresWriteLog.adopt_orphans` every few seconds), but only the
records of an instance seen without its lease for ``orphan_grace_s``: after a database restart
every lease is briefly gone, and each live instance takes its own back meanwhile. A record is
only ever owned by one live instance, so no record is replayed by two instances at once.

**Reading the log back.** :meth:`PostgresWriteLog.records_after` serves every instance's
records in sequence order with their outcomes (a migration replays them into its new index).

**Failures.** When PostgreSQL cannot be reached, appends fail with
:class:`~indexshift.wal.WalUnavailable` (the gateway refuses the write: fail-closed) and are
retried no more often than ``retry_interval_s``. A commit whose answer was lost (the connection
broke during ``COMMIT``) may or may not have happened: its records, if they exist, are marked
ABANDONED once the database answers again, so a write the client was told was refused is
never replayed later.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from indexshift.errors import BadInput, EnvironmentProblem
from indexshift.wal import (
    AppendTicket,
    AppliedMarker,
    FaultHook,
    LoggedWrite,
    LogPage,
    Outcome,
    WalStats,
    WalUnavailable,
    WriteRecord,
    wait_settled,
    wait_settled_async,
)

log = logging.getLogger(__name__)

DEFAULT_SCHEMA: Final = "indexshift_gateway"
URL_SCHEMES: Final = ("postgresql", "postgres")
DEFAULT_BATCH_RECORDS: Final = 1000
DEFAULT_BATCH_BYTES: Final = 16 * 1024 * 1024
READ_AHEAD_RECORDS: Final = 256
READ_AHEAD_BYTES: Final = 8 * 1024 * 1024
STATS_REFRESH_S: Final = 1.0
# A running instance adopts the records of another only once that one has been seen without
# its lease this long: after a database restart every lease is gone for a moment, and each
# instance takes its own back within a few seconds (reconnection retry + lease retry).
DEFAULT_ORPHAN_GRACE_S: Final = 10.0


class RecordUnreadable(KeyError):
    """A pending record could not be read back now (the database did not answer).

    A ``KeyError`` subclass, so that a caller which only knows ``KeyError`` ("not pending
    any more") at least does not crash; the gateway's replay worker tells it apart: it backs
    off and reads the record again later. The record stays pending in the database (and in
    ``pending_seqs``, so the status shows it owed).
    """


# -- pure parts ------------------------------------------------------------------------------


def is_postgres_url(location: str) -> bool:
    """Whether a ``--wal`` value names a PostgreSQL database rather than a folder."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def check_postgres_url(url: str) -> str:
    """``url`` when it names a host and a database; :class:`BadInput` otherwise."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in URL_SCHEMES:
        raise BadInput(f"--wal {redact_url(url)} is not a postgresql:// URL")
    if not parts.path.strip("/"):
        raise BadInput(f"--wal {redact_url(url)} names no database",
                       hint="e.g. postgresql://gateway@db.example:5432/indexshift")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:
        raise BadInput(f"--wal {redact_url(url)} has a bad port: {exc}") from exc
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for messages and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_schema_name(schema: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise BadInput(f"bad schema name {schema!r}", hint="use lowercase letters, digits, _")
    return schema


def advisory_namespace(schema: str) -> int:
    """The first key of the instances' advisory locks: one per schema, positive int4."""
    return zlib.crc32(f"indexshift:{schema}".encode()) & 0x7FFFFFFF


def gateway_state_dir(listen: str) -> Path:
    """Where a gateway on a PostgreSQL log keeps its own small state (its mode) by default."""
    if os.environ.get("XDG_STATE_HOME"):
        base = Path(os.environ["XDG_STATE_HOME"])
    elif os.geteuid() == 0:
        base = Path("/var/lib")
    else:
        base = Path.home() / ".local" / "state"
    return base / "indexshift" / f"gateway-{re.sub(r'[^A-Za-z0-9.-]+', '_', listen)}"


def encode_headers(headers: Sequence[tuple[str, str]]) -> str:
    return json.dumps([[name, value] for name, value in headers])


def decode_headers(raw: Any) -> tuple[tuple[str, str], ...]:
    pairs = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return tuple((str(name), str(value)) for name, value in pairs)


def to_bytes(text: str) -> bytes:
    # Paths and queries are stored as bytes: exactly what arrived, even bytes that are not
    # UTF-8 (kept as surrogates by the HTTP layer), which a text column would refuse.
    return text.encode("utf-8", "surrogateescape")


def from_bytes(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def take_batch(sizes: Sequence[int], max_records: int, max_bytes: int) -> int:
    """How many queued appends (of these body sizes, in order) one transaction takes: at
    least one, then as many as fit both limits."""
    taken, total = 0, 0
    for size in sizes:
        if taken and (taken >= max_records or total + size > max_bytes):
            break
        taken += 1
        total += size
    return taken


def read_ahead(pending: Sequence[int], seq: int, limit: int) -> list[int]:
    """``seq`` and the pending seqs after it (``pending`` sorted), at most ``limit``."""
    start = bisect.bisect_left(pending, seq)
    window = list(pending[start:start + limit])
    if not window or window[0] != seq:
        window.insert(0, seq)
        window = window[:limit]
    return window


def owners_to_adopt(gone: Iterable[int], gone_since: Mapping[int, float], now: float,
                    grace_s: float) -> tuple[set[int], dict[int, float]]:
    """Which instances seen without a lease (``gone``) have been gone ``grace_s`` or longer,
    and when each of ``gone`` was first seen gone (instances back meanwhile are forgotten)."""
    since = {owner: gone_since.get(owner, now) for owner in gone}
    return {owner for owner, first in since.items() if now - first >= grace_s}, since


def applied_through(last_seq: int, lowest_pending: int | None) -> int:
    """Every seq up to the result has an outcome: just below the lowest pending record."""
    return last_seq if lowest_pending is None else lowest_pending - 1


def schema_statements(schema: str) -> list[sql.Composed]:
    """The idempotent DDL of the log's schema."""
    s = sql.Identifier(check_schema_name(schema))
    texts = [
        "CREATE SCHEMA IF NOT EXISTS {s}",
        "CREATE TABLE IF NOT EXISTS {s}.head (id smallint PRIMARY KEY CHECK (id = 1), "
        "last_seq bigint NOT NULL)",
        "INSERT INTO {s}.head VALUES (1, 0) ON CONFLICT DO NOTHING",
        "CREATE SEQUENCE IF NOT EXISTS {s}.instance_ids AS integer",
        "CREATE TABLE IF NOT EXISTS {s}.instances (id integer PRIMARY KEY, "
        "started_at timestamptz NOT NULL DEFAULT now(), host text NOT NULL, pid integer NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {s}.records (seq bigint PRIMARY KEY, time_ns bigint NOT NULL, "
        "instance integer NOT NULL, method text NOT NULL, path bytea NOT NULL, "
        "query bytea NOT NULL, headers json NOT NULL, body bytea NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {s}.outcomes (seq bigint PRIMARY KEY, "
        "time_ns bigint NOT NULL, instance integer NOT NULL, outcome smallint NOT NULL, "
        "status integer NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {s}.pending (seq bigint PRIMARY KEY, owner integer NOT NULL)",
        "CREATE INDEX IF NOT EXISTS pending_by_owner ON {s}.pending (owner, seq)",
    ]
    return [sql.SQL(text).format(s=s) for text in texts]


# -- the log ---------------------------------------------------------------------------------


class PgAppend:
    """One append waiting for its transaction; ``seq`` is known once it committed."""

    __slots__ = ("_callbacks", "_error", "_lock", "_seq", "_settled", "body", "headers",
                 "method", "path", "query", "time_ns")

    def __init__(self, method: str, path: str, query: str,
                 headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.method, self.path, self.query = method, path, query
        self.headers = tuple(headers)
        self.body = body
        self.time_ns = time.time_ns()
        self._seq = 0
        self._settled = False
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[BaseException | None], None]] = []
        self._lock = threading.Lock()

    @property
    def seq(self) -> int:
        if not self._settled or self._error is not None:
            raise RuntimeError("the append is not durable (yet); wait for it first")
        return self._seq

    def when_settled(self, callback: Callable[[BaseException | None], None]) -> None:
        with self._lock:
            if not self._settled:
                self._callbacks.append(callback)
                return
        callback(self._error)

    def settle(self, seq: int, error: BaseException | None) -> None:
        with self._lock:
            if self._settled:
                return
            self._seq, self._error, self._settled = seq, error, True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(error)


@dataclass
class _State:
    """What the committer thread and the callers share (under ``PostgresWriteLog._cond``)."""

    appends: list[PgAppend] = field(default_factory=list)
    markers: list[tuple[int, Outcome, int, int]] = field(default_factory=list)
    markers_since: float = 0.0
    abandon: list[int] = field(default_factory=list)  # seqs of commits whose fate is unknown
    failure: str | None = None
    last_attempt: float = 0.0
    stopping: bool = False


class PostgresWriteLog:
    """The gateway's write log in a PostgreSQL database (see the module docstring).

    Thread-safe: appends and markers are handed to one committer thread, which commits them in
    batches; ``read`` runs on the caller's thread on a connection of its own.
    """

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA,
                 batch_records: int = DEFAULT_BATCH_RECORDS,
                 batch_bytes: int = DEFAULT_BATCH_BYTES,
                 marker_flush_interval_s: float = 0.05, retry_interval_s: float = 1.0,
                 connect_timeout_s: float = 5.0,
                 orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
                 on_fsync: Callable[[int, float], None] | None = None) -> None:
        """Use :meth:`open`; this constructor does no I/O."""
        self.url = check_postgres_url(url)
        self.schema = check_schema_name(schema)
        # How long another instance must be seen without its lease before :meth:`adopt_orphans`
        # takes its records (opening the log adopts at once).
        self.orphan_grace_s = orphan_grace_s
        # Fault injection for tests: called with "write" (before a transaction's statements)
        # and "commit" (after its commit); raise OSError to fail there.
        self.fault: FaultHook | None = None
        self.instance = 0
        self.stats = WalStats()
        self._s = sql.Identifier(self.schema)
        self._namespace = advisory_namespace(self.schema)
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._marker_flush_interval_s = marker_flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._on_fsync = on_fsync
        self._cond = threading.Condition()
        self._state = _State()
        self._pending: set[int] = set()  # guarded by _cond
        self._last_seq = 0
        self._applied_through = 0
        self._lease: psycopg.Connection[Any] | None = None
        self._writer: psycopg.Connection[Any] | None = None
        # The replay reads records on the event loop: pages of the log (large, for a
        # migration) are read on a connection of their own, so they never make it wait.
        self._reader = _ReadConnection(self._new_connection)
        self._pager = _ReadConnection(self._new_connection)
        # Adoption while the log runs has a connection of its own: the writer belongs to the
        # committer thread, the reader to the replay.
        self._adopter: psycopg.Connection[Any] | None = None
        self._adopt_lock = threading.Lock()
        self._gone_since: dict[int, float] = {}  # instance → when first seen without its lease
        self._cache: OrderedDict[int, WriteRecord] = OrderedDict()
        self._cache_bytes = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="indexshift-wal-postgres",
                                        daemon=True)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, **options: Any) -> PostgresWriteLog:
        """Connect, create the schema if needed, take a lease, adopt orphaned records."""
        wal = cls(url, **options)
        try:
            wal._connect()
            assert wal._writer is not None
            wal.stats.opened_pending = len(wal._adopt_on(wal._writer, grace_s=0.0))
            wal._refresh_positions()
        except psycopg.Error as exc:
            wal._close_connections()
            raise EnvironmentProblem(
                f"cannot use the PostgreSQL write-ahead log at {redact_url(url)}: "
                f"{_one_line(exc)}",
                hint="check that the server runs, the database exists and this user may "
                     "create tables in it") from exc
        except BaseException:
            wal._close_connections()
            raise
        wal._thread.start()
        return wal

    def _new_connection(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=max(1, int(self._connect_timeout_s)),
                                     application_name="indexshift-gateway")
        # Durable means committed and flushed, whatever the server's default says.
        connection.execute("SET synchronous_commit = on")
        return connection

    def _connect(self) -> None:
        """Open the writer, and the lease unless it is still held (the first time: register
        the instance)."""
        writer = self._new_connection()
        try:
            with writer.transaction():
                # Instances starting at once must not race on CREATE ... IF NOT EXISTS.
                writer.execute("SELECT pg_advisory_xact_lock(%s::integer, 0)",
                               (self._namespace,))
                for statement in schema_statements(self.schema):
                    writer.execute(statement)
            if self.instance == 0:
                row = writer.execute(sql.SQL(
                    "INSERT INTO {s}.instances (id, host, pid) "
                    "VALUES (nextval({seq}), %s, %s) RETURNING id").format(
                        s=self._s, seq=sql.Literal(f"{self.schema}.instance_ids")),
                    (socket.gethostname(), os.getpid())).fetchone()
                assert row is not None
                self.instance = int(row[0])
            if not self._lease_holds():
                self._lease = self._take_lease()
        except BaseException:
            writer.close()
            raise
        self._writer = writer

    def _lease_holds(self) -> bool:
        lease = self._lease
        if lease is None or lease.closed:
            return False
        try:
            lease.execute("SELECT 1")
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                lease.close()
            self._lease = None
            return False
        return True

    def _take_lease(self) -> psycopg.Connection[Any]:
        lease = self._new_connection()
        # After a reconnection our previous session may take a moment to end and let go.
        deadline = time.monotonic() + 3.0
        while True:
            locked = lease.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)",
                                   (self._namespace, self.instance)).fetchone()
            if locked and locked[0]:
                return lease
            if time.monotonic() > deadline:
                lease.close()
                raise WalUnavailable(f"instance {self.instance}'s lease is still held by an "
                                     f"earlier session of it")
            time.sleep(0.05)

    def adopt_orphans(self) -> list[int]:
        """Take over the pending records of instances gone for ``orphan_grace_s`` or longer;
        their seqs, now this instance's to replay. Callable on any thread while the log runs,
        every few seconds; :class:`WalUnavailable` when the database does not answer."""
        with self._adopt_lock:
            if self._closed or self._state.stopping:
                return []
            failure = self._state.failure
            if failure is not None:
                raise WalUnavailable(failure)  # no connect timeout while it is known away
            try:
                if self._adopter is None or self._adopter.closed:
                    self._adopter = self._new_connection()
                return self._adopt_on(self._adopter, grace_s=self.orphan_grace_s)
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    if self._adopter is not None:
                        self._adopter.close()
                self._adopter = None
                raise WalUnavailable(f"the PostgreSQL write-ahead log cannot adopt orphaned "
                                     f"records now: {_one_line(exc)}") from exc

    def _adopt_on(self, connection: psycopg.Connection[Any], *, grace_s: float) -> list[int]:
        live = sql.SQL("""
            SELECT objid::bigint AS owner FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2
              AND classid = %(ns)s::bigint::oid
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""")
        params = {"ns": self._namespace, "me": self.instance}
        gone = [int(row[0]) for row in connection.execute(sql.SQL("""
            WITH live AS ({live})
            SELECT DISTINCT owner FROM {s}.pending
            WHERE owner <> %(me)s AND owner NOT IN (SELECT owner FROM live)""").format(
                s=self._s, live=live), params).fetchall()]
        owners, self._gone_since = owners_to_adopt(gone, self._gone_since, time.monotonic(),
                                                   grace_s)
        if not owners:
            return []
        # Liveness is checked again in the statement that adopts: an instance back meanwhile
        # keeps its records; SKIP LOCKED gives instances adopting at once disjoint sets.
        rows = connection.execute(sql.SQL("""
            WITH live AS ({live}), orphans AS (
                SELECT seq FROM {s}.pending
                WHERE owner = ANY(%(owners)s) AND owner NOT IN (SELECT owner FROM live)
                ORDER BY seq FOR UPDATE SKIP LOCKED
            )
            UPDATE {s}.pending p SET owner = %(me)s FROM orphans o
            WHERE p.seq = o.seq RETURNING p.seq""").format(s=self._s, live=live),
            {**params, "owners": sorted(owners)}).fetchall()
        adopted = sorted(int(row[0]) for row in rows)
        with self._cond:
            self._pending.update(adopted)
        if adopted:
            log.warning("write-ahead log: instance %d adopted %d pending writes of instances "
                        "that are gone (seq %d..%d)", self.instance, len(adopted), adopted[0],
                        adopted[-1])
        return adopted

    # -- appending ---------------------------------------------------------------------------

    def append(self, method: str, path: str, query: str,
               headers: Sequence[tuple[str, str]], body: bytes) -> PgAppend:
        """Queue one record for the next commit. Not yet durable (nor numbered): wait with
        :meth:`wait_durable` / :meth:`wait_durable_async`, then read its ``seq``."""
        appended = PgAppend(method, path, query, headers, body)
        with self._cond:
            state = self._state
            if self._closed or state.stopping:
                raise WalUnavailable("the write-ahead log is closed")
            if (state.failure is not None
                    and time.monotonic() - state.last_attempt < self._retry_interval_s):
                raise WalUnavailable(state.failure)
            state.appends.append(appended)
            self._cond.notify()
        return appended

    def wait_durable(self, appended: AppendTicket, timeout: float | None = None) -> None:
        """Block until the record's transaction committed; :class:`WalUnavailable` if not."""
        if not isinstance(appended, PgAppend):
            raise TypeError(f"not an append of this log: {appended!r}")
        wait_settled(appended.when_settled, timeout, "commit")

    async def wait_durable_async(self, appended: AppendTicket) -> None:
        """As :meth:`wait_durable`, without blocking the event loop."""
        if not isinstance(appended, PgAppend):
            raise TypeError(f"not an append of this log: {appended!r}")
        await wait_settled_async(appended.when_settled)

    def append_durable(self, method: str, path: str, query: str,
                       headers: Sequence[tuple[str, str]], body: bytes) -> int:
        """Append and wait for the commit; the record's sequence number."""
        appended = self.append(method, path, query, headers, body)
        self.wait_durable(appended)
        return appended.seq

    def mark(self, outcomes: Sequence[tuple[int, Outcome, int]]) -> int:
        """Record outcomes ``(seq, outcome, http_status)``; committed with the next batch or
        ``marker_flush_interval_s`` later. Returns how many were queued."""
        if not outcomes:
            return 0
        now = time.time_ns()
        with self._cond:
            state = self._state
            if not state.markers:
                state.markers_since = time.monotonic()
            for seq, outcome, status in outcomes:
                self._pending.discard(seq)
                self._cache_drop(seq)
                state.markers.append((seq, outcome, status, now))
            self._cond.notify()
        return len(outcomes)

    # -- reading -----------------------------------------------------------------------------

    def pending_seqs(self) -> list[int]:
        """Sequence numbers of the records this instance owes upstream, in order."""
        with self._cond:
            return sorted(self._pending)

    def is_pending(self, seq: int) -> bool:
        with self._cond:
            return seq in self._pending

    def read(self, seq: int) -> WriteRecord:
        """The pending record ``seq`` (records after it are fetched along, for the replay)."""
        with self._cond:
            if seq not in self._pending:
                raise KeyError(f"record {seq} is not pending in the write-ahead log")
            cached = self._cache.pop(seq, None)
            if cached is not None:
                self._cache_bytes -= len(cached.body)
                return cached
            window = read_ahead(sorted(self._pending), seq, READ_AHEAD_RECORDS)
        try:
            records = self._fetch(window)
        except WalUnavailable as exc:
            log.error("%s; record %d stays pending there, to be read again later",
                      exc.message, seq)
            raise RecordUnreadable(seq) from exc
        found = records.pop(seq, None)
        if found is None:
            raise KeyError(f"record {seq} is not in the write-ahead log's records table")
        with self._cond:
            for other, record in records.items():
                if other in self._pending and other not in self._cache:
                    self._cache[other] = record
                    self._cache_bytes += len(record.body)
            while self._cache_bytes > READ_AHEAD_BYTES and self._cache:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= len(evicted.body)
        return found

    def read_any(self, seq: int) -> WriteRecord | None:
        """Any record of the shared log, pending or not (for tools and audits)."""
        return self._fetch([seq]).get(seq)

    def _fetch(self, seqs: list[int]) -> dict[int, WriteRecord]:
        query = sql.SQL("""
            SELECT seq, time_ns, method, path, query, headers, body FROM (
                SELECT r.*, sum(octet_length(r.body)) OVER (ORDER BY r.seq) AS upto
                FROM {s}.records r WHERE r.seq = ANY(%s) ORDER BY r.seq) w
            WHERE upto - octet_length(body) < %s OR seq = %s""").format(s=self._s)
        rows = self._read_rows(self._reader, query, (seqs, READ_AHEAD_BYTES, seqs[0]))
        return {int(row[0]): _record_of(row) for row in rows}

    def records_after(self, after: int, limit: int, until: int | None = None) -> LogPage:
        """See :meth:`indexshift.wal.WriteLog.records_after`: every instance's records, in one
        ordered query (no gap can show: commits happen in sequence order, see the module's
        docstring). Outcomes this instance has not committed yet show as none."""
        query = sql.SQL("""
            SELECT r.seq, r.time_ns, r.method, r.path, r.query, r.headers, r.body,
                   o.outcome, o.status, o.time_ns
            FROM {s}.records r LEFT JOIN {s}.outcomes o ON o.seq = r.seq
            WHERE r.seq > %s AND r.seq <= %s
            ORDER BY r.seq LIMIT %s""").format(s=self._s)
        rows = self._read_rows(self._pager, query,
                               (after, _SEQ_MAX if until is None else until, limit + 1))
        writes = [LoggedWrite(_record_of(row), None if row[7] is None else AppliedMarker(
            int(row[0]), int(row[9]), Outcome(int(row[7])), int(row[8]))) for row in rows[:limit]]
        return LogPage(writes, len(rows) > limit)

    def _read_rows(self, reader: _ReadConnection, query: sql.Composed,
                   params: Sequence[Any]) -> list[tuple[Any, ...]]:
        failure = self._state.failure
        if failure is not None:
            # Reads run on the gateway's event loop: no waiting for a connect timeout while
            # the committer already knows the database is away.
            raise WalUnavailable(failure)
        try:
            return reader.rows(query, params)
        except psycopg.Error as exc:
            raise WalUnavailable(
                f"the PostgreSQL write-ahead log cannot be read: {_one_line(exc)}") from exc

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def applied_through(self) -> int:
        return self._applied_through

    @property
    def failed(self) -> str | None:
        return self._state.failure

    def snapshot_stats(self) -> WalStats:
        with self._cond:
            stats = WalStats(**{k: getattr(self.stats, k) for k in WalStats.__dataclass_fields__})
            stats.last_seq = self._last_seq
            stats.applied_through = self._applied_through
            stats.pending = len(self._pending)
            stats.segments = 0
            stats.state = "failed" if self._state.failure else "ok"
            stats.error = self._state.failure
            return stats

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, release the lease (pending records become adoptable)."""
        if self._closed:
            return
        with self._cond:
            self._state.stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._closed = True
        with self._adopt_lock:  # an adoption under way ends before its connection closes
            if self._adopter is not None:
                with contextlib.suppress(psycopg.Error):
                    self._adopter.close()
                self._adopter = None
        if self._lease is not None:
            # Let go before closing: a session ends asynchronously on the server, and an
            # instance opening right after must already see this one's records as adoptable.
            with contextlib.suppress(psycopg.Error):
                self._lease.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)",
                                    (self._namespace, self.instance))
        self._close_connections()

    def _close_connections(self) -> None:
        for connection in (self._writer, self._lease):
            if connection is not None:
                with contextlib.suppress(psycopg.Error):
                    connection.close()
        self._writer = self._lease = None
        self._reader.close()
        self._pager.close()

    def __enter__(self) -> PostgresWriteLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the committer thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_refresh = time.monotonic() + STATS_REFRESH_S
        while True:
            with self._cond:
                state = self._state
                while True:
                    now = time.monotonic()
                    markers_due = bool(state.markers) and (
                        state.stopping
                        or now - state.markers_since >= self._marker_flush_interval_s)
                    if state.appends or markers_due or (state.stopping and not state.markers):
                        break
                    if now >= next_refresh:
                        break
                    wait = next_refresh - now
                    if state.markers:
                        wait = min(wait, state.markers_since
                                   + self._marker_flush_interval_s - now)
                    self._cond.wait(max(0.001, wait))
                count = take_batch([len(a.body) for a in state.appends], self._batch_records,
                                   self._batch_bytes) if state.appends else 0
                appends, state.appends = state.appends[:count], state.appends[count:]
                markers, state.markers = state.markers, []
                stopping = state.stopping
            if not appends and not markers and not stopping:
                self._refresh_quietly()
                next_refresh = time.monotonic() + STATS_REFRESH_S
                continue
            if appends or markers:
                self._commit_batch(appends, markers)
            if stopping:
                with self._cond:
                    if not state.appends and not state.markers:
                        return
                    if state.failure is not None:
                        self._fail_appends(state.appends, WalUnavailable(state.failure))
                        state.appends = []
                        return  # markers left: the records are replayed after a restart

    def _commit_batch(self, appends: list[PgAppend],
                      markers: list[tuple[int, Outcome, int, int]]) -> None:
        try:
            self._ensure_connected()
        except (psycopg.Error, OSError, WalUnavailable) as exc:
            error = WalUnavailable(self._failure_text(exc))
            self._fail_appends(appends, error)
            self._requeue_markers(markers)
            return
        assert self._writer is not None
        started = time.perf_counter()
        base = None
        try:
            # The commit happens when this block ends: once ``base`` is set, a failure may
            # come from a commit that did happen.
            with self._writer.transaction():
                self._fault("write")
                if markers:
                    self._write_markers(markers)
                if appends:
                    base = self._write_records(appends)
            self._fault("commit")  # injects "committed, but the answer was lost"
        except (psycopg.Error, OSError) as exc:
            if base is not None:
                # The statement ran; the commit answer was lost: it may have happened.
                with self._cond:
                    self._state.abandon += range(base + 1, base + 1 + len(appends))
            self._broken(exc)
            self._fail_appends(appends, WalUnavailable(self._failure_text(exc)))
            self._requeue_markers(markers)
            return
        seconds = time.perf_counter() - started
        with self._cond:
            self.stats.fsyncs += 1
            self.stats.markers += len(markers)
            if appends and base is not None:
                self._pending.update(range(base + 1, base + 1 + len(appends)))
                self._last_seq = max(self._last_seq, base + len(appends))
                self.stats.record_fsyncs += 1
                self.stats.fsynced_records += len(appends)
                self.stats.appended += len(appends)
                self.stats.appended_bytes += sum(len(a.body) for a in appends)
        for offset, appended in enumerate(appends):
            assert base is not None
            appended.settle(base + 1 + offset, None)
        if appends and self._on_fsync is not None:
            self._on_fsync(len(appends), seconds)

    def _write_records(self, appends: list[PgAppend]) -> int:
        assert self._writer is not None
        n = len(appends)
        row = self._writer.execute(sql.SQL("""
            WITH head AS (
                UPDATE {s}.head SET last_seq = last_seq + %(n)s WHERE id = 1
                RETURNING last_seq - %(n)s AS base
            ), added AS (
                INSERT INTO {s}.records (seq, time_ns, instance, method, path, query,
                                         headers, body)
                SELECT head.base + r.ord, r.time_ns, %(me)s, r.method, r.path, r.query,
                       r.headers::json, r.body
                FROM head, unnest(%(time_ns)s::bigint[], %(method)s::text[],
                                  %(path)s::bytea[], %(query)s::bytea[], %(headers)s::text[],
                                  %(body)s::bytea[])
                     WITH ORDINALITY AS r(time_ns, method, path, query, headers, body, ord)
                RETURNING seq
            ), owed AS (
                INSERT INTO {s}.pending (seq, owner) SELECT seq, %(me)s FROM added
            )
            SELECT base FROM head""").format(s=self._s), {
                "n": n, "me": self.instance,
                "time_ns": [a.time_ns for a in appends],
                "method": [a.method for a in appends],
                "path": [to_bytes(a.path) for a in appends],
                "query": [to_bytes(a.query) for a in appends],
                "headers": [encode_headers(a.headers) for a in appends],
                "body": [a.body for a in appends],
            }).fetchone()
        assert row is not None
        return int(row[0])

    def _write_markers(self, markers: list[tuple[int, Outcome, int, int]]) -> None:
        assert self._writer is not None
        self._writer.execute(sql.SQL("""
            WITH m AS (
                SELECT * FROM unnest(%(seq)s::bigint[], %(outcome)s::smallint[],
                                     %(status)s::integer[], %(time_ns)s::bigint[])
                       AS m(seq, outcome, status, time_ns)
            ), gone AS (
                DELETE FROM {s}.pending p USING m WHERE p.seq = m.seq
            )
            INSERT INTO {s}.outcomes (seq, time_ns, instance, outcome, status)
            SELECT DISTINCT ON (seq) seq, time_ns, %(me)s, outcome, status FROM m
            ORDER BY seq
            ON CONFLICT (seq) DO NOTHING""").format(s=self._s), {
                "seq": [m[0] for m in markers], "outcome": [int(m[1]) for m in markers],
                "status": [m[2] for m in markers], "time_ns": [m[3] for m in markers],
                "me": self.instance})

    def _ensure_connected(self) -> None:
        """Reconnect after a failure (at most once per retry interval) and settle what the
        failure left open: commits of unknown fate, records adopted by others meanwhile."""
        with self._cond:
            state = self._state
            if state.failure is None and self._writer is not None and not self._writer.broken:
                return
            if (state.failure is not None
                    and time.monotonic() - state.last_attempt < self._retry_interval_s):
                raise WalUnavailable(state.failure)
            state.last_attempt = time.monotonic()
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.close()
            self._writer = None
        self._connect()
        assert self._writer is not None
        with self._cond:
            abandon = list(self._state.abandon)
            mine = sorted(self._pending)
        with self._writer.transaction():
            if abandon:
                self._writer.execute(sql.SQL("""
                    WITH ours AS (
                        SELECT seq FROM {s}.records WHERE seq = ANY(%(seqs)s) AND instance = %(me)s
                    ), gone AS (
                        DELETE FROM {s}.pending WHERE seq IN (SELECT seq FROM ours)
                    )
                    INSERT INTO {s}.outcomes (seq, time_ns, instance, outcome, status)
                    SELECT seq, %(now)s, %(me)s, %(abandoned)s, 0 FROM ours
                    ON CONFLICT (seq) DO NOTHING""").format(s=self._s), {
                        "seqs": abandon, "me": self.instance, "now": time.time_ns(),
                        "abandoned": int(Outcome.ABANDONED)})
            still = {int(row[0]) for row in self._writer.execute(sql.SQL(
                "SELECT seq FROM {s}.pending WHERE owner = %s AND seq = ANY(%s)").format(
                    s=self._s), (self.instance, mine)).fetchall()}
        with self._cond:
            lost = [seq for seq in mine if seq not in still and seq in self._pending]
            self._pending.difference_update(lost)
            self._state.abandon = [s for s in self._state.abandon if s not in abandon]
            self._state.failure = None
        if lost:
            log.warning("write-ahead log: %d pending writes were taken over by another "
                        "instance while this one was disconnected", len(lost))
        log.warning("write-ahead log at %s usable again", redact_url(self.url))

    def _broken(self, exc: BaseException) -> None:
        with self._cond:
            self._state.failure = self._failure_text(exc)
            self._state.last_attempt = time.monotonic()
            self.stats.failures += 1
        log.error("%s; writes are refused until it recovers", self._state.failure)
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.close()

    def _failure_text(self, exc: BaseException) -> str:
        if isinstance(exc, WalUnavailable):
            return exc.message
        return (f"the PostgreSQL write-ahead log at {redact_url(self.url)} cannot be written "
                f"({_one_line(exc)})")

    def _fail_appends(self, appends: list[PgAppend], error: WalUnavailable) -> None:
        if appends:
            with self._cond:
                if self._state.failure is None:
                    self._state.failure = error.message
                    self._state.last_attempt = time.monotonic()
        for appended in appends:
            appended.settle(0, error)

    def _requeue_markers(self, markers: list[tuple[int, Outcome, int, int]]) -> None:
        if markers:
            with self._cond:
                self._state.markers[:0] = markers
                self._state.markers_since = time.monotonic()

    def _refresh_quietly(self) -> None:
        try:
            self._ensure_connected()
            # A lease lost unnoticed would let another instance adopt records still owed here.
            if not self._lease_holds():
                raise WalUnavailable(f"instance {self.instance} lost its lease")
            self._refresh_positions()
        except (psycopg.Error, OSError, WalUnavailable) as exc:
            if self._state.failure is None:
                self._broken(exc)

    def _refresh_positions(self) -> None:
        assert self._writer is not None
        row = self._writer.execute(sql.SQL(
            "SELECT h.last_seq, (SELECT min(seq) FROM {s}.pending) FROM {s}.head h "
            "WHERE h.id = 1").format(s=self._s)).fetchone()
        assert row is not None
        with self._cond:
            self._last_seq = max(self._last_seq, int(row[0]))
            self._applied_through = applied_through(int(row[0]),
                                                    None if row[1] is None else int(row[1]))

    def _fault(self, operation: str) -> None:
        hook = self.fault
        if hook is not None:
            hook(operation)

    def _cache_drop(self, seq: int) -> None:
        cached = self._cache.pop(seq, None)
        if cached is not None:
            self._cache_bytes -= len(cached.body)


_SEQ_MAX: Final = 2**63 - 1


class _ReadConnection:
    """A connection for reads, opened when first needed, used by one thread at a time."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def rows(self, query: sql.Composed, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of a query, on a new connection once more when the kept one broke."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._connection is None or self._connection.closed:
                        self._connection = self._connect()
                    return self._connection.execute(query, params, binary=True).fetchall()
                except psycopg.Error:
                    self._drop()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            self._connection = None


def _record_of(row: Sequence[Any]) -> WriteRecord:
    """A write record from a row that starts seq, time_ns, method, path, query, headers, body."""
    return WriteRecord(int(row[0]), int(row[1]), str(row[2]), from_bytes(row[3]),
                       from_bytes(row[4]), decode_headers(row[5]), bytes(row[6]))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
