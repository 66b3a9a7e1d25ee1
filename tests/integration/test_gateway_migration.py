"""A migration through the write-ahead gateway on a real node: the log replayed into green, the
writes held (not refused) at the switch, the mirror that makes a rollback lose nothing."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from indexshift import command, gateway_link, migrator, sampledata
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.errors import IndexshiftError
from indexshift.gateway import BackgroundGateway, GatewayConfig
from indexshift.gateway_client import gateway_status, wait_until_drained
from indexshift.journal import Journal, Phase, RunStatus
from tests.conftest import Node
from tests.integration.migration_support import (
    SCENARIOS,
    Source,
    assert_alias_matches_model,
    build_blue,
    write_migration,
)

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch")]

CASE = SCENARIOS / "mapping_change"
JSON = dict[str, Any]


def _source(count: int) -> Source:
    corpus = sampledata.walk_corpus(Path("/usr"), limit=20_000)
    docs = dict(sampledata.generate_docs(corpus, count, 11))
    return Source(sampledata.V1_MAPPINGS, docs, next(iter(docs.values())), "file_size", "int")


def _prepare(cluster: Cluster, alias: str, tmp_path: Path, count: int,
             rollout: str) -> tuple[Path, Source]:
    source = _source(count)
    build_blue(cluster, alias, source)
    spec = write_migration(CASE, alias, tmp_path / "migrations")
    spec.write_text(spec.read_text().replace("rollout: {monitor_seconds: 0}", rollout))
    return spec, source


def _gateway(node: Node, tmp_path: Path) -> BackgroundGateway:
    return BackgroundGateway(GatewayConfig(listen="127.0.0.1:0", upstream=node.url,
                                           wal_dir=tmp_path / "wal"))


@dataclass
class GatewayWriter:
    """About ``rate`` writes a second through the gateway: new documents, overwrites, partial
    updates and deletes, many on a small set of hot ids. Nothing is retried: a write that
    fails is a failure. ``model`` is what the alias must hold afterwards.

    A single-document write takes some 20-30 ms on a small machine, so ``threads`` clients
    share the rate; each owns its ids, so one document's writes stay in one client's order.
    """

    url: str
    alias: str
    source: Source
    rate: float = 100.0
    threads: int = 8
    seed: int = 3
    model: dict[str, JSON] = field(default_factory=dict)
    acknowledged: int = 0
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.model = {k: dict(v) for k, v in self.source.docs.items()}
        seeds = sorted(self.model)[:40 * self.threads]
        for k in range(self.threads):
            worker = threading.Thread(target=self._run, args=(k, seeds[k::self.threads]),
                                      daemon=True)
            self._workers.append(worker)
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)

    def _run(self, k: int, hot: list[str]) -> None:
        rng = random.Random(self.seed * 100 + k)
        n = 0
        with Cluster.connect(ConnectionConfig(url=self.url, timeout_s=60)) as cluster:
            next_at = time.monotonic()
            while not self._stop.is_set():
                n += 1
                self._one(cluster, rng, hot, f"w{k}-{n}")
                next_at += self.threads / self.rate
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _one(self, cluster: Cluster, rng: random.Random, hot: list[str], new_id: str) -> None:
        roll = rng.random()
        existing = [i for i in (rng.choice(hot), rng.choice(hot)) if i in self.model]
        if roll < 0.3 or not existing:
            doc_id = new_id if roll < 0.15 or not existing else rng.choice(hot)
            doc = {**self.source.template, "file_key": doc_id,
                   "file_size": rng.randrange(10**6)}
            self._send(lambda: cluster.put_doc(self.alias, doc_id, doc), doc_id, doc)
            if doc_id not in hot and rng.random() < 0.3:
                hot.append(doc_id)  # new documents get rewritten and deleted too
        elif roll < 0.55:
            doc_id = existing[0]
            doc = {**self.model[doc_id], "file_size": rng.randrange(10**6)}
            self._send(lambda: cluster.put_doc(self.alias, doc_id, doc), doc_id, doc)
        elif roll < 0.85:
            doc_id = existing[0]
            size = rng.randrange(10**6)
            doc = {**self.model[doc_id], "file_size": size}
            self._send(lambda: cluster.request("POST", f"/{self.alias}/_update/{doc_id}",
                                               body={"doc": {"file_size": size}}), doc_id, doc)
        else:
            doc_id = existing[0]
            self._send(lambda: cluster.delete_doc(self.alias, doc_id), doc_id, None)

    def _send(self, call: Any, doc_id: str, doc: JSON | None) -> None:
        started = time.monotonic()
        try:
            call()
        except IndexshiftError as exc:
            with self._lock:
                self.failures.append(f"{doc_id}: {exc}")
            return
        with self._lock:
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self.acknowledged += 1
            if doc is None:
                self.model.pop(doc_id, None)
            else:
                self.model[doc_id] = doc


def _checkpoint(cluster: Cluster, alias: str, phase: Phase) -> JSON:
    run = Journal(cluster).runs(alias, limit=1)[0]
    found = [c for c in run.checkpoints if c.get("phase") == str(phase)]
    assert found, f"no {phase} checkpoint in {[c.get('phase') for c in run.checkpoints]}"
    return dict(found[-1].get("details") or {})


@dataclass
class LoadedRun:
    """A migration run while a :class:`GatewayWriter` writes through the gateway."""

    report: JSON
    writer: GatewayWriter
    acknowledged_at: dict[str, int]  # writes acknowledged when each phase began
    events: list[tuple[str, JSON]]
    elapsed_s: float
    status: JSON  # the gateway's, once its log is drained


def migrate_under_writes(node: Node, gateway_url: str, alias: str, source: Source,
                         migrations: Path, seed: int = 3) -> LoadedRun:
    """Writes start a second before the run and go on a second after it."""
    writer = GatewayWriter(gateway_url, alias, source, seed=seed)
    acknowledged_at: dict[str, int] = {}
    events: list[tuple[str, JSON]] = []

    def on_event(kind: str, data: JSON) -> None:
        events.append((kind, data))
        if kind == "phase":
            acknowledged_at[str(data["phase"])] = writer.acknowledged

    writer.start()
    began = time.monotonic()
    try:
        time.sleep(1)
        report = command.migrate(node.config, migrations, migrator.RunOptions(
            yes=True, take_backup=False, gateway_url=gateway_url, on_event=on_event))
        time.sleep(1)  # writes after the run (the mirror is off again)
    finally:
        writer.stop()
    elapsed = time.monotonic() - began
    wait_until_drained(gateway_url, timeout=60)
    return LoadedRun(report, writer, acknowledged_at, events, elapsed,
                     gateway_status(gateway_url))


def test_writes_through_the_gateway_during_a_full_migration_are_all_kept(
        reindex_node: Node, reindex_cluster: Cluster, reindex_alias: str,
        tmp_path: Path) -> None:
    """THE reliability test: ~100 writes/s (index, partial update, delete, repeated ids)
    through the gateway while a migration copies 20,000 documents, switches and monitors."""
    spec, source = _prepare(reindex_cluster, reindex_alias, tmp_path, 20_000,
                            "rollout: {monitor_seconds: 3, interval_seconds: 1, "
                            "doc_count_drop_max: 100000}")
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    with _gateway(reindex_node, tmp_path) as gw:
        run = migrate_under_writes(reindex_node, gw.url, reindex_alias, source,
                                   tmp_path / "migrations")
    report, writer, acknowledged_at = run.report, run.writer, run.acknowledged_at
    events, elapsed, status = run.events, run.elapsed_s, run.status
    assert report["completed"] is True, report
    assert writer.failures == [], writer.failures[:5]
    # Writes went on through the copy, the switch and the monitoring window.
    assert acknowledged_at[str(Phase.REINDEX_100)] > acknowledged_at[str(Phase.REINDEX_STARTED)]
    assert writer.acknowledged > acknowledged_at[str(Phase.ALIAS_SWITCHED)] > \
        acknowledged_at[str(Phase.REINDEX_100)]
    green = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    assert green != blue
    assert_alias_matches_model(reindex_cluster, reindex_alias, writer.model, spec)

    started = _checkpoint(reindex_cluster, reindex_alias, Phase.REINDEX_STARTED)
    assert isinstance(started["gateway_seq"], int)
    copied = _checkpoint(reindex_cluster, reindex_alias, Phase.REINDEX_100)
    assert copied["gateway_replay"]["ids"] > 0  # writes made during the copy were replayed
    switched = _checkpoint(reindex_cluster, reindex_alias, Phase.ALIAS_SWITCHED)
    cutover_events = [data for kind, data in events if kind == "cutover"]
    assert len(cutover_events) == 1
    assert switched["hold_ms"] > 0 and cutover_events[0]["hold_ms"] == switched["hold_ms"]
    assert "write_block_ms" not in switched
    blocks = reindex_cluster.index_settings(blue)["index"].get("blocks", {})
    assert str(blocks.get("write", "false")) == "false"  # no write block was needed
    assert status["hold"]["active"] is False and status["mirror"]["active"] is False
    print(f"\ncut-over hold: {switched['hold_ms']} ms {switched['hold_steps_ms']} (held "
          f"writes: {switched['held_writes']}), {writer.acknowledged} writes acknowledged "
          f"({writer.acknowledged / elapsed:.0f}/s), "
          f"slowest {writer.slowest_s * 1000:.0f} ms, replayed after the copy: "
          f"{copied['gateway_replay']}")


def test_a_rollback_during_monitoring_loses_no_write_made_after_the_switch(
        reindex_node: Node, reindex_cluster: Cluster, reindex_alias: str,
        tmp_path: Path) -> None:
    spec, source = _prepare(reindex_cluster, reindex_alias, tmp_path, 3000,
                            "rollout: {monitor_seconds: 120, interval_seconds: 1, "
                            "doc_count_drop_max: 100000}")
    blue = next(iter(reindex_cluster.alias_targets(reindex_alias)))
    monitoring = threading.Event()
    stop_run = threading.Event()
    outcome: dict[str, Any] = {}
    with _gateway(reindex_node, tmp_path) as gw:
        writer = GatewayWriter(gw.url, reindex_alias, source, seed=5)

        def on_event(kind: str, data: JSON) -> None:
            if kind == "phase" and data["phase"] == str(Phase.MONITORING):
                outcome["acknowledged_at_switch"] = writer.acknowledged
                monitoring.set()

        def run() -> None:
            try:
                command.migrate(reindex_node.config, tmp_path / "migrations",
                                migrator.RunOptions(yes=True, take_backup=False,
                                                    gateway_url=gw.url, on_event=on_event,
                                                    should_stop=stop_run.is_set))
            except IndexshiftError as exc:
                outcome["stopped"] = str(exc)

        writer.start()
        worker = threading.Thread(target=run, daemon=True)
        try:
            worker.start()
            assert monitoring.wait(180), "the run never reached the monitoring window"
            time.sleep(2)  # writes land on green, mirrored to blue
            mirror = gateway_status(gw.url)["mirror"]
            assert mirror["active"] and mirror["index"] == blue and mirror["failed"] == 0
            stop_run.set()
            worker.join(120)
            assert "monitoring" in outcome.get("stopped", ""), outcome
            # Writes go on during the rollback: the gateway holds them for the switch back.
            report = command.rollback(reindex_node.config, reindex_alias, dry_run=False,
                                      catch_up=False)
            time.sleep(1)  # writes after the rollback go to blue again
        finally:
            writer.stop()
        wait_until_drained(gw.url)
        status = gateway_status(gw.url)
    assert report["status"] == str(RunStatus.ROLLED_BACK)
    assert writer.failures == [], writer.failures[:5]
    assert writer.acknowledged - outcome["acknowledged_at_switch"] > 100
    assert list(reindex_cluster.alias_targets(reindex_alias)) == [blue]
    assert status["mirror"]["active"] is False and status["hold"]["active"] is False
    assert_alias_matches_model(reindex_cluster, reindex_alias, writer.model, spec)
    rolled = Journal(reindex_cluster).runs(reindex_alias, limit=1)[0]
    details = rolled.checkpoints[-1]["details"]
    assert details["hold_ms"] > 0 and details["mirrored"] > 0
    print(f"\nrollback hold: {details['hold_ms']} ms, {details['mirrored']} writes mirrored to "
          f"{blue}, {writer.acknowledged - outcome['acknowledged_at_switch']} writes after "
          "the switch")


@pytest.mark.engines("opensearch", "elasticsearch")
def test_the_gateway_holds_writes_and_serves_its_log(node: Node, cluster: Cluster,
                                                     alias_name: str, tmp_path: Path) -> None:
    """The admin contract alone: a held write waits (not refused) and lands after the release;
    the log endpoint returns every record after a position with its outcome."""
    index = f"{alias_name}-v1"
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": index, "alias": alias_name}}])
    with _gateway(node, tmp_path) as gw:
        start = gateway_link.log_position(gw.url)
        client = Cluster.connect(ConnectionConfig(url=gw.url, timeout_s=60))
        client.put_doc(alias_name, "a", {"n": 1})
        held = gateway_link.hold_writes(gw.url, timeout_s=20)
        assert held["fence_seq"] == start + 1
        answers: list[JSON] = []
        writer = threading.Thread(target=lambda: answers.append(
            client.put_doc(alias_name, "b", {"n": 2})))
        writer.start()
        deadline = time.monotonic() + 10
        while gateway_link.hold_state(gw.url)["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gateway_link.hold_state(gw.url)["waiting"] == 1
        assert cluster.get_doc(index, "b") is None  # logged, not forwarded
        released = gateway_link.release_writes(gw.url, held["hold_id"])
        writer.join(30)
        assert answers and answers[0]["result"] == "created"
        assert released["held_writes"] == 1 and released["expired"] is False
        records = gateway_link.read_log(gw.url, start)
        assert [(r["path"], r["outcome"]) for r in records] == [
            (f"/{alias_name}/_doc/a", "applied"), (f"/{alias_name}/_doc/b", "applied")]
        # A hold ends by itself at its timeout: the held write then goes through as before.
        gateway_link.hold_writes(gw.url, timeout_s=0.5, drain_timeout_s=0.5)
        client.put_doc(alias_name, "c", {"n": 3})
        assert gateway_link.hold_state(gw.url)["active"] is False
        client.close()
    assert cluster.get_doc(index, "c") is not None
