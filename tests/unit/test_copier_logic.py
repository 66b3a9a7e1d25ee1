"""The settings green is copied with, and the ones it gets back."""

from __future__ import annotations

from indexshift.copier import COPY_TIME_SETTINGS, copy_time_settings


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
