"""Pure parts of the validation suite: each check from the numbers it judges."""

from dataclasses import dataclass

from indexshift.canary import CanaryResult, build_report
from indexshift.spec import Validation
from indexshift.validator import (
    BLUE_P95_FLOOR_MS,
    ValidationCheck,
    ValidationReport,
    canonical,
    count_check,
    diff_check,
    missing_or_wrong_fields,
    performance_check,
    remeasured,
    sample_check,
    schema_check,
    search_check,
)

MAPPING = {
    "dynamic": "strict",
    "properties": {
        "file_key": {"type": "keyword"},
        "file_name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "file_type": {"type": "text"},
        "owner": {"properties": {"name": {"type": "keyword"},
                                 "address": {"properties": {"city": {"type": "text"}}}}},
        "tags": {"type": "nested", "properties": {"label": {"type": "keyword"}}},
    },
}


def test_required_fields_that_hold() -> None:
    required = {"file_key": "keyword", "file_name": "text", "file_name.raw": "keyword",
                "owner": "object", "owner.name": "keyword", "owner.address.city": "text",
                "tags": "nested", "tags.label": "keyword"}
    assert missing_or_wrong_fields(MAPPING, required) == []


def test_wrong_types_and_missing_fields_are_named() -> None:
    problems = missing_or_wrong_fields(MAPPING, {
        "file_type": "keyword", "embedding": "knn_vector", "file_name.lower": "keyword",
        "owner.name.first": "text", "file_key": "keyword",
    })
    assert problems == [
        "file_type is text, expected keyword",
        "embedding is missing (expected knn_vector)",
        "file_name.lower is missing (expected keyword)",
        "owner.name.first is missing (expected text)",
    ]


def test_an_empty_mapping_misses_everything() -> None:
    assert missing_or_wrong_fields({}, {"a": "keyword"}) == ["a is missing (expected keyword)"]
    assert missing_or_wrong_fields({}, {}) == []


def test_schema_check_detail_names_the_field() -> None:
    check = schema_check(MAPPING, {"file_type": "keyword"})
    assert not check.passed
    assert "file_type is text, expected keyword" in check.detail
    assert schema_check(MAPPING, {"file_key": "keyword"}).passed


def test_count_check_within_and_beyond_tolerance() -> None:
    failed = count_check(10_000, 9_990, 0)
    assert not failed.passed
    assert failed.detail == ("green has 9,990 docs, blue 10,000: off by 10, 10 more than the "
                             "tolerance 0")
    assert failed.numbers == {"blue": 10_000, "green": 9_990, "difference": 10, "tolerance": 0}
    assert count_check(10_000, 10_004, 5).passed
    beyond = count_check(10_000, 10_008, 5)
    assert not beyond.passed and "3 more than the tolerance 5" in beyond.detail


@dataclass(frozen=True)
class Summary:
    missing_total: int = 0
    extra_total: int = 0
    changed_total: int = 0


def test_exact_diff_passes_only_when_identical() -> None:
    assert diff_check(Summary()).passed
    missing = diff_check(Summary(missing_total=3, changed_total=2))
    assert not missing.passed
    assert "3 missing in green" in missing.detail and "2 changed" in missing.detail
    assert not diff_check(Summary(extra_total=1)).passed


def test_exact_diff_ignores_changes_when_content_is_not_compared() -> None:
    # A transform changes every document on purpose: only ids must match.
    assert diff_check(Summary(changed_total=500), compare_content=False).passed
    assert not diff_check(Summary(missing_total=1, changed_total=500),
                          compare_content=False).passed


def test_canonical_ignores_key_order() -> None:
    assert canonical({"a": 1, "b": {"y": 2, "x": [1, 2]}}) == canonical(
        {"b": {"x": [1, 2], "y": 2}, "a": 1})
    assert canonical({"a": [1, 2]}) != canonical({"a": [2, 1]})


def test_sample_check_finds_missing_and_changed() -> None:
    blue = {"1": {"a": 1}, "2": {"a": 2}, "3": {"a": 3}}
    green = {"1": {"a": 1}, "2": {"a": 20}, "3": None}
    check = sample_check(blue, green, blue_total=100)
    assert not check.passed
    assert check.numbers["missing"] == 1 and check.numbers["changed"] == 1
    assert "1 missing in green (e.g. 3)" in check.detail
    assert "1 differ (e.g. 2)" in check.detail
    assert "sampled 3 of 100" in check.detail
    ids_only = sample_check(blue, {"1": {"b": 1}, "2": {"b": 2}, "3": {"b": 3}},
                            blue_total=100, compare_content=False)
    assert ids_only.passed
    assert sample_check(blue, dict(blue), blue_total=3).passed


def _canary(name: str, hits: int | None, min_hits: int, *,
            errors: tuple[str, ...] = ()) -> CanaryResult:
    ok = not errors and hits is not None and hits >= min_hits
    return CanaryResult(name=name, hits=hits, min_hits=min_hits, ok=ok, latencies_ms=(1.0,),
                        p95_ms=1.0, errors=errors, shard_failures=0, searches=1 + len(errors))


def test_search_check_says_which_canary_fell_short() -> None:
    report = build_report("green", [_canary("pdfs", 3, 10), _canary("all", 50, 1)])
    check = search_check(report)
    assert not check.passed
    assert check.detail == "pdfs found 3 hits, needs 10"
    broken = search_check(build_report("green", [_canary("x", None, 0, errors=("bad query",))]))
    assert not broken.passed and "bad query" in broken.detail
    assert search_check(build_report("green", [_canary("all", 50, 1)])).passed


def test_performance_check_limits() -> None:
    validation = Validation(latency_p95_ms=100.0, latency_ratio_max=2.0)
    assert performance_check(30.0, 20.0, validation).passed
    slow = performance_check(150.0, 120.0, validation)
    assert not slow.passed and "above the limit 100 ms" in slow.detail
    ratio = performance_check(50.0, 10.0, validation)
    assert not ratio.passed and "5.0x blue's" in ratio.detail
    assert performance_check(30.0, None, validation).passed  # blue unmeasured: limit only
    assert not performance_check(None, 10.0, validation).passed


def test_performance_ratio_floors_a_tiny_blue_p95() -> None:
    validation = Validation(latency_p95_ms=100.0, latency_ratio_max=2.0)
    # 0.2 ms vs 7.5 ms is 37x, but both are noise: the floor makes it 1.5x.
    check = performance_check(7.5, 0.2, validation)
    assert check.passed, check.detail
    assert check.numbers["ratio"] == 7.5 / BLUE_P95_FLOOR_MS
    assert not performance_check(2 * BLUE_P95_FLOOR_MS + 0.5, 0.2, validation).passed


def test_a_latency_spike_passes_only_when_a_second_measurement_is_fine() -> None:
    validation = Validation(latency_p95_ms=100.0, latency_ratio_max=2.0)
    spike = performance_check(10.7, 5.0, validation)
    assert not spike.passed
    cleared = remeasured(spike, performance_check(6.0, 5.0, validation))
    assert cleared.passed and "re-measured after" in cleared.detail
    assert cleared.numbers["first_measurement"]["green_p95_ms"] == 10.7
    slow = remeasured(spike, performance_check(40.0, 5.0, validation))
    assert not slow.passed and "measured twice" in slow.detail
    assert slow.numbers["green_p95_ms"] == 40.0


def test_report_passes_only_when_every_check_does() -> None:
    good = ValidationCheck("count", True, "ok", {})
    bad = ValidationCheck("schema", False, "file_type is text, expected keyword", {})
    report = ValidationReport("blue", "green", (good, bad))
    assert not report.passed
    assert report.failures() == [bad]
    assert report.check("schema") is bad
    data = report.to_json()
    assert data["passed"] is False and [c["name"] for c in data["checks"]] == ["count", "schema"]
    assert ValidationReport("blue", "green", (good,)).passed
