"""Pure parts of assess: state rules, integrity levels, the decision tree, the JSON shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from indexshift.assess import (
    EMERGENCY_RESTORE_KIND,
    FULL_RESTORE_KIND,
    AliasTarget,
    BackupRef,
    Comparison,
    Counts,
    DecisionFacts,
    Evidence,
    IndexFacts,
    MappingCheck,
    Method,
    MigrationState,
    ReindexTask,
    Risk,
    RunFacts,
    SearchCheck,
    check_mapping,
    classify,
    classify_state,
    conclude,
    decide,
    decision_facts,
    default_backup,
    emergency_restore_name,
    holds_current,
    index_facts_from_row,
    index_in_snapshot,
    integrity_level,
    parse_restored_name,
    percent_text,
    read_reindex_tasks,
    recovery_stamp,
    required_fields,
    restored_name,
    version_of,
)
from indexshift.errors import BadInput
from indexshift.snapshots import RestoreSource, SnapshotInfo, read_restore_source

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
A = "files"
V1, V2, V3 = f"{A}-v1-20261101t000000", f"{A}-v2-20261120t000000", f"{A}-v3-20261122t000000"
LONG_AGO = NOW - timedelta(days=60)


def idx(name: str, docs: int | None, *, created: datetime = LONG_AGO, health: str = "green",
        status: str = "open") -> IndexFacts:
    return IndexFacts(name, version_of(A, name), docs, health=health, status=status,
                      created=created)


def ev(targets: list[str] | list[AliasTarget], indices: list[IndexFacts], **kw: Any) -> Evidence:
    alias_targets = tuple(t if isinstance(t, AliasTarget) else AliasTarget(t)
                          for t in targets)
    return Evidence(alias=A, now=NOW, targets=alias_targets, indices=tuple(indices), **kw)


def snap(name: str, indices: list[str], *, state: str = "SUCCESS", failed: int = 0,
         end: datetime = NOW - timedelta(hours=1)) -> SnapshotInfo:
    return SnapshotInfo(repository="repo", name=name, state=state, indices=tuple(indices),
                        shards_total=1, shards_successful=1 - failed, shards_failed=failed,
                        start_time=end - timedelta(minutes=1), end_time=end,
                        include_global_state=False)


def run(phase: str, status: str = "RUNNING", green: str | None = None) -> RunFacts:
    return RunFacts("20261123t000000000-abcd", phase, status, blue=V1, green=green)


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), [
    (f"{A}-v1", 1), (f"{A}-v12-20261123t101500", 12), (f"{A}_v3", 3), (f"{A}_v3_old", 3),
    (f"{A}-v2-anything", 2), (A, None), (f"{A}-assess-1234abcd", None), (f"{A}x-v1", None),
    ("other-v1", None),
])
def test_versioned_names(name: str, version: int | None) -> None:
    assert version_of(A, name) == version


def test_index_facts_from_a_cat_row() -> None:
    row = {"index": f"{A}-v2", "health": "yellow", "status": "open",
           "creation.date": str(int(NOW.timestamp() * 1000))}
    facts = index_facts_from_row(f"{A}-v2", 2, row)
    assert facts == IndexFacts(f"{A}-v2", 2, None, health="yellow", status="open", created=NOW)
    closed = index_facts_from_row(f"{A}-v1", 1, {"index": f"{A}-v1", "status": "close",
                                                 "creation.date": ""})
    assert (closed.health, closed.status, closed.created, closed.readable) == \
        (None, "close", None, False)
    assert index_facts_from_row("x", None, {}).status == "open"


def test_percent_text_keeps_small_shares_visible() -> None:
    assert percent_text(500, 1_000_000) == "0.05 %"
    assert percent_text(1, 1_000_000) == "0.0001 %"
    assert percent_text(200, 2000) == "10 %"
    assert percent_text(0, 0) == "0 %"


# -- states ------------------------------------------------------------------------------------


def test_alias_on_two_versioned_indices_is_mid_switch() -> None:
    found = classify(ev([V1, V2], [idx(V1, 100), idx(V2, 100)]))
    assert (found.state, found.risk) == (MigrationState.MID_SWITCH, Risk.CRITICAL)
    assert (found.old_index, found.new_index, found.current) == (V1, V2, V2)
    assert "points at" in found.reason


def test_missing_alias_with_versioned_indices_is_mid_switch() -> None:
    found = classify(ev([], [idx(V1, 100), idx(V2, 100)]))
    assert found.state is MigrationState.MID_SWITCH
    assert (found.old_index, found.new_index) == (V1, V2)
    assert "does not exist" in found.reason


def test_missing_alias_with_one_versioned_index_is_mid_switch_without_old() -> None:
    found = classify(ev([], [idx(V2, 100)]))
    assert found.state is MigrationState.MID_SWITCH
    assert (found.old_index, found.new_index) == (None, V2)


def test_write_index_not_the_newest_is_mid_switch() -> None:
    plain = f"{A}-original"
    targets = [AliasTarget(plain, True), AliasTarget(V2, False)]
    found = classify(ev(targets, [idx(plain, 100), idx(V2, 100)]))
    assert found.state is MigrationState.MID_SWITCH
    assert (found.old_index, found.new_index) == (plain, V2)
    assert "write index" in found.reason


def test_write_index_on_the_older_of_two_versioned_is_the_rollback_target() -> None:
    targets = [AliasTarget(V1, True), AliasTarget(V2, False), AliasTarget(V3, False)]
    found = classify(ev(targets, [idx(V1, 10), idx(V2, 10), idx(V3, 10)]))
    assert (found.state, found.old_index, found.new_index) == (
        MigrationState.MID_SWITCH, V1, V3)


def test_plain_multi_index_alias_is_no_migration() -> None:
    targets = [f"{A}-2025", f"{A}-2026"]
    found = classify(ev(targets, [idx(t, 10) for t in targets]))
    assert found.state is MigrationState.NO_MIGRATION


def test_running_reindex_into_newer_index_is_mid_reindex() -> None:
    task = ReindexTask("node:7", (V1,), V2, total=1000, done=400)
    found = classify(ev([V1], [idx(V1, 1000), idx(V2, 0)], tasks=(task,)))
    assert (found.state, found.risk) == (MigrationState.MID_REINDEX, Risk.HIGH)
    assert (found.old_index, found.new_index, found.current) == (V1, V2, V1)
    assert "400 of 1,000" in found.reason
    assert found.advice is not None and f"indexshift halt {A}" in found.advice


def test_reindex_into_an_unrelated_index_does_not_count() -> None:
    task = ReindexTask("node:7", (V1,), "elsewhere", total=1000, done=400)
    found = classify(ev([V1], [idx(V1, 1000)], tasks=(task,)))
    assert found.state is MigrationState.NO_MIGRATION


def test_newer_index_with_fewer_docs_and_no_task_is_a_copy_that_died() -> None:
    found = classify(ev([V1], [idx(V1, 1000), idx(V2, 400)]))
    assert found.state is MigrationState.MID_REINDEX
    assert "died halfway" in found.reason and "400 of" in found.reason


def test_dead_copy_recorded_by_an_open_run_suggests_resume() -> None:
    found = classify(ev([V1], [idx(V1, 1000), idx(V2, 400)],
                        run=run("REINDEX_50%", "HALTED", green=V2)))
    assert found.advice is not None and f"indexshift resume {A}" in found.advice
    assert "REINDEX_50%" in found.reason


def test_empty_newer_index_is_partial_schema_change() -> None:
    found = classify(ev([V1], [idx(V1, 1000), idx(V2, 0)]))
    assert (found.state, found.risk) == (MigrationState.PARTIAL_SCHEMA_CHANGE, Risk.MEDIUM)
    assert found.new_index == V2
    assert found.advice is not None and f"delete the empty {V2}" in found.advice


def test_unreadable_newer_index_is_partial_schema_change() -> None:
    found = classify(ev([V1], [idx(V1, 1000), idx(V2, None, status="close")]))
    assert found.state is MigrationState.PARTIAL_SCHEMA_CHANGE
    assert "closed" in found.reason


def test_full_newer_index_is_post_reindex_pre_switch() -> None:
    for docs in (1000, 1001):
        found = classify(ev([V1], [idx(V1, 1000), idx(V2, docs)]))
        assert (found.state, found.risk) == (MigrationState.POST_REINDEX_PRE_SWITCH,
                                             Risk.MEDIUM)
        assert (found.old_index, found.new_index, found.current) == (V1, V2, V1)


def test_empty_copy_of_an_empty_index_needs_the_journal_to_be_finished() -> None:
    indices = [idx(V1, 0), idx(V2, 0)]
    assert classify(ev([V1], indices)).state is MigrationState.PARTIAL_SCHEMA_CHANGE
    done = run("REINDEX_100%", green=V2)
    assert classify(ev([V1], indices, run=done)).state is \
        MigrationState.POST_REINDEX_PRE_SWITCH


def test_alias_on_newest_with_older_left_is_post_switch() -> None:
    found = classify(ev([V2], [idx(V1, 1000), idx(V2, 1000)]))
    assert (found.state, found.risk) == (MigrationState.POST_SWITCH, Risk.LOW)
    assert (found.old_index, found.new_index) == (V1, V2)


def test_recent_versioned_index_without_predecessor_is_cleanup() -> None:
    recent = idx(V2, 1000, created=NOW - timedelta(days=3))
    found = classify(ev([V2], [recent]))
    assert (found.state, found.risk) == (MigrationState.CLEANUP, Risk.LOW)
    assert found.new_index == V2 and found.old_index is None


def test_cleanup_window_is_eight_days() -> None:
    inside = idx(V2, 1000, created=NOW - timedelta(days=8))
    outside = idx(V2, 1000, created=NOW - timedelta(days=8, seconds=1))
    assert classify(ev([V2], [inside])).state is MigrationState.CLEANUP
    assert classify(ev([V2], [outside])).state is MigrationState.NO_MIGRATION


def test_old_versioned_index_with_completed_run_is_cleanup() -> None:
    found = classify(ev([V2], [idx(V2, 1000)], run=run("COMPLETED", "COMPLETED", green=V2)))
    assert found.state is MigrationState.CLEANUP
    assert "COMPLETED" in found.reason


def test_first_version_is_never_cleanup() -> None:
    recent = idx(V1, 1000, created=NOW - timedelta(hours=1))
    assert classify(ev([V1], [recent])).state is MigrationState.NO_MIGRATION


@pytest.mark.parametrize("phase", ["VALIDATING", "BACKUP_CREATED"])
def test_open_run_before_any_change_is_pre_migration(phase: str) -> None:
    found = classify(ev([V1], [idx(V1, 1000)], run=run(phase)))
    assert (found.state, found.risk) == (MigrationState.PRE_MIGRATION, Risk.LOW)
    assert found.old_index == V1


def test_failed_run_at_validating_is_not_pre_migration() -> None:
    found = classify(ev([V1], [idx(V1, 1000)], run=run("VALIDATING", "FAILED")))
    assert found.state is MigrationState.NO_MIGRATION


def test_recent_success_snapshot_of_serving_is_pre_migration() -> None:
    fresh = snap("nightly", [V1], end=NOW - timedelta(hours=23))
    found = classify(ev([V1], [idx(V1, 1000)], snapshots=(fresh,)))
    assert found.state is MigrationState.PRE_MIGRATION
    assert "nightly" in found.reason


@pytest.mark.parametrize("backup", [
    snap("old", [V1], end=NOW - timedelta(hours=25)),
    snap("partial", [V1], state="PARTIAL", failed=1),
    snap("other", ["unrelated"]),
])
def test_old_failed_or_unrelated_snapshot_is_no_migration(backup: SnapshotInfo) -> None:
    found = classify(ev([V1], [idx(V1, 1000)], snapshots=(backup,)))
    assert (found.state, found.risk) == (MigrationState.NO_MIGRATION, Risk.LOW)


def test_classify_state_is_state_risk_and_action() -> None:
    state, risk, action = classify_state(ev([V1], [idx(V1, 1000), idx(V2, 0)]))
    assert (state, risk) == (MigrationState.PARTIAL_SCHEMA_CHANGE, Risk.MEDIUM)
    assert action == f"delete the new index {V2} and retry the migration"



# -- after a recovery --------------------------------------------------------------------------

# recover ran 30 minutes ago; restore keeps the backed-up index's creation date, so a restored
# index looks as old as the index it was taken from.
RECOVERED_AT = NOW - timedelta(minutes=30)
WHEN = recovery_stamp(RECOVERED_AT)
RESTORED = restored_name(A, WHEN)
EMERGENCY = emergency_restore_name(V1, WHEN)
BEFORE = RECOVERED_AT - timedelta(hours=2)
AFTER = RECOVERED_AT + timedelta(minutes=5)


def test_recovery_names_are_read_back() -> None:
    assert WHEN == "20261123t093000"
    full = parse_restored_name(A, RESTORED)
    assert full is not None
    assert (full.kind, full.restored_at, full.source) == (FULL_RESTORE_KIND, RECOVERED_AT, None)
    emergency = parse_restored_name(A, EMERGENCY)
    assert emergency is not None
    assert (emergency.kind, emergency.restored_at, emergency.source) == (
        EMERGENCY_RESTORE_KIND, RECOVERED_AT, V1)
    for other in (f"{A}-recover-{WHEN}", f"{A}-restored-yesterday", f"{A}-restored-{WHEN}x",
                  f"other-restored-{WHEN}", f"{A}-restored-20261399t999999", V1,
                  f"emergency-restore-{A}-v1", f"{A}-assess-1234abcd"):
        assert parse_restored_name(A, other) is None, other
    # A restored index is no versioned index of the alias.
    assert version_of(A, RESTORED) is None and version_of(A, EMERGENCY) is None


def recovered(serving: str, *others: IndexFacts, serving_docs: int = 2000,
              **kw: Any) -> Evidence:
    return ev([AliasTarget(serving, True)], [idx(serving, serving_docs), *others], **kw)


@pytest.mark.parametrize("kept", [
    idx(V1, 1600, created=BEFORE),  # fewer docs: looked like a copy that died halfway
    idx(V1, 2400, created=BEFORE),  # more docs: looked like a finished copy not switched to
    idx(V1, 0, created=BEFORE),  # empty: looked like a schema change left halfway
    idx(V1, None, created=BEFORE, status="close"),  # unreadable, as an emergency leaves it
    idx(V1, None, created=BEFORE, health="red"),
])
@pytest.mark.parametrize("serving", [RESTORED, EMERGENCY])
def test_after_a_restore_the_kept_index_is_a_predecessor(serving: str,
                                                         kept: IndexFacts) -> None:
    found = classify(recovered(serving, kept))
    assert (found.state, found.risk) == (MigrationState.POST_SWITCH, Risk.LOW)
    assert (found.current, found.old_index, found.new_index) == (serving, V1, serving)
    assert found.action == (f"monitor; {V1} is kept read-only for forensics — delete it with "
                            "`indexshift cleanup` once the incident is closed")
    assert "restored by a recovery" in found.reason and found.advice is None
    assert "retry" not in found.action + found.reason


def test_after_a_restore_every_earlier_version_is_kept() -> None:
    found = classify(recovered(RESTORED, idx(V1, 10, created=BEFORE - timedelta(days=9)),
                               idx(V2, 5, created=BEFORE)))
    assert found.state is MigrationState.POST_SWITCH and found.old_index == V2
    assert f"{V1}, {V2} are kept read-only" in found.action and "delete them" in found.action


def test_a_restored_index_without_predecessors_is_cleanup() -> None:
    found = classify(recovered(EMERGENCY))
    assert (found.state, found.action) == (MigrationState.CLEANUP, "normal operation")
    assert found.current == EMERGENCY and f"backup of {V1}" in found.reason


def test_an_index_created_within_the_recovery_second_is_a_predecessor() -> None:
    within = RECOVERED_AT + timedelta(milliseconds=900)
    found = classify(recovered(RESTORED, idx(V2, 0, created=within)))
    assert found.state is MigrationState.POST_SWITCH


def test_a_migration_after_a_recovery_is_judged_as_one() -> None:
    kept = idx(V1, 1600, created=BEFORE)
    empty = classify(recovered(RESTORED, kept, idx(V2, 0, created=AFTER)))
    assert (empty.state, empty.new_index) == (MigrationState.PARTIAL_SCHEMA_CHANGE, V2)
    assert empty.current == RESTORED
    task = ReindexTask("node:7", (A,), V2, total=2000, done=400)
    copying = classify(recovered(RESTORED, kept, idx(V2, 400, created=AFTER), tasks=(task,)))
    assert copying.state is MigrationState.MID_REINDEX
    done = classify(recovered(RESTORED, kept, idx(V2, 2000, created=AFTER)))
    assert done.state is MigrationState.POST_REINDEX_PRE_SWITCH


def test_an_open_run_counts_only_when_newer_than_the_recovery() -> None:
    kept = idx(V1, 1600, created=BEFORE)
    stale = replace(run("BACKUP_CREATED", "HALTED"), updated_at="2026-11-23T08:00:00Z")
    assert classify(recovered(RESTORED, kept, run=stale)).state is MigrationState.POST_SWITCH
    fresh = replace(stale, phase="VALIDATING", status="RUNNING",
                    updated_at="2026-11-23T09:45:00Z")
    assert classify(recovered(RESTORED, kept, run=fresh)).state is \
        MigrationState.PRE_MIGRATION


def test_after_a_full_restore_nothing_is_to_be_done() -> None:
    backup = BackupRef("snapshot", "snap-1", "SUCCESS", "2026-11-23T02:00:00Z", V1, "repo")
    evidence = recovered(
        RESTORED, idx(V1, 1600, created=BEFORE), backup=backup,
        search=SearchCheck(A, True, "a query answered 2,000 hits"),
        mapping=MappingCheck(True, "the backup's mapping"),
        comparison=Comparison(f"snap-1:{V1}", RESTORED, 2000, 2000, 0, 0, 0, True),
        restored_from=RestoreSource("repo", "snap-1", V1))
    result = conclude(evidence)
    assert (result.state, result.integrity_level) == (MigrationState.POST_SWITCH, 1)
    assert result.recommendation.method is Method.NO_ACTION
    assert "delete" not in result.recommendation.reason
    assert result.current_index == RESTORED and result.serving == [RESTORED]
    assert result.evidence["restored_from"] == {"repository": "repo", "snapshot": "snap-1",
                                                "index": V1}


def test_a_restored_index_is_checked_against_the_backup_it_came_from() -> None:
    source = snap("nightly", [V1], end=RECOVERED_AT - timedelta(hours=8))
    # Taken during the incident, after the backup: it holds the broken index.
    incident = snap("emergency-all", [V1, "other"], end=RECOVERED_AT - timedelta(minutes=10))
    later = snap("after", [V1], end=AFTER)
    snapshots = [source, incident, later]
    told = RestoreSource("repo", "nightly", V1)
    assert default_backup(A, RESTORED, snapshots, restored_from=told) == (source, V1)
    # Without the cluster's word: the newest from before the recovery.
    assert default_backup(A, RESTORED, snapshots) == (incident, V1)
    gone = RestoreSource("repo", "deleted-since", V1)
    assert default_backup(A, RESTORED, snapshots, restored_from=gone) == (incident, V1)
    # An emergency restore's name says which index it came from.
    of_v2 = snap("v2", [V2], end=RECOVERED_AT - timedelta(minutes=5))
    assert default_backup(A, EMERGENCY, [source, of_v2]) == (source, V1)
    # A backup of the restored index itself is the freshest reference.
    of_restored = snap("fresh", [RESTORED], end=AFTER)
    assert default_backup(A, RESTORED, [*snapshots, of_restored],
                          restored_from=told) == (of_restored, RESTORED)


def test_holds_current_means_the_same_data() -> None:
    ref = BackupRef("snapshot", "snap-1", "SUCCESS", None, V1, "repo")
    assert holds_current(ref, V1)
    assert not holds_current(ref, RESTORED)
    assert holds_current(ref, RESTORED, RestoreSource("repo", "snap-1", V1))
    assert not holds_current(ref, RESTORED, RestoreSource("repo", "snap-2", V1))


def test_restore_source_is_read_from_the_primaries_last_recovery() -> None:
    def shard(kind: str, primary: bool = True, snapshot: str = "snap-1") -> dict[str, Any]:
        source = ({"repository": "repo", "snapshot": snapshot, "index": V1}
                  if kind == "SNAPSHOT" else {})
        return {"type": kind, "primary": primary, "source": source}

    def body(*shards: dict[str, Any]) -> dict[str, Any]:
        return {RESTORED: {"shards": list(shards)}}

    assert read_restore_source(body(shard("SNAPSHOT"), shard("SNAPSHOT"),
                                    shard("PEER", primary=False)), RESTORED) == \
        RestoreSource("repo", "snap-1", V1)
    assert read_restore_source(body(shard("SNAPSHOT"), shard("EXISTING_STORE")),
                               RESTORED) is None
    assert read_restore_source(body(shard("SNAPSHOT"), shard("SNAPSHOT", snapshot="snap-2")),
                               RESTORED) is None
    assert read_restore_source(body(), RESTORED) is None
    assert read_restore_source({}, RESTORED) is None

# -- integrity levels --------------------------------------------------------------------------


@pytest.mark.parametrize(("missing", "level"), [
    (0, 1), (1, 2), (2, 2),  # 2 of 2,000 is exactly 0.1 %
    (3, 3), (100, 3),  # 100 of 2,000 is exactly 5 %
    (101, 4), (200, 4),
])
def test_levels_by_share_missing(missing: int, level: int) -> None:
    assert integrity_level(readable=True, searchable=True, mapping_ok=True,
                           backup_count=2000, missing=missing) == level


def test_levels_at_a_million() -> None:
    def level(missing: int) -> int | None:
        return integrity_level(readable=True, searchable=True, mapping_ok=True,
                               backup_count=1_000_000, missing=missing)
    assert (level(1000), level(1001), level(50_000), level(50_001)) == (2, 3, 3, 4)


def test_unreadable_or_unsearchable_is_level_four() -> None:
    assert integrity_level(readable=False, searchable=True, mapping_ok=True,
                           backup_count=10, missing=None) == 4
    assert integrity_level(readable=True, searchable=False, mapping_ok=True,
                           backup_count=10, missing=0) == 4


def test_wrong_mapping_is_level_three() -> None:
    assert integrity_level(readable=True, searchable=True, mapping_ok=False,
                           backup_count=2000, missing=0) == 3
    assert integrity_level(readable=True, searchable=True, mapping_ok=False,
                           backup_count=2000, missing=1) == 3


def test_no_backup_is_no_level() -> None:
    assert integrity_level(readable=True, searchable=True, mapping_ok=True,
                           backup_count=None, missing=None) is None
    assert integrity_level(readable=False, searchable=False, mapping_ok=True,
                           backup_count=None, missing=None) is None


def test_empty_backup_and_empty_current_is_level_one() -> None:
    assert integrity_level(readable=True, searchable=True, mapping_ok=True,
                           backup_count=0, missing=0) == 1


# -- the decision tree -------------------------------------------------------------------------

SNAPSHOT_REF = BackupRef("snapshot", "snap-1", "SUCCESS", "2026-11-22T00:00:00Z", V1, "repo")


def tree(backup: int | None = 2000, current: int | None = 2000, missing: int | None = 0,
         **kw: Any) -> DecisionFacts:
    counts = Counts(current=current, backup=backup, missing=missing, extra=0, changed=0)
    base = DecisionFacts(alias=A, state=MigrationState.NO_MIGRATION, current=V1,
                         backup=SNAPSHOT_REF, counts=counts, ids_known=True,
                         search_detail="a query answered", mapping_detail="fine")
    return replace(base, **kw)


def path(steps: list[Any]) -> list[str]:
    return [s.question.split(".")[0] for s in steps]


def test_no_backup_and_usable_current_is_no_rollback() -> None:
    rec, steps = decide(tree(backup=None, missing=None, backup_problem="no snapshot"))
    assert rec.method is Method.NO_ROLLBACK
    assert steps[0].answer == "no: no snapshot"
    assert steps[1].answer.startswith("yes")


@pytest.mark.parametrize("broken", [{"readable": False, "readable_detail": "x is closed"},
                                    {"searchable": False, "search_detail": "query failed"}])
def test_no_backup_and_broken_current_is_disaster_recovery(broken: dict[str, Any]) -> None:
    rec, steps = decide(tree(backup=None, missing=None, backup_problem="none", **broken))
    assert rec.method is Method.DISASTER_RECOVERY
    assert steps[1].answer.startswith("no")


def test_invalid_backup_counts_as_none() -> None:
    rec, _ = decide(tree(backup_problem="snapshot snap-1 is PARTIAL with 1 failed shard(s)"))
    assert rec.method is Method.NO_ROLLBACK


def test_inaccessible_current_with_backup_is_emergency_restore() -> None:
    rec, steps = decide(tree(current=None, missing=None, readable=False,
                             readable_detail=f"{V1} is red"))
    assert rec.method is Method.EMERGENCY_RESTORE
    assert path(steps) == ["Q1", "Q2"]
    assert steps[1].answer == f"no: {V1} is red"


def test_nothing_missing_and_search_works_is_no_action() -> None:
    rec, steps = decide(tree())
    assert rec.method is Method.NO_ACTION
    assert path(steps) == ["Q1", "Q2", "Q3", "Q4"]
    assert steps[2].answer == "yes: backup 2,000 docs, current 2,000, none missing"


def test_q3_answer_has_the_numbers() -> None:
    _, steps = decide(tree(backup=1_000_000, current=999_500, missing=500))
    assert steps[2].answer == ("yes: backup 1,000,000 docs, current 999,500, 500 missing "
                               "(0.05 %)")


def test_newer_writes_are_named_not_counted_as_loss() -> None:
    facts = tree(current=2005, missing=0)
    facts = replace(facts, counts=replace(facts.counts, extra=5, changed=3))
    rec, steps = decide(facts)
    assert rec.method is Method.NO_ACTION
    assert "5 new and 3 changed since the backup (newer writes, not loss)" in steps[2].answer


def test_variance_within_threshold_is_still_reindexed() -> None:
    rec, steps = decide(tree(current=1999, missing=1))
    assert rec.method is Method.SELECTIVE_REINDEX
    assert path(steps) == ["Q1", "Q2", "Q3", "Q4"]
    assert "tree would accept this variance" in rec.reason
    assert "method table reindexes it" in rec.reason
    assert "toward zero lost documents" in rec.reason


def test_search_failing_with_right_mapping_is_investigate_performance() -> None:
    rec, steps = decide(tree(searchable=False, search_detail="query timed out"))
    assert rec.method is Method.NO_ACTION
    assert "investigate performance" in rec.reason
    assert path(steps) == ["Q1", "Q2", "Q3", "Q4", "Q6"]
    assert steps[3].answer == "no: query timed out"


def test_wrong_mapping_is_blue_green_required() -> None:
    rec, steps = decide(tree(mapping_ok=False, mapping_detail="vector is missing"))
    assert rec.method is Method.BLUE_GREEN_REQUIRED
    assert path(steps) == ["Q1", "Q2", "Q3", "Q4", "Q6"]
    assert steps[4].answer == "no: vector is missing"


def test_missing_over_threshold_and_identified_is_selective() -> None:
    rec, steps = decide(tree(current=1990, missing=10))
    assert rec.method is Method.SELECTIVE_REINDEX
    assert path(steps) == ["Q1", "Q2", "Q3", "Q5"]
    assert steps[2].answer.startswith("no: backup 2,000 docs, current 1,990, 10 missing (0.5 %)")
    assert "table says full restore" in rec.reason
    assert "drop every write made since the backup" in rec.reason


def test_five_percent_missing_is_still_selective_and_more_is_full_restore() -> None:
    assert decide(tree(current=1900, missing=100))[0].method is Method.SELECTIVE_REINDEX
    rec, _ = decide(tree(current=1800, missing=200))
    assert rec.method is Method.FULL_RESTORE
    assert "severe loss" in rec.reason and "read-only" in rec.reason


def test_missing_over_threshold_not_identified_is_full_restore() -> None:
    rec, steps = decide(tree(current=1990, missing=10, ids_known=False,
                             ids_problem="the diff failed"))
    assert rec.method is Method.FULL_RESTORE
    assert steps[-1].answer == "no: the diff failed"
    assert "by count" in steps[2].answer


def test_state_advice_is_added_to_the_reason() -> None:
    rec, _ = decide(tree(state=MigrationState.MID_REINDEX,
                         advice=f"the copy into {V2} is still running: let it finish, or "
                                f"`indexshift halt {A}`"))
    assert rec.method is Method.NO_ACTION
    assert f"still serves {V1}" in rec.reason and f"indexshift halt {A}" in rec.reason


def switch_facts(switch: Comparison | None, **kw: Any) -> DecisionFacts:
    facts = tree(state=MigrationState.MID_SWITCH, old_index=V1, new_index=V2, switch=switch,
                 **kw)
    return replace(facts, current=V2)


def test_switch_with_nothing_missing_is_completed() -> None:
    rec, steps = decide(switch_facts(Comparison(V1, V2, 100, 100, 0, 0, None, True)))
    assert rec.method is Method.COMPLETE_SWITCH
    assert steps[0].answer.startswith("yes")


def test_switch_missing_docs_is_rolled_back_and_strays_named() -> None:
    rec, steps = decide(switch_facts(Comparison(V1, V2, 100, 95, 7, 2, None, True)))
    assert rec.method is Method.ROLLBACK
    assert "7 of" in steps[0].answer
    assert "2 documents exist only in" in rec.reason


def test_switch_that_cannot_be_compared() -> None:
    unknown = Comparison(V1, V2, None, 100, error=f"{V1} is closed")
    assert decide(switch_facts(unknown, old_readable=False))[0].method is \
        Method.COMPLETE_SWITCH
    assert decide(switch_facts(unknown, new_readable=False))[0].method is Method.ROLLBACK
    both = switch_facts(unknown, old_readable=False, new_readable=False)
    assert decide(both)[0].method is Method.EMERGENCY_RESTORE
    assert decide(replace(both, backup=None, backup_problem="none"))[0].method is \
        Method.DISASTER_RECOVERY


def test_switch_without_older_index_is_completed() -> None:
    rec, _ = decide(replace(switch_facts(None), old_index=None))
    assert rec.method is Method.COMPLETE_SWITCH


# -- from evidence to facts --------------------------------------------------------------------


def test_facts_estimate_missing_by_count_when_the_diff_failed() -> None:
    evidence = ev([V1], [idx(V1, 1990)], backup=SNAPSHOT_REF,
                  search=SearchCheck(A, True, "ok"),
                  comparison=Comparison("snap-1:" + V1, V1, 2000, 1990, error="diff failed"))
    facts = decision_facts(evidence, classify(evidence))
    assert facts.counts == Counts(current=1990, backup=2000, missing=10)
    assert (facts.ids_known, facts.ids_problem, facts.backup_valid) == (False, "diff failed",
                                                                      True)


def test_facts_without_backup_say_why() -> None:
    evidence = ev([V1], [idx(V1, 10)], search=SearchCheck(A, True, "ok"))
    facts = decision_facts(evidence, classify(evidence))
    assert not facts.backup_valid and facts.backup_problem
    assert facts.counts == Counts(current=10)


def test_facts_unknown_mapping_is_not_wrong() -> None:
    evidence = ev([V1], [idx(V1, 10)], mapping=MappingCheck(None, "no reference"))
    assert decision_facts(evidence, classify(evidence)).mapping_ok


# -- choosing the backup -----------------------------------------------------------------------


def test_default_backup_prefers_current() -> None:
    older = snap("a", [V1, V2], end=NOW - timedelta(days=2))
    newer = snap("b", [V2], end=NOW - timedelta(days=1))
    assert default_backup(A, V2, [older, newer]) == (newer, V2)


def test_default_backup_falls_back_to_newest_previous_version() -> None:
    of_v1 = snap("a", [V1], end=NOW - timedelta(days=1))
    of_v2 = snap("b", [V2], end=NOW - timedelta(days=3))
    assert default_backup(A, V3, [of_v1, of_v2]) == (of_v2, V2)


def test_default_backup_ignores_failed_and_newer_versions() -> None:
    failed = snap("a", [V2], state="FAILED", failed=1)
    of_v3 = snap("b", [V3])
    assert default_backup(A, V2, [failed, of_v3]) is None


def test_index_in_a_named_snapshot() -> None:
    both = snap("s", [V1, V2, "unrelated"])
    assert index_in_snapshot(A, V2, both) == V2
    assert index_in_snapshot(A, V3, both) == V2
    assert index_in_snapshot(A, V3, snap("t", ["restored-copy"])) == "restored-copy"
    with pytest.raises(BadInput, match="holds none"):
        index_in_snapshot(A, V3, snap("u", ["x", "y"]))


# -- parsing -----------------------------------------------------------------------------------


def test_reindex_tasks_are_read_once_per_copy() -> None:
    body = {"nodes": {"n1": {"tasks": {
        "n1:10": {"action": "indices:data/write/reindex",
                  "description": f"reindex from [{V1}] to [{V2}]",
                  "status": {"total": 1000, "created": 300, "updated": 10, "deleted": 0,
                             "version_conflicts": 0}, "running_time_in_nanos": 2_000_000_000},
        "n1:11": {"action": "indices:data/write/reindex", "parent_task_id": "n1:10",
                  "description": f"reindex from [{V1}] to [{V2}]", "status": {"total": 500}},
        "n1:12": {"action": "indices:data/write/reindex",
                  "description": f"reindex from [{V1}, other] updated with Script{{x}} "
                                 f"to [{V3}]", "status": {}},
    }}}}
    tasks = read_reindex_tasks(body)
    assert [(t.task_id, t.sources, t.dest, t.done, t.total) for t in tasks] == [
        ("n1:10", (V1,), V2, 310, 1000), ("n1:12", (V1, "other"), V3, 0, 0)]
    assert tasks[0].running_s == 2.0


def test_mapping_check_against_a_reference() -> None:
    reference = {"properties": {"name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                                "vec": {"type": "knn_vector"},
                                "owner": {"properties": {"id": {"type": "keyword"}}}}}
    assert required_fields(reference) == {"name": "text", "name.raw": "keyword",
                                          "vec": "knn_vector", "owner": "object",
                                          "owner.id": "keyword"}
    assert check_mapping(reference, reference, "spec").ok
    current = {"properties": {"name": {"type": "keyword"},
                              "owner": {"properties": {"id": {"type": "keyword"}}},
                              "added": {"type": "long"}}}
    found = check_mapping(current, reference, "spec")
    assert found.ok is False
    assert any("vec is missing" in p for p in found.problems)
    assert any("name is keyword, expected text" in p for p in found.problems)


# -- the whole verdict -------------------------------------------------------------------------


def test_json_shape() -> None:
    evidence = ev([V1], [idx(V1, 1999)], backup=SNAPSHOT_REF,
                  search=SearchCheck(A, True, "a query answered 1,999 hits"),
                  mapping=MappingCheck(True, "the backup's mapping"),
                  comparison=Comparison("snap-1:" + V1, V1, 2000, 1999, 1, 0, 0, True))
    result = conclude(evidence, missing_ids=["42"])
    data = result.to_json()
    assert {"alias", "state", "risk", "integrity_level", "counts", "backup", "recommendation",
            "decision_path", "evidence"} <= set(data)
    assert data["alias"] == A and data["state"] == "NO_MIGRATION" and data["risk"] == "low"
    assert data["integrity_level"] == 2
    assert data["counts"] == {"current": 1999, "backup": 2000, "missing": 1, "extra": 0,
                              "changed": 0}
    assert {"kind", "name", "state", "taken_at"} <= set(data["backup"])
    assert data["backup"]["kind"] == "snapshot"
    assert data["recommendation"]["method"] == "SELECTIVE_REINDEX"
    assert set(data["recommendation"]) == {"method", "reason"}
    assert all(set(step) == {"question", "answer"} for step in data["decision_path"])
    for key in ("alias_targets", "indices", "reindex_tasks", "journal_run", "cluster_health",
                "snapshots_considered", "search", "mapping", "comparison"):
        assert key in data["evidence"]
    assert data["evidence"]["indices"][0]["docs"] == 1999
    assert result.missing_ids == ["42"] and result.current_index == V1
    assert result.serving == [V1]
