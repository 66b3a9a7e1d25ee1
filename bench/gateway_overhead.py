"""What the write-ahead gateway costs, next to writing to the node directly.

One run, on loopback, against a real node, with the gateway running as its own process
(``python -m indexshift.gateway``) in front of it:

1. single-document writes: ``--writes`` sequential ``PUT /{index}/_doc/{id}`` each way, over one
   keep-alive connection each, interleaved in ``--rounds`` rounds (rotating which side goes
   first) so that noise on a shared machine hits all; p50/p99 of each and the added latency.
   A third side measures the floor: ``bench/durable_relay.py``, a byte relay that fdatasyncs
   each request before forwarding it (no HTTP parsing, no threads);
2. bulk throughput: ``--bulks`` bulk requests of ``--bulk-docs`` documents each way,
   interleaved; documents per second and the ratio gateway / direct;
3. group commit: ``--clients`` concurrent writers through the gateway; records per fsync;
4. replay: ``--replay-docs`` single-document writes queued in read-only mode (202), then the
   mode back to normal and the time until the log is drained; documents per second, and the
   count in the index, which must equal what was queued (exit 1 when it does not).

    .venv/bin/python bench/gateway_overhead.py --url http://127.0.0.1:9200

The targets (added p50 ≤ 1 ms, p99 ≤ 5 ms per write; bulk ≥ 85 % of direct; replay ≥ 20k
docs/s) are printed beside the figures; the run asserts no time, only correctness: the figures
depend on the machine, its disk's fsync latency, and what else runs there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.gateway_client import gateway_status, set_mode

DOC_PAD = "x" * 200  # a small document, ~300 bytes on the wire


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Conn:
    """One keep-alive HTTP/1.1 connection; the same client code for both sides."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                               timeout=120)

    def send(self, method: str, path: str, body: bytes,
             content_type: str = "application/json") -> tuple[int, bytes]:
        self.http.request(method, path, body=body, headers={"Content-Type": content_type})
        response = self.http.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.http.close()


def _doc(i: int) -> bytes:
    return json.dumps({"n": i, "path": f"/usr/lib/{i % 97}/file-{i}.so", "pad": DOC_PAD}).encode()


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) a process has used so far; None off Linux.
    Less noisy than wall time on a shared machine: what the gateway itself costs."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_between(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _start_listening(argv: list[str], what: str,
                     log_path: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a process that prints ``listening on URL`` once it serves; (process, URL)."""
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                   start_new_session=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        process.kill()
        raise SystemExit(f"the {what} did not start ({line!r}); see {log_path}")
    return process, line.split()[-1]


def start_gateway(upstream: str, wal: Path,
                  *extra: str) -> tuple[subprocess.Popen[str], str]:
    return _start_listening(
        [sys.executable, "-m", "indexshift", "gateway", "--listen", "127.0.0.1:0",
         "--upstream", upstream, "--wal", str(wal), *extra], "gateway",
        wal.parent / "gateway.log")


def start_relay(upstream: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    parts = urlsplit(upstream)
    return _start_listening(
        [sys.executable, str(Path(__file__).with_name("durable_relay.py")),
         "--upstream", f"{parts.hostname}:{parts.port or 80}", "--log", str(log)],
        "durable relay", log.with_suffix(".err"))


# -- the measurements ------------------------------------------------------------------------


def single_writes(targets: dict[str, str], index: str, total: int,
                  rounds: int) -> dict[str, list[float]]:
    conns = {side: Conn(url) for side, url in targets.items()}
    latencies: dict[str, list[float]] = {side: [] for side in targets}
    for side, conn in conns.items():  # warm up: connections, JIT-less paths, page cache
        for i in range(50):
            conn.send("PUT", f"/{index}/_doc/warm-{side}-{i}", _doc(i))
    per_round = max(1, total // rounds)
    sides = list(targets)
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            conn = conns[side]
            for i in range(per_round):
                body = _doc(i)
                started = time.perf_counter()
                status, answer = conn.send("PUT", f"/{index}/_doc/{side}-{r}-{i}", body)
                latencies[side].append(time.perf_counter() - started)
                if status not in (200, 201):
                    raise SystemExit(f"{side} write answered {status}: {answer[:200]!r}")
    for conn in conns.values():
        conn.close()
    return latencies


def fsync_latency(directory: Path, count: int) -> list[float]:
    """Seconds of each of ``count`` small appends + fdatasync (what the log does per group
    commit) in a file of ``directory``: the floor under a durable write's added latency."""
    probe = directory / "fsync-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    record = b"x" * 400
    seconds = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, record)
            os.fdatasync(fd)
            seconds.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        probe.unlink()
    return seconds


def bulk_throughput(direct: str, gateway: str, index: str, bulks: int,
                    docs_per_bulk: int) -> dict[str, float]:
    conns = {"direct": Conn(direct), "gateway": Conn(gateway)}
    elapsed = {"direct": 0.0, "gateway": 0.0}
    for b in range(bulks):
        order = ["direct", "gateway"] if b % 2 == 0 else ["gateway", "direct"]
        for side in order:
            body = b"".join(
                b'{"index":{"_id":"%s-b%d-%d"}}\n%s\n' % (side.encode(), b, i, _doc(i))
                for i in range(docs_per_bulk))
            started = time.perf_counter()
            status, answer = conns[side].send("POST", f"/{index}/_bulk", body,
                                              "application/x-ndjson")
            elapsed[side] += time.perf_counter() - started
            if status != 200 or b'"errors":true' in answer[:200]:
                raise SystemExit(f"{side} bulk answered {status}: {answer[:300]!r}")
    for conn in conns.values():
        conn.close()
    return {side: bulks * docs_per_bulk / seconds for side, seconds in elapsed.items()}


def concurrent_writes(gateway: str, index: str, clients: int, per_client: int) -> float:
    """Seconds for ``clients`` concurrent writers to write ``per_client`` documents each."""
    barrier = threading.Barrier(clients + 1)
    failures: list[str] = []

    def writer(c: int) -> None:
        conn = Conn(gateway)
        barrier.wait()
        for i in range(per_client):
            status, answer = conn.send("PUT", f"/{index}/_doc/c{c}-{i}", _doc(i))
            if status not in (200, 201, 202):
                failures.append(f"{status}: {answer[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"concurrent writes failed: {failures[:3]}")
    return time.perf_counter() - started


def replay(gateway: str, index: str, docs: int, clients: int,
           gateway_pid: int) -> tuple[float, float, float | None]:
    """Queue ``docs`` single writes in read-only mode; (queueing docs/s, drain docs/s, the
    gateway's CPU seconds while draining)."""
    set_mode(gateway, "read-only")
    per_client = docs // clients
    started = time.perf_counter()
    failures: list[str] = []

    def writer(c: int) -> None:
        conn = Conn(gateway)
        for i in range(per_client):
            status, answer = conn.send("PUT", f"/{index}/_doc/r{c}-{i}", _doc(i))
            if status != 202:
                failures.append(f"{status}: {answer[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued_s = time.perf_counter() - started
    if failures:
        raise SystemExit(f"queueing failed: {failures[:3]}")
    queued = gateway_status(gateway)["queue"]["writes"]
    _log(f"  queued {queued} writes in {queued_s:.2f} s; switching to normal")
    cpu_before = process_cpu_s(gateway_pid)
    started = time.perf_counter()
    set_mode(gateway, "normal")
    while True:
        status = gateway_status(gateway)
        if status["queue"]["writes"] == 0 and status["wal"]["pending"] == 0:
            break
        time.sleep(0.01)
    drained_s = time.perf_counter() - started
    drain_cpu = _cpu_between(cpu_before, process_cpu_s(gateway_pid))
    return per_client * clients / queued_s, per_client * clients / drained_s, drain_cpu


# -- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("INDEXSHIFT_URL",
                                                        "http://127.0.0.1:9200"))
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bulks", type=int, default=30)
    parser.add_argument("--bulk-docs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--replay-docs", type=int, default=20_000)
    parser.add_argument("--wal", type=Path, default=None,
                        help="log directory (default: a temporary one on the same disk as /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the index and the log")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    wal = args.wal or work / "wal"
    index = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {"url": args.url, "index": index, "wal": str(wal)}
    with Cluster.connect(ConnectionConfig(url=args.url, timeout_s=120)) as cluster:
        results["engine"] = str(cluster.engine)
        for name in (index, f"{index}-replay"):
            cluster.create_index(name, {"settings": {"number_of_shards": 1,
                                                     "number_of_replicas": 0}})
        process, gateway = start_gateway(args.url, wal)
        relay, relay_url = start_relay(args.url, work / "relay.log")
        try:
            _log(f"{cluster.engine} at {args.url}; gateway {gateway}; log {wal}")
            _log(f"single writes: {args.writes} each way in {args.rounds} interleaved rounds")
            before = gateway_status(gateway)["wal"]
            cpu_before = process_cpu_s(process.pid)
            latencies = single_writes(
                {"direct": args.url, "gateway": gateway, "floor": relay_url}, index,
                args.writes, args.rounds)
            relay.terminate()
            single_cpu = _cpu_between(cpu_before, process_cpu_s(process.pid))
            after = gateway_status(gateway)["wal"]
            singles = {side: {"p50_ms": _percentile(v, 0.50) * 1000,
                              "p99_ms": _percentile(v, 0.99) * 1000,
                              "mean_ms": statistics.fmean(v) * 1000, "n": len(v)}
                       for side, v in latencies.items()}
            results["single_writes"] = singles
            # Its warm-up writes and the two status calls are counted in too (a slight excess).
            results["gateway_cpu_us_per_single_write"] = (
                None if single_cpu is None
                else single_cpu / (after["appended"] - before["appended"]) * 1e6)
            probe = fsync_latency(wal.parent, 1000)
            results["raw_fsync"] = {"p50_ms": _percentile(probe, 0.50) * 1000,
                                    "p99_ms": _percentile(probe, 0.99) * 1000, "n": len(probe)}
            # Markers ride on the next write's fsync; a write alone pays for one, maybe two.
            results["fsyncs_per_sequential_write"] = (
                (after["fsyncs"] - before["fsyncs"]) / max(1, after["appended"]
                                                           - before["appended"]))

            _log(f"bulk: {args.bulks} × {args.bulk_docs} docs each way, interleaved")
            results["bulk_docs_per_s"] = bulk_throughput(args.url, gateway, index, args.bulks,
                                                         args.bulk_docs)

            _log(f"group commit: {args.clients} concurrent writers × 100 writes")
            before = gateway_status(gateway)["wal"]
            seconds = concurrent_writes(gateway, index, args.clients, 100)
            after = gateway_status(gateway)["wal"]
            writes = after["appended"] - before["appended"]
            fsyncs = after["fsyncs"] - before["fsyncs"]
            results["group_commit"] = {"clients": args.clients, "writes": writes,
                                       "fsyncs": fsyncs,
                                       "writes_per_fsync": writes / max(1, fsyncs),
                                       "writes_per_s": writes / seconds}

            _log(f"replay: {args.replay_docs} single writes queued in read-only mode")
            queue_rate, drain_rate, drain_cpu = replay(gateway, f"{index}-replay",
                                                       args.replay_docs, 8, process.pid)
            replayed = args.replay_docs - args.replay_docs % 8
            results["replay"] = {"docs": replayed,
                                 "queue_docs_per_s": queue_rate, "drain_docs_per_s": drain_rate,
                                 "gateway_cpu_ms_per_1k_docs": (
                                     None if drain_cpu is None
                                     else drain_cpu / replayed * 1e6)}
            results["wal_after"] = gateway_status(gateway)["wal"]
        finally:
            relay.kill()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        cluster.refresh(f"{index}-replay")
        results["replay"]["docs_in_index"] = cluster.count(f"{index}-replay")
        if not args.keep:
            for name in (index, f"{index}-replay"):
                cluster.delete_index(name)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    single, bulk = results["single_writes"], results["bulk_docs_per_s"]
    added_p50 = single["gateway"]["p50_ms"] - single["direct"]["p50_ms"]
    added_p99 = single["gateway"]["p99_ms"] - single["direct"]["p99_ms"]
    floor_p50 = single["floor"]["p50_ms"] - single["direct"]["p50_ms"]
    floor_p99 = single["floor"]["p99_ms"] - single["direct"]["p99_ms"]
    bulk_ratio = bulk["gateway"] / bulk["direct"]
    group, rep = results["group_commit"], results["replay"]

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(f"\n{results['engine']} at {args.url}, gateway as a separate process, log on "
          f"{wal.parent}")
    print(f"{'':28}{'direct':>12}{'gateway':>12}{'added':>12}")
    print(f"{'single write p50 (ms)':28}{single['direct']['p50_ms']:>12.2f}"
          f"{single['gateway']['p50_ms']:>12.2f}{added_p50:>+12.2f}   "
          f"target ≤ +1 ms: {verdict(added_p50 <= 1)}")
    print(f"{'single write p99 (ms)':28}{single['direct']['p99_ms']:>12.2f}"
          f"{single['gateway']['p99_ms']:>12.2f}{added_p99:>+12.2f}   "
          f"target ≤ +5 ms: {verdict(added_p99 <= 5)}")
    print(f"{'floor: durable relay p50/p99':28}{'':>12}"
          f"{single['floor']['p50_ms']:>12.2f}{floor_p50:>+12.2f}   p99 "
          f"{single['floor']['p99_ms']:.2f} ms ({floor_p99:+.2f}): one hop + one fdatasync, "
          f"nothing else")
    raw_fsync = results["raw_fsync"]
    print(f"{'raw fsync of the log (ms)':28}{'':>12}{'':>12}{raw_fsync['p50_ms']:>+12.2f}"
          f"   p50 (p99 {raw_fsync['p99_ms']:.2f}): a durable write's floor on this disk")
    print(f"{'single write mean (ms)':28}{single['direct']['mean_ms']:>12.2f}"
          f"{single['gateway']['mean_ms']:>12.2f}"
          f"{single['gateway']['mean_ms'] - single['direct']['mean_ms']:>+12.2f}")
    print(f"{'bulk docs/s':28}{bulk['direct']:>12,.0f}{bulk['gateway']:>12,.0f}"
          f"{bulk_ratio:>11.0%}    target ≥ 85 %: {verdict(bulk_ratio >= 0.85)}")
    if results["gateway_cpu_us_per_single_write"] is not None:
        print(f"gateway CPU per single write: "
              f"{results['gateway_cpu_us_per_single_write']:,.0f} µs")
    print(f"fsyncs per sequential write: {results['fsyncs_per_sequential_write']:.2f}")
    print(f"group commit: {group['clients']} concurrent writers, {group['writes']} writes, "
          f"{group['fsyncs']} fsyncs = {group['writes_per_fsync']:.1f} writes per fsync, "
          f"{group['writes_per_s']:,.0f} writes/s")
    print(f"replay: {rep['docs']:,} docs queued at {rep['queue_docs_per_s']:,.0f} docs/s "
          f"(202 after fsync), drained at {rep['drain_docs_per_s']:,.0f} docs/s   "
          f"target ≥ 20k docs/s: {verdict(rep['drain_docs_per_s'] >= 20_000)}")
    if rep["gateway_cpu_ms_per_1k_docs"] is not None:
        print(f"gateway CPU while draining: {rep['gateway_cpu_ms_per_1k_docs']:.0f} ms per "
              f"1,000 replayed docs (the status polls included)")
    print(f"replay drain vs direct bulk (same run): "
          f"{rep['drain_docs_per_s'] / bulk['direct']:.0%}")
    print(f"replayed documents in the index: {rep['docs_in_index']:,} of {rep['docs']:,}")
    print(json.dumps(results, indent=1, default=str), file=sys.stderr)
    if rep["docs_in_index"] != rep["docs"]:
        print("FAILED: the index does not hold every replayed document", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
