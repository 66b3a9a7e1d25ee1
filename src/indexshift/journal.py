"""The run journal and the migration lock.

A run's record lives in an index of indexshift's own in the cluster, so every operator sees the
same state. Every change is a compare-and-set on the document's ``_seq_no``/``_primary_term``:
two processes that read the same record can never both advance it. At most one migration per
alias runs at once: a lease document created with create-only semantics, renewed by heartbeats,
and taken over only on request when its holder is gone.

Each successful write is also appended to a local JSON-lines file per run, a trail that
survives even when the cluster does not.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from indexshift.cluster import JSON, Cluster
from indexshift.errors import CheckFailed, Conflict, NotFound, Rejected

log = logging.getLogger(__name__)

JOURNAL_INDEX = "indexshift-journal"
DEFAULT_LEASE_TTL_S = 60.0

T = TypeVar("T")


# -- phases and statuses -----------------------------------------------------------------------


class Phase(StrEnum):
    """Checkpointed phases of a run, in the order a run goes through them."""

    VALIDATING = "VALIDATING"
    BACKUP_CREATED = "BACKUP_CREATED"
    GREEN_CREATED = "GREEN_CREATED"
    REINDEX_STARTED = "REINDEX_STARTED"
    REINDEX_50 = "REINDEX_50%"
    REINDEX_100 = "REINDEX_100%"
    VALIDATED = "VALIDATED"
    ALIAS_SWITCHED = "ALIAS_SWITCHED"
    MONITORING = "MONITORING"
    COMPLETED = "COMPLETED"


_PHASE_ORDER: dict[Phase, int] = {phase: position for position, phase in enumerate(Phase)}


def phase_order(phase: Phase) -> int:
    """The position of ``phase`` in a run (VALIDATING is 0)."""
    return _PHASE_ORDER[Phase(phase)]


def is_at_or_after(phase: Phase, reference: Phase) -> bool:
    """Whether a run at ``phase`` has reached ``reference``."""
    return phase_order(phase) >= phase_order(reference)


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    HALTED = "HALTED"  # breaker open or stopped on purpose, at a resumable checkpoint
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    COMPLETED = "COMPLETED"


# -- time and ids --------------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no time zone; pass an aware one (UTC)")
    return moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """``2026-11-23T10:15:00.123Z``: milliseconds, which every engine's date field accepts."""
    return _as_utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_RUN_ID_SUFFIX = re.compile(r"^[a-z0-9]{1,32}$")


def new_run_id(now: datetime, rand: str) -> str:
    """A run id that sorts by creation time: ``20261123t101500123-<rand>``.

    The fixed-width UTC prefix (to the millisecond) makes string order chronological order;
    ``rand`` (lowercase letters and digits) tells apart runs started in the same millisecond.
    Lowercase throughout, so the id can be part of an index name.
    """
    if not _RUN_ID_SUFFIX.match(rand):
        raise ValueError(f"run id suffix {rand!r} must be 1-32 lowercase letters or digits")
    moment = _as_utc(now)
    return f"{moment:%Y%m%dt%H%M%S}{moment.microsecond // 1000:03d}-{rand}"


def generate_run_id(now: datetime | None = None) -> str:
    return new_run_id(now or utc_now(), secrets.token_hex(4))


# -- who we are ----------------------------------------------------------------------------------


def this_host() -> str:
    return socket.gethostname()


def this_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No name for our uid (a bare container): the number still identifies the holder.
        return str(os.getuid())


def this_holder() -> dict[str, Any]:
    return {"host": this_host(), "pid": os.getpid(), "user": this_user()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


# -- records -------------------------------------------------------------------------------------


def _zero_progress() -> dict[str, Any]:
    return {"total": 0, "created": 0, "updated": 0, "deleted": 0, "percent": 0.0}


def _closed_breaker() -> dict[str, Any]:
    return {"open": False, "reason": None, "at": None}


class RunRecord(BaseModel):
    """One run of one migration, as stored in the journal (a JSON dict both ways)."""

    # Fields written by a newer indexshift survive a rewrite by an older one.
    model_config = ConfigDict(extra="allow", frozen=True)

    run_id: str
    alias: str
    version: int
    spec_name: str
    spec_checksum: str
    blue: str | None = None
    green: str | None = None
    phase: Phase = Phase.VALIDATING
    status: RunStatus = RunStatus.RUNNING
    task_id: str | None = None
    progress: dict[str, Any] = Field(default_factory=_zero_progress)
    copy_state: dict[str, Any] = Field(default_factory=dict)
    breaker: dict[str, Any] = Field(default_factory=_closed_breaker)
    error: str | None = None
    holder: dict[str, Any] = Field(default_factory=this_holder)
    started_at: str = Field(default_factory=lambda: iso_utc(utc_now()))
    updated_at: str = Field(default_factory=lambda: iso_utc(utc_now()))
    checkpoints: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def new(cls, *, alias: str, version: int, spec_name: str, spec_checksum: str,
            blue: str | None = None, green: str | None = None,
            now: datetime | None = None) -> RunRecord:
        """A fresh run at VALIDATING, RUNNING, held by this process."""
        moment = now or utc_now()
        stamp = iso_utc(moment)
        return cls(run_id=generate_run_id(moment), alias=alias, version=version,
                   spec_name=spec_name, spec_checksum=spec_checksum, blue=blue, green=green,
                   started_at=stamp, updated_at=stamp)

    def to_json(self) -> JSON:
        return self.model_dump(mode="json")


class Lease(BaseModel):
    """The migration lock on one alias: which run holds it, from where, and how fresh."""

    model_config = ConfigDict(extra="allow", frozen=True)

    alias: str
    run_id: str
    host: str
    pid: int
    user: str
    acquired_at: str
    heartbeat_at: str
    ttl_s: float = DEFAULT_LEASE_TTL_S

    def to_json(self) -> JSON:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A value as read from (or written to) the journal, with what a compare-and-set needs."""

    value: T
    seq_no: int
    primary_term: int


# -- pure rules ----------------------------------------------------------------------------------


_UPDATABLE = frozenset(RunRecord.model_fields) - {"run_id", "alias", "phase", "status",
                                                  "checkpoints", "started_at", "updated_at"}


def advance_record(record: RunRecord, *, now: datetime, phase: Phase | None = None,
                   status: RunStatus | None = None, details: JSON | None = None,
                   updates: JSON | None = None) -> RunRecord:
    """The record after one step: new phase/status/fields, and a checkpoint when it moved.

    A checkpoint is appended when the phase changes, and also when only the status changes
    (a halt or failure in the middle of a phase belongs on the timeline, with its details).
    """
    updates = dict(updates or {})
    unknown = set(updates) - _UPDATABLE
    if unknown:
        raise TypeError(f"advance() cannot set {sorted(unknown)}; settable: {sorted(_UPDATABLE)}")
    new_phase = Phase(phase) if phase is not None else record.phase
    new_status = RunStatus(status) if status is not None else record.status
    stamp = iso_utc(now)
    checkpoints = list(record.checkpoints)
    if new_phase != record.phase or new_status != record.status:
        checkpoints.append({"phase": new_phase.value, "status": new_status.value, "at": stamp,
                            "details": dict(details or {})})
    data = record.to_json()
    data.update(updates)
    data.update(phase=new_phase.value, status=new_status.value, updated_at=stamp,
                checkpoints=checkpoints)
    return RunRecord.model_validate(data)


def first_checkpoint(record: RunRecord) -> RunRecord:
    """The record with its starting phase on the timeline (if the timeline is still empty)."""
    if record.checkpoints:
        return record
    start: JSON = {"phase": record.phase.value, "status": record.status.value,
                   "at": record.started_at, "details": {}}
    return record.model_copy(update={"checkpoints": [start]})


def lease_is_stale(lease: Lease, now: datetime, ttl_s: float, this_host: str,
                   pid_alive: Callable[[int], bool]) -> bool:
    """Whether the lease's holder is gone: no heartbeat for ``ttl_s``, or a dead local pid.

    The pid can only be checked when the holder runs on this very host; elsewhere the
    heartbeat is the only sign of life. A heartbeat from the future (clock skew) is fresh.
    """
    age_s = (_as_utc(now) - parse_iso_utc(lease.heartbeat_at)).total_seconds()
    if age_s > ttl_s:
        return True
    return lease.host == this_host and not pid_alive(lease.pid)


def heartbeat_age_s(lease: Lease, now: datetime) -> int:
    return max(0, int((_as_utc(now) - parse_iso_utc(lease.heartbeat_at)).total_seconds()))


def lease_refusal(lease: Lease, *, now: datetime, stale: bool) -> CheckFailed:
    """The error for an alias whose lease someone else holds (alive, or gone)."""
    who = (f"pid {lease.pid} on host {lease.host}, "
           f"heartbeat {heartbeat_age_s(lease, now)}s ago")
    if stale:
        return CheckFailed(
            f"alias {lease.alias} is held by run {lease.run_id} whose process is gone ({who})",
            hint="to take it over, pass --break-lock",
        )
    return CheckFailed(
        f"alias {lease.alias} is being migrated by run {lease.run_id} ({who})",
        hint=f"wait for it to finish or run `indexshift status {lease.alias}`",
    )


def run_doc_id(run_id: str) -> str:
    return f"run:{run_id}"


def lease_doc_id(alias: str) -> str:
    return f"lease:{alias}"


def run_to_source(record: RunRecord) -> JSON:
    return {"kind": "run", **record.to_json()}


def lease_to_source(lease: Lease) -> JSON:
    return {"kind": "lease", **lease.to_json()}


def _without_kind(source: JSON) -> JSON:
    return {key: value for key, value in source.items() if key != "kind"}


def journal_index_body() -> JSON:
    """Settings and mapping of the journal index.

    Hidden, one shard, a replica when there is a node for it. Only what is searched on is
    indexed; ``dynamic: false`` and disabled objects keep free-form parts (copy state,
    checkpoint details) from growing the mapping.
    """
    keyword = {"type": "keyword"}
    date = {"type": "date"}
    opaque = {"type": "object", "enabled": False}
    return {
        "settings": {"index": {"hidden": True, "number_of_shards": 1,
                               "auto_expand_replicas": "0-1"}},
        "mappings": {
            "dynamic": False,
            "properties": {
                "kind": keyword, "alias": keyword, "run_id": keyword, "phase": keyword,
                "status": keyword,
                "started_at": date, "updated_at": date, "acquired_at": date,
                "heartbeat_at": date,
                "progress": opaque, "copy_state": opaque, "breaker": opaque,
                "holder": opaque, "checkpoints": opaque,
            },
        },
    }


# -- the journal ---------------------------------------------------------------------------------


class Journal:
    """Runs and leases in the cluster's journal index, plus a local trail per run."""

    def __init__(self, cluster: Cluster, index: str = JOURNAL_INDEX,
                 local_dir: Path = Path(".indexshift/runs"), *,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.cluster = cluster
        self.index = index
        self.local_dir = local_dir
        self._clock = clock
        self._index_ready = False

    # -- the index ------------------------------------------------------------------------

    def ensure_index(self) -> None:
        """Create the journal index with its mapping, unless it exists (safe to race)."""
        if self._index_ready:
            return
        if not self.cluster.index_exists(self.index):
            try:
                self.cluster.create_index(self.index, journal_index_body())
            except Rejected:
                # Another process created it between our check and our create.
                if not self.cluster.index_exists(self.index):
                    raise
        self._index_ready = True

    # -- runs -----------------------------------------------------------------------------

    def create_run(self, record: RunRecord) -> Versioned[RunRecord]:
        """Store a new run (create-only: an existing run id is a Conflict)."""
        self.ensure_index()
        record = first_checkpoint(record)
        result = self.cluster.put_doc(self.index, run_doc_id(record.run_id),
                                      run_to_source(record), create_only=True, refresh=True)
        self._append_local(record)
        return Versioned(record, int(result["_seq_no"]), int(result["_primary_term"]))

    def get_run(self, run_id: str) -> Versioned[RunRecord] | None:
        body = self.cluster.get_doc(self.index, run_doc_id(run_id))
        if body is None:
            return None
        return _versioned_run(body)

    def latest_run(self, alias: str) -> Versioned[RunRecord] | None:
        hits = self._search_runs(alias, 1)
        return _versioned_run(hits[0]) if hits else None

    def runs(self, alias: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs newest first, of one alias or of all."""
        return [_versioned_run(hit).value for hit in self._search_runs(alias, limit)]

    def _search_runs(self, alias: str | None, limit: int) -> list[JSON]:
        filters: list[JSON] = [{"term": {"kind": "run"}}]
        if alias is not None:
            filters.append({"term": {"alias": alias}})
        body: JSON = {"query": {"bool": {"filter": filters}}, "size": limit,
                      "sort": [{"run_id": "desc"}], "seq_no_primary_term": True}
        try:
            result = self.cluster.search(self.index, body)
        except NotFound:
            return []  # no journal yet: no runs
        hits: list[JSON] = result.get("hits", {}).get("hits", [])
        return hits

    def advance(self, current: Versioned[RunRecord], *, phase: Phase | None = None,
                status: RunStatus | None = None, details: JSON | None = None,
                **updates: Any) -> Versioned[RunRecord]:
        """Write the next state of a run, only if nobody changed it since ``current`` was read.

        Raises Conflict when another process won the race; ``current`` is then stale.
        """
        record = advance_record(current.value, now=self._clock(), phase=phase, status=status,
                                details=details, updates=updates)
        try:
            result = self.cluster.put_doc(
                self.index, run_doc_id(record.run_id), run_to_source(record),
                if_seq_no=current.seq_no, if_primary_term=current.primary_term, refresh=True,
            )
        except Conflict as exc:
            raise self._lost_race(current.value) from exc
        self._append_local(record)
        return Versioned(record, int(result["_seq_no"]), int(result["_primary_term"]))

    def _lost_race(self, ours: RunRecord) -> Conflict:
        stored_phase: str = ours.phase.value
        with contextlib.suppress(Exception):  # the message is the point; a failed read is not
            stored = self.get_run(ours.run_id)
            if stored is not None:
                stored_phase = stored.value.phase.value
        return Conflict(
            f"run {ours.run_id} was changed by another process since we read it "
            f"(phase {stored_phase})",
            hint=f"re-read it with `indexshift status {ours.alias}`",
            status=409,
        )

    def _append_local(self, record: RunRecord) -> None:
        # The local trail is a convenience copy; the cluster is the record. A full disk here
        # must not turn a successful checkpoint into a reported failure.
        try:
            self.local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.local_dir / f"{record.run_id}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an existing file or a loose umask: still only ours
                line = json.dumps(record.to_json(), separators=(",", ":")) + "\n"
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not append run %s to %s: %s", record.run_id, self.local_dir, exc)

    # -- the lease ------------------------------------------------------------------------

    def current_lease(self, alias: str) -> Versioned[Lease] | None:
        body = self.cluster.get_doc(self.index, lease_doc_id(alias))
        if body is None:
            return None
        return _versioned_lease(body)

    def acquire_lease(self, alias: str, run_id: str, *, ttl_s: float = DEFAULT_LEASE_TTL_S,
                      break_lock: bool = False) -> Versioned[Lease]:
        """Take the migration lock on ``alias`` for ``run_id``.

        Refused (CheckFailed) while a live holder has it. A gone holder's lease is taken over
        only with ``break_lock``, by compare-and-set, so two breakers cannot both win. The
        holder's own ttl counts when it is longer than ours: it promised to beat that often.
        """
        self.ensure_index()
        doc_id = lease_doc_id(alias)
        for _ in range(3):
            now = self._clock()
            holder = this_holder()
            mine = Lease(alias=alias, run_id=run_id, host=holder["host"], pid=holder["pid"],
                         user=holder["user"], acquired_at=iso_utc(now),
                         heartbeat_at=iso_utc(now), ttl_s=ttl_s)
            try:
                result = self.cluster.put_doc(self.index, doc_id, lease_to_source(mine),
                                              create_only=True, refresh=True)
                return Versioned(mine, int(result["_seq_no"]), int(result["_primary_term"]))
            except Conflict:
                pass
            existing = self.current_lease(alias)
            if existing is None:
                continue  # released between our create and our read: try again
            theirs = existing.value
            if (theirs.run_id, theirs.host, theirs.pid) == (run_id, holder["host"],
                                                             holder["pid"]):
                return existing  # we hold it already
            stale = lease_is_stale(theirs, now, max(ttl_s, theirs.ttl_s), holder["host"],
                                   pid_alive)
            if not stale or not break_lock:
                raise lease_refusal(theirs, now=now, stale=stale)
            log.warning("breaking the lease on %s held by run %s (pid %s on %s)", alias,
                        theirs.run_id, theirs.pid, theirs.host)
            try:
                result = self.cluster.put_doc(
                    self.index, doc_id, lease_to_source(mine), if_seq_no=existing.seq_no,
                    if_primary_term=existing.primary_term, refresh=True,
                )
                return Versioned(mine, int(result["_seq_no"]), int(result["_primary_term"]))
            except Conflict:
                continue  # the holder beat or someone else broke it first: look again
        raise Conflict(
            f"the lease on alias {alias} kept changing while we tried to take it",
            hint=f"run `indexshift status {alias}` to see who holds it",
            status=409,
        )

    def heartbeat(self, lease: Versioned[Lease]) -> Versioned[Lease]:
        """Renew the lease; Conflict means it is no longer ours and the run must stop."""
        renewed = lease.value.model_copy(update={"heartbeat_at": iso_utc(self._clock())})
        try:
            result = self.cluster.put_doc(
                self.index, lease_doc_id(renewed.alias), lease_to_source(renewed),
                if_seq_no=lease.seq_no, if_primary_term=lease.primary_term, refresh=True,
            )
        except Conflict as exc:
            raise Conflict(
                f"run {renewed.run_id} lost the lease on alias {renewed.alias} "
                "(another process took it over or released it)",
                hint=f"stop this run and check `indexshift status {renewed.alias}`",
                status=409,
            ) from exc
        return Versioned(renewed, int(result["_seq_no"]), int(result["_primary_term"]))

    def release_lease(self, lease: Versioned[Lease]) -> bool:
        """Delete the lease if it is still the one we hold; False when it no longer was.

        It does not raise when the lease moved on: release runs on the way out, often while
        another error is already on its way up, and must not hide it.
        """
        try:
            self.cluster.delete_doc(self.index, lease_doc_id(lease.value.alias),
                                    if_seq_no=lease.seq_no,
                                    if_primary_term=lease.primary_term, refresh=True)
        except (Conflict, NotFound):
            log.warning("lease on %s was no longer held by run %s; left it alone",
                        lease.value.alias, lease.value.run_id)
            return False
        return True


def _versioned_run(hit: JSON) -> Versioned[RunRecord]:
    record = RunRecord.model_validate(_without_kind(hit["_source"]))
    return Versioned(record, int(hit["_seq_no"]), int(hit["_primary_term"]))


def _versioned_lease(hit: JSON) -> Versioned[Lease]:
    lease = Lease.model_validate(_without_kind(hit["_source"]))
    return Versioned(lease, int(hit["_seq_no"]), int(hit["_primary_term"]))
