"""The monitoring window without a node: thresholds, and the loop on an injected clock."""

from collections.abc import Callable, Iterator

import pytest

from indexshift.monitor import MonitorSample, evaluate_sample, watch, window_so_far
from indexshift.spec import Rollout

ROLLOUT = Rollout(monitor_seconds=10, interval_seconds=2.0, error_rate_max=0.01,
                  latency_p95_ms_max=500.0, search_failures_max=0.001, doc_count_drop_max=5)


def healthy(doc_count: int = 1000, latency: float = 10.0) -> MonitorSample:
    return MonitorSample(searches=4, errors=0, search_failures=0,
                         latencies_ms=(latency,) * 3, doc_count=doc_count)


def test_a_healthy_sample_crosses_nothing() -> None:
    assert evaluate_sample(healthy(), 1000, ROLLOUT) is None
    assert evaluate_sample(healthy(doc_count=995), 1000, ROLLOUT) is None  # drop 5 == max
    assert evaluate_sample(healthy(doc_count=1200), 1000, ROLLOUT) is None  # growth is fine


def test_errors_breach_before_search_failures() -> None:
    sample = MonitorSample(searches=100, errors=2, search_failures=2, latencies_ms=(1.0,),
                           doc_count=1000, messages=("search file-index: cluster error",))
    breach = evaluate_sample(sample, 1000, ROLLOUT)
    assert breach is not None and breach.metric == "error_rate"
    assert breach.value == 0.02 and breach.limit == 0.01
    assert "2 of 100 searches failed" in breach.detail and "cluster error" in breach.detail


def test_partial_answers_breach_search_failures() -> None:
    sample = MonitorSample(searches=100, errors=0, search_failures=1, latencies_ms=(1.0,),
                           doc_count=1000)
    breach = evaluate_sample(sample, 1000, ROLLOUT)
    assert breach is not None and breach.metric == "search_failures"
    assert breach.value == 0.01


def test_slow_searches_breach_latency() -> None:
    breach = evaluate_sample(healthy(latency=800.0), 1000, ROLLOUT)
    assert breach is not None and breach.metric == "latency_p95"
    assert breach.value == 800.0 and breach.limit == 500.0


def test_doc_count_drop_breaches_with_numbers() -> None:
    breach = evaluate_sample(healthy(doc_count=990), 1000, ROLLOUT)
    assert breach is not None and breach.metric == "doc_count"
    assert (breach.value, breach.limit) == (10, 5)
    assert "990 docs, 10 fewer than the 1,000" in breach.detail
    # Without a count (it failed) or a baseline there is nothing to compare.
    no_count = MonitorSample(searches=4, errors=0, search_failures=0, latencies_ms=(),
                             doc_count=None)
    assert evaluate_sample(no_count, 1000, ROLLOUT) is None
    assert evaluate_sample(healthy(doc_count=1), None, ROLLOUT) is None


def test_window_so_far_pools_the_samples() -> None:
    first = MonitorSample(searches=4, errors=1, search_failures=1, latencies_ms=(5.0,),
                          doc_count=1000, at_s=0.0, messages=("x",))
    second = MonitorSample(searches=4, errors=0, search_failures=1, latencies_ms=(7.0,),
                           doc_count=998, at_s=2.0)
    pooled = window_so_far([first, second])
    assert (pooled.searches, pooled.errors, pooled.search_failures) == (8, 1, 2)
    assert pooled.latencies_ms == (5.0, 7.0) and pooled.p95_ms == 7.0
    assert pooled.doc_count == 998 and pooled.at_s == 2.0 and pooled.messages == ("x",)
    assert pooled.error_rate == 1 / 8
    with pytest.raises(ValueError):
        window_so_far([])


class FakeTime:
    """A clock that only moves when the loop sleeps (or a sample takes time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def sampler_of(samples: Iterator[MonitorSample], time: FakeTime,
               takes: float = 0.0) -> Callable[[], MonitorSample]:
    def take() -> MonitorSample:
        time.now += takes
        return next(samples)
    return take


def forever(sample: MonitorSample) -> Iterator[MonitorSample]:
    while True:
        yield sample


def test_a_healthy_window_samples_on_the_interval_to_its_end() -> None:
    time = FakeTime()
    seen: list[MonitorSample] = []
    outcome = watch(None, "a", [], ROLLOUT, clock=time.clock, sleep=time.sleep,
                    on_sample=seen.append, sampler=sampler_of(forever(healthy()), time))
    assert outcome.ok and outcome.status == "ok" and outcome.breach is None
    # At 0, 2, 4, 6, 8 and 10 seconds: the start, every interval, and the end.
    assert [s.at_s for s in outcome.samples] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert time.sleeps == [2.0] * 5
    assert seen == list(outcome.samples)
    assert outcome.baseline_count == 1000
    assert outcome.to_json()["status"] == "ok"


def test_a_slow_sample_skips_slots_instead_of_bursting() -> None:
    time = FakeTime()
    outcome = watch(None, "a", [], ROLLOUT, clock=time.clock, sleep=time.sleep,
                    sampler=sampler_of(forever(healthy()), time, takes=3.0))
    # Each sample takes 3 s on a 2 s grid: taken at 3, 7, 11 (sample times include the 3 s).
    assert [s.at_s for s in outcome.samples] == [3.0, 7.0, 11.0]
    assert time.sleeps == [1.0, 1.0]
    assert outcome.ok


def test_a_drop_in_documents_ends_the_window_with_a_breach() -> None:
    time = FakeTime()
    counts = iter([healthy(1000), healthy(1000), healthy(900), healthy(900)])
    outcome = watch(None, "a", [], ROLLOUT, clock=time.clock, sleep=time.sleep,
                    sampler=sampler_of(counts, time))
    assert outcome.status == "breached" and not outcome.ok
    assert outcome.breach is not None and outcome.breach.metric == "doc_count"
    assert outcome.breach.value == 100
    assert len(outcome.samples) == 3 and outcome.samples[-1].at_s == 4.0


def test_a_sampler_that_raises_counts_as_a_failed_search() -> None:
    time = FakeTime()

    def broken() -> MonitorSample:
        raise RuntimeError("connection reset")

    outcome = watch(None, "a", [], ROLLOUT, clock=time.clock, sleep=time.sleep, sampler=broken)
    assert outcome.status == "breached"
    assert outcome.breach is not None and outcome.breach.metric == "error_rate"
    assert "connection reset" in outcome.breach.detail
    assert outcome.samples[0].errors == 1 and outcome.samples[0].doc_count is None


def test_rates_are_judged_on_the_window_so_far() -> None:
    # One failed search among 200 is 0.5%: under the 1% error limit once pooled, but a
    # 0.1% search-failure limit still catches it.
    rollout = Rollout(monitor_seconds=10, interval_seconds=2.0, error_rate_max=0.01,
                      search_failures_max=0.01)
    good = MonitorSample(searches=100, errors=0, search_failures=0, latencies_ms=(1.0,),
                         doc_count=10)
    bad = MonitorSample(searches=100, errors=1, search_failures=1, latencies_ms=(1.0,),
                        doc_count=10)
    time = FakeTime()
    outcome = watch(None, "a", [], rollout, clock=time.clock, sleep=time.sleep,
                    sampler=sampler_of(iter([good, bad, good, good, good, good]), time))
    assert outcome.ok
    assert evaluate_sample(bad, 10, rollout) is None  # 1% is not above 1%
    assert evaluate_sample(window_so_far([good, bad]), 10, ROLLOUT) is not None


def test_a_zero_window_is_ok_at_once() -> None:
    def never() -> MonitorSample:
        raise AssertionError("must not sample")

    outcome = watch(None, "a", [], Rollout(monitor_seconds=0), sampler=never)
    assert outcome.ok and outcome.samples == ()


def test_should_stop_ends_the_window_early() -> None:
    time = FakeTime()
    calls = iter([False, False, True])
    outcome = watch(None, "a", [], ROLLOUT, clock=time.clock, sleep=time.sleep,
                    should_stop=lambda: next(calls), sampler=sampler_of(forever(healthy()), time))
    assert outcome.status == "stopped" and not outcome.ok
    assert len(outcome.samples) == 2


def test_watch_needs_a_cluster_or_a_sampler() -> None:
    with pytest.raises(ValueError, match="cluster or a sampler"):
        watch(None, "a", [], ROLLOUT)
