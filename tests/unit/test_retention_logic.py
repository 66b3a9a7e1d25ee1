from datetime import UTC, datetime, timedelta

from indexshift.journal import Phase, RunRecord, RunStatus
from indexshift.retention import plan_retention

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _run(blue: str, days_ago: float, status: RunStatus = RunStatus.COMPLETED) -> RunRecord:
    switched = (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")
    return RunRecord.new(alias="a", version=2, spec_name="x", spec_checksum="c", blue=blue,
                         green="a-v2").model_copy(update={
        "status": status,
        "checkpoints": [{"phase": str(Phase.ALIAS_SWITCHED), "at": switched}],
        "copy_state": {"retention": {"read_only_after_days": 4, "delete_after_days": 8}},
    })


def test_old_index_is_kept_then_read_only_then_deleted() -> None:
    runs = [_run("a-v1", 1), _run("b-v1", 5), _run("c-v1", 9)]
    steps = {s.index: s.action for s in plan_retention(
        runs, {"a-v1", "b-v1", "c-v1"}, set(), set(), NOW)}
    assert steps == {"a-v1": "keep", "b-v1": "read_only", "c-v1": "delete"}


def test_an_aliased_index_is_never_deleted() -> None:
    steps = plan_retention([_run("c-v1", 30)], {"c-v1"}, {"c-v1"}, set(), NOW)
    assert [s.action for s in steps] == ["keep"]
    assert "alias" in steps[0].reason


def test_unfinished_runs_and_gone_indices_are_left_alone() -> None:
    runs = [_run("a-v1", 30, RunStatus.HALTED), _run("gone", 30)]
    assert plan_retention(runs, {"a-v1"}, set(), set(), NOW) == []


def test_already_read_only_is_not_blocked_again() -> None:
    steps = plan_retention([_run("b-v1", 5)], {"b-v1"}, set(), {"b-v1"}, NOW)
    assert [s.action for s in steps] == ["keep"]
