"""The event log: closed write-ahead log segments archived immutably, and indices rebuilt as a
materialized view of the document writes they hold.

Archive: every closed segment of a gateway's log (every segment but the newest, which the
gateway appends to) is copied into an archive folder, made read-only, and its SHA-256 appended
to ``manifest.jsonl``. Archiving again skips what is already there with the same hash and
refuses a segment whose bytes changed under the same name; reading an archive checks every file
against its manifest first.

Rebuild: the write records are turned into document events (index, create, update, delete by
id), the events addressed to an alias or to its versioned indices are replayed in log order
into a per-id state, and that state is bulk-loaded into a new index. What is not applied, and
why, is counted:

* a record whose outcome marker says upstream rejected it (4xx) or the log abandoned it;
* a write without an id (``POST /x/_doc``, a bulk item without ``_id``): the cluster chose the
  id and the log does not hold its answer, so the document cannot be placed faithfully;
* a scripted update or upsert (a script's effect cannot be evaluated here), a write through an
  ingest pipeline (it changes the document on its way in), a body that is not JSON.

Inside a ``_bulk`` the outcome marker covers the request, not its items: the item failures the
cluster decides from the state (create on an existing id, update of a missing document) are
reproduced here; others (a document the mapping refuses) are not, and would show in ``diff``.
A record with no marker yet is pending: the gateway applies it, so it is applied here too.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

from indexshift.cluster import Cluster
from indexshift.errors import BadInput, CheckFailed, Conflict
from indexshift.gateway_protocol import RequestKind, WriteOp, classify, decode_body
from indexshift.spec import parse_versioned_index
from indexshift.wal import AppliedMarker, Outcome, WriteRecord, list_segments, summarize_log

JSON = dict[str, Any]
EventOp = Literal["index", "create", "update", "delete"]
MANIFEST_NAME: Final = "manifest.jsonl"
READ_ONLY_MODE: Final = 0o444
BULK_CHUNK_DOCS: Final = 1000
_BULK_OPS: Final[dict[str, EventOp]] = {"index": "index", "create": "create",
                                        "update": "update", "delete": "delete"}


class ArchiveTampered(CheckFailed):
    """An archived segment no longer matches the hash it was archived with."""


# -- archiving closed segments -----------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(archive_dir: Path) -> dict[str, JSON]:
    """segment name → its manifest entry (the first one: an entry is never replaced)."""
    entries: dict[str, JSON] = {}
    path = archive_dir / MANIFEST_NAME
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name = str(entry["name"])
            str(entry["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveTampered(f"{path} line {number} is not a manifest entry",
                                  hint="restore the manifest from a copy") from exc
        entries.setdefault(name, entry)
    return entries


def closed_segments(wal_dir: Path) -> list[Path]:
    """Every segment of a log but the newest: the gateway only ever appends to the newest
    (it reopens it after a restart), and a segment is fsynced whole before the next starts."""
    if not wal_dir.is_dir():
        raise BadInput(f"{wal_dir} is not a write-ahead log directory",
                       hint="pass the gateway's --wal directory")
    return [path for _, path in list_segments(wal_dir)[:-1]]


def archive_segments(wal_dir: Path, archive_dir: Path) -> JSON:
    """Copy every closed segment of ``wal_dir`` into ``archive_dir``, read-only, with its
    SHA-256 appended to the manifest. Idempotent; a segment whose bytes differ from the ones
    archived under its name raises :class:`ArchiveTampered` (nothing after it is archived)."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(archive_dir)
    archived: list[str] = []
    skipped: list[str] = []
    for segment in closed_segments(wal_dir):
        name = segment.name
        digest = sha256_of(segment)
        copy = archive_dir / name
        known = manifest.get(name)
        if known is not None:
            if known["sha256"] != digest:
                raise ArchiveTampered(
                    f"segment {name} in {wal_dir} differs from the copy archived in "
                    f"{archive_dir} (sha256 {digest[:12]}… against {str(known['sha256'])[:12]}…)",
                    hint="an archived segment is immutable: find out which copy changed")
            if not copy.exists() or sha256_of(copy) != digest:
                raise ArchiveTampered(f"archived segment {copy} is missing or changed",
                                      hint="restore it from the log or another copy")
            skipped.append(name)
            continue
        if copy.exists():
            raise ArchiveTampered(f"{copy} exists but the manifest does not list it",
                                  hint="move it aside, then archive again")
        _copy_read_only(segment, copy, digest)
        entry = {"name": name, "sha256": digest, "bytes": copy.stat().st_size,
                 "archived_at": datetime.now(UTC).isoformat(timespec="seconds")}
        with open(archive_dir / MANIFEST_NAME, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        manifest[name] = entry
        archived.append(name)
    return {"wal_dir": str(wal_dir), "archive_dir": str(archive_dir), "archived": archived,
            "already_archived": skipped, "segments_in_archive": len(manifest)}


def _copy_read_only(source: Path, destination: Path, digest: str) -> None:
    temporary = destination.with_name(destination.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.chmod(0o644)
        temporary.unlink()
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArchiveTampered(f"{source} changed while it was archived",
                              hint="a closed segment must not change: check what writes it")
    with open(temporary, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.chmod(READ_ONLY_MODE)
    os.replace(temporary, destination)
    directory = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def verify_archive(archive_dir: Path) -> JSON:
    """Check every archived segment against the manifest; :class:`ArchiveTampered` if not."""
    manifest = read_manifest(archive_dir)
    for name, entry in manifest.items():
        copy = archive_dir / name
        if not copy.exists():
            raise ArchiveTampered(f"archived segment {copy} is missing",
                                  hint="restore it from another copy")
        if sha256_of(copy) != entry["sha256"]:
            raise ArchiveTampered(f"archived segment {copy} changed since it was archived",
                                  hint="restore it from another copy")
    unlisted = [path.name for _, path in list_segments(archive_dir) if path.name not in manifest]
    if unlisted:
        raise ArchiveTampered(f"{archive_dir} holds segments the manifest does not list: "
                              f"{', '.join(unlisted[:3])}",
                              hint="move them aside, or archive them with archive_segments")
    return {"archive_dir": str(archive_dir), "segments": len(manifest)}


# -- from log records to document events (pure) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One document write by id. ``source``: the document (index, create), the partial
    document (update) or None (delete); ``upsert``: what an update inserts when the document
    is missing (None: the update of a missing document is refused)."""

    seq: int
    time_ns: int
    index: str  # the alias or index the write was addressed to
    op: EventOp
    doc_id: str
    source: JSON | None = None
    upsert: JSON | None = None
    routing: str | None = None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ns / 1e9, UTC)


@dataclass
class ParsedRecord:
    events: list[Event]
    skipped: Counter[str]


def parse_record(record: WriteRecord, outcome: AppliedMarker | None = None) -> ParsedRecord:
    """The document events of one logged write, and what of it cannot be applied (by reason)."""
    skipped: Counter[str] = Counter()
    if outcome is not None and outcome.outcome != Outcome.APPLIED:
        skipped["rejected" if outcome.outcome == Outcome.REJECTED else "abandoned"] += 1
        return ParsedRecord([], skipped)
    classified = classify(record.method, record.path)
    if classified.kind != RequestKind.WRITE or classified.op is None:
        skipped["not_a_document_write"] += 1
        return ParsedRecord([], skipped)
    try:
        body = decode_body(record.body, record.header("content-encoding"))
    except (ValueError, OSError, EOFError, zlib.error, gzip.BadGzipFile):
        skipped["unreadable_body"] += 1
        return ParsedRecord([], skipped)
    params = dict(parse_qsl(record.query, keep_blank_values=True)) if record.query else {}
    if classified.op == WriteOp.BULK:
        return _parse_bulk(record, classified.index, params, body)
    assert classified.index is not None
    op = _BULK_OPS[classified.op.value]
    if op == "index" and params.get("op_type") == "create":
        op = "create"
    if classified.doc_id is None:
        skipped["auto_id"] += 1
        return ParsedRecord([], skipped)
    if params.get("pipeline"):
        skipped["ingest_pipeline"] += 1
        return ParsedRecord([], skipped)
    routing = params.get("routing") or None
    if op == "delete":
        return ParsedRecord([Event(record.seq, record.time_ns, classified.index, "delete",
                                   classified.doc_id, routing=routing)], skipped)
    document = _json_object(body)
    if document is None:
        skipped["not_json"] += 1
        return ParsedRecord([], skipped)
    event, reason = _document_event(record, classified.index, op, classified.doc_id, document,
                                    routing)
    if event is None:
        skipped[reason] += 1
        return ParsedRecord([], skipped)
    return ParsedRecord([event], skipped)


def _parse_bulk(record: WriteRecord, default_index: str | None, params: Mapping[str, str],
                body: bytes) -> ParsedRecord:
    events: list[Event] = []
    skipped: Counter[str] = Counter()
    lines = body.split(b"\n")
    at = 0
    while at < len(lines):
        line = lines[at].strip()
        at += 1
        if not line:
            continue
        action = _json_object(line)
        if action is None or len(action) != 1:
            skipped["unreadable_body"] += 1
            return ParsedRecord(events, skipped)  # the cluster refuses the rest too
        ((op_name, meta),) = action.items()
        meta = meta if isinstance(meta, dict) else {}
        document: JSON | None = None
        if op_name != "delete":
            if at >= len(lines) or not lines[at].strip():
                skipped["unreadable_body"] += 1
                return ParsedRecord(events, skipped)
            document = _json_object(lines[at].strip())
            at += 1
        op = _BULK_OPS.get(op_name)
        if op is None:
            skipped["unknown_bulk_action"] += 1
            continue
        index = meta.get("_index", default_index)
        doc_id = meta.get("_id")
        if index is None:
            skipped["no_index"] += 1
            continue
        if doc_id is None:
            skipped["auto_id"] += 1
            continue
        if meta.get("pipeline") or (params.get("pipeline") and op != "delete"):
            skipped["ingest_pipeline"] += 1
            continue
        routing_value = meta.get("routing", meta.get("_routing", params.get("routing")))
        routing = str(routing_value) if routing_value not in (None, "") else None
        if op == "delete":
            events.append(Event(record.seq, record.time_ns, str(index), "delete", str(doc_id),
                                routing=routing))
            continue
        if document is None:
            skipped["not_json"] += 1
            continue
        event, reason = _document_event(record, str(index), op, str(doc_id), document,
                                        routing)
        if event is None:
            skipped[reason] += 1
        else:
            events.append(event)
    return ParsedRecord(events, skipped)


def _document_event(record: WriteRecord, index: str, op: EventOp, doc_id: str,
                    document: JSON, routing: str | None) -> tuple[Event | None, str]:
    if op != "update":
        return Event(record.seq, record.time_ns, index, op, doc_id, document,
                     routing=routing), ""
    if "script" in document or document.get("scripted_upsert"):
        return None, "scripted_update"
    partial = document.get("doc")
    if not isinstance(partial, dict):
        return None, "update_without_doc"
    upsert = document.get("upsert")
    if document.get("doc_as_upsert") is True:
        upsert = partial
    if upsert is not None and not isinstance(upsert, dict):
        return None, "update_without_doc"
    return Event(record.seq, record.time_ns, index, "update", doc_id, partial, upsert,
                 routing), ""


def _json_object(data: bytes) -> JSON | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def events_of_log(records: Mapping[int, WriteRecord], outcomes: Mapping[int, AppliedMarker]
                  ) -> ParsedRecord:
    """Every document event of a log in sequence order, and what was skipped (by reason)."""
    events: list[Event] = []
    skipped: Counter[str] = Counter()
    for seq in sorted(records):
        parsed = parse_record(records[seq], outcomes.get(seq))
        events.extend(parsed.events)
        skipped.update(parsed.skipped)
    return ParsedRecord(events, skipped)


def addressed_to(alias: str, index: str) -> bool:
    """Whether a write to ``index`` belongs to ``alias``: the alias itself or one of its
    versioned indices (``<alias>-v<N>``, ``<alias>-v<N>-<anything>``)."""
    return index == alias or parse_versioned_index(alias, index) is not None


# -- materializing (pure) ----------------------------------------------------------------------


def merge_partial(current: Mapping[str, Any], partial: Mapping[str, Any]) -> JSON:
    """An update's ``doc`` merged into a source as the cluster does: objects merge key by
    key, recursively; any other value (arrays included) replaces the old one."""
    merged: JSON = dict(current)
    for key, value in partial.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_partial(old, value)
        else:
            merged[key] = value
    return merged


@dataclass
class Materialized:
    state: dict[str, JSON | None]  # id → last source; None: deleted
    routing: dict[str, str | None]
    applied: int
    ignored: Counter[str]  # events the cluster would have refused, by reason
    after_until: int


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch; a naive datetime is taken as UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def materialize_events(events: Iterable[Event], *, until: datetime | None = None
                       ) -> Materialized:
    """Replay ``events`` (in the order given: log order) up to ``until`` inclusive."""
    limit = None if until is None else to_ns(until)
    state: dict[str, JSON | None] = {}
    routing: dict[str, str | None] = {}
    applied = after = 0
    ignored: Counter[str] = Counter()
    for event in events:
        if limit is not None and event.time_ns > limit:
            after += 1
            continue
        current = state.get(event.doc_id)
        if event.op == "index":
            state[event.doc_id] = dict(event.source or {})
        elif event.op == "create":
            if current is not None:
                ignored["create_on_existing_id"] += 1
                continue
            state[event.doc_id] = dict(event.source or {})
        elif event.op == "delete":
            if current is None:
                ignored["delete_of_missing_id"] += 1
            state[event.doc_id] = None
        elif current is not None:
            state[event.doc_id] = merge_partial(current, event.source or {})
        elif event.upsert is not None:
            state[event.doc_id] = dict(event.upsert)
        else:
            ignored["update_of_missing_id"] += 1
            continue
        routing[event.doc_id] = event.routing
        applied += 1
    return Materialized(state, routing, applied, ignored, after)


def materialize(events: Iterable[Event], *, until: datetime | None = None
                ) -> dict[str, JSON | None]:
    """Per id, the source the events leave (None: deleted), up to ``until`` inclusive."""
    return materialize_events(events, until=until).state


def parse_until(text: str) -> datetime:
    """``--until``: an ISO 8601 time (``2026-11-26T10:00:00Z``); without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadInput(f"--until expects an ISO 8601 time, got {text!r}",
                       hint="e.g. 2026-11-26T10:00:00Z") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- reading logs and archives -----------------------------------------------------------------


def load_log(sources: Sequence[Path]) -> tuple[dict[int, WriteRecord], dict[int, AppliedMarker]]:
    """The records and outcome markers of every source (archive folders are verified first);
    a record seen in two sources must be the same bytes."""
    records: dict[int, WriteRecord] = {}
    outcomes: dict[int, AppliedMarker] = {}
    if not sources:
        raise BadInput("no event source given", hint="pass an archive folder or a --wal folder")
    for source in sources:
        if not source.is_dir():
            raise BadInput(f"{source} is not a folder of log segments",
                           hint="pass an archive folder or the gateway's --wal folder")
        if (source / MANIFEST_NAME).exists():
            verify_archive(source)
        summary = summarize_log(source)
        for seq, record in summary.records.items():
            known = records.setdefault(seq, record)
            if known != record:
                raise CheckFailed(f"record {seq} differs between the sources given",
                                  hint="the sources must come from one gateway's log")
        for seq, marker in summary.outcomes.items():
            outcomes.setdefault(seq, marker)
    return records, outcomes


# -- rebuilding an index -----------------------------------------------------------------------


def rebuilt_name(alias: str, now: datetime) -> str:
    return f"{alias}-rebuilt-{now.astimezone(UTC):%Y%m%dt%H%M%S%fz}"


def _current_index(cluster: Cluster, alias: str) -> str:
    targets = cluster.alias_targets(alias)
    if not targets:
        raise BadInput(f"alias {alias} does not exist, so there is no index to copy mappings from",
                       hint="name one with mappings_from (--mappings-from INDEX)")
    writers = [index for index, props in targets.items() if props.get("is_write_index")]
    if writers:
        return writers[0]
    if len(targets) == 1:
        return next(iter(targets))
    raise BadInput(f"alias {alias} points at {len(targets)} indices and none is its write index",
                   hint="name the index to copy mappings from (--mappings-from INDEX)")


def _index_body(cluster: Cluster, index: str) -> JSON:
    """Mappings, analysis and shard count of ``index``: what documents need to index alike."""
    body = cluster.mapping(index)
    entry: JSON = body.get(index) or next(iter(body.values()), {})
    mappings: JSON = entry.get("mappings") or {}
    settings = cluster.index_settings(index).get("index") or {}
    kept: JSON = {key: settings[key] for key in ("number_of_shards", "number_of_replicas",
                                                 "analysis") if key in settings}
    return {"settings": {"index": kept}, "mappings": mappings}


def rebuild(cluster: Cluster, alias: str, sources: Sequence[Path], *,
            until: datetime | None = None, target: str | None = None,
            mappings_from: str | None = None, now: datetime | None = None) -> JSON:
    """Rebuild ``alias`` from the event log into a NEW index (never an existing one): the last
    state of every id written to the alias or its versioned indices, up to ``until``. The alias
    is not moved. Returns what was read, applied, skipped, and written where."""
    records, outcomes = load_log(sources)
    parsed = events_of_log(records, outcomes)
    events = [event for event in parsed.events if addressed_to(alias, event.index)]
    result = materialize_events(events, until=until)
    name = target or rebuilt_name(alias, now or datetime.now(UTC))
    if cluster.index_exists(name):
        raise Conflict(f"index {name} already exists; a rebuild never writes over an index",
                       hint="pass another target name (--as NAME) or delete that index")
    source_index = mappings_from or _current_index(cluster, alias)
    cluster.create_index(name, _index_body(cluster, source_index))
    docs = [(doc_id, source) for doc_id, source in result.state.items() if source is not None]
    failed = 0
    first_error: str | None = None
    for start in range(0, len(docs), BULK_CHUNK_DOCS):
        operations: list[JSON] = []
        for doc_id, source in docs[start:start + BULK_CHUNK_DOCS]:
            meta: JSON = {"_index": name, "_id": doc_id}
            if result.routing.get(doc_id):
                meta["routing"] = result.routing[doc_id]
            operations += [{"index": meta}, source]
        outcome = cluster.bulk(operations)
        failed += outcome.failed
        first_error = first_error or outcome.first_error
    cluster.refresh(name)
    if failed:
        raise CheckFailed(f"{failed} of {len(docs)} documents could not be written to {name} "
                          f"(first error: {first_error})",
                          hint=f"inspect {name}, fix the mappings (mappings_from), rebuild again")
    return {
        "alias": alias,
        "target": name,
        "mappings_from": source_index,
        "until": None if until is None else until.astimezone(UTC).isoformat(),
        "sources": [str(source) for source in sources],
        "records_read": len(records),
        "records_without_outcome": sum(1 for seq in records if seq not in outcomes),
        "events_read": len(events),
        "events_other_indices": len(parsed.events) - len(events),
        "events_applied": result.applied,
        "events_after_until": result.after_until,
        "events_ignored": dict(result.ignored),
        "skipped_in_log": dict(parsed.skipped),  # by reason, every index of the log
        "docs_written": len(docs),
        "ids_deleted": sum(1 for source in result.state.values() if source is None),
    }
