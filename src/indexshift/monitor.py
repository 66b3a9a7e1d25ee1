"""The monitoring window after the alias switch: sample, compare with thresholds, stop on a breach.

Every ``interval_seconds`` for ``monitor_seconds`` the alias is sampled: each canary searched
once, and the documents counted. The thresholds are judged on the window so far (all searches
since it began), because the runbook's limits are rates — 1% errors, 0.1% search failures — that
one sample of a few searches cannot measure; the document count is judged on the newest sample
against the count at the window's start. The first breach ends the window: the caller rolls
back. A sample never crashes the window: whatever goes wrong while taking it counts as failed
searches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from indexshift.canary import p95, run_canaries
from indexshift.cluster import Cluster
from indexshift.errors import IndexshiftError
from indexshift.spec import Canary, Rollout

Sampler = Callable[[], "MonitorSample"]


@dataclass(frozen=True)
class MonitorSample:
    """One look at the alias. ``searches`` counts every call made (canaries and the count);
    ``search_failures`` those that did not answer completely, errors included."""

    searches: int
    errors: int
    search_failures: int
    latencies_ms: tuple[float, ...]
    doc_count: int | None
    at_s: float = 0.0
    messages: tuple[str, ...] = ()

    @property
    def error_rate(self) -> float:
        return self.errors / self.searches if self.searches else 0.0

    @property
    def search_failure_rate(self) -> float:
        return self.search_failures / self.searches if self.searches else 0.0

    @property
    def p95_ms(self) -> float | None:
        return p95(self.latencies_ms)

    def to_json(self) -> dict[str, Any]:
        p95_ms = self.p95_ms
        return {
            "at_s": round(self.at_s, 3), "searches": self.searches, "errors": self.errors,
            "search_failures": self.search_failures, "error_rate": self.error_rate,
            "search_failure_rate": self.search_failure_rate,
            "p95_ms": None if p95_ms is None else round(p95_ms, 3),
            "doc_count": self.doc_count, "messages": list(self.messages),
        }


@dataclass(frozen=True)
class Breach:
    metric: Literal["error_rate", "search_failures", "latency_p95", "doc_count"]
    value: float
    limit: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "limit": self.limit,
                "detail": self.detail}


@dataclass(frozen=True)
class MonitorOutcome:
    """``ok``: the window ran to its end within every threshold. ``breached``: a threshold was
    crossed (``breach`` says which). ``stopped``: the caller asked to stop before the end."""

    status: Literal["ok", "breached", "stopped"]
    samples: tuple[MonitorSample, ...]
    breach: Breach | None = None
    baseline_count: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "ok": self.ok,
                "breach": self.breach.to_json() if self.breach else None,
                "baseline_count": self.baseline_count,
                "samples": [s.to_json() for s in self.samples]}


def window_so_far(samples: Sequence[MonitorSample]) -> MonitorSample:
    """All samples as one: searches and failures added up, latencies pooled, newest count."""
    if not samples:
        raise ValueError("no samples yet")
    return MonitorSample(
        searches=sum(s.searches for s in samples),
        errors=sum(s.errors for s in samples),
        search_failures=sum(s.search_failures for s in samples),
        latencies_ms=tuple(v for s in samples for v in s.latencies_ms),
        doc_count=samples[-1].doc_count,
        at_s=samples[-1].at_s,
        messages=tuple(m for s in samples for m in s.messages),
    )


def evaluate_sample(sample: MonitorSample, baseline_count: int | None,
                    rollout: Rollout) -> Breach | None:
    """The first threshold ``sample`` crosses, or None.

    Errors are judged before search failures: every error is also a failed search, and the
    narrower name tells the operator more.
    """
    if sample.error_rate > rollout.error_rate_max:
        return Breach("error_rate", sample.error_rate, rollout.error_rate_max,
                      f"{sample.errors} of {sample.searches} searches failed "
                      f"({sample.error_rate:.1%}), above {rollout.error_rate_max:.1%}"
                      + _first_message(sample))
    if sample.search_failure_rate > rollout.search_failures_max:
        return Breach("search_failures", sample.search_failure_rate, rollout.search_failures_max,
                      f"{sample.search_failures} of {sample.searches} searches answered "
                      f"incompletely ({sample.search_failure_rate:.1%}), above "
                      f"{rollout.search_failures_max:.1%}" + _first_message(sample))
    p95_ms = sample.p95_ms
    if p95_ms is not None and p95_ms > rollout.latency_p95_ms_max:
        return Breach("latency_p95", p95_ms, rollout.latency_p95_ms_max,
                      f"p95 latency {p95_ms:.1f} ms over {len(sample.latencies_ms)} searches, "
                      f"above {rollout.latency_p95_ms_max:g} ms")
    if baseline_count is not None and sample.doc_count is not None:
        drop = baseline_count - sample.doc_count
        if drop > rollout.doc_count_drop_max:
            return Breach("doc_count", drop, rollout.doc_count_drop_max,
                          f"the alias holds {sample.doc_count:,} docs, {drop:,} fewer than the "
                          f"{baseline_count:,} at the window's start (at most "
                          f"{rollout.doc_count_drop_max:,} may go)")
    return None


def _first_message(sample: MonitorSample) -> str:
    return f": {sample.messages[0]}" if sample.messages else ""


def sample_alias(cluster: Cluster, alias: str, canaries: Sequence[Canary]) -> MonitorSample:
    """Each canary once on ``alias``, and its document count."""
    report = run_canaries(cluster, alias, canaries)
    errors = sum(len(r.errors) for r in report.results)
    incomplete = errors + sum(r.partial_searches for r in report.results)
    messages = [e for r in report.results for e in r.errors]
    doc_count: int | None = None
    searches = report.searches + 1
    try:
        doc_count = cluster.count(alias)
    except IndexshiftError as exc:
        errors += 1
        incomplete += 1
        messages.append(f"count: {exc}")
    return MonitorSample(searches=searches, errors=errors, search_failures=incomplete,
                         latencies_ms=report.latencies_ms, doc_count=doc_count,
                         messages=tuple(messages))


def _crashed_sample(exc: Exception) -> MonitorSample:
    return MonitorSample(searches=1, errors=1, search_failures=1, latencies_ms=(),
                         doc_count=None, messages=(f"sample failed: {exc}",))


def watch(
    cluster: Cluster | None,
    alias: str,
    canaries: Sequence[Canary],
    rollout: Rollout,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_sample: Callable[[MonitorSample], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sampler: Sampler | None = None,
) -> MonitorOutcome:
    """Watch ``alias`` for ``rollout.monitor_seconds``; return at the first breach.

    Samples are taken at the window's start and then every ``interval_seconds`` up to and
    including its end. The document count of the first sample that has one is the baseline.
    ``sampler`` replaces the cluster reads (then ``cluster`` may be None).
    """
    if rollout.monitor_seconds <= 0:
        return MonitorOutcome("ok", ())
    if sampler is None:
        if cluster is None:
            raise ValueError("watch needs a cluster or a sampler")
        connected = cluster

        def take() -> MonitorSample:
            return sample_alias(connected, alias, canaries)
    else:
        take = sampler

    interval = rollout.interval_seconds
    started = clock()
    samples: list[MonitorSample] = []
    baseline: int | None = None
    slot = 0
    while True:
        if should_stop is not None and should_stop():
            return MonitorOutcome("stopped", tuple(samples), baseline_count=baseline)
        try:
            sample = take()
        except Exception as exc:  # a sample that fails in any way is data, not a crash
            sample = _crashed_sample(exc)
        sample = dataclasses.replace(sample, at_s=clock() - started)
        samples.append(sample)
        if baseline is None:
            baseline = sample.doc_count
        if on_sample is not None:
            on_sample(sample)
        breach = evaluate_sample(window_so_far(samples), baseline, rollout)
        if breach is not None:
            return MonitorOutcome("breached", tuple(samples), breach, baseline)
        elapsed = clock() - started
        # The next slot on the interval grid; a sample slower than the interval skips the slots
        # it overran instead of firing a burst to catch up.
        slot = max(slot + 1, math.ceil(elapsed / interval - 1e-9))
        due = slot * interval
        if due > rollout.monitor_seconds + 1e-9:
            return MonitorOutcome("ok", tuple(samples), baseline_count=baseline)
        if due > elapsed:
            sleep(due - elapsed)
