"""Backups: snapshot repositories, snapshots, their verification, restores and retention.

A backup counts only once it is proven: the snapshot finished as SUCCESS with no failed shard,
it holds the index, and (when asked) a restore of that index under a temporary name holds the
expected number of documents. Restores never go over an existing index or alias: they go to a
new name, and an alias is pointed at it afterwards by the caller.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from indexshift.cluster import Cluster
from indexshift.errors import BadInput, CheckFailed, ClusterError, IndexshiftError, NotFound

log = logging.getLogger(__name__)

JSON = dict[str, Any]

DEFAULT_REPOSITORY = "indexshift-backups"
DEFAULT_SNAPSHOT_TIMEOUT_S = 3600.0
DEFAULT_RESTORE_TIMEOUT_S = 1800.0

SUCCESS = "SUCCESS"
IN_PROGRESS = "IN_PROGRESS"
PARTIAL = "PARTIAL"

_MAX_NAME_BYTES = 255
# A name part must stay short enough that prefix, indices and stamp fit in 255 bytes.
_MAX_INDICES_PART = 180
_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]*")
_INVALID_INDEX_CHARS = set('\\/*?"<>| ,#:')


# -- repositories ----------------------------------------------------------------------------


def choose_repository(registered: Mapping[str, Any], name: str | None) -> str | None:
    """The repository to use; None when none is registered and one should be made.

    Raises BadInput for an unknown ``name`` or, without a name, when several are registered
    (guessing among them could put a backup where nobody looks for it).
    """
    names = sorted(registered)
    listing = ", ".join(names) if names else "none"
    if name is not None:
        if name in registered:
            return name
        raise BadInput(f"snapshot repository {name!r} is not registered (registered: {listing})",
                       hint="pass --repository with one of them, or register it first "
                            "(PUT _snapshot/<name>)")
    if len(names) == 1:
        return names[0]
    if len(names) > 1:
        raise BadInput(f"several snapshot repositories are registered: {listing}",
                       hint="pick one with --repository NAME")
    return None


def common_repo_path(nodes_settings: Mapping[str, Any]) -> str | None:
    """The first ``path.repo`` entry every node shares, from ``GET /_nodes/settings``."""
    nodes = nodes_settings.get("nodes") or {}
    shared: list[str] | None = None
    for node in nodes.values():
        settings = node.get("settings") or {}
        paths = (settings.get("path") or {}).get("repo")
        if paths is None:
            paths = settings.get("path.repo")  # flat_settings form
        if isinstance(paths, str):
            paths = [paths]
        mine = [str(p) for p in (paths or []) if str(p)]
        shared = mine if shared is None else [p for p in shared if p in mine]
    return shared[0] if shared else None


def ensure_repository(cluster: Cluster, name: str | None = None) -> str:
    """The name of a registered repository to back up into, registering one if none exists.

    With ``name`` it must be registered. Without, the only registered repository is used; with
    none, an ``fs`` repository ``indexshift-backups`` is registered under the nodes' shared
    ``path.repo``.
    """
    chosen = choose_repository(cluster.snapshot_repositories(), name)
    if chosen is not None:
        return chosen
    settings = cluster.node_settings("nodes.*.settings.path.repo,nodes.*.name")
    base = common_repo_path(settings)
    if base is None:
        raise CheckFailed(
            "no snapshot repository is registered and the nodes have no shared path.repo",
            hint="set path.repo on every node to a shared folder and restart them, or register "
                 "a repository (fs, s3, ...) with PUT _snapshot/<name> and pass --repository",
        )
    location = f"{base.rstrip('/')}/{DEFAULT_REPOSITORY}"
    try:
        cluster.put_snapshot_repository(DEFAULT_REPOSITORY,
                                        {"type": "fs", "settings": {"location": location}})
    except IndexshiftError as exc:
        raise CheckFailed(
            f"could not register fs repository {DEFAULT_REPOSITORY} at {location}: {exc.message}",
            hint="every node must see path.repo as the same shared folder, writable by the "
                 "engine; or register a repository yourself and pass --repository",
        ) from exc
    log.info("registered snapshot repository %s at %s", DEFAULT_REPOSITORY, location)
    return DEFAULT_REPOSITORY


# -- snapshot records ------------------------------------------------------------------------


def _millis_to_utc(value: Any) -> datetime | None:
    if value in (None, 0, "0", ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000.0, tz=UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot as the repository describes it."""

    repository: str
    name: str
    state: str
    indices: tuple[str, ...]
    shards_total: int
    shards_successful: int
    shards_failed: int
    start_time: datetime | None
    end_time: datetime | None
    include_global_state: bool
    uuid: str | None = None
    failures: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_api(cls, body: Mapping[str, Any], repository: str | None = None) -> SnapshotInfo:
        """Build from one entry of ``GET /_snapshot/<repo>/<name>`` (``snapshots[i]``)."""
        shards = body.get("shards") or {}
        failures = tuple(
            f"{f.get('index')}[{f.get('shard_id')}]: {f.get('reason')}"
            for f in (body.get("failures") or []) if isinstance(f, dict)
        )
        return cls(
            repository=str(body.get("repository") or repository or ""),
            name=str(body["snapshot"]),
            state=str(body.get("state") or "UNKNOWN"),
            indices=tuple(sorted(str(i) for i in (body.get("indices") or []))),
            shards_total=int(shards.get("total") or 0),
            shards_successful=int(shards.get("successful") or 0),
            shards_failed=int(shards.get("failed") or 0),
            start_time=_millis_to_utc(body.get("start_time_in_millis")),
            end_time=_millis_to_utc(body.get("end_time_in_millis")),
            include_global_state=bool(body.get("include_global_state", False)),
            uuid=str(body["uuid"]) if body.get("uuid") else None,
            failures=failures,
        )

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCESS and self.shards_failed == 0

    def to_json(self) -> JSON:
        return {
            "repository": self.repository,
            "name": self.name,
            "state": self.state,
            "indices": list(self.indices),
            "shards": {"total": self.shards_total, "successful": self.shards_successful,
                       "failed": self.shards_failed},
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "include_global_state": self.include_global_state,
            "uuid": self.uuid,
            "failures": list(self.failures),
        }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def snapshot_name(prefix: str, indices: Sequence[str], now: datetime) -> str:
    """``<prefix>-<indices or 'all'>-<utc stamp>``, lowercase and valid as a snapshot name.

    The stamp carries milliseconds so that two backups of one index a second apart differ.
    """
    prefix = prefix.lower()
    if not _PREFIX.fullmatch(prefix):
        raise BadInput(f"bad snapshot prefix {prefix!r}",
                       hint="use lowercase letters, digits, - _ . (not first)")
    moment = _utc(now)
    stamp = f"{moment.strftime('%Y%m%dt%H%M%S')}.{moment.microsecond // 1000:03d}z"
    cleaned = sorted({_clean_name_part(i) for i in indices if i})
    part = "_".join(cleaned) if cleaned else "all"
    if len(part.encode()) > _MAX_INDICES_PART:
        part = f"{cleaned[0][:120]}-and-{len(cleaned) - 1}-more"
    name = f"{prefix}-{part}-{stamp}"
    return name.encode()[:_MAX_NAME_BYTES].decode(errors="ignore")


def _clean_name_part(index: str) -> str:
    # Index names are already lowercase; wildcards and separators never belong in a name.
    return "".join("-" if c in _INVALID_INDEX_CHARS else c for c in index.lower()).lstrip("_-")


def index_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an index name, or None when it can."""
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it is . or .."
    if name != name.lower():
        return "it has uppercase letters"
    if name[0] in "-_+":
        return "it starts with - _ or +"
    bad = sorted(set(name) & _INVALID_INDEX_CHARS)
    if bad:
        return f"it contains {' '.join(repr(c) for c in bad)}"
    if len(name.encode()) > _MAX_NAME_BYTES:
        return "it is longer than 255 bytes"
    return None


# -- taking snapshots ------------------------------------------------------------------------


def _read_snapshot(cluster: Cluster, repository: str, name: str) -> SnapshotInfo | None:
    try:
        found = cluster.snapshots(repository, name)
    except NotFound:
        return None
    for entry in found:
        if entry.get("snapshot") == name:
            return SnapshotInfo.from_api(entry, repository)
    return None


def wait_for_snapshot(cluster: Cluster, repository: str, name: str, *,
                      timeout_s: float = DEFAULT_SNAPSHOT_TIMEOUT_S) -> SnapshotInfo:
    """Poll until the snapshot is no longer IN_PROGRESS; the cluster does the work."""
    deadline = time.monotonic() + timeout_s
    pause = 0.2
    last: SnapshotInfo | None = None
    while True:
        last = _read_snapshot(cluster, repository, name)
        if last is not None and last.state != IN_PROGRESS:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 1.5, 5.0)
    state = last.state if last else "not visible"
    raise CheckFailed(
        f"snapshot {repository}/{name} is still {state} after {timeout_s:.0f}s",
        hint="it keeps running on the cluster; follow it with GET _snapshot/"
             f"{repository}/{name}/_status and verify it once it is done",
    )


def take_snapshot(
    cluster: Cluster,
    repository: str,
    indices: list[str],
    *,
    prefix: str = "indexshift",
    include_global_state: bool = False,
    now: datetime | None = None,
    partial: bool = False,
    timeout_s: float = DEFAULT_SNAPSHOT_TIMEOUT_S,
) -> SnapshotInfo:
    """Snapshot ``indices`` (all when empty) and wait until the snapshot has finished.

    The result may be FAILED or PARTIAL: whether it is good enough is for the caller (and
    :func:`verify_snapshot`) to judge.
    """
    name = snapshot_name(prefix, indices, now or datetime.now(UTC))
    body: JSON = {"include_global_state": include_global_state, "partial": partial,
                  "ignore_unavailable": False}
    if indices:
        body["indices"] = ",".join(indices)
    # Not wait_for_completion: a large snapshot outlasts any HTTP timeout, so poll instead.
    cluster.create_snapshot(repository, name, body, wait=False)
    return wait_for_snapshot(cluster, repository, name, timeout_s=timeout_s)


def emergency_snapshot(cluster: Cluster, repository: str, *, now: datetime | None = None,
                       timeout_s: float = DEFAULT_SNAPSHOT_TIMEOUT_S) -> SnapshotInfo:
    """Everything, with the cluster state, as it is now.

    ``partial`` is on: when things are broken, a snapshot of every healthy shard beats no
    snapshot at all. The state (SUCCESS or PARTIAL) tells which it is.
    """
    return take_snapshot(cluster, repository, [], prefix="emergency",
                         include_global_state=True, now=now, partial=True, timeout_s=timeout_s)


def list_snapshots(cluster: Cluster, repository: str) -> list[SnapshotInfo]:
    """Every snapshot in the repository, newest first."""
    found = [SnapshotInfo.from_api(entry, repository) for entry in cluster.snapshots(repository)]
    return sort_newest_first(found)


def sort_newest_first(snapshots: Sequence[SnapshotInfo]) -> list[SnapshotInfo]:
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(snapshots, key=lambda s: (s.start_time or oldest, s.name), reverse=True)


def newest_success_holding(snapshots: Sequence[SnapshotInfo],
                           index_names: Sequence[str]) -> SnapshotInfo | None:
    """The newest SUCCESS snapshot without failed shards that holds every one of the indices."""
    wanted = set(index_names)
    for snapshot in sort_newest_first(snapshots):
        if snapshot.succeeded and wanted <= set(snapshot.indices):
            return snapshot
    return None


def latest_success_holding(cluster: Cluster, repository: str,
                           index_names: list[str]) -> SnapshotInfo | None:
    return newest_success_holding(list_snapshots(cluster, repository), index_names)


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupCheck:
    name: str
    passed: bool
    detail: str
    observed: Any = None
    expected: Any = None

    def to_json(self) -> JSON:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "observed": self.observed, "expected": self.expected}


@dataclass(frozen=True)
class BackupVerdict:
    """Whether a snapshot is a usable backup of ``index``, check by check."""

    snapshot: SnapshotInfo
    index: str
    checks: tuple[BackupCheck, ...]
    expected_count: int | None = None
    restored_count: int | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[BackupCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            count = (f", {self.restored_count:,} docs restored"
                     if self.restored_count is not None else "")
            return f"snapshot {self.snapshot.name} is a verified backup of {self.index}{count}"
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failures)

    def to_json(self) -> JSON:
        return {"passed": self.passed, "index": self.index,
                "snapshot": self.snapshot.to_json(), "expected_count": self.expected_count,
                "restored_count": self.restored_count,
                "checks": [c.to_json() for c in self.checks]}


def evaluate_snapshot(info: SnapshotInfo | None, index: str,
                      index_shards: Mapping[str, Any] | None) -> list[BackupCheck]:
    """The checks that need no restore: finished well, holds the index, every shard stored.

    ``index_shards`` is ``shards_stats`` of the index from ``_snapshot/.../_status`` (None
    when the status could not be read).
    """
    if info is None:
        return [BackupCheck("present", False, "the snapshot is not in the repository")]
    checks = [
        BackupCheck("state", info.state == SUCCESS, f"state {info.state}",
                    observed=info.state, expected=SUCCESS),
        BackupCheck("no failed shards", info.shards_failed == 0,
                    f"{info.shards_failed} failed shard(s)"
                    + (f": {info.failures[0]}" if info.failures else ""),
                    observed=info.shards_failed, expected=0),
        BackupCheck("all shards successful",
                    info.shards_total > 0 and info.shards_successful == info.shards_total,
                    f"{info.shards_successful} of {info.shards_total} shards successful",
                    observed=info.shards_successful, expected=info.shards_total),
        BackupCheck("holds the index", index in info.indices,
                    f"{index} is {'' if index in info.indices else 'not '}in the snapshot "
                    f"({len(info.indices)} index(es))", observed=index in info.indices,
                    expected=True),
    ]
    if index in info.indices:
        if index_shards is None:
            checks.append(BackupCheck("index shards stored", False,
                                      f"the status of {index} in the snapshot could not be read"))
        else:
            done = int(index_shards.get("done") or 0)
            total = int(index_shards.get("total") or 0)
            checks.append(BackupCheck("index shards stored", total > 0 and done == total,
                                      f"{done} of {total} shards of {index} stored",
                                      observed=done, expected=total))
    return checks


def evaluate_count(restored: int, expected: int | None) -> BackupCheck:
    if expected is None:
        return BackupCheck("document count", True,
                           f"{restored:,} documents restored (no expected count given)",
                           observed=restored)
    return BackupCheck("document count", restored == expected,
                       f"{restored:,} documents restored, {expected:,} expected",
                       observed=restored, expected=expected)


def _index_shard_stats(cluster: Cluster, info: SnapshotInfo, index: str) -> JSON | None:
    try:
        body = cluster.snapshot_status(info.repository, info.name)
    except IndexshiftError as exc:
        log.warning("could not read the status of %s: %s", info.name, exc)
        return None
    for entry in body.get("snapshots") or []:
        stats = ((entry.get("indices") or {}).get(index) or {}).get("shards_stats")
        if isinstance(stats, dict):
            return stats
    return None


def _temporary_name(index: str, purpose: str) -> str:
    suffix = f"-{purpose}-{uuid.uuid4().hex[:8]}"
    room = _MAX_NAME_BYTES - len(suffix.encode())
    return index.encode()[:room].decode(errors="ignore") + suffix


def _java_replacement(literal: str) -> str:
    # rename_replacement is a java.util.regex replacement: $ and \ are special there.
    return literal.replace("\\", "\\\\").replace("$", "\\$")


def _restore_body(index: str, new_name: str, index_settings: JSON | None) -> JSON:
    body: JSON = {
        "indices": index,
        "include_global_state": False,
        # The snapshot remembers the aliases of the index; restoring them would put the copy
        # behind the live alias next to the index it came from.
        "include_aliases": False,
        "rename_pattern": "(.+)",
        "rename_replacement": _java_replacement(new_name),
    }
    if index_settings:
        body["index_settings"] = index_settings
    return body


@dataclass(frozen=True)
class PrimariesActive:
    """How many primary shards of an index are active (restored, readable and searchable)."""

    index: str
    active: int
    total: int | None  # None while the index is not in the cluster state
    health: str | None

    @property
    def done(self) -> bool:
        return self.total is not None and self.total > 0 and self.active >= self.total

    def text(self) -> str:
        return (f"{self.active} of {'?' if self.total is None else self.total} primary "
                f"shard(s) active, health {self.health or 'unknown'}")

    def to_json(self) -> JSON:
        return {"primaries": self.total, "active_primaries": self.active,
                "health": self.health}


def primaries_active(health: Mapping[str, Any], index: str) -> PrimariesActive:
    """Read ``GET _cluster/health/<index>?level=indices``.

    The status alone says nothing about whether the data is there: a primary still being
    restored from a snapshot counts as yellow, not red. Only active primaries can be read.
    """
    entry = (health.get("indices") or {}).get(index)
    if not isinstance(entry, Mapping):
        return PrimariesActive(index, 0, None, str(health.get("status") or "") or None)
    return PrimariesActive(index, int(entry.get("active_primary_shards") or 0),
                           int(entry.get("number_of_shards") or 0),
                           str(entry.get("status") or "") or None)


def wait_for_primaries(cluster: Cluster, index: str, *,
                       timeout_s: float = DEFAULT_RESTORE_TIMEOUT_S) -> PrimariesActive:
    """Wait until every primary shard of ``index`` is active; raise CheckFailed at the deadline.

    Polled with a growing pause: a small restore is done in well under a second, a large one
    may take many minutes. Health on an index the cluster state does not hold answers 408.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    known = False
    while True:
        try:
            health = cluster.health(index, level="indices", timeout="1s")
        except ClusterError as exc:
            if exc.status != 408:
                raise
            health = {}
        seen = primaries_active(health, index)
        if seen.done:
            return seen
        if seen.total is None and known:
            raise CheckFailed(f"{index} was deleted before its primary shards became active",
                              hint="someone removed it, or the restore was cancelled; "
                                   "restore it again")
        known = known or seen.total is not None
        if time.monotonic() >= deadline:
            total = "?" if seen.total is None else seen.total
            raise CheckFailed(
                f"{index} has {seen.active} of {total} primary shard(s) active after "
                f"{timeout_s:.0f}s (health {seen.health or 'unknown'})",
                hint=f"see why with GET _cluster/allocation/explain; delete {index} before "
                     "retrying",
            )
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 2.0)


def verify_snapshot(cluster: Cluster, info: SnapshotInfo, index: str,
                    expected_count: int | None, *, restore_check: bool = True,
                    timeout_s: float = DEFAULT_RESTORE_TIMEOUT_S) -> BackupVerdict:
    """Prove that ``info`` is a complete backup of ``index`` holding ``expected_count`` docs.

    The snapshot is read again from the repository (not trusted from ``info``). With
    ``restore_check`` the index is restored under a temporary name without replicas or
    aliases, counted and deleted again, whatever happens.
    """
    fresh = _read_snapshot(cluster, info.repository, info.name)
    shard_stats = (_index_shard_stats(cluster, fresh, index)
                   if fresh is not None and index in fresh.indices else None)
    checks = evaluate_snapshot(fresh, index, shard_stats)
    snapshot = fresh or info
    if not restore_check:
        return BackupVerdict(snapshot, index, tuple(checks), expected_count, None)
    if not all(c.passed for c in checks):
        checks.append(BackupCheck("restore", False,
                                  "not attempted: the snapshot itself failed the checks above"))
        return BackupVerdict(snapshot, index, tuple(checks), expected_count, None)

    temp = _temporary_name(index, "verify")
    while cluster.index_exists(temp):
        temp = _temporary_name(index, "verify")
    restored: int | None = None
    cleanup_problem: str | None = None
    try:
        cluster.restore_snapshot(snapshot.repository, snapshot.name,
                                 _restore_body(index, temp,
                                               {"index.number_of_replicas": 0}),
                                 wait=False)
        # Counting needs every primary active; the copy has no replicas to wait for.
        try:
            seen = wait_for_primaries(cluster, temp, timeout_s=timeout_s)
        except CheckFailed as exc:
            checks.append(BackupCheck("restore", False, f"restored as {temp}: {exc.message}",
                                      observed="not restored", expected="restored"))
        else:
            checks.append(BackupCheck("restore", True, f"restored as {temp}: {seen.text()}",
                                      observed="restored", expected="restored"))
            restored = cluster.count(temp)
            checks.append(evaluate_count(restored, expected_count))
    finally:
        try:
            if cluster.index_exists(temp):
                cluster.delete_index(temp)
        except IndexshiftError as exc:
            cleanup_problem = f"could not delete {temp}: {exc.message}; delete it by hand"
            log.warning(cleanup_problem)
    if cleanup_problem:
        checks.append(BackupCheck("temporary index removed", False, cleanup_problem))
    return BackupVerdict(snapshot, index, tuple(checks), expected_count, restored)


# -- restore ---------------------------------------------------------------------------------


def restore_as(cluster: Cluster, repository: str, snapshot: str | SnapshotInfo, index: str,
               new_name: str, *, index_settings: JSON | None = None,
               timeout_s: float = DEFAULT_RESTORE_TIMEOUT_S) -> PrimariesActive:
    """Restore ``index`` from ``snapshot`` as the new index ``new_name``, without its aliases.

    Never restores over anything: ``new_name`` must be free (no index, no alias). Returns once
    every primary shard of the new index is active, so its documents can be read at once;
    raises CheckFailed when that does not happen within ``timeout_s``.
    """
    snapshot_name_ = snapshot.name if isinstance(snapshot, SnapshotInfo) else snapshot
    problem = index_name_problem(new_name)
    if problem:
        raise BadInput(f"cannot restore as {new_name!r}: {problem}",
                       hint="pick a lowercase name without \\ / * ? \" < > | , # : or spaces")
    if cluster.index_exists(new_name) or cluster.alias_targets(new_name):
        raise BadInput(f"{new_name!r} already exists; a restore never replaces anything",
                       hint="restore under a new name and point the alias at it")
    info = _read_snapshot(cluster, repository, snapshot_name_)
    if info is None:
        raise BadInput(f"snapshot {snapshot_name_!r} is not in repository {repository!r}",
                       hint=f"list them with GET _snapshot/{repository}/_all")
    if index not in info.indices:
        raise BadInput(f"snapshot {snapshot_name_!r} does not hold {index!r}",
                       hint=f"it holds: {', '.join(info.indices) or 'no index'}")
    cluster.restore_snapshot(repository, snapshot_name_,
                             _restore_body(index, new_name, index_settings), wait=False)
    # Not health yellow: a primary still being restored counts as yellow, and counting the
    # index then answers 503 or a partial total.
    return wait_for_primaries(cluster, new_name, timeout_s=timeout_s)


@dataclass(frozen=True)
class RestoreSource:
    """The snapshot an index was restored from, as its shards' last recovery tells."""

    repository: str
    snapshot: str
    index: str  # the index inside the snapshot

    def to_json(self) -> JSON:
        return {"repository": self.repository, "snapshot": self.snapshot, "index": self.index}


def read_restore_source(recovery: Mapping[str, Any], index: str) -> RestoreSource | None:
    """From ``GET /<index>/_recovery``: the snapshot every primary of ``index`` was restored
    from, or None when a primary was not (or no longer, after a node restart) restored from
    one snapshot."""
    shards = ((recovery.get(index) or {}).get("shards") or [])
    sources: set[tuple[str, str, str]] = set()
    for shard in shards:
        if not isinstance(shard, Mapping) or shard.get("primary") is not True:
            continue
        source = shard.get("source") or {}
        if shard.get("type") != "SNAPSHOT" or not source.get("snapshot"):
            return None
        sources.add((str(source.get("repository") or ""), str(source["snapshot"]),
                     str(source.get("index") or "")))
    if len(sources) != 1:
        return None
    repository, snapshot_, source_index = sources.pop()
    return RestoreSource(repository, snapshot_, source_index) if repository and \
        source_index else None


def restore_source(cluster: Cluster, index: str) -> RestoreSource | None:
    """The snapshot ``index`` was restored from, when the cluster still knows (read-only)."""
    body = cluster.recovery(index, filter_path="*.shards.type,*.shards.primary,*.shards.source")
    return read_restore_source(body, index)


def delete_snapshot(cluster: Cluster, info: SnapshotInfo) -> None:
    with contextlib.suppress(NotFound):
        cluster.delete_snapshot(info.repository, info.name)


# -- retention -------------------------------------------------------------------------------


def plan_snapshot_retention(
    snapshots: Sequence[SnapshotInfo],
    now: datetime,
    expire_after: timedelta,
    min_count: int,
    max_count: int,
) -> list[SnapshotInfo]:
    """Which snapshots to delete, oldest first.

    SUCCESS snapshots: the ``min_count`` newest are kept whatever their age, at most
    ``max_count`` are kept, and beyond ``min_count`` those older than ``expire_after`` go.
    The newest SUCCESS snapshot is never deleted. Snapshots still in progress, and those
    whose start time is unknown, are never deleted. FAILED, INCOMPATIBLE and PARTIAL ones go
    once expired, except a PARTIAL newer than the newest SUCCESS: it may be the most recent
    copy of some data.
    """
    if min_count < 0 or max_count < 1 or max_count < min_count:
        raise BadInput(f"bad retention: min_count {min_count}, max_count {max_count}",
                       hint="need 0 <= min_count <= max_count and max_count >= 1")
    if expire_after <= timedelta(0):
        raise BadInput("bad retention: expire_after must be positive")
    moment = _utc(now)
    dated = [s for s in snapshots if s.start_time is not None]
    successes = sort_newest_first([s for s in dated if s.state == SUCCESS])
    newest_success_start = successes[0].start_time if successes else None
    keep_at_least = max(min_count, 1)

    def expired(snapshot: SnapshotInfo) -> bool:
        assert snapshot.start_time is not None
        return moment - snapshot.start_time > expire_after

    doomed: list[SnapshotInfo] = []
    for position, snapshot in enumerate(successes):
        if position < keep_at_least:
            continue
        if position >= max_count or expired(snapshot):
            doomed.append(snapshot)
    for snapshot in dated:
        if snapshot.state in (SUCCESS, IN_PROGRESS) or not expired(snapshot):
            continue
        assert snapshot.start_time is not None
        if (snapshot.state == PARTIAL and
                (newest_success_start is None or snapshot.start_time > newest_success_start)):
            continue
        doomed.append(snapshot)
    return list(reversed(sort_newest_first(doomed)))
