"""Sequences the phases of a run. Every step is done by a component; this module only orders
them, records each checkpoint in the journal before going on, and knows where to pick up.

VALIDATING → BACKUP_CREATED → GREEN_CREATED → REINDEX_STARTED → REINDEX_50% → REINDEX_100% →
VALIDATED → ALIAS_SWITCHED → MONITORING → COMPLETED.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from indexshift import (
    canary,
    copier,
    cutover,
    gateway_link,
    hooks,
    monitor,
    preflight,
    validator,
)
from indexshift.breaker import Breaker
from indexshift.cluster import JSON, Cluster
from indexshift.diff import diff_indices
from indexshift.errors import BadInput, CheckFailed, IndexshiftError
from indexshift.journal import (
    Journal,
    Lease,
    Phase,
    RunRecord,
    RunStatus,
    Versioned,
    is_at_or_after,
    lease_is_stale,
    pid_alive,
    this_host,
    utc_now,
)
from indexshift.spec import Canary, Migration, parse_versioned_index, target_index_name

Events = Callable[[str, dict[str, Any]], None]
Confirm = Callable[[str], bool]
POLL_S = 0.5
CANARY_EVERY_S = 5.0
AWAITING_CUTOVER = "validated; the switch waits for `indexshift cutover`"
CATCH_UP_ROUNDS = 5


class Halted(CheckFailed):
    """The run stopped at a resumable checkpoint (breaker, hook, failed validation)."""


class RolledBack(CheckFailed):
    """The monitoring window saw a threshold crossed and put the alias back on blue."""


# ``breaker.by`` of a run stopped with `indexshift halt`: only an operator may close it again.
HALTED_BY_OPERATOR = "operator"


def operator_halt(run: RunRecord) -> str | None:
    """Why an operator halted the run, or None when no operator's halt holds it."""
    if run.breaker.get("open") and run.breaker.get("by") == HALTED_BY_OPERATOR:
        return str(run.breaker.get("reason") or "halted by an operator")
    return None


def refuse_operator_halt(run: RunRecord) -> None:
    reason = operator_halt(run)
    if reason is not None:
        raise Halted(f"run {run.run_id} of {run.alias} was halted by an operator: {reason}",
                     hint=f"release the halt first (`indexshift halt {run.alias} --release`)")


@dataclass
class RunOptions:
    yes: bool = False
    postpone_cutover: bool = False
    break_lock: bool = False
    repository: str | None = None
    hooks_dir: Path | None = None
    take_backup: bool = True
    confirm: Confirm = field(default=lambda _question: True)
    on_event: Events = field(default=lambda _kind, _data: None)
    should_stop: Callable[[], bool] = field(default=lambda: False)
    # The write-ahead gateway the application writes through: its log replaces the write
    # block at the switch and its mirror keeps blue whole for a rollback.
    gateway_url: str | None = None


@dataclass
class RunContext:
    """What one run works on; ``record`` is always the journal's latest version of it."""

    cluster: Cluster
    journal: Journal
    migration: Migration
    options: RunOptions
    record: Versioned[RunRecord]
    lease: Versioned[Lease] | None = None
    breaker: Breaker = field(default_factory=Breaker)

    @property
    def run(self) -> RunRecord:
        return self.record.value

    @property
    def blue(self) -> str:
        assert self.run.blue is not None
        return self.run.blue

    @property
    def green(self) -> str:
        assert self.run.green is not None
        return self.run.green

    def emit(self, kind: str, **data: Any) -> None:
        self.options.on_event(kind, {"run_id": self.run.run_id, "alias": self.run.alias, **data})

    def advance(self, phase: Phase | None = None, status: RunStatus | None = None,
                details: JSON | None = None, **updates: Any) -> None:
        self.record = self.journal.advance(self.record, phase=phase, status=status,
                                           details=details, **updates)
        if self.lease is not None:
            self.lease = self.journal.heartbeat(self.lease)
        if phase is not None:
            self.emit("phase", phase=str(phase), details=details or {})
            hooks.run_hooks(self.options.hooks_dir, {
                "alias": self.run.alias, "run_id": self.run.run_id, "phase": str(phase),
                "version": self.run.version, "blue": self.run.blue, "green": self.run.green,
                "docs_total": self.run.progress.get("total"),
                "docs_copied": self.run.progress.get("created"),
            })


# -- entry points ----------------------------------------------------------------------------


def current_blue(cluster: Cluster, alias: str) -> str:
    targets = cutover.require_alias(cluster, alias)
    if len(targets) != 1:
        raise CheckFailed(f"alias {alias} points at {len(targets)} indices "
                          f"({', '.join(sorted(targets))}); a run needs exactly one",
                          hint="run `indexshift assess` to see what happened")
    return next(iter(targets))


def applied_version(cluster: Cluster, alias: str) -> int:
    """The version the alias serves now, read from its physical index's name (0 if unknown)."""
    return parse_versioned_index(alias, current_blue(cluster, alias)) or 0


def start_run(cluster: Cluster, journal: Journal, migration: Migration,
              options: RunOptions) -> RunRecord:
    """Run one migration from the start through every phase."""
    alias = migration.spec.alias
    blue = current_blue(cluster, alias)
    record = RunRecord.new(alias=alias, version=migration.version, spec_name=migration.name,
                           spec_checksum=migration.checksum, blue=blue,
                           green=target_index_name(alias, migration.version, utc_now()))
    # The retention policy travels with the run, so cleanup needs no migrations directory.
    record = record.model_copy(update={"copy_state": {
        "retention": migration.spec.retention.model_dump(),
        **({"gateway": {"url": options.gateway_url}} if options.gateway_url else {})}})
    lease = journal.acquire_lease(alias, record.run_id, break_lock=options.break_lock)
    ctx = RunContext(cluster, journal, migration, options, journal.create_run(record), lease)
    return _drive(ctx)


def resume_run(cluster: Cluster, journal: Journal, migration: Migration,
               options: RunOptions) -> RunRecord:
    """Continue the alias's latest unfinished run from its last checkpoint."""
    alias = migration.spec.alias
    latest = journal.latest_run(alias)
    if latest is None or latest.value.status in (RunStatus.COMPLETED, RunStatus.ROLLED_BACK):
        raise BadInput(f"no unfinished run for alias {alias}",
                       hint="start one with `indexshift migrate`")
    if latest.value.version != migration.version or \
            latest.value.spec_checksum != migration.checksum:
        raise CheckFailed(
            f"run {latest.value.run_id} was started from {latest.value.spec_name} "
            f"v{latest.value.version} and that file has changed since",
            hint="restore the file as it was, or roll the run back (`indexshift rollback`)",
        )
    refuse_operator_halt(latest.value)
    lease = _reclaim_lease(journal, alias, latest.value.run_id, options.break_lock)
    ctx = RunContext(cluster, journal, migration, options, latest, lease)
    if ctx.run.status == RunStatus.HALTED:
        ctx.advance(status=RunStatus.RUNNING, breaker={"open": False, "reason": None,
                                                       "at": None}, error=None)
    if options.gateway_url and options.gateway_url != run_gateway(ctx.run):
        ctx.record = ctx.journal.advance(ctx.record, copy_state={
            **ctx.run.copy_state,
            "gateway": {**(ctx.run.copy_state.get("gateway") or {}),
                        "url": options.gateway_url}})
    ctx.emit("resume", phase=str(ctx.run.phase))
    return _drive(ctx)


def run_gateway(run: RunRecord) -> str | None:
    """The gateway URL a run was told (stored in its record, for resume and rollback)."""
    url = (run.copy_state.get("gateway") or {}).get("url")
    return str(url) if url else None


def _reclaim_lease(journal: Journal, alias: str, run_id: str,
                   break_lock: bool) -> Versioned[Lease]:
    current = journal.current_lease(alias)
    if current is not None and current.value.run_id == run_id:
        stale = lease_is_stale(current.value, utc_now(), current.value.ttl_s, this_host(),
                               pid_alive)
        # Resuming its own run after its process died is what resume is for.
        return journal.acquire_lease(alias, run_id, break_lock=stale or break_lock)
    return journal.acquire_lease(alias, run_id, break_lock=break_lock)


def plan_steps(migration: Migration, blue: str, when: datetime | None = None) -> dict[str, Any]:
    """The steps a run of ``migration`` would take from ``blue``, as data (for ``plan``)."""
    spec = migration.spec
    alias = spec.alias
    green = target_index_name(alias, migration.version, when or utc_now())
    transform = "none"
    if spec.transform is not None:
        transform = "painless script" if spec.transform.script else "ingest pipeline " + \
            copier.pipeline_name(alias, migration.version)
    steps = [
        (Phase.VALIDATING, "preflight: connectivity, source health, names, disk headroom, "
                           "no concurrent migration"),
        (Phase.BACKUP_CREATED, f"snapshot {blue} and verify SUCCESS, all shards, doc count"),
        (Phase.GREEN_CREATED, f"create {green} with the spec's settings and mappings "
                              "(replicas 0, refresh off while copying)"),
        (Phase.REINDEX_STARTED, f"server-side _reindex {blue} → {green}, slices "
                                f"{spec.copy_options.slices}, transform: {transform}"),
        (Phase.REINDEX_100, "restore replicas and refresh; catch up writes made to "
                            f"{blue} during the copy (by sequence number)"),
        (Phase.VALIDATED, "validate: count (tolerance "
                          f"{spec.validation.count_tolerance}), content "
                          f"({'exact diff' if spec.validation.sample_size is None else 'sample of ' + str(spec.validation.sample_size)}), "  # noqa: E501
                          f"schema ({len(spec.validation.required_fields)} fields), "
                          f"{len(spec.validation.canaries)} canaries, latency p95 ≤ "
                          f"{spec.validation.latency_p95_ms:g} ms"),
        (Phase.ALIAS_SWITCHED, f"block writes on {blue}, final catch-up, then one _aliases "
                               f"call: remove {blue}, add {green} as write index"),
        (Phase.MONITORING, f"watch {alias} for {spec.rollout.monitor_seconds}s; roll back "
                           "automatically past the thresholds"),
        (Phase.COMPLETED, f"keep {blue}: read-only after "
                          f"{spec.retention.read_only_after_days:g} days, deleted after "
                          f"{spec.retention.delete_after_days:g} days (`indexshift cleanup`)"),
    ]
    return {"version": migration.version, "name": migration.name, "file": str(migration.path),
            "blue": blue, "green": green,
            "steps": [{"phase": str(phase), "action": action} for phase, action in steps],
            "switch_actions": cutover.plan_switch(alias, blue, green, {blue: {}}).actions}


# -- the phases ------------------------------------------------------------------------------


def _drive(ctx: RunContext) -> RunRecord:
    try:
        if not is_at_or_after(ctx.run.phase, Phase.BACKUP_CREATED):
            _preflight(ctx)
        if not is_at_or_after(ctx.run.phase, Phase.GREEN_CREATED):
            _create_green(ctx)
        if not is_at_or_after(ctx.run.phase, Phase.REINDEX_100):
            _copy(ctx)
        if not is_at_or_after(ctx.run.phase, Phase.VALIDATED):
            _validate(ctx)
        if not is_at_or_after(ctx.run.phase, Phase.ALIAS_SWITCHED) and not _cut_over(ctx):
            return ctx.run
        if not is_at_or_after(ctx.run.phase, Phase.COMPLETED):
            _monitor(ctx)
    except RolledBack:
        raise
    except Halted as exc:
        _halt(ctx, exc.message)
        raise
    except IndexshiftError as exc:
        if ctx.run.status == RunStatus.RUNNING:
            _halt(ctx, str(exc))
        raise Halted(f"run {ctx.run.run_id} stopped at {ctx.run.phase}: {exc}",
                     hint=f"fix the cause, then `indexshift resume {ctx.run.alias}`") from exc
    finally:
        if ctx.lease is not None and ctx.run.status != RunStatus.RUNNING:
            with contextlib.suppress(IndexshiftError):
                ctx.journal.release_lease(ctx.lease)
    return ctx.run


def _halt(ctx: RunContext, reason: str) -> None:
    with contextlib.suppress(IndexshiftError):
        ctx.advance(status=RunStatus.HALTED, error=reason,
                    breaker={"open": True, "reason": reason, "at": utc_now().isoformat()})
    ctx.emit("halted", phase=str(ctx.run.phase), reason=reason)


def _preflight(ctx: RunContext) -> None:
    ctx.emit("phase", phase=str(Phase.VALIDATING), details={})
    report = preflight.run_preflight(
        ctx.cluster, ctx.run.alias, repository=ctx.options.repository,
        lease_check=lambda: (True, f"this run holds the lease on {ctx.run.alias}"),
        take_backup=ctx.options.take_backup,
    )
    ctx.emit("preflight", report=report.to_json())
    if not report.passed:
        failed = [c for c in report.checks if not c.passed]
        raise Halted("preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                     hint=" / ".join(c.fix for c in failed if c.fix) or None)
    backup = report.backup
    ctx.advance(Phase.BACKUP_CREATED, details={
        "snapshot": backup.name if backup else None,
        "repository": backup.repository if backup else None,
    }, copy_state={**ctx.run.copy_state,
                   "backup": {"repository": backup.repository, "snapshot": backup.name}
                   if backup else None})


def _create_green(ctx: RunContext) -> None:
    spec = ctx.migration.spec
    create, final = copier.copy_time_settings(dict(spec.settings),
                                              blue_replicas=_replicas_of(ctx.cluster, ctx.blue))
    if not ctx.cluster.index_exists(ctx.green):
        ctx.cluster.create_index(ctx.green, {"settings": create, "mappings": spec.mappings})
    pipeline = copier.ensure_pipeline(ctx.cluster, copier.pipeline_name(
        ctx.run.alias, ctx.run.version), spec)
    ctx.advance(Phase.GREEN_CREATED, details={"green": ctx.green},
                copy_state={**ctx.run.copy_state, "final_settings": final, "pipeline": pipeline})


def _replicas_of(cluster: Cluster, index: str) -> int:
    settings = cluster.index_settings(index)["index"]
    return int(settings.get("number_of_replicas", 1))


def _copy(ctx: RunContext) -> None:
    state = ctx.run.copy_state
    pipeline = state.get("pipeline")
    task_id = ctx.run.task_id
    progress = copier.read_progress(ctx.cluster, task_id) if task_id else None
    if task_id is None:
        # The gateway's position first: every write it logs later is replayed into green.
        gateway_url = run_gateway(ctx.run)
        gateway = {"url": gateway_url, "start_seq": gateway_link.log_position(gateway_url)} \
            if gateway_url else None
        if gateway is not None:
            gateway["replayed_through"] = gateway["start_seq"]
        # Mark first, refresh second: every write numbered up to the mark is then visible to
        # the copy's scroll, and every later one is above the mark for the catch-up.
        mark = copier.seq_no_mark(ctx.cluster, ctx.blue)
        ctx.cluster.refresh(ctx.blue)
        task_id = copier.start_copy(ctx.cluster, ctx.blue, ctx.green, ctx.migration.spec,
                                    pipeline)
        details: dict[str, Any] = {"task_id": task_id, "seq_no_mark": mark}
        if gateway is not None:
            details["gateway_seq"] = gateway["start_seq"]
            state = {**state, "gateway": gateway}
        ctx.advance(Phase.REINDEX_STARTED, details=details,
                    task_id=task_id, copy_state={**state, "seq_no_mark": mark})
    elif progress is None or (progress.completed and (progress.error or progress.failures)):
        # The task is gone (its node restarted) or died: copy only what green still lacks.
        ctx.emit("reattach", task_id=task_id, alive=False)
        _copy_missing(ctx, pipeline)
        _finish_copy(ctx)
        return
    else:
        ctx.emit("reattach", task_id=task_id, alive=not progress.completed)
    _watch_task(ctx, task_id)
    _finish_copy(ctx)


def _working_canaries(ctx: RunContext) -> list[Canary]:
    """The spec's canaries that work on what the alias serves now.

    Canaries are written for the new mapping; one that cannot run on the old index (a nested
    query before the field is nested) says nothing about the copy, so only those that work
    when the copy starts are watched during it.
    """
    canaries = list(ctx.migration.spec.validation.canaries)
    report = canary.run_canaries(ctx.cluster, ctx.run.alias, canaries, runs=1)
    working = {r.name for r in report.results if not r.errors}
    return [c for c in canaries if c.name in working]


def _canaries_fail(ctx: RunContext, canaries: list[Canary]) -> str | None:
    """Run the canaries against what the alias serves; the first failure, if any."""
    if not canaries:
        return None
    report = canary.run_canaries(ctx.cluster, ctx.run.alias, canaries, runs=1)
    failed = [r for r in report.results if r.errors]
    return f"canary {failed[0].name}: {failed[0].errors[0]}" if failed else None


def _watch_task(ctx: RunContext, task_id: str) -> None:
    watched = _working_canaries(ctx)
    next_canary = time.monotonic() + CANARY_EVERY_S
    while True:
        if ctx.options.should_stop():
            raise Halted("stopped on request")
        try:
            progress = copier.read_progress(ctx.cluster, task_id)
            health = ctx.cluster.health().get("status")
        except IndexshiftError as exc:
            if ctx.breaker.failure(f"cannot read the copy task: {exc}"):
                raise Halted(f"circuit breaker open: {ctx.breaker.reason}") from exc
            time.sleep(POLL_S)
            continue
        if health == "red":
            with contextlib.suppress(IndexshiftError):
                ctx.cluster.cancel_task(task_id)
            ctx.breaker.trip("cluster health is red")
            raise Halted("circuit breaker open: cluster health is red")
        if progress is None:
            return  # finished and forgotten by the cluster: _finish_copy verifies
        if progress.failures or progress.error:
            reason = progress.error or progress.failures[0]
            raise Halted(f"circuit breaker open: the copy task failed: {reason}")
        if time.monotonic() >= next_canary:
            next_canary = time.monotonic() + CANARY_EVERY_S
            problem = _canaries_fail(ctx, watched)
            if problem is not None:
                if ctx.breaker.failure(problem):
                    with contextlib.suppress(IndexshiftError):
                        ctx.cluster.cancel_task(task_id)
                    raise Halted(f"circuit breaker open: {ctx.breaker.reason}")
                time.sleep(POLL_S)
                continue
        ctx.breaker.success()
        ctx.emit("progress", progress=progress.to_json())
        if progress.percent >= 50 and not is_at_or_after(ctx.run.phase, Phase.REINDEX_50):
            ctx.advance(Phase.REINDEX_50, details={"progress": progress.to_json()},
                        progress=progress.to_json())
        if progress.completed:
            ctx.record = ctx.journal.advance(ctx.record, progress=progress.to_json())
            return
        time.sleep(POLL_S)


def _copy_missing(ctx: RunContext, pipeline: str | None) -> None:
    ctx.cluster.refresh(ctx.blue)
    ctx.cluster.refresh(ctx.green)
    result = diff_indices(ctx.cluster, ctx.blue, ctx.green, ids_only=True, max_ids=None)
    copied = copier.copy_ids(ctx.cluster, ctx.blue, ctx.green, result.missing,
                             ctx.migration.spec, pipeline)
    ctx.emit("copy_missing", missing=result.missing_total, copied=copied)


def _finish_copy(ctx: RunContext) -> None:
    state = ctx.run.copy_state
    final = state.get("final_settings") or {}
    ctx.cluster.put_settings(ctx.green, {"index": final})
    ctx.cluster.refresh(ctx.green)
    mark = int(state.get("seq_no_mark", -1))
    rounds = []
    for _ in range(CATCH_UP_ROUNDS):
        copied, mark = copier.catch_up(ctx.cluster, ctx.blue, ctx.green, ctx.migration.spec,
                                       mark, state.get("pipeline"))
        rounds.append(copied)
        if copied == 0:
            break
    replayed: dict[str, Any] = {}
    gateway = state.get("gateway") or {}
    if gateway.get("url") and gateway.get("replayed_through") is not None:
        # The writes the gateway logged since the copy started, deletes included.
        replay = gateway_link.replay_into_green(
            ctx.cluster, str(gateway["url"]), alias=ctx.run.alias, blue=ctx.blue,
            green=ctx.green, spec=ctx.migration.spec, pipeline=state.get("pipeline"),
            after=int(gateway["replayed_through"]))
        replayed = {"gateway_replay": replay.to_json()}
        ctx.emit("gateway_replay", **replay.to_json())
        state = {**state, "gateway": {**gateway, "replayed_through": replay.through}}
    ctx.cluster.health(ctx.green, wait_for_status="yellow", timeout="60s")
    counts = {"blue": ctx.cluster.count(ctx.blue), "green": ctx.cluster.count(ctx.green)}
    ctx.advance(Phase.REINDEX_100, details={"catch_up_rounds": rounds, **counts, **replayed},
                copy_state={**state, "seq_no_mark": mark},
                progress={**ctx.run.progress, "percent": 100.0})


def _validate(ctx: RunContext) -> None:
    spec = ctx.migration.spec
    pipeline = ctx.run.copy_state.get("pipeline")
    _, mark = copier.catch_up(ctx.cluster, ctx.blue, ctx.green, spec,
                              int(ctx.run.copy_state.get("seq_no_mark", -1)), pipeline)
    in_flight: list[int] = []

    def settled_diff(a: str, b: str) -> copier.SettledDiff:
        result = diff_indices(ctx.cluster, a, b, ids_only=spec.transform is not None,
                              max_ids=None)
        # A difference whose document moved in blue since the mark is a write in flight (the
        # switch closes it exactly). A real-time read of each tells, deletes included, which
        # no search for recent writes can see.
        moved = copier.moved_since(ctx.cluster, ctx.blue, result.missing + result.changed, mark)
        settled = copier.settle_diff(result.missing, result.extra, result.changed, moved)
        in_flight.append(settled.in_flight)
        return settled

    report = validator.validate(ctx.cluster, ctx.blue, ctx.green, spec.validation,
                                diff=settled_diff, compare_content=spec.transform is None)
    report = validator.with_writes_in_flight(report, sum(in_flight))
    ctx.emit("validation", report=report.to_json())
    if not report.passed:
        ctx.record = ctx.journal.advance(ctx.record, copy_state={
            **ctx.run.copy_state, "validation": report.to_json()})
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.failures())
        raise Halted(f"validation failed, {ctx.green} kept and the alias not switched: {failed}")
    ctx.advance(Phase.VALIDATED, details={"validation": report.to_json()})


def _cut_over(ctx: RunContext) -> bool:
    """Switch the alias; False when the switch waits for `indexshift cutover`."""
    if ctx.options.postpone_cutover:
        ctx.record = ctx.journal.advance(ctx.record, status=RunStatus.HALTED,
                                         error=AWAITING_CUTOVER)
        ctx.emit("postponed", green=ctx.green)
        return False
    if not ctx.options.yes and not ctx.options.confirm(
            f"switch {ctx.run.alias} from {ctx.blue} to {ctx.green}?"):
        raise Halted("switch declined at the prompt")
    # The switch is no checkpoint write a halt's compare-and-set would stop: look first.
    stored = ctx.journal.get_run(ctx.run.run_id)
    if stored is not None:
        refuse_operator_halt(stored.value)
    result = switch_with_gateway_hold(ctx) if run_gateway(ctx.run) else \
        switch_with_write_block(ctx)
    ctx.advance(Phase.ALIAS_SWITCHED, details=result)
    return True


def switch_with_gateway_hold(ctx: RunContext) -> dict[str, Any]:
    """The switch through the gateway: it holds writes for the instant of the switch (they
    wait, none fails) instead of a write block on blue; see :mod:`indexshift.gateway_link`."""
    url = run_gateway(ctx.run)
    assert url is not None
    state = ctx.run.copy_state
    gateway = state.get("gateway") or {}
    through = gateway.get("replayed_through")
    result = gateway_link.switch_under_hold(
        ctx.cluster, url, alias=ctx.run.alias, blue=ctx.blue, green=ctx.green,
        spec=ctx.migration.spec, pipeline=state.get("pipeline"),
        seq_no_mark=int(state.get("seq_no_mark", -1)),
        replayed_through=None if through is None else int(through))
    ctx.record = ctx.journal.advance(ctx.record, copy_state={
        **ctx.run.copy_state, "gateway": {**gateway, "url": url, "mirror": ctx.blue,
                                          "replayed_through": result["replayed_through"]}})
    ctx.emit("cutover", hold_ms=result["hold_ms"], switch_ms=result["switch_ms"],
             copied=result["final_copied"], deleted=result["final_deleted"],
             docs=result["docs"], held_writes=result["held_writes"])
    return result


@contextlib.contextmanager
def _writes_blocked(cluster: Cluster, index: str) -> Iterator[None]:
    cluster.add_write_block(index)
    try:
        yield
    except BaseException:
        cluster.remove_write_block(index)
        raise


def switch_with_write_block(ctx: RunContext) -> dict[str, Any]:
    """Final catch-up under a short write block on blue, then the atomic switch.

    After sequence-number catch-up green holds every document blue holds (and perhaps some
    blue deleted meanwhile), so equal counts prove the ids equal; only when they differ is
    an id comparison needed, to delete what blue deleted.
    """
    spec = ctx.migration.spec
    pipeline = ctx.run.copy_state.get("pipeline")
    mark = int(ctx.run.copy_state.get("seq_no_mark", -1))
    copier.catch_up(ctx.cluster, ctx.blue, ctx.green, spec, mark, pipeline)
    plan = cutover.plan_switch(ctx.run.alias, ctx.blue, ctx.green,
                               ctx.cluster.alias_targets(ctx.run.alias))
    started = time.perf_counter()
    deleted = copied = 0
    with _writes_blocked(ctx.cluster, ctx.blue):
        copied, mark = copier.catch_up(ctx.cluster, ctx.blue, ctx.green, spec, mark, pipeline)
        ctx.cluster.refresh(ctx.blue)
        ctx.cluster.refresh(ctx.green)
        blue_count, green_count = ctx.cluster.count(ctx.blue), ctx.cluster.count(ctx.green)
        if blue_count != green_count:
            result = diff_indices(ctx.cluster, ctx.blue, ctx.green, ids_only=True,
                                  max_ids=None)
            copied += copier.copy_ids(ctx.cluster, ctx.blue, ctx.green, result.missing, spec,
                                      pipeline)
            deleted = copier.delete_ids(ctx.cluster, ctx.green, result.extra)
            green_count = ctx.cluster.count(ctx.green)
            if green_count != blue_count:
                raise CheckFailed(f"{ctx.green} has {green_count} documents after catch-up, "
                                  f"{ctx.blue} {blue_count}: not switching")
        switched = cutover.apply(ctx.cluster, plan)
    block_ms = (time.perf_counter() - started) * 1000
    green_mark = copier.seq_no_mark(ctx.cluster, ctx.green)
    ctx.emit("cutover", block_ms=round(block_ms, 1), switch_ms=round(switched.took_ms, 1),
             copied=copied, deleted=deleted, docs=blue_count)
    return {"write_block_ms": round(block_ms, 1), "switch_ms": round(switched.took_ms, 1),
            "final_copied": copied, "final_deleted": deleted, "docs": blue_count,
            "green_seq_no_mark": green_mark}


def _monitor(ctx: RunContext) -> None:
    spec = ctx.migration.spec
    ctx.advance(Phase.MONITORING, details={"seconds": spec.rollout.monitor_seconds})
    outcome = monitor.watch(ctx.cluster, ctx.run.alias, spec.validation.canaries, spec.rollout,
                            on_sample=lambda s: ctx.emit("monitor", sample=s.to_json()),
                            should_stop=ctx.options.should_stop)
    if outcome.breach is not None:
        reason = f"monitoring threshold crossed: {outcome.breach.detail}"
        rolled = rollback(ctx.cluster, ctx.journal, ctx.run.alias, reason=reason,
                          record=ctx.record)
        ctx.record = rolled
        ctx.emit("rolled_back", reason=reason)
        raise RolledBack(f"{reason}; rolled back to {ctx.blue}",
                         hint="see `indexshift status` and the run's validation numbers")
    if not outcome.ok:
        raise Halted("stopped on request during the monitoring window")
    ctx.advance(Phase.COMPLETED, status=RunStatus.COMPLETED)
    _stop_mirror(ctx.run, ctx.emit)
    ctx.emit("completed", green=ctx.green, blue=ctx.blue)


def _stop_mirror(run: RunRecord, emit: Callable[..., None] | None = None) -> None:
    """End the gateway's dual write to blue once the run is over (completed or rolled back)."""
    url = run_gateway(run)
    if url is None or gateway_link.mirrors(url, run.alias, run.blue or "") is None:
        return
    try:
        stopped = gateway_link.stop_mirror(url)
    except IndexshiftError as exc:
        if emit is not None:
            emit("warning", message=f"the gateway still mirrors {run.alias} to {run.blue}: "
                                    f"{exc.message}; clear it with DELETE /_indexshift/"
                                    "gateway/mirror")
        return
    if emit is not None:
        emit("mirror_stopped", mirrored=stopped.get("mirrored"), failed=stopped.get("failed"))


# -- after the switch ------------------------------------------------------------------------


def green_mark_at_switch(run: RunRecord) -> int | None:
    """Green's sequence-number mark taken at the alias switch; None before any switch."""
    switched = next((c for c in reversed(run.checkpoints)
                     if c.get("phase") == str(Phase.ALIAS_SWITCHED)), None)
    if switched is None:
        return None
    return int((switched.get("details") or {}).get("green_seq_no_mark", -1))


def writes_since_switch(cluster: Cluster, run: RunRecord) -> int:
    """How many documents green took after the switch (0: the old index is still current)."""
    mark = green_mark_at_switch(run)
    if mark is None or run.green is None or not cluster.index_exists(run.green):
        return 0
    cluster.refresh(run.green)
    return cluster.count(run.green, {"range": {"_seq_no": {"gt": mark}}})


def rollback_plan(cluster: Cluster, journal: Journal, alias: str, *,
                  record: Versioned[RunRecord] | None = None,
                  catch_up: bool = False) -> tuple[cutover.SwitchPlan, Versioned[RunRecord]]:
    """The atomic call that would point the alias back at the run's old index, with checks."""
    current = record or journal.latest_run(alias)
    if current is None:
        raise BadInput(f"no run recorded for alias {alias}; nothing to roll back",
                       hint="use `indexshift recover` for migrations done by other tools")
    run = current.value
    if run.blue is None or run.green is None:
        raise BadInput(f"run {run.run_id} has no old and new index to switch between")
    # With --catch-up the writes are copied back first, so they do not block the plan; with
    # the gateway's mirror on since the switch, blue took every one of them too.
    mirrored = gateway_link.mirror_covers(run_gateway(run), alias, run.blue)
    writes = 0 if catch_up or mirrored else writes_since_switch(cluster, run)
    plan = cutover.plan_rollback(alias, run.blue, run.green, cluster.alias_targets(alias),
                                 blue_exists=cluster.index_exists(run.blue),
                                 writes_since_switch=writes)
    return plan, current


def rollback(cluster: Cluster, journal: Journal, alias: str, *, reason: str,
             record: Versioned[RunRecord] | None = None,
             catch_up: bool = False) -> Versioned[RunRecord]:
    """Point the alias back at the run's old index, in one atomic call."""
    plan, current = rollback_plan(cluster, journal, alias, record=record, catch_up=catch_up)
    run = current.value
    assert run.blue is not None
    url = run_gateway(run)
    if not catch_up and url is not None and not plan.noop and \
            gateway_link.mirror_covers(url, alias, run.blue):
        held = gateway_link.rollback_under_hold(cluster, url, plan, alias=alias, blue=run.blue)
        return journal.advance(current, status=RunStatus.ROLLED_BACK, error=reason,
                               details={"switch_ms": held["switch_ms"],
                                        "hold_ms": held["hold_ms"],
                                        "mirrored": held["mirrored"]},
                               copy_state={**run.copy_state, "rolled_back": reason})
    cluster.remove_write_block(run.blue)
    if catch_up and writes_since_switch(cluster, run):
        _copy_back(cluster, run)
    switched = cutover.apply(cluster, plan)
    _stop_mirror(run)
    return journal.advance(current, status=RunStatus.ROLLED_BACK, error=reason,
                           details={"switch_ms": round(switched.took_ms, 1)},
                           copy_state={**run.copy_state, "rolled_back": reason})


def _copy_back(cluster: Cluster, run: RunRecord) -> None:
    assert run.blue is not None and run.green is not None
    cluster.remove_write_block(run.blue)
    mark = green_mark_at_switch(run)
    assert mark is not None  # only called once writes since the switch were counted
    copier.copy_documents(cluster, run.green, run.blue,
                          copier.ids_written_since(cluster, run.green, mark),
                          create_only=False, refresh=True,
                          what="copying writes back into the old index",
                          hint="the old index's mapping may not accept the new documents")
