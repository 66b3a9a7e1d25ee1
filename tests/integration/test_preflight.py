"""Pre-flight on a real node: a healthy alias passes with a proven backup; problems fail."""

from collections.abc import Iterator

import pytest

from indexshift import command
from indexshift.cluster import Cluster
from indexshift.preflight import (
    BACKUP,
    CONNECTIVITY,
    DISK_HEADROOM,
    NAMING,
    NO_CONCURRENT_MIGRATION,
    SOURCE_HEALTH,
    PreflightReport,
    run_preflight,
)
from indexshift.snapshots import (
    DEFAULT_REPOSITORY,
    delete_snapshot,
    ensure_repository,
    list_snapshots,
)
from tests.conftest import Node

pytestmark = pytest.mark.cluster

DOCS = 500
ORDER = [CONNECTIVITY, NAMING, SOURCE_HEALTH, DISK_HEADROOM, NO_CONCURRENT_MIGRATION, BACKUP]


@pytest.fixture
def repository(cluster: Cluster) -> str:
    name = DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in cluster.snapshot_repositories() else None
    return ensure_repository(cluster, name)


@pytest.fixture
def reports(cluster: Cluster) -> Iterator[list[PreflightReport]]:
    """Reports a test produced; their backup snapshots are deleted when it ends."""
    made: list[PreflightReport] = []
    yield made
    for report in made:
        if report.backup is not None:
            delete_snapshot(cluster, report.backup)


def _names(report: PreflightReport) -> list[str]:
    return [c.name for c in report.checks]


def _snapshots_of(cluster: Cluster, repository: str, alias_name: str) -> list[str]:
    return [s.name for s in list_snapshots(cluster, repository) if alias_name in s.name]


def test_preflight_passes_on_a_healthy_alias_with_a_verified_backup(
        node: Node, cluster: Cluster, alias_name: str, repository: str,
        reports: list[PreflightReport]) -> None:
    index = command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)["index"]
    report = run_preflight(cluster, alias_name, repository=repository,
                           lease_check=lambda: (True, f"no migration holds {alias_name}"))
    reports.append(report)
    assert report.passed, report.to_json()
    assert _names(report) == ORDER
    assert report.index == index
    assert report.check(SOURCE_HEALTH).data["docs"] == DOCS
    disk = report.check(DISK_HEADROOM).data
    assert disk["needed_bytes"] > disk["store_bytes"] > 0
    assert disk["usable_bytes"] >= disk["needed_bytes"]
    assert report.backup is not None and report.backup.state == "SUCCESS"
    assert report.backup.indices == (index,)
    assert report.verification is not None and report.verification.restored_count == DOCS
    assert report.check(BACKUP).data["restored_count"] == DOCS
    assert report.to_json()["passed"] is True
    # Preflight leaves the alias and its indices as they were.
    assert list(cluster.alias_targets(alias_name)) == [index]
    assert sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*")) == [index]


def test_preflight_fails_naming_for_an_alias_over_two_indices(
        cluster: Cluster, alias_name: str, repository: str,
        reports: list[PreflightReport]) -> None:
    first, second = f"{alias_name}-v1-a", f"{alias_name}-v2-b"
    for index in (first, second):
        cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": first, "alias": alias_name}},
                            {"add": {"index": second, "alias": alias_name}}])
    report = run_preflight(cluster, alias_name, repository=repository)
    reports.append(report)
    naming = report.check(NAMING)
    assert not naming.passed and first in naming.detail and second in naming.detail
    assert naming.fix
    assert not report.passed and report.backup is None
    assert report.check(SOURCE_HEALTH).detail.startswith("not checked")
    assert not report.check(BACKUP).passed
    assert _snapshots_of(cluster, repository, alias_name) == []


def test_preflight_fails_naming_for_a_missing_alias_and_a_concrete_index(
        cluster: Cluster, alias_name: str, repository: str,
        reports: list[PreflightReport]) -> None:
    missing = run_preflight(cluster, alias_name, repository=repository)
    reports.append(missing)
    assert not missing.passed
    assert "does not exist" in missing.check(NAMING).detail
    assert missing.check(CONNECTIVITY).passed

    concrete = f"{alias_name}-plain"
    cluster.create_index(concrete, {"settings": {"number_of_replicas": 0}})
    report = run_preflight(cluster, concrete, repository=repository)
    reports.append(report)
    assert "concrete index" in report.check(NAMING).detail
    assert report.backup is None


def test_preflight_fails_when_another_migration_holds_the_alias(
        node: Node, cluster: Cluster, alias_name: str, repository: str,
        reports: list[PreflightReport]) -> None:
    command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)
    report = run_preflight(cluster, alias_name, repository=repository,
                           lease_check=lambda: (False, "run r-1 holds the alias"))
    reports.append(report)
    lease = report.check(NO_CONCURRENT_MIGRATION)
    assert not lease.passed and lease.detail == "run r-1 holds the alias" and lease.fix
    assert [c.name for c in report.failures] == [NO_CONCURRENT_MIGRATION, BACKUP]
    assert report.backup is None
    assert _snapshots_of(cluster, repository, alias_name) == []


def test_preflight_fails_disk_headroom_with_an_impossible_margin(
        node: Node, cluster: Cluster, alias_name: str, repository: str,
        reports: list[PreflightReport]) -> None:
    command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)
    report = run_preflight(cluster, alias_name, repository=repository, margin=1e12)
    reports.append(report)
    disk = report.check(DISK_HEADROOM)
    assert not disk.passed and disk.fix and "free at least" in disk.fix
    assert disk.data["needed_bytes"] > disk.data["usable_bytes"]
    assert report.backup is None


def test_preflight_can_skip_the_backup(node: Node, cluster: Cluster, alias_name: str,
                                       reports: list[PreflightReport]) -> None:
    command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)
    report = run_preflight(cluster, alias_name, repository=None, take_backup=False)
    reports.append(report)
    assert report.passed
    backup = report.check(BACKUP)
    assert backup.passed and backup.detail == "skipped by request"
    assert report.check(NO_CONCURRENT_MIGRATION).detail == "not checked"
    assert report.backup is None
