"""A million documents, 0.05 % of them deleted at random after the backup: `recover` finds
exactly those and brings every one back (timing next to a full restore: bench/)."""

from __future__ import annotations

import random

import pytest

from indexshift import command, recover, snapshots
from indexshift.cluster import Cluster
from indexshift.diff import iter_ids
from tests.conftest import Node

# One engine is enough for the scale test: the same code runs everywhere at small scale.
pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch")]

DOCS = 1_000_000
LOST = DOCS * 5 // 10_000  # 0.05 %


def test_a_million_docs_with_005_percent_lost_come_back_exactly(node: Node, cluster: Cluster,
                                                                 alias_name: str) -> None:
    index = str(command.sandbox_seed(node.config, alias=alias_name, docs=DOCS)["index"])
    repo = snapshots.ensure_repository(cluster, snapshots.DEFAULT_REPOSITORY if
                                       snapshots.DEFAULT_REPOSITORY in
                                       cluster.snapshot_repositories() else None)
    backup = snapshots.take_snapshot(cluster, repo, [index], prefix=alias_name)
    try:
        lost = random.Random(5).sample(list(iter_ids(cluster, index)), LOST)
        deleted = cluster.bulk([{"delete": {"_index": index, "_id": i}} for i in lost])
        assert not deleted.failed, deleted.first_error
        cluster.refresh(index)
        assert cluster.count(index) == DOCS - LOST

        report = recover.recover(cluster, alias_name)

        assert report["before"]["counts"]["missing"] == LOST
        assert report["plan"]["method"] == "SELECTIVE_REINDEX"
        assert report["result"]["copied"] == LOST
        assert report["after"]["integrity_level"] == 1
        assert report["after"]["counts"]["missing"] == 0
        assert report["recovered"] is True
        assert cluster.count(index) == DOCS
        found = cluster.mget(index, lost[:200], source=False)
        assert all(doc.get("found") for doc in found)
    finally:
        snapshots.delete_snapshot(cluster, backup)
