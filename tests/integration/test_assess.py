"""assess on a real node: every migration state and every integrity level, each built by hand
with raw REST calls, and the promise that assess leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from indexshift.assess import (
    Assessment,
    Method,
    MigrationState,
    Risk,
    assess,
    recovery_stamp,
    restored_name,
)
from indexshift.cluster import Cluster
from indexshift.errors import BadInput
from indexshift.journal import Journal, Phase, RunRecord, run_doc_id
from indexshift.snapshots import DEFAULT_REPOSITORY, ensure_repository, restore_as

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

DOCS = 2000


# -- building states by hand -------------------------------------------------------------------


def make_index(cluster: Cluster, name: str, ids: range | list[int], *,
               mappings: dict[str, Any] | None = None) -> None:
    body: dict[str, Any] = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    if mappings is not None:
        body["mappings"] = mappings
    cluster.request("PUT", f"/{name}", body=body)
    put_docs(cluster, name, ids)


def put_docs(cluster: Cluster, name: str, ids: range | list[int], *, tag: str = "a") -> None:
    ops: list[dict[str, Any]] = []
    for i in ids:
        ops += [{"index": {"_index": name, "_id": str(i)}},
                {"n": i, "title": f"file {i}", "tag": tag}]
    for start in range(0, len(ops), 4000):
        result = cluster.bulk(ops[start:start + 4000])
        assert result.failed == 0, result.first_error
    cluster.request("POST", f"/{name}/_refresh")


def delete_docs(cluster: Cluster, name: str, ids: range | list[int]) -> None:
    # _delete_by_query lives in the reindex module, which a core-only node lacks.
    result = cluster.bulk([{"delete": {"_index": name, "_id": str(i)}} for i in ids])
    assert result.failed == 0, result.first_error
    cluster.request("POST", f"/{name}/_refresh")


def point(cluster: Cluster, alias: str, *indices: str, write: str | None = None) -> None:
    actions = [{"add": {"index": index, "alias": alias,
                        **({"is_write_index": index == write} if write else {})}}
               for index in indices]
    cluster.request("POST", "/_aliases", body={"actions": actions})


@pytest.fixture
def repository(cluster: Cluster) -> str:
    name = DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in cluster.snapshot_repositories() else None
    return ensure_repository(cluster, name)


@pytest.fixture
def snapshots(cluster: Cluster, repository: str) -> Iterator[list[str]]:
    """Snapshot names a test takes in ``repository``; deleted when it ends."""
    taken: list[str] = []
    yield taken
    for name in taken:
        cluster.request("DELETE", f"/_snapshot/{repository}/{name}")


def snapshot(cluster: Cluster, repository: str, taken: list[str], name: str,
             *indices: str) -> str:
    cluster.request("PUT", f"/_snapshot/{repository}/{name}",
                    params={"wait_for_completion": True},
                    body={"indices": ",".join(indices), "include_global_state": False})
    taken.append(name)
    return name


def backed_up(cluster: Cluster, alias: str, repository: str, taken: list[str],
              docs: int = DOCS) -> str:
    """``<alias>-v1`` with ``docs`` documents behind the alias, in a SUCCESS snapshot."""
    v1 = f"{alias}-v1"
    make_index(cluster, v1, range(docs))
    point(cluster, alias, v1)
    snapshot(cluster, repository, taken, f"{alias}-before", v1)
    return v1


def indices_of(cluster: Cluster, alias: str) -> list[str]:
    return sorted(str(r["index"]) for r in cluster.indices(f"{alias}*"))


def assessed(cluster: Cluster, alias: str, **kwargs: Any) -> Assessment:
    """assess, checking that it changed no index and left no temporary restore behind."""
    before = indices_of(cluster, alias)
    aliases_before = cluster.alias_targets(alias)
    result = assess(cluster, alias, **kwargs)
    assert indices_of(cluster, alias) == before
    assert cluster.alias_targets(alias) == aliases_before
    return result


def methods(result: Assessment) -> tuple[MigrationState, Risk, int | None, Method]:
    return result.state, result.risk, result.integrity_level, result.recommendation.method


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_alias_is_one_line_bad_input_and_changes_nothing(cluster: Cluster,
                                                                 alias_name: str) -> None:
    journal_index = f"{alias_name}-journal"
    with pytest.raises(BadInput) as caught:
        assess(cluster, alias_name, journal_index=journal_index)
    assert str(caught.value) == (f"alias {alias_name} does not exist; list aliases with "
                                 "`indexshift info`")
    assert indices_of(cluster, alias_name) == []  # no journal, no temporary index


def test_an_index_is_not_an_alias(cluster: Cluster, alias_name: str) -> None:
    make_index(cluster, alias_name, range(3))
    with pytest.raises(BadInput, match="is an index, not an alias"):
        assess(cluster, alias_name)


# -- integrity levels --------------------------------------------------------------------------


def test_level_1_nothing_missing_is_no_action(cluster: Cluster, alias_name: str,
                                              repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots)
    result = assessed(cluster, alias_name)
    # A SUCCESS snapshot of the serving index minutes ago: a migration about to start.
    assert methods(result) == (MigrationState.PRE_MIGRATION, Risk.LOW, 1, Method.NO_ACTION)
    assert (result.counts.current, result.counts.backup, result.counts.missing) == (
        DOCS, DOCS, 0)
    assert result.backup is not None and result.backup.kind == "snapshot"
    assert (result.backup.name, result.backup.index, result.backup.state) == (
        f"{alias_name}-before", v1, "SUCCESS")
    assert result.current_index == v1 and result.serving == [v1]
    assert result.evidence["mapping"]["ok"] is True
    data = result.to_json()
    assert [s["question"][:2] for s in data["decision_path"]] == ["Q1", "Q2", "Q3", "Q4"]


def test_level_2_one_missing_is_reindexed_and_newer_writes_are_not_loss(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots)
    delete_docs(cluster, v1, [7])
    put_docs(cluster, v1, range(DOCS, DOCS + 5))  # written after the backup
    put_docs(cluster, v1, [10, 11, 12], tag="changed")
    result = assessed(cluster, alias_name)
    assert methods(result)[2:] == (2, Method.SELECTIVE_REINDEX)
    assert (result.counts.missing, result.counts.extra, result.counts.changed) == (1, 5, 3)
    assert result.missing_ids == ["7"]
    assert sorted(result.changed_ids) == ["10", "11", "12"]
    assert "would accept this variance" in result.recommendation.reason
    q3 = result.decision_path[2]
    assert q3.answer.startswith(f"yes: backup {DOCS:,} docs, current {DOCS + 4:,}, 1 missing "
                                "(0.05 %)")


def test_level_3_half_a_percent_missing_is_reindexed_selectively(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots)
    delete_docs(cluster, v1, range(100, 110))
    result = assessed(cluster, alias_name)
    assert methods(result)[2:] == (3, Method.SELECTIVE_REINDEX)
    assert sorted(result.missing_ids, key=int) == [str(i) for i in range(100, 110)]
    assert [s.question[:2] for s in result.decision_path] == ["Q1", "Q2", "Q3", "Q5"]
    assert "10 missing (0.5 %)" in result.decision_path[2].answer


def test_level_4_ten_percent_missing_is_full_restore(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots)
    delete_docs(cluster, v1, range(200))
    result = assessed(cluster, alias_name, include_ids=False)
    assert methods(result)[2:] == (4, Method.FULL_RESTORE)
    assert result.counts.missing == 200 and result.missing_ids == []
    assert "200 missing (10 %)" in result.decision_path[2].answer


def test_level_4_closed_index_is_emergency_restore(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots, docs=300)
    cluster.request("POST", f"/{v1}/_close")
    result = assessed(cluster, alias_name)
    assert methods(result)[2:] == (4, Method.EMERGENCY_RESTORE)
    assert result.counts.backup == 300 and result.counts.current is None
    assert result.evidence["search"]["ok"] is False
    assert result.decision_path[1].answer == f"no: {v1} is closed"


def test_wrong_mapping_against_the_spec_is_blue_green(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    backed_up(cluster, alias_name, repository, snapshots, docs=300)
    spec = {"properties": {"title": {"type": "keyword"}, "n": {"type": "long"}}}
    result = assessed(cluster, alias_name, spec_mappings=spec)
    assert methods(result)[2:] == (3, Method.BLUE_GREEN_REQUIRED)
    assert result.evidence["mapping"]["ok"] is False
    assert any("title" in p for p in result.evidence["mapping"]["problems"])


def test_the_spec_checked_is_the_one_of_the_version_that_serves(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots, docs=300)
    wrong = {"properties": {"title": {"type": "keyword"}, "n": {"type": "long"}}}
    checked = assessed(cluster, alias_name, spec_mappings_by_version={1: wrong, 2: {}})
    assert checked.current_index == v1
    assert methods(checked)[2:] == (3, Method.BLUE_GREEN_REQUIRED)
    assert checked.evidence["mapping"]["ok"] is False
    # No spec describes version 1: the backup's mapping of the same index is the reference.
    unchecked = assessed(cluster, alias_name, spec_mappings_by_version={2: wrong})
    assert unchecked.evidence["mapping"]["ok"] is True
    assert methods(unchecked)[2:] == (1, Method.NO_ACTION)


def test_a_diff_that_cannot_run_still_removes_the_temporary_restore(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300), mappings={"_source": {"enabled": False}})
    point(cluster, alias_name, v1)
    snapshot(cluster, repository, snapshots, f"{alias_name}-nosource", v1)
    delete_docs(cluster, v1, range(30))
    result = assessed(cluster, alias_name)  # asserts no index is left behind
    comparison = result.evidence["comparison"]
    assert "_source" in comparison["error"]
    # The runbook's count comparison stands in; without ids only a full restore is safe.
    assert (result.counts.missing, result.integrity_level) == (30, 4)
    assert result.recommendation.method is Method.FULL_RESTORE


# -- states ------------------------------------------------------------------------------------


def test_no_migration_without_backup_is_no_rollback(cluster: Cluster, alias_name: str) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300))
    point(cluster, alias_name, v1)
    result = assessed(cluster, alias_name)
    assert methods(result) == (MigrationState.NO_MIGRATION, Risk.LOW, None, Method.NO_ROLLBACK)
    assert result.backup is None and result.counts.current == 300
    assert result.decision_path[0].answer.startswith("no: no SUCCESS snapshot holds")


def test_pre_migration_from_an_open_run_in_the_journal(cluster: Cluster, alias_name: str,
                                                       tmp_path: Path) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300))
    point(cluster, alias_name, v1)
    journal_index = f"{alias_name}-journal"
    journal = Journal(cluster, journal_index, tmp_path)
    created = journal.create_run(RunRecord.new(alias=alias_name, version=2, spec_name="x",
                                               spec_checksum="0", blue=v1))
    journal.advance(created, phase=Phase.BACKUP_CREATED)
    result = assessed(cluster, alias_name, journal_index=journal_index)
    assert methods(result)[:2] == (MigrationState.PRE_MIGRATION, Risk.LOW)
    assert result.evidence["journal_run"]["phase"] == "BACKUP_CREATED"
    assert cluster.get_doc(journal_index, run_doc_id(created.value.run_id)) is not None


def test_partial_schema_change(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(300))
    point(cluster, alias_name, v1)
    make_index(cluster, v2, [])
    result = assessed(cluster, alias_name)
    assert methods(result) == (MigrationState.PARTIAL_SCHEMA_CHANGE, Risk.MEDIUM, None,
                               Method.NO_ROLLBACK)
    assert (result.old_index, result.new_index, result.current_index) == (v1, v2, v1)
    assert f"delete the empty {v2} and retry" in result.recommendation.reason


def test_mid_reindex_copy_that_died_halfway(cluster: Cluster, alias_name: str,
                                            repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots, docs=300)
    v2 = f"{alias_name}_v2"  # made by hand, underscore style
    make_index(cluster, v2, range(120))
    result = assessed(cluster, alias_name)
    # The alias still serves v1, so the tree runs on it: nothing lost there.
    assert methods(result) == (MigrationState.MID_REINDEX, Risk.HIGH, 1, Method.NO_ACTION)
    assert (result.old_index, result.new_index) == (v1, v2)
    reason = result.evidence["classification"]["reason"]
    assert "120 of" in reason and "died halfway" in reason
    assert f"still serves {v1}" in result.recommendation.reason


def test_mid_reindex_with_a_running_task(reindex_cluster: Cluster, reindex_alias: str) -> None:
    cluster, alias = reindex_cluster, reindex_alias
    plugins = cluster.request("GET", "/_nodes/plugins",
                              params={"filter_path": "nodes.*.modules.name"})
    modules = {m["name"] for node in plugins["nodes"].values() for m in node["modules"]}
    if "reindex" not in modules:
        pytest.skip("this node has no reindex module")
    v1, v2 = f"{alias}-v1", f"{alias}-v2"
    make_index(cluster, v1, range(1000))
    point(cluster, alias, v1)
    make_index(cluster, v2, [])
    started = cluster.request("POST", "/_reindex",
                              params={"wait_for_completion": False, "requests_per_second": 1,
                                      "slices": 1},
                              body={"source": {"index": v1, "size": 5}, "dest": {"index": v2}})
    task_id = str(started["task"])
    try:
        result = assessed(cluster, alias)
        assert methods(result) == (MigrationState.MID_REINDEX, Risk.HIGH, None,
                                   Method.NO_ROLLBACK)
        [task] = result.evidence["reindex_tasks"]
        assert (task["task_id"], task["dest"], task["sources"]) == (task_id, v2, [v1])
        assert f"indexshift halt {alias}" in result.recommendation.reason
    finally:
        cluster.request("POST", f"/_tasks/{task_id}/_cancel")
        # Wait until it is gone, so no late batch recreates v2 after the cleanup.
        cluster.request("GET", f"/_tasks/{task_id}",
                        params={"wait_for_completion": True, "timeout": "30s"})


def test_post_reindex_pre_switch(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2-20261123t101500"
    make_index(cluster, v1, range(300))
    point(cluster, alias_name, v1)
    make_index(cluster, v2, range(300))
    result = assessed(cluster, alias_name, backup=v2)
    # With the copy as the reference: v1 lacks nothing that v2 has.
    assert methods(result) == (MigrationState.POST_REINDEX_PRE_SWITCH, Risk.MEDIUM, 1,
                               Method.NO_ACTION)
    assert result.backup is not None and (result.backup.kind, result.backup.name) == (
        "index", v2)
    assert (result.old_index, result.new_index) == (v1, v2)


def test_mid_switch_with_a_complete_copy_is_completed(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(300))
    make_index(cluster, v2, range(300))
    point(cluster, alias_name, v1, v2)
    result = assessed(cluster, alias_name)
    assert methods(result)[:2] == (MigrationState.MID_SWITCH, Risk.CRITICAL)
    assert result.recommendation.method is Method.COMPLETE_SWITCH
    assert (result.old_index, result.new_index, sorted(result.serving)) == (v1, v2, [v1, v2])
    assert result.evidence["switch_comparison"]["missing"] == 0


def test_mid_switch_with_an_incomplete_copy_is_rolled_back(cluster: Cluster,
                                                           alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(300))
    make_index(cluster, v2, range(290))
    point(cluster, alias_name, v1, v2, write=v1)
    result = assessed(cluster, alias_name)
    assert methods(result)[:2] == (MigrationState.MID_SWITCH, Risk.CRITICAL)
    assert result.recommendation.method is Method.ROLLBACK
    assert result.decision_path[0].answer.startswith("no:")
    assert "10 of" in result.decision_path[0].answer


def test_mid_switch_with_the_alias_gone(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(300))
    make_index(cluster, v2, range(300))
    result = assessed(cluster, alias_name)
    assert methods(result)[:2] == (MigrationState.MID_SWITCH, Risk.CRITICAL)
    assert result.recommendation.method is Method.COMPLETE_SWITCH
    assert result.serving == [] and result.current_index == v2


def test_post_switch_against_the_predecessors_backup(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300))
    snapshot(cluster, repository, snapshots, f"{alias_name}-v1-backup", v1)
    v2 = f"{alias_name}-v2"
    make_index(cluster, v2, range(300))
    point(cluster, alias_name, v2)
    result = assessed(cluster, alias_name)
    assert methods(result) == (MigrationState.POST_SWITCH, Risk.LOW, 1, Method.NO_ACTION)
    assert result.backup is not None and result.backup.index == v1
    assert (result.old_index, result.new_index) == (v1, v2)
    # Another index's mapping may differ on purpose: it is not a reference.
    assert result.evidence["mapping"]["ok"] is None


def test_cleanup(cluster: Cluster, alias_name: str, repository: str,
                 snapshots: list[str]) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300))
    name = snapshot(cluster, repository, snapshots, f"{alias_name}-v1-backup", v1)
    v2 = f"{alias_name}-v2"
    make_index(cluster, v2, range(295))
    point(cluster, alias_name, v2)
    cluster.request("DELETE", f"/{v1}")
    result = assessed(cluster, alias_name, backup=f"{repository}:{name}")
    assert methods(result) == (MigrationState.CLEANUP, Risk.LOW, 3,
                               Method.SELECTIVE_REINDEX)
    assert result.counts.missing == 5 and result.new_index == v2


def test_after_a_full_restore_the_kept_index_is_a_predecessor_and_its_backup_the_reference(
        cluster: Cluster, alias_name: str, repository: str, snapshots: list[str]) -> None:
    v1 = backed_up(cluster, alias_name, repository, snapshots)
    delete_docs(cluster, v1, range(400))
    # Taken during the incident: newer than the backup, holding the broken index.
    snapshot(cluster, repository, snapshots, f"{alias_name}-incident", v1)
    # What `recover --method FULL_RESTORE` leaves: the backup restored under its name and
    # serving the alias, the broken index write-blocked beside it.
    restored = restored_name(alias_name, recovery_stamp(datetime.now(UTC)))
    restore_as(cluster, repository, f"{alias_name}-before", v1, restored)
    cluster.add_write_block(v1)
    cluster.update_aliases([{"remove": {"index": v1, "alias": alias_name}},
                            {"add": {"index": restored, "alias": alias_name,
                                     "is_write_index": True}}])

    result = assessed(cluster, alias_name)

    assert methods(result) == (MigrationState.POST_SWITCH, Risk.LOW, 1, Method.NO_ACTION)
    assert (result.current_index, result.old_index) == (restored, v1)
    assert f"{v1} is kept read-only for forensics" in result.action
    assert "retry" not in result.action + result.recommendation.reason
    assert result.backup is not None and result.backup.name == f"{alias_name}-before"
    assert result.evidence["restored_from"] == {
        "repository": repository, "snapshot": f"{alias_name}-before", "index": v1}
    assert result.counts.missing == 0 and result.counts.backup == DOCS
    assert result.evidence["mapping"]["ok"] is True  # the backup's own mapping


def test_unknown_backup_is_bad_input(cluster: Cluster, alias_name: str) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(10))
    point(cluster, alias_name, v1)
    with pytest.raises(BadInput, match="no snapshot and no index"):
        assess(cluster, alias_name, backup=f"{alias_name}-nothing")
    with pytest.raises(BadInput, match="not registered"):
        assess(cluster, alias_name, backup=f"{alias_name}-repo:snap")

