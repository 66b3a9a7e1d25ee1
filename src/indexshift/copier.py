"""Server-side copy of blue into green: sliced ``_reindex`` tasks, progress, catch-up.

The cluster does the copying; this module starts the task, reads its progress, and closes the
gap left by writes that reached blue while the copy ran. Catch-up uses sequence numbers: every
index, update or create on blue gets a ``_seq_no`` above the mark taken before the copy began,
so ``_seq_no > mark`` finds every document written since. Deletes leave no searchable trace;
they are found by comparing ids (see ``extra_ids``), which the migrator does under a short
write block where it must be exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from indexshift.cluster import JSON, Cluster
from indexshift.errors import CheckFailed, ClusterError, NotFound
from indexshift.spec import MigrationSpec

ID_CHUNK = 1_000


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


def reindex_body(blue: str, green: str, spec: MigrationSpec, *,
                 query: JSON | None = None, pipeline: str | None = None) -> JSON:
    """The ``_reindex`` request that copies (part of) blue into green through the transform."""
    source: JSON = {"index": blue, "size": spec.copy_options.batch_size}
    if query is not None:
        source["query"] = query
    dest: JSON = {"index": green}
    if pipeline is not None:
        dest["pipeline"] = pipeline
    body: JSON = {"source": source, "dest": dest, "conflicts": "abort"}
    transform = spec.transform
    if transform is not None and transform.script is not None:
        body["script"] = {"lang": transform.script.lang, "source": transform.script.source,
                          "params": transform.script.params}
    return body


def ensure_pipeline(cluster: Cluster, name: str, spec: MigrationSpec) -> str | None:
    """Register the spec's ingest pipeline (idempotent); None when the spec has none."""
    if spec.transform is None or spec.transform.pipeline is None:
        return None
    body: JSON = {"processors": spec.transform.pipeline.processors,
                  "description": spec.transform.pipeline.description or f"indexshift {name}"}
    cluster.request("PUT", f"/_ingest/pipeline/{name}", body=body,
                    what=f"register ingest pipeline {name}")
    return name


def start_copy(cluster: Cluster, blue: str, green: str, spec: MigrationSpec,
               pipeline: str | None) -> str:
    try:
        return cluster.start_reindex(
            reindex_body(blue, green, spec, pipeline=pipeline),
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
    body = cluster.request("GET", f"/{index}/_stats/docs", params={"level": "shards"},
                           what=f"sequence numbers of {index}")
    shards = body["indices"][index]["shards"]
    marks = [
        int(copy.get("seq_no", {}).get("local_checkpoint", -1))
        for copies in shards.values() for copy in copies
        if copy.get("routing", {}).get("primary")
    ]
    return min(marks) if marks else -1


def ids_written_since(cluster: Cluster, index: str, mark: int) -> Iterator[str]:
    """Ids of documents indexed or updated in ``index`` after the sequence-number mark."""
    body = {"size": 5_000, "_source": False, "sort": ["_doc"],
            "query": {"range": {"_seq_no": {"gt": mark}}}}
    page = cluster.request("POST", f"/{index}/_search", params={"scroll": "2m"}, body=body,
                           what=f"find writes to {index} since seq_no {mark}")
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


def chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(ids)
    while chunk := list(islice(iterator, size)):
        yield chunk


def copy_ids(cluster: Cluster, blue: str, green: str, ids: Iterable[str], spec: MigrationSpec,
             pipeline: str | None) -> int:
    """Copy exactly these documents (through the transform); returns how many were written."""
    written = 0
    for chunk in chunks(ids, ID_CHUNK):
        body = reindex_body(blue, green, spec, query={"ids": {"values": chunk}},
                            pipeline=pipeline)
        result = cluster.request("POST", "/_reindex", params={"wait_for_completion": True,
                                                              "refresh": True},
                                 body=body, what=f"copy {len(chunk)} documents")
        if result.get("failures"):
            first = result["failures"][0]
            raise CheckFailed(f"copying documents into {green} failed: "
                              f"{first.get('cause', {}).get('reason') or first}")
        written += int(result.get("created", 0)) + int(result.get("updated", 0))
    return written


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
    after it was copied; an id missing or changed in green and written to blue since the
    catch-up mark is simply not caught up yet. Both are closed exactly at the switch, under
    the write block. What remains is a real difference.
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
                written_since_mark: set[str]) -> SettledDiff:
    real_missing = [i for i in missing if i not in written_since_mark]
    real_changed = [i for i in changed if i not in written_since_mark]
    return SettledDiff(
        missing_total=len(real_missing), extra_total=0, changed_total=len(real_changed),
        in_flight_writes=(len(missing) - len(real_missing)) + (len(changed) - len(real_changed)),
        in_flight_deletes=len(extra), missing=real_missing[:1000], changed=real_changed[:1000],
    )
