"""What the migrator reads back from a run's record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from indexshift.journal import Phase, RunRecord, RunStatus, advance_record
from indexshift.migrator import green_mark_at_switch

T0 = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)


def started() -> RunRecord:
    return RunRecord.new(alias="files", version=2, spec_name="0002_x", spec_checksum="c",
                         blue="files-v1", green="files-v2", now=T0)


def test_no_mark_before_the_switch() -> None:
    run = advance_record(started(), now=T0, phase=Phase.REINDEX_STARTED)
    assert green_mark_at_switch(run) is None


def test_the_mark_of_the_latest_switch() -> None:
    run = advance_record(started(), now=T0, phase=Phase.ALIAS_SWITCHED,
                         details={"green_seq_no_mark": 7})
    run = advance_record(run, now=T0 + timedelta(seconds=1), phase=Phase.MONITORING)
    assert green_mark_at_switch(run) == 7
    again = advance_record(run, now=T0 + timedelta(seconds=2), phase=Phase.ALIAS_SWITCHED,
                           details={"green_seq_no_mark": 12})
    assert green_mark_at_switch(again) == 12


def test_a_switch_without_a_mark_counts_every_write() -> None:
    run = advance_record(started(), now=T0, phase=Phase.ALIAS_SWITCHED, status=RunStatus.RUNNING)
    assert green_mark_at_switch(run) == -1
