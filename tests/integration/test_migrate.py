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
    # The bulk-load settings of the copy are gone, whichever phase the kill interrupted.
    settings = reindex_cluster.settings(run["green"])[run["green"]]["settings"]["index"]
    assert settings.get("refresh_interval", "1s") != "-1"
    assert settings.get("translog", {}).get("durability", "request") == "request"


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
    assert "size_class" in result.stderr and "999,999" in result.stderr
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
    ("copy:\n  batch_size: -5\n", "copy.batch_size"),
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


def test_status_and_throttle_from_another_shell_while_copying(
        reindex_node: Node, reindex_cluster: Cluster, reindex_alias: str,
        tmp_path: Path) -> None:
    spec_path, model = _prepare(reindex_cluster, reindex_alias, tmp_path)
    # A copy slow enough to watch: 2,000 docs at 100 docs/s.
    spec_path.write_text(spec_path.read_text() + "copy: {slices: 1, requests_per_second: 100, "
                                                 "batch_size: 100}\n")
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.update(command.migrate(
        reindex_node.config, tmp_path / "migrations",
        migrator.RunOptions(yes=True, take_backup=False))))
    started = time.monotonic()
    worker.start()
    seen = None
    while time.monotonic() - started < 60:
        status = run_cli("status", reindex_alias, "--url", reindex_node.url, "--json")
        if status.code == 0:
            seen = json.loads(status.stdout)
            if seen["phase"] in (str(Phase.REINDEX_STARTED), str(Phase.REINDEX_50)) and \
                    seen.get("task"):
                break
        time.sleep(0.3)
    assert seen is not None and {"phase", "run_id", "blue", "green", "progress"} <= set(seen)
    assert seen["phase"] in (str(Phase.REINDEX_STARTED), str(Phase.REINDEX_50))
    throttled = run_cli("throttle", reindex_alias, "--rps", "0", "--url", reindex_node.url)
    assert throttled.code == 0, throttled.stderr
    worker.join(timeout=120)
    assert outcome.get("completed") is True
    assert_alias_matches_model(reindex_cluster, reindex_alias, model, spec_path)


def test_postponed_cutover_waits_for_the_cutover_verb(reindex_node: Node,
                                                     reindex_cluster: Cluster,
                                                     reindex_alias: str,
                                                     tmp_path: Path) -> None:
    spec_path, model = _prepare(reindex_cluster, reindex_alias, tmp_path)
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    first = run_cli("migrate", "--dir", str(tmp_path / "migrations"), "--yes",
                    "--postpone-cutover", "--url", reindex_node.url, "--json")
    assert first.code == 0, first.stderr
    run = json.loads(first.stdout)["runs"][0]
    assert run["phase"] == str(Phase.VALIDATED)
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [blue]
    second = run_cli("cutover", reindex_alias, "--dir", str(tmp_path / "migrations"), "--yes",
                     "--url", reindex_node.url, "--json")
    assert second.code == 0, second.stderr
    assert json.loads(second.stdout)["phase"] == str(Phase.COMPLETED)
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [run["green"]]
    assert_alias_matches_model(reindex_cluster, reindex_alias, model, spec_path)


def test_failing_hook_stops_at_a_resumable_point(reindex_node: Node, reindex_cluster: Cluster,
                                                 reindex_alias: str, tmp_path: Path) -> None:
    _prepare(reindex_cluster, reindex_alias, tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hook = hooks / "20-refuse"
    hook.write_text('#!/bin/sh\n[ "$INDEXSHIFT_PHASE" = "VALIDATED" ] && '
                    '[ ! -f "$0.ok" ] && { echo "change freeze"; exit 3; }\nexit 0\n')
    hook.chmod(0o755)
    first = run_cli("migrate", "--dir", str(tmp_path / "migrations"), "--yes", "--hooks",
                    str(hooks), "--url", reindex_node.url)
    assert first.code == ExitCode.CHECK_FAILED
    assert "hook 20-refuse failed (exit 3) at phase VALIDATED: change freeze" in first.stderr
    (hooks / "20-refuse.ok").write_text("")
    second = run_cli("resume", reindex_alias, "--dir", str(tmp_path / "migrations"), "--yes",
                     "--hooks", str(hooks), "--url", reindex_node.url, "--json")
    assert second.code == 0, second.stderr
    assert json.loads(second.stdout)["status"] == str(RunStatus.COMPLETED)


def test_rollback_and_cleanup_after_a_completed_run(reindex_node: Node,
                                                   reindex_cluster: Cluster,
                                                   reindex_alias: str, tmp_path: Path) -> None:
    _prepare(reindex_cluster, reindex_alias, tmp_path)
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    report = command.migrate(reindex_node.config, tmp_path / "migrations",
                             migrator.RunOptions(yes=True, take_backup=False))
    green = report["runs"][0]["green"]
    dry = run_cli("rollback", reindex_alias, "--dry-run", "--url", reindex_node.url)
    assert dry.code == 0 and "move" in dry.stdout
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [green]
    # A write to green after the switch makes a plain rollback lose it: refused.
    reindex_cluster.put_doc(reindex_alias, "after-switch", {"file_key": "after-switch",
                                                            "file_size": 1}, refresh=True)
    refused = run_cli("rollback", reindex_alias, "--yes", "--url", reindex_node.url)
    assert refused.code == ExitCode.CHECK_FAILED and "1 write(s)" in refused.stderr
    done = run_cli("rollback", reindex_alias, "--yes", "--catch-up", "--url", reindex_node.url)
    assert done.code == 0, done.stderr
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [blue]
    assert reindex_cluster.get_doc(blue, "after-switch") is not None
    # Retention: the old index (green now, after the rollback the alias is on blue).
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    later = command.cleanup(reindex_node.config, dry_run=True,
                            now=datetime.now(UTC) + timedelta(days=30))
    assert all(step["index"] != blue or step["action"] == "keep" for step in later["indices"])
