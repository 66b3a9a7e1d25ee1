"""The exact diff against a real node: what it finds, odd ids and sources, paging and slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from indexshift.cluster import Cluster
from indexshift.diff import PAINLESS_DIGEST, DiffResult, diff_indices, painless_everywhere
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


def test_many_pages_several_slices_and_different_shard_counts(
        cluster: Cluster, alias_name: str) -> None:
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
                          buckets=8, progress=progress.append)
    assert _summary(result) == (sorted(deleted), sorted(added), sorted(changed))
    assert (result.count_a, result.count_b) == (25_000, 24_999)
    assert progress[-1] == 25_000 + 24_999
    assert progress == sorted(progress)
    ids = diff_indices(cluster, f"{alias_name}-b", f"{alias_name}-a", ids_only=True, slices=2)
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
    for slices in (1, 3):
        result = diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-b", slices=slices,
                              page_size=64)
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


# -- the digest computed in the cluster is the one specified ----------------------------------

_MASK = (1 << 64) - 1
_C1, _C2 = 0x87C37B91114253D5, 0x4CF5AD432745937F


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK
    return k ^ (k >> 33)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _encode(value: Any) -> str:
    """The script's canonical form, written again in Python (no floats needed here)."""
    if value is None:
        return "z"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return f"i{value};"
    if isinstance(value, str):
        return f"s{_utf16_len(value)}:{value}"
    if isinstance(value, list):
        return f"[{len(value)}:" + "".join(_encode(v) for v in value) + "]"
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))  # Java's String order
    return (f"{{{len(keys)}:" + "".join(f"{_utf16_len(k)}:{k}" + _encode(value[k])
                                         for k in keys) + "}")


def _reference_digest(source: dict[str, Any]) -> str:
    text = _encode(source).encode("utf-16-le")
    units = [int.from_bytes(text[i:i + 2], "little") for i in range(0, len(text), 2)]
    n, h1, h2, i = len(units), 0, 0, 0

    def word(at: int) -> int:
        return units[at] | units[at + 1] << 16 | units[at + 2] << 32 | units[at + 3] << 48

    while i + 8 <= n:
        k1 = _rotl((word(i) * _C1) & _MASK, 31) * _C2 & _MASK
        h1 = (_rotl(h1 ^ k1, 27) + h2) & _MASK
        h1 = (h1 * 5 + 0x52DCE729) & _MASK
        k2 = _rotl((word(i + 4) * _C2) & _MASK, 33) * _C1 & _MASK
        h2 = (_rotl(h2 ^ k2, 31) + h1) & _MASK
        h2 = (h2 * 5 + 0x38495AB5) & _MASK
        i += 8
    t1 = t2 = 0
    for j, unit in enumerate(units[i:]):
        if j < 4:
            t1 |= unit << (16 * j)
        else:
            t2 |= unit << (16 * (j - 4))
    if n - i > 4:
        h2 ^= _rotl((t2 * _C2) & _MASK, 33) * _C1 & _MASK
    if n - i > 0:
        h1 ^= _rotl((t1 * _C1) & _MASK, 31) * _C2 & _MASK
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _MASK
    h2 = (h2 + h1) & _MASK
    return f"{h1:x}.{h2:x}"


def test_cluster_digest_is_the_specified_one(cluster: Cluster, alias_name: str) -> None:
    docs: Docs = {
        "empty": {},
        "short": {"one": 1},
        "seven": {"k": "abc"},
        "mixed": {"b": [1, 2, 3], "a": {"z": None, "y": True, "x": False}, "c": "日本語 🙂",
                  "Z": "upper before lower", "é": "beyond ascii"},
        "long": {"text": "lorem ipsum " * 40, "n": -123456789012, "list": [[1], [2, [3]]]},
    }
    _make(cluster, f"{alias_name}-a", docs)
    if not painless_everywhere(cluster):
        # Without painless the cluster refuses the digest script, and asking for it is an
        # error, never a silent switch (auto hashes here instead, as tested above).
        with pytest.raises(Rejected, match="painless"):
            diff_indices(cluster, f"{alias_name}-a", f"{alias_name}-a", digest="server")
        return
    script = {"script": {"lang": "painless", "source": PAINLESS_DIGEST}}
    body = cluster.search(f"{alias_name}-a", {"size": 10, "_source": False,
                                              "script_fields": {"d": script}})
    found = {hit["_id"]: hit["fields"]["d"][0] for hit in body["hits"]["hits"]}
    assert found == {doc_id: _reference_digest(source) for doc_id, source in docs.items()}
