import json

import pytest

from indexshift import command
from indexshift.cluster import Cluster
from indexshift.errors import BadInput, ExitCode, NotFound
from tests.conftest import Node
from tests.helpers import run_cli

pytestmark = pytest.mark.cluster


def test_adapter_detects_engine_and_version(node: Node, cluster: Cluster) -> None:
    assert cluster.engine.engine == node.engine
    assert cluster.engine.version == node.version


def test_info_reports_the_cluster(node: Node) -> None:
    report = command.info(node.config)
    assert report["engine"] == node.engine
    assert report["health"] in ("green", "yellow")
    assert report["nodes"]["count"] >= 1
    assert report["disk"]["total_bytes"] > 0
    assert isinstance(report["indices"], int) and isinstance(report["aliases"], int)


def test_info_cli_json_and_human(node: Node) -> None:
    result = run_cli("info", "--url", node.url, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["engine"] == node.engine and data["version"]
    human = run_cli("info", "--url", node.url)
    assert human.code == 0
    assert node.engine in human.stdout and "nodes:" in human.stdout


def test_info_on_an_alias_that_does_not_exist(node: Node, alias_name: str) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        command.info(node.config, alias_name)
    result = run_cli("info", alias_name, "--url", node.url)
    assert result.code == ExitCode.BAD_INPUT
    assert f"alias '{alias_name}' does not exist" in result.stderr


def test_info_tells_a_concrete_index_from_an_alias(node: Node, cluster: Cluster,
                                                    alias_name: str) -> None:
    cluster.create_index(alias_name, {"settings": {"number_of_replicas": 0}})
    with pytest.raises(BadInput, match="concrete index"):
        command.info(node.config, alias_name)


def test_adapter_maps_missing_index_to_not_found(cluster: Cluster, alias_name: str) -> None:
    with pytest.raises(NotFound):
        cluster.count(alias_name)
    assert cluster.index_exists(alias_name) is False
