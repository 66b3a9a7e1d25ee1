"""Canary queries on a real node: hits, latency, and errors recorded instead of raised."""

import pytest

from indexshift.canary import run_canaries
from indexshift.cluster import Cluster
from indexshift.spec import Canary

pytestmark = pytest.mark.cluster


def _index(cluster: Cluster, name: str, docs: int) -> None:
    cluster.create_index(name, {
        "settings": {"number_of_shards": 2, "number_of_replicas": 0},
        "mappings": {"properties": {"kind": {"type": "keyword"}, "size": {"type": "long"}}},
    })
    result = cluster.bulk_index(name, ((str(i), {"kind": "pdf" if i % 4 == 0 else "txt",
                                                 "size": i}) for i in range(docs)))
    assert result.failed == 0
    cluster.refresh(name)


def test_canaries_count_hits_and_measure_latency(cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    _index(cluster, index, 200)
    canaries = [Canary(name="pdfs", query={"term": {"kind": "pdf"}}, min_hits=50),
                Canary(name="big", query={"range": {"size": {"gte": 150}}}, min_hits=51)]
    report = run_canaries(cluster, index, canaries, runs=3)
    pdfs, big = report.results
    assert (pdfs.hits, pdfs.ok) == (50, True)
    assert (big.hits, big.ok) == (50, False)  # one short of min_hits
    assert not report.ok and report.failed() == [big]
    assert len(pdfs.latencies_ms) == 3 and len(pdfs.took_ms) == 3
    assert all(v > 0 for v in pdfs.latencies_ms)
    assert pdfs.p95_ms == max(pdfs.latencies_ms)
    assert report.searches == 6 and report.error_rate == 0 and report.search_failure_rate == 0
    assert report.p95_ms is not None
    assert report.to_json()["results"][0]["hits"] == 50


def test_without_canaries_a_match_all_still_measures(cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    _index(cluster, index, 20)
    report = run_canaries(cluster, index, [], runs=2)
    (only,) = report.results
    assert only.name == "match_all" and only.hits == 20 and only.ok
    assert report.p95_ms is not None


def test_errors_are_recorded_not_raised(cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    _index(cluster, index, 10)
    bad = Canary(name="bad", query={"no_such_query": {}})
    missing = run_canaries(cluster, f"{alias_name}-absent", [Canary(name="all",
                                                                      query={"match_all": {}})])
    report = run_canaries(cluster, index, [bad], runs=2)
    (result,) = report.results
    assert not result.ok and result.hits is None and len(result.errors) == 2
    assert "no_such_query" in result.errors[0]
    assert report.error_rate == 1.0 and report.search_failure_rate == 1.0
    assert report.p95_ms is None
    assert not missing.ok and "not found" in missing.results[0].errors[0]
