"""`indexshift events archive` and `indexshift rebuild` argument handling, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from indexshift.wal import WriteAheadLog
from tests.helpers import run_cli


def _log_with_segments(directory: Path) -> None:
    with WriteAheadLog.open(directory, segment_bytes=300) as wal:
        for i in range(12):
            wal.append_durable("PUT", f"/files/_doc/{i}", "",
                               [("content-type", "application/json")],
                               json.dumps({"n": i}).encode())


def test_archive_copies_closed_segments_once(tmp_path: Path) -> None:
    wal, archive = tmp_path / "wal", tmp_path / "archive"
    _log_with_segments(wal)
    first = run_cli("events", "archive", "--wal", str(wal), "--to", str(archive), "--json")
    assert first.code == 0, first.stderr
    archived = json.loads(first.stdout)["archived"]
    assert archived and all((archive / name).stat().st_mode & 0o777 == 0o444
                            for name in archived)
    again = json.loads(run_cli("events", "archive", "--wal", str(wal), "--to", str(archive),
                               "--json").stdout)
    assert again["archived"] == [] and sorted(again["already_archived"]) == sorted(archived)


def test_rebuild_refuses_a_time_it_cannot_read(tmp_path: Path) -> None:
    result = run_cli("rebuild", "files", "--from-events", str(tmp_path), "--until", "soon",
                     "--url", "http://127.0.0.1:1")
    assert result.code == 2
    assert len(result.stderr.strip().splitlines()) == 1
