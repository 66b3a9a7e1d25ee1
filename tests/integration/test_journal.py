"""The run journal and the migration lock on a real node: compare-and-set, leases, local trail."""

import json
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from indexshift.cluster import Cluster
from indexshift.errors import CheckFailed, Conflict, IndexshiftError
from indexshift.journal import (
    Journal,
    Lease,
    Phase,
    RunRecord,
    RunStatus,
    Versioned,
    iso_utc,
    journal_index_body,
    lease_doc_id,
    lease_to_source,
    this_host,
    this_user,
    utc_now,
)
from tests.conftest import Node

pytestmark = pytest.mark.cluster

T = TypeVar("T")


def _journal(cluster: Cluster, alias_name: str, local_dir: Path, **kwargs: object) -> Journal:
    return Journal(cluster, f"{alias_name}-journal", local_dir, **kwargs)  # type: ignore[arg-type]


def _new_run(alias: str, version: int = 2) -> RunRecord:
    return RunRecord.new(alias=alias, version=version, spec_name=f"000{version}_change",
                         spec_checksum="sha256:abc", blue=f"{alias}-v1", green=f"{alias}-v2")


def _race(*attempts: Callable[[], T]) -> list[T | IndexshiftError]:
    """Run the attempts at the same moment in threads; each yields a value or its error."""
    start = threading.Barrier(len(attempts))
    outcomes: list[T | IndexshiftError | None] = [None] * len(attempts)

    def run(position: int, attempt: Callable[[], T]) -> None:
        start.wait()
        try:
            outcomes[position] = attempt()
        except IndexshiftError as exc:
            outcomes[position] = exc

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def test_nothing_to_read_before_the_first_write(cluster: Cluster, alias_name: str,
                                                tmp_path: Path) -> None:
    journal = _journal(cluster, alias_name, tmp_path)
    assert journal.get_run("20260101t000000000-none") is None
    assert journal.latest_run(alias_name) is None
    assert journal.runs() == []
    assert journal.current_lease(alias_name) is None
    assert not cluster.index_exists(journal.index)


def test_runs_round_trip_through_a_hidden_journal_index(cluster: Cluster, alias_name: str,
                                                        tmp_path: Path) -> None:
    journal = _journal(cluster, alias_name, tmp_path)
    first = journal.create_run(_new_run(alias_name, 2))
    second = journal.create_run(_new_run(alias_name, 3))
    other = journal.create_run(_new_run(f"{alias_name}-other", 1))

    read = journal.get_run(first.value.run_id)
    assert read is not None
    assert read.value == first.value
    assert (read.seq_no, read.primary_term) == (first.seq_no, first.primary_term)
    assert read.value.checkpoints[0]["phase"] == "VALIDATING"

    latest = journal.latest_run(alias_name)
    assert latest is not None and latest.value.run_id == second.value.run_id
    assert latest.seq_no == second.seq_no
    assert [r.run_id for r in journal.runs(alias_name)] == [second.value.run_id,
                                                            first.value.run_id]
    assert [r.run_id for r in journal.runs(alias_name, limit=1)] == [second.value.run_id]
    assert other.value.run_id in {r.run_id for r in journal.runs()}

    with pytest.raises(Conflict):
        journal.create_run(first.value)  # create-only: a run id is never overwritten

    settings = cluster.settings(journal.index)[journal.index]["settings"]["index"]
    assert settings["hidden"] == "true"
    assert settings["number_of_shards"] == "1"
    assert settings["auto_expand_replicas"] == "0-1"
    mapping = cluster.mapping(journal.index)[journal.index]["mappings"]
    assert mapping["properties"]["copy_state"]["enabled"] is False
    assert set(mapping["properties"]) == {
        "kind", "alias", "run_id", "phase", "status", "started_at", "updated_at",
        "acquired_at", "heartbeat_at", "progress", "copy_state", "breaker", "holder",
        "checkpoints",
    }


def test_free_form_copy_state_does_not_grow_the_mapping(cluster: Cluster, alias_name: str,
                                                        tmp_path: Path) -> None:
    journal = _journal(cluster, alias_name, tmp_path)
    run = journal.create_run(_new_run(alias_name))
    marks = {f"slice_{i}": {"after": i} for i in range(50)}
    run = journal.advance(run, copy_state=marks)
    stored = journal.get_run(run.value.run_id)
    assert stored is not None and stored.value.copy_state == marks
    properties = cluster.mapping(journal.index)[journal.index]["mappings"]["properties"]
    assert set(properties) == set(journal_index_body()["mappings"]["properties"])


def test_two_processes_advancing_the_same_read_exactly_one_wins(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    ours = _journal(cluster, alias_name, tmp_path / "a")
    created = ours.create_run(_new_run(alias_name))
    with Cluster.connect(node.config) as other_connection:
        theirs = _journal(other_connection, alias_name, tmp_path / "b")
        read_by_them = theirs.get_run(created.value.run_id)
        assert read_by_them is not None
        outcomes = _race(
            lambda: ours.advance(created, phase=Phase.BACKUP_CREATED),
            lambda: theirs.advance(read_by_them, phase=Phase.GREEN_CREATED),
        )
    winners = [o for o in outcomes if isinstance(o, Versioned)]
    losers = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    winner_phase = winners[0].value.phase
    stored = ours.get_run(created.value.run_id)
    assert stored is not None and stored.value.phase == winner_phase
    message = str(losers[0])
    assert message == (
        f"run {created.value.run_id} was changed by another process since we read it "
        f"(phase {winner_phase.value}); re-read it with `indexshift status {alias_name}`"
    )

    # The stale read stays stale: advancing it again is refused too.
    with pytest.raises(Conflict, match="changed by another process"):
        ours.advance(created, status=RunStatus.FAILED)


def test_checkpoints_accumulate_in_order_with_a_private_local_trail(
        cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    local_dir = tmp_path / "runs"
    journal = _journal(cluster, alias_name, local_dir)
    run = journal.create_run(_new_run(alias_name))
    run = journal.advance(run, phase=Phase.BACKUP_CREATED, details={"snapshot": "snap-1"})
    run = journal.advance(run, phase=Phase.GREEN_CREATED)
    run = journal.advance(run, phase=Phase.REINDEX_STARTED, task_id="node-1:77")
    run = journal.advance(run, progress={"total": 10, "created": 5, "updated": 0,
                                         "deleted": 0, "percent": 50.0})
    run = journal.advance(run, phase=Phase.REINDEX_50)
    run = journal.advance(run, status=RunStatus.HALTED, details={"reason": "breaker open"},
                          breaker={"open": True, "reason": "429", "at": iso_utc(utc_now())})

    stored = journal.get_run(run.value.run_id)
    assert stored is not None
    record = stored.value
    assert [c["phase"] for c in record.checkpoints] == [
        "VALIDATING", "BACKUP_CREATED", "GREEN_CREATED", "REINDEX_STARTED", "REINDEX_50%",
        "REINDEX_50%",
    ]
    assert [c["status"] for c in record.checkpoints][-2:] == ["RUNNING", "HALTED"]
    assert record.checkpoints[1]["details"] == {"snapshot": "snap-1"}
    stamps = [c["at"] for c in record.checkpoints]
    assert stamps == sorted(stamps)
    assert record.task_id == "node-1:77" and record.progress["percent"] == 50.0
    assert record.status is RunStatus.HALTED and record.breaker["open"] is True
    assert record.updated_at >= record.started_at

    trail = local_dir / f"{record.run_id}.jsonl"
    assert stat.S_IMODE(trail.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    assert len(lines) == 7  # the creation and six advances
    assert RunRecord.model_validate(lines[-1]) == record
    assert [line["phase"] for line in lines] == [
        "VALIDATING", "BACKUP_CREATED", "GREEN_CREATED", "REINDEX_STARTED", "REINDEX_STARTED",
        "REINDEX_50%", "REINDEX_50%",
    ]


def test_only_one_of_two_racing_processes_gets_the_lease(
        node: Node, cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    ours = _journal(cluster, alias_name, tmp_path)
    with Cluster.connect(node.config) as other_connection:
        theirs = _journal(other_connection, alias_name, tmp_path)
        ours.ensure_index()  # the race is about the lease, not the index
        outcomes = _race(lambda: ours.acquire_lease(alias_name, "run-a"),
                         lambda: theirs.acquire_lease(alias_name, "run-b"))
    winners = [o for o in outcomes if isinstance(o, Versioned)]
    refused = [o for o in outcomes if isinstance(o, CheckFailed)]
    assert len(winners) == 1 and len(refused) == 1, outcomes
    lease = winners[0].value
    assert isinstance(lease, Lease)
    assert (lease.host, lease.user) == (this_host(), this_user())
    message = str(refused[0])
    assert message.startswith(f"alias {alias_name} is being migrated by run {lease.run_id} "
                              f"(pid {lease.pid} on host {lease.host}, heartbeat ")
    assert message.endswith(f"wait for it to finish or run `indexshift status {alias_name}`")

    current = ours.current_lease(alias_name)
    assert current is not None and current.value.run_id == lease.run_id

    # A third comer is refused as well, and a retry by the holder itself is harmless.
    with pytest.raises(CheckFailed, match=f"being migrated by run {lease.run_id}"):
        ours.acquire_lease(alias_name, "run-c")
    again = ours.acquire_lease(alias_name, lease.run_id)
    assert again.value.run_id == lease.run_id


def test_a_lease_with_an_old_heartbeat_needs_break_lock(cluster: Cluster, alias_name: str,
                                                        tmp_path: Path) -> None:
    an_hour_ago = _journal(cluster, alias_name, tmp_path,
                           clock=lambda: utc_now() - timedelta(hours=1))
    old = an_hour_ago.acquire_lease(alias_name, "run-old", ttl_s=60)

    journal = _journal(cluster, alias_name, tmp_path)
    with pytest.raises(CheckFailed) as refused:
        journal.acquire_lease(alias_name, "run-new", ttl_s=60)
    message = str(refused.value)
    assert f"alias {alias_name} is held by run run-old whose process is gone" in message
    assert message.endswith("to take it over, pass --break-lock")
    still = journal.current_lease(alias_name)
    assert still is not None and still.value.run_id == "run-old"

    taken = journal.acquire_lease(alias_name, "run-new", ttl_s=60, break_lock=True)
    assert taken.value.run_id == "run-new"
    current = journal.current_lease(alias_name)
    assert current is not None and current.value.run_id == "run-new"

    # The old holder, should it wake up, finds it has lost the lease, and cannot free it.
    with pytest.raises(Conflict, match="lost the lease"):
        an_hour_ago.heartbeat(old)
    assert an_hour_ago.release_lease(old) is False
    current = journal.current_lease(alias_name)
    assert current is not None and current.value.run_id == "run-new"


def test_a_lease_whose_local_process_is_gone_needs_break_lock(
        cluster: Cluster, alias_name: str, tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    gone_pid = int(finished.stdout)
    journal = _journal(cluster, alias_name, tmp_path)
    journal.ensure_index()
    now = iso_utc(utc_now())
    orphan = Lease(alias=alias_name, run_id="run-crashed", host=this_host(), pid=gone_pid,
                   user=this_user(), acquired_at=now, heartbeat_at=now, ttl_s=3600)
    cluster.put_doc(journal.index, lease_doc_id(alias_name), lease_to_source(orphan),
                    create_only=True, refresh=True)

    with pytest.raises(CheckFailed, match=f"run-crashed whose process is gone \\(pid {gone_pid}"):
        journal.acquire_lease(alias_name, "run-next")
    taken = journal.acquire_lease(alias_name, "run-next", break_lock=True)
    assert taken.value.run_id == "run-next"


def test_heartbeat_and_release_only_by_the_owner(cluster: Cluster, alias_name: str,
                                                 tmp_path: Path) -> None:
    journal = _journal(cluster, alias_name, tmp_path)
    first = journal.acquire_lease(alias_name, "run-a")
    beaten = journal.heartbeat(first)
    assert beaten.seq_no > first.seq_no
    assert beaten.value.heartbeat_at >= first.value.heartbeat_at

    # The superseded version is not the lease any more: it neither renews nor releases.
    with pytest.raises(Conflict, match="lost the lease"):
        journal.heartbeat(first)
    assert journal.release_lease(first) is False
    assert journal.current_lease(alias_name) is not None

    assert journal.release_lease(beaten) is True
    assert journal.current_lease(alias_name) is None
    assert journal.release_lease(beaten) is False  # already gone: nothing to do

    # Free again: the next run takes it at once.
    assert journal.acquire_lease(alias_name, "run-b").value.run_id == "run-b"
