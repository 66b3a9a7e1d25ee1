"""The gateway's Prometheus metrics: counters, latency histograms and gauges, in text format."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from indexshift.wal import LogGap as LogGap  # noqa: PLC0414  # re-exported: /log's error

# -- metrics (Prometheus text format) --------------------------------------------------------

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v}"'.replace("\\", "\\\\").replace("\n", "\\n")
               for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            lines += [f"{self.name}{_labels(dict(k))} {_number(v)}"
                      for k, v in sorted(self._values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
                    break
            else:
                series[len(self.buckets)] += 1  # only in +Inf
            series[-1] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(tuple(sorted(labels.items())))
        return int(sum(series[:-1])) if series else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, series in sorted(self._series.items()):
                labels = dict(key)
                cumulative = 0.0
                for bound, count in zip(self.buckets, series, strict=False):
                    cumulative += count
                    lines.append(f"{self.name}_bucket{_labels({**labels, 'le': _number(bound)})}"
                                 f" {_number(cumulative)}")
                cumulative += series[len(self.buckets)]
                lines.append(f"{self.name}_bucket{_labels({**labels, 'le': '+Inf'})} "
                             f"{_number(cumulative)}")
                lines.append(f"{self.name}_sum{_labels(labels)} {series[-1]!r}")
                lines.append(f"{self.name}_count{_labels(labels)} {_number(cumulative)}")
        return lines


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def gauge_lines(name: str, help_text: str,
                samples: Iterable[tuple[Mapping[str, str], float]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)]


class GatewayMetrics:
    def __init__(self) -> None:
        self.requests = Counter("indexshift_gateway_requests_total",
                                "Requests answered, by kind and HTTP status.")
        self.request_seconds = Histogram("indexshift_gateway_request_seconds",
                                         "Time to answer a request, by kind.", LATENCY_BUCKETS)
        self.upstream_seconds = Histogram("indexshift_gateway_upstream_seconds",
                                          "Upstream round trips (to the response headers).",
                                          LATENCY_BUCKETS)
        self.upstream_failures = Counter("indexshift_gateway_upstream_failures_total",
                                         "Upstream calls that failed without an answer.")
        self.unrecorded_writes = Counter(
            "indexshift_gateway_unrecorded_writes_total",
            "Writes passed through without a log record (by-query APIs), by API.")
        self.unlogged_writes = Counter(
            "indexshift_gateway_unlogged_writes_total",
            "Writes forwarded while the log could not be written (--on-wal-failure=forward).")
        self.refused_writes = Counter("indexshift_gateway_refused_writes_total",
                                      "Writes refused, by reason.")
        self.queued_writes = Counter("indexshift_gateway_queued_writes_total",
                                     "Writes answered before upstream applied them, by answer.")
        self.replayed = Counter("indexshift_gateway_replayed_total",
                                "Writes applied by the replay worker, by outcome.")
        self.replay_requests = Counter(
            "indexshift_gateway_replay_requests_total",
            "Upstream requests of the replay worker: one write alone, or a batch as one _bulk.")
        self.fsync_batch = Histogram("indexshift_gateway_wal_fsync_batch_records",
                                     "Records made durable by one fsync (group commit).",
                                     BATCH_BUCKETS)
        self.fsync_seconds = Histogram("indexshift_gateway_wal_fsync_seconds",
                                       "Duration of one fsync of the log.", LATENCY_BUCKETS)

    def on_fsync(self, records: int, seconds: float) -> None:
        if records:
            self.fsync_batch.observe(records)
        self.fsync_seconds.observe(seconds)


