"""Pure parts of the journal: phase order, run ids, records, lease staleness and refusals."""

import os
from datetime import UTC, datetime, timedelta, timezone

import pytest

from indexshift.errors import CheckFailed, ExitCode
from indexshift.journal import (
    Lease,
    Phase,
    RunRecord,
    RunStatus,
    advance_record,
    first_checkpoint,
    heartbeat_age_s,
    is_at_or_after,
    iso_utc,
    journal_index_body,
    lease_is_stale,
    lease_refusal,
    new_run_id,
    parse_iso_utc,
    phase_order,
    pid_alive,
)

T0 = datetime(2026, 11, 23, 10, 15, 0, 123456, tzinfo=UTC)


def _record(**overrides: object) -> RunRecord:
    data: dict[str, object] = {
        "run_id": new_run_id(T0, "abc123"), "alias": "file-index", "version": 2,
        "spec_name": "0002_vectors", "spec_checksum": "sha256:00ff", "blue": "file-index-v1",
        "green": "file-index-v2", "started_at": iso_utc(T0), "updated_at": iso_utc(T0),
        "holder": {"host": "h1", "pid": 42, "user": "ops"},
    }
    data.update(overrides)
    return RunRecord.model_validate(data)


def _lease(heartbeat: datetime, *, host: str = "h1", pid: int = 42) -> Lease:
    return Lease(alias="file-index", run_id="r1", host=host, pid=pid, user="ops",
                 acquired_at=iso_utc(heartbeat), heartbeat_at=iso_utc(heartbeat), ttl_s=60)


def test_phases_in_runbook_order() -> None:
    assert [p.value for p in Phase] == [
        "VALIDATING", "BACKUP_CREATED", "GREEN_CREATED", "REINDEX_STARTED", "REINDEX_50%",
        "REINDEX_100%", "VALIDATED", "ALIAS_SWITCHED", "MONITORING", "COMPLETED",
    ]
    assert phase_order(Phase.VALIDATING) == 0
    assert phase_order(Phase.COMPLETED) == len(Phase) - 1
    assert phase_order(Phase("REINDEX_50%")) < phase_order(Phase.REINDEX_100)
    assert is_at_or_after(Phase.ALIAS_SWITCHED, Phase.VALIDATED)
    assert is_at_or_after(Phase.VALIDATED, Phase.VALIDATED)
    assert not is_at_or_after(Phase.GREEN_CREATED, Phase.REINDEX_STARTED)
    assert {s.value for s in RunStatus} == {"RUNNING", "HALTED", "FAILED", "ROLLED_BACK",
                                            "COMPLETED"}


def test_run_ids_sort_by_time_and_are_lowercase() -> None:
    first = new_run_id(T0, "zzzz")
    later = new_run_id(T0 + timedelta(milliseconds=1), "0000")
    much_later = new_run_id(T0 + timedelta(days=400), "0000")
    assert first == "20261123t101500123-zzzz"
    assert first < later < much_later
    assert first == first.lower()
    # Another zone, same instant: the same prefix.
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert new_run_id(plus_two, "a1") == new_run_id(T0, "a1")


@pytest.mark.parametrize("rand", ["", "ABC", "a-b", "x" * 33])
def test_run_id_suffix_is_checked(rand: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        new_run_id(T0, rand)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        new_run_id(datetime(2026, 1, 1), "a")
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 1, 1))


def test_iso_utc_round_trips_at_millisecond_precision() -> None:
    text = iso_utc(T0)
    assert text == "2026-11-23T10:15:00.123Z"
    assert parse_iso_utc(text) == T0.replace(microsecond=123000)


def test_run_record_round_trips_through_json() -> None:
    record = _record(task_id="node:1", copy_state={"catch_up_from": "2026-11-23T10:00:00Z"})
    again = RunRecord.model_validate(record.to_json())
    assert again == record
    assert record.to_json()["phase"] == "VALIDATING"
    assert record.progress == {"total": 0, "created": 0, "updated": 0, "deleted": 0,
                               "percent": 0.0}
    assert record.breaker["open"] is False


def test_fields_from_a_newer_writer_survive() -> None:
    data = _record().to_json()
    data["added_later"] = {"x": 1}
    assert RunRecord.model_validate(data).to_json()["added_later"] == {"x": 1}


def test_new_record_starts_validating_and_running() -> None:
    record = RunRecord.new(alias="a", version=3, spec_name="s", spec_checksum="c", now=T0)
    assert record.phase is Phase.VALIDATING and record.status is RunStatus.RUNNING
    assert record.run_id.startswith("20261123t101500123-")
    assert record.started_at == record.updated_at == iso_utc(T0)
    assert set(record.holder) == {"host", "pid", "user"}


def test_first_checkpoint_is_the_starting_phase_once() -> None:
    record = first_checkpoint(_record())
    assert record.checkpoints == [{"phase": "VALIDATING", "status": "RUNNING",
                                   "at": iso_utc(T0), "details": {}}]
    assert first_checkpoint(record) == record


def test_advance_record_appends_checkpoints_on_phase_changes() -> None:
    t1, t2 = T0 + timedelta(seconds=5), T0 + timedelta(seconds=9)
    record = first_checkpoint(_record())
    record = advance_record(record, now=t1, phase=Phase.BACKUP_CREATED,
                            details={"snapshot": "s1"})
    record = advance_record(record, now=t2, updates={"progress": {"percent": 10.0}})
    assert record.phase is Phase.BACKUP_CREATED
    assert record.progress == {"percent": 10.0}
    assert record.updated_at == iso_utc(t2)
    assert [c["phase"] for c in record.checkpoints] == ["VALIDATING", "BACKUP_CREATED"]
    assert record.checkpoints[-1] == {"phase": "BACKUP_CREATED", "status": "RUNNING",
                                      "at": iso_utc(t1), "details": {"snapshot": "s1"}}


def test_advance_record_puts_a_status_change_on_the_timeline() -> None:
    record = advance_record(_record(phase=Phase.REINDEX_50), now=T0, status=RunStatus.HALTED,
                            details={"reason": "breaker"},
                            updates={"breaker": {"open": True, "reason": "429s", "at": "x"}})
    assert record.status is RunStatus.HALTED and record.phase is Phase.REINDEX_50
    assert record.checkpoints[-1]["status"] == "HALTED"
    assert record.breaker["open"] is True


def test_advance_record_refuses_fields_it_must_not_set() -> None:
    with pytest.raises(TypeError, match="run_id"):
        advance_record(_record(), now=T0, updates={"run_id": "other"})
    with pytest.raises(TypeError, match="no_such_field"):
        advance_record(_record(), now=T0, updates={"no_such_field": 1})


def test_lease_is_stale_when_the_heartbeat_is_old() -> None:
    def alive(_: int) -> bool:
        return True

    lease = _lease(T0)
    assert not lease_is_stale(lease, T0 + timedelta(seconds=59), 60, "elsewhere", alive)
    assert lease_is_stale(lease, T0 + timedelta(seconds=61), 60, "elsewhere", alive)
    # Clock skew: a heartbeat from the future is fresh.
    assert not lease_is_stale(lease, T0 - timedelta(minutes=5), 60, "elsewhere", alive)


def test_lease_is_stale_when_a_local_holder_pid_is_gone() -> None:
    def dead(_: int) -> bool:
        return False

    lease = _lease(T0, host="h1")
    assert lease_is_stale(lease, T0, 60, "h1", dead)
    # On another host the pid says nothing about that machine: only the heartbeat counts.
    assert not lease_is_stale(lease, T0, 60, "h2", dead)


def test_pid_alive_sees_this_process_and_refuses_nonsense() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    assert not pid_alive(-5)


def test_lease_refusals_say_who_and_what_next() -> None:
    lease = _lease(T0, host="build-7", pid=4242)
    now = T0 + timedelta(seconds=12, milliseconds=900)
    assert heartbeat_age_s(lease, now) == 12
    busy = lease_refusal(lease, now=now, stale=False)
    assert isinstance(busy, CheckFailed) and busy.exit_code == ExitCode.CHECK_FAILED
    assert str(busy) == (
        "alias file-index is being migrated by run r1 (pid 4242 on host build-7, heartbeat 12s "
        "ago); wait for it to finish or run `indexshift status file-index`"
    )
    gone = lease_refusal(lease, now=now, stale=True)
    assert "whose process is gone (pid 4242 on host build-7" in str(gone)
    assert str(gone).endswith("to take it over, pass --break-lock")
    assert "\n" not in str(busy) + str(gone)


def test_journal_mapping_cannot_explode() -> None:
    body = journal_index_body()
    assert body["settings"]["index"] == {"hidden": True, "number_of_shards": 1,
                                         "auto_expand_replicas": "0-1"}
    mappings = body["mappings"]
    assert mappings["dynamic"] is False
    for name in ("kind", "alias", "run_id", "phase", "status"):
        assert mappings["properties"][name] == {"type": "keyword"}
    for name in ("copy_state", "progress", "breaker", "checkpoints", "holder"):
        assert mappings["properties"][name]["enabled"] is False
