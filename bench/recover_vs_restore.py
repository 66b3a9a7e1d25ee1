"""Selective recovery of a few lost documents, next to a full snapshot restore of the index.

One run, one sandbox: seeds an alias with N documents, snapshots its index, deletes 0.05 % of
the documents at random (a reindex that silently dropped some), then times

1. ``recover`` (assess: restore the snapshot aside and diff; copy exactly the missing ids
   back; assess again), which must end at integrity level 1 with 0 missing, and
2. a plain full restore of the same index from the same snapshot under a new name, until
   every primary is up and the count is checked;

and prints both and their ratio. Asserts nothing about time (the machine is shared); exits 1
when the recovery did not bring every document back.

    .venv/bin/python bench/recover_vs_restore.py --url http://127.0.0.1:9200 --docs 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from indexshift import command, recover, snapshots
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.diff import iter_ids

ALIAS = "bench-recover"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--lost", type=float, default=0.05, help="percent of docs deleted")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = ConnectionConfig(url=args.url, timeout_s=300)
    with Cluster.connect(config) as cluster:
        for row in cluster.indices(f"{ALIAS}*"):
            cluster.delete_index(str(row["index"]))
        _log(f"seeding {args.docs:,} documents ...")
        index = str(command.sandbox_seed(config, alias=ALIAS, docs=args.docs,
                                         seed=args.seed)["index"])
        repo = snapshots.ensure_repository(cluster)
        snapshot = snapshots.take_snapshot(cluster, repo, [index], prefix=ALIAS)
        restored = f"{ALIAS}-full-restore"
        try:
            ids = list(iter_ids(cluster, index))
            lost = random.Random(args.seed).sample(ids, round(len(ids) * args.lost / 100))
            result = cluster.bulk([{"delete": {"_index": index, "_id": i}} for i in lost])
            assert not result.failed, result.first_error
            cluster.refresh(index)
            _log(f"snapshot {snapshot.name}; deleted {len(lost):,} documents at random")

            started = time.perf_counter()
            report = recover.recover(cluster, ALIAS)
            recover_s = time.perf_counter() - started
            after = report["after"] or {}
            _log(f"recover: {report['plan']['method']} in {recover_s:.1f} s")

            started = time.perf_counter()
            snapshots.restore_as(cluster, repo, snapshot, index, restored)
            cluster.health(restored, wait_for_status="green", timeout="600s")
            restored_docs = cluster.count(restored)
            restore_s = time.perf_counter() - started
        finally:
            snapshots.delete_snapshot(cluster, snapshot)
            for row in cluster.indices(f"{ALIAS}*"):
                cluster.delete_index(str(row["index"]))
    steps = {s["kind"]: round(s["ms"] / 1000, 2) for s in (report["result"] or {}).get(
        "steps", [])}
    figures = {
        "docs": args.docs, "deleted": len(lost), "method": report["plan"]["method"],
        "recover_s": round(recover_s, 2), "recover_steps_s": steps,
        "after": {"integrity_level": after.get("integrity_level"),
                  "missing": (after.get("counts") or {}).get("missing")},
        "full_restore_s": round(restore_s, 2), "full_restore_docs": restored_docs,
        "recover_vs_restore": round(recover_s / restore_s, 2),
    }
    print(f"{args.docs:,} docs, {len(lost):,} deleted at random ({args.lost} %)")
    print(f"recover ({figures['method']}), assess → copy → assess: {recover_s:8.1f} s "
          f"→ level {figures['after']['integrity_level']}, "
          f"{figures['after']['missing']} missing")
    print(f"full snapshot restore of the same index:           {restore_s:8.1f} s "
          f"({restored_docs:,} docs)")
    print(f"recover / full restore: {recover_s / restore_s:.2f}")
    if args.json:
        print(json.dumps(figures, indent=2))
    if not report.get("recovered"):
        print("not recovered; the assessment before was:")
        for step in report["before"]["decision_path"]:
            print(f"  {step['question']} → {step['answer']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
