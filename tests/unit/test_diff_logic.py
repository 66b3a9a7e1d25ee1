"""The pure parts of the exact diff: digests, bucket records, bucket comparison, plans."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from indexshift import diff
from indexshift.diff import (
    BucketDiff,
    BucketSums,
    DiffResult,
    DiffTally,
    ReadPlan,
    bucket_count,
    bucket_filter,
    bucket_of,
    canonical_json,
    cluster_digest,
    compare_bucket,
    differing_buckets,
    filter_path,
    id_key,
    iter_records,
    page_body,
    partition,
    read_plan,
    reader_processes,
    seq_no_ranges,
    slices_for,
    source_digest,
    split_records,
    sum_bucket,
    sum_bucket_count,
    sum_element,
    sums_body,
    sums_of,
)
from indexshift.errors import ClusterError

ODD_IDS = [
    "plain",
    "with space",
    "slash/and\\back",
    "hash#question?amp&percent%",
    "ünïcödé-日本語-🙂",
    "new\nline\ttab",
    "quote\"and'apostrophe",
    "x" * 300,
    "lone-surrogate-\ud800",
    "",
]


def _bucket(records: list[tuple[str, bytes]]) -> bytes:
    return partition(records, 1)[0]


# -- canonical JSON and digests ---------------------------------------------------------------


def test_canonical_json_sorts_keys_at_every_depth_and_drops_whitespace() -> None:
    source = {"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": None}}
    assert canonical_json(source) == b'{"a":{"x":null,"y":[1,{"p":1,"q":2}]},"b":1}'


def test_canonical_json_is_what_the_standard_encoder_writes() -> None:
    standard = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    values: list[object] = [
        {"f": 1.5, "g": -0.0, "h": 1e300, "i": 10**30, "j": float("nan"), "k": True,
         "l": None, "m": "tab\t\"quote\" é 🙂", "n": [], "o": {}},
        [1, "two", [3.25, {"z": 1, "a": 2}]],
        "text",
        7,
    ]
    for value in values:
        assert canonical_json(value) == standard.encode(value).encode("ascii")


def test_canonical_json_is_ascii_for_any_text() -> None:
    encoded = canonical_json({"name": "日本 🙂", "lone": "\ud800"})
    assert encoded.isascii()
    assert json.loads(encoded) == {"name": "日本 🙂", "lone": "\ud800"}


def test_key_order_does_not_change_the_digest() -> None:
    one = {"file": "a.txt", "size": 3, "tags": ["x", "y"], "meta": {"k": 1, "j": 2}}
    other = {"meta": {"j": 2, "k": 1}, "tags": ["x", "y"], "size": 3, "file": "a.txt"}
    assert source_digest(one) == source_digest(other)


# Changes of {"file": "a.txt", "size": 3} that every digest must see.
REAL_CHANGES: list[dict[str, object]] = [
    {"file": "a.txt", "size": 4},  # a value
    {"file": "a.txt", "size": 3, "new": None},  # a key, even with a null value
    {"file": "a.txt", "size": "3"},  # a type
    {"file": "a.txt", "size": 3.0},  # an integer turned float
    {"file": "a.txt"},  # a key removed
    {"file": "a.txt", "size": [3]},  # a value wrapped in an array
    {"file": "a.txt", "size": 3, "x": {}},  # an empty object added
    {"file": "a.txt", "size": 3, "x": []},  # an empty array added
    {"file": "a.txt", "size": 3, "x": False},  # false is not null
    {"file": "a.txt ", "size": 3},  # a trailing space
    {"file ": "a.txt", "size": 3},  # a key with a trailing space
]


@pytest.mark.parametrize("changed", REAL_CHANGES)
def test_any_real_change_changes_the_digest(changed: dict[str, object]) -> None:
    assert source_digest({"file": "a.txt", "size": 3}) != source_digest(changed)


def test_array_order_is_a_change() -> None:
    assert source_digest({"tags": ["x", "y"]}) != source_digest({"tags": ["y", "x"]})


def test_digest_is_128_bits_of_hex_and_stable() -> None:
    digest = source_digest({"a": 1})
    assert len(digest) == 32 and int(digest, 16) >= 0
    # Pinned: BLAKE2b-128 of the canonical JSON, the same on every run and machine.
    assert digest == hashlib.blake2b(b'{"a":1}', digest_size=16).hexdigest().encode()
    assert digest == b"2c6b113b8dd15ffbded9860b43eb0c6c"


# -- records and buckets ----------------------------------------------------------------------


def test_records_round_trip_odd_ids() -> None:
    records = [(doc_id, source_digest({"n": n})) for n, doc_id in enumerate(ODD_IDS)]
    assert list(iter_records(_bucket(records))) == records


def test_framing_bytes_never_occur_inside_ids_or_digests() -> None:
    for doc_id in [*ODD_IDS, "\u00fe\u00ff", "\ufeff"]:
        key = id_key(doc_id)
        assert diff.FIELD_SEP not in key and diff.RECORD_END not in key
    assert diff.FIELD_SEP not in source_digest({"a": 1})


def test_split_records_of_empty_data_is_empty() -> None:
    assert split_records(b"") == []


def test_bucket_of_is_stable_and_in_range() -> None:
    assert bucket_of(b"doc-1", 1) == 0
    assert bucket_of(b"doc-1", 97) == bucket_of(b"doc-1", 97)
    assert bucket_of(b"abc", 1 << 32) == 0x352441C2  # CRC-32 of "abc": same everywhere
    assert {bucket_of(str(i).encode(), 16) for i in range(1000)} == set(range(16))


def test_partition_puts_each_id_in_its_bucket_only() -> None:
    records = [(f"doc-{i}", b"d") for i in range(500)]
    parts = partition(records, 7)
    assert len(parts) == 7
    seen = []
    for number, part in enumerate(parts):
        for doc_id, _ in iter_records(part):
            assert bucket_of(id_key(doc_id), 7) == number
            seen.append(doc_id)
    assert sorted(seen) == sorted(doc_id for doc_id, _ in records)


@pytest.mark.parametrize(("docs", "expected"), [
    (0, 1), (1, 1), (50_000, 1), (50_001, 2), (1_000_000, 20), (10**12, diff.MAX_BUCKETS),
])
def test_bucket_count_keeps_buckets_near_the_target(docs: int, expected: int) -> None:
    assert bucket_count(docs) == expected


# -- comparing one bucket ---------------------------------------------------------------------


def test_identical_buckets_in_another_order_are_equal() -> None:
    records = [(f"d{i}", source_digest({"i": i})) for i in range(100)]
    assert compare_bucket(_bucket(records), _bucket(list(reversed(records)))) == \
        BucketDiff([], [], [])


def test_missing_extra_and_changed_are_told_apart() -> None:
    side_a = [("same", b"1"), ("gone", b"2"), ("edited", b"3")]
    side_b = [("edited", b"4"), ("same", b"1"), ("new", b"5")]
    result = compare_bucket(_bucket(side_a), _bucket(side_b))
    assert result == BucketDiff(missing=["gone"], extra=["new"], changed=["edited"])


def test_empty_sides() -> None:
    records = [("b", b"1"), ("a", b"2")]
    assert compare_bucket(b"", b"") == BucketDiff([], [], [])
    assert compare_bucket(_bucket(records), b"") == BucketDiff(["a", "b"], [], [])
    assert compare_bucket(b"", _bucket(records)) == BucketDiff([], ["a", "b"], [])


def test_an_id_twice_on_one_side_compares_as_a_multiset() -> None:
    # Custom routing can put one id in two shards of one index.
    once = [("x", b"1")]
    assert compare_bucket(_bucket(once * 2), _bucket(once)).changed == ["x"]
    assert compare_bucket(_bucket([("x", b"1"), ("x", b"2")]),
                          _bucket([("x", b"2"), ("x", b"1")])) == BucketDiff([], [], [])
    assert compare_bucket(_bucket([("x", b"1"), ("x", b"2")]),
                          _bucket([("x", b"1")])) == BucketDiff([], [], ["x"])


def test_odd_ids_survive_the_comparison() -> None:
    side_a = [(doc_id, b"1") for doc_id in ODD_IDS]
    side_b = [(doc_id, b"2" if doc_id.startswith("x") else b"1") for doc_id in ODD_IDS[1:]]
    result = compare_bucket(_bucket(side_a), _bucket(side_b))
    assert result.missing == ["plain"]
    assert result.changed == ["x" * 300]
    assert result.extra == []


def test_looking_up_a_few_ids_never_matches_part_of_another_id() -> None:
    side_a = [("doc-1", b"1"), ("doc-11", b"1"), ("xdoc-1", b"1"), ("doc-1x", b"1")]
    side_b = [("doc-11", b"2"), ("xdoc-1", b"1"), ("doc-1x", b"1"), ("doc-1", b"1")]
    assert compare_bucket(_bucket(side_a), _bucket(side_b)) == BucketDiff([], [], ["doc-11"])
    assert compare_bucket(_bucket(side_a[1:]), _bucket(side_b)) == \
        BucketDiff([], ["doc-1"], ["doc-11"])


def _reference(side_a: list[tuple[str, bytes]], side_b: list[tuple[str, bytes]]) -> BucketDiff:
    on_a: dict[str, list[bytes]] = {}
    on_b: dict[str, list[bytes]] = {}
    for doc_id, digest in side_a:
        on_a.setdefault(doc_id, []).append(digest)
    for doc_id, digest in side_b:
        on_b.setdefault(doc_id, []).append(digest)
    return BucketDiff(sorted(on_a.keys() - on_b.keys()), sorted(on_b.keys() - on_a.keys()),
                      sorted(k for k in on_a.keys() & on_b.keys()
                             if sorted(on_a[k]) != sorted(on_b[k])))


@pytest.mark.parametrize("few", [0, diff.FEW_DIFFERENCES])
def test_both_comparison_paths_agree_with_a_plain_reference(
        few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diff, "FEW_DIFFERENCES", few)
    rng = random.Random(few)
    for _ in range(200):
        ids = [f"d{rng.randrange(40)}" for _ in range(rng.randrange(0, 30))]
        side_a = [(doc_id, str(rng.randrange(3)).encode()) for doc_id in ids]
        side_b = [(doc_id, str(rng.randrange(3)).encode()) for doc_id in ids
                  if rng.random() < 0.8]
        side_b += [(f"d{rng.randrange(60)}", b"0") for _ in range(rng.randrange(3))]
        rng.shuffle(side_b)
        assert compare_bucket(_bucket(side_a), _bucket(side_b)) == _reference(side_a, side_b)


def test_ids_only_records_compare_by_id() -> None:
    assert compare_bucket(_bucket([("a", b""), ("b", b"")]),
                          _bucket([("b", b""), ("c", b"")])) == BucketDiff(["a"], ["c"], [])


# -- totals and truncation --------------------------------------------------------------------


def test_tally_keeps_exact_totals_and_at_most_max_ids() -> None:
    tally = DiffTally(max_ids=3)
    tally.add(BucketDiff(["m1", "m2"], ["e1"], []))
    tally.add(BucketDiff(["m3", "m4"], [], ["c1"]))
    assert (tally.missing_total, tally.extra_total, tally.changed_total) == (4, 1, 1)
    assert tally.missing == ["m1", "m2", "m3"]
    assert tally.extra == ["e1"] and tally.changed == ["c1"]


def test_tally_without_a_limit_keeps_everything_and_zero_keeps_nothing() -> None:
    unlimited, nothing = DiffTally(max_ids=None), DiffTally(max_ids=0)
    for tally in (unlimited, nothing):
        tally.add(BucketDiff([f"m{i}" for i in range(20_000)], [], []))
    assert len(unlimited.missing) == 20_000
    assert nothing.missing == [] and nothing.missing_total == 20_000


def test_result_json_and_equality() -> None:
    same = DiffResult(3, 3, [], [], [], 0, 0, 0, 0.5, index_a="a", index_b="b",
                      sum_buckets=16, differing_buckets=0)
    assert same.equal and not same.truncated
    assert same.to_json()["sum_buckets"] == 16 and same.to_json()["differing_buckets"] == 0
    changed = DiffResult(3, 2, ["x"], [], [], 2, 0, 0, 0.25)
    assert not changed.equal and changed.truncated
    body = changed.to_json()
    assert body["equal"] is False and body["missing"] == ["x"] and body["missing_total"] == 2
    assert body["truncated"] is True and body["seconds"] == 0.25
    json.dumps(body)


# -- read plans -------------------------------------------------------------------------------


def test_small_indices_are_not_sliced() -> None:
    assert slices_for(0, 4) == 1
    assert slices_for(9_999, 4) == 1
    assert slices_for(25_000, 4) == 3
    assert slices_for(10**6, 4) == 4


def test_elasticsearch_reads_a_point_in_time_sliced_inside_shards() -> None:
    assert read_plan("elasticsearch", shards=1, docs=10**6, slices=4) == \
        ReadPlan("pit", 4, "_shard_doc")
    assert read_plan("elasticsearch", shards=5, docs=10, slices=4) == \
        ReadPlan("pit", 1, "_shard_doc")


def test_opensearch_scrolls_one_slice_per_shard() -> None:
    assert read_plan("opensearch", shards=1, docs=10**6, slices=4) == ReadPlan("scroll", 1, "_doc")
    assert read_plan("opensearch", shards=3, docs=10, slices=1) == ReadPlan("scroll", 3, "_doc")


def test_page_body_per_mode() -> None:
    one = ReadPlan("scroll", 1, "_doc")
    ids = page_body("ids", one, 0, count=True)
    assert ids["_source"] is False and "slice" not in ids and "script_fields" not in ids
    assert "pit" not in ids and ids["sort"] == ["_doc"]
    assert ids["track_total_hits"] is True and "search_after" not in ids
    sliced = ReadPlan("pit", 3, "_shard_doc")
    client = page_body("client", sliced, 2, 500, pit_id="PIT", search_after=[7])
    assert client["_source"] is True and client["slice"] == {"id": 2, "max": 3}
    assert client["search_after"] == [7] and client["size"] == 500
    assert client["pit"]["id"] == "PIT" and client["track_total_hits"] is False
    server = page_body("server", one, 0)
    script = server["script_fields"][diff.DIGEST_FIELD]["script"]
    assert server["_source"] is False and script["source"] == diff.PAINLESS_DIGEST
    assert "query" not in server
    restricted = page_body("ids", one, 0, query={"term": {"x": 1}})
    assert restricted["query"] == {"term": {"x": 1}}


def test_filter_paths_keep_what_the_reader_uses() -> None:
    assert filter_path("client", "scroll") is None  # whole sources are not filtered
    scroll = str(filter_path("ids", "scroll")).split(",")
    assert "_scroll_id" in scroll and "hits.hits._id" in scroll and "hits.total" in scroll
    assert "hits.hits.fields" not in scroll and "_shards.failed" in scroll
    pit = str(filter_path("server", "pit")).split(",")
    assert {"pit_id", "hits.hits.sort", "hits.hits.fields"} <= set(pit)


def test_only_large_client_side_hashing_uses_processes() -> None:
    assert reader_processes("client", docs=1_000_000, jobs=8, cpus=2) == 2
    assert reader_processes("client", docs=1_000_000, jobs=1, cpus=8) == 1
    assert reader_processes("client", docs=1_000, jobs=8, cpus=8) == 0  # start costs more
    assert reader_processes("server", docs=10**7, jobs=8, cpus=8) == 0  # the cluster hashes
    assert reader_processes("ids", docs=10**7, jobs=8, cpus=8) == 0
    assert reader_processes("client", docs=10**7, jobs=8, cpus=1) == 0
    assert reader_processes("client", docs=10**7, jobs=8, cpus=None) == 0


# -- the cluster's digest, specified in Python --------------------------------------------------


def test_cluster_digest_ignores_key_order_at_every_depth() -> None:
    one = {"file": "a.txt", "size": 3, "tags": ["x", {"k": 1, "j": [1.5, None]}],
           "meta": {"k": 1, "j": {"z": True, "y": "日本"}}}
    other = {"meta": {"j": {"y": "日本", "z": True}, "k": 1}, "size": 3,
             "tags": ["x", {"j": [1.5, None], "k": 1}], "file": "a.txt"}
    assert cluster_digest(one) == cluster_digest(other)


@pytest.mark.parametrize("changed", [
    *REAL_CHANGES,
    {"file": "a.txt", "size": 3 + 2**64},  # beyond 64 bits is not 3
])
def test_any_real_change_changes_the_cluster_digest(changed: dict[str, object]) -> None:
    assert cluster_digest({"file": "a.txt", "size": 3}) != cluster_digest(changed)


def test_cluster_digest_tells_apart_what_json_does() -> None:
    values: list[object] = [None, True, False, 0, 1, -1, 0.0, -0.0, 1.0, "", "0", "null", [],
                            {}, [None], [[]], {"": None}, {"a": "b"}, {"a": {"b": None}},
                            ["a", "b"], ["ab"], ["b", "a"], 2**63 - 1, -(2**63), 2**63,
                            "x" * 7, "x" * 8, "x" * 9, "x" * 16, "\ud800", "🙂", b"\x01",
                            "AQ=="]
    digests = [cluster_digest(value) for value in values]
    assert len(set(digests)) == len(values)


def test_cluster_digest_objects_are_sums_of_their_entries() -> None:
    # Moving entries between nested objects must not cancel out.
    one = {"a": {"x": 1}, "b": {"y": 2}}
    other = {"a": {"y": 2}, "b": {"x": 1}}
    assert cluster_digest(one) != cluster_digest(other)
    assert cluster_digest({"a": 1, "b": 1}) != cluster_digest({"a": 2, "b": 0})


def test_cluster_digest_is_pinned() -> None:
    # The painless computes exactly this (checked against a node in the integration tests).
    assert cluster_digest({"a": 1}) == "4078158bf1733f6b.4b202b5ceb75e826"


def test_a_document_adds_its_id_and_its_source() -> None:
    source = {"v": 1}
    assert sum_element("a", source) != sum_element("b", source)
    assert sum_element("a", source) != sum_element("a", {"v": 2})
    assert sum_element("a", source, sources=False) == sum_element("a", {"v": 2}, sources=False)
    assert sum_element("a", source, sources=False) != sum_element("a", source)
    assert all(0 <= half < 2**64 for half in sum_element("ünï-🙂", source))


def test_sum_bucket_follows_java_string_hash() -> None:
    # Java's "abc".hashCode() is 96354, "" is 0; both mixed by MurmurHash3's fmix64.
    assert diff._java_string_hash("abc") == 96354
    assert diff._java_string_hash("") == 0
    assert diff._java_string_hash("🙂") == 0xD83D * 31 + 0xDE42
    assert diff._java_string_hash("polygenelubricants") == -(2**31)  # a Java int's overflow
    assert sum_bucket("abc", 1 << 62) == diff._fmix(96354) >> 1 & ((1 << 62) - 1)
    assert {sum_bucket(f"doc-{i}", 16) for i in range(1_000)} == set(range(16))
    assert all(0 <= sum_bucket(doc_id, 7) < 7 for doc_id in ODD_IDS)


@pytest.mark.parametrize(("docs", "expected"), [
    (0, 1), (1, 1), (128, 1), (129, 2), (1_000_000, 7813), (10**12, diff.MAX_SUM_BUCKETS),
])
def test_sum_bucket_count(docs: int, expected: int) -> None:
    assert sum_bucket_count(docs) == expected


# -- bucket sums ------------------------------------------------------------------------------


def _files(count: int) -> dict[str, dict[str, object]]:
    return {f"doc-{i}": {"path": f"usr/lib/{i}.so", "size": i, "tags": ["a", f"t{i % 3}"]}
            for i in range(count)}


def test_sums_single_out_the_bucket_of_a_changed_doc() -> None:
    docs = _files(1_000)
    changed = {**docs, "doc-500": {**docs["doc-500"], "size": -1}}
    assert differing_buckets(sums_of(docs.items(), 64), sums_of(changed.items(), 64)) == \
        [sum_bucket("doc-500", 64)]


def test_sums_do_not_see_key_order_or_document_order() -> None:
    docs = _files(300)
    reordered = [(doc_id, dict(reversed(list(source.items()))))
                 for doc_id, source in reversed(list(docs.items()))]
    assert sums_of(docs.items(), 32) == sums_of(reordered, 32)


def test_sums_see_missing_extra_and_swapped_sources() -> None:
    docs = _files(200)
    without = {k: v for k, v in docs.items() if k != "doc-7"}
    assert differing_buckets(sums_of(docs.items(), 8), sums_of(without.items(), 8)) == \
        [sum_bucket("doc-7", 8)]
    # One bucket: two documents trade sources; counts and per-source sums alike, ids not.
    swapped = {**docs, "doc-1": docs["doc-2"], "doc-2": docs["doc-1"]}
    assert differing_buckets(sums_of(docs.items(), 1), sums_of(swapped.items(), 1)) == [0]
    ids_only = [sums_of(d.items(), 1, sources=False) for d in (docs, swapped)]
    assert differing_buckets(*ids_only) == []


def test_sums_count_an_id_twice() -> None:
    # Custom routing can hold one id twice: the count tells.
    docs = list(_files(10).items())
    assert differing_buckets(sums_of(docs, 4), sums_of([*docs, docs[3]], 4)) == \
        [sum_bucket(docs[3][0], 4)]


def test_bucket_sums_from_the_cluster_answer() -> None:
    value = {"c": [1, 0], "a": [-1, 5], "b": [2, -(2**63)]}
    sums = BucketSums.of_value(value, 2)
    assert sums.counts == (1, 0) and sums.first == (2**64 - 1, 5)
    assert sums.second == (2, 2**63) and sums.total == 1
    assert BucketSums.of_value(None, 3) == BucketSums.empty(3)
    with pytest.raises(ClusterError, match="shape"):
        BucketSums.of_value({"c": [1], "a": [1], "b": [1]}, 2)
    with pytest.raises(ClusterError, match="shape"):
        BucketSums.of_value({"c": [1, 2]}, 2)


def test_bucket_sums_add_up_modulo_2_to_the_64() -> None:
    one = BucketSums((1, 2), (2**64 - 1, 3), (5, 2**63))
    two = BucketSums((3, 0), (2, 0), (0, 2**63))
    assert one.plus(two) == BucketSums((4, 2), (1, 3), (5, 0))
    # Summed in parts (requests over _seq_no ranges), the total is the same.
    docs = list(_files(100).items())
    assert sums_of(docs[:40], 8).plus(sums_of(docs[40:], 8)) == sums_of(docs, 8)


@pytest.mark.parametrize(("top", "parts"), [(-1, 3), (0, 1), (0, 5), (9, 1), (9, 3), (99, 7),
                                            (5, 100)])
def test_seq_no_ranges_cover_every_value_once(top: int, parts: int) -> None:
    ranges = seq_no_ranges(top, parts)
    assert ranges[0][0] is None and ranges[-1][1] is None
    for seq_no in range(-3, top + 5):
        assert sum(1 for low, high in ranges
                   if (low is None or seq_no >= low) and (high is None or seq_no < high)) == 1
    assert len(ranges) == max(1, min(parts, top + 1))


def test_sums_body() -> None:
    whole = sums_body(16, sources=True)
    metric = whole["aggs"]["sums"]["scripted_metric"]
    assert whole["size"] == 0 and whole["track_total_hits"] is True and "query" not in whole
    assert metric["params"] == {"k": 16, "sources": True}
    assert metric["map_script"]["source"] == diff.SUMS_MAP
    part = sums_body(16, sources=False, seq_range=(10, None))
    assert part["query"] == {"range": {"_seq_no": {"gte": 10}}}
    assert part["aggs"]["sums"]["scripted_metric"]["params"]["sources"] is False
    assert sums_body(4, sources=True, seq_range=(None, 5))["query"] == \
        {"range": {"_seq_no": {"lt": 5}}}


def test_bucket_filter_marks_the_differing_buckets() -> None:
    query = bucket_filter([1, 3], 5)
    assert query is not None
    script = query["bool"]["filter"]["script"]["script"]
    assert script["params"] == {"m": "01010", "k": 5}
    assert script["source"] == diff.BUCKET_FILTER
    assert bucket_filter(range(5), 5) is None  # every bucket: read everything, unfiltered


def test_painless_scripts_stay_small() -> None:
    # The cluster refuses script sources over 64 KB (script.max_size_in_bytes).
    for script in (diff.PAINLESS_DIGEST, diff.SUMS_MAP, diff.SUMS_REDUCE, diff.BUCKET_FILTER):
        assert len(script.encode()) < 16_000
