"""Exact document-level difference of two indices: ids missing, extra and changed.

Before an alias switch indexshift proves that green holds exactly what blue holds. Neither
index is ever held in memory whole, and a diff of two equal indices moves no document at all.

Bucket sums (first pass, where painless runs on every node). One aggregation per side, both
sides at once, hashes every document in the cluster: its id picks one of K buckets, and the
128-bit hash of (id, source) is added to that bucket's sum, together with a count. Only K
counts and sums per side travel. Buckets whose counts and sums agree hold the same documents
on both sides; the rest are read in detail (second pass), restricted by a script query to the
documents of those buckets. The sum of 128-bit hashes misses a difference only when the two
sums collide, with a probability of about 2^-64 or less for data that is not built to collide.
Ids are read from ``_id`` fielddata, which the first pass loads for the indices it reads and
drops again afterwards (unless it was loaded before); where the cluster refuses that (as
Elasticsearch 8 does by default), or scripts at all, every document is read in detail. A
large side is summed in several requests over ranges of ``_seq_no``, which add up. Each pass
reads what is searchable when it runs: a document written between the passes is seen as of
the second pass in a bucket that differed, else as of the first.

Records (second pass, or the only one). Each side is read in parallel slices and every
document becomes an ``(id, digest)`` record; the records are partitioned by a hash of the id
into bucket files on disk, and the two sides are then compared bucket by bucket, holding one
bucket of each side at a time (O(n/K)). The read is the cheapest exact full read each engine
offers (see :func:`read_plan`): on Elasticsearch a point in time paged by ``_shard_doc`` in
slices; on OpenSearch a scroll per concrete index sorted by ``_doc``, one slice per shard.
Pages carry only ids (and digests) where they can (``filter_path``); every page is checked
for shard failures and every slice counts its documents on its first page and must yield
exactly that many, so a partial read is an error, never a smaller index.

Digests. The digest of a document is a hash of its ``_source`` in which key order and
whitespace do not count:

* ``server``: computed in the cluster by :data:`PAINLESS_LIBRARY` (MurmurHash3 x64/128 over a
  type-tagged, length-prefixed walk of the parsed source, in which every object contributes
  the sum of the hashes of its entries, so keys need no sorting). :func:`cluster_digest` is
  the same function in Python, the specification the tests hold the cluster to.
* ``client``: the first 128 bits of BLAKE2b over the canonical JSON (sorted keys, no
  whitespace) of the decoded ``_source``. That is pure Python work, so for large indices the
  readers run as processes, one per core (:func:`reader_processes`).

Either is safe as an equality test: equal sources give equal digests by construction, and two
different sources share a 128-bit digest with a probability near 2^-128 (an object's sum of
entry hashes: near 2^-64) for data that is not built to collide, far below the rate of any
other failure of a diff. Both sides of one diff always use the same kind of digest, and
results are never mixed across kinds.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import json
import json.encoder as json_encoder
import logging
import math
import multiprocessing
import os
import shutil
import struct
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import (
    FIRST_EXCEPTION,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
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
KEEP_ALIVE = "5m"  # of a scroll or point in time, renewed by every page
RECORDS_PER_BUCKET = 50_000  # sizing target: one bucket of each side in memory at a time
MAX_BUCKETS = 4096
FLUSH_RECORDS = 100_000  # per reader thread: about 6 MB of buffered records
MAX_SLICES = 64
PROCESS_MIN_DOCS = 200_000  # hashing sources here: from this many documents, use processes
FEW_DIFFERENCES = 256  # differing records a bucket looks up by id instead of grouping
DIGEST_FIELD = "_indexshift_digest"
SUM_DOCS_PER_BUCKET = 128  # first pass: a differing bucket costs about this many reads a side
MAX_SUM_BUCKETS = 32_768  # K counts and two sums a side: about 1.5 MB of JSON at most
# A larger side is summed in several requests over ranges of _seq_no, which run in parallel
# even inside one shard: the first pass is the bulk of the work. No more than four at once,
# both sides together, so a diff leaves search threads to the traffic the cluster serves.
SUM_DOCS_PER_REQUEST = 250_000
SUM_REQUESTS_AT_ONCE = 4
SUM_TIMEOUT_S = 300.0  # one summing request reads up to SUM_DOCS_PER_REQUEST sources

# The painless library behind every digest the cluster computes (see the module docstring).
# `blk` is the block round of MurmurHash3 x64/128 and `fin` its finish: a stream is a sequence of
# 128-bit blocks, h = [h1, h2, bytes so far]. `val` feeds one JSON value as self-delimiting
# blocks: (tag, length or value) first, then a string's UTF-16 code units eight to a block, zero
# padded. A map is (2, size) and the 128-bit sum of its entries, each entry hashed as a stream
# of its own (key, then value): a sum does not depend on the order of the keys, so no key is
# ever sorted and no text is ever built. `bucket` places an id among k buckets.
PAINLESS_LIBRARY = """
long fmix(long k) {
  k ^= k >>> 33; k *= -49064778989728563L; k ^= k >>> 33; k *= -4265267296055464877L;
  return k ^ (k >>> 33);
}
void blk(long[] h, long k1, long k2) {
  k1 *= -8663945395140668459L; k1 = Long.rotateLeft(k1, 31); k1 *= 5545529020109919103L;
  h[0] ^= k1; h[0] = Long.rotateLeft(h[0], 27) + h[1]; h[0] = h[0] * 5 + 1390208809L;
  k2 *= 5545529020109919103L; k2 = Long.rotateLeft(k2, 33); k2 *= -8663945395140668459L;
  h[1] ^= k2; h[1] = Long.rotateLeft(h[1], 31) + h[0]; h[1] = h[1] * 5 + 944331445L;
  h[2] += 16L;
}
void fin(long[] h) {
  long a = h[0] ^ h[2]; long b = h[1] ^ h[2]; a += b; b += a;
  a = fmix(a); b = fmix(b); a += b; b += a;
  h[0] = a; h[1] = b;
}
void str(long[] h, long tag, String s) {
  int n = s.length();
  blk(h, tag, n);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    blk(h, ((long) s.charAt(i)) | (((long) s.charAt(i + 1)) << 16)
           | (((long) s.charAt(i + 2)) << 32) | (((long) s.charAt(i + 3)) << 48),
        ((long) s.charAt(i + 4)) | (((long) s.charAt(i + 5)) << 16)
           | (((long) s.charAt(i + 6)) << 32) | (((long) s.charAt(i + 7)) << 48));
  }
  if (i < n) {
    long t1 = 0L; long t2 = 0L;
    for (int j = 0; i + j < n; ++j) {
      long c = (long) s.charAt(i + j);
      if (j < 4) { t1 |= c << (16 * j); } else { t2 |= c << (16 * (j - 4)); }
    }
    blk(h, t1, t2);
  }
}
void val(long[] h, def v) {
  if (v instanceof String) { str(h, 1L, (String) v); }
  else if (v instanceof Integer || v instanceof Long) { blk(h, 4L, ((Number) v).longValue()); }
  else if (v instanceof Map) {
    Map m = (Map) v; long s1 = 0L; long s2 = 0L;
    for (def e : m.entrySet()) {
      long[] eh = new long[3];
      str(eh, 1L, (String) e.getKey());
      val(eh, e.getValue());
      fin(eh); s1 += eh[0]; s2 += eh[1];
    }
    blk(h, 2L, m.size()); blk(h, s1, s2);
  }
  else if (v instanceof List) {
    List l = (List) v;
    blk(h, 3L, l.size());
    for (def x : l) { val(h, x); }
  }
  else if (v == null) { blk(h, 0L, 0L); }
  else if (v instanceof Boolean) { blk(h, 5L, ((boolean) v) ? 1L : 0L); }
  else if (v instanceof Double || v instanceof Float) {
    blk(h, 6L, Double.doubleToLongBits(((Number) v).doubleValue()));
  }
  else if (v instanceof Short || v instanceof Byte) { blk(h, 4L, ((Number) v).longValue()); }
  else if (v instanceof BigInteger && ((BigInteger) v).bitLength() < 64) {
    blk(h, 4L, ((BigInteger) v).longValue());
  }
  else if (v instanceof Number) { str(h, 7L, v.toString()); }
  else if (v instanceof byte[]) { str(h, 9L, Base64.getEncoder().encodeToString((byte[]) v)); }
  else { str(h, 8L, v.toString()); }
}
int bucket(String id, int k) {
  return (int) ((fmix((long) id.hashCode()) >>> 1) % k);
}
"""

# script_fields: the digest of one document's source, two 64-bit halves in hex.
PAINLESS_DIGEST = PAINLESS_LIBRARY + """
long[] h = new long[3];
val(h, params['_source']);
fin(h);
return Long.toHexString(h[0]) + '.' + Long.toHexString(h[1]);
"""

# scripted_metric: per bucket of ids, the count of documents and the sum (mod 2^64 per half) of
# the hashes of (id, source), or of the id alone when only ids are compared.
SUMS_INIT = """
int k = params.k;
state.c = new long[k]; state.a = new long[k]; state.b = new long[k];
"""
SUMS_MAP = PAINLESS_LIBRARY + """
String id = doc['_id'].value;
int b = bucket(id, params.k);
long[] h = new long[3];
str(h, 1L, id);
if (params.sources) { val(h, params['_source']); }
fin(h);
state.c[b] += 1L; state.a[b] += h[0]; state.b[b] += h[1];
"""
SUMS_COMBINE = "return state;"
SUMS_REDUCE = """
int k = params.k;
long[] c = new long[k]; long[] a = new long[k]; long[] b = new long[k];
for (def s : states) {
  if (s == null) { continue; }
  def sc = s.c; def sa = s.a; def sb = s.b;
  for (int i = 0; i < k; ++i) { c[i] += sc[i]; a[i] += sa[i]; b[i] += sb[i]; }
}
return ['c': c, 'a': a, 'b': b];
"""
# A script query: the documents whose id falls in a bucket marked '1' in params.m.
BUCKET_FILTER = PAINLESS_LIBRARY + """
return params.m.charAt(bucket(doc['_id'].value, params.k)) == 49;
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
    buckets: int = 1  # bucket files of the record comparison (0: no record was read)
    sum_buckets: int = 0  # buckets of the first pass (0: no first pass)
    differing_buckets: int = 0  # of those, the ones whose documents were read

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
            "sum_buckets": self.sum_buckets,
            "differing_buckets": self.differing_buckets,
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

def _refuse(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def _canonical_text_encoder() -> Callable[[Any], str]:
    """Sorted keys, no whitespace, ASCII escapes: one text for one JSON value."""
    standard = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    make_encoder: Any = getattr(json_encoder, "c_make_encoder", None)
    if make_encoder is None:
        return standard.encode
    # The C encoder made once: JSONEncoder.encode builds a new one on every call, which cost
    # about 40% of the encoding time of a small source when measured. Same output.
    iterencode = make_encoder(
        None, _refuse, json_encoder.encode_basestring_ascii, None, ":", ",", True, False, True)
    join = "".join
    return lambda value: join(iterencode(value, 0))


_canonical_text = _canonical_text_encoder()


def canonical_json(source: Any) -> bytes:
    """``source`` as JSON with sorted keys and no whitespace (ASCII, so one byte form)."""
    return _canonical_text(source).encode("ascii")


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

    A bucket is compared as two sets of whole records, built and subtracted in C; the usual
    bucket is identical. When a few records differ, only their ids are looked up again, in
    the raw bucket data (C substring search); when many differ, or a record repeats, the
    bucket is grouped by id in Python. An id present more than once on one side (custom
    routing can do that) compares as the multiset of its digests.
    """
    records_a, records_b = split_records(data_a), split_records(data_b)
    set_a, set_b = set(records_a), set(records_b)
    only_a, only_b = set_a - set_b, set_b - set_a
    unique = len(set_a) == len(records_a) and len(set_b) == len(records_b)
    if unique and not only_a and not only_b:
        return BucketDiff([], [], [])
    if unique and len(only_a) + len(only_b) <= FEW_DIFFERENCES:
        keys = {record.partition(FIELD_SEP)[0] for record in only_a | only_b}
        return _classify({key: (_digests_of(data_a, key), _digests_of(data_b, key))
                          for key in keys})
    by_id_a, by_id_b = _group_by_id(records_a), _group_by_id(records_b)
    return _classify({key: (by_id_a.get(key, []), by_id_b.get(key, []))
                      for key in by_id_a.keys() | by_id_b.keys()})


def _classify(digests: dict[bytes, tuple[list[bytes], list[bytes]]]) -> BucketDiff:
    """Per id, its digests on A and on B → the sorted missing, extra and changed ids."""
    missing, extra, changed = [], [], []
    for key, (on_a, on_b) in digests.items():
        if not on_b:
            missing.append(id_of_key(key))
        elif not on_a:
            extra.append(id_of_key(key))
        elif sorted(on_a) != sorted(on_b):
            changed.append(id_of_key(key))
    return BucketDiff(sorted(missing), sorted(extra), sorted(changed))


def _digests_of(data: bytes, key: bytes) -> list[bytes]:
    """Every digest recorded for one id in raw bucket data."""
    found = []
    head = key + FIELD_SEP
    if data.startswith(head):
        found.append(data[len(head):data.index(RECORD_END, len(head))])
    needle = RECORD_END + head
    at = data.find(needle)
    while at >= 0:
        digest_at = at + len(needle)
        found.append(data[digest_at:data.index(RECORD_END, digest_at)])
        at = data.find(needle, digest_at)
    return found


def _group_by_id(records: list[bytes]) -> dict[bytes, list[bytes]]:
    grouped: dict[bytes, list[bytes]] = {}
    for record in records:
        key, _, digest = record.partition(FIELD_SEP)
        grouped.setdefault(key, []).append(digest)
    return grouped


def slices_for(docs: int, slices: int, page_size: int = PAGE_SIZE) -> int:
    """No more slices than pages: each slice costs requests and a pass of its own."""
    return max(1, min(slices, math.ceil(docs / page_size)))


@dataclass(frozen=True)
class ReadPlan:
    """How one target (a concrete index, or a whole side) is read."""

    kind: Literal["scroll", "pit"]
    slices: int
    sort: str


def read_plan(engine: str, shards: int, docs: int, slices: int,
              page_size: int = PAGE_SIZE) -> ReadPlan:
    """The cheapest exact read the engine offers.

    OpenSearch: a scroll sorted by ``_doc`` per concrete index, sliced by shard (slice max =
    shard count, so each slice is one whole shard and no per-document slice filter runs).
    Slicing inside a shard, by ``_id`` or ``_seq_no``, made every page rescan the shard when
    measured, and point-in-time paging there lacks the ``_shard_doc`` tiebreaker and was
    slower than a scroll. Each shard is one snapshot, which is all an id-by-id diff needs.

    Elasticsearch: one point in time over the side, paged by ``_shard_doc``, whose slices cut
    shards cheaply, so even a one-shard index is read by several readers.
    """
    if engine == "elasticsearch":
        return ReadPlan("pit", slices_for(docs, slices, page_size), "_shard_doc")
    return ReadPlan("scroll", max(1, shards), "_doc")


def page_body(mode: Mode, plan: ReadPlan, slice_id: int, page_size: int = PAGE_SIZE, *,
              pit_id: str | None = None, search_after: list[Any] | None = None,
              count: bool = False, query: dict[str, Any] | None = None) -> dict[str, Any]:
    """The search body of one page of one slice (a scroll's first page, or any pit page);
    ``query`` restricts the read (else every document)."""
    body: dict[str, Any] = {
        "size": page_size,
        "sort": [plan.sort],
        "track_total_hits": count,  # a slice is counted on its first page only
        "_source": mode == "client",
    }
    if plan.slices > 1:
        body["slice"] = {"id": slice_id, "max": plan.slices}
    if pit_id is not None:
        body["pit"] = {"id": pit_id, "keep_alive": KEEP_ALIVE}
    if search_after is not None:
        body["search_after"] = search_after
    if query is not None:
        body["query"] = query
    if mode == "server":
        body["script_fields"] = {
            DIGEST_FIELD: {"script": {"lang": "painless", "source": PAINLESS_DIGEST}}}
    return body


def filter_path(mode: Mode, kind: Literal["scroll", "pit"]) -> str | None:
    """Only what the reader uses. Whole sources go unfiltered: a filter_path there makes the
    cluster re-parse every source to filter it, which measured slower than the extra keys."""
    if mode == "client":
        return None
    keys = ["timed_out", "_shards.failed", "_shards.failures", "hits.total", "hits.hits._id"]
    keys.append("_scroll_id" if kind == "scroll" else "pit_id,hits.hits.sort")
    if mode == "server":
        keys.append("hits.hits.fields")
    return ",".join(keys)


# -- pure parts: the cluster's digest in Python, bucket sums ---------------------------------

_MASK64 = (1 << 64) - 1
_C1, _C2 = 0x87C37B91114253D5, 0x4CF5AD432745937F


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    return k ^ (k >> 33)


class _Stream:
    """MurmurHash3 x64/128 over 128-bit blocks, as ``blk`` and ``fin`` in the painless."""

    __slots__ = ("h1", "h2", "length")

    def __init__(self) -> None:
        self.h1 = self.h2 = self.length = 0

    def block(self, k1: int, k2: int) -> None:
        k1 = _rotl((k1 & _MASK64) * _C1 & _MASK64, 31) * _C2 & _MASK64
        h1 = (_rotl(self.h1 ^ k1, 27) + self.h2) & _MASK64
        h1 = (h1 * 5 + 0x52DCE729) & _MASK64
        k2 = _rotl((k2 & _MASK64) * _C2 & _MASK64, 33) * _C1 & _MASK64
        h2 = (_rotl(self.h2 ^ k2, 31) + h1) & _MASK64
        self.h1, self.h2 = h1, (h2 * 5 + 0x38495AB5) & _MASK64
        self.length += 16

    def finish(self) -> tuple[int, int]:
        a, b = self.h1 ^ self.length, self.h2 ^ self.length
        a = (a + b) & _MASK64
        b = (b + a) & _MASK64
        a, b = _fmix(a), _fmix(b)
        a = (a + b) & _MASK64
        return a, (b + a) & _MASK64

    def text(self, tag: int, text: str) -> None:
        units = text.encode("utf-16-le", "surrogatepass")  # Java strings are UTF-16
        self.block(tag, len(units) // 2)
        for at in range(0, len(units), 16):
            chunk = units[at:at + 16].ljust(16, b"\0")
            self.block(int.from_bytes(chunk[:8], "little"), int.from_bytes(chunk[8:], "little"))

    def value(self, value: Any) -> None:
        if isinstance(value, str):
            self.text(1, value)
        elif value is None:
            self.block(0, 0)
        elif isinstance(value, bool):
            self.block(5, int(value))
        elif isinstance(value, int):
            if -(1 << 63) <= value < 1 << 63:
                self.block(4, value)
            else:
                self.text(7, str(value))
        elif isinstance(value, float):
            self.block(6, struct.unpack("<Q", struct.pack("<d", value))[0])
        elif isinstance(value, dict):
            first = second = 0
            for key, item in value.items():
                entry = _Stream()
                entry.text(1, key)
                entry.value(item)
                a, b = entry.finish()
                first, second = first + a, second + b
            self.block(2, len(value))
            self.block(first, second)
        elif isinstance(value, list):
            self.block(3, len(value))
            for item in value:
                self.value(item)
        elif isinstance(value, bytes):  # binary values of CBOR or SMILE sources
            self.text(9, base64.b64encode(value).decode("ascii"))
        else:
            raise TypeError(f"not JSON: {type(value).__name__}")


def cluster_digest(source: Any) -> str:
    """The digest :data:`PAINLESS_DIGEST` computes for ``source``: two 64-bit halves in hex."""
    stream = _Stream()
    stream.value(source)
    first, second = stream.finish()
    return f"{first:x}.{second:x}"


def sum_element(doc_id: str, source: Any = None, *, sources: bool = True) -> tuple[int, int]:
    """What one document adds to its bucket's sums: the hash of (id, source), or of the id."""
    stream = _Stream()
    stream.text(1, doc_id)
    if sources:
        stream.value(source)
    return stream.finish()


def _java_string_hash(text: str) -> int:
    units = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for at in range(0, len(units), 2):
        value = (31 * value + (units[at] << 8 | units[at + 1])) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def sum_bucket(doc_id: str, buckets: int) -> int:
    """The bucket of an id in the first pass (``bucket`` in the painless)."""
    return (_fmix(_java_string_hash(doc_id) & _MASK64) >> 1) % buckets


def sum_bucket_count(docs: int, per_bucket: int = SUM_DOCS_PER_BUCKET) -> int:
    """K for the first pass: a differing bucket then costs about ``per_bucket`` reads a side."""
    return max(1, min(MAX_SUM_BUCKETS, math.ceil(docs / per_bucket)))


@dataclass(frozen=True)
class BucketSums:
    """Per bucket of ids: the documents counted, and the sums (mod 2^64) of the two 64-bit
    halves of their hashes."""

    counts: tuple[int, ...]
    first: tuple[int, ...]
    second: tuple[int, ...]

    @classmethod
    def empty(cls, buckets: int) -> BucketSums:
        zeros = (0,) * buckets
        return cls(zeros, zeros, zeros)

    @classmethod
    def of_value(cls, value: Any, buckets: int) -> BucketSums:
        """From the value of the summing aggregation (signed Java longs; None: no shard)."""
        if value is None:
            return cls.empty(buckets)
        parts = [value.get(key) if isinstance(value, dict) else None for key in ("c", "a", "b")]
        if any(not isinstance(part, list) or len(part) != buckets for part in parts):
            raise ClusterError(f"the cluster answered bucket sums of an unexpected shape "
                               f"(expected {buckets} buckets)", hint="run the diff again")
        counts, first, second = parts
        assert counts is not None and first is not None and second is not None
        return cls(tuple(int(c) for c in counts), tuple(int(a) & _MASK64 for a in first),
                   tuple(int(b) & _MASK64 for b in second))

    def plus(self, other: BucketSums) -> BucketSums:
        return BucketSums(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            tuple((a + b) & _MASK64 for a, b in zip(self.first, other.first, strict=True)),
            tuple((a + b) & _MASK64 for a, b in zip(self.second, other.second, strict=True)))

    @property
    def total(self) -> int:
        return sum(self.counts)


def sums_of(docs: Iterable[tuple[str, Any]], buckets: int, *, sources: bool = True
            ) -> BucketSums:
    """The first pass over ``(id, source)`` pairs, in Python: what the cluster answers."""
    counts, first, second = [0] * buckets, [0] * buckets, [0] * buckets
    for doc_id, source in docs:
        bucket = sum_bucket(doc_id, buckets)
        a, b = sum_element(doc_id, source, sources=sources)
        counts[bucket] += 1
        first[bucket] = (first[bucket] + a) & _MASK64
        second[bucket] = (second[bucket] + b) & _MASK64
    return BucketSums(tuple(counts), tuple(first), tuple(second))


def differing_buckets(a: BucketSums, b: BucketSums) -> list[int]:
    """The buckets whose counts or sums differ between two sides."""
    return [bucket for bucket, pair in enumerate(zip(
        zip(a.counts, a.first, a.second, strict=True),
        zip(b.counts, b.first, b.second, strict=True), strict=True)) if pair[0] != pair[1]]


def seq_no_ranges(max_seq_no: int, parts: int) -> list[tuple[int | None, int | None]]:
    """``parts`` ranges of ``_seq_no`` (from, to exclusive; None: open) that cover every value,
    so requests over them add up to the whole side."""
    if parts <= 1 or max_seq_no < 1:
        return [(None, None)]
    parts = min(parts, max_seq_no + 1)
    bounds = [(max_seq_no + 1) * part // parts for part in range(1, parts)]
    return list(zip([None, *bounds], [*bounds, None], strict=True))


def sums_body(buckets: int, *, sources: bool, seq_range: tuple[int | None, int | None]
              = (None, None)) -> dict[str, Any]:
    """The search body of one summing request."""
    body: dict[str, Any] = {
        "size": 0,
        "track_total_hits": True,  # every document counted must have been summed
        "aggs": {"sums": {"scripted_metric": {
            "params": {"k": buckets, "sources": sources},
            "init_script": {"lang": "painless", "source": SUMS_INIT},
            "map_script": {"lang": "painless", "source": SUMS_MAP},
            "combine_script": {"lang": "painless", "source": SUMS_COMBINE},
            "reduce_script": {"lang": "painless", "source": SUMS_REDUCE},
        }}},
    }
    low, high = seq_range
    if low is not None or high is not None:
        bounds = {key: bound for key, bound in (("gte", low), ("lt", high)) if bound is not None}
        body["query"] = {"range": {"_seq_no": bounds}}
    return body


def bucket_filter(differing: Iterable[int], buckets: int) -> dict[str, Any] | None:
    """A query for the documents whose ids fall in ``differing`` (None: in every bucket)."""
    marked = set(differing)
    if len(marked) >= buckets:
        return None
    mask = "".join("1" if bucket in marked else "0" for bucket in range(buckets))
    return {"bool": {"filter": {"script": {"script": {
        "lang": "painless", "source": BUCKET_FILTER, "params": {"m": mask, "k": buckets}}}}}}


# -- reading ---------------------------------------------------------------------------------


@dataclass
class _Side:
    """One side's bucket files: every reader writes files of its own (``<bucket>-<tag>``),
    so threads and processes append without sharing a file or a lock."""

    name: str
    directory: Path
    buckets: int
    _files: dict[int, list[Path]] | None = None

    def bucket_data(self, bucket: int) -> bytes:
        if self._files is None:  # listed once, after every reader is done
            self._files = {}
            for path in sorted(self.directory.iterdir()):
                self._files.setdefault(int(path.name.split("-", 1)[0]), []).append(path)
        return b"".join(path.read_bytes() for path in self._files.get(bucket, []))


def _flush(directory: Path, tag: str, parts: list[bytearray]) -> None:
    for bucket, part in enumerate(parts):
        if part:
            with open(directory / f"{bucket}-{tag}.rec", "ab") as out:
                out.write(part)
            part.clear()


@dataclass
class _Target:
    """What one side is read from: a concrete index (scroll) or a point in time (pit)."""

    side: int
    index: str
    plan: ReadPlan
    pit_id: str | None = None
    query: dict[str, Any] | None = None


class _Stop(Exception):
    """Another reader failed: this one stops quietly."""


def _checked(page: dict[str, Any], index: str) -> dict[str, Any]:
    """A page of ``index``, once it is known that every shard answered in time."""
    shards = page.get("_shards") or {}
    if shards.get("failed"):
        failures = shards.get("failures") or [{}]
        reason = (failures[0].get("reason") or {}).get("reason", "unknown reason")
        raise ClusterError(f"reading {index}: {shards['failed']} shard(s) failed: {reason}",
                           hint="check the cluster health and run the diff again")
    if page.get("timed_out"):
        raise ClusterError(f"reading {index}: the search timed out",
                           hint="run the diff again when the cluster is less busy")
    return page


def _hits(page: dict[str, Any]) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = (page.get("hits") or {}).get("hits") or []
    return hits


def _announced(page: dict[str, Any], index: str) -> int:
    total = (page.get("hits") or {}).get("total")
    if isinstance(total, int):
        return total
    if not isinstance(total, dict) or total.get("relation", "eq") != "eq":
        raise ClusterError(f"reading {index}: the cluster did not count the hits exactly")
    return int(total.get("value", 0))


def _scroll_pages(cluster: Cluster, target: _Target, mode: Mode, slice_id: int,
                  page_size: int) -> Generator[list[dict[str, Any]], None, None]:
    keys = filter_path(mode, "scroll")
    page = _checked(cluster.search(target.index,
                                   page_body(mode, target.plan, slice_id, page_size, count=True,
                                             query=target.query),
                                   filter_path=keys, scroll=KEEP_ALIVE,
                                   allow_partial_search_results=False), target.index)
    scroll_id = page.get("_scroll_id")
    try:
        announced, read = _announced(page, target.index), 0
        while hits := _hits(page):
            read += len(hits)
            yield hits
            if read >= announced:
                break  # saves asking for the empty last page
            page = _checked(cluster.scroll(str(scroll_id), KEEP_ALIVE, filter_path=keys),
                            target.index)
            scroll_id = page.get("_scroll_id") or scroll_id
    finally:
        if scroll_id:
            with contextlib.suppress(ClusterError):
                cluster.clear_scroll(scroll_id)
    _check_count(target, slice_id, read, announced)


def _pit_pages(cluster: Cluster, target: _Target, mode: Mode, slice_id: int,
               page_size: int) -> Generator[list[dict[str, Any]], None, None]:
    keys = filter_path(mode, "pit")
    pit_id = str(target.pit_id)
    page = _checked(cluster.search_point_in_time(
        page_body(mode, target.plan, slice_id, page_size, pit_id=pit_id, count=True,
                  query=target.query),
        filter_path=keys, allow_partial_search_results=False), target.index)
    announced, read = _announced(page, target.index), 0
    while True:
        hits = _hits(page)
        read += len(hits)
        if hits:
            yield hits
        # Shard failures raise, so a short page is the last one: no empty page to ask for.
        if len(hits) < page_size:
            break
        pit_id = page.get("pit_id") or pit_id  # Elasticsearch may hand out a newer id
        page = _checked(cluster.search_point_in_time(
            page_body(mode, target.plan, slice_id, page_size, pit_id=pit_id,
                      search_after=hits[-1]["sort"], query=target.query),
            filter_path=keys, allow_partial_search_results=False), target.index)
    _check_count(target, slice_id, read, announced)


def _check_count(target: _Target, slice_id: int, read: int, announced: int) -> None:
    if read != announced:
        raise ClusterError(f"reading {target.index}: slice {slice_id} returned {read} "
                           f"documents, but counted {announced}", hint="run the diff again")


class _Flag(Protocol):
    def is_set(self) -> bool: ...


def _read_slice(cluster: Cluster, directory: Path, buckets: int, target: _Target, mode: Mode,
                slice_id: int, page_size: int, tick: Callable[[int], object],
                stop: _Flag) -> int:
    """Read one slice of one target into bucket files of its own; return the count."""
    reader = _scroll_pages if target.plan.kind == "scroll" else _pit_pages
    tag = f"{target.index}-{slice_id}"
    parts = [bytearray() for _ in range(buckets)]
    crc32 = zlib.crc32
    blake2b = hashlib.blake2b
    encode = _canonical_text
    sep, end, empty_digest, missing = FIELD_SEP, RECORD_END, FIELD_SEP + RECORD_END, object()
    read = pending = 0
    with contextlib.closing(reader(cluster, target, mode, slice_id, page_size)) as pages:
        for hits in pages:
            # One loop per mode, names bound locally: the innermost loop of the diff.
            if mode == "ids":
                for hit in hits:
                    key = hit["_id"].encode("utf-8", "surrogatepass")
                    parts[crc32(key) % buckets] += key + empty_digest
            elif mode == "server":
                for hit in hits:
                    key = hit["_id"].encode("utf-8", "surrogatepass")
                    parts[crc32(key) % buckets] += (key + sep + hit["fields"][DIGEST_FIELD][0]
                                                    .encode("ascii") + end)
            else:
                for hit in hits:
                    key = hit["_id"].encode("utf-8", "surrogatepass")
                    source = hit.get("_source", missing)
                    if source is missing:
                        raise BadInput(f"{target.index} returns no _source for {hit['_id']!r},"
                                       " so contents cannot be compared",
                                       hint="compare ids only (--ids-only)")
                    digest = blake2b(encode(source).encode("ascii"), digest_size=16).hexdigest()
                    parts[crc32(key) % buckets] += key + sep + digest.encode("ascii") + end
            read += len(hits)
            pending += len(hits)
            tick(len(hits))
            if pending >= FLUSH_RECORDS:
                _flush(directory, tag, parts)
                pending = 0
            if stop.is_set():
                raise _Stop
    _flush(directory, tag, parts)
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


# A reader process keeps its connection and the run's progress queue and stop flag here.
_worker: dict[str, Any] = {}


def _start_worker(config: ConnectionConfig, queue: Any, stop: Any) -> None:
    _worker.update(cluster=Cluster.connect(config), queue=queue, stop=stop)


def _read_slice_in_worker(directory: Path, buckets: int, target: _Target, mode: Mode,
                          slice_id: int, page_size: int) -> int:
    with _collector_paused():
        return _read_slice(_worker["cluster"], directory, buckets, target, mode, slice_id,
                           page_size, _worker["queue"].put, _worker["stop"])


def reader_processes(mode: Mode, docs: int, jobs: int, cpus: int | None) -> int:
    """How many processes read in parallel; 0 keeps the readers as threads of this one.

    Hashing sources here is pure Python work, which threads cannot spread over cores; past a
    few hundred thousand documents, processes (one per core) pay for their start.
    """
    if mode != "client" or docs < PROCESS_MIN_DOCS or not cpus or cpus < 2:
        return 0
    return min(cpus, jobs)


def _read_all(cluster: Cluster, sides: list[_Side], targets: list[_Target], mode: Mode,
              slices: int, page_size: int, processes: int,
              progress: Callable[[int], None] | None) -> list[int]:
    """Read every slice of every target, both sides at once, in parallel threads (or reader
    processes); return the documents read per side."""
    tick_lock = threading.Lock()
    done = [0]

    def tick(n: int) -> None:
        if progress is None or n == 0:
            return
        with tick_lock:  # held while reporting, so totals are heard in increasing order
            done[0] += n
            progress(done[0])

    # Interleave the sides so both advance together and neither waits for the other's tail.
    per_target = [[(t, i) for i in range(t.plan.slices)] for t in targets]
    jobs = [job for rank in range(max((len(j) for j in per_target), default=0))
            for j in per_target if rank < len(j) for job in [j[rank]]]
    read = [0 for _ in sides]
    if not jobs:
        return read
    futures: dict[Future[int], _Target] = {}
    if processes:
        context = multiprocessing.get_context("spawn")
        queue: Any = context.Queue()
        stop: Any = context.Event()

        def drain() -> None:
            while (n := queue.get()) is not None:
                tick(n)

        drainer = threading.Thread(target=drain, name="diff-progress", daemon=True)
        drainer.start()
        try:
            with ProcessPoolExecutor(max_workers=processes, mp_context=context,
                                     initializer=_start_worker,
                                     initargs=(cluster.config, queue, stop)) as processes_pool:
                futures = {processes_pool.submit(_read_slice_in_worker,
                                                 sides[target.side].directory,
                                                 sides[target.side].buckets, target, mode,
                                                 slice_id, page_size): target
                           for target, slice_id in jobs}
                _wait_all(futures, stop)
        finally:
            queue.put(None)
            drainer.join()
    else:
        thread_stop = threading.Event()
        with _collector_paused(), ThreadPoolExecutor(
                max_workers=min(len(jobs), slices * len(sides))) as threads_pool:
            futures = {threads_pool.submit(_read_slice, cluster, sides[target.side].directory,
                                           sides[target.side].buckets, target, mode, slice_id,
                                           page_size, tick, thread_stop): target
                       for target, slice_id in jobs}
            _wait_all(futures, thread_stop)
    for future, target in futures.items():
        read[target.side] += future.result()
    return read


def _wait_all(futures: dict[Future[int], _Target], stop: Any) -> None:
    """Wait for every reader; on the first failure stop the others and raise it."""
    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
    if any(f.exception() is not None for f in finished):
        stop.set()
    wait(futures)
    real = [e for f in futures if (e := f.exception()) is not None and not isinstance(e, _Stop)]
    if real:
        raise real[0]


# -- the sides -------------------------------------------------------------------------------


def painless_everywhere(cluster: Cluster) -> bool:
    """Whether every node runs painless (as a module or a plugin)."""
    return cluster.has_module_everywhere("lang-painless")


def _shards_by_index(cluster: Cluster, name: str) -> dict[str, int]:
    """Concrete index → primary shard count, for an index, alias or pattern."""
    try:
        body = cluster.settings(name)
    except NotFound:
        body = None
    if not body:
        raise BadInput(f"index or alias {name!r} does not exist",
                       hint="check the name with `indexshift info`")
    filtered = sorted(index for index, alias in cluster.alias_targets(name).items()
                      if alias.get("filter"))
    if filtered:
        # Reading the indices behind a filtered alias would compare documents it hides.
        raise BadInput(f"alias {name!r} filters {', '.join(filtered)}; a diff compares whole "
                       "indices", hint="diff the indices behind the alias, or an unfiltered alias")
    return {index: int(entry["settings"]["index"]["number_of_shards"])
            for index, entry in body.items()}


def _source_disabled(cluster: Cluster, index: str) -> bool:
    for entry in cluster.mapping(index).values():
        source = (entry.get("mappings") or {}).get("_source") or {}
        if source.get("enabled") is False:
            return True
    return False


# -- first pass: bucket sums -----------------------------------------------------------------

SUMS_KEYS = "timed_out,_shards.failed,_shards.failures,hits.total,aggregations.sums.value"


@dataclass(frozen=True)
class _SumsOutcome:
    """Both sides summed: per-side sums, K, and the buckets that differ."""

    sides: list[BucketSums]
    buckets: int
    differing: list[int]

    @property
    def counts(self) -> list[int]:
        return [side.total for side in self.sides]

    def docs_in_differing(self) -> list[int]:
        return [sum(side.counts[bucket] for bucket in self.differing) for side in self.sides]


def _side_extent(cluster: Cluster, name: str) -> tuple[int, int]:
    """The documents a side holds and its highest ``_seq_no`` (-1 when empty)."""
    page = _checked(cluster.search(
        name, {"size": 0, "track_total_hits": True,
               "aggs": {"top": {"max": {"field": "_seq_no"}}}},
        filter_path="timed_out,_shards.failed,_shards.failures,hits.total,"
                    "aggregations.top.value",
        allow_partial_search_results=False), name)
    top = ((page.get("aggregations") or {}).get("top") or {}).get("value")
    return _announced(page, name), -1 if top is None else int(top)


def _sum_part(cluster: Cluster, name: str, body: dict[str, Any], buckets: int
              ) -> tuple[BucketSums, int]:
    page = _checked(cluster.search(name, body, filter_path=SUMS_KEYS, request_cache=False,
                                   allow_partial_search_results=False), name)
    value = ((page.get("aggregations") or {}).get("sums") or {}).get("value")
    sums = BucketSums.of_value(value, buckets)
    announced = _announced(page, name)
    if sums.total != announced:
        raise ClusterError(f"reading {name}: summed {sums.total} documents, but counted "
                           f"{announced}", hint="run the diff again")
    return sums, announced


def _sum_sides(cluster: Cluster, names: list[str], *, sources: bool, buckets: int | None,
               progress: Callable[[int], None] | None) -> _SumsOutcome:
    """Bucket sums of both sides, their requests in parallel, interleaved across the sides."""
    extents = [_side_extent(cluster, name) for name in names]
    k = buckets or sum_bucket_count(max(docs for docs, _ in extents))
    per_side = [[sums_body(k, sources=sources, seq_range=seq_range)
                 for seq_range in seq_no_ranges(top, math.ceil(docs / SUM_DOCS_PER_REQUEST))]
                for docs, top in extents]
    jobs = [(side, bodies[rank]) for rank in range(max(len(b) for b in per_side))
            for side, bodies in enumerate(per_side) if rank < len(bodies)]
    totals = [BucketSums.empty(k) for _ in names]
    # One request reads up to SUM_DOCS_PER_REQUEST sources before it answers: it gets a
    # connection whose timeout allows for that.
    patient = cluster.config.model_copy(
        update={"timeout_s": max(cluster.config.timeout_s, SUM_TIMEOUT_S)})
    summed = 0
    with Cluster.connect(patient) as connection, ThreadPoolExecutor(
            max_workers=min(len(jobs), SUM_REQUESTS_AT_ONCE)) as pool:
        futures = {pool.submit(_sum_part, connection, names[side], body, k): side
                   for side, body in jobs}
        try:
            for future in as_completed(futures):
                sums, announced = future.result()
                side = futures[future]
                totals[side] = totals[side].plus(sums)
                summed += announced
                if progress is not None:
                    progress(summed)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return _SumsOutcome(totals, k, differing_buckets(totals[0], totals[1]))


def _try_sums(cluster: Cluster, names: list[str], *, sources: bool, buckets: int | None,
              progress: Callable[[int], None] | None) -> _SumsOutcome | None:
    try:
        return _sum_sides(cluster, names, sources=sources, buckets=buckets, progress=progress)
    except Rejected as exc:
        # No _id fielddata (Elasticsearch 8 by default), a tripped breaker, no scripts:
        # every record is read instead, which needs none of that.
        log.warning("bucket sums refused (%s); comparing every record instead", exc.message)
        return None


def _id_fielddata_bytes(cluster: Cluster, name: str) -> int:
    """Heap held by ``_id`` fielddata of a side's indices (0 also when the cluster won't say)."""
    try:
        return cluster.fielddata_bytes(name, "_id")
    except ClusterError:
        return 0


def _drop_id_fielddata(cluster: Cluster, name: str) -> None:
    with contextlib.suppress(ClusterError):
        cluster.clear_fielddata(name, "_id")


@contextlib.contextmanager
def _id_fielddata_warnings_quiet() -> Iterator[None]:
    # The cluster answers every search whose script reads _id with a deprecation warning,
    # which the client turns into a Python warning; the diff reads _id there on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fielddata on the _id field")
        yield


# -- the diff --------------------------------------------------------------------------------


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
    processes: int | None = None,
    bucket_sums: bool = True,
    sum_buckets: int | None = None,
) -> DiffResult:
    """The exact difference between the documents of ``index_a`` and ``index_b``.

    ``missing``: ids in A and not in B; ``extra``: ids in B and not in A; ``changed``: ids in
    both whose ``_source`` differs (key order and whitespace do not count; not computed when
    ``ids_only``). ``digest`` says where sources are hashed: ``auto`` (in the cluster where
    painless runs on every node, else here), ``server`` or ``client``. Where the cluster
    hashes, and ``bucket_sums`` holds, both sides are first summed per bucket of ids in the
    cluster (``sum_buckets`` buckets; None: from the document count) and only the documents
    of differing buckets are read (see the module docstring). The records are read from both
    sides at once, each in parallel slices (:func:`read_plan`): up to ``slices`` per side on
    Elasticsearch, one per shard on OpenSearch. ``progress`` hears the documents compared so
    far, both sides together. Bucket files go to a fresh folder inside ``spill_dir`` (else the
    system temp folder), removed at the end. ``processes``: reader processes (None: chosen by
    :func:`reader_processes`; 0: threads only). ``page_size`` and ``buckets`` (bucket files;
    None: from the document count) are tuning knobs.
    """
    if not 1 <= slices <= MAX_SLICES:
        raise BadInput(f"slices must be 1..{MAX_SLICES}, not {slices}")
    if max_ids is not None and max_ids < 0:
        raise BadInput("max_ids must be 0 or more (or None for all)")
    if not 1 <= page_size <= 10_000:
        raise BadInput("page_size must be 1..10000")
    if buckets is not None and not 1 <= buckets <= MAX_BUCKETS:
        raise BadInput(f"buckets must be 1..{MAX_BUCKETS}")
    if sum_buckets is not None and not 1 <= sum_buckets <= MAX_SUM_BUCKETS:
        raise BadInput(f"sum_buckets must be 1..{MAX_SUM_BUCKETS}")
    if processes is not None and not 0 <= processes <= MAX_SLICES:
        raise BadInput(f"processes must be 0..{MAX_SLICES}")
    started = time.monotonic()
    names = [index_a, index_b]
    shards = [_shards_by_index(cluster, name) for name in names]
    if not ids_only:
        for name in names:
            if _source_disabled(cluster, name):
                raise BadInput(f"{name} does not keep _source, so contents cannot be compared",
                               hint="compare ids only (--ids-only)")
    scripts = digest == "server" or (digest == "auto" and painless_everywhere(cluster))
    mode: Mode = "ids" if ids_only else "server" if scripts else "client"
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="indexshift-diff-", dir=spill_dir))
    sums: _SumsOutcome | None = None
    fielddata_before: dict[str, int] = {}
    bucket_total = 0
    try:
        with _id_fielddata_warnings_quiet():
            if bucket_sums and scripts:
                fielddata_before = {name: _id_fielddata_bytes(cluster, name) for name in names}
                sums = _try_sums(cluster, names, sources=not ids_only, buckets=sum_buckets,
                                 progress=progress)
            if sums is not None and not sums.differing:
                counts, tally = sums.counts, DiffTally(max_ids)
            else:
                counts, tally, mode, bucket_total = _compare_records(
                    cluster, names, shards, mode, digest, sums, slices, page_size, buckets,
                    work, max_ids, processes, None if sums is not None else progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for name, before in fielddata_before.items():
            if before == 0:  # loaded by this diff: give the heap back
                _drop_id_fielddata(cluster, name)
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
        sum_buckets=sums.buckets if sums is not None else 0,
        differing_buckets=len(sums.differing) if sums is not None else 0,
    )


def _compare_records(cluster: Cluster, names: list[str], shards: list[dict[str, int]],
                     mode: Mode, digest: DigestSite, sums: _SumsOutcome | None, slices: int,
                     page_size: int, buckets: int | None, work: Path, max_ids: int | None,
                     processes: int | None, progress: Callable[[int], None] | None
                     ) -> tuple[list[int], DiffTally, Mode, int]:
    """Read records (only those of differing buckets, after bucket sums) and compare them;
    return the counts of each side, the tally, the mode used and the bucket files."""
    query = bucket_filter(sums.differing, sums.buckets) if sums is not None else None
    expected = sums.docs_in_differing() if sums is not None else None
    attempts: list[tuple[Mode, dict[str, Any] | None]] = [(mode, query)]
    if query is not None:
        attempts.append((mode, None))  # a cluster that forbids script queries, say
    if mode == "server" and digest == "auto":
        # A source the script cannot digest (too big for painless' loop limit, say): start
        # over with every digest computed here, never mixing the two kinds.
        attempts.append(("client", None))
    for attempt, (attempt_mode, attempt_query) in enumerate(attempts):
        targets: list[_Target] = []
        try:
            targets, docs = _targets(cluster, names, shards, slices, page_size, attempt_query,
                                     expected if attempt_query is not None else None)
            bucket_total = buckets or bucket_count(max(docs))
            counts, tally = _run(cluster, targets, attempt_mode, slices, page_size,
                                 bucket_total, work, max_ids, sum(docs), processes, progress)
            if sums is not None:
                counts = sums.counts  # the detail read saw only part of each side
            return counts, tally, attempt_mode, bucket_total
        except Rejected as exc:
            if exc.status != 400 or attempt == len(attempts) - 1:
                raise
            log.warning("reading records failed (%s); trying a plainer read", exc.message)
        finally:
            _close(cluster, targets)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _targets(cluster: Cluster, names: list[str], shards: list[dict[str, int]], slices: int,
             page_size: int, query: dict[str, Any] | None = None,
             expected: list[int] | None = None) -> tuple[list[_Target], list[int]]:
    """What each side is read from, with the documents each side holds (an estimate on
    OpenSearch, or ``expected`` when given, used to size the buckets; each slice checks its
    own exact count). ``query`` restricts the read."""
    engine = cluster.engine.engine
    targets: list[_Target] = []
    docs = [0, 0]
    try:
        for side, (name, by_index) in enumerate(zip(names, shards, strict=True)):
            if engine == "elasticsearch":
                pit_id = cluster.open_point_in_time(name, keep_alive=KEEP_ALIVE)
                target = _Target(side, name, ReadPlan("pit", 1, "_shard_doc"), pit_id, query)
                targets.append(target)
                docs[side] = (expected[side] if expected is not None
                              else _count_pit(cluster, pit_id, name, query))
                target.plan = read_plan(engine, sum(by_index.values()), docs[side], slices,
                                        page_size)
            else:
                docs[side] = expected[side] if expected is not None else cluster.count(name)
                targets += [_Target(side, index, read_plan(engine, count, 0, slices, page_size),
                                    None, query)
                            for index, count in sorted(by_index.items())]
    except BaseException:
        _close(cluster, targets)
        raise
    return targets, docs


def _count_pit(cluster: Cluster, pit_id: str, index: str,
               query: dict[str, Any] | None = None) -> int:
    body: dict[str, Any] = {"size": 0, "track_total_hits": True,
                            "pit": {"id": pit_id, "keep_alive": KEEP_ALIVE}}
    if query is not None:
        body["query"] = query
    page = _checked(cluster.search_point_in_time(body, filter_path="timed_out,_shards,hits.total"),
                    index)
    return _announced(page, index)


def _close(cluster: Cluster, targets: list[_Target]) -> None:
    for target in targets:
        if target.pit_id is not None:
            with contextlib.suppress(ClusterError):
                cluster.close_point_in_time(target.pit_id)


def _run(cluster: Cluster, targets: list[_Target], mode: Mode, slices: int, page_size: int,
         buckets: int, work: Path, max_ids: int | None, docs: int, processes: int | None,
         progress: Callable[[int], None] | None) -> tuple[list[int], DiffTally]:
    shutil.rmtree(work, ignore_errors=True)
    sides = []
    for name in ("a", "b"):
        directory = work / name
        directory.mkdir(parents=True)
        sides.append(_Side(name, directory, buckets))
    if processes is None:
        processes = reader_processes(mode, docs, sum(t.plan.slices for t in targets),
                                     os.cpu_count())
    counts = _read_all(cluster, sides, targets, mode, slices, page_size, processes, progress)
    tally = DiffTally(max_ids)
    for bucket in range(buckets):
        tally.add(compare_bucket(sides[0].bucket_data(bucket), sides[1].bucket_data(bucket)))
    return counts, tally


def iter_ids(cluster: Cluster, index: str, page_size: int = PAGE_SIZE) -> Iterator[str]:
    """Every id of ``index`` once: a point in time paged with ``search_after`` (one reader;
    the diff itself reads in parallel slices)."""
    sort = "_shard_doc" if cluster.engine.engine == "elasticsearch" else "_doc"
    pit = cluster.open_point_in_time(index, keep_alive=KEEP_ALIVE)
    after: list[Any] | None = None
    try:
        while True:
            body: dict[str, Any] = {"size": page_size, "sort": [sort], "_source": False,
                                    "track_total_hits": False,
                                    "pit": {"id": pit, "keep_alive": KEEP_ALIVE}}
            if after is not None:
                body["search_after"] = after
            hits = cluster.search_point_in_time(body)["hits"]["hits"]
            yield from (str(hit["_id"]) for hit in hits)
            if len(hits) < page_size:
                return
            after = hits[-1]["sort"]
    finally:
        cluster.close_point_in_time(pit)
