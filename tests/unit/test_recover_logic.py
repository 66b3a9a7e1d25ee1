"""Recovery plans from hand-built assessments: steps, preconditions, refusals, JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from indexshift.assess import (
    EMERGENCY_RESTORE_KIND,
    FULL_RESTORE_KIND,
    Assessment,
    BackupRef,
    Counts,
    Method,
    MigrationState,
    Recommendation,
    RestoredIndex,
    Risk,
    parse_restored_name,
)
from indexshift.errors import BadInput, CheckFailed
from indexshift.recover import (
    ALIAS_TARGETS,
    ALLOW_WRITES,
    BLOCK_WRITES,
    COPY,
    DELETE_TEMPORARY,
    INDEX_ABSENT,
    INDEX_USABLE,
    REFRESH,
    RESTORE,
    SNAPSHOT_READY,
    SWITCH_ALIAS,
    VERIFY_PRESENT,
    VERIFY_RESTORED,
    Precondition,
    RecoveryPlan,
    check_precondition,
    plan_recovery,
    stamp,
)
from indexshift.snapshots import SnapshotInfo

NOW = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
WHEN = "20261123t101500"

SNAPSHOT = BackupRef(kind="snapshot", name="nightly-1", state="SUCCESS",
                     taken_at="2026-11-23T02:00:00Z", index="files-v1", repository="backups")
INDEX_BACKUP = BackupRef(kind="index", name="files-v0", state="green",
                         taken_at="2026-11-20T00:00:00Z", index="files-v0")


def assessment(method: Method = Method.SELECTIVE_REINDEX, **changes: Any) -> Assessment:
    base = Assessment(
        alias="files", state=MigrationState.NO_MIGRATION, risk=Risk.MEDIUM,
        action="act", integrity_level=2,
        counts=Counts(current=998, backup=1000, missing=3, extra=1, changed=2),
        backup=SNAPSHOT, recommendation=Recommendation(method, "because"),
        decision_path=[], serving=["files-v1"], old_index=None, new_index=None,
        missing_ids=["a", "b", "c"], changed_ids=["x", "y"], current_index="files-v1")
    return replace(base, **changes)


def targets(write: str, *indices: str) -> dict[str, Any]:
    """The evidence's alias targets, as assess records them."""
    return {"alias_targets": [{"index": i, "is_write_index": i == write} for i in indices]}


def half_switch(method: Method, **changes: Any) -> Assessment:
    """Alias on files-v1 (write) and files-v2, the older-against-newer diff in the evidence."""
    evidence = {**targets("files-v1", "files-v1", "files-v2"),
                "indices": [{"name": "files-v1", "status": "open", "health": "green"},
                            {"name": "files-v2", "status": "open", "health": "green"}],
                "switch_comparison": {"a": "files-v1", "b": "files-v2", "missing": 0,
                                      "extra": 0, "error": None}}
    base = assessment(method, state=MigrationState.MID_SWITCH,
                      serving=["files-v1", "files-v2"], old_index="files-v1",
                      new_index="files-v2", current_index="files-v2", evidence=evidence,
                      counts=Counts(current=1000, backup=1000, missing=0, extra=0, changed=0),
                      missing_ids=[], changed_ids=[])
    return replace(base, **changes)


def kinds(plan: RecoveryPlan) -> list[str]:
    return [step.kind for step in plan.steps]


# -- selective reindex -------------------------------------------------------------------------


def test_selective_from_a_snapshot_restores_copies_verifies_and_drops_the_restore() -> None:
    plan = plan_recovery(assessment(), now=NOW)
    assert plan.method == Method.SELECTIVE_REINDEX
    assert kinds(plan) == [RESTORE, COPY, REFRESH, VERIFY_PRESENT, DELETE_TEMPORARY]
    temp = f"files-recover-{WHEN}"
    assert plan.temporary_indices == (temp,)
    assert plan.restored_index is None
    restore, copy, _, verify, drop = plan.steps
    assert restore.details == {"repository": "backups", "snapshot": "nightly-1",
                               "index": "files-v1", "new_name": temp, "temporary": True,
                               "index_settings": {"index.number_of_replicas": 0}}
    assert {p.kind for p in restore.preconditions} == {ALIAS_TARGETS, SNAPSHOT_READY,
                                                       INDEX_ABSENT}
    assert copy.details == {"source": temp, "dest": "files-v1", "ids": ["a", "b", "c"],
                            "create_only": True}
    assert "create-only" in copy.description
    assert verify.details == {"index": "files-v1", "ids": ["a", "b", "c"]}
    assert drop.details == {"index": temp}
    alias_check = next(p for p in copy.preconditions if p.kind == ALIAS_TARGETS)
    assert alias_check.details == {"alias": "files", "indices": ["files-v1"],
                                   "write_index": "files-v1"}
    assert any("--include-changed" in note for note in plan.notes)


def test_selective_from_an_index_copies_directly_and_drops_nothing() -> None:
    plan = plan_recovery(assessment(backup=INDEX_BACKUP), now=NOW)
    assert kinds(plan) == [COPY, REFRESH, VERIFY_PRESENT]
    assert plan.steps[0].details["source"] == "files-v0"
    assert plan.temporary_indices == ()


def test_selective_with_changed_overwrites_those_and_verifies_all() -> None:
    plan = plan_recovery(assessment(backup=INDEX_BACKUP), include_changed=True, now=NOW)
    assert kinds(plan) == [COPY, COPY, REFRESH, VERIFY_PRESENT]
    assert plan.steps[1].details == {"source": "files-v0", "dest": "files-v1",
                                     "ids": ["x", "y"], "create_only": False}
    assert plan.steps[3].details["ids"] == ["a", "b", "c", "x", "y"]


def test_selective_uses_the_write_index_of_a_multi_index_alias() -> None:
    two = assessment(serving=["files-v1", "other"], current_index="files-v1",
                     evidence=targets("files-v1", "files-v1", "other"))
    plan = plan_recovery(two, now=NOW)
    assert plan.steps[1].details["dest"] == "files-v1"
    with pytest.raises(BadInput, match="no single write index"):
        plan_recovery(replace(two, evidence={}), now=NOW)
    with pytest.raises(BadInput, match="half-done switch") as caught:
        plan_recovery(half_switch(Method.SELECTIVE_REINDEX, missing_ids=["a"],
                                  counts=Counts(current=9, backup=10, missing=1)), now=NOW)
    assert "COMPLETE_SWITCH or ROLLBACK" in str(caught.value)
    with pytest.raises(BadInput, match="measured on files-v2"):
        plan_recovery(replace(two, current_index="files-v2"), now=NOW)


def test_selective_refusals_name_what_is_missing() -> None:
    with pytest.raises(BadInput, match="needs a backup") as caught:
        plan_recovery(assessment(backup=None), now=NOW)
    assert "--backup" in str(caught.value)
    with pytest.raises(CheckFailed, match="listed only 1"):
        plan_recovery(assessment(missing_ids=["a"]), now=NOW)
    with pytest.raises(CheckFailed, match="could not list every differing id") as truncated:
        plan_recovery(assessment(ids_truncated=True), now=NOW)
    assert "FULL_RESTORE" in str(truncated.value)
    with pytest.raises(BadInput, match="missing documents are unknown"):
        plan_recovery(assessment(counts=Counts(current=5), missing_ids=[]), now=NOW)
    with pytest.raises(BadInput, match="points at no index"):
        plan_recovery(assessment(serving=[]), now=NOW)
    same = replace(INDEX_BACKUP, name="files-v1", index="files-v1")
    with pytest.raises(BadInput, match="the index the documents are missing from"):
        plan_recovery(assessment(backup=same), now=NOW)
    with pytest.raises(BadInput, match="names no repository"):
        plan_recovery(assessment(backup=replace(SNAPSHOT, repository=None)), now=NOW)


def test_selective_with_nothing_missing_is_an_empty_plan() -> None:
    nothing = assessment(counts=Counts(current=1000, backup=1000, missing=0, extra=0,
                                       changed=0), missing_ids=[], changed_ids=[])
    plan = plan_recovery(nothing, now=NOW)
    assert plan.empty
    assert "nothing to copy" in plan.summary


# -- restores ----------------------------------------------------------------------------------


def test_full_restore_restores_verifies_blocks_and_switches_in_one_call() -> None:
    plan = plan_recovery(assessment(Method.FULL_RESTORE), now=NOW)
    assert kinds(plan) == [RESTORE, VERIFY_RESTORED, BLOCK_WRITES, SWITCH_ALIAS]
    new = f"files-restored-{WHEN}"
    assert plan.restored_index == new
    assert plan.temporary_indices == ()
    restore, verify, block, switch = plan.steps
    assert restore.details["temporary"] is False
    assert restore.details["index_settings"] is None
    assert verify.details == {"index": new, "expected_count": 1000}
    assert block.details == {"indices": ["files-v1"]}
    assert "never deleted" in block.description
    assert switch.details["actions"] == [
        {"remove": {"index": "files-v1", "alias": "files"}},
        {"add": {"index": new, "alias": "files", "is_write_index": True}},
    ]
    assert {p.kind for p in switch.preconditions} == {ALIAS_TARGETS, INDEX_USABLE}
    assert any("3 document(s) in files-v1 are newer than the backup" in n for n in plan.notes)


def test_full_restore_removes_the_alias_from_every_index_it_points_at() -> None:
    plan = plan_recovery(assessment(Method.FULL_RESTORE, serving=["files-v2", "files-v1"]),
                         now=NOW)
    actions = plan.steps[-1].details["actions"]
    assert actions[:2] == [{"remove": {"index": "files-v1", "alias": "files"}},
                           {"remove": {"index": "files-v2", "alias": "files"}}]
    assert plan.steps[2].details == {"indices": ["files-v1", "files-v2"]}


def test_emergency_restore_is_named_after_the_index_and_reads_nothing_current() -> None:
    broken = assessment(Method.EMERGENCY_RESTORE, counts=Counts(current=None, backup=1000),
                        missing_ids=[], changed_ids=[])
    plan = plan_recovery(broken, now=NOW)
    new = f"emergency-restore-files-v1-{WHEN}"
    assert plan.restored_index == new
    assert kinds(plan) == [RESTORE, VERIFY_RESTORED, BLOCK_WRITES, SWITCH_ALIAS]
    assert any("not read" in note for note in plan.notes)
    gone = plan_recovery(replace(broken, serving=[]), now=NOW)
    assert kinds(gone) == [RESTORE, VERIFY_RESTORED, SWITCH_ALIAS]
    assert gone.steps[-1].details["actions"] == [
        {"add": {"index": new, "alias": "files", "is_write_index": True}}]


def test_restored_indices_carry_names_assess_reads_back() -> None:
    for method, kind, source in ((Method.FULL_RESTORE, FULL_RESTORE_KIND, None),
                                 (Method.EMERGENCY_RESTORE, EMERGENCY_RESTORE_KIND, "files-v1")):
        plan = plan_recovery(assessment(method), now=NOW)
        assert plan.restored_index is not None
        assert parse_restored_name("files", plan.restored_index) == RestoredIndex(
            plan.restored_index, kind, NOW, source)
    # The temporary copy a selective reindex reads from never serves: it is no restore.
    selective = plan_recovery(assessment(), now=NOW)
    assert parse_restored_name("files", selective.temporary_indices[0]) is None


def test_restores_need_a_snapshot_backup() -> None:
    for method in (Method.FULL_RESTORE, Method.EMERGENCY_RESTORE):
        with pytest.raises(BadInput, match="is an index") as caught:
            plan_recovery(assessment(method, backup=INDEX_BACKUP), now=NOW)
        assert "SELECTIVE_REINDEX" in str(caught.value)
        with pytest.raises(BadInput, match="needs a backup"):
            plan_recovery(assessment(method, backup=None), now=NOW)


def test_full_restore_with_unknown_newer_documents_says_so() -> None:
    plan = plan_recovery(assessment(Method.FULL_RESTORE, counts=Counts(current=5, backup=10)),
                         now=NOW)
    assert any("unknown" in note for note in plan.notes)
    assert plan.steps[1].details["expected_count"] == 10


# -- alias moves -------------------------------------------------------------------------------


def test_rollback_points_the_alias_at_the_old_index_only() -> None:
    state = assessment(Method.ROLLBACK, serving=["files-v2"], old_index="files-v1",
                       new_index="files-v2", current_index="files-v2")
    plan = plan_recovery(state, now=NOW)
    assert kinds(plan) == [ALLOW_WRITES, SWITCH_ALIAS]
    assert plan.steps[1].details["actions"] == [
        {"remove": {"index": "files-v2", "alias": "files"}},
        {"add": {"index": "files-v1", "alias": "files", "is_write_index": True}},
    ]
    assert {p.kind for p in plan.steps[1].preconditions} == {ALIAS_TARGETS, INDEX_USABLE}
    assert plan.steps[1].preconditions[1].details == {"index": "files-v1"}
    with pytest.raises(BadInput, match="needs the old index"):
        plan_recovery(replace(state, old_index=None), now=NOW)
    assert plan_recovery(replace(state, serving=["files-v1"]), now=NOW).empty


def test_rollback_of_a_half_switch_names_documents_only_in_the_new_index() -> None:
    state = half_switch(Method.ROLLBACK)
    state = replace(state, evidence={**state.evidence, "switch_comparison": {
        "missing": 30, "extra": 2, "error": None}})
    plan = plan_recovery(state, now=NOW)
    assert plan.steps[1].details["actions"] == [
        {"remove": {"index": "files-v2", "alias": "files"}},
        {"add": {"index": "files-v1", "alias": "files", "is_write_index": True}},
    ]
    assert any("2 document(s) exist only in files-v2" in note for note in plan.notes)


def test_complete_switch_needs_nothing_missing_in_the_new_index() -> None:
    half = half_switch(Method.COMPLETE_SWITCH)
    plan = plan_recovery(half, now=NOW)
    assert kinds(plan) == [ALLOW_WRITES, SWITCH_ALIAS]
    assert plan.steps[-1].details["actions"] == [
        {"remove": {"index": "files-v1", "alias": "files"}},
        {"add": {"index": "files-v2", "alias": "files", "is_write_index": True}},
    ]
    lacking = replace(half, evidence={**half.evidence, "switch_comparison": {
        "missing": 3, "extra": 0, "error": None}})
    with pytest.raises(CheckFailed, match=r"lacks 3 document.*older index files-v1"):
        plan_recovery(lacking, now=NOW)
    # Without the switch's diff, the backup's figures for the new index decide.
    no_diff = replace(half, evidence={**half.evidence, "switch_comparison": None})
    assert not plan_recovery(no_diff, now=NOW).empty
    with pytest.raises(CheckFailed, match=r"lacks 4 document.*the backup"):
        plan_recovery(replace(no_diff, counts=Counts(current=996, backup=1000, missing=4)),
                      now=NOW)
    unknown = replace(no_diff, counts=Counts(current=1000))
    with pytest.raises(CheckFailed, match="did not find out"):
        plan_recovery(unknown, now=NOW)
    # ...unless the older index cannot serve anyway.
    closed = replace(unknown, evidence={**unknown.evidence, "indices": [
        {"name": "files-v1", "status": "close", "health": "red"}]})
    assert not plan_recovery(closed, now=NOW).empty
    with pytest.raises(BadInput, match="needs the new index"):
        plan_recovery(replace(half, new_index=None), now=NOW)


# -- nothing to do, refusals --------------------------------------------------------------------


def test_no_action_and_no_rollback_are_empty_plans_saying_why() -> None:
    plan = plan_recovery(assessment(Method.NO_ACTION), now=NOW)
    assert plan.empty and "because" in plan.summary
    forced = plan_recovery(assessment(Method.FULL_RESTORE), Method.NO_ROLLBACK, now=NOW)
    assert forced.empty and forced.method == Method.NO_ROLLBACK
    assert "no valid backup" in forced.summary


def test_disaster_and_blue_green_are_refused_with_what_to_do() -> None:
    with pytest.raises(CheckFailed, match="escalate"):
        plan_recovery(assessment(Method.DISASTER_RECOVERY), now=NOW)
    with pytest.raises(CheckFailed, match="indexshift migrate") as caught:
        plan_recovery(assessment(Method.BLUE_GREEN_REQUIRED), now=NOW)
    assert "indexshift new" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_explicit_method_overrides_the_recommendation() -> None:
    plan = plan_recovery(assessment(Method.NO_ACTION), Method.FULL_RESTORE, now=NOW)
    assert plan.method == Method.FULL_RESTORE


# -- data --------------------------------------------------------------------------------------


def test_plans_are_frozen_and_round_trip_as_json() -> None:
    plan = plan_recovery(assessment(), include_changed=True, now=NOW)
    with pytest.raises(AttributeError):
        plan.alias = "other"  # type: ignore[misc]
    body = json.loads(json.dumps(plan.to_json()))
    assert body["method"] == "SELECTIVE_REINDEX"
    assert body["alias"] == "files"
    assert body["empty"] is False
    assert [s["kind"] for s in body["steps"]] == kinds(plan)
    assert body["steps"][1]["preconditions"][0]["kind"] == ALIAS_TARGETS
    assert body["temporary_indices"] == [f"files-recover-{WHEN}"]


def test_stamp_is_utc() -> None:
    assert stamp(NOW) == WHEN
    assert stamp(datetime(2026, 1, 2, 3, 4, 5)) == "20260102t030405"


# -- preconditions judged on facts -------------------------------------------------------------


def test_alias_precondition_spots_a_moved_alias_and_a_new_write_index() -> None:
    pre = Precondition(ALIAS_TARGETS, "", {"alias": "files", "indices": ["files-v1"],
                                          "write_index": "files-v1"})
    assert check_precondition(pre, {"targets": {"files-v1": {}}}) is None
    assert "now points at files-v2" in str(
        check_precondition(pre, {"targets": {"files-v2": {}}}))
    assert "no index" in str(check_precondition(pre, {"targets": {}}))
    two = Precondition(ALIAS_TARGETS, "", {"alias": "files", "indices": ["a", "b"],
                                          "write_index": "b"})
    assert check_precondition(two, {"targets": {"a": {}, "b": {"is_write_index": True}}}) is None
    assert "no longer the write index" in str(
        check_precondition(two, {"targets": {"a": {"is_write_index": True}, "b": {}}}))


def test_index_preconditions() -> None:
    usable = Precondition(INDEX_USABLE, "", {"index": "i"})
    assert check_precondition(usable, {"row": {"status": "open", "health": "yellow"}}) is None
    assert "does not exist" in str(check_precondition(usable, {"row": None}))
    assert "closed" in str(check_precondition(usable, {"row": {"status": "close",
                                                               "health": "red"}}))
    assert "red" in str(check_precondition(usable, {"row": {"status": "open",
                                                            "health": "red"}}))
    absent = Precondition(INDEX_ABSENT, "", {"index": "i"})
    assert check_precondition(absent, {"exists": False}) is None
    assert "already exists" in str(check_precondition(absent, {"exists": True}))


def test_snapshot_precondition() -> None:
    pre = Precondition(SNAPSHOT_READY, "", {"repository": "r", "snapshot": "s", "index": "i"})

    def info(state: str, indices: list[str], failed: int = 0) -> SnapshotInfo:
        return SnapshotInfo.from_api({"snapshot": "s", "state": state, "indices": indices,
                                      "shards": {"total": 1, "successful": 1 - failed,
                                                 "failed": failed}}, "r")

    assert check_precondition(pre, {"snapshot": info("SUCCESS", ["i"])}) is None
    assert "no longer in the repository" in str(check_precondition(pre, {"snapshot": None}))
    assert "PARTIAL" in str(check_precondition(pre, {"snapshot": info("PARTIAL", ["i"], 1)}))
    assert "does not hold i" in str(check_precondition(pre, {"snapshot": info("SUCCESS",
                                                                              ["j"])}))
