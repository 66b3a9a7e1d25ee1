"""Where a migration stands, whether data was lost, and the safest way back.

``assess`` reads the cluster (never writes) and turns what it finds into an :class:`Assessment`:
the migration state, its risk, the integrity level of what the alias serves against a backup,
and the runbook's decision tree walked to a recovery method. Classification, integrity levels
and the decision tree are pure functions of the gathered :class:`Evidence`, tested without a
node; only the gathering talks to the cluster.

The one thing ``assess`` ever creates is a temporary index: to compare the alias with a
snapshot, the backed-up index is restored under a fresh name, diffed, and deleted again
whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from indexshift.canary import read_search_response
from indexshift.cluster import Cluster
from indexshift.diff import diff_indices
from indexshift.errors import BadInput, IndexshiftError, NotFound
from indexshift.journal import JOURNAL_INDEX, Journal, Phase, RunStatus, is_at_or_after
from indexshift.snapshots import (
    RestoreSource,
    SnapshotInfo,
    index_name_problem,
    list_snapshots,
    newest_success_holding,
    restore_as,
    restore_source,
    sort_newest_first,
)
from indexshift.spec import parse_versioned_index
from indexshift.validator import missing_or_wrong_fields

log = logging.getLogger(__name__)

JSON = dict[str, Any]


class MigrationState(StrEnum):
    PRE_MIGRATION = "PRE_MIGRATION"
    PARTIAL_SCHEMA_CHANGE = "PARTIAL_SCHEMA_CHANGE"
    MID_REINDEX = "MID_REINDEX"
    POST_REINDEX_PRE_SWITCH = "POST_REINDEX_PRE_SWITCH"
    MID_SWITCH = "MID_SWITCH"
    POST_SWITCH = "POST_SWITCH"
    CLEANUP = "CLEANUP"
    NO_MIGRATION = "NO_MIGRATION"


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Method(StrEnum):
    NO_ACTION = "NO_ACTION"
    SELECTIVE_REINDEX = "SELECTIVE_REINDEX"
    FULL_RESTORE = "FULL_RESTORE"
    EMERGENCY_RESTORE = "EMERGENCY_RESTORE"
    NO_ROLLBACK = "NO_ROLLBACK"
    DISASTER_RECOVERY = "DISASTER_RECOVERY"
    BLUE_GREEN_REQUIRED = "BLUE_GREEN_REQUIRED"
    COMPLETE_SWITCH = "COMPLETE_SWITCH"
    ROLLBACK = "ROLLBACK"


@dataclass(frozen=True)
class Counts:
    """Documents of what the alias serves (``current``) against the backup."""

    current: int | None
    backup: int | None = None
    missing: int | None = None  # in the backup, not in current
    extra: int | None = None  # in current, not in the backup
    changed: int | None = None  # in both, with another _source

    def to_json(self) -> JSON:
        return {"current": self.current, "backup": self.backup, "missing": self.missing,
                "extra": self.extra, "changed": self.changed}


@dataclass(frozen=True)
class BackupRef:
    """What current is compared with: a snapshot (of one index in it) or a live index."""

    kind: str  # "snapshot" | "index"
    name: str  # snapshot name, or index name
    state: str | None  # snapshot state (SUCCESS, PARTIAL, ...) or index health
    taken_at: str | None  # ISO-8601 UTC; for an index, its creation time
    index: str  # the index inside the snapshot (or the index itself)
    repository: str | None = None
    # A snapshot's index restored aside by the caller of assess_evidence, read in its place.
    restored_as: str | None = None

    def same_backup(self, other: BackupRef | None) -> bool:
        """Whether ``other`` names the same backup (wherever either was restored)."""
        return other is not None and (self.kind, self.repository, self.name, self.index) == (
            other.kind, other.repository, other.name, other.index)

    def to_json(self) -> JSON:
        return {"kind": self.kind, "name": self.name, "state": self.state,
                "taken_at": self.taken_at, "index": self.index, "repository": self.repository,
                "restored_as": self.restored_as}


@dataclass(frozen=True)
class Step:
    """One question of the decision tree and the answer found in the cluster."""

    question: str
    answer: str

    def to_json(self) -> JSON:
        return {"question": self.question, "answer": self.answer}


@dataclass(frozen=True)
class Recommendation:
    method: Method
    reason: str

    def to_json(self) -> JSON:
        return {"method": self.method.value, "reason": self.reason}


@dataclass(frozen=True)
class Assessment:
    """The verdict of ``assess``; ``to_json`` is the documented ``--json`` shape."""

    alias: str
    state: MigrationState
    risk: Risk
    action: str  # the runbook's recommended action for the state, in words
    integrity_level: int | None  # 1..4, None when there is no backup to compare with
    counts: Counts
    backup: BackupRef | None
    recommendation: Recommendation
    decision_path: list[Step]
    evidence: JSON = field(default_factory=dict)
    # The physical indices recovery works on (None when absent).
    serving: list[str] = field(default_factory=list)  # indices the alias points at now
    old_index: str | None = None  # blue: the older versioned index
    new_index: str | None = None  # green: the newer versioned index
    missing_ids: list[str] = field(default_factory=list)  # exact ids when known
    changed_ids: list[str] = field(default_factory=list)
    # The index whose integrity was measured and on which the decision tree ran: the index
    # the alias serves (in MID_SWITCH, the newer of the two).
    current_index: str | None = None
    # True when missing_ids/changed_ids hold fewer ids than counts.missing/changed.
    ids_truncated: bool = False

    def to_json(self) -> JSON:
        return {
            "alias": self.alias,
            "state": self.state.value,
            "risk": self.risk.value,
            "action": self.action,
            "integrity_level": self.integrity_level,
            "counts": self.counts.to_json(),
            "backup": self.backup.to_json() if self.backup else None,
            "recommendation": self.recommendation.to_json(),
            "decision_path": [step.to_json() for step in self.decision_path],
            "evidence": self.evidence,
            "current_index": self.current_index,
            "serving": list(self.serving),
            "old_index": self.old_index,
            "new_index": self.new_index,
        }


# -- thresholds ------------------------------------------------------------------------------

# The runbook's levels: up to 0.1 % missing is an acceptable variance, more than 5 % is severe.
VARIANCE_PER_MILLE = 1  # missing * 1000 <= backup * 1  →  within 0.1 %
SEVERE_PERCENT = 5  # missing * 100 > backup * 5  →  severe loss
# How long a finished migration counts as recent: the runbook keeps blue for 7 days, so a
# serving index younger than that (and a day of slack) is a migration still being cleaned up.
CLEANUP_WINDOW = timedelta(days=8)
# A SUCCESS snapshot of the serving index this recent is the first step of a migration.
PRE_MIGRATION_WINDOW = timedelta(hours=24)
# Ids listed for recovery. Beyond this many, a selective copy is no longer the tool.
MAX_RECOVERY_IDS = 1_000_000

_OPEN_PHASES = (Phase.VALIDATING, Phase.BACKUP_CREATED)
_OPEN_STATUSES = (RunStatus.RUNNING, RunStatus.HALTED)


# -- evidence --------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def percent_text(part: int, whole: int) -> str:
    """``0.05 %``: three significant digits, never rounded down to a misleading 0."""
    if whole <= 0:
        return "0 %"
    return f"{100.0 * part / whole:.3g} %"


@lru_cache(maxsize=64)
def _underscore_versioned(alias: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(alias)}_v(?P<version>\d+)(?:[-_].*)?", re.DOTALL)


def version_of(alias: str, index: str) -> int | None:
    """The version of a versioned index of ``alias``, else None.

    Accepts what indexshift makes (``<alias>-v<N>-<timestamp>``) and what people make by hand
    (``<alias>-v<N>``, ``<alias>_v<N>``, with or without a suffix).
    """
    found = parse_versioned_index(alias, index)
    if found is not None:
        return found
    match = _underscore_versioned(alias).fullmatch(index)
    return int(match["version"]) if match else None


# -- indices a recovery restored ---------------------------------------------------------------

# ``recover`` points the alias at a restored index named after the recovery's UTC time, and
# assess reads those names back to tell a finished recovery from a migration. Both take the
# names from here, so the two never drift apart.
RECOVERY_STAMP_FORMAT = "%Y%m%dt%H%M%S"
_RECOVERY_STAMP = r"(?P<stamp>\d{8}t\d{6})"
FULL_RESTORE_KIND = "full restore"
EMERGENCY_RESTORE_KIND = "emergency restore"
_EMERGENCY_PREFIX = "emergency-restore-"
_EMERGENCY_RESTORED = re.compile(rf"{re.escape(_EMERGENCY_PREFIX)}(?P<source>.+)-{_RECOVERY_STAMP}",
                                 re.DOTALL)


def recovery_stamp(now: datetime) -> str:
    """UTC time as it appears in the names of restored indices: ``20261123t101500``."""
    moment = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return moment.strftime(RECOVERY_STAMP_FORMAT)


def restored_name(alias: str, when: str) -> str:
    """The index a full restore of ``alias`` serves from: ``<alias>-restored-<stamp>``."""
    return f"{alias}-restored-{when}"


def emergency_restore_name(index: str, when: str) -> str:
    """The index an emergency restore of ``index`` serves from:
    ``emergency-restore-<index>-<stamp>``."""
    return f"{_EMERGENCY_PREFIX}{index}-{when}"


@lru_cache(maxsize=64)
def _full_restored(alias: str) -> re.Pattern[str]:
    return re.compile(re.escape(restored_name(alias, "")) + _RECOVERY_STAMP, re.DOTALL)


@dataclass(frozen=True)
class RestoredIndex:
    """An index that ``recover`` restored from a backup, as its name tells."""

    name: str
    kind: str  # FULL_RESTORE_KIND | EMERGENCY_RESTORE_KIND
    restored_at: datetime  # the recovery's stamp (UTC, to the second)
    source: str | None = None  # the backed-up index, which an emergency restore is named after

    def predates(self, facts: IndexFacts) -> bool:
        """Whether ``facts`` existed before the recovery (an unknown creation time counts as
        before). The stamp is cut to the second, so that whole second counts as before."""
        return facts.created is None or facts.created < self.restored_at + timedelta(seconds=1)


def parse_restored_name(alias: str, index: str) -> RestoredIndex | None:
    """What recover's name for a restored index serving ``alias`` says, else None."""
    kind, source = FULL_RESTORE_KIND, None
    match = _full_restored(alias).fullmatch(index)
    if match is None:
        match = _EMERGENCY_RESTORED.fullmatch(index)
        if match is None:
            return None
        kind, source = EMERGENCY_RESTORE_KIND, match["source"]
    try:
        when = datetime.strptime(match["stamp"], RECOVERY_STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return RestoredIndex(index, kind, when, source)


@dataclass(frozen=True)
class AliasTarget:
    """One index the alias points at; ``is_write_index`` None when the flag is not set."""

    index: str
    is_write_index: bool | None = None

    def to_json(self) -> JSON:
        return {"index": self.index, "is_write_index": self.is_write_index}


@dataclass(frozen=True)
class IndexFacts:
    """One physical index: a versioned index of the alias, or one the alias points at."""

    name: str
    version: int | None  # None: not a versioned index of the alias
    docs: int | None  # None: closed, red, or the count failed
    health: str | None = "green"
    status: str = "open"  # "open" | "close"
    created: datetime | None = None

    @property
    def readable(self) -> bool:
        return self.status == "open" and self.health != "red"

    def why_unreadable(self) -> str:
        if self.status != "open":
            return f"{self.name} is closed"
        if self.health == "red":
            return f"{self.name} is red (a primary shard is unassigned)"
        return f"{self.name} is readable"

    def to_json(self) -> JSON:
        return {"name": self.name, "version": self.version, "docs": self.docs,
                "health": self.health, "status": self.status, "created": _iso(self.created)}


# The ``_cat/indices`` columns index_facts_from_row reads.
CAT_COLUMNS = ("index", "health", "status", "creation.date")


def index_facts_from_row(name: str, version: int | None, row: Mapping[str, Any]) -> IndexFacts:
    """An index as its ``_cat/indices`` row describes it; its documents are not counted."""
    created_ms = row.get("creation.date")
    created = (datetime.fromtimestamp(int(created_ms) / 1000.0, tz=UTC)
               if created_ms not in (None, "") else None)
    return IndexFacts(name, version, None, health=row.get("health"),
                      status=str(row.get("status") or "open"), created=created)


@dataclass(frozen=True)
class ReindexTask:
    """A running ``_reindex`` task (the parent of sliced ones)."""

    task_id: str
    sources: tuple[str, ...]
    dest: str
    total: int = 0
    done: int = 0
    running_s: float = 0.0

    def progress_text(self) -> str:
        return f"{self.done:,} of {self.total:,} docs" if self.total else "starting"

    def to_json(self) -> JSON:
        return {"task_id": self.task_id, "sources": list(self.sources), "dest": self.dest,
                "total": self.total, "done": self.done, "running_s": round(self.running_s, 1)}


@dataclass(frozen=True)
class RunFacts:
    """The journal's latest run for the alias."""

    run_id: str
    phase: str
    status: str
    blue: str | None = None
    green: str | None = None
    updated_at: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES

    def reached(self, phase: Phase) -> bool:
        try:
            return is_at_or_after(Phase(self.phase), phase)
        except ValueError:
            return False

    def to_json(self) -> JSON:
        return {"run_id": self.run_id, "phase": self.phase, "status": self.status,
                "blue": self.blue, "green": self.green, "updated_at": self.updated_at}


@dataclass(frozen=True)
class SearchCheck:
    """Whether a query on the alias (or, without one, the current index) succeeds."""

    target: str
    ok: bool
    detail: str

    def to_json(self) -> JSON:
        return {"target": self.target, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class MappingCheck:
    """Whether current's mapping has the reference's fields with their types.

    ``ok`` is None when there is nothing to compare with (no spec mappings, and the backup
    holds another index than current, whose mapping may differ on purpose).
    """

    ok: bool | None
    reference: str
    problems: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        if self.ok is None:
            return f"not checked: {self.reference}"
        if self.ok:
            return f"the mapping has every field of {self.reference} with its type"
        return f"against {self.reference}: " + "; ".join(self.problems[:5]) + (
            f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else "")

    def to_json(self) -> JSON:
        return {"ok": self.ok, "reference": self.reference, "problems": list(self.problems)}


@dataclass(frozen=True)
class Comparison:
    """An exact diff of a reference index (``a``: the backup, or the older index) with ``b``.

    Counts are None when they could not be read; ``error`` says why the diff did not run,
    and then ``missing`` is at best the count difference (``ids_listed`` False).
    """

    a: str
    b: str
    count_a: int | None
    count_b: int | None
    missing: int | None = None
    extra: int | None = None
    changed: int | None = None
    ids_listed: bool = False
    truncated: bool = False
    error: str | None = None

    def to_json(self) -> JSON:
        return {"a": self.a, "b": self.b, "count_a": self.count_a, "count_b": self.count_b,
                "missing": self.missing, "extra": self.extra, "changed": self.changed,
                "ids_listed": self.ids_listed, "truncated": self.truncated, "error": self.error}


@dataclass(frozen=True)
class Evidence:
    """Every fact ``assess`` gathered, as read from the cluster at ``now``.

    ``indices`` holds the versioned indices of the alias and every index the alias points
    at. ``comparison`` (current against the backup) and ``switch_comparison`` (the older
    index against the newer, in a half-done switch) are filled after the gathering, by diffs.
    """

    alias: str
    now: datetime
    targets: tuple[AliasTarget, ...] = ()
    indices: tuple[IndexFacts, ...] = ()
    tasks: tuple[ReindexTask, ...] = ()
    run: RunFacts | None = None
    snapshots: tuple[SnapshotInfo, ...] = ()  # those holding an index of the alias
    cluster_health: str | None = "green"
    search: SearchCheck | None = None
    mapping: MappingCheck | None = None
    backup: BackupRef | None = None
    backup_problem: str | None = None  # why ``backup`` is not a valid backup
    comparison: Comparison | None = None
    switch_comparison: Comparison | None = None
    notes: tuple[str, ...] = ()  # what could not be read, and why
    # The snapshot a restored current index came from, as the cluster still knows it.
    restored_from: RestoreSource | None = None

    def index(self, name: str | None) -> IndexFacts | None:
        for facts in self.indices:
            if facts.name == name:
                return facts
        return None

    @property
    def versioned(self) -> list[IndexFacts]:
        """Versioned indices of the alias, oldest first (version, then creation time)."""
        return sorted((i for i in self.indices if i.version is not None), key=_age_key)

    def to_json(self) -> JSON:
        return {
            "now": _iso(self.now),
            "alias_targets": [t.to_json() for t in self.targets],
            "indices": [i.to_json() for i in sorted(self.indices, key=_age_key)],
            "reindex_tasks": [t.to_json() for t in self.tasks],
            "journal_run": self.run.to_json() if self.run else None,
            "cluster_health": self.cluster_health,
            "snapshots_considered": [_snapshot_summary(s, self.alias) for s in self.snapshots],
            "search": self.search.to_json() if self.search else None,
            "mapping": self.mapping.to_json() if self.mapping else None,
            "backup_problem": self.backup_problem,
            "comparison": self.comparison.to_json() if self.comparison else None,
            "switch_comparison": (self.switch_comparison.to_json()
                                  if self.switch_comparison else None),
            "restored_from": self.restored_from.to_json() if self.restored_from else None,
            "notes": list(self.notes),
        }


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _age_key(facts: IndexFacts) -> tuple[int, datetime, str]:
    return (facts.version if facts.version is not None else 0, facts.created or _EPOCH,
            facts.name)


def _snapshot_summary(snapshot: SnapshotInfo, alias: str) -> JSON:
    return {"repository": snapshot.repository, "name": snapshot.name, "state": snapshot.state,
            "start_time": _iso(snapshot.start_time), "end_time": _iso(snapshot.end_time),
            "indices": [i for i in snapshot.indices if version_of(alias, i) is not None]
            or list(snapshot.indices)[:10]}


# -- classification --------------------------------------------------------------------------

RISK_OF: dict[MigrationState, Risk] = {
    MigrationState.PRE_MIGRATION: Risk.LOW,
    MigrationState.PARTIAL_SCHEMA_CHANGE: Risk.MEDIUM,
    MigrationState.MID_REINDEX: Risk.HIGH,
    MigrationState.POST_REINDEX_PRE_SWITCH: Risk.MEDIUM,
    MigrationState.MID_SWITCH: Risk.CRITICAL,
    MigrationState.POST_SWITCH: Risk.LOW,
    MigrationState.CLEANUP: Risk.LOW,
    MigrationState.NO_MIGRATION: Risk.LOW,
}


@dataclass(frozen=True)
class Classification:
    """A state with its risk, the runbook's action (``action``), why (``reason``), and the
    indices involved: ``current`` (what integrity is measured on), blue and green."""

    state: MigrationState
    risk: Risk
    action: str
    reason: str
    current: str | None
    old_index: str | None = None
    new_index: str | None = None
    advice: str | None = None  # what to do about the migration itself, for the recommendation

    def to_json(self) -> JSON:
        return {"state": self.state.value, "risk": self.risk.value, "action": self.action,
                "reason": self.reason, "current": self.current, "old_index": self.old_index,
                "new_index": self.new_index}


def _facts_of(evidence: Evidence, name: str) -> IndexFacts:
    return evidence.index(name) or IndexFacts(name, version_of(evidence.alias, name), None,
                                              health=None)


def _journal_note(run: RunFacts | None, green: str | None) -> str:
    if run is None or (green is not None and run.green not in (None, green)):
        return ""
    return f"; the journal's run {run.run_id} is at {run.phase} ({run.status})"


def classify(evidence: Evidence) -> Classification:
    """The migration state of the alias, from cluster evidence alone; the journal sharpens.

    Rules, first match wins (``serving``: the alias's write index, or its only index; its
    version is 0 when it is not a versioned index; "newer" means a higher version):

    1. MID_SWITCH (critical): the alias points at two or more versioned indices of itself; or
       at none while versioned indices exist; or at several indices, one versioned, and the
       write index is not the newest. ``new``: the newest index pointed at (the newest
       versioned index when the alias is gone); ``old``: the write index when it is not the
       newest, else the next newest. Current is ``new``.
    2. MID_REINDEX (high): a running ``_reindex`` task copies into a newer versioned index; or,
       without a task, the newest newer index holds some documents but fewer than serving
       (a copy that died halfway).
    3. PARTIAL_SCHEMA_CHANGE (medium): the newest newer index holds 0 documents (or cannot
       be read) and no task copies into it. Two empty indices count as a finished copy when
       the journal says the copy reached REINDEX_100%.
    4. POST_REINDEX_PRE_SWITCH (medium): the newest newer index holds at least as many
       documents as serving, no task runs, the alias still serves the old index.
    5. PRE_MIGRATION (low): the journal's latest run is open (running or halted) at
       VALIDATING or BACKUP_CREATED (and, when serving was restored by a recovery, was
       updated after it).
    6. POST_SWITCH (low): serving is an index ``recover`` restored (see
       :func:`parse_restored_name`) and versioned indices from before the recovery are left:
       they are its predecessors, kept write-blocked for forensics, never a migration's new
       index. With none left, CLEANUP (low). Versioned indices created after the recovery
       are a new migration's, and rules 2-5 judge them.
       Else POST_SWITCH when the alias serves the newest versioned index and an older one
       exists.
    7. CLEANUP (low): the alias serves version N > 1 whose predecessors are gone, and the
       journal's latest run is COMPLETED or serving was created within the last 8 days.
    8. PRE_MIGRATION (low): a SUCCESS snapshot holding serving finished within the last 24 h.
    9. NO_MIGRATION (low) otherwise.

    In states 2-4 the alias still serves the old index, so ``current`` is serving.
    """
    alias = evidence.alias
    run = evidence.run
    versioned = evidence.versioned
    targets = [_facts_of(evidence, t.index) for t in evidence.targets]
    targets.sort(key=_age_key)
    versioned_targets = [t for t in targets if t.version is not None]
    writes = [t.index for t in evidence.targets if t.is_write_index]
    write = _facts_of(evidence, writes[0]) if writes else None

    def make(state: MigrationState, action: str, reason: str, current: str | None,
             old: str | None = None, new: str | None = None,
             advice: str | None = None) -> Classification:
        return Classification(state, RISK_OF[state], action, reason, current, old, new, advice)

    # 1. a switch left halfway
    if not targets and versioned:
        new = versioned[-1]
        old = versioned[-2] if len(versioned) > 1 else None
        names = ", ".join(i.name for i in versioned)
        return make(MigrationState.MID_SWITCH,
                    _switch_action(alias, old.name if old else None, new.name),
                    f"alias {alias} does not exist, but its versioned indices do ({names}): "
                    f"the switch removed the alias and never added it back"
                    + _journal_note(run, new.name),
                    new.name, old.name if old else None, new.name)
    newest_target = targets[-1] if targets else None
    write_not_newest = (len(targets) >= 2 and bool(versioned_targets) and write is not None
                        and newest_target is not None and write.name != newest_target.name
                        and _age_key(write) < _age_key(newest_target))
    if len(versioned_targets) >= 2 or write_not_newest:
        assert newest_target is not None
        new = newest_target
        # Roll back to where writes went; else to the index the alias served before.
        old = write if write is not None and write.name != new.name else targets[-2]
        pointed = ", ".join(t.name for t in targets)
        why = f"alias {alias} points at {pointed} at once"
        if write_not_newest and write is not None:
            why += f", and its write index {write.name} is not the newest"
        return make(MigrationState.MID_SWITCH, _switch_action(alias, old.name, new.name),
                    why + _journal_note(run, new.name), new.name, old.name, new.name)

    # The alias serves one index (or several plain ones: an ordinary multi-index alias).
    if write is not None:
        serving: IndexFacts | None = write
    elif targets:
        serving = targets[-1]
    else:
        serving = None
    assert serving is not None
    serving_version = serving.version or 0
    restored = parse_restored_name(alias, serving.name)
    # A restored index carries no version, so every versioned index would look newer than it;
    # those from before the recovery are the broken index and its forebears, kept on purpose.
    kept = [i for i in versioned if restored is not None and restored.predates(i)]
    kept_names = {i.name for i in kept}
    newer = [i for i in versioned if i.version is not None and i.version > serving_version
             and i.name != serving.name and i.name not in kept_names]

    # 2-4. a copy towards a newer index
    copies = [t for t in evidence.tasks if any(t.dest == i.name for i in newer)]
    if copies:
        task = max(copies, key=lambda t: _age_key(_facts_of(evidence, t.dest)))
        return make(MigrationState.MID_REINDEX,
                    "stop the copy (or let it finish), then assess data integrity",
                    f"_reindex task {task.task_id} is copying into {task.dest} "
                    f"({task.progress_text()}) while {alias} serves {serving.name}"
                    + _journal_note(run, task.dest),
                    serving.name, serving.name, task.dest,
                    advice=f"the copy into {task.dest} is still running: let it finish, or "
                           f"`indexshift halt {alias}`")
    if newer:
        candidate = newer[-1]
        note = _journal_note(run, candidate.name)
        resume = (f", or `indexshift resume {alias}` to continue the recorded run"
                  if run is not None and run.green == candidate.name and run.is_open else "")
        if candidate.docs is None:
            return make(MigrationState.PARTIAL_SCHEMA_CHANGE,
                        f"delete the new index {candidate.name} and retry the migration",
                        f"{candidate.why_unreadable()}: none of its data can be read, and no "
                        f"task copies into it; {alias} still serves {serving.name}" + note,
                        serving.name, serving.name, candidate.name,
                        advice=f"delete the unreadable {candidate.name} and retry the "
                               "migration")
        copy_finished = (run is not None and run.green == candidate.name
                         and run.reached(Phase.REINDEX_100))
        if candidate.docs == 0 and not (serving.docs == 0 and copy_finished):
            return make(MigrationState.PARTIAL_SCHEMA_CHANGE,
                        f"delete the new index {candidate.name} and retry the migration",
                        f"{candidate.name} exists with 0 documents and no task copies into "
                        f"it; {alias} still serves {serving.name} ({_n(serving.docs)} docs)"
                        + note,
                        serving.name, serving.name, candidate.name,
                        advice=f"delete the empty {candidate.name} and retry the migration")
        if serving.docs is not None and candidate.docs < serving.docs:
            return make(MigrationState.MID_REINDEX,
                        "stop the copy, then assess data integrity",
                        f"{candidate.name} holds {candidate.docs:,} of {serving.name}'s "
                        f"{serving.docs:,} docs and no task copies into it: a copy that "
                        f"died halfway" + note,
                        serving.name, serving.name, candidate.name,
                        advice=f"the copy into {candidate.name} stopped halfway: delete "
                               f"{candidate.name} and retry the migration{resume}")
        return make(MigrationState.POST_REINDEX_PRE_SWITCH,
                    f"validate {candidate.name}, then switch the alias to it",
                    f"{candidate.name} holds {candidate.docs:,} docs, {serving.name} "
                    f"{_n(serving.docs)}; no task runs and {alias} still serves "
                    f"{serving.name}" + note,
                    serving.name, serving.name, candidate.name,
                    advice=f"the copy into {candidate.name} looks complete: validate it "
                           f"against {serving.name}, then switch {alias} to it")

    # 5-9. the alias serves the newest index
    if run is not None and run.is_open and run.phase in _OPEN_PHASES and (
            restored is None or _updated_after(run, restored.restored_at)):
        return make(MigrationState.PRE_MIGRATION,
                    "continue the migration, or abort safely: nothing has changed yet",
                    f"the journal's run {run.run_id} is {run.status} at {run.phase}: a backup "
                    f"may exist, no new index yet; {alias} serves {serving.name}",
                    serving.name, serving.name, None)
    if restored is not None:
        return _recovered(alias, serving.name, restored, [i.name for i in kept])
    older = [i for i in versioned if i.version is not None and i.version < serving_version]
    if serving.version is not None and older:
        previous = older[-1]
        return make(MigrationState.POST_SWITCH, f"monitor {serving.name}, then remove the "
                    f"old index {previous.name}",
                    f"{alias} serves the newest versioned index {serving.name}; the older "
                    + ", ".join(i.name for i in older) + " still exist"
                    + ("s" if len(older) == 1 else "") + _journal_note(run, serving.name),
                    serving.name, previous.name, serving.name)
    if serving_version > 1:
        completed = run is not None and run.status == RunStatus.COMPLETED
        recent = (serving.created is not None
                  and evidence.now - serving.created <= CLEANUP_WINDOW)
        if completed or recent:
            assert run is not None or serving.created is not None
            why = (f"the journal's run {run.run_id} is COMPLETED" if completed and run
                   else f"{serving.name} was created {_age_text(evidence.now, serving.created)}"
                        " ago")
            return make(MigrationState.CLEANUP, "normal operation",
                        f"{alias} serves {serving.name} (version {serving_version}); its "
                        f"predecessors are gone and {why}",
                        serving.name, None, serving.name)
    recent_backup = _recent_snapshot(evidence.snapshots, serving.name, evidence.now)
    if recent_backup is not None:
        return make(MigrationState.PRE_MIGRATION,
                    "continue the migration, or abort safely: nothing has changed yet",
                    f"snapshot {recent_backup.name} of {serving.name} finished "
                    f"{_age_text(evidence.now, recent_backup.end_time)} ago and no new "
                    f"index exists yet",
                    serving.name, serving.name, None)
    return make(MigrationState.NO_MIGRATION, "nothing to do: no migration in progress",
                f"{alias} serves {serving.name}; no newer versioned index, no copy running, "
                f"no recent backup or open run", serving.name, None, None)


def _recovered(alias: str, serving: str, restored: RestoredIndex,
               kept: Sequence[str]) -> Classification:
    """The state after ``recover`` pointed the alias at a restored index: finished."""
    how = (f"{restored.kind} at {_iso(restored.restored_at)}"
           + (f" from a backup of {restored.source}" if restored.source else ""))
    if not kept:
        return Classification(
            MigrationState.CLEANUP, RISK_OF[MigrationState.CLEANUP], "normal operation",
            f"{alias} serves {serving}, restored by a recovery ({how}); no versioned index "
            f"of {alias} from before it is left", serving, None, serving)
    names = ", ".join(kept)
    one = len(kept) == 1
    return Classification(
        MigrationState.POST_SWITCH, RISK_OF[MigrationState.POST_SWITCH],
        f"monitor; {names} {'is' if one else 'are'} kept read-only for forensics — delete "
        f"{'it' if one else 'them'} with `indexshift cleanup` once the incident is closed",
        f"{alias} serves {serving}, restored by a recovery ({how}); {names} "
        f"{'was' if one else 'were'} there before it and {'is' if one else 'are'} kept for "
        "forensics, not a migration's new index", serving, kept[-1], serving)


def _updated_after(run: RunFacts, moment: datetime) -> bool:
    """Whether the run was last updated after ``moment`` (unknown: yes, as if no recovery
    had been seen)."""
    if not run.updated_at:
        return True
    try:
        updated = datetime.fromisoformat(run.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return updated >= moment + timedelta(seconds=1)


def classify_state(evidence: Evidence) -> tuple[MigrationState, Risk, str]:
    """The state, its risk, and the runbook's recommended action in words (see
    :func:`classify` for the rules)."""
    found = classify(evidence)
    return found.state, found.risk, found.action


def _switch_action(alias: str, old: str | None, new: str) -> str:
    if old is None:
        return f"complete the switch: point {alias} at {new}"
    return f"complete the switch to {new}, or roll back fully to {old}"


def _age_text(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "an unknown time"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _recent_snapshot(snapshots: Sequence[SnapshotInfo], index: str,
                     now: datetime) -> SnapshotInfo | None:
    for snapshot in sort_newest_first(snapshots):
        if (snapshot.succeeded and index in snapshot.indices and snapshot.end_time is not None
                and now - snapshot.end_time <= PRE_MIGRATION_WINDOW):
            return snapshot
    return None


# -- integrity -------------------------------------------------------------------------------


def within_variance(missing: int, backup: int) -> bool:
    """At most 0.1 % of the backup missing (the runbook's acceptable variance)."""
    return missing * 1000 <= backup * VARIANCE_PER_MILLE


def severe_loss(missing: int, backup: int) -> bool:
    """More than 5 % of the backup missing."""
    return missing * 100 > backup * SEVERE_PERCENT


def integrity_level(*, readable: bool, searchable: bool, mapping_ok: bool,
                    backup_count: int | None, missing: int | None) -> int | None:
    """The runbook's data-integrity level of current against the backup.

    4: current unreadable (closed or red), search on it broken, or more than 5 % of the
    backup's documents missing. 3: more than 0.1 % missing, or mappings wrong. 2: some
    missing, at most 0.1 %. 1: none missing and mappings right. None when there is no backup
    to compare with (or, with a backup, the missing count could not be known).

    Only *missing* documents lower the level. Ids in current but not in the backup (extra)
    and ids whose content differs (changed) are writes made after the backup was taken: they
    are newer data, not loss, and are reported in the counts only.
    """
    if backup_count is None:
        return None
    if not readable or not searchable:
        return 4
    if missing is None:
        return None
    if severe_loss(missing, backup_count):
        return 4
    if not within_variance(missing, backup_count) or not mapping_ok:
        return 3
    if missing > 0:
        return 2
    return 1


# -- the decision tree -----------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionFacts:
    """The answers the decision tree needs, taken from :class:`Evidence` by
    :func:`decision_facts`. ``backup_problem`` says why there is no valid backup."""

    alias: str
    state: MigrationState
    current: str | None
    old_index: str | None = None
    new_index: str | None = None
    backup: BackupRef | None = None
    backup_problem: str | None = None
    readable: bool = True
    readable_detail: str = ""
    searchable: bool = True
    search_detail: str = ""
    mapping_ok: bool = True
    mapping_detail: str = ""
    counts: Counts = field(default_factory=lambda: Counts(current=None))
    ids_known: bool = False
    ids_problem: str = ""
    switch: Comparison | None = None
    old_readable: bool = True
    new_readable: bool = True
    advice: str | None = None

    @property
    def backup_valid(self) -> bool:
        return (self.backup is not None and self.backup_problem is None
                and self.counts.backup is not None)


def decision_facts(evidence: Evidence, found: Classification) -> DecisionFacts:
    """What the tree asks about, read off the evidence for the classified state."""
    current = evidence.index(found.current)
    readable = current is not None and current.readable
    readable_detail = (current.why_unreadable() if current is not None
                       else f"{found.current} does not exist")
    search = evidence.search
    mapping = evidence.mapping
    comparison = evidence.comparison
    counts = Counts(current=current.docs if current else None)
    ids_known = False
    ids_problem = "the diff did not run"
    if comparison is not None:
        missing = comparison.missing
        if missing is None and comparison.count_a is not None and counts.current is not None:
            missing = max(0, comparison.count_a - counts.current)  # the runbook's count check
        counts = Counts(current=counts.current if counts.current is not None
                        else comparison.count_b,
                        backup=comparison.count_a, missing=missing, extra=comparison.extra,
                        changed=comparison.changed)
        ids_known = comparison.ids_listed and not comparison.truncated
        if comparison.error:
            ids_problem = comparison.error
        elif comparison.truncated:
            ids_problem = f"more than {MAX_RECOVERY_IDS:,} ids differ"
    backup_problem = evidence.backup_problem
    if evidence.backup is None and backup_problem is None:
        backup_problem = "no SUCCESS snapshot holds the alias's index or a predecessor"
    elif backup_problem is None and counts.backup is None:
        backup_problem = (comparison.error if comparison and comparison.error
                          else "its documents could not be counted")
    old = evidence.index(found.old_index)
    new = evidence.index(found.new_index)
    return DecisionFacts(
        alias=evidence.alias, state=found.state, current=found.current,
        old_index=found.old_index, new_index=found.new_index,
        backup=evidence.backup, backup_problem=backup_problem,
        readable=readable, readable_detail=readable_detail,
        searchable=search.ok if search else False,
        search_detail=search.detail if search else "no search was tried",
        mapping_ok=mapping.ok is not False if mapping else True,
        mapping_detail=mapping.detail if mapping else "not checked",
        counts=counts, ids_known=ids_known, ids_problem=ids_problem,
        switch=evidence.switch_comparison,
        old_readable=old is not None and old.readable,
        new_readable=new is not None and new.readable,
        advice=found.advice,
    )


def _backup_text(backup: BackupRef) -> str:
    if backup.kind == "snapshot":
        where = f" in {backup.repository}" if backup.repository else ""
        return (f"snapshot {backup.name}{where} ({backup.state}, taken {backup.taken_at}) "
                f"of {backup.index}")
    return f"index {backup.name} ({backup.state}, created {backup.taken_at})"


def _count_text(counts: Counts, by_count: bool) -> str:
    backup, current, missing = counts.backup, counts.current, counts.missing
    text = f"backup {_n(backup)} docs, current {_n(current)}"
    if missing is not None and backup is not None:
        text += (f", {missing:,} missing ({percent_text(missing, backup)})" if missing
                 else ", none missing")
        if by_count:
            text += " by count"
    newer = []
    if counts.extra:
        newer.append(f"{counts.extra:,} new")
    if counts.changed:
        newer.append(f"{counts.changed:,} changed")
    if newer:
        text += f"; {' and '.join(newer)} since the backup (newer writes, not loss)"
    return text


def _since_backup(counts: Counts) -> str:
    return (f"{_n(counts.extra)} new and {_n(counts.changed)} changed documents written "
            "since the backup")


def decide(facts: DecisionFacts) -> tuple[Recommendation, list[Step]]:
    """The runbook's decision tree, walked question by question, and where it ends.

    A half-done switch is settled first: complete it when the newer index holds every
    document of the older, else roll back. Every other state runs the tree on ``current``
    (in MID_REINDEX, PARTIAL_SCHEMA_CHANGE and POST_REINDEX_PRE_SWITCH that is still the old
    index, which the alias serves), and the state's own advice is added to the reason.

    Two endings differ from the runbook's method table, both toward zero lost documents:
    with 0 < missing <= 0.1 % the tree would accept the variance, but the table reindexes
    it, and so does indexshift; with 0.1 % < missing <= 5 % and the missing ids known, the
    table says full restore, but a restore would drop every write made since the backup,
    while copying exactly the missing ids loses nothing. Q4 ("is search working?") counts a
    wrong mapping as search not working: queries on the missing or mistyped fields fail.
    """
    steps: list[Step] = []
    if facts.state is MigrationState.MID_SWITCH:
        return _settle_switch(facts, steps), steps
    recommendation = _walk_tree(facts, steps)
    if facts.advice:
        recommendation = Recommendation(
            recommendation.method,
            f"{recommendation.reason}. Meanwhile {facts.alias} still serves {facts.current}; "
            f"{facts.advice}")
    return recommendation, steps


def _settle_switch(facts: DecisionFacts, steps: list[Step]) -> Recommendation:
    alias, old, new = facts.alias, facts.old_index, facts.new_index
    question = f"Does the newer index {new} hold every document of the older {old}?"
    if old is None:
        steps.append(Step(f"Is there an older index than {new}?",
                          f"no: {new} is the only versioned index of {alias}"))
        return Recommendation(Method.COMPLETE_SWITCH,
                              f"point {alias} at {new} alone (one atomic _aliases call)")
    switch = facts.switch
    if switch is not None and switch.missing is not None and switch.error is None:
        figures = (f"{old} {_n(switch.count_a)} docs, {new} {_n(switch.count_b)}")
        if switch.missing == 0:
            steps.append(Step(question, f"yes: {figures}; none of {old}'s documents is "
                                        f"missing from {new}"))
            return Recommendation(
                Method.COMPLETE_SWITCH,
                f"{new} holds every document of {old}: point {alias} at {new} alone, as its "
                f"write index (one atomic _aliases call); keep {old} as the rollback target")
        steps.append(Step(question, f"no: {figures}; {switch.missing:,} of {old}'s documents "
                                    f"are missing from {new}"))
        stranded = (f"; {switch.extra:,} documents exist only in {new} (written there during "
                    f"the switch): copy them to {old} after rolling back"
                    if switch.extra else "")
        return Recommendation(
            Method.ROLLBACK,
            f"{new} lacks {switch.missing:,} documents of {old}: point {alias} back at {old} "
            f"alone (one atomic _aliases call) and keep {new} for inspection{stranded}")
    why = switch.error if switch is not None and switch.error else "the diff did not run"
    steps.append(Step(question, f"unknown: {why}"))
    if facts.new_readable and not facts.old_readable:
        steps.append(Step(f"Is the older index {old} readable?", "no"))
        return Recommendation(
            Method.COMPLETE_SWITCH,
            f"{old} cannot be read, {new} can: point {alias} at {new} alone, then assess "
            f"again to measure what {new} lacks against the backup")
    if facts.old_readable:
        return Recommendation(
            Method.ROLLBACK,
            f"{new} could not be compared with {old} ({why}): point {alias} back at {old} "
            f"alone, which served before the switch began, and keep {new} for inspection")
    steps.append(Step(f"Can {old} or {new} be read?", "no: both are closed or red"))
    if facts.backup_valid and facts.backup is not None:
        steps.append(Step("Is there a valid backup?", f"yes: {_backup_text(facts.backup)}"))
        return Recommendation(
            Method.EMERGENCY_RESTORE,
            f"neither {old} nor {new} can be read: restore {facts.backup.index} from the "
            f"backup under a new name and point {alias} at it")
    steps.append(Step("Is there a valid backup?", f"no: {facts.backup_problem}"))
    return Recommendation(
        Method.DISASTER_RECOVERY,
        f"neither {old} nor {new} can be read and there is no valid backup: escalate to "
        "senior engineers and engage disaster recovery")


def _walk_tree(facts: DecisionFacts, steps: list[Step]) -> Recommendation:
    alias, current, counts = facts.alias, facts.current, facts.counts
    usable = facts.readable and facts.searchable
    # Q1
    if not facts.backup_valid:
        steps.append(Step("Q1. Is there a valid backup?", f"no: {facts.backup_problem}"))
        trouble = facts.readable_detail if not facts.readable else facts.search_detail
        detail = f"yes: {facts.search_detail}" if usable else f"no: {trouble}"
        steps.append(Step(f"Is the current index {current} readable and searchable?", detail))
        if usable:
            return Recommendation(
                Method.NO_ROLLBACK,
                f"there is no valid backup to roll back to, and {current} is readable and "
                f"searchable: keep serving it and take a backup now")
        return Recommendation(
            Method.DISASTER_RECOVERY,
            f"there is no valid backup and {current} is not usable ({trouble}): "
            "escalate to senior engineers and engage disaster recovery")
    assert facts.backup is not None
    backup = facts.backup
    steps.append(Step("Q1. Is there a valid backup?",
                      f"yes: {_backup_text(backup)}, {_n(counts.backup)} docs"))
    # Q2
    if not facts.readable:
        steps.append(Step(f"Q2. Is the current index {current} accessible?",
                          f"no: {facts.readable_detail}"))
        return Recommendation(
            Method.EMERGENCY_RESTORE,
            f"{current} is not accessible ({facts.readable_detail}): restore {backup.index} "
            f"from the backup under a new name and point {alias} at it; keep {current} "
            "for later salvage")
    steps.append(Step(f"Q2. Is the current index {current} accessible?",
                      f"yes: {current} is open and not red"))
    # Q3
    missing = counts.missing
    backup_docs = counts.backup or 0
    by_count = not facts.ids_known
    q3 = "Q3. Is the difference within the acceptable threshold (0.1 %)?"
    within = missing is not None and within_variance(missing, backup_docs)
    steps.append(Step(q3, f"{'yes' if within else 'no'}: {_count_text(counts, by_count)}"
                          if missing is not None
                          else f"unknown: {facts.ids_problem}"))
    if within:
        assert missing is not None
        # Q4
        works = facts.searchable and facts.mapping_ok
        if facts.searchable and not facts.mapping_ok:
            q4 = f"no: queries answer, but {facts.mapping_detail}"
        elif works:
            q4 = f"yes: {facts.search_detail}"
        else:
            q4 = f"no: {facts.search_detail}"
        steps.append(Step("Q4. Is search functionality working?", q4))
        if works:
            if missing == 0:
                return Recommendation(
                    Method.NO_ACTION,
                    f"{_count_text(counts, by_count)}, and search works: no recovery needed; "
                    "document the incident and keep monitoring")
            return Recommendation(
                Method.SELECTIVE_REINDEX,
                f"{missing:,} documents ({percent_text(missing, backup_docs)}) of the backup "
                f"are missing from {current}. The runbook's tree would accept this variance, "
                "but its method table reindexes it; indexshift resolves toward zero lost "
                f"documents: copy exactly the missing ids from the backup into {current}"
                + ("" if facts.ids_known else
                   f" (list them with a diff first: {facts.ids_problem})"))
        # Q6
        steps.append(Step("Q6. Are the mappings correct?",
                          f"{'yes' if facts.mapping_ok else 'no'}: {facts.mapping_detail}"))
        if not facts.mapping_ok:
            return Recommendation(
                Method.BLUE_GREEN_REQUIRED,
                f"the mapping of {current} is wrong ({facts.mapping_detail}); a mapping "
                "cannot be changed in place: run a blue-green migration to a new index with "
                "the right mapping")
        return Recommendation(
            Method.NO_ACTION,
            f"no data is lost beyond the threshold and the mapping is right, but search fails "
            f"({facts.search_detail}): investigate performance")
    # Q5
    identified = facts.ids_known and missing is not None
    steps.append(Step("Q5. Can we identify the missing documents?",
                      f"yes: the diff listed all {_n(missing)} missing ids" if identified
                      else f"no: {facts.ids_problem}"))
    if identified:
        assert missing is not None
        if not severe_loss(missing, backup_docs):
            return Recommendation(
                Method.SELECTIVE_REINDEX,
                f"{missing:,} documents ({percent_text(missing, backup_docs)}) of the backup "
                f"are missing from {current}. The runbook's table says full restore, but a "
                f"restore would drop every write made since the backup "
                f"({_since_backup(counts)}); copying exactly the {missing:,} missing ids "
                "from the backup loses nothing: resolved toward zero lost documents")
        return Recommendation(
            Method.FULL_RESTORE,
            f"{missing:,} documents ({percent_text(missing, backup_docs)}) of the backup are "
            f"missing from {current}: more than 5 % is severe loss (level 4). Restore "
            f"{backup.index} from the backup under a new name and point {alias} at it; keep "
            f"{current} read-only so the writes made since the backup "
            f"({_since_backup(counts)}) can still be recovered from it")
    return Recommendation(
        Method.FULL_RESTORE,
        f"the missing documents cannot be listed ({facts.ids_problem}): restore "
        f"{backup.index} from the backup under a new name and point {alias} at it; keep "
        f"{current} read-only so the writes made since the backup can still be recovered "
        "from it")


# -- choosing the backup ---------------------------------------------------------------------


def default_backup(alias: str, current: str | None, snapshots: Sequence[SnapshotInfo], *,
                   restored_from: RestoreSource | None = None
                   ) -> tuple[SnapshotInfo, str] | None:
    """The newest SUCCESS snapshot holding ``current``; else, for the newest previous
    versioned index of the alias found in a SUCCESS snapshot, the newest such snapshot.

    When ``current`` is an index ``recover`` restored, it is checked against the backup it was
    restored from: ``restored_from`` when that snapshot is still a SUCCESS, else only
    snapshots taken before the recovery count (a later one may hold the broken index), and
    an emergency restore's source index comes first.

    Returns the snapshot and the index in it to compare with, or None.
    """
    if current is not None:
        found = newest_success_holding(snapshots, [current])
        if found is not None:
            return found, current
    restored = parse_restored_name(alias, current) if current is not None else None
    if restored is not None:
        source = restored_from
        for snapshot in snapshots:
            if source is not None and snapshot.repository == source.repository and \
                    snapshot.name == source.snapshot and snapshot.succeeded and \
                    source.index in snapshot.indices:
                return snapshot, source.index
        cutoff = restored.restored_at + timedelta(seconds=1)
        snapshots = [s for s in snapshots if s.start_time is not None and s.start_time < cutoff]
        if restored.source is not None:
            found = newest_success_holding(snapshots, [restored.source])
            if found is not None:
                return found, restored.source
    current_version = version_of(alias, current) if current else None
    previous: set[str] = set()
    for snapshot in snapshots:
        if not snapshot.succeeded:
            continue
        for index in snapshot.indices:
            version = version_of(alias, index)
            if version is not None and index != current and (
                    current_version is None or version < current_version):
                previous.add(index)
    oldest = datetime.min.replace(tzinfo=UTC)
    newest_first = sorted(
        previous, reverse=True,
        key=lambda i: (version_of(alias, i) or 0,
                       max((s.start_time or oldest for s in snapshots if i in s.indices),
                           default=oldest), i))
    for index in newest_first:
        found = newest_success_holding(snapshots, [index])
        if found is not None:
            return found, index
    return None


def index_in_snapshot(alias: str, current: str | None, snapshot: SnapshotInfo) -> str:
    """Which index of a named snapshot to compare with: current, else the alias's newest
    versioned index in it, else its only index."""
    if current is not None and current in snapshot.indices:
        return current
    mine = sorted((i for i in snapshot.indices if version_of(alias, i) is not None),
                  key=lambda i: (version_of(alias, i) or 0, i))
    if mine:
        return mine[-1]
    if len(snapshot.indices) == 1:
        return snapshot.indices[0]
    raise BadInput(f"snapshot {snapshot.name} holds none of the indices of {alias} "
                   f"(it holds: {', '.join(snapshot.indices[:10]) or 'nothing'})",
                   hint="pass a snapshot that holds the alias's index, or an index name")


def snapshot_ref(snapshot: SnapshotInfo, index: str) -> tuple[BackupRef, str | None]:
    """The reference to a snapshot, and why it is not a valid backup (None when it is)."""
    ref = BackupRef("snapshot", snapshot.name, snapshot.state, _iso(snapshot.start_time),
                    index, snapshot.repository)
    if not snapshot.succeeded:
        return ref, (f"snapshot {snapshot.name} is {snapshot.state} with "
                     f"{snapshot.shards_failed} failed shard(s)")
    if index not in snapshot.indices:
        return ref, f"snapshot {snapshot.name} does not hold {index}"
    return ref, None


def index_ref(facts: IndexFacts) -> tuple[BackupRef, str | None]:
    ref = BackupRef("index", facts.name, facts.health if facts.status == "open" else "closed",
                    _iso(facts.created), facts.name)
    return ref, None if facts.readable else facts.why_unreadable()


# -- gathering (read-only) -------------------------------------------------------------------


def _write_flag(properties: Mapping[str, Any]) -> bool | None:
    flag = properties.get("is_write_index")
    if flag is None:
        return None
    return flag is True or str(flag).lower() == "true"


def _read_indices(cluster: Cluster, alias: str, names: Sequence[str],
                  notes: list[str]) -> list[IndexFacts]:
    patterns = [f"{alias}-v*", f"{alias}_v*", *names]
    rows = cluster.indices(",".join(patterns), CAT_COLUMNS) or []
    found: list[IndexFacts] = []
    for row in rows:
        name = str(row.get("index"))
        version = version_of(alias, name)
        if version is None and name not in names:
            continue
        facts = index_facts_from_row(name, version, row)
        if facts.readable:
            try:
                facts = replace(facts, docs=cluster.count(name))
            except IndexshiftError as exc:
                notes.append(f"could not count {name}: {exc.message}")
        found.append(facts)
    return found


_REINDEX_DESCRIPTION = re.compile(r"reindex from \[(?P<source>.*?)\].* to \[(?P<dest>[^\]]*)\]",
                                  re.DOTALL)


def read_reindex_tasks(body: Mapping[str, Any]) -> list[ReindexTask]:
    """Running reindex tasks from ``GET _tasks?actions=*reindex*&detailed`` (sliced copies
    once, through their parent)."""
    found: list[ReindexTask] = []
    for node in (body.get("nodes") or {}).values():
        for task_id, task in (node.get("tasks") or {}).items():
            if task.get("parent_task_id") or "reindex" not in str(task.get("action")):
                continue
            match = _REINDEX_DESCRIPTION.search(str(task.get("description") or ""))
            if match is None:
                continue
            status = task.get("status") or {}
            done = sum(int(status.get(key) or 0)
                       for key in ("created", "updated", "deleted", "version_conflicts"))
            sources = tuple(s.strip() for s in match["source"].split(",") if s.strip())
            found.append(ReindexTask(str(task_id), sources, match["dest"].strip(),
                                     total=int(status.get("total") or 0), done=done,
                                     running_s=int(task.get("running_time_in_nanos") or 0)
                                     / 1e9))
    return sorted(found, key=lambda t: t.task_id)


def _read_run(cluster: Cluster, alias: str, journal_index: str,
              notes: list[str]) -> RunFacts | None:
    # A search never creates the journal index: without one there is simply no run.
    try:
        latest = Journal(cluster, journal_index).latest_run(alias)
    except (IndexshiftError, ValueError) as exc:
        notes.append(f"could not read the journal: {exc}")
        return None
    if latest is None:
        return None
    run = latest.value
    return RunFacts(run.run_id, run.phase.value, run.status.value, run.blue, run.green,
                    run.updated_at)


def _read_snapshots(cluster: Cluster, notes: list[str]) -> list[SnapshotInfo]:
    everything: list[SnapshotInfo] = []
    try:
        repositories = sorted(cluster.snapshot_repositories())
    except IndexshiftError as exc:
        notes.append(f"could not list snapshot repositories: {exc.message}")
        return everything
    for repository in repositories:
        try:
            everything += list_snapshots(cluster, repository)
        except IndexshiftError as exc:
            notes.append(f"could not list snapshots in {repository}: {exc.message}")
    return sort_newest_first(everything)


def _check_search(cluster: Cluster, target: str) -> SearchCheck:
    try:
        body = cluster.search(target, {"size": 1, "query": {"match_all": {}},
                                       "track_total_hits": True})
    except IndexshiftError as exc:
        return SearchCheck(target, False, f"a query on {target} failed: {exc.message}")
    outcome = read_search_response(body)
    if outcome.shards_failed or outcome.timed_out:
        return SearchCheck(target, False,
                           f"a query on {target} answered with {outcome.shards_failed} failed "
                           f"shard(s){' and timed out' if outcome.timed_out else ''}")
    return SearchCheck(target, True,
                       f"a query on {target} answered {outcome.hits:,} hits in "
                       f"{outcome.took_ms} ms")


def required_fields(mappings: Mapping[str, Any]) -> dict[str, str]:
    """Every field of a mapping (``{"properties": ...}``) → its type, as dotted paths,
    multi-fields included."""
    found: dict[str, str] = {}

    def walk(properties: Mapping[str, Any], prefix: str) -> None:
        for name, node in properties.items():
            if not isinstance(node, Mapping):
                continue
            path = f"{prefix}{name}"
            found[path] = str(node.get("type", "object"))
            walk(node.get("properties") or {}, f"{path}.")
            walk(node.get("fields") or {}, f"{path}.")

    walk(mappings.get("properties") or {}, "")
    return found


def check_mapping(current_mappings: Mapping[str, Any], reference_mappings: Mapping[str, Any],
                  reference: str) -> MappingCheck:
    """Whether ``current_mappings`` has every field of the reference with its type."""
    problems = missing_or_wrong_fields(current_mappings, required_fields(reference_mappings))
    return MappingCheck(not problems, reference, tuple(problems))


def _mappings_of(cluster: Cluster, index: str) -> JSON:
    body = cluster.mapping(index)
    entry: JSON = body.get(index) or next(iter(body.values()), {})
    mappings: JSON = entry.get("mappings") or {}
    return mappings


def _resolve_backup(cluster: Cluster, alias: str, text: str, current: str | None,
                    snapshots: Sequence[SnapshotInfo],
                    indices: Sequence[IndexFacts]) -> tuple[BackupRef, str | None]:
    """``--backup``: ``repo:snapshot``, a snapshot in any repository, or a live index."""
    if ":" in text:
        repository, _, name = text.partition(":")
        if repository not in cluster.snapshot_repositories():
            raise BadInput(f"snapshot repository {repository!r} is not registered",
                           hint="list them with GET _snapshot")
        try:
            entries = cluster.snapshots(repository, name)
        except NotFound:
            entries = []
        named = [SnapshotInfo.from_api(e, repository) for e in entries
                 if e.get("snapshot") == name]
        if not named:
            raise BadInput(f"snapshot {name!r} is not in repository {repository!r}",
                           hint=f"list them with GET _snapshot/{repository}/_all")
        return snapshot_ref(named[0], index_in_snapshot(alias, current, named[0]))
    named = [s for s in snapshots if s.name == text]
    if len(named) > 1:
        where = ", ".join(sorted(s.repository for s in named))
        raise BadInput(f"snapshot {text!r} exists in several repositories ({where})",
                       hint=f"name one as REPOSITORY:{text}")
    if named:
        return snapshot_ref(named[0], index_in_snapshot(alias, current, named[0]))
    problem = index_name_problem(text)
    if problem is None and cluster.index_exists(text) and not cluster.alias_targets(text):
        facts = next((i for i in indices if i.name == text), None)
        if facts is None:
            rows = cluster.indices(text, CAT_COLUMNS) or [{}]
            facts = index_facts_from_row(text, None, rows[0])
        if text == current:
            raise BadInput(f"{text} is the index being assessed; it cannot be its own backup",
                           hint="pass a snapshot or another index")
        return index_ref(facts)
    raise BadInput(f"no snapshot and no index named {text!r}",
                   hint="pass a snapshot name (REPOSITORY:SNAPSHOT when ambiguous) or an "
                        "index name; list snapshots with GET _snapshot/_all")


def gather_evidence(cluster: Cluster, alias: str, *, backup: str | None = None,
                    spec_mappings: Mapping[str, Any] | None = None,
                    spec_mappings_by_version: Mapping[int, Mapping[str, Any]] | None = None,
                    now: datetime | None = None,
                    journal_index: str = JOURNAL_INDEX) -> Evidence:
    """Read everything the assessment rests on; changes nothing in the cluster.

    The mapping of current is checked against ``spec_mappings`` when given, else against
    the mappings ``spec_mappings_by_version`` holds for current's version (the migration spec
    that built it): which index serves is decided here, by :func:`classify`, alone.

    The alias's targets, its versioned indices (counts, health, open or closed, creation
    time), running reindex tasks, the journal's latest run (read only if the journal index
    exists), cluster health, snapshots holding the alias's indices, a query on the alias,
    the mapping of current against ``spec_mappings`` when given, and the backup to compare
    with (``backup`` as given, else :func:`default_backup`; for an index ``recover``
    restored, the snapshot its shards' ``_recovery`` says it came from). The diffs are left
    to :func:`assess`.
    """
    problem = index_name_problem(alias)
    if problem:
        raise BadInput(f"{alias!r} is not a valid alias name: {problem}")
    moment = now or datetime.now(UTC)
    notes: list[str] = []
    targets = tuple(AliasTarget(index, _write_flag(properties))
                    for index, properties in sorted(cluster.alias_targets(alias).items()))
    indices = _read_indices(cluster, alias, [t.index for t in targets], notes)
    if not targets and not any(i.version is not None for i in indices):
        if cluster.index_exists(alias):
            raise BadInput(f"{alias} is an index, not an alias",
                           hint="assess the alias in front of it; list aliases with "
                                "`indexshift info`")
        raise BadInput(f"alias {alias} does not exist",
                       hint="list aliases with `indexshift info`")
    try:
        tasks = tuple(read_reindex_tasks(cluster.tasks("*reindex*")))
    except IndexshiftError as exc:
        notes.append(f"could not list tasks: {exc.message}")
        tasks = ()
    names = {i.name for i in indices}
    tasks = tuple(t for t in tasks if t.dest in names or version_of(alias, t.dest) is not None
                  or alias in t.sources or names & set(t.sources))
    run = _read_run(cluster, alias, journal_index, notes)
    try:
        health = cluster.health().get("status")
    except IndexshiftError as exc:
        notes.append(f"could not read cluster health: {exc.message}")
        health = None
    all_snapshots = _read_snapshots(cluster, notes)
    target_names = {t.index for t in targets}
    considered = tuple(s for s in all_snapshots
                       if any(version_of(alias, i) is not None or i in target_names
                              for i in s.indices))
    evidence = Evidence(alias=alias, now=moment, targets=targets, indices=tuple(indices),
                        tasks=tasks, run=run, snapshots=considered,
                        cluster_health=str(health) if health else None)
    found = classify(evidence)
    current = found.current
    restored_from: RestoreSource | None = None
    if current is not None and parse_restored_name(alias, current) is not None:
        try:
            restored_from = restore_source(cluster, current)
        except IndexshiftError as exc:
            notes.append(f"could not read which snapshot {current} was restored from: "
                         f"{exc.message}")
        if restored_from is not None:
            considered += tuple(s for s in all_snapshots if s not in considered
                                and s.name == restored_from.snapshot
                                and s.repository == restored_from.repository)
    search = _check_search(cluster, alias if targets else str(current))
    mapping: MappingCheck | None = None
    current_facts = evidence.index(current)
    if spec_mappings is None and spec_mappings_by_version is not None and current is not None:
        spec_mappings = spec_mappings_for(alias, current, spec_mappings_by_version)
    if spec_mappings is not None and current is not None:
        try:
            mapping = check_mapping(_mappings_of(cluster, current), spec_mappings,
                                    "the spec's mappings")
        except IndexshiftError as exc:
            mapping = MappingCheck(None, f"the mapping of {current} could not be read: "
                                         f"{exc.message}")
    ref: BackupRef | None
    ref_problem: str | None
    if backup is not None:
        ref, ref_problem = _resolve_backup(cluster, alias, backup, current, all_snapshots,
                                           indices)
        if ref.kind == "snapshot" and all(s.name != ref.name for s in considered):
            considered += tuple(s for s in all_snapshots if s.name == ref.name
                                and s.repository == ref.repository)
    else:
        chosen = default_backup(alias, current, considered, restored_from=restored_from)
        if chosen is None:
            ref = None
            where = current or alias
            ref_problem = (f"no SUCCESS snapshot holds {where} or a previous versioned index "
                           f"of {alias}")
        else:
            ref, ref_problem = snapshot_ref(*chosen)
    if mapping is None:
        if ref is not None and current is not None and ref_problem is None and \
                holds_current(ref, current, restored_from):
            mapping = MappingCheck(None, "compared with the backup's mapping during assess")
        else:
            mapping = MappingCheck(None, "no reference mapping: pass the spec's mappings, or "
                                         "a backup of the same index")
    if current_facts is None:
        notes.append(f"{current} was not found among the indices")
    return replace(evidence, snapshots=considered, search=search, mapping=mapping,
                   backup=ref, backup_problem=ref_problem, notes=tuple(notes),
                   restored_from=restored_from)


def spec_mappings_for(alias: str, index: str,
                      by_version: Mapping[int, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The spec's mappings for the version of ``index``; None for an unversioned index or a
    version no spec describes."""
    version = version_of(alias, index)
    return by_version.get(version) if version is not None else None


def holds_current(backup: BackupRef, current: str,
                  restored_from: RestoreSource | None = None) -> bool:
    """Whether ``backup`` is a copy of current itself: the same index, or the very snapshot
    index current was restored from (then their mappings must agree)."""
    if backup.index == current:
        return True
    return (restored_from is not None and backup.kind == "snapshot"
            and backup.repository == restored_from.repository
            and backup.name == restored_from.snapshot and backup.index == restored_from.index)


# -- comparing -------------------------------------------------------------------------------


def _temporary_name(alias: str) -> str:
    suffix = f"-assess-{uuid.uuid4().hex[:8]}"
    return alias.encode()[:255 - len(suffix)].decode(errors="ignore") + suffix


@contextlib.contextmanager
def restored_backup(cluster: Cluster, alias: str, backup: BackupRef,
                    notes: list[str]) -> Iterator[str]:
    """The name of an index holding the backup: the live index, the snapshot's copy the
    caller restored (``backup.restored_as``, left alone), or a temporary restore of the
    snapshot, deleted again when the block ends, whatever happened inside it."""
    if backup.kind != "snapshot":
        yield backup.index
        return
    if backup.restored_as is not None:
        yield backup.restored_as  # restored by the caller, who drops it
        return
    assert backup.repository is not None
    temp = _temporary_name(alias)
    while cluster.index_exists(temp):
        temp = _temporary_name(alias)
    try:
        # restore_as returns once every primary is active: the copy can be counted at once.
        restore_as(cluster, backup.repository, backup.name, backup.index, temp,
                   index_settings={"index.number_of_replicas": 0, "index.hidden": True})
        yield temp
    finally:
        try:
            if cluster.index_exists(temp):
                cluster.delete_index(temp)
        except IndexshiftError as exc:
            message = f"could not delete the temporary index {temp}: {exc.message}; " \
                      "delete it by hand"
            log.warning(message)
            notes.append(message)


def _diff(cluster: Cluster, a: str, b: str, count_a: int | None, count_b: int | None, *,
          ids_only: bool, max_ids: int, spill_dir: Path | None
          ) -> tuple[Comparison, list[str], list[str]]:
    try:
        result = diff_indices(cluster, a, b, ids_only=ids_only, max_ids=max_ids,
                              spill_dir=spill_dir)
    except IndexshiftError as exc:
        return Comparison(a, b, count_a, count_b, error=f"the diff of {a} and {b} failed: "
                                                         f"{exc.message}"), [], []
    comparison = Comparison(a, b, result.count_a, result.count_b, result.missing_total,
                            result.extra_total, None if ids_only else result.changed_total,
                            ids_listed=True,
                            truncated=(len(result.missing) < result.missing_total
                                       or len(result.changed) < result.changed_total))
    return comparison, list(result.missing), list(result.changed)


def assess(cluster: Cluster, alias: str, *, backup: str | None = None,
           spec_mappings: Mapping[str, Any] | None = None,
           spec_mappings_by_version: Mapping[int, Mapping[str, Any]] | None = None,
           include_ids: bool = True, spill_dir: Path | None = None, now: datetime | None = None,
           journal_index: str = JOURNAL_INDEX) -> Assessment:
    """Classify the alias's migration state, measure integrity against the backup, and walk
    the runbook's decision tree to a recovery method.

    Read-only, but for one temporary index: a snapshot is compared by restoring its index
    under a new name, diffing current against it, and deleting it again (in a ``finally``).
    With ``include_ids`` the exact missing and changed ids (up to ``MAX_RECOVERY_IDS``) are
    kept in the assessment for recovery. The mapping of current is checked against
    ``spec_mappings``, or against the entry of ``spec_mappings_by_version`` for current's
    version (see :func:`gather_evidence`).
    """
    evidence = gather_evidence(cluster, alias, backup=backup, spec_mappings=spec_mappings,
                               spec_mappings_by_version=spec_mappings_by_version,
                               now=now, journal_index=journal_index)
    return assess_evidence(cluster, evidence, include_ids=include_ids, spill_dir=spill_dir)


def restores_snapshot(evidence: Evidence) -> bool:
    """Whether :func:`assess_evidence` compares current with a snapshot, which it must restore
    aside unless it is given a copy."""
    backup = evidence.backup
    return (backup is not None and backup.kind == "snapshot" and evidence.backup_problem is None
            and evidence.index(classify(evidence).current) is not None)


def assess_evidence(cluster: Cluster, evidence: Evidence, *, backup_copy: str | None = None,
                    include_ids: bool = True, spill_dir: Path | None = None) -> Assessment:
    """The assessment of gathered evidence: the diffs it needs, then :func:`conclude`.

    ``backup_copy`` is an index the caller restored the backup snapshot into (and drops
    itself): read in place of restoring the snapshot once more, and named in the backup's
    ``restored_as``. Ignored when the backup is an index.
    """
    alias = evidence.alias
    if backup_copy is not None and evidence.backup is not None and \
            evidence.backup.kind == "snapshot":
        evidence = replace(evidence, backup=replace(evidence.backup, restored_as=backup_copy))
    found = classify(evidence)
    notes = list(evidence.notes)
    current = evidence.index(found.current)
    missing_ids: list[str] = []
    changed_ids: list[str] = []
    switch: Comparison | None = None
    if found.state is MigrationState.MID_SWITCH and found.old_index and found.new_index:
        old, new = evidence.index(found.old_index), evidence.index(found.new_index)
        if old is not None and new is not None and old.readable and new.readable:
            switch, _, _ = _diff(cluster, old.name, new.name, old.docs, new.docs,
                                 ids_only=True, max_ids=0, spill_dir=spill_dir)
        else:
            broken = [i.why_unreadable() for i in (old, new) if i is not None and not i.readable]
            switch = Comparison(found.old_index, found.new_index,
                                old.docs if old else None, new.docs if new else None,
                                error="; ".join(broken) or "an index is gone")
    comparison: Comparison | None = None
    mapping = evidence.mapping
    backup_problem = evidence.backup_problem
    if evidence.backup is not None and backup_problem is None and current is not None:
        try:
            with restored_backup(cluster, alias, evidence.backup, notes) as reference:
                backup_count = cluster.count(reference)
                if current.readable:
                    comparison, missing_ids, changed_ids = _diff(
                        cluster, reference, current.name, backup_count, current.docs,
                        ids_only=False, max_ids=MAX_RECOVERY_IDS, spill_dir=spill_dir)
                else:
                    comparison = Comparison(reference, current.name, backup_count, None,
                                            error=current.why_unreadable())
                if holds_current(evidence.backup, current.name, evidence.restored_from) \
                        and mapping is not None and mapping.ok is None:
                    mapping = check_mapping(_mappings_of(cluster, current.name),
                                            _mappings_of(cluster, reference),
                                            f"the backup's mapping of {current.name}")
        except IndexshiftError as exc:
            backup_problem = f"the backup could not be read: {exc.message}"
        if comparison is not None:
            # The temporary name means nothing once it is gone: name what it held.
            comparison = replace(comparison, a=f"{evidence.backup.name}:{evidence.backup.index}"
                                 if evidence.backup.kind == "snapshot" else comparison.a)
    evidence = replace(evidence, comparison=comparison, switch_comparison=switch,
                       mapping=mapping, backup_problem=backup_problem, notes=tuple(notes))
    return conclude(evidence, missing_ids=missing_ids if include_ids else [],
                    changed_ids=changed_ids if include_ids else [])


def conclude(evidence: Evidence, *, missing_ids: Sequence[str] = (),
             changed_ids: Sequence[str] = ()) -> Assessment:
    """The assessment of complete evidence: state, integrity level, the tree's path."""
    found = classify(evidence)
    facts = decision_facts(evidence, found)
    recommendation, steps = decide(facts)
    level = integrity_level(readable=facts.readable, searchable=facts.searchable,
                            mapping_ok=facts.mapping_ok,
                            backup_count=facts.counts.backup if facts.backup_valid else None,
                            missing=facts.counts.missing)
    evidence_json = evidence.to_json()
    evidence_json["classification"] = found.to_json()
    comparison = evidence.comparison
    return Assessment(
        alias=evidence.alias, state=found.state, risk=found.risk, action=found.action,
        integrity_level=level, counts=facts.counts, backup=evidence.backup,
        recommendation=recommendation, decision_path=steps, evidence=evidence_json,
        serving=sorted(t.index for t in evidence.targets),
        old_index=found.old_index, new_index=found.new_index,
        missing_ids=list(missing_ids), changed_ids=list(changed_ids),
        current_index=found.current,
        ids_truncated=comparison.truncated if comparison is not None else False,
    )
