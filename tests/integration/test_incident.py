"""The first five minutes on a real node: evidence without secrets, halt (tasks cancelled,
breaker open, writes frozen), the incident timeline and the success metrics."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from indexshift import command, incident, migrator
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.errors import BadInput, CheckFailed, Conflict, IndexshiftError, Rejected
from indexshift.journal import Journal, Phase, RunRecord, RunStatus, utc_now
from indexshift.spec import Migration, load_migration
from tests.conftest import Node
from tests.integration.migration_support import (
    SCENARIOS,
    build_blue,
    load_source,
    write_migration,
)

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

PASSWORD = "s3cret-Pa55"
USER = "ops"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _journal(cluster: Cluster, alias: str, tmp_path: Path) -> Journal:
    return Journal(cluster, f"{alias}-journal", tmp_path / "runs")


def _serve(cluster: Cluster, alias: str, docs: int = 20, meta: dict[str, object] | None = None,
           ) -> str:
    """``alias`` → ``<alias>-v1-...`` holding ``docs`` small documents."""
    blue = f"{alias}-v1-20260101t000000"
    mappings: dict[str, object] = {"properties": {"n": {"type": "long"}}}
    if meta is not None:
        mappings["_meta"] = meta
    cluster.create_index(blue, {"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                "mappings": mappings})
    if docs:
        result = cluster.bulk_index(blue, [(str(i), {"n": i}) for i in range(docs)])
        assert result.failed == 0, result.first_error
    cluster.refresh(blue)
    cluster.update_aliases([{"add": {"index": blue, "alias": alias, "is_write_index": True}}])
    return blue


def _migration(alias: str, tmp_path: Path) -> Migration:
    return load_migration(write_migration(SCENARIOS / "transform_script", alias,
                                          tmp_path / "migrations"))


def _run_at(journal: Journal, alias: str, blue: str, migration: Migration, phase: Phase,
            task_id: str | None = None) -> RunRecord:
    record = RunRecord.new(alias=alias, version=migration.version, spec_name=migration.name,
                           spec_checksum=migration.checksum, blue=blue,
                           green=f"{alias}-v{migration.version}-20260101t000001")
    created = journal.create_run(record)
    return journal.advance(created, phase=phase, task_id=task_id).value


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- evidence --------------------------------------------------------------------------------


def _fake_sandbox(root: Path, url: str) -> Path:
    """A sandbox state for ``url`` whose node is this test's process group (alive)."""
    logs = root / "it" / "nodes" / "node-0" / "logs"
    logs.mkdir(parents=True)
    log = logs / "indexshift-sandbox-it.log"
    log.write_text(f"[INFO] started\n[WARN] client sent Authorization: Basic {BASIC}\n"
                   f"[WARN] repository url https://{USER}:{PASSWORD}@backup.example.org/x\n")
    (logs / "console.log").write_text("console line\n")
    state = {"name": "it", "engine": "opensearch", "version": "x", "url": url, "user": "u",
             "root": str(root / "it"), "snapshot_path": "", "started_at": "", "heap": "512m",
             "nodes": [{"name": "node-0", "pid": os.getpgrp(), "http_port": 0,
                        "transport_port": 0, "home": "", "log_dir": str(logs),
                        "console_log": str(logs / "console.log")}]}
    (root / "it" / "sandbox.json").write_text(json.dumps(state))
    return log


def test_evidence_bundle_of_a_cluster_with_basic_auth_holds_no_secret(
        node: Node, alias_name: str, tmp_path: Path) -> None:
    # Security is off on the test nodes: they ignore the Basic header the client sends.
    config = ConnectionConfig(url=node.url, username=USER, password=SecretStr(PASSWORD),
                              timeout_s=30)
    with Cluster.connect(config) as cluster:
        blue = _serve(cluster, alias_name, meta={
            "owner": "search team", "password": PASSWORD,
            "source": f"https://{USER}:{PASSWORD}@legacy.example.org:9200"})
        journal = _journal(cluster, alias_name, tmp_path)
        record = RunRecord.new(alias=alias_name, version=2, spec_name="0002_x",
                               spec_checksum="sha256:0", blue=blue, green=f"{alias_name}-v2")
        journal.create_run(record.model_copy(update={
            "error": f"remote https://{USER}:{PASSWORD}@legacy.example.org refused"}))
        sandboxes = tmp_path / "sandboxes"
        _fake_sandbox(sandboxes, node.url)
        out = tmp_path / "out"
        result = incident.collect_evidence(cluster, config, out, alias=alias_name,
                                           journal=journal, sandbox_root=sandboxes)

    folder = Path(result["path"])
    assert folder.parent == out and folder.name.startswith("indexshift-evidence-")
    assert result["errors"] == []
    expected = {"cat-indices.txt", "cat-aliases.txt", "cluster-health.json", "tasks.json",
                "snapshot-repositories.json", "mappings.json", "settings.json",
                "cluster-settings.json", "journal-runs.json", "journal-leases.json",
                "journal-incidents.json", f"local-runs/{record.run_id}.jsonl",
                "sandbox-logs/it/node-0/indexshift-sandbox-it.log",
                "sandbox-logs/it/node-0/console.log", "manifest.json"}
    assert expected <= set(result["files"])
    assert {str(p.relative_to(folder)) for p in _all_files(folder)} == set(result["files"])

    # Private: the folder and every folder in it 0700, every file 0600.
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    # No secret in any form in any file.
    for path in _all_files(folder):
        data = path.read_bytes()
        assert PASSWORD.encode() not in data, path
        assert BASIC.encode() not in data and BASIC.rstrip("=").encode() not in data, path
        assert f"{USER}:".encode() + b"***" not in data

    assert blue in (folder / "cat-indices.txt").read_text()
    assert alias_name in (folder / "cat-aliases.txt").read_text()
    mappings = json.loads((folder / "mappings.json").read_text())
    assert list(mappings) == [blue]
    meta = mappings[blue]["mappings"]["_meta"]
    assert meta["owner"] == "search team" and meta["password"] == incident.REDACTED
    assert meta["source"] == "https://***@legacy.example.org:9200"
    runs = json.loads((folder / "journal-runs.json").read_text())
    assert [r["run_id"] for r in runs] == [record.run_id]
    log = (folder / "sandbox-logs/it/node-0/indexshift-sandbox-it.log").read_text()
    assert "Authorization: Basic ***" in log and "https://***@backup.example.org" in log
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["cluster"]["url"] == node.url
    assert manifest["cluster"]["engine"] == node.engine
    assert manifest["connection"]["password"] == "***"
    assert manifest["alias_indices"] == [blue] and manifest["sandboxes"] == ["it"]
    assert {f["file"] for f in manifest["files"]} == set(result["files"]) - {"manifest.json"}


def test_one_failing_capture_does_not_stop_the_others(cluster: Cluster, alias_name: str,
                                                      tmp_path: Path) -> None:
    config = ConnectionConfig(url=cluster.config.url)
    journal = _journal(cluster, alias_name, tmp_path)  # no journal index: nothing to read
    result = incident.collect_evidence(cluster, config, tmp_path, alias=f"{alias_name}-gone",
                                       journal=journal, sandbox_root=tmp_path / "none")
    assert {e["file"] for e in result["errors"]} == {"mappings.json", "settings.json"}
    assert "no index" in result["errors"][0]["error"]
    assert {"cat-indices.txt", "cat-aliases.txt", "cluster-health.json", "tasks.json",
            "cluster-settings.json", "manifest.json"} <= set(result["files"])
    assert not any(name.startswith("journal-") for name in result["files"])
    manifest = json.loads((Path(result["path"]) / "manifest.json").read_text())
    assert manifest["errors"] == result["errors"] and manifest["journal"]["present"] is False
    # A second capture in the same second gets a folder of its own.
    again = incident.collect_evidence(cluster, config, tmp_path, journal=journal,
                                      sandbox_root=tmp_path / "none")
    assert again["path"] != result["path"]


# -- halt ------------------------------------------------------------------------------------


def _start_slow_reindex(cluster: Cluster, source: str, dest: str) -> str:
    body = cluster.request("POST", "/_reindex",
                           params={"wait_for_completion": False, "requests_per_second": 1},
                           body={"source": {"index": source, "size": 5},
                                 "dest": {"index": dest}})
    return str(body["task"])


def _running(cluster: Cluster, task_id: str) -> bool:
    try:
        return not cluster.task(task_id).get("completed")
    except IndexshiftError:
        return False


def test_halt_cancels_copies_into_the_alias_and_holds_the_run(
        reindex_cluster: Cluster, reindex_alias: str, tmp_path: Path) -> None:
    cluster, alias = reindex_cluster, reindex_alias
    blue = _serve(cluster, alias, docs=300)
    migration = _migration(alias, tmp_path)
    journal = _journal(cluster, alias, tmp_path)
    ours = _start_slow_reindex(cluster, blue, f"{alias}-v2-20260101t000001")
    stray = _start_slow_reindex(cluster, blue, f"{alias}-v3")
    unrelated = _start_slow_reindex(cluster, blue, f"{alias}x-v2")
    try:
        run = _run_at(journal, alias, blue, migration, Phase.REINDEX_STARTED, task_id=ours)
        as_its_process_read_it = journal.get_run(run.run_id)
        assert as_its_process_read_it is not None

        plan = incident.halt(cluster, alias, reason="transform drops fields", dry_run=True,
                             journal=journal)
        assert plan["dry_run"] and plan["open_breaker"]
        assert {t["task_id"] for t in plan["cancel_tasks"]} == {ours, stray}
        assert _running(cluster, ours) and _running(cluster, stray)
        unchanged = journal.get_run(run.run_id)
        assert unchanged is not None and unchanged.seq_no == as_its_process_read_it.seq_no

        report = incident.halt(cluster, alias, reason="transform drops fields",
                               journal=journal)
        assert report["ok"], report["errors"]
        assert set(plan) <= set(report)  # a plan and its result share their key names
        by_id = {t["task_id"]: t for t in report["cancel_tasks"]}
        assert set(by_id) == {ours, stray}
        assert by_id[ours]["source"] == "journal" and by_id[stray]["source"] == "found"
        assert all(t["cancelled"] and t["stopped"] for t in by_id.values())
        assert not _running(cluster, ours) and not _running(cluster, stray)
        assert _running(cluster, unrelated)  # not a versioned index of the alias

        halted = journal.get_run(run.run_id)
        assert halted is not None
        assert halted.value.status == RunStatus.HALTED
        assert halted.value.phase == Phase.REINDEX_STARTED
        assert halted.value.breaker["open"] and halted.value.breaker["by"] == "operator"
        assert halted.value.breaker["reason"] == "transform drops fields"
        # The process that drives the run cannot record its next step...
        with pytest.raises(Conflict):
            journal.advance(as_its_process_read_it, phase=Phase.REINDEX_50)
        # ...and nobody can resume it until the halt is released.
        with pytest.raises(migrator.Halted, match="halted by an operator"):
            migrator.resume_run(cluster, journal, migration,
                                migrator.RunOptions(yes=True, take_backup=False))
        after = journal.get_run(run.run_id)
        assert after is not None and after.seq_no == halted.seq_no
        assert journal.current_lease(alias) is None
    finally:
        for task_id in (ours, stray, unrelated):
            if _running(cluster, task_id):
                cluster.cancel_task(task_id)


def test_halt_stops_a_migration_running_in_another_process(
        reindex_node: Node, reindex_cluster: Cluster, reindex_alias: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, alias = reindex_cluster, reindex_alias
    monkeypatch.chdir(tmp_path)  # the run's local trail goes to .indexshift/runs here
    build_blue(cluster, alias, load_source(SCENARIOS / "transform_script"))
    spec_path = write_migration(SCENARIOS / "transform_script", alias, tmp_path / "migrations")
    # A copy slow enough to halt in the middle: 2,000 documents at 50 a second.
    spec_path.write_text(spec_path.read_text() + "copy: {slices: 1, requests_per_second: 50, "
                                                 "batch_size: 50}\n")
    journal = Journal(cluster)  # the migrator's own journal: the run is found by alias
    outcome: dict[str, object] = {}

    def migrate() -> None:
        try:
            outcome["report"] = command.migrate(reindex_node.config, tmp_path / "migrations",
                                                migrator.RunOptions(yes=True,
                                                                    take_backup=False))
        except IndexshiftError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=migrate)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        latest = None
        while time.monotonic() < deadline:
            latest = journal.latest_run(alias)
            if latest is not None and latest.value.phase == Phase.REINDEX_STARTED:
                break
            time.sleep(0.2)
        assert latest is not None and latest.value.phase == Phase.REINDEX_STARTED
        report = incident.halt(cluster, alias, reason="operator stop")
        assert report["ok"], report["errors"]
        assert [t["source"] for t in report["cancel_tasks"]] == ["journal"]
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), migrator.Halted), outcome
        final = journal.get_run(latest.value.run_id)
        assert final is not None
        # The driving process stopped without recording a step past the halt, and its own
        # stop did not overwrite the operator's breaker.
        assert final.value.status == RunStatus.HALTED
        assert final.value.phase == Phase.REINDEX_STARTED
        assert migrator.operator_halt(final.value) == "operator stop"
        assert migrator.current_blue(cluster, alias) == f"{alias}-v1-20260101t000000"
    finally:
        worker.join(timeout=120)
        for run in journal.runs(alias):
            cluster.delete_doc(journal.index, f"run:{run.run_id}", refresh=True)
        lease = journal.current_lease(alias)
        if lease is not None:
            journal.release_lease(lease)


def test_halt_opens_the_breaker_and_release_closes_it(cluster: Cluster, alias_name: str,
                                                      tmp_path: Path) -> None:
    blue = _serve(cluster, alias_name)
    migration = _migration(alias_name, tmp_path)
    journal = _journal(cluster, alias_name, tmp_path)
    run = _run_at(journal, alias_name, blue, migration, Phase.GREEN_CREATED)

    report = incident.halt(cluster, alias_name, reason="wrong analyzer", journal=journal)
    assert report["ok"] and report["cancel_tasks"] == [] and report["block_writes"] == []
    assert report["breaker"]["open"] and report["run"]["status"] == "HALTED"
    again = incident.halt(cluster, alias_name, reason="still wrong", journal=journal)
    assert again["ok"] and any("already halted" in n for n in again["notes"])
    with pytest.raises(migrator.Halted, match="still wrong"):
        migrator.resume_run(cluster, journal, migration,
                            migrator.RunOptions(yes=True, take_backup=False))
    with pytest.raises(migrator.Halted, match="halted by an operator"):
        migrator.resume_run(cluster, journal, migration,
                            migrator.RunOptions(yes=True, take_backup=False,
                                                break_lock=True))

    plan = incident.release_halt(cluster, alias_name, dry_run=True, journal=journal)
    assert plan["close_breaker"] == run.run_id
    held = journal.get_run(run.run_id)
    assert held is not None and migrator.operator_halt(held.value) == "still wrong"
    incident.release_halt(cluster, alias_name, journal=journal)
    released = journal.get_run(run.run_id)
    assert released is not None
    assert released.value.status == RunStatus.HALTED  # `resume` continues it from here
    assert migrator.operator_halt(released.value) is None
    assert not released.value.breaker["open"]
    with pytest.raises(CheckFailed, match="no operator's halt"):
        incident.release_halt(cluster, alias_name, journal=journal)


def test_freeze_writes_blocks_the_alias_until_released(cluster: Cluster, alias_name: str,
                                                       tmp_path: Path) -> None:
    blue = _serve(cluster, alias_name)
    journal = _journal(cluster, alias_name, tmp_path)
    try:
        report = incident.halt(cluster, alias_name, freeze_writes=True, journal=journal)
        assert report["ok"] and report["block_writes"] == [blue]
        assert report["breaker"] is None and "no run recorded" in report["notes"][0]
        with pytest.raises(Rejected, match="blocked"):
            cluster.put_doc(alias_name, "new", {"n": 1}, refresh=True)
        released = incident.release_halt(cluster, alias_name, unfreeze_writes=True,
                                         journal=journal)
        assert released["unblock_writes"] == [blue] and released["close_breaker"] is None
        cluster.put_doc(alias_name, "new", {"n": 1}, refresh=True)
        assert cluster.count(alias_name) == 21
    finally:
        cluster.remove_write_block(blue)
    assert not cluster.index_exists(journal.index)  # nothing to record, nothing created


def test_halt_of_an_unknown_alias_changes_nothing(cluster: Cluster, alias_name: str,
                                                  tmp_path: Path) -> None:
    journal = _journal(cluster, alias_name, tmp_path)
    before = sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*"))
    calls: list[Callable[[], object]] = [
        lambda: incident.halt(cluster, alias_name, freeze_writes=True, journal=journal),
        lambda: incident.release_halt(cluster, alias_name, journal=journal),
        lambda: incident.incident_start(cluster, alias=alias_name, severity="P1", summary="s",
                                        journal=journal),
    ]
    for call in calls:
        with pytest.raises(BadInput, match="does not exist") as caught:
            call()
        assert "\n" not in str(caught.value)
    cluster.create_index(f"{alias_name}-concrete", {})
    with pytest.raises(BadInput, match="concrete index"):
        incident.halt(cluster, f"{alias_name}-concrete", journal=journal)
    assert sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*")) == \
        sorted([*before, f"{alias_name}-concrete"])
    assert not cluster.index_exists(journal.index)


# -- incidents and metrics -------------------------------------------------------------------


def test_incident_timeline_round_trip(cluster: Cluster, alias_name: str,
                                      tmp_path: Path) -> None:
    _serve(cluster, alias_name)
    journal = _journal(cluster, alias_name, tmp_path)
    assert incident.incident_list(cluster, journal=journal) == []
    started = incident.incident_start(cluster, alias=alias_name, severity="p0",
                                      summary="green lost the vector field",
                                      failed_at=utc_now() - timedelta(minutes=3),
                                      journal=journal)
    incident_id = started["id"]
    assert started["severity"] == "P0" and started["status"] == "OPEN"
    assert started["time_to_detect_s"] >= 180
    assert cluster.index_exists(journal.index)

    # Two operators noting at the same moment: compare-and-set keeps both notes.
    errors: list[BaseException] = []

    def note(text: str) -> None:
        try:
            incident.incident_note(cluster, incident_id, text, journal=journal)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=note, args=(f"note {i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    resolved = incident.incident_resolve(cluster, incident_id, docs_lost=0, downtime_s=4.5,
                                         rollback=True, rollback_ok=True,
                                         summary="rolled back to v1", journal=journal)
    assert resolved["status"] == "RESOLVED" and resolved["time_to_resolve_s"] >= 0
    with pytest.raises(CheckFailed, match="was resolved"):
        incident.incident_resolve(cluster, incident_id, docs_lost=0, summary="again",
                                  journal=journal)

    shown = incident.incident_show(cluster, incident_id, journal=journal)
    events = [entry["event"] for entry in shown["timeline"]]
    assert events == ["failed", "declared", "note", "note", "resolved"]
    assert {e["text"] for e in shown["timeline"] if e["event"] == "note"} == {"note 0",
                                                                              "note 1"}
    assert shown["resolution"]["downtime_s"] == 4.5

    later = incident.incident_start(cluster, alias=alias_name, severity="P2",
                                    summary="slow canaries", journal=journal)
    listed = incident.incident_list(cluster, journal=journal)
    assert [i["incident_id"] for i in listed] == [later["id"], incident_id]
    open_only = incident.incident_list(cluster, status="open", alias=alias_name,
                                       journal=journal)
    assert [i["incident_id"] for i in open_only] == [later["id"]]
    assert incident.incident_list(cluster, alias=f"{alias_name}-other", journal=journal) == []
    with pytest.raises(BadInput, match="no incident"):
        incident.incident_note(cluster, "inc-nothing", "x", journal=journal)
    # Incidents live beside runs without being taken for one.
    assert journal.runs(alias_name) == []


def test_success_report_from_runs_and_incidents(cluster: Cluster, alias_name: str,
                                                tmp_path: Path) -> None:
    blue = _serve(cluster, alias_name)
    migration = _migration(alias_name, tmp_path)
    journal = _journal(cluster, alias_name, tmp_path)
    since = utc_now() - timedelta(minutes=1)
    empty = incident.success_report(cluster, since=since, journal=journal)
    assert all(m["met"] is None for m in empty["metrics"].values())

    def finished(status: RunStatus) -> RunRecord:
        record = journal.create_run(RunRecord.new(
            alias=alias_name, version=migration.version, spec_name=migration.name,
            spec_checksum=migration.checksum, blue=blue, green=f"{alias_name}-v2"))
        return journal.advance(record, status=status).value

    done = [finished(RunStatus.COMPLETED) for _ in range(3)]
    rolled = finished(RunStatus.ROLLED_BACK)
    _run_at(journal, alias_name, blue, migration, Phase.REINDEX_STARTED)  # unfinished
    first = incident.incident_start(cluster, alias=alias_name, severity="P1", summary="a",
                                    failed_at=utc_now() - timedelta(seconds=30),
                                    run_id=rolled.run_id, journal=journal)
    first = incident.incident_resolve(cluster, first["id"], docs_lost=0, downtime_s=2,
                                      rollback=True, rollback_ok=True, summary="rolled back",
                                      journal=journal)
    second = incident.incident_start(cluster, alias=alias_name, severity="P2", summary="b",
                                     failed_at=utc_now() - timedelta(seconds=10),
                                     journal=journal)
    second = incident.incident_resolve(cluster, second["id"], docs_lost=3, summary="reindexed",
                                       journal=journal)

    report = incident.success_report(cluster, since=since, journal=journal)
    assert report["runs"] == {"total": 5, "completed": len(done), "rolled_back": 1,
                              "failed": 0, "unfinished": 1}
    assert report["incidents"] == {"total": 2, "open": 0, "resolved": 2}
    metrics = report["metrics"]
    assert metrics["migration_success_rate"]["value"] == 75.0
    assert metrics["migration_success_rate"]["met"] is False
    mttd = (first["time_to_detect_s"] + second["time_to_detect_s"]) / 2
    assert metrics["mean_time_to_detect"]["value"] == pytest.approx(mttd)
    assert metrics["mean_time_to_detect"]["met"] is True
    mttr = (first["time_to_resolve_s"] + second["time_to_resolve_s"]) / 2
    assert metrics["mean_time_to_resolve"]["value"] == pytest.approx(mttr)
    assert metrics["mean_time_to_resolve"]["met"] is True
    assert metrics["docs_lost_per_incident"]["value"] == 1.5
    assert metrics["docs_lost_per_incident"]["met"] is False
    # The rolled-back run and the incident that judged its rollback are one rollback.
    assert metrics["rollback_success_rate"]["value"] == 100.0
    assert metrics["rollback_success_rate"]["basis"] == "1 successful of 1 rollbacks"
    downtime = metrics["unplanned_downtime"]
    assert downtime["downtime_s"] == 2.0
    assert downtime["value"] == pytest.approx(100 * 2.0 / report["period_s"])
    # A period that starts after everything holds nothing.
    later = incident.success_report(cluster, since=utc_now(), journal=journal)
    assert later["runs"]["total"] == 0 and later["incidents"]["total"] == 0
