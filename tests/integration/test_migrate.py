"""The migration engine end to end on a real node: kill -9 at every phase then resume,
validation failures, automatic rollback, the lock, and bad specs that change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from indexshift import command, migrator
from indexshift.cluster import Cluster
from indexshift.errors import CheckFailed, ExitCode
from indexshift.journal import Journal, Phase, RunStatus
from tests.conftest import Node
from tests.helpers import run_cli
from tests.integration.migration_support import (
    SCENARIOS,
    assert_alias_matches_model,
    build_blue,
    load_source,
    write_migration,
)

pytestmark = pytest.mark.cluster
CASE = SCENARIOS / "transform_script"

KILLER_HOOK = """#!/bin/sh
# Kill the indexshift process that runs this hook, as `kill -9` would, at one phase.
if [ "$INDEXSHIFT_PHASE" = "{phase}" ]; then kill -9 $PPID; fi
exit 0
"""


def _prepare(cluster: Cluster, alias: str,
             tmp_path: Path) -> tuple[Path, dict[str, dict[str, object]]]:
    source = load_source(CASE)
    build_blue(cluster, alias, source)
    spec = write_migration(CASE, alias, tmp_path / "migrations")
    return spec, {k: dict(v) for k, v in source.docs.items()}


@pytest.mark.parametrize("phase", [
    Phase.BACKUP_CREATED, Phase.GREEN_CREATED, Phase.REINDEX_STARTED, Phase.REINDEX_50,
    Phase.REINDEX_100, Phase.VALIDATED, Phase.ALIAS_SWITCHED, Phase.MONITORING,
])
def test_kill_9_at_a_phase_then_resume_completes(phase: Phase, reindex_node: Node,
                                                 reindex_cluster: Cluster, reindex_alias: str,
                                                 tmp_path: Path) -> None:
    spec, model = _prepare(reindex_cluster, reindex_alias, tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    killer = hooks / "10-kill"
    killer.write_text(KILLER_HOOK.format(phase=phase))
    killer.chmod(0o755)
    first = run_cli("migrate", "--dir", str(tmp_path / "migrations"), "--yes", "--hooks",
                    str(hooks), "--url", reindex_node.url)
    assert first.code == -9, first.stderr  # killed, not failed
    killed_at = Journal(reindex_cluster).latest_run(reindex_alias)
    assert killed_at is not None and killed_at.value.phase == phase
    assert killed_at.value.status == RunStatus.RUNNING
    second = run_cli("resume", reindex_alias, "--dir", str(tmp_path / "migrations"), "--yes",
                     "--url", reindex_node.url, "--json")
    assert second.code == 0, second.stderr
    run = json.loads(second.stdout)
    assert run["phase"] == str(Phase.COMPLETED) and run["status"] == str(RunStatus.COMPLETED)
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [run["green"]]
    assert_alias_matches_model(reindex_cluster, reindex_alias, model, spec)


def test_failed_validation_keeps_green_and_does_not_switch(reindex_node: Node,
                                                           reindex_cluster: Cluster,
                                                           reindex_alias: str,
                                                           tmp_path: Path) -> None:
    spec_path, _ = _prepare(reindex_cluster, reindex_alias, tmp_path)
    text = spec_path.read_text().replace("required_fields: {size_class: keyword}",
                                         "required_fields: {size_class: long}")
    text = text.replace("min_hits: 1", "min_hits: 999999")
    spec_path.write_text(text)
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    result = run_cli("migrate", "--dir", str(tmp_path / "migrations"), "--yes",
                     "--url", reindex_node.url)
    assert result.code == ExitCode.CHECK_FAILED
    assert "validation failed" in result.stderr
    assert "size_class" in result.stderr and "999999" in result.stderr
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [blue]
    run = Journal(reindex_cluster).latest_run(reindex_alias)
    assert run is not None and run.value.green is not None
    assert reindex_cluster.index_exists(run.value.green)  # kept for a look
    assert run.value.status == RunStatus.HALTED
    assert run.value.phase == Phase.REINDEX_100


def test_monitoring_breach_rolls_back(reindex_node: Node, reindex_cluster: Cluster,
                                      reindex_alias: str, tmp_path: Path) -> None:
    spec_path, _ = _prepare(reindex_cluster, reindex_alias, tmp_path)
    spec_path.write_text(spec_path.read_text().replace(
        "rollout: {monitor_seconds: 0}",
        "rollout: {monitor_seconds: 20, interval_seconds: 0.5, doc_count_drop_max: 10}"))
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    events: list[str] = []

    def sabotage(kind: str, data: dict[str, object]) -> None:
        events.append(kind)
        if kind == "phase" and data.get("phase") == str(Phase.MONITORING):
            green = str(next(iter(reindex_cluster.alias_targets(reindex_alias))))
            threading.Thread(target=lambda: reindex_cluster.request(
                "POST", f"/{green}/_delete_by_query", params={"refresh": True},
                body={"query": {"range": {"file_size": {"gte": 0}}}, "max_docs": 200})).start()

    with pytest.raises(CheckFailed, match="monitoring threshold crossed"):
        command.migrate(reindex_node.config, tmp_path / "migrations",
                        migrator.RunOptions(yes=True, take_backup=False, on_event=sabotage))
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [blue]
    run = Journal(reindex_cluster).latest_run(reindex_alias)
    assert run is not None and run.value.status == RunStatus.ROLLED_BACK
    assert "doc" in (run.value.error or "")


def test_two_migrations_at_once_exactly_one_proceeds(reindex_node: Node,
                                                     reindex_cluster: Cluster,
                                                     reindex_alias: str,
                                                     tmp_path: Path) -> None:
    _prepare(reindex_cluster, reindex_alias, tmp_path)
    args = [sys.executable, "-m", "indexshift", "migrate", "--dir",
            str(tmp_path / "migrations"), "--yes", "--url", reindex_node.url]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, int(ExitCode.CHECK_FAILED)], outcomes
    loser = next(err for code, err in outcomes if code != 0)
    assert "being migrated" in loser or "unfinished run" in loser or "up to date" in loser
    runs = Journal(reindex_cluster).runs(reindex_alias)
    assert sum(1 for r in runs if r.status == RunStatus.COMPLETED) == 1


@pytest.mark.parametrize(("edit", "field"), [
    ("validation:\n  count_tolerance: -1\n", "validation.count_tolerance"),
    ("rollout: {monitor_seconds: soon}\n", "rollout.monitor_seconds"),
    ("surprise: 1\n", "surprise"),
])
def test_malformed_spec_names_file_and_field_and_changes_nothing(
        edit: str, field: str, reindex_node: Node, reindex_cluster: Cluster,
        reindex_alias: str, tmp_path: Path) -> None:
    spec_path, _ = _prepare(reindex_cluster, reindex_alias, tmp_path)
    text = spec_path.read_text().replace("rollout: {monitor_seconds: 0}\n", "")
    spec_path.write_text(text + edit)
    before = (sorted(r["index"] for r in reindex_cluster.indices()),
              reindex_cluster.aliases())
    result = run_cli("migrate", "--dir", str(tmp_path / "migrations"), "--yes",
                     "--url", reindex_node.url)
    assert result.code == ExitCode.BAD_INPUT
    assert spec_path.name in result.stderr and field in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
    time.sleep(0.2)
    after = (sorted(r["index"] for r in reindex_cluster.indices()), reindex_cluster.aliases())
    assert after == before
