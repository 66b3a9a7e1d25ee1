"""`indexshift snapshot emergency|list|verify|restore` as an operator runs them."""

from __future__ import annotations

import json

import pytest

from indexshift.cluster import Cluster
from indexshift.snapshots import DEFAULT_REPOSITORY, ensure_repository, list_snapshots
from tests.conftest import Node
from tests.helpers import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]


def _state(cluster: Cluster, prefix: str) -> tuple[list[str], dict[str, list[str]]]:
    names = sorted(str(r["index"]) for r in cluster.indices(f"{prefix}*"))
    return names, {a: t for a, t in cluster.aliases().items() if a.startswith(prefix)}


def test_emergency_list_verify_and_restore_aside(node: Node, cluster: Cluster,
                                                 alias_name: str) -> None:
    repo = ensure_repository(cluster, DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in
                             cluster.snapshot_repositories() else None)
    index = f"{alias_name}-v1"
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.bulk_index(index, [(str(i), {"n": i}) for i in range(120)])
    cluster.refresh(index)
    common = ("--url", node.url, "--repository", repo)

    plan = run_cli("snapshot", "emergency", "--dry-run", *common, "--json")
    assert plan.code == 0, plan.stderr
    assert json.loads(plan.stdout)["dry_run"] is True
    taken = run_cli("snapshot", "emergency", *common, "--json")
    assert taken.code == 0, taken.stderr
    snapshot = json.loads(taken.stdout)["snapshot"]
    try:
        assert snapshot["include_global_state"] is True and index in snapshot["indices"]
        listed = json.loads(run_cli("snapshot", "list", *common, "--json").stdout)
        assert snapshot["name"] in [s["name"] for s in listed["snapshots"]]

        verified = run_cli("snapshot", "verify", snapshot["name"], "--index", index,
                           "--expected-count", "120", *common, "--json")
        assert verified.code == 0, verified.stderr
        assert json.loads(verified.stdout)["indices"][0]["restored_count"] == 120
        wrong = run_cli("snapshot", "verify", snapshot["name"], "--index", index,
                        "--expected-count", "121", *common)
        assert wrong.code == 1 and "120 documents restored, 121 expected" in wrong.stdout

        before = _state(cluster, alias_name)
        dry = run_cli("snapshot", "restore", snapshot["name"], index, "--as",
                      f"{alias_name}-restored", "--dry-run", *common)
        assert dry.code == 0 and "plan:" in dry.stdout
        assert _state(cluster, alias_name) == before
        over = run_cli("snapshot", "restore", snapshot["name"], index, "--as", index, *common)
        assert over.code == 2 and "never replaces" in over.stderr
        assert len(over.stderr.strip().splitlines()) == 1
        restored = run_cli("snapshot", "restore", snapshot["name"], index, "--as",
                           f"{alias_name}-restored", *common, "--json")
        assert restored.code == 0, restored.stderr
        assert json.loads(restored.stdout)["docs"] == 120
        assert cluster.count(index) == 120  # the original is untouched
    finally:
        cluster.delete_snapshot(repo, snapshot["name"])
    assert snapshot["name"] not in [s.name for s in list_snapshots(cluster, repo)]


def test_unknown_snapshot_is_one_line_and_exit_2(node: Node, cluster: Cluster) -> None:
    repo = ensure_repository(cluster, DEFAULT_REPOSITORY if DEFAULT_REPOSITORY in
                             cluster.snapshot_repositories() else None)
    result = run_cli("snapshot", "verify", "no-such-snapshot", "--url", node.url,
                     "--repository", repo)
    assert result.code == 2
    assert "not in repository" in result.stderr and len(result.stderr.strip().splitlines()) == 1
