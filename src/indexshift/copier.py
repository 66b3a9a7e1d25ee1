"""Server-side copy of blue into green: sliced ``_reindex`` tasks, progress, catch-up.

The cluster does the copying; this module starts the task, reads its progress, and closes the
gap left by writes that reached blue while the copy ran. Catch-up uses sequence numbers: every
index, update or create on blue gets a ``_seq_no`` above the mark taken before the copy began,
so ``_seq_no > mark`` finds every document written since. Deletes leave no searchable trace;
they are found by comparing ids (see ``extra_ids``), which the migrator does under a short
write block where it must be exact.

:func:`copy_documents` copies given ids from one index into another: the catch-up, writes
copied back into the old index on a rollback, and a recovery's selective copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from indexshift.cluster import JSON, Cluster
from indexshift.errors import CheckFailed, ClusterError, NotFound
from indexshift.spec import MigrationSpec

ID_CHUNK = 1_000

# Batches of the server-side copy are sized by bytes, not documents: per-batch costs (a scroll
# round, a bulk request, a translog sync) vanish in a batch of a few megabytes, and a heap of
# half a gigabyte holds several of them at once; but 5,000 vectors of 40 KB would not fit where
# 5,000 log lines of 300 bytes take 1.5 MB. Store bytes are compressed, so the batch read into
# memory is a few times AUTO_BATCH_BYTES; the engine's own default is 1,000 documents.
AUTO_BATCH_BYTES = 8 << 20
AUTO_BATCH_DOCS = (100, 5_000)
ENGINE_BATCH_DOCS = 1_000
# A synchronous _reindex of many batches can answer with more headers than HTTP clients accept
# (OpenSearch 2.19 sends task resource usage headers for each scroll batch; Python refuses an
# answer of more than 100 headers): each call copies at most this many batches.
SYNC_REINDEX_BATCHES = 10

T = TypeVar("T")


@dataclass(frozen=True)
class CopyProgress:
    total: int
    created: int
    updated: int
    deleted: int
    version_conflicts: int
    batches: int
    completed: bool
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    requests_per_second: float | None = None

    @property
    def done(self) -> int:
        return self.created + self.updated + self.deleted + self.version_conflicts

    @property
    def percent(self) -> float:
        if self.total <= 0:
            return 100.0 if self.completed else 0.0
        return min(100.0, 100.0 * self.done / self.total)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total, "created": self.created, "updated": self.updated,
            "deleted": self.deleted, "version_conflicts": self.version_conflicts,
            "batches": self.batches, "completed": self.completed, "percent": round(self.percent, 1),
            "failures": self.failures[:10], "error": self.error,
        }


def progress_from_task(task: JSON) -> CopyProgress:
    """Read a ``GET _tasks/<id>`` answer (sliced or not, running or finished)."""
    status = (task.get("task") or {}).get("status") or {}
    response = task.get("response") or {}
    source = response if task.get("completed") and response else status
    failures = [
        str(f.get("cause", {}).get("reason") or f.get("reason") or f)
        for f in (response.get("failures") or [])
    ]
    error = task.get("error")
    error_text = None
    if error:
        error_text = describe_task_error(error)
    return CopyProgress(
        total=int(source.get("total") or status.get("total") or 0),
        created=int(source.get("created") or 0),
        updated=int(source.get("updated") or 0),
        deleted=int(source.get("deleted") or 0),
        version_conflicts=int(source.get("version_conflicts") or 0),
        batches=int(source.get("batches") or 0),
        completed=bool(task.get("completed")),
        failures=failures,
        error=error_text,
        requests_per_second=status.get("requests_per_second"),
    )


def describe_task_error(error: JSON) -> str:
    """One line from a task's error: its reason, its cause, and where a script broke."""
    parts = [str(error.get("reason") or error.get("type") or "failed")]
    cause = error.get("caused_by") or {}
    if cause.get("reason"):
        parts.append(f"caused by {cause.get('type')}: {cause['reason']}")
    stack = [line.strip() for line in error.get("script_stack") or [] if line.strip()]
    if stack:
        parts.append(f"at {stack[0]}")
    return "; ".join(parts)


def pipeline_name(alias: str, version: int) -> str:
    return f"indexshift-{alias}-v{version}"


# Bulk-load settings of green while the cluster copies into it; restored before validation.
# No replicas and no refresh: nothing reads green yet. An async translog: a node that dies
# mid-copy may lose its last seconds of green's writes, which resume finds and copies again
# (it copies whatever green misses), so durability is only relaxed where it costs nothing.
COPY_TIME_SETTINGS: JSON = {"number_of_replicas": 0, "refresh_interval": "-1",
                            "translog.durability": "async"}


def _flat_index_settings(settings: JSON) -> JSON:
    """Settings as flat dotted keys without ``index.``: ``{"index": {"a": {"b": 1}}}``,
    ``{"index.a.b": 1}`` and ``{"a.b": 1}`` all become ``{"a.b": 1}``."""
    flat: JSON = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix.removeprefix("index.")] = value

    walk("", settings)
    return flat


def copy_time_settings(spec_settings: JSON, *, blue_replicas: int) -> tuple[JSON, JSON]:
    """(settings green is created with, settings put back once the copy is done).

    The spec's own values win in the final settings; what the spec leaves out takes blue's
    replica count and the engines' defaults (refresh every second, a durable translog).
    """
    flat = _flat_index_settings(spec_settings)
    final: JSON = {"number_of_replicas": flat.get("number_of_replicas", blue_replicas),
                   "refresh_interval": flat.get("refresh_interval", "1s"),
                   "translog.durability": flat.get("translog.durability", "request")}
    create = {"index": {**{k: v for k, v in flat.items() if k not in COPY_TIME_SETTINGS},
                        **COPY_TIME_SETTINGS}}
    return create, final


def transform_script(spec: MigrationSpec) -> JSON | None:
    """The ``script`` of a ``_reindex`` body for the spec's transform; None without one."""
    transform = spec.transform
    if transform is None or transform.script is None:
        return None
    return {"lang": transform.script.lang, "source": transform.script.source,
            "params": transform.script.params}


def reindex_body(source_index: str, dest_index: str, *, query: JSON | None = None,
                 script: JSON | None = None, pipeline: str | None = None,
                 create_only: bool = False, batch_size: int | None = None) -> JSON:
    """A ``_reindex`` request body.

    ``create_only``: documents ``dest_index`` already holds are left as they are and counted
    as version conflicts; otherwise a conflict aborts the copy.
    """
    source: JSON = {"index": source_index}
    if batch_size is not None:
        source["size"] = batch_size
    if query is not None:
        source["query"] = query
    dest: JSON = {"index": dest_index}
    if create_only:
        dest["op_type"] = "create"
    if pipeline is not None:
        dest["pipeline"] = pipeline
    body: JSON = {"source": source, "dest": dest,
                  "conflicts": "proceed" if create_only else "abort"}
    if script is not None:
        body["script"] = script
    return body


def auto_batch_size(docs: int, store_bytes: int) -> int:
    """Documents per copy batch for an index of ``docs`` documents in ``store_bytes``."""
    if docs <= 0 or store_bytes <= 0:
        return ENGINE_BATCH_DOCS
    low, high = AUTO_BATCH_DOCS
    return max(low, min(high, AUTO_BATCH_BYTES // max(1, store_bytes // docs)))


def spec_batch_size(spec: MigrationSpec) -> int | None:
    """The spec's own batch size, or None for ``auto``."""
    chosen = spec.copy_options.batch_size
    return None if chosen == "auto" else chosen


def copy_batch_size(cluster: Cluster, blue: str, spec: MigrationSpec) -> int:
    """The spec's batch size, or with ``auto`` one sized by blue's average document."""
    chosen = spec_batch_size(spec)
    if chosen is not None:
        return chosen
    primaries = cluster.stats(blue).get("_all", {}).get("primaries", {})
    return auto_batch_size(int(primaries.get("docs", {}).get("count", 0)),
                           int(primaries.get("store", {}).get("size_in_bytes", 0)))


def migration_body(blue: str, green: str, spec: MigrationSpec, *,
                   pipeline: str | None = None, batch_size: int | None = None) -> JSON:
    """The ``_reindex`` request that copies all of blue into green through the transform.

    ``batch_size``: documents per batch (see :func:`copy_batch_size`); by default the spec's,
    else the engine's.
    """
    return reindex_body(blue, green, script=transform_script(spec), pipeline=pipeline,
                        batch_size=batch_size or spec_batch_size(spec) or ENGINE_BATCH_DOCS)


def ensure_pipeline(cluster: Cluster, name: str, spec: MigrationSpec) -> str | None:
    """Register the spec's ingest pipeline (idempotent); None when the spec has none."""
    if spec.transform is None or spec.transform.pipeline is None:
        return None
    body: JSON = {"processors": spec.transform.pipeline.processors,
                  "description": spec.transform.pipeline.description or f"indexshift {name}"}
    cluster.put_pipeline(name, body)
    return name


def start_copy(cluster: Cluster, blue: str, green: str, spec: MigrationSpec,
               pipeline: str | None) -> str:
    try:
        return cluster.start_reindex(
            migration_body(blue, green, spec, pipeline=pipeline,
                           batch_size=copy_batch_size(cluster, blue, spec)),
            slices=spec.copy_options.slices,
            requests_per_second=spec.copy_options.requests_per_second,
        )
    except ClusterError as exc:
        if exc.status in (404, 405, 400) and "reindex" in exc.message.lower():
            raise CheckFailed(
                f"{cluster.config.url} offers no _reindex ({exc.message})",
                hint="install the reindex module (the sandbox adds it for OpenSearch)",
            ) from exc
        raise


def read_progress(cluster: Cluster, task_id: str) -> CopyProgress | None:
    """The task's progress, or None when the cluster no longer knows the task."""
    try:
        return progress_from_task(cluster.task(task_id))
    except NotFound:
        return None


def seq_no_mark(cluster: Cluster, index: str) -> int:
    """The lowest local checkpoint of the index's primaries (-1 when empty).

    The local checkpoint, not the highest number handed out: a write numbered but still in
    flight is not searchable yet, and below the mark it would never be looked for again. Every
    write up to the checkpoint is processed, so a refresh after reading it shows them all.
    Taking the lowest over shards makes the catch-up query over-inclusive on busier shards:
    it may copy a document again (harmless, copies are idempotent) but never misses one.
    """
    return lowest_primary_checkpoint(cluster.shard_stats(index))


def lowest_primary_checkpoint(shard_copies: Iterable[JSON]) -> int:
    """The lowest ``seq_no.local_checkpoint`` among primaries (-1 when there is none)."""
    marks = [
        int(copy.get("seq_no", {}).get("local_checkpoint", -1))
        for copy in shard_copies if copy.get("routing", {}).get("primary")
    ]
    return min(marks) if marks else -1


def ids_written_since(cluster: Cluster, index: str, mark: int) -> Iterator[str]:
    """Ids of documents indexed or updated in ``index`` after the sequence-number mark."""
    body = {"size": 5_000, "_source": False, "sort": ["_doc"],
            "query": {"range": {"_seq_no": {"gt": mark}}}}
    page = cluster.search(index, body, scroll="2m")
    scroll_id = page.get("_scroll_id")
    try:
        while page["hits"]["hits"]:
            for hit in page["hits"]["hits"]:
                yield str(hit["_id"])
            page = cluster.scroll(str(scroll_id))
            scroll_id = page.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            cluster.clear_scroll(str(scroll_id))


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# -- copying given documents -----------------------------------------------------------------


@dataclass(frozen=True)
class CopyCount:
    written: int  # created (or overwritten) in dest
    kept: int  # create-only: already in dest, left untouched
    via: str  # "_reindex" or "_mget+_bulk"


def first_failure(result: JSON) -> str | None:
    """The reason of the first failure in a ``_reindex`` answer; None when none failed."""
    failures = result.get("failures") or []
    if not failures:
        return None
    first = failures[0]
    return str((first.get("cause") or {}).get("reason") or first)


def copy_documents(cluster: Cluster, source: str, dest: str, ids: Iterable[str], *,
                   create_only: bool, script: JSON | None = None, pipeline: str | None = None,
                   batch_size: int | None = None, refresh: bool = False,
                   use_reindex: bool | None = True, what: str | None = None,
                   hint: str | None = None, lacking_hint: str | None = None) -> CopyCount:
    """Copy exactly these documents from ``source`` into ``dest``, a chunk of ids at a time.

    ``create_only``: a document ``dest`` already holds is left as it is (counted as kept);
    otherwise it is overwritten. ``script``/``pipeline`` transform the documents on the way.
    ``use_reindex``: True copies server-side with ``_reindex``; False reads with ``_mget`` and
    writes with ``_bulk`` (no transform then); None asks the cluster whether every node serves
    ``_reindex``. ``refresh`` makes the copies searchable at once. Failures raise CheckFailed
    saying ``what`` failed (default: copying documents into ``dest``), with ``hint`` when
    ``dest`` refused documents and ``lacking_hint`` when ``source`` lacks some of them.
    """
    server_side = cluster.has_module_everywhere("reindex") if use_reindex is None \
        else use_reindex
    if not server_side and (script is not None or pipeline is not None):
        raise CheckFailed(f"{cluster.config.url} offers no _reindex, which copies documents "
                          "through a transform",
                          hint="install the reindex module on every node")
    what = what or f"copying documents into {dest}"
    written = kept = 0
    per_call = min(ID_CHUNK, (batch_size or ID_CHUNK) * SYNC_REINDEX_BATCHES) if server_side \
        else ID_CHUNK
    for chunk in chunks(ids, per_call):
        if server_side:
            body = reindex_body(source, dest, query={"ids": {"values": chunk}}, script=script,
                                pipeline=pipeline, create_only=create_only,
                                batch_size=batch_size or len(chunk))
            result = cluster.reindex_now(body, refresh=refresh)
            reason = first_failure(result)
            if reason is not None:
                raise CheckFailed(f"{what} failed: {reason}", hint=hint)
            written += int(result.get("created") or 0) + int(result.get("updated") or 0)
            kept += int(result.get("version_conflicts") or 0)
        else:
            done, skipped = _mget_bulk_chunk(cluster, source, dest, chunk, create_only,
                                             what, hint, lacking_hint)
            written += done
            kept += skipped
    if not server_side and refresh:
        cluster.refresh(dest)
    return CopyCount(written, kept, "_reindex" if server_side else "_mget+_bulk")


def _mget_bulk_chunk(cluster: Cluster, source: str, dest: str, ids: list[str],
                     create_only: bool, what: str, hint: str | None,
                     lacking_hint: str | None) -> tuple[int, int]:
    docs = [doc for doc in cluster.mget(source, ids) if doc.get("found")]
    if any("_source" not in doc for doc in docs):
        raise CheckFailed(f"{source} keeps no _source, so its documents cannot be copied",
                          hint="restore the whole index instead "
                               "(`indexshift recover --method FULL_RESTORE`)")
    if len(docs) < len(ids):
        lacking = sorted(set(ids) - {str(doc["_id"]) for doc in docs})
        raise CheckFailed(f"{source} lacks {len(lacking)} of the documents to copy "
                          f"(first: {lacking[0]!r})", hint=lacking_hint)
    op = "create" if create_only else "index"
    operations: list[JSON] = []
    for doc in docs:
        action: JSON = {"_index": dest, "_id": doc["_id"]}
        if doc.get("_routing") is not None:
            action["routing"] = doc["_routing"]
        operations += [{op: action}, doc.get("_source") or {}]
    result = cluster.bulk(operations)
    if not result.failed:
        return result.sent, 0
    # Create-only items fail when the document exists: it is kept. Any other failure leaves
    # the id absent, which the look-up below tells apart.
    absent = sorted(set(ids) - present_ids(cluster, dest, ids))
    if absent or not create_only:
        raise CheckFailed(f"{what} failed for {result.failed} of {len(ids)}: "
                          f"{result.first_error}", hint=hint)
    return result.sent - result.failed, result.failed


def present_ids(cluster: Cluster, index: str, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that ``index`` holds (real-time ``_mget``, no refresh needed)."""
    found: set[str] = set()
    for chunk in chunks(ids, ID_CHUNK):
        found.update(str(doc["_id"]) for doc in cluster.mget(index, chunk, source=False)
                     if doc.get("found"))
    return found


def moved_since(cluster: Cluster, index: str, ids: Sequence[str], mark: int) -> set[str]:
    """Those of ``ids`` whose document in ``index`` changed after the sequence-number mark, as
    a real-time ``_mget`` sees them now: deleted, or written with a number above the mark.

    Unlike :func:`ids_written_since` it needs no refresh and sees deletes: a search finds no
    deleted document, nor one created again since the last refresh.
    """
    moved: set[str] = set()
    for chunk in chunks(ids, ID_CHUNK):
        for doc in cluster.mget(index, chunk, source=False):
            if not doc.get("found") or int(doc.get("_seq_no", mark + 1)) > mark:
                moved.add(str(doc["_id"]))
    return moved


def copy_ids(cluster: Cluster, blue: str, green: str, ids: Iterable[str], spec: MigrationSpec,
             pipeline: str | None) -> int:
    """Copy exactly these documents through the spec's transform; how many were written."""
    return copy_documents(cluster, blue, green, ids, create_only=False,
                          script=transform_script(spec), pipeline=pipeline,
                          batch_size=spec_batch_size(spec), refresh=True).written


def delete_ids(cluster: Cluster, index: str, ids: Iterable[str]) -> int:
    deleted = 0
    for chunk in chunks(ids, ID_CHUNK):
        result = cluster.bulk([{"delete": {"_index": index, "_id": doc_id}} for doc_id in chunk])
        if result.failed:
            raise CheckFailed(f"deleting documents from {index} failed: {result.first_error}")
        deleted += result.sent
    cluster.refresh(index)
    return deleted


def missing_ids(source_ids: Iterable[str], present: set[str]) -> list[str]:
    return [doc_id for doc_id in source_ids if doc_id not in present]


def catch_up(cluster: Cluster, blue: str, green: str, spec: MigrationSpec, mark: int,
             pipeline: str | None) -> tuple[int, int]:
    """Copy what was written to blue since ``mark``; returns (documents copied, new mark)."""
    # No shortcut when the mark has not moved: it is the lowest shard's, and a busier shard
    # may have taken writes all the same.
    new_mark = max(mark, seq_no_mark(cluster, blue))
    cluster.refresh(blue)
    copied = copy_ids(cluster, blue, green, ids_written_since(cluster, blue, mark), spec,
                      pipeline)
    return copied, new_mark


@dataclass(frozen=True)
class SettledDiff:
    """A diff of blue and green taken while writes go on, with in-flight writes set aside.

    Green is filled only from blue, so an id green has and blue lacks was deleted from blue
    after it was copied; an id missing or changed in green and written to or deleted from blue
    since the catch-up mark is simply not caught up yet. Both are closed exactly at the
    switch, under the write block. What remains is a real difference.
    """

    missing_total: int
    extra_total: int
    changed_total: int
    in_flight_writes: int
    in_flight_deletes: int
    missing: list[str]
    changed: list[str]

    @property
    def in_flight(self) -> int:
        return self.in_flight_writes + self.in_flight_deletes


def settle_diff(missing: list[str], extra: list[str], changed: list[str],
                moved_since_mark: set[str]) -> SettledDiff:
    real_missing = [i for i in missing if i not in moved_since_mark]
    real_changed = [i for i in changed if i not in moved_since_mark]
    return SettledDiff(
        missing_total=len(real_missing), extra_total=0, changed_total=len(real_changed),
        in_flight_writes=(len(missing) - len(real_missing)) + (len(changed) - len(real_changed)),
        in_flight_deletes=len(extra), missing=real_missing[:1000], changed=real_changed[:1000],
    )
