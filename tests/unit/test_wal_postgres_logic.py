"""The PostgreSQL log's pure parts: URLs, batching, read-ahead, codecs, orphan adoption's
grace, the shared interface (and the log page both logs serve)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexshift import pgsandbox
from indexshift.errors import BadInput, EnvironmentProblem, ExitCode
from indexshift.gateway import GatewayConfig, log_page_to_json, log_records_after
from indexshift.wal import (
    Appended,
    AppliedMarker,
    LoggedWrite,
    LogPage,
    Outcome,
    WriteAheadLog,
    WriteLog,
    WriteRecord,
)
from indexshift.wal_postgres import (
    PgAppend,
    PostgresWriteLog,
    advisory_namespace,
    applied_through,
    check_postgres_url,
    decode_headers,
    encode_headers,
    from_bytes,
    gateway_state_dir,
    is_postgres_url,
    owners_to_adopt,
    read_ahead,
    redact_url,
    schema_statements,
    take_batch,
    to_bytes,
)
from tests.helpers import run_cli


def test_a_url_selects_postgres_and_a_path_the_file_log() -> None:
    assert is_postgres_url("postgresql://gw@db:5432/indexshift")
    assert is_postgres_url("postgres://gw@db/indexshift")
    assert is_postgres_url("POSTGRESQL://db/x")
    assert not is_postgres_url("/var/lib/indexshift/wal")
    assert not is_postgres_url("wal")
    assert not is_postgres_url("postgresql:/collapsed/by/a/path")
    assert not is_postgres_url("http://db:5432/x")


def test_a_url_needs_a_database_and_a_numeric_port() -> None:
    assert check_postgres_url("postgresql://gw@db:5432/wal") == "postgresql://gw@db:5432/wal"
    with pytest.raises(BadInput, match="names no database"):
        check_postgres_url("postgresql://gw@db:5432")
    with pytest.raises(BadInput, match="bad port"):
        check_postgres_url("postgresql://gw@db:port/wal")
    with pytest.raises(BadInput, match="not a postgresql"):
        check_postgres_url("mysql://db/wal")


def test_messages_never_show_the_password() -> None:
    assert redact_url("postgresql://gw:s3cret@db:5432/wal") == "postgresql://gw:***@db:5432/wal"
    assert redact_url("postgresql://gw@db/wal") == "postgresql://gw@db/wal"
    with pytest.raises(BadInput) as caught:
        check_postgres_url("postgresql://gw:s3cret@db:5432")
    assert "s3cret" not in caught.value.message


def test_one_transaction_takes_at_least_one_append_then_what_fits() -> None:
    assert take_batch([], 10, 100) == 0
    assert take_batch([500], 10, 100) == 1  # a body larger than the budget still goes alone
    assert take_batch([10, 10, 10], 2, 100) == 2
    assert take_batch([40, 40, 40], 10, 100) == 2
    assert take_batch([1] * 5000, 1000, 10**9) == 1000


def test_read_ahead_starts_at_the_asked_record() -> None:
    pending = [3, 5, 8, 9, 12]
    assert read_ahead(pending, 5, 3) == [5, 8, 9]
    assert read_ahead(pending, 12, 3) == [12]
    assert read_ahead(pending, 4, 3) == [4, 5, 8]  # asked for one not (yet) listed
    assert read_ahead([], 7, 3) == [7]


def test_applied_through_stops_below_the_lowest_pending_record() -> None:
    assert applied_through(10, None) == 10
    assert applied_through(10, 4) == 3
    assert applied_through(0, None) == 0


def test_headers_and_raw_paths_round_trip_exactly() -> None:
    headers = (("content-type", "application/json"), ("x-opaque-id", "a\u00e9b"),
               ("accept", "*/*"), ("accept", "text/plain"))
    assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers([["a", "b"]]) == (("a", "b"),)  # a json column read as a value
    raw = b"/i/_doc/caf\xc3\xa9/\xff".decode("utf-8", "surrogateescape")
    assert to_bytes(raw) == b"/i/_doc/caf\xc3\xa9/\xff"
    assert from_bytes(to_bytes(raw)) == raw


def test_advisory_namespace_is_a_stable_positive_int4_per_schema() -> None:
    first = advisory_namespace("indexshift_gateway")
    assert first == advisory_namespace("indexshift_gateway")
    assert 0 <= first < 2**31
    assert first != advisory_namespace("other_schema")


def test_schema_statements_quote_the_schema_and_refuse_odd_names() -> None:
    statements = schema_statements("indexshift_gateway")
    assert len(statements) >= 8
    with pytest.raises(BadInput):
        schema_statements('x"; DROP TABLE y; --')


def test_the_state_folder_is_named_after_the_listen_address(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert gateway_state_dir("127.0.0.1:9201") == tmp_path / "indexshift" / "gateway-127.0.0.1_9201"
    assert gateway_state_dir("[::1]:9201").name == "gateway-_1_9201"


def test_an_append_has_no_seq_until_it_committed() -> None:
    appended = PgAppend("PUT", "/i/_doc/1", "", [], b"{}")
    with pytest.raises(RuntimeError):
        _ = appended.seq
    told: list[BaseException | None] = []
    appended.when_settled(told.append)
    appended.settle(42, None)
    appended.settle(43, None)  # settled once only
    assert appended.seq == 42 and told == [None]
    appended.when_settled(told.append)  # after the fact: told at once
    assert told == [None, None]
    failed = PgAppend("PUT", "/i/_doc/2", "", [], b"{}")
    failed.settle(0, OSError("down"))
    with pytest.raises(RuntimeError):
        _ = failed.seq


def test_both_logs_provide_the_interface_the_gateway_uses(tmp_path: Path) -> None:
    # Checked by mypy (an assignment to the Protocol type) and at run time (the attributes).
    file_log: WriteLog = WriteAheadLog(tmp_path)
    pg_log: WriteLog = PostgresWriteLog("postgresql://gw@127.0.0.1:1/wal")
    for log in (file_log, pg_log):
        for name in ("append", "wait_durable_async", "mark", "pending_seqs", "is_pending",
                     "read", "records_after", "snapshot_stats", "close", "fault",
                     "last_seq"):
            assert hasattr(log, name), (type(log).__name__, name)
    ticket: Appended = Appended(seq=1, position=8, epoch=0)
    assert ticket.seq == 1


def test_an_instance_is_adopted_only_once_gone_for_the_grace_period() -> None:
    adopt, since = owners_to_adopt([7, 9], {}, now=100.0, grace_s=10.0)
    assert adopt == set() and since == {7: 100.0, 9: 100.0}  # just seen gone: not yet
    adopt, since = owners_to_adopt([7, 9], since, now=105.0, grace_s=10.0)
    assert adopt == set() and since == {7: 100.0, 9: 100.0}
    # 9 came back (took its lease again) and is forgotten; seen gone later, it starts over.
    adopt, since = owners_to_adopt([7], since, now=110.0, grace_s=10.0)
    assert adopt == {7} and since == {7: 100.0}
    adopt, since = owners_to_adopt([7, 9], since, now=111.0, grace_s=10.0)
    assert adopt == {7} and since == {7: 100.0, 9: 111.0}
    assert owners_to_adopt([3], {}, now=5.0, grace_s=0.0) == ({3}, {3: 5.0})  # on opening


def test_the_file_log_pages_its_records_with_their_outcomes(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=400) as wal:
        seqs = [wal.append_durable("PUT", f"/a/_doc/{n}", "", [("content-type", "x")],
                                   b'{"n":%d}' % n) for n in range(9)]
        wal.mark([(seq, Outcome.APPLIED, 201) for seq in seqs[:6]])
        wal.mark([(seqs[6], Outcome.REJECTED, 409)])
        first = wal.records_after(0, 4)
        assert [w.record.seq for w in first.writes] == seqs[:4] and first.more
        assert first.next_after(0) == seqs[3]
        rest = wal.records_after(first.next_after(0), 100)
        assert [w.record.seq for w in rest.writes] == seqs[4:] and not rest.more
        assert [w.marker.outcome if w.marker else None for w in rest.writes] == [
            Outcome.APPLIED, Outcome.APPLIED, Outcome.REJECTED, None, None]
        assert rest.writes[0].record.body == b'{"n":4}'
        assert wal.records_after(seqs[2], 100, until=seqs[4]).next_after(seqs[2]) == seqs[4]
        empty = wal.records_after(seqs[-1], 10)
        assert empty.writes == [] and empty.next_after(seqs[-1]) == seqs[-1]
        # The log object and its directory read by another process serve the same page.
        assert log_page_to_json(wal.records_after(1, 5), 1) == log_records_after(tmp_path, 1, 5)


def test_a_log_page_answers_in_the_shape_the_migration_reads() -> None:
    record = WriteRecord(4, 99, "POST", "/a/_bulk", "refresh=true",
                         (("content-type", "application/x-ndjson"),), b"{}\n")
    page = LogPage([LoggedWrite(record, AppliedMarker(4, 100, Outcome.ABANDONED, 0)),
                    LoggedWrite(WriteRecord(5, 99, "DELETE", "/a/_doc/1", "", (), b""), None)],
                   more=True)
    assert log_page_to_json(page, 3) == {
        "records": [
            {"seq": 4, "time_ns": 99, "method": "POST", "path": "/a/_bulk",
             "query": "refresh=true", "headers": [["content-type", "application/x-ndjson"]],
             "body_b64": "e30K", "outcome": "abandoned", "status": 0},
            {"seq": 5, "time_ns": 99, "method": "DELETE", "path": "/a/_doc/1", "query": "",
             "headers": [], "body_b64": "", "outcome": None, "status": None}],
        "more": True, "next_after": 5}
    assert log_page_to_json(LogPage([], more=False), 3) == {"records": [], "more": False,
                                                            "next_after": 3}


def test_the_gateway_config_checks_a_postgres_url(tmp_path: Path) -> None:
    config = GatewayConfig(listen="127.0.0.1:0", upstream="http://127.0.0.1:9200",
                           wal_dir=tmp_path, wal_url="postgresql://gw@db:5432/wal")
    assert config.wal_url == "postgresql://gw@db:5432/wal"
    with pytest.raises(BadInput, match="names no database"):
        GatewayConfig(listen="127.0.0.1:0", upstream="http://127.0.0.1:9200", wal_dir=tmp_path,
                      wal_url="postgresql://gw@db:5432")


def test_the_cli_refuses_a_postgres_url_without_a_database(tmp_path: Path) -> None:
    result = run_cli("gateway", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1",
                     "--wal", "postgresql://gw@127.0.0.1:1", "--state-dir", str(tmp_path),
                     timeout=60)
    assert result.code == ExitCode.BAD_INPUT, result.stderr
    assert "names no database" in result.stderr


def test_the_cli_fails_cleanly_when_the_database_is_unreachable(tmp_path: Path) -> None:
    result = run_cli("gateway", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1",
                     "--wal", "postgresql://gw@127.0.0.1:1/wal", "--state-dir", str(tmp_path),
                     timeout=60)
    assert result.code == ExitCode.ENVIRONMENT, result.stderr
    assert "cannot use the PostgreSQL write-ahead log at postgresql://gw@127.0.0.1:1/wal" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_postgres_binaries_are_a_clear_environment_problem(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INDEXSHIFT_PG_BIN", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pgsandbox, "BIN_DIRS_GLOB", str(tmp_path / "postgresql" / "*" / "bin"))
    with pytest.raises(EnvironmentProblem, match="PostgreSQL server binaries") as caught:
        pgsandbox.find_bin_dir()
    assert caught.value.hint is not None and "INDEXSHIFT_PG_BIN" in caught.value.hint


def test_the_newest_postgres_binaries_are_chosen(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    for major in ("9", "15", "13"):
        folder = tmp_path / "postgresql" / major / "bin"
        folder.mkdir(parents=True)
        for name in pgsandbox.NEEDED_BINARIES:
            (folder / name).write_text("")
    monkeypatch.delenv("INDEXSHIFT_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pgsandbox, "BIN_DIRS_GLOB", str(tmp_path / "postgresql" / "*" / "bin"))
    assert pgsandbox.find_bin_dir() == tmp_path / "postgresql" / "15" / "bin"
