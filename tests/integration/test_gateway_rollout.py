"""Progressive read rollout through the gateway, on a real node: shares, sessions, rollback."""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from indexshift.cli import app
from indexshift.cluster import Cluster
from indexshift.errors import BadInput, ExitCode
from indexshift.gateway import BackgroundGateway, GatewayConfig
from indexshift.gateway_client import gateway_status, rollout_status, start_rollout, stop_rollout
from indexshift.read_rollout import SESSION_HEADER, TARGET_HEADER, Target, choose_target
from tests.conftest import Node

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

BLUE_DOCS = 3
GREEN_DOCS = 5
# Healthy indices on a noisy machine must not roll back on a latency blip: these tests judge
# errors; the latency comparison is covered by the unit tests.
CALM = {"max_p95_ratio": 1000.0}


@dataclass
class Reply:
    status: int
    target: str | None  # the gateway's X-Indexshift-Read-Target
    body: Any


class Http:
    """One keep-alive connection to the gateway."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                                     parts.port or 80, timeout=30)

    def __call__(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> Reply:
        payload = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        self.connection.request(method, path, body=payload, headers=sent)
        response = self.connection.getresponse()
        raw = response.read()
        return Reply(response.status, response.headers.get(TARGET_HEADER),
                     json.loads(raw) if raw else None)

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class BlueGreen:
    alias: str
    blue: str
    green: str


def _blue_green(cluster: Cluster, alias_name: str, *, blue_mapping: dict[str, Any] | None = None,
                green_mapping: dict[str, Any] | None = None) -> BlueGreen:
    """An alias on blue (3 docs) and a green (5 docs): a count says which one answered."""
    indices = BlueGreen(alias_name, f"{alias_name}-blue", f"{alias_name}-green")
    for index, docs, mapping in ((indices.blue, BLUE_DOCS, blue_mapping),
                                 (indices.green, GREEN_DOCS, green_mapping)):
        body: dict[str, Any] = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
        if mapping is not None:
            body["mappings"] = {"properties": mapping}
        cluster.create_index(index, body)
        cluster.bulk_index(index, ((str(i), {"n": str(i)}) for i in range(docs)))
        cluster.refresh(index)
    cluster.update_aliases([{"add": {"index": indices.blue, "alias": indices.alias}}])
    return indices


@pytest.fixture
def gateway(node: Node, tmp_path: Path) -> Iterator[BackgroundGateway]:
    config = GatewayConfig(listen="127.0.0.1:0", upstream=node.url, wal_dir=tmp_path / "wal")
    with BackgroundGateway(config) as running:
        yield running


def _counts(send: Http, alias: str, reads: int, **headers_of: str) -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(reads):
        reply = send("GET", f"/{alias}/_count", headers=headers_of or None)
        assert reply.status == 200, reply.body
        seen[reply.body["count"]] += 1
    return seen


def _metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/_indexshift/gateway/metrics") as response:
        text: str = response.read().decode()
        return text


def test_ten_percent_of_reads_reach_green(cluster: Cluster, alias_name: str,
                                          gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    shown = start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 10, thresholds=CALM)
    assert shown["share"] == 10 and shown["phase"] == "active"
    send = Http(gateway.url)
    anonymous = _counts(send, bg.alias, 600)
    assert set(anonymous) == {BLUE_DOCS, GREEN_DOCS}
    # Binomial(600, 0.1): mean 60, standard deviation 7.3; this is about ±5 of them.
    assert 25 <= anonymous[GREEN_DOCS] <= 100, anonymous

    # With a session, the choice is the session's hash: exactly what the pure routing says,
    # and the same answer every time for one session.
    sessions = [f"user-{i}" for i in range(200)]
    expected_green = {s for s in sessions
                      if choose_target(10, bg.alias, s, 0.0) is Target.GREEN}
    for session in sessions:
        for _ in range(2):
            reply = send("GET", f"/{bg.alias}/_count?preference={session}")
            on_green = session in expected_green
            assert reply.body["count"] == (GREEN_DOCS if on_green else BLUE_DOCS), session
            assert reply.target == (f"green {bg.green}" if on_green else f"blue {bg.blue}")
    assert 5 <= len(expected_green) <= 40
    header = send("GET", f"/{bg.alias}/_count", headers={SESSION_HEADER: sessions[0]})
    assert header.target is not None and header.target.startswith(
        "green" if sessions[0] in expected_green else "blue")

    status = rollout_status(gateway.url, bg.alias)
    green_reads = (anonymous[GREEN_DOCS] + 2 * len(expected_green)
                   + (1 if header.target.startswith("green") else 0))
    assert status["reads"]["green"] == green_reads
    assert status["reads"]["blue"] == 600 + 2 * len(sessions) + 1 - green_reads
    assert status["phase"] == "active" and status["verdict"]["healthy"] is True
    text = _metrics(gateway.url)
    assert _metric(text, f'indexshift_gateway_rollout_share{{alias="{bg.alias}"') == 10
    assert _metric(text, f'indexshift_gateway_rollout_reads_total{{alias="{bg.alias}",'
                         f'outcome="ok",target="green"}}') == green_reads
    assert gateway_status(gateway.url)["rollouts"][0]["alias"] == bg.alias
    send.close()


def test_at_one_hundred_percent_every_read_reaches_green(cluster: Cluster, alias_name: str,
                                                         gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    cluster.put_doc(bg.green, "only-in-green", {"n": "x"}, create_only=True)
    cluster.refresh(bg.green)
    start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 100, thresholds=CALM)
    send = Http(gateway.url)
    assert _counts(send, bg.alias, 50) == {GREEN_DOCS + 1: 50}
    search = send("POST", f"/{bg.alias}/_search", {"query": {"match_all": {}}, "size": 20})
    assert search.target == f"green {bg.green}"
    assert {hit["_index"] for hit in search.body["hits"]["hits"]} == {bg.green}
    got = send("GET", f"/{bg.alias}/_doc/only-in-green")
    assert got.status == 200 and got.body["found"] is True
    # A missing document is an answer, not a failure of green.
    assert send("GET", f"/{bg.alias}/_doc/nowhere").status == 404
    # Index management on the alias is never redirected.
    aliases = send("GET", f"/{bg.alias}/_alias")
    assert aliases.target is None and set(aliases.body) == {bg.blue}
    status = rollout_status(gateway.url, bg.alias)
    assert status["phase"] == "active" and status["reads"]["blue"] == 0

    # Stopped: reads reach the alias (blue) again, untouched.
    last = stop_rollout(gateway.url, bg.alias)
    assert last["stopped"] == bg.alias and last["last"]["share"] == 100
    after = send("GET", f"/{bg.alias}/_count")
    assert after.target is None and after.body["count"] == BLUE_DOCS
    assert gateway_status(gateway.url)["rollouts"] == []
    send.close()


def _read_until_rolled_back(send: Http, gateway: BackgroundGateway, bg: BlueGreen,
                            path: str, body: Any) -> Counter[int]:
    statuses: Counter[int] = Counter()
    for _ in range(2000):
        reply = send("POST", path, body)
        statuses[reply.status] += 1
        if reply.target == f"blue {bg.blue}":
            assert reply.status == 200, reply.body
        if rollout_status(gateway.url, bg.alias)["phase"] == "rolled_back":
            return statuses
    raise AssertionError(f"no rollback after 2000 reads: {statuses}")


def test_a_green_whose_mapping_fails_the_query_rolls_back_to_blue(
        cluster: Cluster, alias_name: str, gateway: BackgroundGateway) -> None:
    # "n" is a keyword in blue and an integer in green: matching it on text fails in green.
    bg = _blue_green(cluster, alias_name, blue_mapping={"n": {"type": "keyword"}},
                     green_mapping={"n": {"type": "integer"}})
    start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 50,
                  thresholds={**CALM, "min_samples": 5, "max_error_rate_delta": 0.1})
    send = Http(gateway.url)
    canary = {"query": {"match": {"n": "not-a-number"}}}
    statuses = _read_until_rolled_back(send, gateway, bg, f"/{bg.alias}/_search", canary)
    assert statuses[400] >= 5  # green's failures tripped it

    status = rollout_status(gateway.url, bg.alias)
    assert status["rolled_back"] is True and status["share"] == 0
    assert status["cause"] == "error_rate" and "green's error rate" in status["reason"]
    assert status["history"][-1]["why"].startswith("rolled back")
    for _ in range(100):  # every read now goes to blue, and succeeds
        reply = send("POST", f"/{bg.alias}/_search", canary)
        assert reply.status == 200 and reply.target == f"blue {bg.blue}", reply.body
    assert _counts(send, bg.alias, 20) == {BLUE_DOCS: 20}
    text = _metrics(gateway.url)
    assert _metric(text, f'indexshift_gateway_rollout_rollbacks_total{{alias="{bg.alias}",'
                         f'cause="error_rate"}}') == 1
    assert _metric(text, f'indexshift_gateway_rollout_rolled_back{{alias="{bg.alias}"}}') == 1
    assert _metric(text, f'indexshift_gateway_rollout_reads_total{{alias="{bg.alias}",'
                         f'outcome="error",target="green"}}') == statuses[400]
    send.close()


def test_a_closed_green_rolls_back_and_reads_keep_succeeding(
        cluster: Cluster, alias_name: str, gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 100,
                  thresholds={**CALM, "min_samples": 5})
    send = Http(gateway.url)
    assert _counts(send, bg.alias, 5) == {GREEN_DOCS: 5}
    cluster.request("POST", f"/{bg.green}/_close")
    statuses = _read_until_rolled_back(send, gateway, bg, f"/{bg.alias}/_count", None)
    assert statuses[400] >= 1
    assert rollout_status(gateway.url, bg.alias)["cause"] == "error_rate"
    assert _counts(send, bg.alias, 50) == {BLUE_DOCS: 50}
    send.close()


def test_the_schedule_steps_up_while_green_is_healthy(
        cluster: Cluster, alias_name: str, gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    shown = start_rollout(gateway.url, bg.alias, bg.blue, bg.green, steps=[10, 50, 100],
                          step_seconds=0.2, thresholds={**CALM, "min_samples": 3})
    assert shown["share"] == 10 and shown["next_step"] == 50
    send = Http(gateway.url)
    for _ in range(3000):
        send("GET", f"/{bg.alias}/_count")
        if rollout_status(gateway.url, bg.alias)["share"] == 100:
            break
    status = rollout_status(gateway.url, bg.alias)
    assert [change["share"] for change in status["history"]] == [10, 50, 100]
    assert all(change["why"].startswith("stepped up") for change in status["history"][1:])
    assert status["phase"] == "active" and status["next_step"] is None
    assert _counts(send, bg.alias, 20) == {GREEN_DOCS: 20}
    text = _metrics(gateway.url)
    assert _metric(text, f'indexshift_gateway_rollout_share_changes_total{{alias="{bg.alias}",'
                         f'by="schedule"}}') == 2
    send.close()


def test_a_rollout_to_a_missing_index_is_refused_and_changes_nothing(
        cluster: Cluster, alias_name: str, gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    with pytest.raises(BadInput, match="no such index"):
        start_rollout(gateway.url, bg.alias, bg.blue, f"{alias_name}-nowhere", 10)
    with pytest.raises(BadInput, match="share"):
        start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 150)
    with pytest.raises(BadInput, match="no read rollout"):
        stop_rollout(gateway.url, bg.alias)
    assert gateway_status(gateway.url)["rollouts"] == []


def test_the_command_line_starts_shows_and_stops_a_rollout(
        cluster: Cluster, alias_name: str, gateway: BackgroundGateway) -> None:
    bg = _blue_green(cluster, alias_name)
    runner = CliRunner()
    started = runner.invoke(app, ["gateway", "rollout", bg.alias, "--blue", bg.blue,
                                  "--green", bg.green, "--share", "100", "--min-samples", "7",
                                  "--gateway", gateway.url])
    assert started.exit_code == 0, started.output
    assert json.loads(started.output)["thresholds"]["min_samples"] == 7
    assert _counts(Http(gateway.url), bg.alias, 3) == {GREEN_DOCS: 3}
    shown = runner.invoke(app, ["gateway", "rollout", bg.alias, "--gateway", gateway.url])
    assert shown.exit_code == 0 and json.loads(shown.output)["share"] == 100
    missing = runner.invoke(app, ["gateway", "rollout", bg.alias, "--blue", bg.blue,
                                  "--share", "5", "--gateway", gateway.url])
    assert missing.exit_code == ExitCode.BAD_INPUT
    stopped = runner.invoke(app, ["gateway", "rollout", bg.alias, "--stop",
                                  "--gateway", gateway.url])
    assert stopped.exit_code == 0 and json.loads(stopped.output)["stopped"] == bg.alias
    assert _counts(Http(gateway.url), bg.alias, 3) == {BLUE_DOCS: 3}


# A query whose cost is in the documents: each one loops "w" times (painless, so OpenSearch).
SLOW_QUERY = {"query": {"script": {"script": {"source": (
    "long s = 0; long n = doc['w'].value; for (long i = 0; i < n; i++) { s += i; } "
    "return s >= 0;")}}}}


def test_a_slower_green_rolls_back_on_latency(reindex_node: Node, reindex_cluster: Cluster,
                                              reindex_alias: str, tmp_path: Path) -> None:
    # Blue loops once per document; green loops 900 000 times on each of 40: the same query
    # costs green hundreds of times more, far beyond any noise of the machine.
    bg = BlueGreen(reindex_alias, f"{reindex_alias}-blue", f"{reindex_alias}-green")
    for index, docs, loops in ((bg.blue, 3, 1), (bg.green, 40, 900_000)):
        reindex_cluster.create_index(index, {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"w": {"type": "long"}}}})
        reindex_cluster.bulk_index(index, ((str(i), {"w": loops}) for i in range(docs)))
        reindex_cluster.refresh(index)
    reindex_cluster.update_aliases([{"add": {"index": bg.blue, "alias": bg.alias}}])
    config = GatewayConfig(listen="127.0.0.1:0", upstream=reindex_node.url,
                           wal_dir=tmp_path / "wal")
    with BackgroundGateway(config) as gateway:
        start_rollout(gateway.url, bg.alias, bg.blue, bg.green, 50,
                      thresholds={"min_samples": 4, "max_p95_ratio": 3.0})
        send = Http(gateway.url)
        statuses = _read_until_rolled_back(send, gateway, bg, f"/{bg.alias}/_search",
                                           SLOW_QUERY)
        assert set(statuses) == {200}  # nothing failed: green was only slow
        status = rollout_status(gateway.url, bg.alias)
        assert status["cause"] == "latency" and "p95" in status["reason"], status
        window = status["window"]
        assert window["green"]["p95_ms"] > 3 * window["blue"]["p95_ms"]
        reply = send("POST", f"/{bg.alias}/_search", SLOW_QUERY)
        assert reply.status == 200 and reply.target == f"blue {bg.blue}"
        assert len(reply.body["hits"]["hits"]) == 3
        send.close()
