"""The read rollout's pure logic: routing, rewriting, judging green, rolling back, stepping up."""

from __future__ import annotations

import random

import pytest

from indexshift.errors import BadInput
from indexshift.read_rollout import (
    ROUTING_BUCKETS,
    Cause,
    Phase,
    ReadSample,
    RolloutSpec,
    Target,
    Thresholds,
    WindowStats,
    begin,
    bucket_of,
    choose_target,
    continues,
    evaluate,
    is_error,
    judge,
    percentile,
    read_endpoint,
    rewrite_target,
    routing_key,
    spec_from_json,
    state_to_json,
    window_stats,
)

THRESHOLDS = Thresholds(max_error_rate_delta=0.05, max_p95_ratio=2.0, min_samples=10,
                        window_s=30.0, p95_floor_s=0.005)


def _spec(share: float = 10.0, **overrides: object) -> RolloutSpec:
    fields: dict[str, object] = {"alias": "books", "blue": "books-v1", "green": "books-v2",
                                 "share": share, "thresholds": THRESHOLDS}
    fields.update(overrides)
    return RolloutSpec(**fields)  # type: ignore[arg-type]


def _samples(target: Target, count: int, *, at: float = 100.0, seconds: float = 0.01,
             errors: int = 0) -> list[ReadSample]:
    return [ReadSample(at, target, seconds, i < errors) for i in range(count)]


# -- the request -------------------------------------------------------------------------------


def test_spec_from_json_reads_every_field_and_defaults_share_to_the_first_step() -> None:
    spec = spec_from_json({"alias": "books", "blue": "books-v1", "green": "books-v2",
                           "steps": [1, 10, 100], "step_seconds": 5,
                           "thresholds": {"min_samples": 20, "max_p95_ratio": 3}})
    assert (spec.share, spec.steps, spec.step_seconds) == (1.0, (1.0, 10.0, 100.0), 5.0)
    assert spec.thresholds.min_samples == 20 and spec.thresholds.max_p95_ratio == 3.0
    assert spec.thresholds.window_s == Thresholds().window_s
    assert spec_from_json({"alias": "a", "blue": "b", "green": "g", "share": "2.5",
                           "steps": "1,10"}).steps == (1.0, 10.0)


@pytest.mark.parametrize("body", [
    None, [], {"blue": "b", "green": "g", "share": 1},
    {"alias": "a", "blue": "b", "green": "g"},  # no share, no steps
    {"alias": "a", "blue": "a", "green": "g", "share": 1},  # blue is the alias
    {"alias": "a", "blue": "b", "green": "g", "share": 101},
    {"alias": "a", "blue": "b", "green": "g", "share": True},
    {"alias": "a", "blue": "b", "green": "g", "share": "lots"},
    {"alias": "a", "blue": "b", "green": "g", "steps": [10, 5]},
    {"alias": "a", "blue": "b", "green": "g", "steps": [0, 5]},
    {"alias": "a", "blue": "b", "green": "g", "share": 1, "thresholds": {"max_p95": 2}},
    {"alias": "a", "blue": "b", "green": "g", "share": 1, "thresholds": {"min_samples": 2.5}},
    {"alias": "a", "blue": "b", "green": "g", "share": 1,
     "thresholds": {"max_error_rate_delta": 2}},
    {"alias": "a", "blue": "_b", "green": "g", "share": 1},
    {"alias": "a,b", "blue": "b", "green": "g", "share": 1},
    {"alias": "a", "blue": "b", "green": "g", "share": 1, "step_seconds": 0},
])
def test_a_bad_rollout_request_is_refused(body: object) -> None:
    with pytest.raises(BadInput):
        spec_from_json(body)


# -- routing -----------------------------------------------------------------------------------


def test_the_ends_of_the_share_route_everything_one_way() -> None:
    assert choose_target(0, "books", "s", 0.0) is Target.BLUE
    assert choose_target(100, "books", "s", 0.999) is Target.GREEN
    assert choose_target(0.0, "books", None, 0.0) is Target.BLUE


def test_anonymous_reads_follow_the_draw_at_the_share() -> None:
    assert choose_target(10, "books", None, 0.0999) is Target.GREEN
    assert choose_target(10, "books", None, 0.1) is Target.BLUE
    draws = random.Random(7)
    green = sum(choose_target(10, "books", None, draws.random()) is Target.GREEN
                for _ in range(20_000))
    assert 1_700 <= green <= 2_300


def test_a_session_stays_on_one_side_and_stays_on_green_as_the_share_grows() -> None:
    sessions = [f"session-{i}" for i in range(5_000)]
    at = {share: {s for s in sessions if choose_target(share, "books", s, 0.99)
                  is Target.GREEN} for share in (1, 10, 50)}
    assert at[1] <= at[10] <= at[50]
    assert 25 <= len(at[1]) <= 80 and 400 <= len(at[10]) <= 600
    # The draw does not matter when there is a key.
    assert all(choose_target(10, "books", s, 0.0) is Target.GREEN for s in at[10])
    assert 0 <= bucket_of("books", "x") < ROUTING_BUCKETS
    assert bucket_of("books", "x") == bucket_of("books", "x")


def test_the_routing_key_is_the_session_header_else_a_plain_preference() -> None:
    assert routing_key("preference=user-7&size=3", None) == "user-7"
    assert routing_key("preference=user-7", "session-1") == "session-1"
    assert routing_key("preference=_local", None) is None
    assert routing_key("size=3", None) is None
    assert routing_key("", None) is None


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/books/_search", (["books"], "_search")),
    ("POST", "/books/_search", (["books"], "_search")),
    ("POST", "/books/_search/template", (["books"], "_search")),
    ("GET", "/books/_count", (["books"], "_count")),
    ("POST", "/books/_msearch", (["books"], "_msearch")),
    ("GET", "/books/_doc/1", (["books"], "_doc")),
    ("HEAD", "/books/_doc/1", (["books"], "_doc")),
    ("GET", "/books,other/_search", (["books", "other"], "_search")),
    ("GET", "/books%2Cother/_search", (["books", "other"], "_search")),
    # Not data reads: index management, writes, cluster-level APIs, the bare index.
    ("DELETE", "/books/_doc/1", None),
    ("PUT", "/books/_doc/1", None),
    ("POST", "/books/_update_by_query", None),
    ("DELETE", "/books", None),
    ("GET", "/books", None),
    ("PUT", "/books/_mapping", None),
    ("GET", "/books/_mapping", None),
    ("POST", "/books/_refresh", None),
    ("GET", "/_search", None),
    ("POST", "/_msearch", None),
    ("DELETE", "/books/_search/point_in_time", None),
])
def test_only_data_reads_are_rolled_out(method: str, path: str,
                                        expected: tuple[list[str], str] | None) -> None:
    assert read_endpoint(method, path) == expected


def test_rewriting_replaces_only_the_alias_in_the_target() -> None:
    assert rewrite_target("/books/_search", "books", "books-v2") == "/books-v2/_search"
    assert rewrite_target("/books/_doc/a%2Fb", "books", "books-v2") == "/books-v2/_doc/a%2Fb"
    assert rewrite_target("/other,books/_count", "books", "b v2") == "/other,b%20v2/_count"
    assert rewrite_target("/books/_search/", "books", "x") == "/x/_search"


def test_what_counts_as_an_error() -> None:
    assert not is_error(200, "_search")
    assert is_error(400, "_search")  # a query green's mapping cannot run; a closed index
    assert is_error(404, "_search")  # no such index
    assert is_error(503, "_count")
    assert not is_error(404, "_doc")  # no such document: an answer
    assert is_error(500, "_doc")


# -- judging green -----------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.95) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert percentile([5.0, 1.0, 2.0, 4.0, 3.0], 0.5) == 3.0


def test_window_stats_count_only_the_target_in_the_window_and_time_only_successes() -> None:
    samples = [ReadSample(10, Target.GREEN, 0.5, False), ReadSample(20, Target.GREEN, 0.01, True),
               ReadSample(20, Target.GREEN, 0.02, False), ReadSample(20, Target.BLUE, 9.0, False)]
    stats = window_stats(samples, Target.GREEN, since=15)
    assert (stats.reads, stats.errors, stats.p95_s) == (2, 1, 0.02)
    assert stats.error_rate == 0.5
    assert window_stats([], Target.BLUE, 0) == WindowStats(0, 0, None)


def test_green_is_not_judged_before_enough_samples() -> None:
    verdict = judge(WindowStats(100, 0, 0.01), WindowStats(9, 9, None), THRESHOLDS, None)
    assert verdict.healthy is None and "9 of 10" in verdict.reason


def test_an_error_rate_above_blues_by_more_than_the_delta_fails() -> None:
    blue = WindowStats(100, 2, 0.01)
    assert judge(blue, WindowStats(20, 1, 0.01), THRESHOLDS, None).healthy is True  # 5 % vs 2 %
    failing = judge(blue, WindowStats(20, 2, 0.01), THRESHOLDS, None)  # 10 % vs 2 %
    assert failing.healthy is False and failing.cause is Cause.ERROR_RATE
    assert "10.0%" in failing.reason and "2.0%" in failing.reason


def test_without_enough_blue_reads_green_errors_are_judged_against_zero() -> None:
    verdict = judge(WindowStats(3, 3, None), WindowStats(20, 2, 0.01), THRESHOLDS, None)
    assert verdict.healthy is False and verdict.cause is Cause.ERROR_RATE


def test_a_slower_green_fails_on_the_p95_ratio_with_blue_floored() -> None:
    blue = WindowStats(100, 0, 0.020)
    assert judge(blue, WindowStats(20, 0, 0.039), THRESHOLDS, None).healthy is True
    slow = judge(blue, WindowStats(20, 0, 0.041), THRESHOLDS, None)
    assert slow.healthy is False and slow.cause is Cause.LATENCY
    # 1 ms against 4 ms is noise: blue's p95 is floored at 5 ms.
    assert judge(WindowStats(100, 0, 0.001), WindowStats(20, 0, 0.004), THRESHOLDS,
                 None).healthy is True
    # At 100 % blue has no reads: the last baseline is used, or no latency verdict at all.
    assert judge(WindowStats(0, 0, None), WindowStats(20, 0, 0.05), THRESHOLDS,
                 0.01).healthy is False
    unknown = judge(WindowStats(0, 0, None), WindowStats(20, 0, 0.05), THRESHOLDS, None)
    assert unknown.healthy is True and "no blue latency" in unknown.reason


# -- the rollout over time ---------------------------------------------------------------------


def test_a_failing_green_rolls_everything_back_to_blue_with_the_reason() -> None:
    state = begin(_spec(), now=100.0)
    samples = _samples(Target.BLUE, 90, at=101) + _samples(Target.GREEN, 10, at=101, errors=4)
    after = evaluate(state, samples, now=102.0)
    assert after.phase is Phase.ROLLED_BACK and after.share == 0.0
    assert after.cause is Cause.ERROR_RATE and after.reason and "40.0%" in after.reason
    assert after.history[-1].share == 0.0 and after.history[-1].why.startswith("rolled back")
    # Once rolled back it stays there, whatever comes next.
    assert evaluate(after, _samples(Target.GREEN, 50, at=103), now=104.0) is after
    shown = state_to_json(after, samples, now=102.0)
    assert shown["rolled_back"] is True and shown["cause"] == "error_rate"
    assert shown["window"]["green"]["errors"] == 4 and shown["next_step"] is None


def test_samples_outside_the_window_do_not_count() -> None:
    state = begin(_spec(), now=0.0)
    old_failures = _samples(Target.GREEN, 10, at=1, errors=10)
    assert evaluate(state, old_failures, now=40.0).phase is Phase.ACTIVE
    assert evaluate(state, old_failures, now=20.0).phase is Phase.ROLLED_BACK


def test_the_schedule_steps_up_only_after_a_healthy_step_with_enough_green_reads() -> None:
    spec = _spec(share=1, steps=(1.0, 10.0, 100.0), step_seconds=5.0)
    state = begin(spec, now=0.0)
    healthy = _samples(Target.BLUE, 50, at=2) + _samples(Target.GREEN, 10, at=2)
    assert evaluate(state, healthy, now=4.0).share == 1.0  # not yet 5 s
    assert evaluate(state, _samples(Target.GREEN, 9, at=2), now=6.0).share == 1.0  # too few
    stepped = evaluate(state, healthy, now=6.0)
    assert stepped.share == 10.0 and stepped.step_started_at == 6.0
    assert stepped.history[-1].why.startswith("stepped up")
    # The reads of the previous step do not carry the next one.
    assert evaluate(stepped, healthy, now=12.0).share == 10.0
    again = evaluate(stepped, healthy + _samples(Target.GREEN, 10, at=7), now=12.0)
    assert again.share == 100.0 and again.next_step() is None
    assert evaluate(again, healthy + _samples(Target.GREEN, 10, at=13), now=20.0).share == 100


def test_a_schedule_does_not_step_while_green_is_unjudged() -> None:
    spec = _spec(share=10, steps=(10.0, 100.0), step_seconds=1.0)
    state = begin(spec, now=0.0)
    assert evaluate(state, [], now=100.0).share == 10.0


def test_a_new_share_continues_the_same_rollout_and_other_indices_start_afresh() -> None:
    first = begin(_spec(share=1), now=0.0)
    first = evaluate(first, _samples(Target.BLUE, 20, at=1, seconds=0.02), now=2.0)
    assert first.blue_p95_baseline == 0.02
    more = begin(_spec(share=10), now=5.0, previous=first)
    assert continues(first, more) and more.share == 10.0 and more.blue_p95_baseline == 0.02
    assert [c.share for c in more.history] == [1.0, 10.0]
    other = begin(_spec(share=10, green="books-v3"), now=6.0, previous=more)
    assert not continues(more, other) and len(other.history) == 1
    rolled = evaluate(more, _samples(Target.GREEN, 10, at=6, errors=10), now=7.0)
    restarted = begin(_spec(share=1), now=8.0, previous=rolled)
    assert restarted.phase is Phase.ACTIVE and not continues(rolled, restarted)
