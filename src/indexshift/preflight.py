"""Pre-flight checks: is it safe to start migrating this alias?

Each check reads the cluster and hands the data to a pure evaluator that returns a
:class:`Check` with a verdict, the figures behind it and, when it fails, what to do about it.
Only the last step changes anything: it takes a snapshot of the source index and proves it by
restoring it under a temporary name (see :mod:`indexshift.snapshots`). It runs only when every
check before it passed, because a backup of an index that cannot be migrated helps nobody.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from indexshift.cluster import Cluster
from indexshift.errors import AuthFailed, BadInput, IndexshiftError, Rejected
from indexshift.snapshots import (
    BackupVerdict,
    SnapshotInfo,
    ensure_repository,
    index_name_problem,
    take_snapshot,
    verify_snapshot,
)

JSON = dict[str, Any]
LeaseCheck = Callable[[], tuple[bool, str]]

CONNECTIVITY = "connectivity"
NAMING = "naming"
SOURCE_HEALTH = "source health"
DISK_HEADROOM = "disk headroom"
NO_CONCURRENT_MIGRATION = "no concurrent migration"
BACKUP = "backup"

HIGH_WATERMARK = "cluster.routing.allocation.disk.watermark.high"
HIGH_WATERMARK_MAX_HEADROOM = "cluster.routing.allocation.disk.watermark.high.max_headroom"
THRESHOLD_ENABLED = "cluster.routing.allocation.disk.threshold_enabled"


@dataclass(frozen=True)
class Check:
    """One pre-flight verdict; ``fix`` says what to do when it did not pass."""

    name: str
    passed: bool
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "fix": self.fix, "data": self.data}


@dataclass(frozen=True)
class PreflightReport:
    checks: list[Check]
    backup: SnapshotInfo | None = None
    alias: str | None = None
    index: str | None = None
    verification: BackupVerdict | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def recommendation(self) -> str:
        if self.passed:
            return "safe to proceed with the migration"
        return "abort: fix the failed checks before migrating (" + \
            ", ".join(c.name for c in self.failures) + ")"

    def check(self, name: str) -> Check:
        for found in self.checks:
            if found.name == name:
                return found
        raise KeyError(name)

    def to_json(self) -> JSON:
        return {
            "passed": self.passed,
            "recommendation": self.recommendation,
            "alias": self.alias,
            "index": self.index,
            "checks": [c.to_json() for c in self.checks],
            "backup": self.backup.to_json() if self.backup else None,
            "verification": self.verification.to_json() if self.verification else None,
        }


# -- sizes -----------------------------------------------------------------------------------

_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3,
          "gb": 1024**3, "t": 1024**4, "tb": 1024**4, "p": 1024**5, "pb": 1024**5}
_BYTE_SIZE = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*")


def parse_byte_size(text: str) -> int:
    """``500mb`` → bytes, the way the engines read byte-size settings (powers of 1024)."""
    match = _BYTE_SIZE.fullmatch(text.lower())
    if not match or match.group(2) not in _UNITS:
        if match and match.group(2) == "" and match.group(1) in ("0", "-1"):
            return int(match.group(1))
        raise ValueError(f"not a byte size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


# -- the pure evaluators ---------------------------------------------------------------------


def not_checked(name: str, because: str) -> Check:
    return Check(name, False, f"not checked: {because}",
                 fix="fix the failed checks above, then run preflight again")


def evaluate_connectivity(engine: str, health: Mapping[str, Any] | None,
                          error: IndexshiftError | None = None) -> Check:
    if health is None:
        message = error.message if error else "no answer to cluster health"
        return Check(CONNECTIVITY, False, message,
                     fix=(error.hint if error and error.hint else
                          "check --url, credentials and that the cluster is running"))
    status = health.get("status")
    nodes = health.get("number_of_nodes")
    return Check(CONNECTIVITY, True,
                 f"{engine} cluster {health.get('cluster_name')!r} answers: status {status}, "
                 f"{nodes} node(s)",
                 data={"status": status, "nodes": nodes,
                       "data_nodes": health.get("number_of_data_nodes")})


def evaluate_naming(alias: str, targets: Sequence[str], alias_is_index: bool) -> Check:
    """The alias must exist and point at exactly one physical index."""
    problem = index_name_problem(alias)
    if problem:
        return Check(NAMING, False, f"{alias!r} is not a valid alias name: {problem}",
                     fix="name the alias exactly, without wildcards or commas")
    indices = sorted(targets)
    data: JSON = {"alias": alias, "indices": indices}
    if not indices:
        if alias_is_index:
            return Check(NAMING, False, f"{alias!r} is a concrete index, not an alias", data=data,
                         fix="applications must use an alias: reindex into a versioned index and "
                             f"create the alias {alias!r} over it")
        return Check(NAMING, False, f"alias {alias!r} does not exist", data=data,
                     fix="check the name (`indexshift info` lists aliases) or create it with "
                         f'POST _aliases {{"actions":[{{"add":{{"index":"<index>",'
                         f'"alias":"{alias}"}}}}]}}')
    if len(indices) > 1:
        return Check(NAMING, False,
                     f"alias {alias!r} points at {len(indices)} indices: {', '.join(indices)}",
                     data=data,
                     fix="point the alias at exactly one index (one atomic _aliases call) "
                         "before migrating; finish or roll back the earlier migration first")
    return Check(NAMING, True, f"alias {alias!r} → {indices[0]}", data=data)


def evaluate_source_health(index: str, index_row: Mapping[str, Any] | None,
                           health: Mapping[str, Any] | None, doc_count: int | None) -> Check:
    """The source index must be open and not red. ``index_row`` is its ``_cat/indices`` row."""
    if index_row is None:
        return Check(SOURCE_HEALTH, False, f"index {index} is not listed by _cat/indices",
                     fix="check that the index exists and was not deleted meanwhile")
    state = str(index_row.get("status") or "unknown")
    status = str((health or {}).get("status") or index_row.get("health") or "unknown")
    data: JSON = {"index": index, "state": state, "health": status, "docs": doc_count,
                  "primaries": _int_or_none(index_row.get("pri")),
                  "replicas": _int_or_none(index_row.get("rep")),
                  "store_bytes": _int_or_none(index_row.get("store.size"))}
    if state != "open":
        return Check(SOURCE_HEALTH, False, f"{index} is {state}, not open", data=data,
                     fix=f"open it (POST {index}/_open) if it should serve, then run again")
    if status == "red":
        unassigned = (health or {}).get("unassigned_shards")
        return Check(SOURCE_HEALTH, False,
                     f"{index} is red ({unassigned} unassigned shard(s)): some data is not "
                     "reachable", data=data,
                     fix="find out why with GET _cluster/allocation/explain and bring every "
                         "primary back before migrating")
    if status not in ("green", "yellow"):
        return Check(SOURCE_HEALTH, False, f"{index} health is {status}", data=data,
                     fix=f"check GET _cluster/health/{index}")
    note = " (replicas unassigned)" if status == "yellow" else ""
    docs = f", {doc_count:,} docs" if doc_count is not None else ""
    return Check(SOURCE_HEALTH, True, f"{index} open, {status}{note}{docs}", data=data)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Watermark:
    """The high disk watermark: a used ratio (``90%``, ``0.9``) or a minimum free size."""

    raw: str
    used_ratio: float | None = None
    min_free_bytes: int | None = None
    max_headroom_bytes: int | None = None
    enforced: bool = True

    def required_free(self, total_bytes: int) -> int:
        """Bytes that must stay free on a disk of ``total_bytes`` to stay under it."""
        if not self.enforced:
            return 0
        if self.used_ratio is not None:
            free = math.ceil(total_bytes * (1.0 - self.used_ratio))
            # Elasticsearch caps the percentage on large disks by max_headroom.
            if self.max_headroom_bytes is not None and self.max_headroom_bytes >= 0:
                free = min(free, self.max_headroom_bytes)
            return free
        return self.min_free_bytes or 0

    def describe(self) -> str:
        if not self.enforced:
            return "disk thresholds disabled"
        if self.used_ratio is not None:
            return f"high watermark {self.used_ratio * 100:g}% used"
        return f"high watermark {human_bytes(self.min_free_bytes or 0)} free"


def setting(cluster_settings: Mapping[str, Any], key: str) -> Any:
    """A flat setting as in force: transient over persistent over defaults."""
    for scope in ("transient", "persistent", "defaults"):
        values = cluster_settings.get(scope) or {}
        if key in values:
            return values[key]
    return None


def parse_watermark(cluster_settings: Mapping[str, Any]) -> Watermark:
    """The high watermark from ``GET _cluster/settings?include_defaults&flat_settings``."""
    raw = str(setting(cluster_settings, HIGH_WATERMARK) or "90%").strip()
    enforced = str(setting(cluster_settings, THRESHOLD_ENABLED) or "true").lower() != "false"
    headroom_raw = setting(cluster_settings, HIGH_WATERMARK_MAX_HEADROOM)
    headroom = parse_byte_size(str(headroom_raw)) if headroom_raw not in (None, "") else None
    if raw.endswith("%"):
        return Watermark(raw, used_ratio=float(raw[:-1]) / 100.0,
                         max_headroom_bytes=headroom, enforced=enforced)
    try:
        ratio = float(raw)
    except ValueError:
        return Watermark(raw, min_free_bytes=parse_byte_size(raw), enforced=enforced)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"bad high watermark {raw!r}")
    return Watermark(raw, used_ratio=ratio, max_headroom_bytes=headroom, enforced=enforced)


def evaluate_disk(index: str, store_bytes: int | None, allocation: Sequence[Mapping[str, Any]],
                  cluster_settings: Mapping[str, Any], margin: float) -> Check:
    """Room for ``margin`` times the index's store size on the data nodes, under the high watermark.

    ``allocation`` is ``_cat/allocation`` in bytes. Nodes sharing a host share its disk, so each
    host counts once.
    """
    if store_bytes is None:
        return Check(DISK_HEADROOM, False, f"the store size of {index} is unknown",
                     fix=f"check GET {index}/_stats/store")
    try:
        watermark = parse_watermark(cluster_settings)
    except ValueError as exc:
        return Check(DISK_HEADROOM, False, f"cannot read the high disk watermark: {exc}",
                     fix=f"check {HIGH_WATERMARK} in GET _cluster/settings")
    per_host: dict[str, Mapping[str, Any]] = {}
    for row in allocation:
        if row.get("disk.total") in (None, ""):
            continue
        per_host[str(row.get("host") or row.get("ip") or row.get("node"))] = row
    needed = math.ceil(margin * store_bytes)
    if not per_host:
        return Check(DISK_HEADROOM, False, "no data node reports its disk (_cat/allocation)",
                     fix="check that the cluster has data nodes: GET _cat/allocation?v")
    nodes: list[JSON] = []
    free_total = 0
    usable_total = 0
    for host, row in sorted(per_host.items()):
        total = int(row.get("disk.total") or 0)
        free = int(row.get("disk.avail") or 0)
        usable = max(0, free - watermark.required_free(total))
        free_total += free
        usable_total += usable
        nodes.append({"host": host, "node": row.get("node"), "total_bytes": total,
                      "free_bytes": free, "usable_bytes": usable})
    data: JSON = {"index": index, "store_bytes": store_bytes, "margin": margin,
                  "needed_bytes": needed, "free_bytes": free_total,
                  "usable_bytes": usable_total, "watermark": watermark.raw,
                  "watermark_enforced": watermark.enforced, "nodes": nodes}
    detail = (f"needs {margin:g} × {human_bytes(store_bytes)} = {human_bytes(needed)}; "
              f"{human_bytes(usable_total)} usable under the {watermark.describe()} "
              f"({human_bytes(free_total)} free on {len(nodes)} data host(s))")
    if usable_total >= needed:
        return Check(DISK_HEADROOM, True, detail, data=data)
    short = needed - usable_total
    return Check(DISK_HEADROOM, False, detail, data=data,
                 fix=f"free at least {human_bytes(short)} on the data nodes or add data nodes; "
                     "deleting old, already-rolled-back indices is the usual first step")


def evaluate_lease(result: tuple[bool, str] | None,
                   error: IndexshiftError | None = None) -> Check:
    if error is not None:
        return Check(NO_CONCURRENT_MIGRATION, False,
                     f"could not check for a running migration: {error.message}",
                     fix=error.hint or "check the journal index, then run preflight again")
    if result is None:
        return Check(NO_CONCURRENT_MIGRATION, True, "not checked")
    free, detail = result
    if free:
        return Check(NO_CONCURRENT_MIGRATION, True, detail or "no other migration holds the alias")
    return Check(NO_CONCURRENT_MIGRATION, False, detail or "another migration holds the alias",
                 fix="wait for the other migration to finish, or see it with `indexshift status`; "
                     "never run two migrations of one alias at once")


def evaluate_backup(verdict: BackupVerdict, count_before: int, count_after: int) -> Check:
    """The backup check from a verification and the source's count before and after it."""
    info = verdict.snapshot
    data: JSON = {"repository": info.repository, "snapshot": info.name, "state": info.state,
                  "shards_total": info.shards_total, "shards_failed": info.shards_failed,
                  "expected_count": verdict.expected_count,
                  "restored_count": verdict.restored_count,
                  "count_after": count_after}
    if verdict.passed:
        return Check(BACKUP, True, verdict.summary(), data=data)
    detail = f"snapshot {info.repository}/{info.name} is not a proven backup: {verdict.summary()}"
    if count_after != count_before:
        detail += f" (the index took writes meanwhile: {count_before:,} → {count_after:,} docs)"
        fix = "pause writes to the alias (or route them through the gateway) and run again"
    elif any(c.name == "document count" for c in verdict.failures):
        fix = ("the restored copy lacks documents: check the repository's storage, then run "
               "preflight again; do not migrate without a good backup")
    else:
        fix = (f"see GET _snapshot/{info.repository}/{info.name}/_status and the node logs, "
               "fix the repository, then run preflight again")
    return Check(BACKUP, False, detail, fix=fix, data=data)


# -- running them ----------------------------------------------------------------------------


def run_preflight(
    cluster: Cluster,
    alias: str,
    *,
    repository: str | None,
    lease_check: LeaseCheck | None = None,
    take_backup: bool = True,
    margin: float = 1.2,
) -> PreflightReport:
    """Run every check in order and, when all pass, take and verify a backup of the source."""
    if not margin > 0:
        raise BadInput(f"margin must be positive, got {margin}")
    checks: list[Check] = []

    health: JSON | None = None
    try:
        health = cluster.health()
        checks.append(evaluate_connectivity(str(cluster.engine), health))
    except IndexshiftError as exc:
        checks.append(evaluate_connectivity(str(cluster.engine), None, exc))
        checks.extend(not_checked(name, "the cluster does not answer")
                      for name in (NAMING, SOURCE_HEALTH, DISK_HEADROOM,
                                   NO_CONCURRENT_MIGRATION, BACKUP))
        return PreflightReport(checks, None, alias=alias)

    index: str | None = None
    naming = _guarded(NAMING, lambda: _naming(cluster, alias))
    checks.append(naming)
    if naming.passed:
        index = str(naming.data["indices"][0])
        source = index
        row = _index_row(cluster, index)
        checks.append(_guarded(SOURCE_HEALTH, lambda: _source_health(cluster, source, row)))
        store = _int_or_none(row.get("store.size")) if row else None
        checks.append(_guarded(DISK_HEADROOM, lambda: evaluate_disk(
            source, store, cluster.disk(), cluster.cluster_settings(), margin)))
    else:
        checks.extend(not_checked(name, "no single source index")
                      for name in (SOURCE_HEALTH, DISK_HEADROOM))

    try:
        checks.append(evaluate_lease(lease_check() if lease_check else None))
    except IndexshiftError as exc:
        checks.append(evaluate_lease(None, exc))

    if not take_backup:
        checks.append(Check(BACKUP, True, "skipped by request"))
        return PreflightReport(checks, None, alias=alias, index=index)
    if index is None or not all(c.passed for c in checks):
        checks.append(not_checked(BACKUP, "earlier checks failed, so no backup was taken"))
        return PreflightReport(checks, None, alias=alias, index=index)
    check, info, verdict = _backup(cluster, index, repository)
    checks.append(check)
    return PreflightReport(checks, info, alias=alias, index=index, verification=verdict)


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    """A check whose reads failed is a failed check, not a crash of the whole report."""
    try:
        return run()
    except IndexshiftError as exc:
        return Check(name, False, f"could not check: {exc.message}",
                     fix=exc.hint or "check the cluster, then run preflight again")


def _naming(cluster: Cluster, alias: str) -> Check:
    if index_name_problem(alias):
        return evaluate_naming(alias, [], False)
    targets = sorted(cluster.alias_targets(alias))
    alias_is_index = not targets and cluster.index_exists(alias)
    return evaluate_naming(alias, targets, alias_is_index)


def _index_row(cluster: Cluster, index: str) -> JSON | None:
    try:
        rows = cluster.indices(index)
    except IndexshiftError:
        return None
    for row in rows:
        if row.get("index") == index:
            return row
    return None


def _source_health(cluster: Cluster, index: str, row: JSON | None) -> Check:
    if row is None:
        return evaluate_source_health(index, None, None, None)
    try:
        health: JSON | None = cluster.health(index)
    except IndexshiftError:
        health = None  # the _cat/indices row still tells open/closed and its health
    count = cluster.count(index) if row.get("status") == "open" else None
    return evaluate_source_health(index, row, health, count)


def _backup(cluster: Cluster, index: str, repository: str | None
            ) -> tuple[Check, SnapshotInfo | None, BackupVerdict | None]:
    info: SnapshotInfo | None = None
    try:
        chosen = ensure_repository(cluster, repository)
        # Count what a snapshot will hold: a snapshot flushes, so unrefreshed docs are in it.
        # An index that refuses a refresh (blocked) takes no writes to refresh either.
        with contextlib.suppress(Rejected, AuthFailed):
            cluster.refresh(index)
        count_before = cluster.count(index)
        info = take_snapshot(cluster, chosen, [index])
        verdict = verify_snapshot(cluster, info, index, count_before)
        count_after = cluster.count(index)
    except IndexshiftError as exc:
        where = f" (snapshot {info.name})" if info else ""
        return (Check(BACKUP, False, f"backup failed{where}: {exc.message}",
                      fix=exc.hint or "fix the snapshot repository, then run preflight again"),
                info, None)
    return evaluate_backup(verdict, count_before, count_after), verdict.snapshot, verdict
