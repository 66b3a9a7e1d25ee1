"""Canary queries: a few searches whose answers say whether an index serves as it should.

Each canary is searched with ``size: 0`` and ``track_total_hits: true``: only the hit count
matters, and counting every hit makes ``min_hits`` exact. A search that raises is recorded as an
error, never raised, so a validation or a monitoring window always gets a full report. Latency
is measured on the client (what the application waits for) beside the server's ``took``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from indexshift.cluster import Cluster
from indexshift.errors import IndexshiftError
from indexshift.spec import Canary

# Without canaries in the spec, one that matches everything still measures latency and errors.
DEFAULT_CANARY = Canary(name="match_all", query={"match_all": {}}, min_hits=0)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q ≤ 100; q = 0 gives the smallest value).

    Nearest-rank always returns one of the measured values, so a p95 is a latency that was
    really seen, never an interpolation between two.
    """
    if not values:
        raise ValueError("the percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p95(values: Sequence[float]) -> float | None:
    """The nearest-rank p95, or None when nothing was measured."""
    return percentile(values, 95) if values else None


@dataclass(frozen=True)
class SearchOutcome:
    """What one search answered: hits, failed shards, and whether it stopped early."""

    hits: int
    shards_failed: int
    timed_out: bool
    took_ms: int


def read_search_response(body: dict[str, Any]) -> SearchOutcome:
    """Hits, shard failures and ``took`` from a search body (both ``total`` shapes)."""
    total = (body.get("hits") or {}).get("total", 0)
    hits = int(total.get("value", 0)) if isinstance(total, dict) else int(total or 0)
    shards = body.get("_shards") or {}
    return SearchOutcome(hits=hits, shards_failed=int(shards.get("failed", 0) or 0),
                         timed_out=bool(body.get("timed_out", False)),
                         took_ms=int(body.get("took", 0) or 0))


@dataclass(frozen=True)
class CanaryResult:
    """One canary over all its runs.

    ``hits`` is the smallest count any successful run saw (None when every run failed), so
    ``min_hits`` must hold on every run. ``shard_failures`` adds up failed shards over the runs;
    ``partial_searches`` counts the runs that answered with failed shards or timed out.
    """

    name: str
    hits: int | None
    min_hits: int
    ok: bool
    latencies_ms: tuple[float, ...]
    p95_ms: float | None
    errors: tuple[str, ...]
    shard_failures: int
    took_ms: tuple[int, ...] = ()
    searches: int = 0
    partial_searches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "ok": self.ok, "hits": self.hits, "min_hits": self.min_hits,
            "searches": self.searches, "errors": list(self.errors),
            "shard_failures": self.shard_failures, "partial_searches": self.partial_searches,
            "p95_ms": _round(self.p95_ms), "latencies_ms": [_round(v) for v in self.latencies_ms],
            "took_ms": list(self.took_ms),
        }


@dataclass(frozen=True)
class CanaryReport:
    """All canaries on one index.

    ``error_rate`` is the share of searches that raised; ``search_failure_rate`` the share that
    did not return a complete answer (raised, failed shards, or timed out), so it is never
    below ``error_rate``.
    """

    index: str
    results: tuple[CanaryResult, ...]
    p95_ms: float | None
    error_rate: float
    search_failure_rate: float
    ok: bool
    searches: int = 0
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)

    def failed(self) -> list[CanaryResult]:
        return [r for r in self.results if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "ok": self.ok, "searches": self.searches,
            "p95_ms": _round(self.p95_ms), "error_rate": self.error_rate,
            "search_failure_rate": self.search_failure_rate,
            "results": [r.to_json() for r in self.results],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _result(name: str, min_hits: int, hits: list[int], latencies: list[float],
            took: list[int], errors: list[str], shard_failures: int,
            partial: int) -> CanaryResult:
    searches = len(hits) + len(errors)
    seen = min(hits) if hits else None
    ok = not errors and partial == 0 and seen is not None and seen >= min_hits
    return CanaryResult(name=name, hits=seen, min_hits=min_hits, ok=ok,
                        latencies_ms=tuple(latencies), p95_ms=p95(latencies),
                        errors=tuple(errors), shard_failures=shard_failures,
                        took_ms=tuple(took), searches=searches, partial_searches=partial)


def build_report(index: str, results: Sequence[CanaryResult]) -> CanaryReport:
    """The overall figures of a set of canary results."""
    searches = sum(r.searches for r in results)
    errored = sum(len(r.errors) for r in results)
    incomplete = errored + sum(r.partial_searches for r in results)
    latencies = tuple(v for r in results for v in r.latencies_ms)
    return CanaryReport(
        index=index, results=tuple(results), p95_ms=p95(latencies),
        error_rate=errored / searches if searches else 0.0,
        search_failure_rate=incomplete / searches if searches else 0.0,
        ok=all(r.ok for r in results), searches=searches, latencies_ms=latencies,
    )


def combine(reports: Sequence[CanaryReport]) -> CanaryReport:
    """One report from several rounds over the same index and canaries (runs added up)."""
    if not reports:
        raise ValueError("nothing to combine")
    order: list[str] = []
    merged: dict[str, list[CanaryResult]] = {}
    for report in reports:
        for result in report.results:
            if result.name not in merged:
                order.append(result.name)
            merged.setdefault(result.name, []).append(result)
    results: list[CanaryResult] = []
    for name in order:
        parts = merged[name]
        results.append(_result(
            name, parts[0].min_hits,
            hits=[p.hits for p in parts if p.hits is not None],
            latencies=[v for p in parts for v in p.latencies_ms],
            took=[t for p in parts for t in p.took_ms],
            errors=[e for p in parts for e in p.errors],
            shard_failures=sum(p.shard_failures for p in parts),
            partial=sum(p.partial_searches for p in parts),
        ))
    return build_report(reports[0].index, results)


def run_canaries(cluster: Cluster, index: str, canaries: Sequence[Canary], *, runs: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> CanaryReport:
    """Search every canary ``runs`` times on ``index``; errors are recorded, not raised."""
    if runs < 1:
        raise ValueError("runs must be 1 or more")
    results: list[CanaryResult] = []
    for canary in canaries or [DEFAULT_CANARY]:
        hits: list[int] = []
        latencies: list[float] = []
        took: list[int] = []
        errors: list[str] = []
        shard_failures = 0
        partial = 0
        body = {"query": canary.query, "size": 0, "track_total_hits": True}
        for _ in range(runs):
            started = clock()
            try:
                # The shard request cache would answer repeated size-0 searches from memory and
                # hide the latency the index really has.
                answer = cluster.search(index, body, request_cache=False)
            except IndexshiftError as exc:
                errors.append(str(exc))
                continue
            latencies.append((clock() - started) * 1000.0)
            outcome = read_search_response(answer)
            hits.append(outcome.hits)
            took.append(outcome.took_ms)
            shard_failures += outcome.shards_failed
            if outcome.shards_failed or outcome.timed_out:
                partial += 1
        results.append(_result(canary.name, canary.min_hits, hits, latencies, took, errors,
                               shard_failures, partial))
    return build_report(index, results)
