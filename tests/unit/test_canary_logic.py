"""Pure parts of the canaries: percentiles, reading a search answer, adding rounds up."""

import pytest

from indexshift.canary import (
    DEFAULT_CANARY,
    CanaryReport,
    CanaryResult,
    build_report,
    combine,
    p95,
    percentile,
    read_search_response,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 95) == 19.0  # rank ceil(0.95 * 20) = 19
    assert percentile(values, 50) == 10.0
    assert percentile(values, 100) == 20.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 95) == 3.0  # unsorted input
    # Always a measured value, never an interpolation.
    assert percentile([1.0, 100.0], 50) == 1.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 95)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)
    assert p95([]) is None


def test_read_search_response_takes_both_total_shapes() -> None:
    modern = {"took": 3, "timed_out": False, "_shards": {"total": 2, "failed": 1},
              "hits": {"total": {"value": 42, "relation": "eq"}, "hits": []}}
    old = {"took": 1, "hits": {"total": 7, "hits": []}}
    first = read_search_response(modern)
    assert (first.hits, first.shards_failed, first.timed_out, first.took_ms) == (42, 1, False, 3)
    second = read_search_response(old)
    assert (second.hits, second.shards_failed, second.timed_out) == (7, 0, False)
    assert read_search_response({"timed_out": True}).timed_out


def test_default_canary_matches_everything_and_needs_no_hits() -> None:
    assert DEFAULT_CANARY.query == {"match_all": {}}
    assert DEFAULT_CANARY.min_hits == 0


def _result(name: str, hits: int | None, latencies: tuple[float, ...], *,
            errors: tuple[str, ...] = (), min_hits: int = 0,
            partial: int = 0) -> CanaryResult:
    ok = not errors and not partial and hits is not None and hits >= min_hits
    return CanaryResult(name=name, hits=hits, min_hits=min_hits, ok=ok, latencies_ms=latencies,
                        p95_ms=p95(latencies), errors=errors, shard_failures=partial,
                        searches=len(latencies) + len(errors), partial_searches=partial)


def test_build_report_rates_count_searches_not_canaries() -> None:
    report = build_report("idx", [
        _result("a", 10, (1.0, 2.0, 3.0)),
        _result("b", 5, (4.0,), errors=("boom",)),
        _result("c", 5, (5.0, 6.0), partial=1),
    ])
    assert report.searches == 7
    assert report.error_rate == pytest.approx(1 / 7)
    # Raised or answered incompletely: never below the error rate.
    assert report.search_failure_rate == pytest.approx(2 / 7)
    assert report.p95_ms == 6.0
    assert not report.ok
    assert [r.name for r in report.failed()] == ["b", "c"]
    assert report.to_json()["results"][1]["errors"] == ["boom"]


def test_build_report_of_clean_canaries_is_ok() -> None:
    report = build_report("idx", [_result("a", 3, (1.0,), min_hits=3)])
    assert report.ok and report.error_rate == 0 and report.search_failure_rate == 0


def test_combine_adds_rounds_up_per_canary() -> None:
    rounds: list[CanaryReport] = [
        build_report("idx", [_result("a", 10, (1.0,), min_hits=5), _result("b", 2, (9.0,))]),
        build_report("idx", [_result("a", 4, (2.0,), min_hits=5), _result("b", 2, (8.0,))]),
        build_report("idx", [_result("a", None, (), errors=("down",), min_hits=5),
                             _result("b", 2, (7.0,))]),
    ]
    merged = combine(rounds)
    a, b = merged.results
    assert (a.name, b.name) == ("a", "b")
    assert a.latencies_ms == (1.0, 2.0) and a.searches == 3
    assert a.hits == 4  # the smallest count any run saw: min_hits must hold on every run
    assert a.errors == ("down",) and not a.ok
    assert b.ok and b.hits == 2 and b.p95_ms == 9.0
    assert merged.searches == 6
    assert merged.error_rate == pytest.approx(1 / 6)
    assert merged.p95_ms == 9.0
    with pytest.raises(ValueError):
        combine([])
