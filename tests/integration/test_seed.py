import re

import pytest

from indexshift import command, sampledata
from indexshift.cluster import Cluster
from indexshift.errors import BadInput, ExitCode
from tests.conftest import Node
from tests.helpers import run_cli

pytestmark = pytest.mark.cluster


def _ids(cluster: Cluster, alias: str) -> set[str]:
    body = cluster.request("GET", f"/{alias}/_search",
                           body={"size": 10_000, "_source": False, "query": {"match_all": {}}})
    return {hit["_id"] for hit in body["hits"]["hits"]}


def test_seed_creates_alias_over_a_versioned_index(node: Node, cluster: Cluster,
                                                   alias_name: str) -> None:
    report = command.sandbox_seed(node.config, alias=alias_name, docs=3000, seed=7,
                                  embedding_dims=4)
    assert re.fullmatch(rf"{alias_name}-v1-\d{{8}}t\d{{6}}", report["index"])
    assert report["docs"] == 3000 and report["docs_per_second"] > 0
    targets = cluster.alias_targets(alias_name)
    assert list(targets) == [report["index"]]
    assert targets[report["index"]].get("is_write_index") is True
    assert cluster.count(alias_name) == 3000
    mapping = cluster.mapping(report["index"])[report["index"]]["mappings"]["properties"]
    assert mapping["file_type"]["type"] == "text"
    assert set(mapping) == set(sampledata.V1_MAPPINGS["properties"])
    # Load-time settings are undone once the data is in.
    settings = cluster.settings(report["index"])[report["index"]]["settings"]["index"]
    assert settings["refresh_interval"] == "1s"
    assert settings["translog"]["durability"] == "request"
    info = command.info(node.config, alias_name)
    assert info["alias"]["indices"][0]["docs"] == 3000


def test_seed_is_deterministic_for_a_seed(node: Node, cluster: Cluster, alias_name: str) -> None:
    command.sandbox_seed(node.config, alias=alias_name, docs=500, seed=11)
    first = _ids(cluster, alias_name)
    command.sandbox_seed(node.config, alias=alias_name, docs=500, seed=11, replace=True)
    assert _ids(cluster, alias_name) == first
    command.sandbox_seed(node.config, alias=alias_name, docs=500, seed=12, replace=True)
    assert _ids(cluster, alias_name).isdisjoint(first)
    assert len(cluster.alias_targets(alias_name)) == 1
    assert len(cluster.indices(f"{alias_name}*")) == 1  # replaced indices were dropped


def test_seed_refuses_an_existing_alias_and_changes_nothing(node: Node, cluster: Cluster,
                                                             alias_name: str) -> None:
    command.sandbox_seed(node.config, alias=alias_name, docs=100)
    before = sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*"))
    result = run_cli("sandbox", "seed", "--url", node.url, "--alias", alias_name,
                     "--docs", "10")
    assert result.code == ExitCode.BAD_INPUT
    assert "already exists" in result.stderr and "--replace" in result.stderr
    assert sorted(str(r["index"]) for r in cluster.indices(f"{alias_name}*")) == before


def test_seed_replace_never_drops_a_foreign_index(node: Node, cluster: Cluster,
                                                   alias_name: str) -> None:
    foreign = f"{alias_name}-handmade"
    cluster.create_index(foreign, {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": foreign, "alias": alias_name}}])
    with pytest.raises(BadInput, match="not seeded by us"):
        command.sandbox_seed(node.config, alias=alias_name, docs=10, replace=True)
    assert cluster.index_exists(foreign)
    assert list(cluster.alias_targets(alias_name)) == [foreign]


def test_seed_cli_reports_docs_per_second(node: Node, alias_name: str) -> None:
    result = run_cli("sandbox", "seed", "--url", node.url, "--alias", alias_name,
                     "--docs", "2000")
    assert result.code == 0, result.stderr
    assert "docs/s" in result.stdout and "2,000 documents" in result.stdout
