"""indexshift's copy and whole migration, side by side with the ways people copy today.

One run, one sandbox, the same source index: a raw server-side ``_reindex`` with the same
slices, indexshift's copy phase and its whole run, ``opensearch-py``'s ``helpers.reindex``,
and ``elasticdump`` (from the npm registry) index to index; then the alias switch and its
rollback timed over many runs. Prints the ratios; asserts nothing (the machine is shared).

Each peer runs twice: as its documentation runs it (its default batch size, into an index
created with the migration's settings: the engine's refresh every second), and tuned the way
indexshift tunes its own copy (a bigger batch, into an index with refresh off and no
replicas). The targets are stated against the first; the second shows what is left when a
user hand-tunes the peer.

    .venv/bin/python bench/migrate_vs_peers.py --url http://127.0.0.1:9200 --docs 1000000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from indexshift import command, copier, cutover, migrator, sampledata
from indexshift.canary import percentile
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig

ALIAS = "bench-files"
SLICES = 2


def _fresh(cluster: Cluster, name: str, *, tuned: bool = True) -> str:
    """An empty target with the migration's settings; ``tuned``: bulk-load settings too."""
    if cluster.index_exists(name):
        cluster.delete_index(name)
    settings: dict[str, Any] = {"number_of_shards": 2, "number_of_replicas": 0}
    if tuned:
        settings["refresh_interval"] = "-1"
    cluster.create_index(name, {"settings": settings, "mappings": sampledata.V1_MAPPINGS})
    return name


def _wait(cluster: Cluster, task_id: str) -> None:
    while True:
        progress = copier.read_progress(cluster, task_id)
        if progress is None or progress.completed:
            if progress is not None and (progress.error or progress.failures):
                raise SystemExit(f"reindex failed: {progress.error or progress.failures[0]}")
            return
        time.sleep(0.2)


def raw_reindex(cluster: Cluster, source: str) -> float:
    target = _fresh(cluster, f"{ALIAS}-raw")
    started = time.perf_counter()
    task = cluster.start_reindex({"source": {"index": source, "size": 1000},
                                  "dest": {"index": target}}, slices=SLICES)
    _wait(cluster, task)
    cluster.refresh(target)
    seconds = time.perf_counter() - started
    assert cluster.count(target) == cluster.count(source)
    cluster.delete_index(target)
    return seconds


def helpers_reindex(config: ConnectionConfig, cluster: Cluster, source: str, *,
                    tuned: bool) -> float:
    from opensearchpy import OpenSearch, helpers  # noqa: PLC0415  # the peer under test

    target = _fresh(cluster, f"{ALIAS}-helpers", tuned=tuned)
    client = OpenSearch(hosts=[config.url], timeout=120)
    started = time.perf_counter()
    if tuned:
        helpers.reindex(client, source, target, chunk_size=1000)
    else:
        helpers.reindex(client, source, target)
    cluster.refresh(target)
    seconds = time.perf_counter() - started
    assert cluster.count(target) == cluster.count(source)
    cluster.delete_index(target)
    return seconds


def _elasticdump_binary(tools: Path) -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    binary = tools / "node_modules" / ".bin" / "elasticdump"
    if not binary.exists():
        subprocess.run([npm, "install", "--silent", "--prefix", str(tools), "elasticdump@6"],
                       check=True, capture_output=True)
    return binary


def elasticdump(config: ConnectionConfig, cluster: Cluster, source: str, binary: Path, *,
                tuned: bool) -> float:
    target = _fresh(cluster, f"{ALIAS}-dump", tuned=tuned)
    started = time.perf_counter()
    subprocess.run([str(binary), f"--input={config.url}/{source}",
                    f"--output={config.url}/{target}", "--type=data", "--quiet",
                    *(["--limit=5000"] if tuned else [])], check=True)
    cluster.refresh(target)
    seconds = time.perf_counter() - started
    assert cluster.count(target) == cluster.count(source)
    cluster.delete_index(target)
    return seconds


def indexshift_run(config: ConnectionConfig, workdir: Path) -> tuple[float, float, float]:
    """(copy phase, whole run, write block ms) of one migration with the same slices."""
    spec = workdir / "migrations" / "0002_bench.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        f"alias: {ALIAS}\n"
        "settings: {number_of_shards: 2}\n"
        f"mappings: {sampledata.V1_MAPPINGS}\n".replace("'", '"')
        + f"copy: {{slices: {SLICES}}}\nrollout: {{monitor_seconds: 0}}\n"
        "validation: {sample_size: 1000}\n")
    marks: dict[str, float] = {}
    block: list[float] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "phase":
            marks.setdefault(str(data["phase"]), time.perf_counter())
        if kind == "cutover":
            block.append(float(data["block_ms"]))

    started = time.perf_counter()
    command.migrate(config, spec.parent, migrator.RunOptions(yes=True, on_event=on_event))
    whole = time.perf_counter() - started
    copy = marks["REINDEX_100%"] - marks["GREEN_CREATED"]
    return copy, whole, block[0]


def switch_timings(cluster: Cluster, runs: int) -> tuple[list[float], list[float]]:
    alias = f"{ALIAS}-switch"
    blue, green = f"{alias}-v1", f"{alias}-v2"
    for name in (blue, green):
        _fresh(cluster, name)
    cluster.update_aliases([{"add": {"index": blue, "alias": alias, "is_write_index": True}}])
    switches, rollbacks = [], []
    for _ in range(runs):
        plan = cutover.plan_switch(alias, blue, green, cluster.alias_targets(alias))
        switches.append(cutover.apply(cluster, plan).took_ms)
        back = cutover.plan_rollback(alias, blue, green, cluster.alias_targets(alias),
                                     blue_exists=True, writes_since_switch=0)
        rollbacks.append(cutover.apply(cluster, back).took_ms)
    for name in (blue, green):
        cluster.delete_index(name)
    return switches, rollbacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--switch-runs", type=int, default=50)
    parser.add_argument("--skip-elasticdump", action="store_true")
    args = parser.parse_args()
    config = ConnectionConfig(url=args.url, timeout_s=120)
    workdir = Path(tempfile.mkdtemp(prefix="indexshift-bench-"))
    with Cluster.connect(config) as cluster:
        for row in cluster.indices(f"{ALIAS}*"):
            cluster.delete_index(str(row["index"]))
        print(f"seeding {args.docs:,} documents ...", flush=True)
        seeded = command.sandbox_seed(config, alias=ALIAS, docs=args.docs, shards=2)
        source = seeded["index"]
        print(f"seeded at {seeded['docs_per_second']:,} docs/s", flush=True)
        raw = raw_reindex(cluster, source)
        print(f"raw _reindex, {SLICES} slices:        {raw:8.1f} s", flush=True)
        copy, whole, block_ms = indexshift_run(config, workdir)
        print(f"indexshift copy phase:           {copy:8.1f} s   {copy / raw:5.2f}x raw")
        print(f"indexshift whole run:            {whole:8.1f} s   {whole / raw:5.2f}x raw "
              f"(write block at the switch {block_ms:.0f} ms)", flush=True)
        for tuned, how in ((False, "as documented"), (True, "hand-tuned")):
            peer = helpers_reindex(config, cluster, source, tuned=tuned)
            print(f"helpers.reindex, {how + ':':14s}{peer:8.1f} s   indexshift copy is "
                  f"{peer / copy:5.2f}x faster", flush=True)
        binary = None if args.skip_elasticdump else _elasticdump_binary(workdir / "tools")
        if binary is None:
            print("elasticdump: skipped (no npm, or --skip-elasticdump)")
        for tuned, how in ((False, "as documented"), (True, "hand-tuned")):
            if binary is not None:
                dump = elasticdump(config, cluster, source, binary, tuned=tuned)
                print(f"elasticdump, {how + ':':18s}{dump:8.1f} s   indexshift copy is "
                      f"{dump / copy:5.2f}x faster", flush=True)
        switches, rollbacks = switch_timings(cluster, args.switch_runs)
        print(f"alias switch p99 over {len(switches)} runs:  {percentile(switches, 99):6.1f} ms;"
              f" rollback p99: {percentile(rollbacks, 99):6.1f} ms")
        for row in cluster.indices(f"{ALIAS}*"):
            cluster.delete_index(str(row["index"]))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
