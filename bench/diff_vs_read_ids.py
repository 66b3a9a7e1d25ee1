"""How long an exact diff of two indices takes, next to one plain read of one index's ids.

One run, side by side, on a real cluster:

1. seeds index A with N file documents (``indexshift.command.sandbox_seed``);
2. copies it to B (server-side ``_reindex`` where the cluster has it, else a read-and-bulk
   copy), then in B deletes a few documents, adds a few, changes a few, and rewrites a few
   with their keys in another order (which is not a change);
3. times (1) the fastest plain read of all ids of A (several ways; the fastest counts),
   (2) the full diff A vs B, (3) the ids-only diff, each the best of ``--repeat`` runs; where
   the cluster runs painless also, for comparison, the full diff that reads every record
   (no bucket sums) and the one that hashes sources here;
4. prints the times, the ratios diff / read-ids, and the exact counts found, which must equal
   what it changed (exit 1 when they do not); then drops its indices unless ``--keep``.

    .venv/bin/python bench/diff_vs_read_ids.py --url http://127.0.0.1:9200 --docs 1000000

It asserts no absolute time: the figures depend on the machine and on what else runs there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from indexshift import command, diff
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.diff import DiffResult, diff_indices, painless_everywhere

PAGE = 10_000


@dataclass
class Changes:
    deleted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)  # same source, other key order


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- set-up ----------------------------------------------------------------------------------


def copy_index(cluster: Cluster, source: str, dest: str) -> str:
    """B as a copy of A: same mappings and shard count, every document."""
    settings = cluster.settings(source)[source]["settings"]["index"]
    mappings = cluster.mapping(source)[source]["mappings"]
    cluster.create_index(dest, {"settings": {"number_of_shards": int(settings["number_of_shards"]),
                                             "number_of_replicas": 0},
                                "mappings": mappings})
    if cluster.engine.engine == "opensearch":
        task_id = cluster.start_reindex({"source": {"index": source, "size": 5_000},
                                         "dest": {"index": dest}}, refresh=True)
        while True:
            task = cluster.task(task_id)
            if task.get("completed"):
                response = task.get("response") or {}
                if task.get("error") or response.get("failures"):
                    raise SystemExit(f"reindex failed: {task.get('error') or response}")
                break
            time.sleep(0.5)
        how = "server-side _reindex"
    else:
        # The core-only Elasticsearch sandbox has no _reindex: copy through this process.
        pit = cluster.open_point_in_time(source)
        after: list[Any] | None = None
        try:
            while True:
                body: dict[str, Any] = {"size": 5_000, "sort": ["_shard_doc"],
                                        "pit": {"id": pit, "keep_alive": "2m"}}
                if after is not None:
                    body["search_after"] = after
                hits = cluster.request("POST", "/_search", body=body)["hits"]["hits"]
                if not hits:
                    break
                result = cluster.bulk_index(dest, [(h["_id"], h["_source"]) for h in hits])
                if result.failed:
                    raise SystemExit(f"copy failed: {result.first_error}")
                after = hits[-1]["sort"]
        finally:
            cluster.close_point_in_time(pit)
        how = "read-and-bulk copy (no _reindex on this cluster)"
    cluster.refresh(dest)
    return how


def change_some(cluster: Cluster, source: str, dest: str, per_kind: int) -> Changes:
    """Delete, change and reorder ``per_kind`` documents of B each, and add ``per_kind``."""
    picked = cluster.search(source, {"size": 3 * per_kind, "sort": ["_doc"],
                                     "query": {"match_all": {}}})["hits"]["hits"]
    changes = Changes()
    operations: list[dict[str, Any]] = []
    for hit in picked[:per_kind]:
        changes.deleted.append(hit["_id"])
        operations.append({"delete": {"_index": dest, "_id": hit["_id"]}})
    for hit in picked[per_kind:2 * per_kind]:
        changes.changed.append(hit["_id"])
        operations += [{"index": {"_index": dest, "_id": hit["_id"]}},
                       {**hit["_source"], "file_size": int(hit["_source"]["file_size"]) + 1}]
    for hit in picked[2 * per_kind:]:
        changes.reordered.append(hit["_id"])
        operations += [{"index": {"_index": dest, "_id": hit["_id"]}},
                       dict(reversed(list(hit["_source"].items())))]
    template = picked[0]["_source"]
    for i in range(per_kind):
        doc_id = f"bench-extra-{i}"
        changes.added.append(doc_id)
        operations += [{"index": {"_index": dest, "_id": doc_id}},
                       {**template, "file_key": doc_id, "path": f"bench/extra/{i}"}]
    result = cluster.bulk(operations)
    if result.failed:
        raise SystemExit(f"changing B failed: {result.first_error}")
    cluster.refresh(dest)
    return changes


# -- the plain read ----------------------------------------------------------------------------


def read_ids_scroll(cluster: Cluster, index: str) -> int:
    """All ids once, one scroll sorted by _doc, ids only."""
    fields = "_scroll_id,hits.hits._id"
    page = cluster.search(index, {"size": PAGE, "sort": ["_doc"], "_source": False},
                          scroll="2m", filter_path=fields)
    scroll_id = page["_scroll_id"]
    ids: list[str] = []
    try:
        while hits := (page.get("hits") or {}).get("hits"):
            ids.extend(hit["_id"] for hit in hits)
            page = cluster.request("POST", "/_search/scroll", params={"filter_path": fields},
                                   body={"scroll": "2m", "scroll_id": scroll_id})
            scroll_id = page.get("_scroll_id", scroll_id)
    finally:
        cluster.clear_scroll(scroll_id)
    return len(ids)


def read_ids_pit(cluster: Cluster, index: str, slices: int = 1) -> int:
    """All ids once, a point in time paged with search_after, ids only, in parallel slices."""
    sort = "_shard_doc" if cluster.engine.engine == "elasticsearch" else "_doc"
    pit = cluster.open_point_in_time(index)

    def read_slice(slice_id: int) -> list[str]:
        ids: list[str] = []
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {"size": PAGE, "sort": [sort], "_source": False,
                                    "track_total_hits": False,
                                    "pit": {"id": pit, "keep_alive": "2m"}}
            if slices > 1:
                body["slice"] = {"id": slice_id, "max": slices}
            if after is not None:
                body["search_after"] = after
            page = cluster.request("POST", "/_search", body=body,
                                   params={"filter_path": "hits.hits._id,hits.hits.sort"})
            hits = (page.get("hits") or {}).get("hits") or []
            ids.extend(hit["_id"] for hit in hits)
            if len(hits) < PAGE:
                return ids
            after = hits[-1]["sort"]

    try:
        with ThreadPoolExecutor(max_workers=slices) as pool:
            return sum(len(ids) for ids in pool.map(read_slice, range(slices)))
    finally:
        cluster.close_point_in_time(pit)


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, list[float], Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), times, result


def with_collector_paused(run: Callable[[], int]) -> Callable[[], int]:
    # The diff pauses the cyclic collector while it decodes pages; the plain read gets the same.
    def paused() -> int:
        gc.disable()
        try:
            return run()
        finally:
            gc.enable()
    return paused


# -- the floor of any comparison of contents in the cluster -------------------------------------

# The first pass's map script with the hashing taken out: each source is loaded and parsed, and
# nothing else is done with it. No comparison of contents made in the cluster can cost less.
PARSE_ONLY_MAP = """
if (params['_source'].size() < 0) { state.c[0] += 1L; }
state.c[0] += 1L;
"""


def parse_both_sides(cluster: Cluster, names: list[str]) -> int:
    """Parse every source of both sides in the cluster, requests split and run as in the diff's
    first pass; the number of documents parsed."""
    bodies = []
    for name in names:
        top = int(cluster.search(name, {"size": 0, "aggs": {"top": {"max": {"field": "_seq_no"}}}}
                                 )["aggregations"]["top"]["value"] or 0)
        for seq_range in diff.seq_no_ranges(top, max(1, -(-cluster.count(name)
                                                           // diff.SUM_DOCS_PER_REQUEST))):
            body = diff.sums_body(1, sources=True, seq_range=seq_range)
            body["aggs"]["sums"]["scripted_metric"]["map_script"]["source"] = PARSE_ONLY_MAP
            bodies.append((name, body))

    def run(job: tuple[str, dict[str, Any]]) -> int:
        page = cluster.search(job[0], job[1], request_cache=False)
        return int(sum(page["aggregations"]["sums"]["value"]["c"]))

    with ThreadPoolExecutor(max_workers=diff.SUM_REQUESTS_AT_ONCE) as pool:
        return sum(pool.map(run, bodies))


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("INDEXSHIFT_URL", "http://127.0.0.1:9200"))
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--changes", type=int, default=5,
                        help="documents deleted, added, changed and reordered in B, each")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; best counts")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the two indices")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)

    config = ConnectionConfig(url=args.url, timeout_s=300)
    prefix = f"bench-diff-{uuid.uuid4().hex[:8]}"
    with Cluster.connect(config) as cluster:
        index_a = index_b = ""
        try:
            _log(f"{cluster.engine} at {args.url}; {os.cpu_count()} cores here")
            _log(f"seeding A with {args.docs:,} documents ...")
            seeded = command.sandbox_seed(config, alias=f"{prefix}-a", docs=args.docs,
                                          seed=args.seed)
            index_a = str(seeded["index"])
            index_b = f"{prefix}-b"
            _log(f"A = {index_a} ({seeded['seconds']} s); copying to B = {index_b} ...")
            started = time.perf_counter()
            how = copy_index(cluster, index_a, index_b)
            _log(f"B copied by {how} in {time.perf_counter() - started:.1f} s")
            changes = change_some(cluster, index_a, index_b, args.changes)
            figures = measure(cluster, index_a, index_b, changes, args)
        finally:
            if args.keep:
                _log(f"kept {index_a} and {index_b}")
            else:
                for index in (index_a, index_b):
                    if index and cluster.index_exists(index):
                        cluster.delete_index(index)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if figures["exact"] else 1


def measure(cluster: Cluster, index_a: str, index_b: str, changes: Changes,
            args: argparse.Namespace) -> dict[str, Any]:
    docs = cluster.count(index_a)
    reads = {
        "scroll": best_of(args.repeat, with_collector_paused(
            lambda: read_ids_scroll(cluster, index_a))),
        "point in time": best_of(args.repeat, with_collector_paused(
            lambda: read_ids_pit(cluster, index_a))),
    }
    if cluster.engine.engine == "elasticsearch":  # slices inside one shard: only there
        reads["point in time, 2 slices"] = best_of(args.repeat, with_collector_paused(
            lambda: read_ids_pit(cluster, index_a, slices=2)))
    for way, (_, _, count) in reads.items():
        if count != docs:
            raise SystemExit(f"the {way} read returned {count} ids, A holds {docs}")
    read_way = min(reads, key=lambda way: reads[way][0])
    read_s = reads[read_way][0]

    runs: dict[str, tuple[float, list[float], DiffResult]] = {
        "full diff": best_of(args.repeat, lambda: diff_indices(
            cluster, index_a, index_b, slices=args.slices)),
        "ids-only diff": best_of(args.repeat, lambda: diff_indices(
            cluster, index_a, index_b, slices=args.slices, ids_only=True)),
    }
    floor: tuple[float, list[float], int] | None = None
    if painless_everywhere(cluster):
        floor = best_of(args.repeat, lambda: parse_both_sides(cluster, [index_a, index_b]))
        if floor[2] != docs + cluster.count(index_b):
            raise SystemExit(f"the parse-only pass saw {floor[2]} documents")
        # The same diffs without the first pass (bucket sums), and with sources hashed here:
        # what the first pass saves, and what the cluster's digest saves.
        runs["full diff, every record read"] = best_of(args.repeat, lambda: diff_indices(
            cluster, index_a, index_b, slices=args.slices, bucket_sums=False))
        runs["full diff, sources hashed here"] = best_of(args.repeat, lambda: diff_indices(
            cluster, index_a, index_b, slices=args.slices, digest="client"))

    expected = (sorted(changes.deleted), sorted(changes.added), sorted(changes.changed))
    exact = True
    print(f"\n{cluster.engine}, A = {docs:,} documents, B = {cluster.count(index_b):,}; "
          f"in B: {len(changes.deleted)} deleted, {len(changes.added)} added, "
          f"{len(changes.changed)} changed, {len(changes.reordered)} only reordered")
    print(f"{'measurement':44s} {'best s':>8s} {'ratio':>7s}  runs (s)")
    for way, (best, times, _) in reads.items():
        mark = "  <- baseline" if way == read_way else ""
        print(f"{'read all ids of A, ' + way:44s} {best:8.2f} {best / read_s:7.2f}  "
              f"{', '.join(f'{t:.2f}' for t in times)}{mark}")
    figures: dict[str, Any] = {
        "engine": str(cluster.engine), "docs": docs, "cores": os.cpu_count(),
        "read_ids_s": round(read_s, 3), "read_ids_way": read_way, "runs": {}, "exact": True,
    }
    for name, (best, times, result) in runs.items():
        found = (sorted(result.missing), sorted(result.extra), sorted(result.changed))
        want = (expected[0], expected[1], [] if result.ids_only else expected[2])
        ok = found == want and result.missing_total == len(want[0]) \
            and result.extra_total == len(want[1]) and result.changed_total == len(want[2])
        exact = exact and ok
        print(f"{name + ' (' + result.digest + ')':44s} {best:8.2f} {best / read_s:7.2f}  "
              f"{', '.join(f'{t:.2f}' for t in times)}")
        print(f"{'':44s} missing {result.missing_total}, extra {result.extra_total}, "
              f"changed {result.changed_total}: {'exactly what was changed' if ok else 'WRONG'}")
        if result.sum_buckets:
            print(f"{'':44s} bucket sums: {result.differing_buckets} of {result.sum_buckets:,} "
                  "buckets differed and were read")
        figures["runs"][name] = {"best_s": round(best, 3), "ratio": round(best / read_s, 2),
                                 "digest": result.digest, "missing": result.missing_total,
                                 "extra": result.extra_total, "changed": result.changed_total,
                                 "sum_buckets": result.sum_buckets,
                                 "differing_buckets": result.differing_buckets,
                                 "exact": ok, "runs_s": [round(t, 3) for t in times]}
    if floor is not None:
        print(f"{'floor: parse every source of A and B, no hash':44s} {floor[0]:8.2f} "
              f"{floor[0] / read_s:7.2f}  {', '.join(f'{t:.2f}' for t in floor[1])}")
        figures["parse_floor_s"] = round(floor[0], 3)
        figures["parse_floor_ratio"] = round(floor[0] / read_s, 2)
    figures["exact"] = exact
    return figures


if __name__ == "__main__":
    sys.exit(main())
