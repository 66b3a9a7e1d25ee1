"""The validation suite on a real node: blue and green built by hand, one failure at a time."""

from dataclasses import dataclass
from typing import Any

import pytest

from indexshift.cluster import Cluster
from indexshift.spec import Canary, Validation
from indexshift.validator import canonical, sample_blue, validate

pytestmark = pytest.mark.cluster

BLUE_MAPPINGS: dict[str, Any] = {"properties": {
    "file_key": {"type": "keyword"},
    "file_name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
    "file_type": {"type": "text"},
    "file_size": {"type": "long"},
}}
GREEN_MAPPINGS: dict[str, Any] = {"properties": {
    **BLUE_MAPPINGS["properties"], "file_type": {"type": "keyword"},
}}
REQUIRED = {"file_key": "keyword", "file_name.raw": "keyword", "file_type": "keyword",
            "file_size": "long"}
CANARIES = [Canary(name="pdfs", query={"term": {"file_type": "pdf"}}, min_hits=20),
            Canary(name="big", query={"range": {"file_size": {"gte": 50}}}, min_hits=1)]


def docs(count: int) -> dict[str, dict[str, Any]]:
    return {f"f{i:04d}": {"file_key": f"f{i:04d}", "file_name": f"report {i}.pdf",
                          "file_type": "pdf" if i % 4 == 0 else "txt", "file_size": i}
            for i in range(count)}


def build(cluster: Cluster, index: str, mappings: dict[str, Any],
          sources: dict[str, dict[str, Any]]) -> None:
    cluster.create_index(index, {"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                 "mappings": mappings})
    if sources:
        result = cluster.bulk_index(index, sources.items())
        assert result.failed == 0, result.first_error
    cluster.refresh(index)


@dataclass(frozen=True)
class PlainDiff:
    missing_total: int
    extra_total: int
    changed_total: int


def read_all(cluster: Cluster, index: str) -> dict[str, str]:
    body = cluster.search(index, {"size": 10_000, "query": {"match_all": {}}})
    return {hit["_id"]: canonical(hit["_source"]) for hit in body["hits"]["hits"]}


def plain_diff(cluster: Cluster) -> Any:
    """An exact diff from plain reads, enough for a few hundred documents."""
    def compare(blue: str, green: str) -> PlainDiff:
        a, b = read_all(cluster, blue), read_all(cluster, green)
        return PlainDiff(missing_total=len(a.keys() - b.keys()),
                         extra_total=len(b.keys() - a.keys()),
                         changed_total=sum(1 for i in a.keys() & b.keys() if a[i] != b[i]))
    return compare


def pair(cluster: Cluster, alias_name: str, green_sources: dict[str, dict[str, Any]] | None = None,
         green_mappings: dict[str, Any] | None = None) -> tuple[str, str]:
    blue, green = f"{alias_name}-v1", f"{alias_name}-v2"
    build(cluster, blue, BLUE_MAPPINGS, docs(100))
    build(cluster, green, green_mappings or GREEN_MAPPINGS,
          docs(100) if green_sources is None else green_sources)
    return blue, green


def validation(**overrides: Any) -> Validation:
    base: dict[str, Any] = {"required_fields": REQUIRED, "canaries": CANARIES,
                            "latency_runs": 3, "latency_p95_ms": 10_000.0,
                            "latency_ratio_max": 1_000.0}
    return Validation(**{**base, **overrides})


def test_an_identical_green_passes_every_check(cluster: Cluster, alias_name: str) -> None:
    blue, green = pair(cluster, alias_name)
    report = validate(cluster, blue, green, validation(sample_size=30))
    assert report.passed, report.failures()
    assert [c.name for c in report.checks] == ["count", "content", "schema", "search",
                                              "performance"]
    content = report.check("content")
    assert content.numbers["mode"] == "sample" and content.numbers["sampled"] == 30
    assert report.check("search").numbers["hits"] == {"pdfs": 25, "big": 50}
    performance = report.check("performance").numbers
    assert performance["green_p95_ms"] > 0 and performance["blue_p95_ms"] > 0
    assert report.to_json()["passed"] is True

    exact = validate(cluster, blue, green, validation(), diff=plain_diff(cluster))
    assert exact.passed, exact.failures()
    assert exact.check("content").numbers == {"mode": "exact", "missing": 0, "extra": 0,
                                              "changed": 0, "compare_content": True}


def test_the_sample_is_random_but_the_same_every_time(cluster: Cluster,
                                                      alias_name: str) -> None:
    blue, _ = pair(cluster, alias_name)
    first = sample_blue(cluster, blue, 20)
    assert len(first) == 20
    assert list(first) == list(sample_blue(cluster, blue, 20))
    assert sorted(first) != sorted(docs(100))[:20]  # not simply the first ids


def test_a_count_mismatch_fails_count_and_content(cluster: Cluster, alias_name: str) -> None:
    green_docs = docs(100)
    for i in range(90, 100):
        del green_docs[f"f{i:04d}"]
    green_docs["f0001"] = {**green_docs["f0001"], "file_size": 999_999}
    blue, green = pair(cluster, alias_name, green_sources=green_docs)
    report = validate(cluster, blue, green, validation(), diff=plain_diff(cluster))
    assert not report.passed
    count = report.check("count")
    assert not count.passed
    assert count.detail == ("green has 90 docs, blue 100: off by 10, 10 more than the "
                            "tolerance 0")
    content = report.check("content")
    assert not content.passed
    assert "10 missing in green" in content.detail and "1 changed" in content.detail
    assert {c.name for c in report.failures()} == {"count", "content"}
    # Within a tolerance of 10 the count passes; the exact diff still does not.
    tolerant = validate(cluster, blue, green, validation(count_tolerance=10),
                        diff=plain_diff(cluster))
    assert tolerant.check("count").passed and not tolerant.check("content").passed


def test_sampled_content_finds_changed_docs_unless_a_transform_changed_them(
        cluster: Cluster, alias_name: str) -> None:
    transformed = {i: {**doc, "file_name": doc["file_name"].upper()}
                   for i, doc in docs(100).items()}
    blue, green = pair(cluster, alias_name, green_sources=transformed)
    report = validate(cluster, blue, green, validation(sample_size=40))
    content = report.check("content")
    assert not content.passed
    assert content.numbers["changed"] == 40 and "40 differ" in content.detail
    ids_only = validate(cluster, blue, green, validation(sample_size=40),
                        compare_content=False)
    assert ids_only.passed, ids_only.failures()
    assert "ids (the transform changes sources)" in ids_only.check("content").detail


def test_a_wrong_mapping_type_fails_schema_naming_the_field(cluster: Cluster,
                                                            alias_name: str) -> None:
    blue, green = pair(cluster, alias_name, green_mappings=BLUE_MAPPINGS)
    report = validate(cluster, blue, green, validation(canaries=[]), diff=plain_diff(cluster))
    assert [c.name for c in report.failures()] == ["schema"]
    assert "file_type is text, expected keyword" in report.check("schema").detail


def test_a_canary_that_cannot_find_enough_hits_fails_search(cluster: Cluster,
                                                            alias_name: str) -> None:
    blue, green = pair(cluster, alias_name)
    greedy = [*CANARIES, Canary(name="huge", query={"range": {"file_size": {"gte": 90}}},
                                min_hits=11)]
    report = validate(cluster, blue, green, validation(canaries=greedy),
                      diff=plain_diff(cluster))
    assert [c.name for c in report.failures()] == ["search"]
    assert report.check("search").detail == "huge found 10 hits, needs 11"


def test_a_latency_limit_no_search_can_meet_fails_performance(cluster: Cluster,
                                                               alias_name: str) -> None:
    blue, green = pair(cluster, alias_name)
    # No search over HTTP answers within a microsecond: the limit fails on any machine.
    report = validate(cluster, blue, green, validation(latency_p95_ms=0.001),
                      diff=plain_diff(cluster))
    assert [c.name for c in report.failures()] == ["performance"]
    assert "above the limit 0.001 ms" in report.check("performance").detail


def test_a_missing_green_fails_checks_instead_of_raising(cluster: Cluster,
                                                         alias_name: str) -> None:
    blue = f"{alias_name}-v1"
    build(cluster, blue, BLUE_MAPPINGS, docs(10))
    report = validate(cluster, blue, f"{alias_name}-v2", validation(sample_size=5))
    assert not report.passed
    assert {c.name for c in report.failures()} == {"count", "content", "schema", "search",
                                                   "performance"}
    assert "could not run" in report.check("count").detail
    assert "not found" in report.check("count").detail
