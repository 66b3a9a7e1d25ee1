"""The event log against a real node: writes through the gateway, archived, rebuilt, diffed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from indexshift.cluster import Cluster
from indexshift.diff import diff_indices
from indexshift.errors import Conflict
from indexshift.events import archive_segments, rebuild, verify_archive
from indexshift.gateway import BackgroundGateway, GatewayConfig
from tests.conftest import Node

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]


def _send(url: str, method: str, path: str, body: Any = None, *, ndjson: bool = False) -> int:
    if body is None:
        data = None
    elif ndjson:
        data = b"".join(json.dumps(line).encode() + b"\n" for line in body)
    else:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Content-Type": "application/x-ndjson" if ndjson else "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _setup(cluster: Cluster, alias: str) -> str:
    index = f"{alias}-v1"
    cluster.create_index(index, {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"name": {"type": "keyword"}, "n": {"type": "long"}}}})
    cluster.update_aliases([{"add": {"index": index, "alias": alias}}])
    return index


def _gateway(node: Node, wal: Path) -> BackgroundGateway:
    # Small segments: the writes below fill several, so some are closed and archived.
    return BackgroundGateway(GatewayConfig(listen="127.0.0.1:0", upstream=node.url, wal_dir=wal,
                                           segment_bytes=2048))


def test_rebuild_from_archived_events_equals_the_live_index(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    index = _setup(cluster, alias_name)
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    with _gateway(node, wal) as gw:
        url = gw.url
        for i in range(30):
            assert _send(url, "PUT", f"/{alias_name}/_doc/d{i}",
                         {"name": f"doc {i}", "n": i, "tags": {"a": i}}) == 201
        assert _send(url, "POST", f"/{alias_name}/_update/d1", {"doc": {"n": 100,
                                                                        "tags": {"b": 1}}}) == 200
        assert _send(url, "DELETE", f"/{alias_name}/_doc/d2") == 200
        assert _send(url, "PUT", f"/{alias_name}/_create/d3", {"n": -1}) == 409  # rejected
        assert _send(url, "DELETE", f"/{alias_name}/_doc/missing") == 404  # rejected
        assert _send(url, "POST", f"/{alias_name}/_update/missing", {"doc": {"n": 1}}) == 404
        assert _send(url, "POST", f"/{index}/_update/d4", {"doc": {"n": 44}}) == 200
        assert _send(url, "POST", f"/{alias_name}/_bulk", [
            {"index": {"_id": "b1"}}, {"name": "bulk", "n": 1},
            {"create": {"_id": "d5"}}, {"n": -5},  # refused item: d5 exists
            {"update": {"_id": "d6"}}, {"doc": {"n": 66}},
            {"update": {"_id": "u1"}}, {"doc": {"n": 7}, "doc_as_upsert": True},
            {"update": {"_id": "nope"}}, {"doc": {"n": 8}},  # refused item: no such document
            {"delete": {"_id": "d7"}},
            {"delete": {"_id": "b1"}},
            {"delete": {"_id": "never"}},  # a no-op: no such document
            {"index": {"_index": index, "_id": "b2"}}, {"name": "direct", "n": 2},
        ], ndjson=True) == 200
        assert _send(url, "PUT", f"/{alias_name}/_doc/d8?refresh=true", {"n": 88}) == 200
    cluster.refresh(index)
    report = archive_segments(wal, archive)
    assert report["archived"], "the writes should have filled more than one segment"
    assert archive_segments(wal, archive)["archived"] == []
    verify_archive(archive)

    rebuilt = rebuild(cluster, alias_name, [archive, wal])
    target = rebuilt["target"]
    assert target.startswith(f"{alias_name}-rebuilt-")
    assert rebuilt["skipped_in_log"] == {"rejected": 3}
    assert rebuilt["events_ignored"] == {"create_on_existing_id": 1, "update_of_missing_id": 1,
                                         "delete_of_missing_id": 1}
    assert rebuilt["docs_written"] == cluster.count(index)
    assert rebuilt["records_without_outcome"] == 0
    difference = diff_indices(cluster, index, target)
    assert difference.equal, difference.to_json()
    assert cluster.mapping(target)[target]["mappings"]["properties"]["name"] == {
        "type": "keyword"}
    assert cluster.alias_targets(alias_name) == {index: {}}  # the alias did not move
    with pytest.raises(Conflict):
        rebuild(cluster, alias_name, [archive, wal], target=target)


def test_rebuild_until_a_time_equals_the_state_at_that_time(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    index = _setup(cluster, alias_name)
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    with _gateway(node, wal) as gw:
        url = gw.url
        for i in range(20):
            assert _send(url, "PUT", f"/{alias_name}/_doc/d{i}", {"name": "first", "n": i}) == 201
        assert _send(url, "POST", f"/{alias_name}/_update/d0", {"doc": {"n": 1000}}) == 200
        cluster.refresh(index)
        # Every write so far was answered, every later one is sent after this instant.
        middle = datetime.now(UTC)
        then = {hit["_id"]: hit["_source"] for hit in cluster.search(
            index, {"query": {"match_all": {}}, "size": 100})["hits"]["hits"]}
        time.sleep(0.01)
        for i in range(10):
            assert _send(url, "PUT", f"/{alias_name}/_doc/d{i}", {"name": "second"}) == 200
        assert _send(url, "DELETE", f"/{alias_name}/_doc/d15") == 200
        assert _send(url, "PUT", f"/{alias_name}/_doc/late", {"n": 1}) == 201
    cluster.refresh(index)
    archive_segments(wal, archive)
    reference = f"{alias_name}-at-middle"
    cluster.create_index(reference, {"settings": {"number_of_shards": 1,
                                                  "number_of_replicas": 0}})
    cluster.bulk_index(reference, then.items())
    cluster.refresh(reference)

    rebuilt = rebuild(cluster, alias_name, [archive, wal], until=middle,
                      target=f"{alias_name}-rebuilt-middle")
    assert rebuilt["events_after_until"] == 12
    assert rebuilt["docs_written"] == 20
    difference = diff_indices(cluster, reference, rebuilt["target"])
    assert difference.equal, difference.to_json()
    now = rebuild(cluster, alias_name, [archive, wal], target=f"{alias_name}-rebuilt-now")
    assert diff_indices(cluster, index, now["target"]).equal
    assert not diff_indices(cluster, index, rebuilt["target"]).equal
