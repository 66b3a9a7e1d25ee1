"""Pure parts of incident handling: redaction, evidence names, the halt plan, the incident
timeline and the runbook's success metrics."""

import base64
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from indexshift.config import ConnectionConfig
from indexshift.errors import BadInput, CheckFailed, ExitCode
from indexshift.incident import (
    REDACTED,
    Incident,
    IncidentStatus,
    compute_success_metrics,
    downtime_pct,
    evidence_folder_name,
    incident_from_source,
    incident_to_source,
    incident_view,
    mean_interval_s,
    new_incident,
    note_incident,
    plan_halt,
    rate_pct,
    read_tail,
    redact_url,
    reindex_destination,
    reindex_tasks_into,
    render_scrubbed,
    resolve_incident,
    rollback_outcomes,
    same_endpoint,
    scrub_json,
    scrub_text,
    secret_literals,
)
from indexshift.journal import Phase, RunRecord, RunStatus, iso_utc, new_run_id
from indexshift.migrator import HALTED_BY_OPERATOR, Halted, operator_halt, refuse_operator_halt

T0 = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
PASSWORD = "s3cret-Pa55"
CONFIG = ConnectionConfig(url="https://search.example.org:9200", username="ops",
                          password=SecretStr(PASSWORD))
BASIC = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()


def _run(status: RunStatus = RunStatus.RUNNING, *, started: datetime = T0,
         rand: str = "abc", **overrides: object) -> RunRecord:
    data: dict[str, object] = {
        "run_id": new_run_id(started, rand), "alias": "file-index", "version": 2,
        "spec_name": "0002_x", "spec_checksum": "sha256:00", "blue": "file-index-v1",
        "green": "file-index-v2", "status": status, "started_at": iso_utc(started),
        "updated_at": iso_utc(started), "phase": Phase.REINDEX_STARTED,
    }
    data.update(overrides)
    return RunRecord.model_validate(data)


def _incident(*, failed: datetime, detected: datetime, resolved: datetime | None = None,
              docs_lost: int = 0, downtime_s: float = 0.0, rollback: bool | None = None,
              rollback_ok: bool | None = None, run_id: str | None = None) -> Incident:
    incident = new_incident(alias="file-index", severity="p1", summary="copy broke",
                            now=detected, failed_at=failed, run_id=run_id, by="ops@h1")
    if resolved is not None:
        incident = resolve_incident(incident, now=resolved, docs_lost=docs_lost,
                                    downtime_s=downtime_s, rollback=rollback,
                                    rollback_ok=rollback_ok, summary="fixed", by="ops@h1")
    return incident


# -- redaction -------------------------------------------------------------------------------


def test_secret_literals_cover_the_password_its_basic_header_and_encodings() -> None:
    literals = secret_literals(CONFIG)
    assert PASSWORD in literals and BASIC in literals
    assert literals == sorted(literals, key=lambda s: (-len(s), s))  # longest replaced first
    keyed = ConnectionConfig(url="http://h:9200", api_key=SecretStr("id:k/ey+"))
    assert {"id:k/ey+", "id%3Ak%2Fey%2B", base64.b64encode(b"id:k/ey+").decode()} <= set(
        secret_literals(keyed))
    assert secret_literals(ConnectionConfig(url="http://h:9200")) == []


def test_scrub_text_masks_literals_url_credentials_headers_and_password_values() -> None:
    text = (f"connect https://ops:{PASSWORD}@example.org:9200/x and "
            f"ftp://a:b@h/ Authorization: Basic {BASIC} "
            'then {"password": "other-secret", "api_key":"k1"} secret_key=abc123 '
            "plain words stay")
    scrubbed = scrub_text(text, secret_literals(CONFIG))
    for leaked in (PASSWORD, BASIC, "other-secret", "k1\"", "abc123", "ops:", "a:b@"):
        assert leaked not in scrubbed
    assert "https://***@example.org:9200/x" in scrubbed
    assert "plain words stay" in scrubbed
    # A Basic header of other credentials is masked too, by its shape.
    assert "dXNlcjpwYXNz" not in scrub_text("authorization: Basic dXNlcjpwYXNz")


def test_scrub_json_masks_values_of_secret_keys_and_keeps_the_rest() -> None:
    settings = {"persistent": {"s3.client.default.secret_key": "AKIA-SECRET",
                               "xpack.security.authc.token.enabled": True,
                               "cluster.name": "prod"},
                "repo": {"credentials": {"user": "u", "pw": "nested"}, "count": 3},
                "list": [{"password": 12345}, "free text"]}
    scrubbed = scrub_json(settings)
    assert scrubbed["persistent"]["s3.client.default.secret_key"] == REDACTED
    assert scrubbed["persistent"]["xpack.security.authc.token.enabled"] is True
    assert scrubbed["persistent"]["cluster.name"] == "prod"
    assert scrubbed["repo"]["credentials"] == {"user": REDACTED, "pw": REDACTED}
    assert scrubbed["repo"]["count"] == 3
    assert scrubbed["list"] == [{"password": REDACTED}, "free text"]
    rendered = render_scrubbed({"_meta": {"note": f"https://ops:{PASSWORD}@h"}},
                               secret_literals(CONFIG))
    assert PASSWORD not in rendered and json.loads(rendered)["_meta"]["note"] == "https://***@h"


def test_redact_url_drops_user_info_only() -> None:
    assert redact_url("https://ops:pw@search.example.org:9243/base") == \
        "https://search.example.org:9243/base"
    assert redact_url("http://127.0.0.1:9200") == "http://127.0.0.1:9200"
    assert redact_url("http://u:p@[::1]:9200") == "http://[::1]:9200"


# -- evidence --------------------------------------------------------------------------------


def test_evidence_folder_name_is_a_utc_stamp() -> None:
    assert evidence_folder_name(T0) == "indexshift-evidence-20261123T101500Z"
    local = T0.astimezone(timezone(timedelta(hours=2)))
    assert evidence_folder_name(local) == evidence_folder_name(T0)
    with pytest.raises(BadInput):
        evidence_folder_name(datetime(2026, 1, 1))  # naive on purpose


def test_same_endpoint_treats_loopback_names_alike() -> None:
    assert same_endpoint("http://127.0.0.1:9200", "http://localhost:9200/")
    assert same_endpoint("https://h", "https://h:443")
    assert not same_endpoint("http://127.0.0.1:9200", "http://127.0.0.1:9250")
    assert not same_endpoint("http://h:9200", "https://h:9200")


def test_read_tail_keeps_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(log, max_bytes=100)
    assert tail.startswith("[... first ") and tail.endswith("line 999\n")
    assert read_tail(log, max_bytes=os.path.getsize(log)) == log.read_text()


# -- halt ------------------------------------------------------------------------------------


def test_reindex_destination_from_task_descriptions() -> None:
    assert reindex_destination("reindex from [a-v1] to [a-v2-20260101t000000]") == \
        "a-v2-20260101t000000"
    assert reindex_destination("reindex from [a-v1] updated with Script{source='x to [y]'} "
                               "to [a-v3][_doc]") == "a-v3"
    assert reindex_destination("indices:data/read/search") is None


def _tasks(*rows: tuple[str, str, str | None]) -> dict[str, object]:
    tasks = {task_id: {"action": "indices:data/write/reindex", "description": description,
                       **({"parent_task_id": parent} if parent else {})}
             for task_id, description, parent in rows}
    return {"nodes": {"n1": {"tasks": tasks}}}


def test_only_top_level_reindex_tasks_into_the_alias_versions_are_found() -> None:
    body = _tasks(("n1:1", "reindex from [file-index-v1] to [file-index-v2-20260101t0]", None),
                  ("n1:2", "reindex from [file-index-v1] to [file-index-v2-20260101t0]",
                   "n1:1"),
                  ("n1:3", "reindex from [x] to [file-index-archive]", None),
                  ("n1:4", "reindex from [x] to [file-indexer-v2]", None),
                  ("n1:5", "reindex from [x] to [file-index-v7]", None))
    found = reindex_tasks_into(body, "file-index")
    assert [row["task_id"] for row in found] == ["n1:1", "n1:5"]
    assert found[0]["destination"] == "file-index-v2-20260101t0"
    assert reindex_tasks_into({"nodes": {}}, "file-index") == []


def test_plan_halt_opens_the_breaker_of_an_unfinished_run_and_cancels_its_task() -> None:
    run = _run(task_id="n1:9")
    running = {"completed": False, "task": {"description": "reindex from [a] to [b]"}}
    found = [{"task_id": "n1:9", "destination": "b", "description": "d"},
             {"task_id": "n1:12", "destination": "file-index-v3", "description": "d2"}]
    plan = plan_halt("file-index", run, running, found, ["file-index-v1"],
                     freeze_writes=True, reason="stop")
    assert plan.open_breaker
    assert [(t["task_id"], t["source"]) for t in plan.tasks] == [("n1:12", "found"),
                                                                  ("n1:9", "journal")]
    assert plan.freeze == ["file-index-v1"]
    as_json = plan.to_json()
    assert as_json["run"]["run_id"] == run.run_id and as_json["block_writes"] == ["file-index-v1"]


def test_plan_halt_leaves_finished_runs_and_gone_tasks_alone() -> None:
    done = _run(RunStatus.COMPLETED, task_id="n1:9")
    plan = plan_halt("file-index", done, None, [], ["file-index-v2"], freeze_writes=False,
                     reason="stop")
    assert not plan.open_breaker and plan.tasks == [] and plan.freeze == []
    assert "COMPLETED" in plan.notes[0]
    gone = plan_halt("file-index", _run(task_id="n1:9"), {"completed": True}, [], [],
                     freeze_writes=True, reason="stop")
    assert gone.open_breaker and gone.tasks == []
    assert any("no longer running" in note for note in gone.notes)
    assert any("no write to block" in note for note in gone.notes)
    nothing = plan_halt("file-index", None, None, [], ["i"], freeze_writes=False, reason="r")
    assert not nothing.open_breaker and "no run recorded" in nothing.notes[0]


def test_an_operator_halt_is_told_apart_from_the_runs_own_breaker() -> None:
    own = _run(RunStatus.HALTED, breaker={"open": True, "reason": "cluster red", "at": "x"})
    assert operator_halt(own) is None
    refuse_operator_halt(own)  # the run's own stop is resumed with `resume`
    held = _run(RunStatus.HALTED, breaker={"open": True, "reason": "bad data",
                                           "by": HALTED_BY_OPERATOR})
    assert operator_halt(held) == "bad data"
    with pytest.raises(Halted, match="halted by an operator: bad data") as caught:
        refuse_operator_halt(held)
    assert caught.value.exit_code == ExitCode.CHECK_FAILED and "--release" in str(caught.value)
    released = _run(RunStatus.HALTED, breaker={"open": False, "by": HALTED_BY_OPERATOR})
    assert operator_halt(released) is None


# -- incidents -------------------------------------------------------------------------------


def test_a_new_incident_has_its_failure_and_declaration_on_the_timeline() -> None:
    incident = _incident(failed=T0 - timedelta(minutes=3), detected=T0)
    assert incident.severity == "P1" and incident.status == IncidentStatus.OPEN
    assert incident.incident_id.startswith("inc-20261123t101500000-")
    assert [e["event"] for e in incident.timeline] == ["failed", "declared"]
    view = incident_view(incident)
    assert view["time_to_detect_s"] == 180.0 and view["time_to_resolve_s"] is None
    source = incident_to_source(incident)
    assert source["kind"] == "incident" and source["started_at"] == incident.detected_at
    assert incident_from_source(source) == incident


def test_incident_input_is_checked() -> None:
    with pytest.raises(BadInput, match="severity"):
        new_incident(alias="a", severity="P4", summary="s", now=T0)
    with pytest.raises(BadInput, match="summary"):
        new_incident(alias="a", severity="P0", summary="  ", now=T0)
    with pytest.raises(BadInput, match="after the detection"):
        new_incident(alias="a", severity="P0", summary="s", now=T0,
                     failed_at=T0 + timedelta(seconds=1))
    incident = new_incident(alias="a", severity="P0", summary="s", now=T0)
    assert incident.failed_at == incident.detected_at
    with pytest.raises(BadInput, match="empty note"):
        note_incident(incident, " ", now=T0)
    for kwargs in ({"docs_lost": -1}, {"docs_lost": 0, "downtime_s": -1.0},
                   {"docs_lost": 0, "rollback": False, "rollback_ok": True}):
        with pytest.raises(BadInput):
            resolve_incident(incident, now=T0, summary="x", **kwargs)
    with pytest.raises(BadInput, match="before the detection"):
        resolve_incident(incident, now=T0 - timedelta(seconds=5), docs_lost=0, summary="x")


def test_notes_and_resolution_extend_the_timeline_and_resolve_once() -> None:
    incident = _incident(failed=T0, detected=T0 + timedelta(minutes=1))
    noted = note_incident(incident, "halted the copy", now=T0 + timedelta(minutes=2), by="me")
    assert noted.timeline[-1] == {"at": iso_utc(T0 + timedelta(minutes=2)), "event": "note",
                                  "by": "me", "text": "halted the copy"}
    resolved = resolve_incident(noted, now=T0 + timedelta(minutes=21), docs_lost=0,
                                downtime_s=30, rollback_ok=True, summary="rolled back")
    assert resolved.status == IncidentStatus.RESOLVED
    assert resolved.resolution == {"docs_lost": 0, "downtime_s": 30.0, "rollback": True,
                                   "rollback_ok": True, "summary": "rolled back"}
    assert incident_view(resolved)["time_to_resolve_s"] == 20 * 60.0
    with pytest.raises(CheckFailed, match="was resolved"):
        resolve_incident(resolved, now=T0 + timedelta(hours=1), docs_lost=0, summary="again")


# -- metrics ---------------------------------------------------------------------------------


def test_metric_arithmetic() -> None:
    assert rate_pct(199, 200) == 99.5
    assert rate_pct(0, 0) is None
    assert mean_interval_s([(T0, T0 + timedelta(minutes=2)),
                            (T0, T0 + timedelta(minutes=4))]) == 180.0
    assert mean_interval_s([]) is None
    assert downtime_pct(36.0, 36_000.0) == 0.1
    assert downtime_pct(5.0, None) is None and downtime_pct(5.0, 0) is None


def test_rollback_outcomes_count_each_rollback_once() -> None:
    rolled = _run(RunStatus.ROLLED_BACK, rand="r1")
    other = _run(RunStatus.ROLLED_BACK, rand="r2")
    judged = _incident(failed=T0, detected=T0, resolved=T0, rollback=True, rollback_ok=False,
                       run_id=rolled.run_id)
    unknown = _incident(failed=T0, detected=T0, resolved=T0, rollback=True)
    assert sorted(rollback_outcomes([rolled, other, _run(RunStatus.COMPLETED)],
                                    [judged, unknown])) == [False, True]


def test_success_metrics_against_the_runbook_targets() -> None:
    now = T0 + timedelta(days=10)
    runs = [_run(RunStatus.COMPLETED, started=T0 + timedelta(hours=i), rand=f"c{i}")
            for i in range(3)]
    runs += [_run(RunStatus.ROLLED_BACK, started=T0 + timedelta(hours=5), rand="rb"),
             _run(RunStatus.HALTED, started=T0 + timedelta(hours=6), rand="h"),
             _run(RunStatus.COMPLETED, started=T0 - timedelta(days=30), rand="old")]
    incidents = [
        _incident(failed=T0 + timedelta(hours=5), detected=T0 + timedelta(hours=5, minutes=2),
                  resolved=T0 + timedelta(hours=5, minutes=12), docs_lost=0, downtime_s=60,
                  rollback=True, rollback_ok=True, run_id=runs[3].run_id),
        _incident(failed=T0 + timedelta(days=1), detected=T0 + timedelta(days=1, minutes=8),
                  resolved=T0 + timedelta(days=1, minutes=58), docs_lost=4, downtime_s=0),
        _incident(failed=T0 + timedelta(days=2), detected=T0 + timedelta(days=2, minutes=2)),
    ]
    report = compute_success_metrics(runs, incidents, since=T0, now=now)
    assert report["runs"] == {"total": 5, "completed": 3, "rolled_back": 1, "failed": 0,
                              "unfinished": 1}
    assert report["incidents"] == {"total": 3, "open": 1, "resolved": 2}
    metrics = report["metrics"]
    assert metrics["migration_success_rate"]["value"] == 75.0
    assert metrics["migration_success_rate"]["met"] is False
    assert metrics["migration_success_rate"]["target"] == "> 99 %"
    assert metrics["mean_time_to_detect"]["value"] == 240.0  # (2 + 8 + 2) min / 3
    assert metrics["mean_time_to_detect"]["met"] is True
    assert metrics["mean_time_to_resolve"]["value"] == 1800.0  # (10 + 50) min / 2
    assert metrics["mean_time_to_resolve"]["met"] is False  # not under 30 min
    assert metrics["docs_lost_per_incident"]["value"] == 2.0
    assert metrics["docs_lost_per_incident"]["total"] == 4
    assert metrics["docs_lost_per_incident"]["met"] is False
    assert metrics["rollback_success_rate"]["value"] == 100.0  # the run's rollback counted once
    assert metrics["rollback_success_rate"]["met"] is True
    assert metrics["unplanned_downtime"]["value"] == pytest.approx(100 * 60 / (10 * 86400), 1e-3)
    assert metrics["unplanned_downtime"]["met"] is True
    assert report["period_s"] == 10 * 86400.0


def test_success_metrics_without_data_are_null_not_met() -> None:
    report = compute_success_metrics([], [], since=None, now=T0)
    assert report["period_s"] is None
    for metric in report["metrics"].values():
        assert metric["value"] is None and metric["met"] is None
    # Runs alone: no incidents means no MTTD, but a period with no downtime at all.
    runs = [_run(RunStatus.COMPLETED, started=T0 - timedelta(days=1))]
    report = compute_success_metrics(runs, [], since=None, now=T0)
    metrics = report["metrics"]
    assert metrics["migration_success_rate"] | {"value": 100.0, "met": True} == \
        metrics["migration_success_rate"]
    assert metrics["mean_time_to_detect"]["met"] is None
    assert metrics["unplanned_downtime"]["value"] == 0.0
    assert metrics["unplanned_downtime"]["met"] is True
    assert report["period_s"] == 86400.0
