"""Snapshots on a real node: take, verify by restoring, restore under a new name, emergency."""

from collections.abc import Iterator

import pytest

from indexshift import command
from indexshift.cluster import Cluster
from indexshift.errors import BadInput, CheckFailed
from indexshift.snapshots import (
    DEFAULT_REPOSITORY,
    RestoreSource,
    SnapshotInfo,
    common_repo_path,
    delete_snapshot,
    emergency_snapshot,
    ensure_repository,
    latest_success_holding,
    list_snapshots,
    restore_as,
    restore_source,
    take_snapshot,
    verify_snapshot,
)
from tests.conftest import Node

pytestmark = pytest.mark.cluster

DOCS = 500


@pytest.fixture
def repository(cluster: Cluster) -> str:
    # Other suites may register repositories of their own; ours is the default one.
    name = DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in cluster.snapshot_repositories() else None
    return ensure_repository(cluster, name)


@pytest.fixture
def made(cluster: Cluster) -> Iterator[list[SnapshotInfo]]:
    """Snapshots a test takes; deleted when it ends."""
    taken: list[SnapshotInfo] = []
    yield taken
    for info in taken:
        delete_snapshot(cluster, info)


@pytest.fixture
def seeded(node: Node, alias_name: str) -> str:
    """The physical index behind a freshly seeded ``alias_name`` holding DOCS documents."""
    return str(command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)["index"])


def _leftovers(cluster: Cluster, alias_name: str) -> list[str]:
    return sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*"))


def test_repository_is_registered_under_path_repo(cluster: Cluster, repository: str) -> None:
    registered = cluster.snapshot_repositories()
    assert repository in registered
    if repository == DEFAULT_REPOSITORY:
        nodes = cluster.request("GET", "/_nodes/settings")
        base = common_repo_path(nodes)
        assert base is not None
        assert registered[repository]["type"] == "fs"
        assert registered[repository]["settings"]["location"] == \
            f"{base.rstrip('/')}/{DEFAULT_REPOSITORY}"
    assert ensure_repository(cluster, repository) == repository


def test_unknown_repository_is_bad_input_listing_the_registered(
        cluster: Cluster, repository: str, alias_name: str) -> None:
    with pytest.raises(BadInput, match=rf"{alias_name}-nope.*registered: .*{repository}"):
        ensure_repository(cluster, f"{alias_name}-nope")
    assert f"{alias_name}-nope" not in cluster.snapshot_repositories()


def test_snapshot_and_verify_with_the_right_count(cluster: Cluster, repository: str,
                                                  alias_name: str, seeded: str,
                                                  made: list[SnapshotInfo]) -> None:
    info = take_snapshot(cluster, repository, [seeded])
    made.append(info)
    assert info.name.startswith(f"indexshift-{seeded}-")
    assert info.name == info.name.lower()
    assert info.state == "SUCCESS" and info.shards_failed == 0
    assert info.indices == (seeded,) and not info.include_global_state
    assert info.start_time is not None and info.end_time is not None

    verdict = verify_snapshot(cluster, info, seeded, DOCS)
    assert verdict.passed, verdict.summary()
    assert verdict.restored_count == DOCS
    names = [c.name for c in verdict.checks]
    assert names[:4] == ["state", "no failed shards", "all shards successful", "holds the index"]
    assert "restore" in names and "document count" in names
    # The temporary copy is gone and never joined the live alias.
    assert _leftovers(cluster, alias_name) == [seeded]
    assert list(cluster.alias_targets(alias_name)) == [seeded]

    listed = list_snapshots(cluster, repository)
    assert info.name in [s.name for s in listed]
    starts = [s.start_time for s in listed if s.start_time is not None]
    assert starts == sorted(starts, reverse=True)
    latest = latest_success_holding(cluster, repository, [seeded])
    assert latest is not None and latest.name == info.name


def test_wrong_expected_count_fails_verification(cluster: Cluster, repository: str,
                                                 alias_name: str, seeded: str,
                                                 made: list[SnapshotInfo]) -> None:
    info = take_snapshot(cluster, repository, [seeded])
    made.append(info)
    verdict = verify_snapshot(cluster, info, seeded, DOCS + 1)
    assert not verdict.passed
    [failure] = verdict.failures
    assert failure.name == "document count"
    assert failure.observed == DOCS and failure.expected == DOCS + 1
    assert _leftovers(cluster, alias_name) == [seeded]  # the temporary index was deleted


def test_verify_without_restore_and_for_an_index_not_held(cluster: Cluster, repository: str,
                                                          alias_name: str, seeded: str,
                                                          made: list[SnapshotInfo]) -> None:
    info = take_snapshot(cluster, repository, [seeded])
    made.append(info)
    quick = verify_snapshot(cluster, info, seeded, DOCS, restore_check=False)
    assert quick.passed and quick.restored_count is None
    assert "restore" not in [c.name for c in quick.checks]
    other = verify_snapshot(cluster, info, f"{alias_name}-other", DOCS)
    assert not other.passed
    assert {c.name for c in other.failures} == {"holds the index", "restore"}
    assert _leftovers(cluster, alias_name) == [seeded]


def test_restore_as_refuses_an_existing_name_and_restores_under_a_new_one(
        cluster: Cluster, repository: str, alias_name: str, seeded: str,
        made: list[SnapshotInfo]) -> None:
    info = take_snapshot(cluster, repository, [seeded])
    made.append(info)
    for taken in (seeded, alias_name):
        with pytest.raises(BadInput, match="already exists"):
            restore_as(cluster, repository, info.name, seeded, taken)
    with pytest.raises(BadInput, match="uppercase"):
        restore_as(cluster, repository, info.name, seeded, f"{alias_name}-UPPER")
    with pytest.raises(BadInput, match="does not hold"):
        restore_as(cluster, repository, info, f"{alias_name}-absent", f"{alias_name}-x")
    assert _leftovers(cluster, alias_name) == [seeded]  # refusals changed nothing

    restored = f"{alias_name}-restored"
    restore_as(cluster, repository, info, seeded, restored)
    assert cluster.count(restored) == DOCS
    assert cluster.count(seeded) == DOCS
    # The copy stands apart: the live alias still serves only the original.
    assert list(cluster.alias_targets(alias_name)) == [seeded]
    assert cluster.health(restored)["status"] in ("green", "yellow")


RESTORE_DOCS = 6_000


def test_restore_as_returns_once_every_primary_can_be_read(
        cluster: Cluster, repository: str, alias_name: str, made: list[SnapshotInfo]) -> None:
    source = f"{alias_name}-big"
    cluster.request("PUT", f"/{source}", body={
        "settings": {"number_of_shards": 2, "number_of_replicas": 0}})
    for start in range(0, RESTORE_DOCS, 1_000):
        result = cluster.bulk_index(source, ((f"d{n}", {"n": n, "text": f"document {n} " * 20})
                                             for n in range(start, start + 1_000)))
        assert result.failed == 0, result.first_error
    cluster.refresh(source)
    info = take_snapshot(cluster, repository, [source], prefix=alias_name)
    made.append(info)

    for attempt in range(4):
        restored = f"{alias_name}-copy{attempt}"
        primaries = restore_as(cluster, repository, info, source, restored)
        # Counted at once: a primary still being restored answers 503, or a partial total.
        assert cluster.count(restored) == RESTORE_DOCS, attempt
        assert (primaries.active, primaries.total) == (2, 2)
        assert restore_source(cluster, restored) == RestoreSource(repository, info.name, source)
        cluster.delete_index(restored)
    assert restore_source(cluster, source) is None  # created, never restored


def test_restore_as_that_cannot_finish_is_one_line_check_failed(
        cluster: Cluster, repository: str, alias_name: str, made: list[SnapshotInfo]) -> None:
    source = f"{alias_name}-small"
    cluster.request("PUT", f"/{source}", body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    cluster.put_doc(source, "d1", {"n": 1}, refresh=True)
    info = take_snapshot(cluster, repository, [source], prefix=alias_name)
    made.append(info)
    stuck = f"{alias_name}-stuck"
    try:
        with pytest.raises(CheckFailed) as caught:
            # No node may hold it: its primary stays unassigned until the deadline.
            restore_as(cluster, repository, info, source, stuck, timeout_s=1,
                       index_settings={"index.routing.allocation.require._name": "no-such-node"})
        assert "\n" not in str(caught.value)
        assert caught.value.message.startswith(f"{stuck} has 0 of 1 primary shard(s) active")
        assert caught.value.hint is not None
        assert "_cluster/allocation/explain" in caught.value.hint
        assert f"delete {stuck}" in caught.value.hint
    finally:
        # A restore in progress keeps its snapshot from being deleted: end it first.
        if cluster.index_exists(stuck):
            cluster.delete_index(stuck)


def test_emergency_snapshot_holds_every_index_and_the_cluster_state(
        cluster: Cluster, repository: str, seeded: str, made: list[SnapshotInfo]) -> None:
    info = emergency_snapshot(cluster, repository)
    made.append(info)
    assert info.name.startswith("emergency-all-")
    assert info.include_global_state
    # Partial is allowed in an emergency; other indices may come and go meanwhile.
    assert info.state in ("SUCCESS", "PARTIAL")
    assert seeded in info.indices
    verdict = verify_snapshot(cluster, info, seeded, DOCS, restore_check=False)
    assert {c.name for c in verdict.checks if c.passed} >= {"holds the index",
                                                            "index shards stored"}
