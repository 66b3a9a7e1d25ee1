"""The pure pre-flight evaluators: data in, one Check out."""

from datetime import UTC, datetime
from typing import Any

import pytest

from indexshift.errors import ClusterUnreachable, NotFound
from indexshift.preflight import (
    BACKUP,
    DISK_HEADROOM,
    NAMING,
    Check,
    PreflightReport,
    evaluate_backup,
    evaluate_connectivity,
    evaluate_disk,
    evaluate_lease,
    evaluate_naming,
    evaluate_source_health,
    human_bytes,
    not_checked,
    parse_byte_size,
    parse_watermark,
)
from indexshift.snapshots import BackupCheck, BackupVerdict, SnapshotInfo

GB = 1024**3
MB = 1024**2


def settings(defaults: dict[str, Any] | None = None, persistent: dict[str, Any] | None = None,
             transient: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {"cluster.routing.allocation.disk.watermark.high": "90%",
            "cluster.routing.allocation.disk.threshold_enabled": "true"}
    base.update(defaults or {})
    return {"defaults": base, "persistent": persistent or {}, "transient": transient or {}}


def node(name: str, total: int, avail: int, host: str | None = None) -> dict[str, Any]:
    return {"node": name, "host": host or name, "ip": "127.0.0.1",
            "disk.total": str(total), "disk.avail": str(avail),
            "disk.used": str(total - avail)}


# -- connectivity ----------------------------------------------------------------------------


def test_connectivity_reports_status_and_nodes() -> None:
    check = evaluate_connectivity("opensearch 2.19.6", {"cluster_name": "c", "status": "yellow",
                                                        "number_of_nodes": 3})
    assert check.passed and "status yellow, 3 node(s)" in check.detail
    assert check.data["nodes"] == 3


def test_connectivity_failure_carries_the_error_hint() -> None:
    error = ClusterUnreachable("cannot connect to http://x:9200", hint="check the URL")
    check = evaluate_connectivity("opensearch", None, error)
    assert not check.passed and check.detail == "cannot connect to http://x:9200"
    assert check.fix == "check the URL"


# -- naming ----------------------------------------------------------------------------------


def test_naming_passes_with_exactly_one_index() -> None:
    check = evaluate_naming("file-index", ["file-index-v1"], alias_is_index=False)
    assert check.passed and check.data["indices"] == ["file-index-v1"]
    assert "file-index-v1" in check.detail


def test_naming_fails_with_several_indices_and_names_them() -> None:
    check = evaluate_naming("file-index", ["file-index-v2", "file-index-v1"], False)
    assert not check.passed
    assert "2 indices: file-index-v1, file-index-v2" in check.detail
    assert check.fix and "exactly one index" in check.fix


def test_naming_fails_for_a_missing_alias_and_a_concrete_index() -> None:
    missing = evaluate_naming("file-index", [], alias_is_index=False)
    assert not missing.passed and "does not exist" in missing.detail
    assert missing.fix and "_aliases" in missing.fix
    concrete = evaluate_naming("file-index", [], alias_is_index=True)
    assert not concrete.passed and "concrete index" in concrete.detail


@pytest.mark.parametrize("alias", ["file-*", "a,b", "Upper", ""])
def test_naming_refuses_patterns_and_invalid_names(alias: str) -> None:
    check = evaluate_naming(alias, ["x"], False)
    assert not check.passed and "not a valid alias name" in check.detail


# -- source health ---------------------------------------------------------------------------


def row(status: str = "open", health: str = "green", store: str | None = "1000") -> dict[str, Any]:
    return {"index": "i", "status": status, "health": health, "pri": "1", "rep": "1",
            "store.size": store}


def test_source_health_green_and_yellow_pass_with_doc_count() -> None:
    green = evaluate_source_health("i", row(), {"status": "green"}, 1234)
    assert green.passed and "1,234 docs" in green.detail and green.data["docs"] == 1234
    yellow = evaluate_source_health("i", row(health="yellow"), {"status": "yellow"}, 5)
    assert yellow.passed and "replicas unassigned" in yellow.detail


def test_source_health_red_closed_and_missing_fail() -> None:
    red = evaluate_source_health("i", row(health="red"),
                                 {"status": "red", "unassigned_shards": 2}, 10)
    assert not red.passed and "2 unassigned" in red.detail
    assert red.fix and "allocation/explain" in red.fix
    closed = evaluate_source_health("i", row(status="close", store=None), None, None)
    assert not closed.passed and "close" in closed.detail
    assert closed.fix and "_open" in closed.fix
    missing = evaluate_source_health("i", None, None, None)
    assert not missing.passed


def test_source_health_falls_back_to_the_cat_row_health() -> None:
    assert not evaluate_source_health("i", row(health="red"), None, 3).passed
    assert evaluate_source_health("i", row(health="green"), None, 3).passed


# -- sizes and watermarks --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("500mb", 500 * MB), ("1.5gb", int(1.5 * GB)), ("150GB", 150 * GB), ("10b", 10),
    ("2k", 2048), ("-1", -1), ("0", 0), (" 3 tb ", 3 * 1024**4),
])
def test_parse_byte_size(text: str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "12", "5 parsecs"])
def test_parse_byte_size_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_byte_size(text)


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(3 * GB) == "3.0 GB"


def test_watermark_forms() -> None:
    percent = parse_watermark(settings())
    assert percent.used_ratio == pytest.approx(0.9)
    assert percent.required_free(100 * GB) == 10 * GB
    ratio = parse_watermark(settings(persistent={
        "cluster.routing.allocation.disk.watermark.high": "0.8"}))
    assert ratio.used_ratio == pytest.approx(0.8)
    absolute = parse_watermark(settings(transient={
        "cluster.routing.allocation.disk.watermark.high": "5gb"}))
    assert absolute.used_ratio is None and absolute.required_free(100 * GB) == 5 * GB


def test_watermark_transient_beats_persistent_beats_defaults() -> None:
    key = "cluster.routing.allocation.disk.watermark.high"
    mark = parse_watermark(settings(persistent={key: "80%"}, transient={key: "70%"}))
    assert mark.used_ratio == pytest.approx(0.7)


def test_watermark_max_headroom_caps_large_disks() -> None:
    mark = parse_watermark(settings(defaults={
        "cluster.routing.allocation.disk.watermark.high.max_headroom": "150GB"}))
    assert mark.required_free(100 * GB) == 10 * GB  # 10% is below the cap
    assert mark.required_free(10_000 * GB) == 150 * GB  # 10% would be 1000 GB


def test_watermark_disabled_requires_nothing() -> None:
    mark = parse_watermark(settings(persistent={
        "cluster.routing.allocation.disk.threshold_enabled": "false"}))
    assert not mark.enforced and mark.required_free(100 * GB) == 0


def test_watermark_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_watermark(settings(persistent={
            "cluster.routing.allocation.disk.watermark.high": "1.5"}))


# -- disk headroom ---------------------------------------------------------------------------


def test_disk_passes_with_room_under_the_watermark() -> None:
    check = evaluate_disk("i", 10 * GB, [node("n0", 100 * GB, 40 * GB)], settings(), 1.2)
    assert check.passed
    assert check.data["needed_bytes"] == 12 * GB
    assert check.data["usable_bytes"] == 30 * GB  # 40 free minus the 10 the watermark keeps
    assert "12.0 GB" in check.detail and "30.0 GB usable" in check.detail


def test_disk_fails_when_only_the_watermark_is_in_the_way() -> None:
    # 15 GB free would hold 12 GB, but 10 GB of it must stay free under a 90% watermark.
    check = evaluate_disk("i", 10 * GB, [node("n0", 100 * GB, 15 * GB)], settings(), 1.2)
    assert not check.passed
    assert check.data["free_bytes"] == 15 * GB and check.data["usable_bytes"] == 5 * GB
    assert check.fix and "7.0 GB" in check.fix


def test_disk_counts_a_shared_host_once_and_sums_hosts() -> None:
    rows = [node("n0", 100 * GB, 20 * GB, host="h1"), node("n1", 100 * GB, 20 * GB, host="h1"),
            node("n2", 100 * GB, 20 * GB, host="h2")]
    check = evaluate_disk("i", 15 * GB, rows, settings(), 1.2)
    assert check.data["usable_bytes"] == 20 * GB and len(check.data["nodes"]) == 2
    assert check.passed  # 18 GB needed, 10 + 10 usable


def test_disk_fails_without_data_nodes_or_size_or_readable_watermark() -> None:
    assert not evaluate_disk("i", 1, [], settings(), 1.2).passed
    assert not evaluate_disk("i", None, [node("n0", GB, GB)], settings(), 1.2).passed
    bad = settings(persistent={"cluster.routing.allocation.disk.watermark.high": "lots"})
    check = evaluate_disk("i", 1, [node("n0", GB, GB)], bad, 1.2)
    assert not check.passed and "watermark" in check.detail


def test_disk_with_disabled_thresholds_uses_all_free_space() -> None:
    off = settings(persistent={"cluster.routing.allocation.disk.threshold_enabled": "false"})
    check = evaluate_disk("i", 10 * GB, [node("n0", 100 * GB, 13 * GB)], off, 1.2)
    assert check.passed and check.data["usable_bytes"] == 13 * GB


# -- lease -----------------------------------------------------------------------------------


def test_lease_check_results() -> None:
    skipped = evaluate_lease(None)
    assert skipped.passed and skipped.detail == "not checked"
    assert evaluate_lease((True, "alias is free")).passed
    held = evaluate_lease((False, "run 20261123-ab held by ops@host since 10:15"))
    assert not held.passed and "ops@host" in held.detail and held.fix
    broken = evaluate_lease(None, NotFound("journal: not found"))
    assert not broken.passed and "could not check" in broken.detail


# -- backup ----------------------------------------------------------------------------------


def verdict(restored: int, expected: int) -> BackupVerdict:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    info = SnapshotInfo("repo", "snap", "SUCCESS", ("i",), 1, 1, 0, now, now, False)
    checks = (BackupCheck("state", True, "state SUCCESS"),
              BackupCheck("document count", restored == expected,
                          f"{restored} documents restored, {expected} expected",
                          observed=restored, expected=expected))
    return BackupVerdict(info, "i", checks, expected, restored)


def test_backup_check_passes_on_a_verified_backup() -> None:
    check = evaluate_backup(verdict(500, 500), 500, 500)
    assert check.passed and check.data["restored_count"] == 500


def test_backup_check_blames_writes_when_the_count_moved() -> None:
    check = evaluate_backup(verdict(510, 500), 500, 520)
    assert not check.passed and "500 → 520" in check.detail
    assert check.fix and "pause writes" in check.fix


def test_backup_check_on_a_short_restore() -> None:
    check = evaluate_backup(verdict(499, 500), 500, 500)
    assert not check.passed and "499 documents restored" in check.detail
    assert check.fix and "good backup" in check.fix


# -- the report ------------------------------------------------------------------------------


def test_report_passes_only_when_every_check_passes() -> None:
    good = PreflightReport([Check(NAMING, True, "ok"), Check(BACKUP, True, "skipped by request")],
                           None)
    assert good.passed and good.recommendation.startswith("safe")
    bad = PreflightReport([Check(NAMING, True, "ok"), not_checked(DISK_HEADROOM, "no index")],
                          None, alias="a")
    assert not bad.passed and "disk headroom" in bad.recommendation
    assert bad.check(DISK_HEADROOM).fix
    data = bad.to_json()
    assert data["passed"] is False and data["alias"] == "a" and data["backup"] is None
    assert [c["name"] for c in data["checks"]] == [NAMING, DISK_HEADROOM]
    assert not PreflightReport([], None).passed
