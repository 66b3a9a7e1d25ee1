"""`indexshift assess` and `indexshift recover` as the paged engineer runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexshift import snapshots
from indexshift.cluster import Cluster
from tests.conftest import Node
from tests.helpers import run_cli
from tests.integration.migration_support import SCENARIOS, write_migration

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]


def _indices_and_aliases(cluster: Cluster, prefix: str) -> tuple[list[str], dict[str, list[str]]]:
    names = sorted(str(r["index"]) for r in cluster.indices(f"{prefix}*"))
    return names, {a: sorted(t) for a, t in cluster.aliases().items() if a.startswith(prefix)}


def _blue(cluster: Cluster, alias: str, docs: int) -> str:
    index = f"{alias}-v1"
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.bulk_index(index, [(f"doc-{i}", {"n": i}) for i in range(docs)])
    cluster.refresh(index)
    cluster.update_aliases([{"add": {"index": index, "alias": alias, "is_write_index": True}}])
    return index


def test_assess_json_shape_and_exit_code_of_a_half_switch(node: Node, cluster: Cluster,
                                                          alias_name: str) -> None:
    blue = _blue(cluster, alias_name, 50)
    green = f"{alias_name}-v2"
    cluster.create_index(green, {"settings": {"number_of_replicas": 0}})
    cluster.bulk_index(green, [(f"doc-{i}", {"n": i}) for i in range(50)])
    cluster.refresh(green)
    # By hand, half done: the alias now points at both, writes still to blue.
    cluster.request("POST", "/_aliases", body={"actions": [
        {"add": {"index": green, "alias": alias_name, "is_write_index": False}}]})
    before = _indices_and_aliases(cluster, alias_name)
    result = run_cli("assess", alias_name, "--url", node.url, "--json")
    assert result.code == 1, result.stderr  # an action is recommended
    report = json.loads(result.stdout)
    assert {"alias", "state", "risk", "integrity_level", "counts", "backup", "recommendation",
            "decision_path", "evidence"} <= set(report)
    assert set(report["counts"]) == {"current", "backup", "missing", "extra", "changed"}
    assert report["state"] == "MID_SWITCH" and report["risk"] == "critical"
    assert report["recommendation"]["method"] == "COMPLETE_SWITCH"
    assert all({"question", "answer"} == set(step) for step in report["decision_path"])
    assert _indices_and_aliases(cluster, alias_name) == before  # assess only reads

    human = run_cli("assess", alias_name, "--url", node.url)
    assert human.stdout.splitlines()[0].startswith("MID_SWITCH — risk critical")
    assert blue in human.stdout


def test_assess_checks_the_mapping_the_spec_of_the_serving_version_states(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    _blue(cluster, alias_name, 20)  # <alias>-v1, whose mapping is not the spec's
    migrations = tmp_path / "migrations"
    write_migration(SCENARIOS / "mapping_change", alias_name, migrations, version=2)

    def mapping_check() -> dict[str, object]:
        result = run_cli("assess", alias_name, "--dir", str(migrations), "--url", node.url,
                         "--json")
        assert result.code in (0, 1), result.stderr
        check: dict[str, object] = json.loads(result.stdout)["evidence"]["mapping"]
        return check

    assert mapping_check()["ok"] is None  # no spec describes version 1
    write_migration(SCENARIOS / "mapping_change", alias_name, migrations, version=1)
    check = mapping_check()
    assert check["ok"] is False and "file_type" in str(check["problems"])


def test_assess_of_an_unknown_alias_is_one_line_exit_2(node: Node, alias_name: str) -> None:
    result = run_cli("assess", alias_name, "--url", node.url)
    assert result.code == 2
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_recover_plans_first_then_brings_every_lost_document_back(node: Node, cluster: Cluster,
                                                                  alias_name: str) -> None:
    blue = _blue(cluster, alias_name, 2_000)
    repo = snapshots.ensure_repository(cluster, snapshots.DEFAULT_REPOSITORY if
                                       snapshots.DEFAULT_REPOSITORY in
                                       cluster.snapshot_repositories() else None)
    backup = snapshots.take_snapshot(cluster, repo, [blue], prefix=alias_name)
    try:
        lost = [f"doc-{i}" for i in (3, 500, 1999)]
        cluster.bulk([{"delete": {"_index": blue, "_id": i}} for i in lost])
        cluster.refresh(blue)
        before = _indices_and_aliases(cluster, alias_name)
        dry = run_cli("recover", alias_name, "--dry-run", "--url", node.url)
        assert dry.code == 0, dry.stderr
        assert dry.stdout.startswith("plan: SELECTIVE_REINDEX")
        assert _indices_and_aliases(cluster, alias_name) == before
        assert cluster.count(blue) == 1_997

        done = run_cli("recover", alias_name, "--yes", "--url", node.url, "--json")
        assert done.code == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["recovered"] is True
        assert report["after"]["integrity_level"] == 1
        assert report["after"]["counts"]["missing"] == 0
        assert report["result"]["copied"] == 3
        assert cluster.count(blue) == 2_000
        assert all(cluster.get_doc(blue, i) is not None for i in lost)
        assert _indices_and_aliases(cluster, alias_name) == before  # temporary restore gone
        bad = run_cli("recover", alias_name, "--method", "TELEPORT", "--url", node.url)
        assert bad.code == 2 and "unknown recovery method" in bad.stderr
    finally:
        snapshots.delete_snapshot(cluster, backup)
