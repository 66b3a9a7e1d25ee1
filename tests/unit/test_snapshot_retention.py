"""Pure parts of the snapshots module: retention plans, names, repository choice, verdicts."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from indexshift.errors import BadInput
from indexshift.snapshots import (
    BackupVerdict,
    SnapshotInfo,
    choose_repository,
    common_repo_path,
    evaluate_count,
    evaluate_snapshot,
    index_name_problem,
    newest_success_holding,
    plan_snapshot_retention,
    snapshot_name,
)

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def snap(name: str, days_ago: float, state: str = "SUCCESS",
         indices: tuple[str, ...] = ("file-index-v1",), failed: int = 0) -> SnapshotInfo:
    start = NOW - timedelta(days=days_ago)
    return SnapshotInfo(repository="repo", name=name, state=state, indices=indices,
                        shards_total=2, shards_successful=2 - failed, shards_failed=failed,
                        start_time=start, end_time=start + timedelta(seconds=5),
                        include_global_state=False)


def names(snapshots: list[SnapshotInfo]) -> list[str]:
    return [s.name for s in snapshots]


# -- retention -------------------------------------------------------------------------------


def test_retention_deletes_expired_beyond_min_count_oldest_first() -> None:
    snapshots = [snap(f"s{i}", days_ago=i * 10) for i in range(6)]  # s0 newest
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=25), min_count=2,
                                   max_count=10)
    assert names(plan) == ["s5", "s4", "s3"]


def test_retention_keeps_min_count_even_when_all_expired() -> None:
    snapshots = [snap(f"s{i}", days_ago=100 + i) for i in range(5)]
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=7), min_count=3, max_count=10)
    assert names(plan) == ["s4", "s3"]


def test_retention_caps_at_max_count_even_when_fresh() -> None:
    snapshots = [snap(f"s{i}", days_ago=i * 0.1) for i in range(6)]
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=30), min_count=1, max_count=4)
    assert names(plan) == ["s5", "s4"]


def test_retention_never_deletes_the_newest_success() -> None:
    snapshots = [snap("old-ok", days_ago=400), snap("newer-failed", 300, "FAILED")]
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=1), min_count=0, max_count=1)
    assert names(plan) == ["newer-failed"]
    only = [snap("only", days_ago=1000)]
    assert plan_snapshot_retention(only, NOW, timedelta(days=1), min_count=0, max_count=1) == []


def test_retention_failed_and_partial_do_not_count_and_go_when_expired() -> None:
    snapshots = [
        snap("ok-new", days_ago=1),
        snap("partial-newest", days_ago=0.5, state="PARTIAL"),
        snap("partial-old", days_ago=40, state="PARTIAL"),
        snap("failed-old", days_ago=50, state="FAILED"),
        snap("failed-fresh", days_ago=2, state="FAILED"),
        snap("running", days_ago=90, state="IN_PROGRESS"),
        snap("ok-old", days_ago=60),
    ]
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=30), min_count=1,
                                   max_count=5)
    # Oldest first; the in-progress one, the fresh failure and the PARTIAL newer than the
    # newest SUCCESS are kept.
    assert names(plan) == ["ok-old", "failed-old", "partial-old"]


def test_retention_keeps_a_partial_when_no_success_exists() -> None:
    snapshots = [snap("partial", days_ago=90, state="PARTIAL")]
    assert plan_snapshot_retention(snapshots, NOW, timedelta(days=1), 0, 1) == []


def test_retention_keeps_snapshots_without_start_time() -> None:
    undated = SnapshotInfo("repo", "undated", "SUCCESS", (), 1, 1, 0, None, None, False)
    snapshots = [snap("a", 1), snap("b", 100), undated]
    plan = plan_snapshot_retention(snapshots, NOW, timedelta(days=10), 1, 5)
    assert names(plan) == ["b"]


@pytest.mark.parametrize(("min_count", "max_count", "expire"), [
    (-1, 5, timedelta(days=1)),
    (3, 2, timedelta(days=1)),
    (0, 0, timedelta(days=1)),
    (1, 2, timedelta(0)),
])
def test_retention_refuses_nonsense(min_count: int, max_count: int, expire: timedelta) -> None:
    with pytest.raises(BadInput):
        plan_snapshot_retention([snap("a", 1)], NOW, expire, min_count, max_count)


# -- names -----------------------------------------------------------------------------------


def test_snapshot_name_is_lowercase_stamped_and_valid() -> None:
    moment = datetime(2026, 11, 23, 10, 15, 0, 123456, tzinfo=UTC)
    assert snapshot_name("indexshift", ["file-index-v1-20261123t101500"], moment) == \
        "indexshift-file-index-v1-20261123t101500-20261123t101500.123z"
    assert snapshot_name("Emergency", [], moment) == "emergency-all-20261123t101500.123z"
    two = snapshot_name("indexshift", ["b-idx", "a-idx"], moment)
    assert two.startswith("indexshift-a-idx_b-idx-")
    many = snapshot_name("indexshift", [f"index-{i:03d}-" + "x" * 40 for i in range(20)], moment)
    assert "-and-19-more-" in many and len(many) <= 255
    assert index_name_problem(many) is None


def test_snapshot_name_converts_local_times_to_utc() -> None:
    local = datetime(2026, 11, 23, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert snapshot_name("p", ["i"], local).endswith("20261123t100000.000z")


def test_snapshot_name_refuses_a_bad_prefix() -> None:
    with pytest.raises(BadInput):
        snapshot_name("-bad", ["i"], NOW)
    with pytest.raises(BadInput):
        snapshot_name("a b", ["i"], NOW)


@pytest.mark.parametrize(("name", "ok"), [
    ("file-index-restore", True), ("", False), ("Upper", False), ("_x", False),
    ("a*b", False), ("a,b", False), ("a b", False), ("..", False), ("x" * 256, False),
])
def test_index_name_problem(name: str, ok: bool) -> None:
    assert (index_name_problem(name) is None) is ok


# -- repositories ----------------------------------------------------------------------------


def test_choose_repository() -> None:
    assert choose_repository({}, None) is None
    assert choose_repository({"only": {}}, None) == "only"
    assert choose_repository({"a": {}, "b": {}}, "b") == "b"
    with pytest.raises(BadInput, match=r"several .*: a, b"):
        choose_repository({"b": {}, "a": {}}, None)
    with pytest.raises(BadInput, match=r"'c' is not registered .*registered: a, b"):
        choose_repository({"a": {}, "b": {}}, "c")
    with pytest.raises(BadInput, match="registered: none"):
        choose_repository({}, "c")


def test_common_repo_path_takes_a_path_every_node_has() -> None:
    one = {"nodes": {"x": {"settings": {"path": {"repo": ["/snap", "/other"]}}}}}
    assert common_repo_path(one) == "/snap"
    as_string = {"nodes": {"x": {"settings": {"path": {"repo": "/snap"}}}}}
    assert common_repo_path(as_string) == "/snap"
    flat = {"nodes": {"x": {"settings": {"path.repo": ["/flat"]}}}}
    assert common_repo_path(flat) == "/flat"
    two = {"nodes": {"x": {"settings": {"path": {"repo": ["/a", "/shared"]}}},
                     "y": {"settings": {"path": {"repo": ["/shared"]}}}}}
    assert common_repo_path(two) == "/shared"
    disjoint = {"nodes": {"x": {"settings": {"path": {"repo": ["/a"]}}},
                          "y": {"settings": {"path": {"repo": ["/b"]}}}}}
    assert common_repo_path(disjoint) is None
    assert common_repo_path({"nodes": {"x": {"settings": {"path": {"home": "/h"}}}}}) is None
    assert common_repo_path({}) is None


# -- snapshot records and verdicts -----------------------------------------------------------


def test_snapshot_info_from_api() -> None:
    body = {"snapshot": "indexshift-a-1", "uuid": "u1", "indices": ["b", "a"],
            "include_global_state": False, "state": "PARTIAL",
            "start_time_in_millis": 1_795_000_000_000, "end_time_in_millis": 1_795_000_005_000,
            "failures": [{"index": "b", "shard_id": 0, "reason": "disk full"}],
            "shards": {"total": 2, "failed": 1, "successful": 1}}
    info = SnapshotInfo.from_api(body, "repo")
    assert info.repository == "repo" and info.indices == ("a", "b")
    assert info.shards_failed == 1 and not info.succeeded
    assert info.end_time is not None and info.start_time is not None
    assert (info.end_time - info.start_time) == timedelta(seconds=5)
    assert info.failures == ("b[0]: disk full",)
    assert info.to_json()["start_time"].endswith("Z")
    running = SnapshotInfo.from_api({"snapshot": "s", "state": "IN_PROGRESS",
                                     "start_time_in_millis": 1, "end_time_in_millis": 0})
    assert running.end_time is None and running.repository == ""


def test_newest_success_holding() -> None:
    snapshots = [snap("old", 10, indices=("a", "b")), snap("newer", 5, indices=("a",)),
                 snap("newest-failed", 1, state="FAILED", indices=("a", "b")),
                 snap("newest-with-failed-shard", 0.5, indices=("a", "b"), failed=1)]
    assert newest_success_holding(snapshots, ["a"]).name == "newer"  # type: ignore[union-attr]
    assert newest_success_holding(snapshots, ["a", "b"]).name == "old"  # type: ignore[union-attr]
    assert newest_success_holding(snapshots, ["c"]) is None


def test_evaluate_snapshot_lists_every_problem() -> None:
    good = evaluate_snapshot(snap("s", 1, indices=("idx",)), "idx", {"done": 1, "total": 1})
    assert all(c.passed for c in good)
    bad = SnapshotInfo("repo", "s", "PARTIAL", ("other",), 3, 2, 1, NOW, NOW, False)
    failed = {c.name for c in evaluate_snapshot(bad, "idx", None) if not c.passed}
    assert failed == {"state", "no failed shards", "all shards successful", "holds the index"}
    shards = evaluate_snapshot(snap("s", 1, indices=("idx",)), "idx", {"done": 1, "total": 2})
    assert [c.name for c in shards if not c.passed] == ["index shards stored"]
    missing = evaluate_snapshot(None, "idx", None)
    assert [c.name for c in missing] == ["present"] and not missing[0].passed


def test_evaluate_count_and_verdict() -> None:
    assert evaluate_count(500, 500).passed
    wrong = evaluate_count(500, 501)
    assert not wrong.passed and wrong.observed == 500 and wrong.expected == 501
    assert evaluate_count(7, None).passed
    info = snap("s", 1, indices=("idx",))
    verdict = BackupVerdict(info, "idx", (evaluate_count(500, 501),), 501, 500)
    assert not verdict.passed and "500 documents restored, 501 expected" in verdict.summary()
    assert verdict.to_json()["checks"][0]["expected"] == 501
