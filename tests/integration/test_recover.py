"""Each recovery method on a real node, from a broken state built by hand with raw REST."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from indexshift.assess import Method, assess
from indexshift.cluster import Cluster
from indexshift.copier import copy_documents, ids_written_since, moved_since, seq_no_mark
from indexshift.errors import CheckFailed
from indexshift.recover import RecoveryPlan, execute, plan_recovery, recover
from indexshift.snapshots import (
    DEFAULT_REPOSITORY,
    RestoreSource,
    SnapshotInfo,
    delete_snapshot,
    ensure_repository,
    restore_source,
    take_snapshot,
)

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

DOCS = 2_000


@dataclass
class Made:
    """Snapshots and indices outside ``alias_name*`` a test creates; removed when it ends."""

    snapshots: list[SnapshotInfo] = field(default_factory=list)
    index_patterns: list[str] = field(default_factory=list)


@pytest.fixture
def made(cluster: Cluster) -> Iterator[Made]:
    things = Made()
    yield things
    for pattern in things.index_patterns:
        for row in cluster.indices(pattern):
            cluster.delete_index(str(row["index"]))
    for info in things.snapshots:
        delete_snapshot(cluster, info)


@pytest.fixture
def repository(cluster: Cluster) -> str:
    name = DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in cluster.snapshot_repositories() else None
    return ensure_repository(cluster, name)


def doc(n: int, version: int = 1) -> dict[str, Any]:
    return {"n": n, "title": f"document {n}", "version": version}


def make_index(cluster: Cluster, name: str, ids: range) -> None:
    cluster.request("PUT", f"/{name}", body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"n": {"type": "integer"}, "title": {"type": "text"},
                                    "version": {"type": "integer"}}}})
    for start in range(ids.start, ids.stop, 1_000):
        result = cluster.bulk_index(name, ((f"d{n}", doc(n))
                                           for n in range(start, min(start + 1_000, ids.stop))))
        assert result.failed == 0, result.first_error
    cluster.refresh(name)


def point(cluster: Cluster, alias: str, *indices: str, write: str | None = None) -> None:
    actions: list[dict[str, Any]] = []
    for index in indices:
        add: dict[str, Any] = {"index": index, "alias": alias}
        if write is not None:
            add["is_write_index"] = index == write
        actions.append({"add": add})
    cluster.request("POST", "/_aliases", body={"actions": actions})


def delete_random(cluster: Cluster, index: str, how_many: int, seed: int,
                  among: int = DOCS) -> list[str]:
    gone = sorted(f"d{n}" for n in random.Random(seed).sample(range(among), how_many))
    result = cluster.bulk([{"delete": {"_index": index, "_id": doc_id}} for doc_id in gone])
    assert result.failed == 0, result.first_error
    cluster.refresh(index)
    return gone


def snapshot_of(cluster: Cluster, repository: str, index: str, made: Made,
                prefix: str) -> SnapshotInfo:
    info = take_snapshot(cluster, repository, [index], prefix=prefix)
    made.snapshots.append(info)
    assert info.succeeded
    return info


def state(cluster: Cluster, alias: str) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """Every index named after the alias (name, open/closed, docs) and every alias on them."""
    rows = sorted((str(r["index"]), str(r["status"]), str(r.get("docs.count")))
                  for r in cluster.indices(f"{alias}*"))
    aliases = {name: sorted(targets) for name, targets in cluster.aliases().items()
               if name.startswith(alias)}
    return rows, aliases


def ids_in(cluster: Cluster, index: str) -> set[str]:
    body = cluster.search(index, {"size": 10_000, "_source": False,
                                  "query": {"match_all": {}}})
    return {str(hit["_id"]) for hit in body["hits"]["hits"]}


def write_blocked(cluster: Cluster, index: str) -> bool:
    settings = cluster.request("GET", f"/{index}/_settings",
                               params={"flat_settings": True})[index]["settings"]
    return str(settings.get("index.blocks.write", "false")) == "true"


def dropped_indices(cluster: Cluster, prefix: str) -> set[tuple[str, str]]:
    """(name, uuid) of every deleted index named ``prefix...`` the cluster still remembers
    (its index graveyard): what a run created and removed leaves a tombstone here."""
    body = cluster.request("GET", "/_cluster/state/metadata",
                           params={"filter_path": "metadata.index-graveyard.tombstones"})
    tombstones = (((body or {}).get("metadata") or {}).get("index-graveyard") or {}).get(
        "tombstones") or []
    return {(str(t["index"]["index_name"]), str(t["index"]["index_uuid"])) for t in tombstones
            if str(t["index"]["index_name"]).startswith(prefix)}


def step_kinds(report: dict[str, Any]) -> list[str]:
    return [step["kind"] for step in report["result"]["steps"]]


def recovered(report: dict[str, Any], method: Method) -> None:
    """The recovery ran the method it should, and the second assessment finds nothing lost."""
    assert report["plan"]["method"] == method.value
    assert report["confirmed"] and report["result"] is not None
    after = report["after"]
    assert after["integrity_level"] == 1, after["decision_path"]
    assert after["counts"]["missing"] == 0
    assert report["recovered"] is True



def finished_recovery(report: dict[str, Any], kept: str) -> None:
    """The assessment after a restore sees a finished recovery, checked against the backup
    it restored, and never takes the kept index for an unfinished migration."""
    after = report["after"]
    assert (after["state"], after["risk"], after["integrity_level"]) == ("POST_SWITCH", "low", 1)
    assert after["recommendation"]["method"] == "NO_ACTION"
    assert after["current_index"] == report["plan"]["restored_index"]
    assert after["old_index"] == kept
    assert after["action"] == (f"monitor; {kept} is kept read-only for forensics — delete it "
                               "with `indexshift cleanup` once the incident is closed")
    advice = f"{after['action']} {after['recommendation']['reason']}".lower()
    for unfinished in ("retry the migration", "delete the new index", "delete the empty",
                       "delete the unreadable", "stopped halfway", "switch the alias"):
        assert unfinished not in advice
    assert after["backup"]["name"] == report["before"]["backup"]["name"]
    assert after["evidence"]["restored_from"]["snapshot"] == report["before"]["backup"]["name"]


# -- selective reindex -------------------------------------------------------------------------


def test_selective_reindex_from_a_snapshot_copies_back_only_the_missing(
        cluster: Cluster, alias_name: str, repository: str, made: Made) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    lost = delete_random(cluster, v1, 12, seed=1)
    cluster.put_doc(v1, "newer", doc(99_999), refresh=True)  # written after the backup
    rewritten = lost[0]

    def application_writes_again(plan: RecoveryPlan) -> bool:
        # Between the assessment and the copy, the application writes one lost document
        # again, newer than the backup: the create-only copy must leave it as it is.
        cluster.put_doc(v1, rewritten, doc(int(rewritten[1:]), version=2), refresh=True)
        return True

    report = recover(cluster, alias_name, confirm=application_writes_again)

    recovered(report, Method.SELECTIVE_REINDEX)
    before = report["before"]
    assert before["integrity_level"] == 3 and before["counts"]["missing"] == 12
    assert before["counts"]["extra"] == 1
    # The snapshot was restored aside once, before the plan: the copy reads that index.
    aside = before["backup"]["restored_as"]
    assert before["backup"]["kind"] == "snapshot" and aside.startswith(f"{alias_name}-assess-")
    assert report["plan"]["temporary_indices"] == []
    assert step_kinds(report) == ["copy_documents", "refresh", "verify_present"]
    assert {step["details"]["source"] for step in report["plan"]["steps"]
            if step["kind"] == "copy_documents"} == {aside}
    result = report["result"]
    assert result["copied"] == 11 and result["kept_existing"] == 1
    assert result["verified_missing"] == 0
    copy = next(step for step in result["steps"] if step["kind"] == "copy_documents")
    assert copy["details"]["via"] == ("_reindex" if cluster.has_module_everywhere("reindex")
                                      else "_mget+_bulk")
    assert not cluster.index_exists(aside)
    assert cluster.count(v1) == DOCS + 1
    kept = cluster.get_doc(v1, rewritten)
    assert kept is not None and kept["_source"]["version"] == 2
    assert list(cluster.alias_targets(alias_name)) == [v1]


def test_a_recovery_restores_the_backup_snapshot_once(
        cluster: Cluster, alias_name: str, repository: str, made: Made) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    backup = snapshot_of(cluster, repository, v1, made, alias_name)
    delete_random(cluster, v1, 30, seed=7)
    restored_from: list[RestoreSource | None] = []

    def look_at_the_copy(plan: RecoveryPlan) -> bool:
        copy = plan.steps[0].details["source"]
        restored_from.append(restore_source(cluster, copy))
        return True

    dropped = dropped_indices(cluster, alias_name)
    report = recover(cluster, alias_name, confirm=look_at_the_copy)

    recovered(report, Method.SELECTIVE_REINDEX)
    aside = report["before"]["backup"]["restored_as"]
    assert restored_from == [RestoreSource(repository, backup.name, v1)]
    assert report["after"]["backup"]["restored_as"] == aside  # read again, not restored again
    # Both assessments and the copy: one index created and dropped, the one restore.
    assert [name for name, _ in dropped_indices(cluster, alias_name) - dropped] == [aside]
    assert not cluster.index_exists(aside)
    assert [row["index"] for row in cluster.indices(f"{alias_name}*")] == [v1]


def test_selective_reindex_from_an_index(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(DOCS))
    make_index(cluster, v2, range(DOCS))
    point(cluster, alias_name, v2)
    delete_random(cluster, v2, 25, seed=2)

    report = recover(cluster, alias_name, backup=v1)

    recovered(report, Method.SELECTIVE_REINDEX)
    assert report["before"]["backup"]["kind"] == "index"
    assert step_kinds(report) == ["copy_documents", "refresh", "verify_present"]
    assert report["result"]["copied"] == 25
    assert ids_in(cluster, v2) == ids_in(cluster, v1)
    assert cluster.count(v1) == DOCS  # the backup index is only read


def test_copy_documents_in_small_batches_keeps_each_answer_small(
        cluster: Cluster, alias_name: str) -> None:
    # 300 batches of one document in one synchronous _reindex would answer with hundreds of
    # headers on OpenSearch 2.19, more than the HTTP client accepts.
    source, dest = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, source, range(300))
    make_index(cluster, dest, range(0))
    ids = [str(row["_id"]) for row in cluster.search(
        source, {"size": 300, "_source": False})["hits"]["hits"]]
    counted = copy_documents(cluster, source, dest, ids, create_only=True, batch_size=1,
                             refresh=True, use_reindex=cluster.has_module_everywhere("reindex"))
    assert counted.written == 300 and cluster.count(dest) == 300


def test_moved_since_sees_deletes_and_re_creations_no_search_finds(
        cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    make_index(cluster, index, range(5))
    cluster.put_settings(index, {"index": {"refresh_interval": "-1"}})  # refreshes are ours
    cluster.refresh(index)
    mark = seq_no_mark(cluster, index)
    cluster.delete_doc(index, "d0")
    cluster.delete_doc(index, "d1", refresh=True)
    cluster.put_doc(index, "d1", doc(1, version=2))  # created again after the last refresh
    cluster.put_doc(index, "d2", doc(2, version=2))
    assert set(ids_written_since(cluster, index, mark)) == set()  # searches see none of it
    assert moved_since(cluster, index, ["d0", "d1", "d2", "d3", "d4"], mark) == {"d0", "d1",
                                                                                "d2"}


def test_copy_documents_is_create_only_both_server_side_and_through_bulk(
        cluster: Cluster, alias_name: str) -> None:
    source, dest = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, source, range(300))
    make_index(cluster, dest, range(300))
    ways = [False, True] if cluster.has_module_everywhere("reindex") else [False]
    for use_reindex in ways:
        lost = delete_random(cluster, dest, 20, seed=7, among=300)
        cluster.put_doc(dest, lost[0], doc(0, version=2), refresh=True)

        counted = copy_documents(cluster, source, dest, lost, create_only=True,
                                 use_reindex=use_reindex)

        assert (counted.written, counted.kept) == (19, 1)
        assert counted.via == ("_reindex" if use_reindex else "_mget+_bulk")
        cluster.refresh(dest)
        assert cluster.count(dest) == 300
        rewritten = cluster.get_doc(dest, lost[0])
        assert rewritten is not None and rewritten["_source"]["version"] == 2
        cluster.put_doc(dest, lost[0], doc(int(lost[0][1:])), refresh=True)


# -- restores ----------------------------------------------------------------------------------


def test_full_restore_serves_the_backup_and_keeps_the_current_index(
        cluster: Cluster, alias_name: str, repository: str, made: Made) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    delete_random(cluster, v1, 400, seed=3)  # 20 %: severe loss
    cluster.put_doc(v1, "newer", doc(99_999), refresh=True)  # written after the backup

    dropped = dropped_indices(cluster, alias_name)
    report = recover(cluster, alias_name)

    recovered(report, Method.FULL_RESTORE)
    # Two restores: the backup read aside once by both assessments, and the one that serves.
    aside = report["before"]["backup"]["restored_as"]
    assert report["after"]["backup"]["restored_as"] == aside
    assert [name for name, _ in dropped_indices(cluster, alias_name) - dropped] == [aside]
    plan = report["plan"]
    assert any("1 document(s)" in note and "newer than the backup" in note
               for note in plan["notes"])
    restored = plan["restored_index"]
    assert restored.startswith(f"{alias_name}-restored-")
    assert step_kinds(report) == ["restore_snapshot", "verify_restored", "block_writes",
                                  "switch_alias"]
    targets = cluster.alias_targets(alias_name)
    assert list(targets) == [restored] and targets[restored].get("is_write_index")
    assert cluster.count(alias_name) == DOCS
    # The broken index is kept, write-blocked, with the document newer than the backup.
    assert cluster.index_exists(v1) and write_blocked(cluster, v1)
    assert cluster.get_doc(v1, "newer") is not None
    finished_recovery(report, v1)
    cluster.put_doc(alias_name, "after-recovery", doc(1), refresh=True)  # writable again


@pytest.mark.parametrize("breakage", ["closed", "red"])
def test_emergency_restore_when_the_current_index_is_unusable(
        cluster: Cluster, alias_name: str, repository: str, made: Made, breakage: str) -> None:
    v1 = f"{alias_name}-v1"
    made.index_patterns.append(f"emergency-restore-{v1}-*")
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    broken = v1
    if breakage == "closed":
        cluster.request("POST", f"/{v1}/_close")
    else:
        # The alias was moved to a new index no node may hold (its primary stays unassigned,
        # so it is red), and the old one is gone.
        broken = f"{alias_name}-v2"
        cluster.request("PUT", f"/{broken}", params={"wait_for_active_shards": 0}, body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0,
                         "index.routing.allocation.require._name": "no-such-node"}})
        cluster.update_aliases([{"remove_index": {"index": v1}},
                                {"add": {"index": broken, "alias": alias_name}}])
        assert cluster.indices(broken)[0]["health"] == "red"

    report = recover(cluster, alias_name)

    recovered(report, Method.EMERGENCY_RESTORE)
    assert report["before"]["integrity_level"] == 4
    restored = report["plan"]["restored_index"]
    assert restored.startswith(f"emergency-restore-{v1}-")
    assert list(cluster.alias_targets(alias_name)) == [restored]
    assert cluster.count(alias_name) == DOCS
    assert cluster.index_exists(broken) and write_blocked(cluster, broken)
    block = next(s for s in report["result"]["steps"] if s["kind"] == "block_writes")
    assert block["details"]["blocked"] == {broken: "index.blocks.write"}
    finished_recovery(report, broken)


# -- settling a half-done switch -----------------------------------------------------------------


def test_rollback_points_the_alias_back_at_the_old_index(
        cluster: Cluster, alias_name: str, repository: str, made: Made) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(DOCS))
    snapshot_of(cluster, repository, v1, made, alias_name)
    make_index(cluster, v2, range(DOCS))
    delete_random(cluster, v2, 30, seed=4)  # the new index is the incomplete one
    cluster.add_write_block(v1)  # as a cut-over leaves the old index
    point(cluster, alias_name, v1, v2, write=v1)

    report = recover(cluster, alias_name)

    recovered(report, Method.ROLLBACK)
    assert report["before"]["state"] == "MID_SWITCH"
    assert step_kinds(report) == ["allow_writes", "switch_alias"]
    assert report["result"]["steps"][0]["details"] == {"unblocked": v1}
    targets = cluster.alias_targets(alias_name)
    assert list(targets) == [v1] and targets[v1].get("is_write_index")
    assert not write_blocked(cluster, v1)
    assert cluster.count(alias_name) == DOCS
    assert cluster.index_exists(v2)  # kept for inspection


def test_complete_switch_finishes_a_half_switch(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(DOCS))
    make_index(cluster, v2, range(DOCS))
    point(cluster, alias_name, v1, v2, write=v1)

    report = recover(cluster, alias_name, backup=v1)

    recovered(report, Method.COMPLETE_SWITCH)
    assert report["before"]["state"] == "MID_SWITCH"
    assert step_kinds(report) == ["allow_writes", "switch_alias"]
    targets = cluster.alias_targets(alias_name)
    assert list(targets) == [v2] and targets[v2].get("is_write_index")
    assert cluster.index_exists(v1)  # kept for rollback


# -- guarantees ----------------------------------------------------------------------------------


def test_dry_run_changes_nothing(cluster: Cluster, alias_name: str, repository: str,
                                 made: Made) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    delete_random(cluster, v1, 400, seed=5)
    before = state(cluster, alias_name)

    for method in (None, Method.SELECTIVE_REINDEX):
        report = recover(cluster, alias_name, method=method, dry_run=True)
        assert report["result"] is None and report["after"] is None
        assert not report["plan"]["empty"]

    assert state(cluster, alias_name) == before
    assert not write_blocked(cluster, v1)


def test_nothing_lost_plans_no_action_and_runs_nothing(cluster: Cluster, alias_name: str,
                                                       repository: str, made: Made) -> None:
    v1 = f"{alias_name}-v1"
    make_index(cluster, v1, range(300))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    before = state(cluster, alias_name)

    report = recover(cluster, alias_name,
                     confirm=lambda plan: pytest.fail("an empty plan needs no confirmation"))

    assert report["plan"]["method"] == "NO_ACTION" and report["plan"]["empty"]
    assert report["result"] is None and report["recovered"] is True
    assert report["before"]["integrity_level"] == 1
    assert state(cluster, alias_name) == before


def test_declined_confirmation_changes_nothing(cluster: Cluster, alias_name: str) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(100))
    make_index(cluster, v2, range(100))
    point(cluster, alias_name, v1, v2, write=v1)
    before = state(cluster, alias_name)
    seen: list[RecoveryPlan] = []

    def decline(plan: RecoveryPlan) -> bool:
        seen.append(plan)
        return False

    report = recover(cluster, alias_name, confirm=decline)

    assert [plan.method for plan in seen] == [Method.COMPLETE_SWITCH]
    assert report["confirmed"] is False and report["result"] is None
    assert state(cluster, alias_name) == before


def test_a_moved_alias_stops_the_recovery_before_anything_changes(
        cluster: Cluster, alias_name: str, repository: str, made: Made) -> None:
    v1, v2 = f"{alias_name}-v1", f"{alias_name}-v2"
    make_index(cluster, v1, range(DOCS))
    point(cluster, alias_name, v1)
    snapshot_of(cluster, repository, v1, made, alias_name)
    delete_random(cluster, v1, 400, seed=6)
    plan = plan_recovery(assess(cluster, alias_name), Method.FULL_RESTORE)
    make_index(cluster, v2, range(10))
    cluster.update_aliases([{"remove": {"index": v1, "alias": alias_name}},
                            {"add": {"index": v2, "alias": alias_name}}])
    before = state(cluster, alias_name)

    with pytest.raises(CheckFailed, match="changed since the assessment") as caught:
        execute(cluster, plan)

    assert f"indexshift assess {alias_name}" in str(caught.value)
    assert state(cluster, alias_name) == before
