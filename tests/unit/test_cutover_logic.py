import pytest

from indexshift import cutover
from indexshift.breaker import Breaker
from indexshift.errors import CheckFailed
from indexshift.hooks import hook_env


def test_switch_moves_alias_from_blue_to_green_in_one_call() -> None:
    plan = cutover.plan_switch("a", "a-v1", "a-v2", {"a-v1": {}})
    assert plan.actions == [
        {"remove": {"index": "a-v1", "alias": "a"}},
        {"add": {"index": "a-v2", "alias": "a", "is_write_index": True}},
    ]


def test_switch_completes_a_half_switch_and_is_idempotent() -> None:
    assert not cutover.plan_switch("a", "a-v1", "a-v2", {"a-v1": {}, "a-v2": {}}).noop
    assert cutover.plan_switch("a", "a-v1", "a-v2", {"a-v2": {}}).noop


def test_switch_refuses_an_alias_moved_by_someone_else() -> None:
    with pytest.raises(CheckFailed, match="points at a-other"):
        cutover.plan_switch("a", "a-v1", "a-v2", {"a-other": {}})
    with pytest.raises(CheckFailed, match="nothing"):
        cutover.plan_switch("a", "a-v1", "a-v2", {})


def test_rollback_refuses_when_blue_is_gone_or_stale() -> None:
    with pytest.raises(CheckFailed, match="no longer exists"):
        cutover.plan_rollback("a", "a-v1", "a-v2", {"a-v2": {}}, blue_exists=False,
                              writes_since_switch=0)
    with pytest.raises(CheckFailed, match="3 write") as caught:
        cutover.plan_rollback("a", "a-v1", "a-v2", {"a-v2": {}}, blue_exists=True,
                              writes_since_switch=3)
    assert "--catch-up" in str(caught.value)
    plan = cutover.plan_rollback("a", "a-v1", "a-v2", {"a-v2": {}}, blue_exists=True,
                                 writes_since_switch=0)
    assert plan.actions[1] == {"add": {"index": "a-v1", "alias": "a", "is_write_index": True}}


def test_breaker_trips_on_repeated_failures_only() -> None:
    breaker = Breaker(threshold=3)
    assert not breaker.failure("slow")
    breaker.success()
    assert not breaker.failure("a")
    assert not breaker.failure("b")
    assert breaker.failure("c")
    assert breaker.open and breaker.reason is not None and "last: c" in breaker.reason


def test_hook_environment_names() -> None:
    assert hook_env({"run_id": "r1", "phase": "VALIDATED", "green": None}) == {
        "INDEXSHIFT_RUN_ID": "r1", "INDEXSHIFT_PHASE": "VALIDATED"}
