"""Exact document-level difference of two indices: ids missing, extra and changed.

Before an alias switch indexshift proves that green holds exactly what blue holds. Each side
is read once, in parallel slices, and every document becomes an ``(id, digest)`` record; the
records are partitioned by a hash of the id into K bucket files on disk, and the two sides are
then compared bucket by bucket. Neither index is ever held in memory whole: the comparison
holds one bucket of each side at a time (O(n/K)).

Reading. Points in time paged with ``search_after``, so every slice of a side reads one
snapshot. Elasticsearch sorts by ``_shard_doc`` and slices inside shards; OpenSearch 2.x has
no ``_shard_doc``, so there each slice is one whole shard sorted by ``_doc`` (see
:func:`slice_plan`). Pages carry only ids (and digests) where they can (``filter_path``), and
every page is checked for shard failures; each point in time is counted once and must yield
exactly that many documents, so a partial read is an error, never a smaller index.

Digests. The digest of a document is a hash of a canonical form of its ``_source``, in which
key order and whitespace do not count:

* ``client``: the first 128 bits of BLAKE2b over the canonical JSON (sorted keys, no
  whitespace) of the decoded ``_source``.
* ``server``: where painless runs on every node, a script field computes the digest in the
  cluster, so only ids and 128-bit digests travel and Python never decodes a source. The
  script writes the parsed source in a type-tagged, length-prefixed form with sorted keys
  (injective: two sources get the same form exactly when they are equal as JSON values) and
  hashes it with a 128-bit MurmurHash3-style function.

Either is safe as an equality test: equal sources give equal digests by construction, and two
different sources share a 128-bit digest with a probability near 2^-128 for data that is not
built to collide, far below the rate of any other failure of a diff. Both sides of one diff
always use the same kind of digest, and results are never mixed across kinds.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from indexshift.cluster import Cluster
from indexshift.errors import BadInput, ClusterError, NotFound, Rejected

log = logging.getLogger(__name__)

DigestSite = Literal["auto", "server", "client"]
Mode = Literal["ids", "server", "client"]

# Record framing inside bucket files. Ids are stored as UTF-8 (lone surrogates passed through)
# and digests as ASCII hex; neither ever contains the bytes 0xFE or 0xFF, so they frame records
# unambiguously and a whole bucket splits into records in C, without a Python loop.
FIELD_SEP = b"\xfe"
RECORD_END = b"\xff"

PAGE_SIZE = 10_000
PIT_KEEP_ALIVE = "5m"
RECORDS_PER_BUCKET = 50_000  # sizing target: one bucket of each side in memory at a time
MAX_BUCKETS = 4096
FLUSH_RECORDS = 100_000  # per reader thread: about 6 MB of buffered records
MAX_SLICES = 64
DIGEST_FIELD = "_indexshift_digest"

# The painless digest (see the module docstring). `enc` writes the parsed source in a
# type-tagged, length-prefixed form with sorted keys; the loop is MurmurHash3 x64/128 fed with
# eight UTF-16 code units per round; the result is two 64-bit halves in hex.
PAINLESS_DIGEST = """
void enc(def v, StringBuilder sb) {
  if (v == null) { sb.append('z'); }
  else if (v instanceof String) {
    String s = (String) v;
    sb.append('s').append(s.length()).append(':').append(s);
  }
  else if (v instanceof Map) {
    Map m = (Map) v; List keys = new ArrayList(m.keySet()); Collections.sort(keys);
    sb.append('{').append(keys.size()).append(':');
    for (def k : keys) {
      String ks = (String) k;
      sb.append(ks.length()).append(':').append(ks);
      enc(m.get(k), sb);
    }
    sb.append('}');
  }
  else if (v instanceof List) {
    List l = (List) v; sb.append('[').append(l.size()).append(':');
    for (def x : l) { enc(x, sb); }
    sb.append(']');
  }
  else if (v instanceof Boolean) { boolean b = (boolean) v; sb.append(b ? 't' : 'f'); }
  else if (v instanceof Double || v instanceof Float) {
    sb.append('d').append(((Number) v).doubleValue()).append(';');
  }
  else if (v instanceof Number) { sb.append('i').append(v.toString()).append(';'); }
  else { sb.append('o').append(v.toString()).append(';'); }
}
long fmix(long k) {
  k ^= k >>> 33; k *= -49064778989728563L; k ^= k >>> 33; k *= -4265267296055464877L;
  k ^= k >>> 33;
  return k;
}
StringBuilder sb = new StringBuilder();
enc(params['_source'], sb);
String s = sb.toString();
long c1 = -8663945395140668459L; long c2 = 5545529020109919103L;
long h1 = 0L; long h2 = 0L;
int n = s.length(); int i = 0;
for (; i + 8 <= n; i += 8) {
  long k1 = ((long) s.charAt(i)) | (((long) s.charAt(i + 1)) << 16)
    | (((long) s.charAt(i + 2)) << 32) | (((long) s.charAt(i + 3)) << 48);
  long k2 = ((long) s.charAt(i + 4)) | (((long) s.charAt(i + 5)) << 16)
    | (((long) s.charAt(i + 6)) << 32) | (((long) s.charAt(i + 7)) << 48);
  k1 *= c1; k1 = Long.rotateLeft(k1, 31); k1 *= c2; h1 ^= k1;
  h1 = Long.rotateLeft(h1, 27); h1 += h2; h1 = h1 * 5 + 1390208809L;
  k2 *= c2; k2 = Long.rotateLeft(k2, 33); k2 *= c1; h2 ^= k2;
  h2 = Long.rotateLeft(h2, 31); h2 += h1; h2 = h2 * 5 + 944331445L;
}
long t1 = 0L; long t2 = 0L;
for (int j = 0; i + j < n; ++j) {
  long c = (long) s.charAt(i + j);
  if (j < 4) { t1 |= c << (16 * j); } else { t2 |= c << (16 * (j - 4)); }
}
if (n - i > 4) { t2 *= c2; t2 = Long.rotateLeft(t2, 33); t2 *= c1; h2 ^= t2; }
if (n - i > 0) { t1 *= c1; t1 = Long.rotateLeft(t1, 31); t1 *= c2; h1 ^= t1; }
h1 ^= n; h2 ^= n; h1 += h2; h2 += h1;
h1 = fmix(h1); h2 = fmix(h2); h1 += h2; h2 += h1;
return Long.toHexString(h1) + '.' + Long.toHexString(h2);
"""


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffResult:
    """What differs between A and B. Id lists are truncated to ``max_ids``; totals are exact."""

    count_a: int
    count_b: int
    missing: list[str]  # in A, not in B
    extra: list[str]  # in B, not in A
    changed: list[str]  # in both, with different sources (empty when ids_only)
    missing_total: int
    extra_total: int
    changed_total: int
    seconds: float
    index_a: str = ""
    index_b: str = ""
    ids_only: bool = False
    digest: str = "client"  # where source digests were computed: server, client, or none
    buckets: int = 1

    @property
    def equal(self) -> bool:
        return self.missing_total == 0 and self.extra_total == 0 and self.changed_total == 0

    @property
    def truncated(self) -> bool:
        return (len(self.missing) < self.missing_total or len(self.extra) < self.extra_total
                or len(self.changed) < self.changed_total)

    def to_json(self) -> dict[str, Any]:
        return {
            "index_a": self.index_a,
            "index_b": self.index_b,
            "equal": self.equal,
            "ids_only": self.ids_only,
            "count_a": self.count_a,
            "count_b": self.count_b,
            "missing_total": self.missing_total,
            "extra_total": self.extra_total,
            "changed_total": self.changed_total,
            "missing": list(self.missing),
            "extra": list(self.extra),
            "changed": list(self.changed),
            "truncated": self.truncated,
            "digest": self.digest,
            "buckets": self.buckets,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class BucketDiff:
    """The difference found in one bucket; ids sorted."""

    missing: list[str]
    extra: list[str]
    changed: list[str]


@dataclass
class DiffTally:
    """Bucket differences summed up: exact totals, id lists kept up to ``max_ids`` each."""

    max_ids: int | None
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing_total: int = 0
    extra_total: int = 0
    changed_total: int = 0

    def add(self, bucket: BucketDiff) -> None:
        self.missing_total += len(bucket.missing)
        self.extra_total += len(bucket.extra)
        self.changed_total += len(bucket.changed)
        self._keep(self.missing, bucket.missing)
        self._keep(self.extra, bucket.extra)
        self._keep(self.changed, bucket.changed)

    def _keep(self, kept: list[str], new: list[str]) -> None:
        room = len(new) if self.max_ids is None else max(0, self.max_ids - len(kept))
        kept.extend(new[:room])


# -- pure parts: digests, records, buckets, comparison ---------------------------------------

_canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                      allow_nan=True)


def canonical_json(source: Any) -> bytes:
    """``source`` as JSON with sorted keys and no whitespace (ASCII, so one byte form)."""
    return _canonical_encoder.encode(source).encode("ascii")


def source_digest(source: Any) -> bytes:
    """128 bits of BLAKE2b over the canonical JSON, as 32 ASCII hex digits."""
    return hashlib.blake2b(canonical_json(source), digest_size=16).hexdigest().encode("ascii")


def id_key(doc_id: str) -> bytes:
    """An id as bytes for bucket files; ``surrogatepass`` keeps even a lone surrogate."""
    return doc_id.encode("utf-8", "surrogatepass")


def id_of_key(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


def bucket_of(key: bytes, buckets: int) -> int:
    """The bucket of an id: CRC-32 of its bytes, stable across runs, machines and sides."""
    return zlib.crc32(key) % buckets


def bucket_count(docs: int, per_bucket: int = RECORDS_PER_BUCKET) -> int:
    """How many buckets keep one bucket of the larger side near ``per_bucket`` records."""
    return max(1, min(MAX_BUCKETS, math.ceil(docs / per_bucket)))


def pack_record(key: bytes, digest: bytes) -> bytes:
    return key + FIELD_SEP + digest + RECORD_END


def partition(records: Iterable[tuple[str, bytes]], buckets: int) -> list[bytes]:
    """(id, digest) pairs framed and grouped into ``buckets`` byte strings, by id hash."""
    parts = [bytearray() for _ in range(buckets)]
    for doc_id, digest in records:
        key = id_key(doc_id)
        parts[bucket_of(key, buckets)] += pack_record(key, digest)
    return [bytes(p) for p in parts]


def split_records(data: bytes) -> list[bytes]:
    """The framed records of one bucket file, in order."""
    records = data.split(RECORD_END)
    records.pop()  # the empty tail after the last RECORD_END (or the whole of empty data)
    return records


def unpack_record(record: bytes) -> tuple[str, bytes]:
    key, _, digest = record.partition(FIELD_SEP)
    return id_of_key(key), digest


def iter_records(data: bytes) -> Iterator[tuple[str, bytes]]:
    for record in split_records(data):
        yield unpack_record(record)


def compare_bucket(data_a: bytes, data_b: bytes) -> BucketDiff:
    """Missing, extra and changed ids between the records of one bucket of A and of B.

    The usual bucket is identical on both sides: compared as sets of whole records, built and
    compared in C. Only a bucket that differs is grouped by id in Python. An id present more
    than once on one side (custom routing can do that) compares as the multiset of its digests.
    """
    records_a = split_records(data_a)
    records_b = split_records(data_b)
    set_a, set_b = set(records_a), set(records_b)
    if (set_a == set_b and len(set_a) == len(records_a)
            and len(set_b) == len(records_b)):
        return BucketDiff([], [], [])
    by_id_a, by_id_b = _group_by_id(records_a), _group_by_id(records_b)
    missing = sorted(id_of_key(k) for k in by_id_a.keys() - by_id_b.keys())
    extra = sorted(id_of_key(k) for k in by_id_b.keys() - by_id_a.keys())
    changed = sorted(id_of_key(k) for k in by_id_a.keys() & by_id_b.keys()
                     if sorted(by_id_a[k]) != sorted(by_id_b[k]))
    return BucketDiff(missing, extra, changed)


def _group_by_id(records: list[bytes]) -> dict[bytes, list[bytes]]:
    grouped: dict[bytes, list[bytes]] = {}
    for record in records:
        key, _, digest = record.partition(FIELD_SEP)
        grouped.setdefault(key, []).append(digest)
    return grouped


def slices_for(docs: int, slices: int, page_size: int = PAGE_SIZE) -> int:
    """No more slices than pages: each slice costs requests and a pass of its own."""
    return max(1, min(slices, math.ceil(docs / page_size)))


def slice_plan(engine: str, shards: int, docs: int, slices: int,
               page_size: int = PAGE_SIZE) -> tuple[int, str]:
    """How to cut one point in time into slices: (number of slices, tiebreaker sort).

    Elasticsearch pages with the ``_shard_doc`` tiebreaker and cuts slices inside shards
    cheaply. OpenSearch 2.x has no ``_shard_doc``, and ``_doc`` is unique only within one
    shard, so there every slice covers exactly one whole shard (slice max = shard count):
    correct, and with no per-document slice filter to evaluate on every page (slicing inside
    a shard, by ``_id`` or ``_seq_no``, made each page rescan the shard when measured).
    """
    if engine == "elasticsearch":
        return slices_for(docs, slices, page_size), "_shard_doc"
    return max(1, shards), "_doc"


def page_body(mode: Mode, pit_id: str, sort: str, slice_id: int, slices: int,
              page_size: int = PAGE_SIZE, search_after: list[Any] | None = None,
              keep_alive: str = PIT_KEEP_ALIVE) -> dict[str, Any]:
    """The search body of one page of one slice of a point-in-time read."""
    body: dict[str, Any] = {
        "size": page_size,
        "sort": [sort],
        "pit": {"id": pit_id, "keep_alive": keep_alive},
        "track_total_hits": False,  # counted once per point in time, not on every page
        "_source": mode == "client",
    }
    if slices > 1:
        body["slice"] = {"id": slice_id, "max": slices}
    if search_after is not None:
        body["search_after"] = search_after
    if mode == "server":
        body["script_fields"] = {
            DIGEST_FIELD: {"script": {"lang": "painless", "source": PAINLESS_DIGEST}}}
    return body


# The client mode reads whole sources: a filter_path there makes the cluster re-parse every
# source to filter it (measured slower than sending the few extra keys), so it asks for none.
_PAGE_KEYS = "pit_id,timed_out,_shards.failed,_shards.failures,hits.hits._id,hits.hits.sort"
_FILTER_PATHS: dict[Mode, str | None] = {
    "ids": _PAGE_KEYS,
    "server": _PAGE_KEYS + ",hits.hits.fields",
    "client": None,
}


# -- reading ---------------------------------------------------------------------------------


@dataclass
class _Side:
    """One side being read into its bucket files."""

    name: str
    directory: Path
    buckets: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flush(self, parts: list[bytearray]) -> None:
        with self.lock:
            for bucket, part in enumerate(parts):
                if part:
                    with open(self.directory / f"{bucket}.rec", "ab") as out:
                        out.write(part)
                    part.clear()

    def bucket_data(self, bucket: int) -> bytes:
        path = self.directory / f"{bucket}.rec"
        return path.read_bytes() if path.exists() else b""


@dataclass
class _Pit:
    """One point in time over (part of) one side, and how it is read."""

    side: int
    index: str
    pit_id: str
    docs: int = 0
    slices: int = 1
    sort: str = "_doc"


class _Stop(Exception):
    """Another reader failed: this one stops quietly."""


def _check_page(page: dict[str, Any], index: str) -> None:
    shards = page.get("_shards") or {}
    if shards.get("failed"):
        failures = shards.get("failures") or [{}]
        reason = (failures[0].get("reason") or {}).get("reason", "unknown reason")
        raise ClusterError(f"reading {index}: {shards['failed']} shard(s) failed: {reason}",
                           hint="check the cluster health and run the diff again")
    if page.get("timed_out"):
        raise ClusterError(f"reading {index}: the search timed out",
                           hint="run the diff again when the cluster is less busy")


def _search_pit(cluster: Cluster, body: dict[str, Any], filter_path: str | None,
                index: str) -> dict[str, Any]:
    page: dict[str, Any] = cluster.request(
        "POST", "/_search", body=body, what=f"read {index}",
        params={"filter_path": filter_path, "allow_partial_search_results": False})
    _check_page(page, index)
    return page


def _count_pit(cluster: Cluster, pit: _Pit) -> int:
    body = {"size": 0, "track_total_hits": True, "pit": {"id": pit.pit_id}}
    page = _search_pit(cluster, body, "pit_id,timed_out,_shards,hits.total", pit.index)
    total = (page.get("hits") or {}).get("total") or {}
    return int(total if isinstance(total, int) else total.get("value", 0))


def _read_slice(cluster: Cluster, side: _Side, pit: _Pit, mode: Mode, slice_id: int,
                page_size: int, tick: Callable[[int], None], stop: threading.Event) -> int:
    """Read one slice of one point in time into the side's bucket files; return the count."""
    filter_path = _FILTER_PATHS[mode]
    buckets = side.buckets
    parts = [bytearray() for _ in range(buckets)]
    crc32 = zlib.crc32
    blake2b = hashlib.blake2b
    encode = _canonical_encoder.encode
    pit_id = pit.pit_id
    search_after: list[Any] | None = None
    read = pending = 0
    while True:
        page = _search_pit(cluster, page_body(mode, pit_id, pit.sort, slice_id, pit.slices,
                                              page_size, search_after),
                           filter_path, pit.index)
        pit_id = page.get("pit_id") or pit_id  # Elasticsearch may hand out a newer id
        hits = (page.get("hits") or {}).get("hits") or []
        # One loop per mode: this is the innermost loop of the diff.
        if mode == "ids":
            for hit in hits:
                key = hit["_id"].encode("utf-8", "surrogatepass")
                parts[crc32(key) % buckets] += key + FIELD_SEP + RECORD_END
        elif mode == "server":
            for hit in hits:
                key = hit["_id"].encode("utf-8", "surrogatepass")
                digest = hit["fields"][DIGEST_FIELD][0].encode("ascii")
                parts[crc32(key) % buckets] += key + FIELD_SEP + digest + RECORD_END
        else:
            for hit in hits:
                key = hit["_id"].encode("utf-8", "surrogatepass")
                if "_source" not in hit:
                    raise BadInput(f"{pit.index} returns no _source for {hit['_id']!r}, so "
                                   "contents cannot be compared",
                                   hint="compare ids only (--ids-only)")
                digest = blake2b(encode(hit["_source"]).encode("ascii"),
                                 digest_size=16).hexdigest().encode("ascii")
                parts[crc32(key) % buckets] += key + FIELD_SEP + digest + RECORD_END
        read += len(hits)
        pending += len(hits)
        if hits:
            tick(len(hits))
        if pending >= FLUSH_RECORDS:
            side.flush(parts)
            pending = 0
        if stop.is_set():
            raise _Stop
        # Shard failures raise above, so a short page is the last one: no empty page to ask.
        if len(hits) < page_size:
            break
        search_after = hits[-1]["sort"]
    side.flush(parts)
    return read


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    # Decoding a 10k-hit page allocates a few hundred thousand dicts and lists; the cyclic
    # collector keeps scanning them, which made decoding 2-4x slower when measured. The read
    # loop makes no reference cycles, so reference counting alone frees everything it drops.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_all(cluster: Cluster, sides: list[_Side], pits: list[_Pit], mode: Mode,
              slices: int, page_size: int,
              progress: Callable[[int], None] | None) -> None:
    """Read every slice of every point in time, both sides at once, in parallel threads."""
    stop = threading.Event()
    tick_lock = threading.Lock()
    done = [0]

    def tick(n: int) -> None:
        if progress is None:
            return
        with tick_lock:
            done[0] += n
            total = done[0]
        progress(total)

    # Interleave the sides so both advance together and neither waits for the other's tail.
    per_pit = [[(pit, i) for i in range(pit.slices)] for pit in pits if pit.docs > 0]
    jobs = [job for rank in range(max((len(p) for p in per_pit), default=0))
            for p in per_pit if rank < len(p) for job in [p[rank]]]
    if not jobs:
        return
    workers = min(len(jobs), slices * len(sides))
    read_by_pit: dict[int, int] = {}
    with _collector_paused(), ThreadPoolExecutor(max_workers=workers) as pool:
        futures: dict[Future[int], _Pit] = {
            pool.submit(_read_slice, cluster, sides[pit.side], pit, mode, slice_id, page_size,
                        tick, stop): pit
            for pit, slice_id in jobs
        }
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in finished):
            stop.set()
        wait(futures)
        real = [e for f in futures
                if (e := f.exception()) is not None and not isinstance(e, _Stop)]
        if real:
            raise real[0]
        for future, pit in futures.items():
            read_by_pit[id(pit)] = read_by_pit.get(id(pit), 0) + future.result()
    for pit in pits:
        read = read_by_pit.get(id(pit), 0)
        if read != pit.docs:
            raise ClusterError(f"reading {pit.index} returned {read} documents, but its point "
                               f"in time holds {pit.docs}", hint="run the diff again")


# -- the diff --------------------------------------------------------------------------------


def painless_everywhere(cluster: Cluster) -> bool:
    """Whether every node runs painless (as a module or a plugin)."""
    body = cluster.request("GET", "/_nodes/plugins",
                           params={"filter_path": "nodes.*.modules.name,nodes.*.plugins.name"},
                           what="list node modules")
    nodes = (body or {}).get("nodes") or {}
    return bool(nodes) and all(
        any(m.get("name") == "lang-painless"
            for m in (node.get("modules") or []) + (node.get("plugins") or []))
        for node in nodes.values())


def _shards_by_index(cluster: Cluster, name: str) -> dict[str, int]:
    """Concrete index → primary shard count, for an index, alias or pattern."""
    try:
        body = cluster.request("GET", f"/{name}/_settings",
                               params={"filter_path": "*.settings.index.number_of_shards"},
                               what=f"settings of {name}")
    except NotFound:
        body = None
    if not body:
        raise BadInput(f"index or alias {name!r} does not exist",
                       hint="check the name with `indexshift info`")
    return {index: int(entry["settings"]["index"]["number_of_shards"])
            for index, entry in body.items()}


def _source_disabled(cluster: Cluster, index: str) -> bool:
    for entry in cluster.mapping(index).values():
        source = (entry.get("mappings") or {}).get("_source") or {}
        if source.get("enabled") is False:
            return True
    return False


def diff_indices(
    cluster: Cluster,
    index_a: str,
    index_b: str,
    *,
    slices: int = 4,
    ids_only: bool = False,
    spill_dir: Path | None = None,
    max_ids: int | None = 10_000,
    progress: Callable[[int], None] | None = None,
    digest: DigestSite = "auto",
    page_size: int = PAGE_SIZE,
    buckets: int | None = None,
) -> DiffResult:
    """The exact difference between the documents of ``index_a`` and ``index_b``.

    ``missing``: ids in A and not in B; ``extra``: ids in B and not in A; ``changed``: ids in
    both whose ``_source`` differs (key order and whitespace do not count; not computed when
    ``ids_only``). Each side is read from points in time, by up to ``slices`` parallel readers
    (on OpenSearch at most one per shard); ``progress`` hears the documents read so far, both
    sides together. ``digest`` says where sources are hashed: ``auto`` (in the cluster where
    painless runs on every node, else here), ``server`` or ``client``. Bucket files go to a
    fresh folder inside ``spill_dir`` (else the system temp folder), removed at the end.
    """
    if not 1 <= slices <= MAX_SLICES:
        raise BadInput(f"slices must be 1..{MAX_SLICES}, not {slices}")
    if max_ids is not None and max_ids < 0:
        raise BadInput("max_ids must be 0 or more (or None for all)")
    if not 1 <= page_size <= 10_000:
        raise BadInput("page_size must be 1..10000")
    if buckets is not None and not 1 <= buckets <= MAX_BUCKETS:
        raise BadInput(f"buckets must be 1..{MAX_BUCKETS}")
    started = time.monotonic()
    names = [index_a, index_b]
    shards = [_shards_by_index(cluster, name) for name in names]
    mode: Mode = "ids"
    if not ids_only:
        for name in names:
            if _source_disabled(cluster, name):
                raise BadInput(f"{name} does not keep _source, so contents cannot be compared",
                               hint="compare ids only (--ids-only)")
        if digest == "server" or (digest == "auto" and painless_everywhere(cluster)):
            mode = "server"
        else:
            mode = "client"
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="indexshift-diff-", dir=spill_dir))
    pits: list[_Pit] = []
    try:
        pits = _open_pits(cluster, names, shards, slices, page_size)
        counts = [sum(p.docs for p in pits if p.side == side) for side in (0, 1)]
        bucket_total = buckets or bucket_count(max(counts))
        try:
            tally = _run(cluster, pits, mode, slices, page_size, bucket_total, work, max_ids,
                         progress)
        except Rejected as exc:
            if mode != "server" or digest != "auto" or exc.status != 400:
                raise
            # A source the script cannot digest (too big for painless' loop limit, say):
            # start over with every digest computed here, never mixing the two kinds.
            log.warning("digest script failed (%s); hashing sources locally instead", exc)
            mode = "client"
            tally = _run(cluster, pits, mode, slices, page_size, bucket_total, work, max_ids,
                         progress)
    finally:
        for pit in pits:
            with contextlib.suppress(ClusterError):
                cluster.close_point_in_time(pit.pit_id)
        shutil.rmtree(work, ignore_errors=True)
    if ids_only:
        # Without digests an id can only "change" by appearing a different number of times
        # on each side (custom routing); that is not a content comparison: leave it out.
        tally.changed, tally.changed_total = [], 0
    return DiffResult(
        count_a=counts[0], count_b=counts[1],
        missing=tally.missing, extra=tally.extra, changed=tally.changed,
        missing_total=tally.missing_total, extra_total=tally.extra_total,
        changed_total=tally.changed_total,
        seconds=time.monotonic() - started,
        index_a=index_a, index_b=index_b, ids_only=ids_only,
        digest="none" if mode == "ids" else mode, buckets=bucket_total,
    )


def _open_pits(cluster: Cluster, names: list[str], shards: list[dict[str, int]], slices: int,
               page_size: int) -> list[_Pit]:
    """Points in time for both sides, counted and cut into slices; closed by the caller."""
    engine = cluster.engine.engine
    pits: list[_Pit] = []
    try:
        for side, (name, by_index) in enumerate(zip(names, shards, strict=True)):
            # One point in time per concrete index on OpenSearch, where slices follow shards.
            covers = [(name, sum(by_index.values()))] if engine == "elasticsearch" \
                else sorted(by_index.items())
            for index, shard_count in covers:
                pit_id = cluster.open_point_in_time(index, keep_alive=PIT_KEEP_ALIVE)
                pit = _Pit(side, index, pit_id)
                pits.append(pit)
                pit.docs = _count_pit(cluster, pit)
                pit.slices, pit.sort = slice_plan(engine, shard_count, pit.docs, slices,
                                                  page_size)
    except BaseException:
        for pit in pits:
            with contextlib.suppress(ClusterError):
                cluster.close_point_in_time(pit.pit_id)
        raise
    return pits


def _run(cluster: Cluster, pits: list[_Pit], mode: Mode, slices: int, page_size: int,
         buckets: int, work: Path, max_ids: int | None,
         progress: Callable[[int], None] | None) -> DiffTally:
    shutil.rmtree(work, ignore_errors=True)
    sides = []
    for name in ("a", "b"):
        directory = work / name
        directory.mkdir(parents=True)
        sides.append(_Side(name, directory, buckets))
    _read_all(cluster, sides, pits, mode, slices, page_size, progress)
    tally = DiffTally(max_ids)
    for bucket in range(buckets):
        tally.add(compare_bucket(sides[0].bucket_data(bucket), sides[1].bucket_data(bucket)))
    return tally
