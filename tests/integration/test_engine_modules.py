"""The sandbox's OpenSearch carries what migrations need: _reindex, painless, ingest, analyzers.

The integ-test-zip distributions ship only the core; the sandbox adds OpenSearch's modules from
their Maven jars. Elasticsearch publishes no such jars, so its sandbox stays core-only, and the
test pins that down so the day it changes is noticed.
"""

import time

import pytest

from indexshift import command
from indexshift.cluster import Cluster
from indexshift.errors import ClusterError
from tests.conftest import Node

pytestmark = pytest.mark.cluster


def _wait_task(cluster: Cluster, task_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = cluster.request("GET", f"/_tasks/{task_id}")
        if task.get("completed"):
            return dict(task)
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not complete")


def test_reindex_with_painless_and_pipeline(node: Node, cluster: Cluster,
                                            alias_name: str) -> None:
    report = command.sandbox_seed(node.config, alias=alias_name, docs=1000, seed=5)
    green = f"{alias_name}-v2-test"
    if node.engine != "opensearch" or node.sandbox_name is None:
        with pytest.raises(ClusterError):
            cluster.request("POST", "/_reindex", body={"source": {"index": report["index"]},
                                                       "dest": {"index": green}})
        return
    cluster.create_index(green, {
        "settings": {"number_of_replicas": 0, "analysis": {"analyzer": {"folded": {
            "type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"],
        }}}},
        "mappings": {"properties": {"file_type": {"type": "keyword"},
                                    "file_name": {"type": "text", "analyzer": "folded"},
                                    "size_class": {"type": "keyword"}}},
    })
    cluster.request("PUT", f"/_ingest/pipeline/{alias_name}-tag",
                    body={"processors": [{"set": {"field": "migrated", "value": True}}]})
    try:
        started = cluster.request(
            "POST", "/_reindex", params={"wait_for_completion": "false", "slices": 2},
            body={"source": {"index": report["index"]},
                  "dest": {"index": green, "pipeline": f"{alias_name}-tag"},
                  "script": {"lang": "painless", "source":
                             "ctx._source.size_class = ctx._source.file_size > 4096 "
                             "? 'large' : 'small'"}},
        )
        task = _wait_task(cluster, started["task"])
        assert not task.get("error"), task
        cluster.refresh(green)
        assert cluster.count(green) == 1000
        sample = cluster.request("GET", f"/{green}/_search", body={"size": 1})
        source = sample["hits"]["hits"][0]["_source"]
        assert source["migrated"] is True and source["size_class"] in ("large", "small")
    finally:
        cluster.request("DELETE", f"/_ingest/pipeline/{alias_name}-tag")
