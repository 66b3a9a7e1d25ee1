"""The monitoring window on a real node: a healthy alias passes, a loss of documents breaches."""

import threading
from typing import Any

import pytest

from indexshift.cluster import Cluster
from indexshift.monitor import MonitorSample, watch
from indexshift.spec import Canary, Rollout

pytestmark = pytest.mark.cluster

CANARIES = [Canary(name="pdfs", query={"term": {"kind": "pdf"}}, min_hits=1),
            Canary(name="all", query={"match_all": {}})]
# Latency is not under test here: a generous limit keeps a busy machine from breaching it.
SLOW_OK = 10_000.0


def aliased_index(cluster: Cluster, alias: str, docs: int) -> str:
    index = f"{alias}-v2"
    cluster.create_index(index, {
        # Only explicit refreshes make changes visible, so a count never sees half a delete.
        "settings": {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "-1"},
        "mappings": {"properties": {"kind": {"type": "keyword"}}},
    })
    result = cluster.bulk_index(index, ((str(i), {"kind": "pdf" if i % 2 else "txt"})
                                        for i in range(docs)))
    assert result.failed == 0
    cluster.refresh(index)
    cluster.update_aliases([{"add": {"index": index, "alias": alias}}])
    return index


def test_a_short_window_over_a_healthy_alias_is_ok(cluster: Cluster, alias_name: str) -> None:
    aliased_index(cluster, alias_name, 500)
    rollout = Rollout(monitor_seconds=2, interval_seconds=0.5, latency_p95_ms_max=SLOW_OK)
    seen: list[MonitorSample] = []
    outcome = watch(cluster, alias_name, CANARIES, rollout, on_sample=seen.append)
    assert outcome.ok, outcome.breach
    assert outcome.baseline_count == 500
    assert len(outcome.samples) >= 2 and seen == list(outcome.samples)
    for sample in outcome.samples:
        assert sample.doc_count == 500 and sample.errors == 0 and sample.search_failures == 0
        assert sample.searches == 3  # two canaries and the count
        assert len(sample.latencies_ms) == 2
    # Samples follow the clock: each later than the one before, within the window's reach.
    times = [s.at_s for s in outcome.samples]
    assert times == sorted(times)
    assert outcome.to_json()["status"] == "ok"


def test_deleting_documents_during_the_window_breaches_doc_count(cluster: Cluster,
                                                                 alias_name: str) -> None:
    index = aliased_index(cluster, alias_name, 1000)
    rollout = Rollout(monitor_seconds=30, interval_seconds=0.5, latency_p95_ms_max=SLOW_OK,
                      doc_count_drop_max=10)
    first_sample = threading.Event()
    deleter_errors: list[BaseException] = []

    def delete_many() -> None:
        try:
            if not first_sample.wait(timeout=30):
                return
            operations: list[dict[str, Any]] = [{"delete": {"_index": index, "_id": str(i)}}
                                                for i in range(300)]
            result = cluster.bulk(operations)
            assert result.failed == 0, result.first_error
            cluster.refresh(index)
        except BaseException as exc:  # surfaced by the test thread below
            deleter_errors.append(exc)

    deleter = threading.Thread(target=delete_many, daemon=True)
    deleter.start()
    outcome = watch(cluster, alias_name, CANARIES, rollout,
                    on_sample=lambda _: first_sample.set())
    deleter.join(timeout=30)
    assert not deleter_errors, deleter_errors
    assert outcome.status == "breached"
    assert outcome.breach is not None and outcome.breach.metric == "doc_count"
    assert outcome.breach.value == 300 and outcome.breach.limit == 10
    assert "700 docs, 300 fewer than the 1,000" in outcome.breach.detail
    assert outcome.baseline_count == 1000
    assert outcome.samples[0].doc_count == 1000 and outcome.samples[-1].doc_count == 700


def test_an_alias_that_fails_to_answer_breaches_without_crashing(cluster: Cluster,
                                                                 alias_name: str) -> None:
    rollout = Rollout(monitor_seconds=5, interval_seconds=0.5, latency_p95_ms_max=SLOW_OK)
    outcome = watch(cluster, f"{alias_name}-absent", CANARIES, rollout)
    assert outcome.status == "breached"
    assert outcome.breach is not None and outcome.breach.metric == "error_rate"
    assert outcome.breach.value == 1.0
    (sample,) = outcome.samples
    assert sample.errors == 3 and sample.doc_count is None
    assert "not found" in outcome.breach.detail
