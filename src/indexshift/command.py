"""One plain function per user verb. The CLI is a thin shell over these.

Each verb takes validated inputs, does its work through the components, and returns plain data
(dicts and lists) that the CLI renders for people or prints as JSON for scripts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from indexshift import assess as assess_module
from indexshift import copier, incident, migrator, retention, sampledata, sandbox, snapshots
from indexshift import diff as diff_module
from indexshift import events as events_module
from indexshift import recover as recover_module
from indexshift import spec as spec_module
from indexshift import validator as validator_module
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.errors import (
    BadInput,
    CheckFailed,
    ClusterError,
    EnvironmentProblem,
    IndexshiftError,
)
from indexshift.journal import Journal, Phase, RunRecord, RunStatus

Progress = Callable[[str], None]
Report = dict[str, Any]


def _quiet(_: str) -> None:
    return None


# -- info ------------------------------------------------------------------------------------


def info(config: ConnectionConfig, alias: str | None = None) -> Report:
    """What the cluster is and how it is doing; with ``alias``, what that alias serves."""
    with Cluster.connect(config) as cluster:
        health = cluster.health()
        nodes = cluster.nodes()
        disk = cluster.disk()
        indices = cluster.indices()
        aliases = cluster.aliases()
        report: Report = {
            "url": config.url,
            "engine": cluster.engine.engine,
            "version": cluster.engine.version,
            "cluster_name": cluster.root.get("cluster_name"),
            "health": health.get("status"),
            "nodes": {
                "count": int(health.get("number_of_nodes", len(nodes))),
                "names": sorted(str(n.get("name")) for n in nodes),
            },
            "shards": {
                "active": health.get("active_shards"),
                "unassigned": health.get("unassigned_shards"),
            },
            "disk": _disk_summary(disk),
            "indices": sum(1 for i in indices if not str(i.get("index", "")).startswith(".")),
            "aliases": sum(1 for a in aliases if not a.startswith(".")),
        }
        if alias is not None:
            report["alias"] = _alias_report(cluster, alias, indices)
        return report


def _disk_summary(rows: list[dict[str, Any]]) -> Report:
    # Nodes on one host share its disk (a local multi-node sandbox): count each host once.
    per_host = {str(r.get("host") or r.get("ip") or r.get("node")): r for r in rows}
    used = sum(int(r.get("disk.used") or 0) for r in per_host.values())
    total = sum(int(r.get("disk.total") or 0) for r in per_host.values())
    return {
        "used_bytes": used,
        "total_bytes": total,
        "used_percent": round(100.0 * used / total, 1) if total else None,
    }


def _alias_report(cluster: Cluster, alias: str, indices: list[dict[str, Any]]) -> Report:
    targets = cluster.alias_targets(alias)
    if not targets:
        if cluster.index_exists(alias):
            raise BadInput(f"{alias!r} is a concrete index, not an alias",
                           hint="indexshift manages aliases; see the README on adopting an index")
        raise BadInput(f"alias {alias!r} does not exist",
                       hint="list aliases with `indexshift info` or seed one (`sandbox seed`)")
    by_name = {str(row.get("index")): row for row in indices}
    serving = []
    for index, props in sorted(targets.items()):
        row = by_name.get(index, {})
        mapping = cluster.mapping(index).get(index, {}).get("mappings", {})
        serving.append({
            "index": index,
            "is_write_index": props.get("is_write_index"),
            "health": row.get("health"),
            "status": row.get("status"),
            "docs": cluster.count(index),
            "size_bytes": int(row.get("store.size") or 0),
            "primaries": int(row.get("pri") or 0),
            "replicas": int(row.get("rep") or 0),
            "fields": {name: spec.get("type", "object")
                       for name, spec in sorted(mapping.get("properties", {}).items())},
        })
    return {"name": alias, "indices": serving}


# -- sandbox ---------------------------------------------------------------------------------


def sandbox_up(request: sandbox.UpRequest, progress: Progress = _quiet) -> Report:
    """Install (once) and start a local cluster, then wait until it is yellow or green."""
    request = request.validated()
    existing = sandbox.load_state(request.name)
    if existing is not None:
        alive = [n for n in existing.nodes if sandbox.process_group_alive(n.pid)]
        if alive:
            if existing.engine != request.engine or len(existing.nodes) != request.nodes:
                raise BadInput(
                    f"sandbox {request.name!r} already runs {existing.engine} "
                    f"{existing.version} with {len(existing.nodes)} node(s)",
                    hint="stop it first with `indexshift sandbox down`",
                )
            progress(f"sandbox {request.name!r} is already running")
            return _sandbox_report(existing, _wait_ready(existing, request.wait_s))
        # A stale state file from a machine restart or a crash: nothing of it runs any more.
        sandbox.stop(existing, wipe=False)
    release = sandbox.find_release(request.engine, request.version)
    java = sandbox.find_java(release.min_java)
    engine_dir = sandbox.install_engine(release, progress)
    state = sandbox.start(request, release, java, engine_dir, progress)
    progress(f"waiting for {state.url} to turn yellow or green")
    try:
        health = _wait_ready(state, request.wait_s)
    except IndexshiftError:
        sandbox.stop(state, wipe=False)
        raise
    return _sandbox_report(state, health)


def _wait_ready(state: sandbox.SandboxState, wait_s: float) -> Report:
    config = ConnectionConfig(url=state.url, timeout_s=5)
    deadline = time.monotonic() + wait_s
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        for node in state.nodes:
            if not sandbox.process_group_alive(node.pid):
                raise EnvironmentProblem(
                    f"node {node.name} of sandbox {state.name!r} exited while starting: "
                    f"{sandbox.node_failure(node)}",
                    hint=f"see its log {node.console_log}",
                )
        try:
            with Cluster.connect(config) as cluster:
                health = cluster.health(wait_for_status="yellow",
                                        wait_for_nodes=str(len(state.nodes)), timeout="2s")
                if not health.get("timed_out") and health.get("status") in ("yellow", "green"):
                    return health
                last_problem = f"health {health.get('status')}, " \
                               f"{health.get('number_of_nodes')} node(s)"
        except ClusterError as exc:
            last_problem = exc.message
        time.sleep(1.0)
    raise EnvironmentProblem(
        f"sandbox {state.name!r} did not become ready in {wait_s:.0f}s ({last_problem})",
        hint=f"see the logs: `indexshift sandbox logs --name {state.name}`",
    )


def _sandbox_report(state: sandbox.SandboxState, health: Report | None) -> Report:
    return {
        "name": state.name,
        "url": state.url,
        "engine": state.engine,
        "version": state.version,
        "user": state.user,
        "heap": state.heap,
        "health": (health or {}).get("status"),
        "data_path": str(Path(state.root) / "nodes"),
        "snapshot_path": state.snapshot_path,
        "started_at": state.started_at,
        "nodes": [
            {"name": n.name, "pid": n.pid, "http_port": n.http_port,
             "transport_port": n.transport_port,
             "running": sandbox.process_group_alive(n.pid), "log": n.console_log}
            for n in state.nodes
        ],
    }


def sandbox_down(name: str, *, wipe: bool = False) -> Report:
    state = sandbox.load_state(name)
    if state is None:
        root = sandbox.sandbox_dir(name)
        if wipe and root.exists():
            sandbox.stop(sandbox.SandboxState(
                name=name, engine="opensearch", version="", url="", user="", root=str(root),
                snapshot_path="", started_at="", heap=""), wipe=True)
        return {"name": name, "stopped": [], "wiped": wipe, "was_running": False}
    stopped = sandbox.stop(state, wipe=wipe)
    return {"name": name, "stopped": stopped, "wiped": wipe, "was_running": bool(stopped)}


def sandbox_status(name: str) -> Report:
    state = sandbox.load_state(name)
    if state is None:
        return {"name": name, "running": False, "nodes": []}
    health: Report | None = None
    try:
        with Cluster.connect(ConnectionConfig(url=state.url, timeout_s=3)) as cluster:
            health = cluster.health()
    except ClusterError:
        health = None
    report = _sandbox_report(state, health)
    report["running"] = any(n["running"] for n in report["nodes"])
    report["reachable"] = health is not None
    return report


def sandbox_logs(name: str, node: str | None = None, lines: int = 50) -> Report:
    state = sandbox.load_state(name)
    if state is None:
        raise BadInput(f"no sandbox named {name!r} has been started",
                       hint="start one with `indexshift sandbox up`")
    chosen = [n for n in state.nodes if node in (None, n.name)]
    if not chosen:
        raise BadInput(f"sandbox {name!r} has no node {node!r}",
                       hint=f"nodes: {', '.join(n.name for n in state.nodes)}")
    cluster_name = f"indexshift-sandbox-{state.name}"
    out = []
    for n in chosen:
        path = sandbox.main_log(n, cluster_name)
        out.append({"node": n.name, "path": str(path), "lines": sandbox.tail(path, lines)})
    return {"name": name, "logs": out}


# -- seed ------------------------------------------------------------------------------------

SEED_BATCH = 2_000
_VERSIONED = r"-v\d+-\d{8}t\d{6}$"


def sandbox_seed(
    config: ConnectionConfig,
    *,
    alias: str = "file-index",
    docs: int = 10_000,
    seed: int = 42,
    corpus: Path = Path("/usr"),
    embedding_dims: int = 0,
    shards: int = 1,
    replicas: int | None = None,
    replace: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Report:
    """Create ``alias`` → ``<alias>-v1-<timestamp>`` holding ``docs`` file documents."""
    if docs < 0:
        raise BadInput("--docs must be 0 or more")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", alias):
        raise BadInput(f"bad alias {alias!r}", hint="use lowercase letters, digits, - _ .")
    if not 0 <= embedding_dims <= 4096:
        raise BadInput("--embedding-dims must be 0..4096")
    files = sampledata.walk_corpus(corpus)
    with Cluster.connect(config) as cluster:
        existing = cluster.alias_targets(alias)
        if existing and not replace:
            raise BadInput(
                f"alias {alias!r} already exists (→ {', '.join(sorted(existing))})",
                hint="pass --replace to drop its seeded indices and seed again",
            )
        foreign = [i for i in existing if not re.fullmatch(re.escape(alias) + _VERSIONED, i)]
        if foreign:
            raise BadInput(f"alias {alias!r} points at {', '.join(foreign)}, not seeded by us",
                           hint="--replace only drops indices named <alias>-v<N>-<timestamp>")
        if not existing and cluster.index_exists(alias):
            raise BadInput(f"{alias!r} is a concrete index; pick another --alias")
        node_count = int(cluster.health().get("number_of_nodes", 1))
        final_replicas = replicas if replicas is not None else (0 if node_count == 1 else 1)
        # A seed within the same second as the last one would reuse its index name: take the
        # next free second, so the old index stays whole until the alias has moved.
        when = datetime.now(UTC)
        index = spec_module.target_index_name(alias, 1, when)
        while cluster.index_exists(index):
            when += timedelta(seconds=1)
            index = spec_module.target_index_name(alias, 1, when)
        cluster.create_index(index, {
            # Bulk-load settings: no replicas, no refresh, no fsync per request. The alias is
            # only added after the load is verified, so nothing reads the index before then.
            "settings": {"index": {"number_of_shards": shards, "number_of_replicas": 0,
                                   "refresh_interval": "-1",
                                   "translog": {"durability": "async"}}},
            "mappings": sampledata.V1_MAPPINGS,
        })
        started = time.monotonic()
        failed = 0
        first_error: str | None = None
        generator = sampledata.generate_docs(files, docs, seed, embedding_dims)
        batches = copier.chunks(generator, SEED_BATCH)
        done = 0
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                for result in pool.map(lambda b: cluster.bulk_index(index, b), batches):
                    done += result.sent
                    failed += result.failed
                    first_error = first_error or result.first_error
                    progress(done, docs)
            if failed:
                raise CheckFailed(f"{failed} of {docs} documents were rejected: {first_error}")
            cluster.put_settings(index, {"index": {"refresh_interval": "1s",
                                                   "number_of_replicas": final_replicas,
                                                   "translog": {"durability": "request"}}})
            cluster.refresh(index)
            load_s = time.monotonic() - started
            loaded = cluster.count(index)
            if loaded != docs:
                raise CheckFailed(f"loaded {loaded} documents into {index}, expected {docs}")
        except (IndexshiftError, KeyboardInterrupt):
            # The alias was never pointed at the half-loaded index: drop it, change nothing.
            cluster.delete_index(index)
            raise
        actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}}
                                         for old in existing]
        actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
        cluster.update_aliases(actions)
        for old in existing:
            cluster.delete_index(old)
        return {
            "alias": alias,
            "index": index,
            "docs": loaded,
            "seconds": round(load_s, 2),
            "docs_per_second": round(docs / load_s) if load_s > 0 else None,
            "replaced": sorted(existing),
            "corpus": str(corpus),
            "corpus_files": len(files),
            "seed": seed,
        }


# -- migrations ------------------------------------------------------------------------------


def _pending_for(cluster: Cluster, directory: Path, alias: str | None,
                 to_version: int | None) -> list[tuple[str, list[spec_module.Migration]]]:
    """Per alias, the migrations newer than the version its index carries."""
    migrations = spec_module.up_to(spec_module.load_migrations(directory, alias), to_version)
    if not migrations:
        raise BadInput(f"no migration files in {directory}" + (f" for alias {alias}"
                                                                 if alias else ""),
                       hint="create one with `indexshift new NAME`")
    by_alias: dict[str, list[spec_module.Migration]] = {}
    for migration in migrations:
        by_alias.setdefault(migration.spec.alias, []).append(migration)
    result = []
    for name, items in sorted(by_alias.items()):
        applied = migrator.applied_version(cluster, name)
        result.append((name, [m for m in items if m.version > applied]))
    return result


def plan(config: ConnectionConfig, directory: Path, alias: str | None = None,
         to_version: int | None = None) -> Report:
    """Every step ``migrate`` would take now, read from the live cluster; changes nothing."""
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        aliases = []
        for name, pending in _pending_for(cluster, directory, alias, to_version):
            blue = migrator.current_blue(cluster, name)
            unfinished = journal.latest_run(name)
            aliases.append({
                "alias": name,
                "serving": blue,
                "docs": cluster.count(blue),
                "unfinished_run": unfinished.value.run_id if unfinished and
                unfinished.value.status in (RunStatus.RUNNING, RunStatus.HALTED) else None,
                "migrations": [migrator.plan_steps(m, blue) for m in pending],
            })
        return {"aliases": aliases}


def _refuse_unfinished(journal: Journal, alias: str) -> None:
    latest = journal.latest_run(alias)
    if latest is not None and latest.value.status in (RunStatus.RUNNING, RunStatus.HALTED):
        run = latest.value
        raise CheckFailed(
            f"alias {alias} has an unfinished run {run.run_id} at {run.phase} ({run.status}"
            f"{': ' + run.error if run.error else ''})",
            hint=f"continue it with `indexshift resume {alias}` or undo it with "
                 f"`indexshift rollback {alias}`",
        )


def migrate(config: ConnectionConfig, directory: Path, options: migrator.RunOptions, *,
            alias: str | None = None, to_version: int | None = None) -> Report:
    """Run every pending migration, alias by alias, each through all its phases."""
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        runs = []
        for name, pending in _pending_for(cluster, directory, alias, to_version):
            for migration in pending:
                _refuse_unfinished(journal, name)
                record = migrator.start_run(cluster, journal, migration, options)
                runs.append(record.to_json())
                if record.status != RunStatus.COMPLETED:
                    return {"runs": runs, "completed": False}
        return {"runs": runs, "completed": True}


def _migration_of_run(directory: Path, run: RunRecord) -> spec_module.Migration:
    for migration in spec_module.load_migrations(directory, run.alias):
        if migration.version == run.version:
            return migration
    raise BadInput(f"run {run.run_id} needs migration v{run.version} ({run.spec_name}) and "
                   f"{directory} has no such file", hint="pass --dir with the right folder")


def _latest(journal: Journal, alias: str) -> RunRecord:
    latest = journal.latest_run(alias)
    if latest is None:
        raise BadInput(f"no run recorded for alias {alias}",
                       hint="start one with `indexshift migrate`")
    return latest.value


def resume(config: ConnectionConfig, directory: Path, alias: str,
           options: migrator.RunOptions) -> Report:
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        migration = _migration_of_run(directory, _latest(journal, alias))
        return migrator.resume_run(cluster, journal, migration, options).to_json()


def cutover_now(config: ConnectionConfig, directory: Path, alias: str,
                options: migrator.RunOptions) -> Report:
    """Finish a run that waits after validation (``--postpone-cutover``)."""
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        run = _latest(journal, alias)
        if run.phase != Phase.VALIDATED:
            raise CheckFailed(f"run {run.run_id} of {alias} is at {run.phase}, not waiting "
                              "for the switch", hint=f"see `indexshift status {alias}`")
        migration = _migration_of_run(directory, run)
        return migrator.resume_run(cluster, journal, migration, options).to_json()


def status(config: ConnectionConfig, alias: str) -> Report:
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        run = _latest(journal, alias)
        report = run.to_json()
        if run.task_id and run.phase in (Phase.REINDEX_STARTED, Phase.REINDEX_50):
            live = copier.read_progress(cluster, run.task_id)
            report["task"] = live.to_json() if live else {"gone": True}
            if live:
                report["progress"] = live.to_json()
        report["serving"] = sorted(cluster.alias_targets(alias))
        return report


def throttle(config: ConnectionConfig, alias: str, requests_per_second: float) -> Report:
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        latest = journal.latest_run(alias)
        if latest is None or latest.value.task_id is None:
            raise BadInput(f"alias {alias} has no copy task to throttle")
        live = copier.read_progress(cluster, latest.value.task_id)
        if live is None or live.completed:
            raise CheckFailed(f"the copy task {latest.value.task_id} is not running")
        # The run record belongs to the process driving the run: writing it here would make
        # that process lose its next compare-and-set. The task itself carries the new rate.
        cluster.rethrottle_reindex(latest.value.task_id, requests_per_second)
        return {"alias": alias, "task_id": latest.value.task_id,
                "requests_per_second": requests_per_second}


def rollback(config: ConnectionConfig, alias: str, *, dry_run: bool, catch_up: bool,
             reason: str = "rolled back by an operator") -> Report:
    with Cluster.connect(config) as cluster:
        journal = Journal(cluster)
        plan_, current = migrator.rollback_plan(cluster, journal, alias, catch_up=catch_up)
        report: Report = {"alias": alias, "run_id": current.value.run_id, "plan": plan_.note,
                          "actions": plan_.actions, "dry_run": dry_run}
        if not dry_run:
            done = migrator.rollback(cluster, journal, alias, reason=reason, catch_up=catch_up)
            report["status"] = str(done.value.status)
        return report


def validate(config: ConnectionConfig, directory: Path, alias: str) -> Report:
    """Run the validation suite of the alias's latest run (green against blue) alone."""
    with Cluster.connect(config) as cluster:
        run = _latest(Journal(cluster), alias)
        if run.blue is None or run.green is None or not cluster.index_exists(run.green):
            raise CheckFailed(f"run {run.run_id} has no new index to validate yet")
        spec = _migration_of_run(directory, run).spec
        report = validator_module.validate(
            cluster, run.blue, run.green, spec.validation,
            diff=lambda a, b: diff_module.diff_indices(cluster, a, b,
                                                       ids_only=spec.transform is not None),
            compare_content=spec.transform is None)
        return {"alias": alias, "blue": run.blue, "green": run.green, **report.to_json()}


def diff(config: ConnectionConfig, index_a: str, index_b: str, *, ids_only: bool,
         max_ids: int | None) -> Report:
    with Cluster.connect(config) as cluster:
        for index in (index_a, index_b):
            if not cluster.index_exists(index):
                raise BadInput(f"index or alias {index!r} does not exist")
        result = diff_module.diff_indices(cluster, index_a, index_b, ids_only=ids_only,
                                          max_ids=max_ids)
        return result.to_json()


def new_migration(directory: Path, name: str, alias: str) -> Report:
    path = spec_module.scaffold(directory, name, alias)
    return {"path": str(path)}


def cleanup(config: ConnectionConfig, *, dry_run: bool, now: datetime | None = None,
            repository: str | None = None, snapshot_expire_days: float | None = None,
            snapshot_min_count: int = 3, snapshot_max_count: int = 10) -> Report:
    """Retention: old indices read-only after N days and deleted after M; old backups pruned."""
    moment = now or datetime.now(UTC)
    with Cluster.connect(config) as cluster:
        runs = Journal(cluster).runs(limit=1000)
        indices = cluster.indices()
        existing = {str(r["index"]) for r in indices}
        aliased = {index for targets in cluster.aliases().values() for index in targets}
        read_only = {index for index in existing if index in
                     {r.blue for r in runs if r.blue} and _is_read_only(cluster, index)}
        steps = retention.plan_retention(runs, existing, aliased, read_only, moment)
        snapshot_steps: list[snapshots.SnapshotInfo] = []
        if snapshot_expire_days is not None:
            repo = snapshots.ensure_repository(cluster, repository)
            ours = [s for s in snapshots.list_snapshots(cluster, repo)
                    if s.name.startswith("indexshift-")]
            snapshot_steps = snapshots.plan_snapshot_retention(
                ours, moment, timedelta(days=snapshot_expire_days), snapshot_min_count,
                snapshot_max_count)
        if not dry_run:
            for step in steps:
                retention.apply_step(cluster, step)
            for info in snapshot_steps:
                snapshots.delete_snapshot(cluster, info)
        return {"dry_run": dry_run, "now": moment.isoformat(),
                "indices": [s.to_json() for s in steps],
                "snapshots_deleted": [s.name for s in snapshot_steps]}


def _is_read_only(cluster: Cluster, index: str) -> bool:
    return cluster.index_blocks(index).get("read_only", False)


# -- snapshots -------------------------------------------------------------------------------


def _repository_of(cluster: Cluster, repository: str | None, snapshot: str | None = None) -> str:
    """The repository to use: the named one, else the one holding ``snapshot``, else the only."""
    if repository is None and snapshot is not None:
        holding = [repo for repo in cluster.snapshot_repositories()
                   if any(s.name == snapshot for s in snapshots.list_snapshots(cluster, repo))]
        if len(holding) == 1:
            return holding[0]
        if not holding:
            raise BadInput(f"no registered repository holds a snapshot named {snapshot!r}",
                           hint="list them with `indexshift snapshot list`")
        raise BadInput(f"several repositories hold {snapshot!r}: {', '.join(holding)}",
                       hint="pass --repository")
    return snapshots.ensure_repository(cluster, repository)


def snapshot_emergency(config: ConnectionConfig, *, repository: str | None = None,
                       dry_run: bool = False) -> Report:
    """Every index and the cluster state, as they are now (partial shards allowed)."""
    with Cluster.connect(config) as cluster:
        if dry_run:
            chosen = snapshots.choose_repository(cluster.snapshot_repositories(), repository)
            into = chosen or f"{snapshots.DEFAULT_REPOSITORY} (registered under path.repo)"
            return {"dry_run": True,
                    "plan": f"snapshot every index and the cluster state into {into}"}
        info = snapshots.emergency_snapshot(cluster,
                                            snapshots.ensure_repository(cluster, repository))
        return {"dry_run": False, "snapshot": info.to_json(), "succeeded": info.succeeded}


def snapshot_list(config: ConnectionConfig, *, repository: str | None = None) -> Report:
    with Cluster.connect(config) as cluster:
        repos = [repository] if repository else sorted(cluster.snapshot_repositories())
        found = [s for repo in repos for s in snapshots.list_snapshots(cluster, repo)]
        return {"repositories": repos,
                "snapshots": [s.to_json() for s in snapshots.sort_newest_first(found)]}


def snapshot_verify(config: ConnectionConfig, snapshot: str, *, index: str | None = None,
                    repository: str | None = None, expected_count: int | None = None,
                    restore_check: bool = True) -> Report:
    """Is ``snapshot`` a complete backup? Every index in it (or ``index``), each restored aside,
    counted and dropped again."""
    with Cluster.connect(config) as cluster:
        repo = _repository_of(cluster, repository, snapshot)
        info = next((s for s in snapshots.list_snapshots(cluster, repo) if s.name == snapshot),
                    None)
        if info is None:
            raise BadInput(f"snapshot {snapshot!r} is not in repository {repo!r}",
                           hint="list them with `indexshift snapshot list`")
        indices = [index] if index else [i for i in info.indices if not i.startswith(".")]
        verdicts = [snapshots.verify_snapshot(cluster, info, name, expected_count,
                                              restore_check=restore_check) for name in indices]
        return {"snapshot": info.to_json(), "passed": all(v.passed for v in verdicts),
                "indices": [v.to_json() for v in verdicts]}


def snapshot_restore(config: ConnectionConfig, snapshot: str, index: str, new_name: str, *,
                     repository: str | None = None, dry_run: bool = False) -> Report:
    """Restore one index of a snapshot under a new name; never over anything that exists."""
    with Cluster.connect(config) as cluster:
        repo = _repository_of(cluster, repository, snapshot)
        plan = (f"restore {index} from {repo}/{snapshot} as the new index {new_name} "
                "(no aliases; nothing existing is touched)")
        if cluster.index_exists(new_name) or cluster.alias_targets(new_name):
            raise BadInput(f"{new_name!r} already exists; a restore never replaces anything",
                           hint="pick another --as name")
        if dry_run:
            return {"dry_run": True, "plan": plan}
        started = time.monotonic()
        snapshots.restore_as(cluster, repo, snapshot, index, new_name)
        return {"dry_run": False, "plan": plan, "index": new_name,
                "docs": cluster.count(new_name),
                "seconds": round(time.monotonic() - started, 2)}


# -- the first five minutes: evidence, halt, incidents, success metrics ------------------------


def evidence(config: ConnectionConfig, out_dir: Path, *, alias: str | None = None) -> Report:
    """One private, timestamped bundle of the cluster's state; credentials redacted."""
    with Cluster.connect(config) as cluster:
        return incident.collect_evidence(cluster, config, out_dir, alias=alias)


def halt(config: ConnectionConfig, alias: str, *, freeze_writes: bool = False,
         reason: str = "halted by operator", dry_run: bool = False, release: bool = False,
         unfreeze_writes: bool = False) -> Report:
    """Stop indexshift's work on the alias (and optionally writes); or release a halt."""
    with Cluster.connect(config) as cluster:
        if release:
            return incident.release_halt(cluster, alias, unfreeze_writes=unfreeze_writes,
                                         dry_run=dry_run)
        return incident.halt(cluster, alias, freeze_writes=freeze_writes, reason=reason,
                             dry_run=dry_run)


def incident_start(config: ConnectionConfig, *, alias: str, severity: str, summary: str,
                   failed_at: datetime | None = None) -> Report:
    with Cluster.connect(config) as cluster:
        return incident.incident_start(cluster, alias=alias, severity=severity, summary=summary,
                                       failed_at=failed_at)


def incident_note(config: ConnectionConfig, incident_id: str, text: str) -> Report:
    with Cluster.connect(config) as cluster:
        return incident.incident_note(cluster, incident_id, text)


def incident_resolve(config: ConnectionConfig, incident_id: str, *, docs_lost: int,
                     downtime_s: float, rollback: bool | None, rollback_ok: bool | None,
                     summary: str) -> Report:
    with Cluster.connect(config) as cluster:
        return incident.incident_resolve(cluster, incident_id, docs_lost=docs_lost,
                                         downtime_s=downtime_s, rollback=rollback,
                                         rollback_ok=rollback_ok, summary=summary)


def incident_list(config: ConnectionConfig, *, alias: str | None = None,
                  status: str | None = None) -> Report:
    with Cluster.connect(config) as cluster:
        return {"incidents": incident.incident_list(cluster, alias=alias, status=status)}


def incident_show(config: ConnectionConfig, incident_id: str) -> Report:
    with Cluster.connect(config) as cluster:
        return incident.incident_show(cluster, incident_id)


def report(config: ConnectionConfig, *, since: datetime | None = None) -> Report:
    """The runbook's success metrics from indexshift's runs and incidents."""
    with Cluster.connect(config) as cluster:
        return incident.success_report(cluster, since=since)


# -- assess and recover ----------------------------------------------------------------------


def _spec_mappings_by_version(directory: Path | None,
                              alias: str) -> dict[int, dict[str, Any]] | None:
    """The mappings each migration spec of the alias states, by version; assess picks the
    one of the index that serves."""
    if directory is None or not directory.exists():
        return None
    return {m.version: dict(m.spec.mappings)
            for m in spec_module.load_migrations(directory, alias)}


def assess(config: ConnectionConfig, alias: str, *, backup: str | None = None,
           directory: Path | None = None) -> Report:
    """Where a migration of ``alias`` stands, what was lost, and the safest way back."""
    with Cluster.connect(config) as cluster:
        found = assess_module.assess(
            cluster, alias, backup=backup,
            spec_mappings_by_version=_spec_mappings_by_version(directory, alias))
        return found.to_json()


def recover(config: ConnectionConfig, alias: str, *, method: str | None = None,
            backup: str | None = None, dry_run: bool = False, include_changed: bool = False,
            confirm: Callable[[Report], bool] | None = None,
            progress: Progress = _quiet) -> Report:
    """Assess, plan, confirm, execute, assess again (see ``recover.recover``)."""
    chosen: assess_module.Method | None = None
    if method is not None:
        try:
            chosen = assess_module.Method(method.upper())
        except ValueError:
            raise BadInput(f"unknown recovery method {method!r}", hint="one of: " + ", ".join(
                m.value for m in assess_module.Method)) from None

    def step_progress(number: int, total: int, step: recover_module.RecoveryStep) -> None:
        progress(f"[{number}/{total}] {step.description}")

    with Cluster.connect(config) as cluster:
        return recover_module.recover(
            cluster, alias, method=chosen, backup=backup, dry_run=dry_run,
            include_changed=include_changed,
            confirm=(lambda plan: confirm(plan.to_json())) if confirm else None,
            progress=step_progress)


# -- the event log ---------------------------------------------------------------------------


def events_archive(wal_dir: Path, archive_dir: Path) -> Report:
    """Copy the gateway log's closed segments into an immutable archive (hash-listed)."""
    return events_module.archive_segments(wal_dir, archive_dir)


def rebuild(config: ConnectionConfig, alias: str, sources: list[Path], *,
            until: str | None = None, target: str | None = None,
            mappings_from: str | None = None) -> Report:
    """A new index holding the alias's documents as the logged events leave them."""
    moment = events_module.parse_until(until) if until is not None else None
    with Cluster.connect(config) as cluster:
        return events_module.rebuild(cluster, alias, sources, until=moment, target=target,
                                     mappings_from=mappings_from)
