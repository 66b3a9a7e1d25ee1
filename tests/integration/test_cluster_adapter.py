"""The adapter's named calls, on a real node of each engine."""

from __future__ import annotations

import pytest

from indexshift.cluster import Cluster

pytestmark = pytest.mark.cluster


def _index_with(cluster: Cluster, index: str, count: int) -> None:
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    result = cluster.bulk_index(index, [(f"d{i}", {"n": i}) for i in range(count)])
    assert result.failed == 0, result.first_error
    cluster.refresh(index)


def test_count_with_a_query_and_mget_with_and_without_source(cluster: Cluster,
                                                             alias_name: str) -> None:
    index = f"{alias_name}-v1"
    _index_with(cluster, index, 10)
    assert cluster.count(index) == 10
    assert cluster.count(index, {"range": {"n": {"gte": 7}}}) == 3

    docs = cluster.mget(index, ["d1", "nope"])
    assert [(d["_id"], d["found"]) for d in docs] == [("d1", True), ("nope", False)]
    assert docs[0]["_source"] == {"n": 1}
    bare = cluster.mget(index, ["d2"], source=False)
    assert bare[0]["found"] and "_source" not in bare[0]


def test_index_blocks_settings_and_shard_stats(cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    _index_with(cluster, index, 4)
    assert cluster.index_blocks(index).get("write", False) is False
    cluster.add_write_block(index)
    try:
        assert cluster.index_blocks(index)["write"] is True
    finally:
        cluster.remove_write_block(index)
    assert cluster.index_blocks(index)["write"] is False
    assert cluster.index_settings(index)["index"]["number_of_replicas"] == "0"
    assert cluster.index_settings(index, "index.number_of_replicas", flat=True) == \
        {"index.number_of_replicas": "0"}
    copies = cluster.shard_stats(index)
    primaries = [c for c in copies if c["routing"]["primary"]]
    assert primaries and all(c["seq_no"]["local_checkpoint"] >= 0 for c in primaries)


def test_modules_cat_and_node_settings(cluster: Cluster, alias_name: str) -> None:
    modules = cluster.modules_on_every_node()
    assert modules  # every engine ships some modules
    reindex = cluster.has_module_everywhere("reindex")
    assert reindex == ("reindex" in modules)
    assert cluster.has_module_everywhere("no-such-module") is False
    index = f"{alias_name}-v1"
    _index_with(cluster, index, 1)
    table = cluster.cat(f"indices/{index}", v=True)
    assert table.splitlines()[0].split()[:3] == ["health", "status", "index"]
    assert index in table
    assert "nodes" in cluster.node_settings("nodes.*.name")
