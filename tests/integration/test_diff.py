"""The exact diff against a real node: what it finds, odd ids and sources, paging and slices."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from indexshift import diff
from indexshift.cluster import Cluster
from indexshift.diff import (
    PAINLESS_DIGEST,
    PAINLESS_LIBRARY,
    BucketSums,
    DiffResult,
    cluster_digest,
    diff_indices,
    iter_ids,
    painless_everywhere,
    sum_bucket,
    sums_body,
    sums_of,
)
from indexshift.errors import BadInput, Rejected

pytestmark = pytest.mark.cluster

Docs = dict[str, dict[str, Any]]


def _make(cluster: Cluster, index: str, docs: Docs, *, shards: int = 1,
          mappings: dict[str, Any] | None = None) -> None:
    body: dict[str, Any] = {"settings": {"number_of_shards": shards, "number_of_replicas": 0}}
    if mappings is not None:
        body["mappings"] = mappings
    cluster.create_index(index, body)
    items = list(docs.items())
    for start in range(0, len(items), 5_000):
        result = cluster.bulk_index(index, items[start:start + 5_000])
        assert result.failed == 0, result.first_error
    cluster.refresh(index)


def _file_docs(count: int, prefix: str = "doc") -> Docs:
    return {f"{prefix}-{i}": {"path": f"usr/lib/{i % 97}/file-{i}.so", "size": i * 7,
                              "tags": ["lib", f"t{i % 5}"], "owner": {"uid": i % 3, "gid": 0}}
            for i in range(count)}


def _summary(result: DiffResult) -> tuple[list[str], list[str], list[str]]:
    return sorted(result.missing), sorted(result.extra), sorted(result.changed)


def test_equal_indices_are_equal(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(500)
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", docs)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert result.equal
    assert (result.count_a, result.count_b) == (500, 500)
    assert (result.missing_total, result.extra_total, result.changed_total) == (0, 0, 0)
    assert result.to_json()["equal"] is True


def test_missing_extra_and_changed_are_found_exactly(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(300)
    changed_docs = {**docs}
    for doc_id in ("doc-1", "doc-2", "doc-3"):
        del changed_docs[doc_id]
    changed_docs["doc-10"] = {**docs["doc-10"], "size": -1}
    changed_docs["doc-11"] = {**docs["doc-11"], "owner": {"uid": 9, "gid": 0}}
    changed_docs["doc-12"] = {**docs["doc-12"], "tags": list(reversed(docs["doc-12"]["tags"]))}
    changed_docs["doc-13"] = {**docs["doc-13"], "note": None}
    changed_docs["new-1"] = {"path": "usr/new", "size": 1}
    changed_docs["new-2"] = {"path": "usr/new2", "size": 2}
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", changed_docs)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == (["doc-1", "doc-2", "doc-3"], ["new-1", "new-2"],
                                ["doc-10", "doc-11", "doc-12", "doc-13"])
    assert (result.missing_total, result.extra_total, result.changed_total) == (3, 2, 4)
    assert (result.count_a, result.count_b) == (300, 299)
    assert not result.equal


def test_odd_ids_are_compared_exactly(cluster: Cluster, alias_name: str) -> None:
    odd = ["with space", "slash/and/more", "back\\slash", "hash#frag", "query?x=1&y=2",
           "percent%20", "ünïcödé-日本語-🙂", "quote\"'", "plus+colon:semi;", "x" * 300,
           "tab\tnewline\n", "."]
    docs = {doc_id: {"n": n} for n, doc_id in enumerate(odd)}
    other = {doc_id: {"n": n} for n, doc_id in enumerate(odd) if doc_id != "hash#frag"}
    other["query?x=1&y=2"] = {"n": 100}
    other["ünïcödé-日本語-🙂"] = {"n": 101}
    other["extra/ünï #?"] = {"n": 102}
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", other)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == (["hash#frag"], ["extra/ünï #?"],
                                sorted(["query?x=1&y=2", "ünïcödé-日本語-🙂"]))
    assert result.count_a == len(odd)


def test_key_order_is_not_a_change_but_nested_values_and_arrays_are(
        cluster: Cluster, alias_name: str) -> None:
    docs: Docs = {
        "flat": {"a": 1, "b": "two", "c": True},
        "nested": {"outer": {"inner": {"x": 1, "y": [1, 2, 3]}, "z": "s"}, "k": 0.5},
        "arrays": {"items": [{"name": "a", "qty": 1}, {"name": "b", "qty": 2}]},
        "deep-change": {"outer": {"inner": {"x": 1}}},
        "array-change": {"items": [{"name": "a", "qty": 1}]},
    }
    reordered: Docs = {
        "flat": {"c": True, "b": "two", "a": 1},
        "nested": {"k": 0.5, "outer": {"z": "s", "inner": {"y": [1, 2, 3], "x": 1}}},
        "arrays": {"items": [{"qty": 1, "name": "a"}, {"qty": 2, "name": "b"}]},
        "deep-change": {"outer": {"inner": {"x": 2}}},
        "array-change": {"items": [{"name": "a", "qty": 1}, {"name": "a", "qty": 1}]},
    }
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", reordered)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == ([], [], ["array-change", "deep-change"])


def test_both_digest_sites_find_the_same(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(200)
    other = {**docs, "doc-5": {**docs["doc-5"], "size": 0}}
    other["doc-6"] = dict(reversed(list(docs["doc-6"].items())))  # key order only
    del other["doc-7"]
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", other)
    painless = painless_everywhere(cluster)
    auto = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert auto.digest == ("server" if painless else "client")
    sites = ["client", "server"] if painless else ["client"]
    for site in sites:
        result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b",
                              digest=site)  # type: ignore[arg-type]
        assert result.digest == site
        assert _summary(result) == (["doc-7"], [], ["doc-5"]), site


def test_empty_indices(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", {})
    _make(cluster, f"{alias_name}-b", {})
    _make(cluster, f"{alias_name}-c", {"only": {"v": 1}})
    assert diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b").equal
    against_full = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-c")
    assert _summary(against_full) == ([], ["only"], [])
    assert (against_full.count_a, against_full.count_b) == (0, 1)
    full_against = diff_indices(cluster, f"{alias_name}-c", f"{alias_name}-a", ids_only=True)
    assert _summary(full_against) == (["only"], [], [])


def test_one_doc(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", {"1": {"v": 1}})
    _make(cluster, f"{alias_name}-b", {"1": {"v": 1}})
    _make(cluster, f"{alias_name}-c", {"1": {"v": 2}})
    assert diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b").equal
    assert _summary(diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-c")) == \
        ([], [], ["1"])


def test_ids_only_ignores_content(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(100)
    other = {doc_id: {**source, "size": -1} for doc_id, source in docs.items()
             if doc_id != "doc-0"}
    other["late"] = {"size": 1}
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", other)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", ids_only=True)
    assert _summary(result) == (["doc-0"], ["late"], [])
    assert result.ids_only and result.digest == "none" and result.changed_total == 0
    full = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert full.changed_total == 99


@pytest.mark.parametrize("sums", [True, False])
def test_many_pages_several_slices_and_different_shard_counts(
        cluster: Cluster, alias_name: str, sums: bool) -> None:
    docs = _file_docs(25_000)
    other = dict(docs)
    deleted = [f"doc-{i}" for i in (0, 4_999, 10_000, 17_321, 24_999)]
    for doc_id in deleted:
        del other[doc_id]
    changed = [f"doc-{i}" for i in (1, 12_345, 20_000)]
    for doc_id in changed:
        other[doc_id] = {**docs[doc_id], "size": -5}
    added = [f"added-{i}" for i in range(4)]
    other.update({doc_id: {"path": doc_id, "size": 0} for doc_id in added})
    _make(cluster, f"{alias_name}-a", docs, shards=3)
    _make(cluster, f"{alias_name}-b", other, shards=1)
    progress: list[int] = []
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", slices=4,
                          buckets=8, progress=progress.append, bucket_sums=sums)
    assert _summary(result) == (sorted(deleted), sorted(added), sorted(changed))
    assert (result.count_a, result.count_b) == (25_000, 24_999)
    assert progress[-1] == 25_000 + 24_999
    assert progress == sorted(progress)
    ids = diff_indices(cluster, f"{alias_name}-b", f"{alias_name}-a", ids_only=True, slices=2,
                       bucket_sums=sums)
    assert _summary(ids) == (sorted(added), sorted(deleted), [])


def test_reader_processes_find_the_same(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(3_000)
    other = {k: v for k, v in docs.items() if k != "doc-7"}
    other["doc-8"] = {**docs["doc-8"], "size": -8}
    other["doc-9"] = dict(reversed(list(docs["doc-9"].items())))
    _make(cluster, f"{alias_name}-a", docs, shards=2)
    _make(cluster, f"{alias_name}-b", other)
    progress: list[int] = []
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", digest="client",
                          processes=2, page_size=500, progress=progress.append)
    assert _summary(result) == (["doc-7"], [], ["doc-8"])
    assert (result.count_a, result.count_b) == (3_000, 2_999)
    assert progress[-1] == 5_999


def test_small_pages_across_shards(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(700)
    other = {k: v for k, v in docs.items() if k != "doc-350"}
    _make(cluster, f"{alias_name}-a", docs, shards=4)
    _make(cluster, f"{alias_name}-b", other, shards=2)
    for slices, sums in ((1, True), (1, False), (3, False)):
        result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", slices=slices,
                              page_size=64, bucket_sums=sums)
        assert _summary(result) == (["doc-350"], [], [])
        assert (result.count_a, result.count_b) == (700, 699)


def test_an_alias_over_two_indices_is_one_side(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(400)
    first = {k: v for k, v in docs.items() if int(k.split("-")[1]) % 2 == 0}
    second = {k: v for k, v in docs.items() if int(k.split("-")[1]) % 2 == 1}
    _make(cluster, f"{alias_name}-p1", first, shards=2)
    _make(cluster, f"{alias_name}-p2", second)
    cluster.update_aliases([{"add": {"index": f"{alias_name}-p1", "alias": f"{alias_name}-all"}},
                            {"add": {"index": f"{alias_name}-p2", "alias": f"{alias_name}-all"}}])
    _make(cluster, f"{alias_name}-whole", docs, shards=3)
    result = diff_indices(cluster, f"{alias_name}-all", f"{alias_name}-whole", page_size=50)
    assert result.equal and result.count_a == 400


def test_a_filtered_alias_is_refused(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", {"1": {"v": 1}, "2": {"v": 2}})
    cluster.update_aliases([{"add": {"index": f"{alias_name}-a", "alias": f"{alias_name}-f",
                                     "filter": {"term": {"v": 1}}}}])
    with pytest.raises(BadInput, match="filters"):
        diff_indices(cluster, f"{alias_name}-f", f"{alias_name}-a")


def test_lists_are_truncated_but_totals_exact(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", _file_docs(50))
    _make(cluster, f"{alias_name}-b", _file_docs(3))
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", max_ids=10)
    assert result.missing_total == 47 and len(result.missing) == 10
    assert result.to_json()["truncated"] is True
    everything = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", max_ids=None)
    assert len(everything.missing) == 47


def test_bucket_files_are_removed(cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    _make(cluster, f"{alias_name}-a", _file_docs(100))
    _make(cluster, f"{alias_name}-b", _file_docs(90))
    spill = tmp_path / "spill"
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", spill_dir=spill,
                          buckets=5)
    assert result.missing_total == 10 and result.buckets == 5
    assert spill.is_dir() and list(spill.iterdir()) == []


def test_unknown_index_is_bad_input(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", {"1": {"v": 1}})
    with pytest.raises(BadInput, match="does not exist"):
        diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-nope")
    with pytest.raises(BadInput, match="slices"):
        diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-a", slices=0)


def test_without_source_only_ids_compare(cluster: Cluster, alias_name: str) -> None:
    mappings = {"_source": {"enabled": False}, "properties": {"v": {"type": "long"}}}
    _make(cluster, f"{alias_name}-a", {"1": {"v": 1}, "2": {"v": 2}}, mappings=mappings)
    _make(cluster, f"{alias_name}-b", {"1": {"v": 1}})
    with pytest.raises(BadInput, match="_source"):
        diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", ids_only=True)
    assert _summary(result) == (["2"], [], [])


# -- the first pass: bucket sums in the cluster ---------------------------------------------

# Sources that exercise every branch of the cluster's digest: nesting, arrays, floats, big and
# negative numbers, booleans, nulls, text beyond ASCII, and strings across block boundaries.
TRICKY: Docs = {
    "empty": {},
    "short": {"one": 1},
    "seven": {"k": "abcdefg"},
    "eight": {"k": "abcdefgh"},
    "nine": {"k": "abcdefghi"},
    "mixed": {"b": [1, 2, 3], "a": {"z": None, "y": True, "x": False}, "c": "日本語 🙂",
              "Z": "upper before lower", "é": "beyond ascii"},
    "long": {"text": "lorem ipsum " * 40, "n": -123456789012, "list": [[1], [2, [3]]]},
    "numbers": {"float": 1.5, "neg": -0.25, "int_float": 2.0, "tiny": 1e-300, "big": 1.7e308,
                "zero": 0, "max": 2**63 - 1, "min": -(2**63), "huge": 10**30, "minus_zero": -0.0},
    "deep": {"l1": {"l2": {"l3": {"l4": [{"a": [1.25, {"b": None}]}, [], {}]}}}},
    "ünïcödé-id-日本語": {"名前": "値", "emoji 🙂": ["🙂", "x"]},
}
# Kept, never indexed: a long beyond 64 bits or a float near its limit fits no numeric field.
UNMAPPED = {"dynamic": False}


def _sides_differ_only_in(cluster: Cluster, result: DiffResult, expected: int) -> None:
    """On a cluster that sums (OpenSearch), exactly ``expected`` buckets were read."""
    if painless_everywhere(cluster):
        assert result.sum_buckets > 0
        assert result.differing_buckets == expected
    else:
        assert result.sum_buckets == 0


def test_cluster_digest_is_the_specified_one(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", TRICKY, mappings=UNMAPPED)
    if not painless_everywhere(cluster):
        # Without painless the cluster refuses the digest script, and asking for it is an
        # error, never a silent switch (auto hashes here instead, as tested above).
        with pytest.raises(Rejected, match="painless"):
            diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-a", digest="server")
        return
    script = {"script": {"lang": "painless", "source": PAINLESS_DIGEST}}
    bucket = {"script": {"lang": "painless",
                         "source": PAINLESS_LIBRARY + "return bucket(doc['_id'].value, 97);"}}
    body = cluster.search(f"{alias_name}-a", {"size": 20, "_source": False,
                                              "script_fields": {"d": script, "b": bucket}})
    hits = body["hits"]["hits"]
    assert {hit["_id"]: hit["fields"]["d"][0] for hit in hits} == \
        {doc_id: cluster_digest(source) for doc_id, source in TRICKY.items()}
    assert {hit["_id"]: hit["fields"]["b"][0] for hit in hits} == \
        {doc_id: sum_bucket(doc_id, 97) for doc_id in TRICKY}


@pytest.mark.parametrize("sources", [True, False])
def test_cluster_bucket_sums_are_the_specified_ones(cluster: Cluster, alias_name: str,
                                                   sources: bool) -> None:
    docs = {**TRICKY, **_file_docs(300)}
    _make(cluster, f"{alias_name}-a", docs, shards=2, mappings=UNMAPPED)
    if not painless_everywhere(cluster):
        # No scripts, no sums: the diff hears the refusal and reads every record instead.
        with pytest.raises(Rejected):
            cluster.request("POST", f"/{alias_name}-a/_search", body=sums_body(7, sources=sources))
        return
    page = cluster.request("POST", f"/{alias_name}-a/_search",
                           body=sums_body(7, sources=sources), params={"request_cache": False})
    answered = BucketSums.of_value(page["aggregations"]["sums"]["value"], 7)
    assert answered == sums_of(docs.items(), 7, sources=sources)
    assert answered.total == len(docs)


def test_sums_find_a_single_changed_doc(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(2_000)
    other = {**docs, "doc-1234": {**docs["doc-1234"], "size": 0}}
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", other, shards=2)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == ([], [], ["doc-1234"])
    assert (result.count_a, result.count_b) == (2_000, 2_000)
    _sides_differ_only_in(cluster, result, 1)
    ids = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", ids_only=True)
    assert ids.equal and ids.differing_buckets == 0


def test_reordered_keys_and_nested_values_count_as_equal(cluster: Cluster,
                                                         alias_name: str) -> None:
    reordered = {doc_id: _reversed_keys(source) for doc_id, source in TRICKY.items()}
    _make(cluster, f"{alias_name}-a", TRICKY, mappings=UNMAPPED)
    _make(cluster, f"{alias_name}-b", reordered, mappings=UNMAPPED)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert result.equal
    _sides_differ_only_in(cluster, result, 0)


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


@pytest.mark.parametrize("change", ["float", "deep null", "array item", "int to float",
                                    "minus zero", "key renamed"])
def test_sums_see_changes_deep_inside(cluster: Cluster, alias_name: str, change: str) -> None:
    docs = {**TRICKY, **_file_docs(50)}
    changed: dict[str, Any] = {
        "float": {**TRICKY["numbers"], "float": 1.5000000000000002},
        "deep null": {"l1": {"l2": {"l3": {"l4": [{"a": [1.25, {"b": 0}]}, [], {}]}}}},
        "array item": {**TRICKY["mixed"], "b": [1, 3, 2]},
        "int to float": {**TRICKY["numbers"], "zero": 0.0},
        "minus zero": {**TRICKY["numbers"], "minus_zero": 0.0},
        "key renamed": {"名前 ": "値", "emoji 🙂": ["🙂", "x"]},
    }[change]
    doc_id = {"float": "numbers", "deep null": "deep", "array item": "mixed",
              "int to float": "numbers", "minus zero": "numbers",
              "key renamed": "ünïcödé-id-日本語"}[change]
    _make(cluster, f"{alias_name}-a", docs, mappings=UNMAPPED)
    _make(cluster, f"{alias_name}-b", {**docs, doc_id: changed}, mappings=UNMAPPED)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == ([], [], [doc_id])
    _sides_differ_only_in(cluster, result, 1)


def test_sums_with_unicode_ids(cluster: Cluster, alias_name: str) -> None:
    ids = ["ünïcödé-1", "日本語/2", "emoji-🙂-3", "tab\tquote\"4", "ascii-5", "Ω≈ç√∫-6"]
    docs = {doc_id: {"n": n, "name": doc_id} for n, doc_id in enumerate(ids)}
    other = {doc_id: source for doc_id, source in docs.items() if doc_id != "日本語/2"}
    other["emoji-🙂-3"] = {"n": 99, "name": "emoji-🙂-3"}
    other["новый-7"] = {"n": 7}
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", other)
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert _summary(result) == (["日本語/2"], ["новый-7"], ["emoji-🙂-3"])
    ids_only = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", ids_only=True)
    assert _summary(ids_only) == (["日本語/2"], ["новый-7"], [])


def test_sums_with_one_side_empty_or_both(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(40)
    _make(cluster, f"{alias_name}-full", docs)
    _make(cluster, f"{alias_name}-empty", {})
    _make(cluster, f"{alias_name}-void", {})
    for ids_only in (False, True):
        gone = diff_indices(cluster, f"{alias_name}-full", f"{alias_name}-empty",
                            ids_only=ids_only, max_ids=None)
        assert _summary(gone) == (sorted(docs), [], [])
        assert (gone.count_a, gone.count_b) == (40, 0)
        new = diff_indices(cluster, f"{alias_name}-empty", f"{alias_name}-full",
                           ids_only=ids_only, max_ids=None)
        assert _summary(new) == ([], sorted(docs), [])
        nothing = diff_indices(cluster, f"{alias_name}-empty", f"{alias_name}-void",
                               ids_only=ids_only)
        assert nothing.equal and (nothing.count_a, nothing.count_b) == (0, 0)


def test_few_buckets_many_docs_each(cluster: Cluster, alias_name: str) -> None:
    # Two buckets for 3,000 documents: the second pass reads about half of each side and
    # must still single out exactly what differs.
    docs = _file_docs(3_000)
    other = {k: v for k, v in docs.items() if k not in ("doc-5", "doc-2500")}
    other["doc-77"] = {**docs["doc-77"], "tags": ["lib"]}
    other["late"] = {"path": "late", "size": 1}
    _make(cluster, f"{alias_name}-a", docs, shards=3)
    _make(cluster, f"{alias_name}-b", other)
    for sum_buckets in (1, 2, 4096):
        result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b",
                              sum_buckets=sum_buckets, page_size=500)
        assert _summary(result) == (["doc-2500", "doc-5"], ["late"], ["doc-77"]), sum_buckets
        assert (result.count_a, result.count_b) == (3_000, 2_999)


def test_a_side_summed_in_several_requests_adds_up(cluster: Cluster, alias_name: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Ranges of _seq_no split each side (and each shard of it) into requests that add up.
    monkeypatch.setattr(diff, "SUM_DOCS_PER_REQUEST", 700)
    docs = _file_docs(4_000)
    other = {k: v for k, v in docs.items() if k != "doc-3999"}
    other["doc-0"] = {**docs["doc-0"], "size": -1}
    _make(cluster, f"{alias_name}-a", docs, shards=3)
    _make(cluster, f"{alias_name}-b", other)
    cluster.put_doc(f"{alias_name}-b", "doc-10", docs["doc-10"])  # a new _seq_no, same doc
    cluster.refresh(f"{alias_name}-b")
    progress: list[int] = []
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", progress=progress.append)
    assert _summary(result) == (["doc-3999"], [], ["doc-0"])
    assert (result.count_a, result.count_b) == (4_000, 3_999)
    assert progress == sorted(progress) and progress[-1] == 7_999
    if painless_everywhere(cluster):
        assert len(progress) >= 2 * 5  # at least five requests a side


def test_with_and_without_sums_the_same(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(1_500)
    other = {k: v for k, v in docs.items() if k != "doc-3"}
    other["doc-4"] = {**docs["doc-4"], "owner": {"uid": 1, "gid": 1}}
    other["doc-6"] = _reversed_keys(docs["doc-6"])
    other["new"] = {"path": "new"}
    _make(cluster, f"{alias_name}-a", docs, shards=2)
    _make(cluster, f"{alias_name}-b", other, shards=3)
    for ids_only in (False, True):
        results = [diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b",
                                ids_only=ids_only, bucket_sums=sums) for sums in (True, False)]
        assert _summary(results[0]) == _summary(results[1])
        assert _summary(results[0]) == (["doc-3"], ["new"], [] if ids_only else ["doc-4"])
        assert [(r.count_a, r.count_b) for r in results] == [(1_500, 1_500)] * 2
        assert results[1].sum_buckets == 0 and results[1].buckets > 0


def test_sums_leave_no_id_fielddata_behind(cluster: Cluster, alias_name: str) -> None:
    _make(cluster, f"{alias_name}-a", _file_docs(500))
    _make(cluster, f"{alias_name}-b", _file_docs(499))
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b")
    assert result.missing == ["doc-499"]
    # OpenSearch 3 clears fielddata asynchronously: wait (bounded) until the heap is freed.
    deadline = time.monotonic() + 120
    held = {"a": -1, "b": -1}
    while any(held.values()) and time.monotonic() < deadline:
        held = {side: cluster.fielddata_bytes(f"{alias_name}-{side}", "_id")
                for side in ("a", "b")}
        if any(held.values()):
            time.sleep(0.5)
    assert held == {"a": 0, "b": 0}


def test_a_cluster_that_refuses_sums_still_gets_the_exact_diff(cluster: Cluster,
                                                               alias_name: str) -> None:
    # Asking for scripts where there are none (the Elasticsearch sandbox) makes the first
    # pass fail; an ids-only diff needs no script, so it reads every record instead.
    docs = _file_docs(200)
    _make(cluster, f"{alias_name}-a", docs)
    _make(cluster, f"{alias_name}-b", {k: v for k, v in docs.items() if k != "doc-9"})
    result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", ids_only=True,
                          digest="server")
    assert _summary(result) == (["doc-9"], [], [])
    assert (result.count_a, result.count_b) == (200, 199)
    if painless_everywhere(cluster):
        assert result.sum_buckets > 0
    else:
        assert result.sum_buckets == 0 and result.buckets > 0



def test_iter_ids_reads_every_id_once_across_pages(cluster: Cluster, alias_name: str) -> None:
    docs = _file_docs(250)
    _make(cluster, f"{alias_name}-a", docs)
    ids = list(iter_ids(cluster, f"{alias_name}-a", page_size=100))
    assert sorted(ids) == sorted(docs) and len(ids) == len(set(ids))
