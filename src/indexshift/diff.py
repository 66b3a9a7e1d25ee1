"""Exact document-level difference of two indices: ids missing, extra and changed.

Before an alias switch indexshift proves that green holds exactly what blue holds. Each side
is read once, in parallel slices, and every document becomes an ``(id, digest)`` record; the
records are partitioned by a hash of the id into K bucket files on disk, and the two sides are
then compared bucket by bucket. Neither index is ever held in memory whole: the comparison
holds one bucket of each side at a time (O(n/K)).

Reading. A sliced scroll sorted by ``_doc`` on both engines: it is the cheapest full read
each engine has, and OpenSearch 2.x lacks the ``_shard_doc`` tiebreaker that point-in-time
pagination needs. Slices are cut on ``_seq_no``, which every live document carries exactly
once, so each document lands in exactly one slice at the cost of a doc-values read (slicing
on ``_id`` hashes the whole terms dictionary once per slice). Every page is checked for shard
failures and every slice for the exact number of hits it announced, so a partial read is an
error, never a smaller index.

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
from indexshift.errors import BadInput, ClusterError, NotFound

log = logging.getLogger(__name__)

DigestSite = Literal["auto", "server", "client"]
Mode = Literal["ids", "server", "client"]

# Record framing inside bucket files. Ids are stored as UTF-8 (lone surrogates passed through)
# and digests as ASCII hex; neither ever contains the bytes 0xFE or 0xFF, so they frame records
# unambiguously and a whole bucket splits into records in C, without a Python loop.
FIELD_SEP = b"\xfe"
RECORD_END = b"\xff"

PAGE_SIZE = 10_000
SCROLL_KEEP_ALIVE = "5m"
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
    """No more slices than pages: a slice costs a request and a pass over doc values."""
    return max(1, min(slices, math.ceil(docs / page_size)))


def scroll_body(mode: Mode, slice_id: int, slices: int,
                page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """The search body of one slice of a full read, for a digest mode."""
    body: dict[str, Any] = {"size": page_size, "sort": ["_doc"], "track_total_hits": True}
    if slices > 1:
        body["slice"] = {"field": "_seq_no", "id": slice_id, "max": slices}
    if mode == "client":
        body["_source"] = True
    else:
        body["_source"] = False
    if mode == "server":
        body["script_fields"] = {
            DIGEST_FIELD: {"script": {"lang": "painless", "source": PAINLESS_DIGEST}}}
    return body


# The client mode reads whole sources: a filter_path there makes the cluster re-parse every
# source to filter it (measured slower than sending the few extra keys), so it asks for none.
_FILTER_PATHS: dict[Mode, str | None] = {
    "ids": "_scroll_id,timed_out,_shards.failed,_shards.failures,hits.total,hits.hits._id",
    "server": "_scroll_id,timed_out,_shards.failed,_shards.failures,hits.total,hits.hits._id,"
              "hits.hits.fields",
    "client": None,
}


# -- reading ---------------------------------------------------------------------------------


@dataclass
class _Side:
    """One index being read into its bucket files."""

    index: str
    directory: Path
    buckets: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    read: int = 0

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


def _announced_total(page: dict[str, Any], index: str) -> int:
    total = (page.get("hits") or {}).get("total") or {}
    if isinstance(total, int):
        return total
    if total.get("relation", "eq") != "eq":
        raise ClusterError(f"reading {index}: the cluster did not count the hits exactly")
    return int(total.get("value", 0))


def _read_slice(cluster: Cluster, side: _Side, mode: Mode, slice_id: int, slices: int,
                page_size: int, tick: Callable[[int], None], stop: threading.Event) -> int:
    """Read one slice of one side into its bucket files; return the documents read."""
    filter_path = _FILTER_PATHS[mode]
    page = cluster.search(side.index, scroll_body(mode, slice_id, slices, page_size),
                          scroll=SCROLL_KEEP_ALIVE, filter_path=filter_path)
    scroll_id: str | None = page.get("_scroll_id")
    buckets = side.buckets
    parts = [bytearray() for _ in range(buckets)]
    crc32 = zlib.crc32
    blake2b = hashlib.blake2b
    encode = _canonical_encoder.encode
    read = pending = 0
    try:
        _check_page(page, side.index)
        expected = _announced_total(page, side.index)
        while True:
            hits = (page.get("hits") or {}).get("hits") or []
            if not hits:
                break
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
                        raise BadInput(f"{side.index} does not return _source for "
                                       f"{hit['_id']!r}, so contents cannot be compared",
                                       hint="compare ids only (--ids-only)")
                    digest = blake2b(encode(hit["_source"]).encode("ascii"),
                                     digest_size=16).hexdigest().encode("ascii")
                    parts[crc32(key) % buckets] += key + FIELD_SEP + digest + RECORD_END
            read += len(hits)
            pending += len(hits)
            tick(len(hits))
            if pending >= FLUSH_RECORDS:
                side.flush(parts)
                pending = 0
            if stop.is_set():
                raise _Stop
            if read >= expected:
                break  # saves the empty last page
            page = cluster.request("POST", "/_search/scroll",
                                   params={"filter_path": filter_path},
                                   body={"scroll": SCROLL_KEEP_ALIVE, "scroll_id": scroll_id},
                                   what=f"read {side.index}")
            scroll_id = page.get("_scroll_id") or scroll_id
            _check_page(page, side.index)
        side.flush(parts)
        if read != expected:
            raise ClusterError(f"reading {side.index}: slice {slice_id} returned {read} "
                               f"documents but announced {expected}",
                               hint="run the diff again")
        return read
    finally:
        if scroll_id:
            with contextlib.suppress(ClusterError):
                cluster.clear_scroll(scroll_id)


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


def _read_sides(cluster: Cluster, sides: list[_Side], counts: list[int], mode: Mode,
                slices: int, page_size: int,
                progress: Callable[[int], None] | None) -> list[int]:
    """Read every side in parallel slices; return the documents read per side."""
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

    jobs: list[tuple[int, int, int]] = []  # (side, slice id, slices of that side)
    per_side = [slices_for(count, slices, page_size) for count in counts]
    for slice_id in range(max(per_side)):
        for side_no, side_slices in enumerate(per_side):
            if slice_id < side_slices:
                jobs.append((side_no, slice_id, side_slices))
    read = [0 for _ in sides]
    with _collector_paused(), ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures: dict[Future[int], int] = {
            pool.submit(_read_slice, cluster, sides[s], mode, i, n, page_size, tick, stop): s
            for s, i, n in jobs
        }
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in finished):
            stop.set()
        wait(futures)
        real = [e for f in futures
                if (e := f.exception()) is not None and not isinstance(e, _Stop)]
        if real:
            raise real[0]
        for future, side_no in futures.items():
            read[side_no] += future.result()
    return read


# -- the diff --------------------------------------------------------------------------------


def painless_everywhere(cluster: Cluster) -> bool:
    """Whether every node runs painless (a module or a plugin)."""
    body = cluster.request("GET", "/_nodes/plugins",
                           params={"filter_path": "nodes.*.modules.name,nodes.*.plugins.name"},
                           what="list node modules")
    nodes = (body or {}).get("nodes") or {}
    return bool(nodes) and all(
        any(m.get("name") == "lang-painless"
            for m in (node.get("modules") or []) + (node.get("plugins") or []))
        for node in nodes.values())


def _source_disabled(cluster: Cluster, index: str) -> bool:
    for entry in cluster.mapping(index).values():
        source = (entry.get("mappings") or {}).get("_source") or {}
        if source.get("enabled") is False:
            return True
    return False


def _count(cluster: Cluster, index: str) -> int:
    try:
        return cluster.count(index)
    except NotFound:
        raise BadInput(f"index or alias {index!r} does not exist",
                       hint="check the name with `indexshift info`") from None


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
    ``ids_only``). ``slices`` parallel readers per side; ``progress`` hears the documents read
    so far (both sides). ``digest`` says where sources are hashed: ``auto`` (in the cluster
    where painless runs on every node, else here), ``server`` or ``client``. Bucket files go
    to a fresh folder inside ``spill_dir`` (else the system temp folder), removed at the end.
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
    counts = [_count(cluster, index_a), _count(cluster, index_b)]
    mode: Mode = "ids"
    if not ids_only:
        for index in (index_a, index_b):
            if _source_disabled(cluster, index):
                raise BadInput(f"{index} does not keep _source, so contents cannot be compared",
                               hint="compare ids only (--ids-only)")
        if digest == "server" or (digest == "auto" and painless_everywhere(cluster)):
            mode = "server"
        else:
            mode = "client"
    bucket_total = buckets or bucket_count(max(counts))
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="indexshift-diff-", dir=spill_dir))
    try:
        try:
            read, tally = _run(cluster, [index_a, index_b], counts, mode, slices, page_size,
                               bucket_total, work, max_ids, progress)
        except ClusterError as exc:
            if mode != "server" or digest == "server" or "script" not in str(exc).lower():
                raise
            # A source the script cannot digest (too big for painless' loop limit, say):
            # start over with every digest computed here, never mixing the two kinds.
            log.warning("digest script failed (%s); hashing sources locally instead", exc)
            mode = "client"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            read, tally = _run(cluster, [index_a, index_b], counts, mode, slices, page_size,
                               bucket_total, work, max_ids, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ids_only:
        # Without digests an id can only "change" by appearing a different number of times
        # on each side (custom routing); that is not a content comparison: leave it out.
        tally.changed, tally.changed_total = [], 0
    return DiffResult(
        count_a=read[0], count_b=read[1],
        missing=tally.missing, extra=tally.extra, changed=tally.changed,
        missing_total=tally.missing_total, extra_total=tally.extra_total,
        changed_total=tally.changed_total,
        seconds=time.monotonic() - started,
        index_a=index_a, index_b=index_b, ids_only=ids_only,
        digest="none" if mode == "ids" else mode, buckets=bucket_total,
    )


def _run(cluster: Cluster, indices: list[str], counts: list[int], mode: Mode, slices: int,
         page_size: int, buckets: int, work: Path, max_ids: int | None,
         progress: Callable[[int], None] | None) -> tuple[list[int], DiffTally]:
    sides = []
    for name, index in zip(("a", "b"), indices, strict=True):
        directory = work / name
        directory.mkdir()
        sides.append(_Side(index, directory, buckets))
    read = _read_sides(cluster, sides, counts, mode, slices, page_size, progress)
    tally = DiffTally(max_ids)
    for bucket in range(buckets):
        tally.add(compare_bucket(sides[0].bucket_data(bucket), sides[1].bucket_data(bucket)))
    return read, tally
