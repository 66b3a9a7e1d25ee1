"""The settings green is copied with and gets back; the copy requests and their answers."""

from __future__ import annotations

from indexshift.copier import (
    AUTO_BATCH_DOCS,
    COPY_TIME_SETTINGS,
    ENGINE_BATCH_DOCS,
    auto_batch_size,
    chunks,
    copy_time_settings,
    first_failure,
    lowest_primary_checkpoint,
    migration_body,
    reindex_body,
    transform_script,
)
from indexshift.spec import parse_spec

SCRIPTED = parse_spec(
    "alias: files\nmappings: {properties: {}}\n"
    "transform:\n  script: {source: 'ctx._source.n = params.n', params: {n: 1}}\n"
    "copy: {batch_size: 250}\n")
PLAIN = parse_spec("alias: files\nmappings: {properties: {}}\n")


def test_bulk_load_settings_while_copying_and_spec_values_after() -> None:
    create, final = copy_time_settings(
        {"index": {"number_of_shards": 3, "number_of_replicas": 2,
                   "analysis": {"analyzer": {"folded": {"tokenizer": "standard",
                                                        "filter": ["lowercase"]}}}}},
        blue_replicas=1)
    assert create == {"index": {"number_of_shards": 3,
                                "analysis.analyzer.folded.tokenizer": "standard",
                                "analysis.analyzer.folded.filter": ["lowercase"],
                                **COPY_TIME_SETTINGS}}
    assert final == {"number_of_replicas": 2, "refresh_interval": "1s",
                     "translog.durability": "request"}


def test_dotted_and_prefixed_keys_are_the_same_settings() -> None:
    _, final = copy_time_settings({"index.refresh_interval": "30s",
                                   "translog": {"durability": "async"}}, blue_replicas=0)
    assert final == {"number_of_replicas": 0, "refresh_interval": "30s",
                     "translog.durability": "async"}


def test_unset_replicas_follow_blue() -> None:
    create, final = copy_time_settings({}, blue_replicas=1)
    assert create == {"index": COPY_TIME_SETTINGS}
    assert final["number_of_replicas"] == 1


def test_reindex_body_of_given_ids_overwrites_or_creates_only() -> None:
    ids = {"ids": {"values": ["a", "b"]}}
    assert reindex_body("files-v1", "files-v2", query=ids) == {
        "source": {"index": "files-v1", "query": ids}, "dest": {"index": "files-v2"},
        "conflicts": "abort"}
    assert reindex_body("files-v1", "files-v2", query=ids, create_only=True, batch_size=2) == {
        "source": {"index": "files-v1", "size": 2, "query": ids},
        "dest": {"index": "files-v2", "op_type": "create"}, "conflicts": "proceed"}


def test_migration_body_carries_the_transform_and_the_batch_size() -> None:
    script = transform_script(SCRIPTED)
    assert script == {"lang": "painless", "source": "ctx._source.n = params.n",
                      "params": {"n": 1}}
    assert migration_body("files-v1", "files-v2", SCRIPTED) == {
        "source": {"index": "files-v1", "size": 250}, "dest": {"index": "files-v2"},
        "conflicts": "abort", "script": script}
    assert transform_script(PLAIN) is None
    assert migration_body("files-v1", "files-v2", PLAIN, pipeline="p") == {
        "source": {"index": "files-v1", "size": ENGINE_BATCH_DOCS},
        "dest": {"index": "files-v2", "pipeline": "p"}, "conflicts": "abort"}
    # A size chosen for blue counts only where the spec says auto.
    assert migration_body("files-v1", "files-v2", PLAIN, batch_size=4000)["source"]["size"] == 4000


def test_auto_batch_size_follows_the_average_document() -> None:
    low, high = AUTO_BATCH_DOCS
    assert auto_batch_size(1_000_000, 375_000_000) == high  # 375-byte documents
    assert auto_batch_size(100_000, 4_000_000_000) == 209  # 40 KB vectors: 8 MiB / 40,000 bytes
    assert auto_batch_size(1_000, 10_000_000_000) == low  # 10 MB documents: the floor
    assert auto_batch_size(0, 0) == ENGINE_BATCH_DOCS  # an empty index: the engine's default


def test_first_failure_prefers_the_cause() -> None:
    assert first_failure({"created": 3, "failures": []}) is None
    assert first_failure({}) is None
    mapped = {"failures": [{"cause": {"type": "mapper_parsing_exception",
                                      "reason": "failed to parse field [n]"}}, {"id": "x"}]}
    assert first_failure(mapped) == "failed to parse field [n]"
    assert first_failure({"failures": [{"id": "x"}]}) == "{'id': 'x'}"


def test_lowest_primary_checkpoint_ignores_replicas() -> None:
    copies = [
        {"routing": {"primary": True}, "seq_no": {"local_checkpoint": 41}},
        {"routing": {"primary": False}, "seq_no": {"local_checkpoint": 3}},
        {"routing": {"primary": True}, "seq_no": {"local_checkpoint": 17}},
    ]
    assert lowest_primary_checkpoint(copies) == 17
    assert lowest_primary_checkpoint(copies[1:2]) == -1
    assert lowest_primary_checkpoint([]) == -1


def test_chunks_keep_order_and_end_short() -> None:
    assert list(chunks(iter("abcde"), 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(chunks([], 3)) == []
