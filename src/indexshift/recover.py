"""Carry out the recovery that ``assess`` chose: plan as data first, then run the plan.

:func:`plan_recovery` is pure: an :class:`~indexshift.assess.Assessment` in, a
:class:`RecoveryPlan` out — the steps in words, the exact data each step sends, and the
preconditions each step needs. ``--dry-run`` prints that plan and stops. :func:`execute` checks
every precondition against the live cluster right before its step (the cluster may have moved
since the assessment), runs the step, times it, and removes what it created for its own use
whatever happens.

Nothing here makes things worse: restores go to new indices, the broken index is kept
(write-blocked, for forensics), a document the application wrote again since the backup is
never overwritten by a selective copy, and the alias moves in one atomic ``_aliases`` call.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from indexshift import assess as assess_module
from indexshift.assess import (  # the names of restored indices: assess reads them back
    Assessment,
    BackupRef,
    Method,
    MigrationState,
    emergency_restore_name,
    recovery_stamp,
    restored_name,
)
from indexshift.cluster import Cluster
from indexshift.copier import copy_documents, present_ids
from indexshift.errors import BadInput, CheckFailed, IndexshiftError, NotFound
from indexshift.snapshots import SnapshotInfo, index_name_problem, restore_as

log = logging.getLogger(__name__)

JSON = dict[str, Any]

# Step kinds: what execute() knows how to run.
RESTORE = "restore_snapshot"
VERIFY_RESTORED = "verify_restored"
COPY = "copy_documents"
REFRESH = "refresh"
VERIFY_PRESENT = "verify_present"
DELETE_TEMPORARY = "delete_temporary_index"
BLOCK_WRITES = "block_writes"
ALLOW_WRITES = "allow_writes"
SWITCH_ALIAS = "switch_alias"

# Precondition kinds: what check_precondition() knows how to judge.
ALIAS_TARGETS = "alias_targets"
INDEX_USABLE = "index_usable"
INDEX_ABSENT = "index_absent"
SNAPSHOT_READY = "snapshot_ready"

_REFUSED = {
    Method.DISASTER_RECOVERY: (
        "there is no valid backup and what {alias} serves is not usable: nothing can be "
        "restored automatically; escalate to the senior team and engage disaster recovery"),
    Method.BLUE_GREEN_REQUIRED: (
        "the mapping behind {alias} is wrong and cannot be changed in place; run a migration "
        "with the right mapping: `indexshift new NAME --alias {alias}`, edit it, then "
        "`indexshift migrate`"),
}


# -- the plan (data) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Precondition:
    """Something that must hold in the live cluster right before a step runs."""

    kind: str
    description: str
    details: JSON

    def to_json(self) -> JSON:
        return {"kind": self.kind, "description": self.description, "details": self.details}


@dataclass(frozen=True)
class RecoveryStep:
    kind: str
    description: str
    details: JSON
    preconditions: tuple[Precondition, ...] = ()

    def to_json(self) -> JSON:
        return {"kind": self.kind, "description": self.description, "details": self.details,
                "preconditions": [p.to_json() for p in self.preconditions]}


@dataclass(frozen=True)
class RecoveryPlan:
    """Every operation of one recovery, in order, as data; empty when nothing is to be done."""

    method: Method
    alias: str
    summary: str
    steps: tuple[RecoveryStep, ...]
    notes: tuple[str, ...] = ()
    restored_index: str | None = None  # the index the alias will point at, when restored
    temporary_indices: tuple[str, ...] = ()  # created for the recovery's own use, then dropped

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def preconditions(self) -> list[Precondition]:
        return [p for step in self.steps for p in step.preconditions]

    def to_json(self) -> JSON:
        return {"method": self.method.value, "alias": self.alias, "summary": self.summary,
                "empty": self.empty, "notes": list(self.notes),
                "restored_index": self.restored_index,
                "temporary_indices": list(self.temporary_indices),
                "steps": [step.to_json() for step in self.steps]}


def stamp(now: datetime) -> str:
    """UTC time as it appears in index names: ``20261123t101500``."""
    return recovery_stamp(now)


def temporary_restore_name(alias: str, when: str) -> str:
    return f"{alias}-recover-{when}"


def _alias_check(assessment: Assessment, write_index: str | None = None) -> Precondition:
    seen = sorted(assessment.serving)
    where = ", ".join(seen) or "no index"
    return Precondition(
        ALIAS_TARGETS,
        f"{assessment.alias} still points at {where}, as the assessment saw it",
        {"alias": assessment.alias, "indices": seen, "write_index": write_index})


def _usable(index: str, why: str) -> Precondition:
    return Precondition(INDEX_USABLE, f"{index} exists, is open and not red ({why})",
                        {"index": index})


def _absent(index: str) -> Precondition:
    return Precondition(INDEX_ABSENT, f"no index or alias is named {index} yet",
                        {"index": index})


def _snapshot_ready(backup: BackupRef) -> Precondition:
    return Precondition(
        SNAPSHOT_READY,
        f"snapshot {backup.repository}/{backup.name} is complete and holds {backup.index}",
        {"repository": backup.repository, "snapshot": backup.name, "index": backup.index})


def _restore_step(backup: BackupRef, new_name: str, *, temporary: bool,
                  extra: Sequence[Precondition]) -> RecoveryStep:
    problem = index_name_problem(new_name)
    if problem:
        raise BadInput(f"cannot restore as {new_name!r}: {problem}",
                       hint="use an alias whose name is a valid index name")
    settings: JSON | None = {"index.number_of_replicas": 0} if temporary else None
    purpose = "a temporary copy to read from" if temporary else "the index the alias will serve"
    return RecoveryStep(
        RESTORE,
        f"restore {backup.index} from snapshot {backup.repository}/{backup.name} as "
        f"{new_name} ({purpose}), without its aliases; nothing is restored over",
        {"repository": backup.repository, "snapshot": backup.name, "index": backup.index,
         "new_name": new_name, "temporary": temporary, "index_settings": settings},
        (*extra, _snapshot_ready(backup), _absent(new_name)))


def _write_index(assessment: Assessment) -> str:
    """The index that takes the alias's writes, as the assessment saw it."""
    serving = sorted(assessment.serving)
    if len(serving) == 1:
        return serving[0]
    if not serving:
        raise BadInput(f"alias {assessment.alias} points at no index, so there is nothing to "
                       "copy documents into",
                       hint="restore instead: --method FULL_RESTORE or EMERGENCY_RESTORE")
    flagged = [str(target.get("index")) for target in
               assessment.evidence.get("alias_targets") or []
               if isinstance(target, dict) and target.get("is_write_index") is True]
    if len(flagged) == 1 and flagged[0] in serving and \
            assessment.state is not MigrationState.MID_SWITCH:
        return flagged[0]
    raise BadInput(f"alias {assessment.alias} points at {', '.join(serving)}"
                   + (" in a half-done switch" if assessment.state is MigrationState.MID_SWITCH
                      else " with no single write index"),
                   hint="settle the switch first: --method COMPLETE_SWITCH or ROLLBACK")


def _need_backup(assessment: Assessment, method: Method, *, snapshot: bool) -> BackupRef:
    backup = assessment.backup
    alias = assessment.alias
    if backup is None:
        kind = "a snapshot" if snapshot else "a snapshot or an index"
        raise BadInput(f"{method.value} of {alias} needs a backup and the assessment found none",
                       hint=f"pass --backup with {kind} that holds the lost documents")
    if snapshot and backup.kind != "snapshot":
        raise BadInput(f"{method.value} of {alias} restores a snapshot, and the backup "
                       f"{backup.name} is an index",
                       hint="pass --backup with a snapshot, or use --method SELECTIVE_REINDEX "
                            "to copy the missing documents from that index")
    if backup.kind not in ("snapshot", "index"):
        raise BadInput(f"backup {backup.name} is of unknown kind {backup.kind!r}")
    if backup.kind == "snapshot" and not backup.repository:
        raise BadInput(f"backup snapshot {backup.name} names no repository",
                       hint="pass --backup with the repository and the snapshot")
    return backup


def _plan_selective(assessment: Assessment, include_changed: bool, when: str) -> RecoveryPlan:
    method = Method.SELECTIVE_REINDEX
    alias = assessment.alias
    backup = _need_backup(assessment, method, snapshot=False)
    missing = list(dict.fromkeys(assessment.missing_ids))
    changed = list(dict.fromkeys(assessment.changed_ids)) if include_changed else []
    if assessment.ids_truncated:
        raise CheckFailed(f"the assessment of {alias} could not list every differing id, and "
                          "copying only those listed would leave the rest missing",
                          hint="use --method FULL_RESTORE")
    known_missing = assessment.counts.missing
    if known_missing is None and not missing:
        raise BadInput(f"the assessment of {alias} did not compare it with the backup, so the "
                       "missing documents are unknown",
                       hint="pass --backup so assess can list them, or use --method "
                            "FULL_RESTORE")
    if known_missing is not None and known_missing > len(missing):
        raise CheckFailed(f"the assessment counted {known_missing:,} missing documents but "
                          f"listed only {len(missing):,} of their ids; copying those would "
                          "leave the rest missing",
                          hint="use --method FULL_RESTORE")
    known_changed = assessment.counts.changed
    if include_changed and known_changed is not None and known_changed > len(changed):
        raise CheckFailed(f"the assessment counted {known_changed:,} changed documents but "
                          f"listed only {len(changed):,} of their ids",
                          hint="leave out --include-changed, or use --method FULL_RESTORE")
    if not missing and not changed:
        return RecoveryPlan(method, alias, f"nothing to copy: {alias} lacks no document of "
                            f"the backup {backup.name}", ())
    dest = _write_index(assessment)
    if assessment.current_index is not None and assessment.current_index != dest:
        raise BadInput(f"the missing documents were measured on {assessment.current_index}, "
                       f"but {alias} writes to {dest}",
                       hint="settle the switch first: --method COMPLETE_SWITCH or ROLLBACK")
    if backup.kind == "index" and backup.index == dest:
        raise BadInput(f"the backup {backup.index} is the index the documents are missing from",
                       hint="pass --backup with a snapshot or another index")
    alias_check = _alias_check(assessment, dest)
    steps: list[RecoveryStep] = []
    temporary: tuple[str, ...] = ()
    notes: list[str] = []
    if backup.kind == "snapshot" and backup.restored_as is not None:
        # recover() restored the snapshot aside for the assessments: copy from that copy.
        source = backup.restored_as
        notes.append(f"{source} is {backup.index} of snapshot {backup.repository}/"
                     f"{backup.name}, restored aside once for this recovery and deleted at its "
                     "end")
    elif backup.kind == "snapshot":
        source = temporary_restore_name(alias, when)
        temporary = (source,)
        steps.append(_restore_step(backup, source, temporary=True, extra=(alias_check,)))
    else:
        source = backup.index
    steps.append(RecoveryStep(
        COPY,
        f"copy the {len(missing):,} missing document(s) from {source} into {dest}, create-only: "
        "a document written again since the backup is kept as it is",
        {"source": source, "dest": dest, "ids": missing, "create_only": True},
        (alias_check, _usable(source, "the copy reads from it"),
         _usable(dest, "the copy writes into it"))))
    if changed:
        steps.append(RecoveryStep(
            COPY,
            f"overwrite the {len(changed):,} changed document(s) in {dest} with their backup "
            f"version from {source}",
            {"source": source, "dest": dest, "ids": changed, "create_only": False},
            (alias_check, _usable(source, "the copy reads from it"))))
    copied = missing + changed
    steps.append(RecoveryStep(REFRESH, f"refresh {dest} so the copies are searchable",
                              {"index": dest}))
    steps.append(RecoveryStep(VERIFY_PRESENT,
                              f"check that each of the {len(copied):,} document(s) is in {dest}",
                              {"index": dest, "ids": copied}))
    if temporary:
        steps.append(RecoveryStep(DELETE_TEMPORARY, f"delete the temporary restore {source}",
                                  {"index": source}))
    what = f"{len(missing):,} missing" + (f" and {len(changed):,} changed" if changed else "")
    notes.insert(0, f"the alias stays on {dest}: no downtime")
    if not include_changed and assessment.changed_ids:
        notes.append(f"{len(assessment.changed_ids):,} document(s) differ from the backup and "
                     "are left as they are (pass --include-changed to restore their backup "
                     "version)")
    return RecoveryPlan(method, alias,
                        f"copy the {what} document(s) of {alias} back from {backup.name}",
                        tuple(steps), tuple(notes), None, temporary)


def _plan_restore(assessment: Assessment, method: Method, when: str) -> RecoveryPlan:
    alias = assessment.alias
    backup = _need_backup(assessment, method, snapshot=True)
    emergency = method == Method.EMERGENCY_RESTORE
    new_name = (emergency_restore_name(backup.index, when) if emergency
                else restored_name(alias, when))
    serving = sorted(assessment.serving)
    alias_check = _alias_check(assessment)
    expected = assessment.counts.backup
    steps = [
        _restore_step(backup, new_name, temporary=False, extra=(alias_check,)),
        RecoveryStep(
            VERIFY_RESTORED,
            f"check that {new_name} is open, not red and holds "
            + (f"{expected:,} documents, as the backup does" if expected is not None
               else "the documents of the backup"),
            {"index": new_name, "expected_count": expected}),
    ]
    if serving:
        steps.append(RecoveryStep(
            BLOCK_WRITES,
            f"block writes on {', '.join(serving)} and keep it for forensics (never deleted, "
            "never restored over)",
            {"indices": serving}, (alias_check,)))
    actions: list[JSON] = [{"remove": {"index": index, "alias": alias}} for index in serving]
    actions.append({"add": {"index": new_name, "alias": alias, "is_write_index": True}})
    moved = f"from {', '.join(serving)} " if serving else ""
    steps.append(RecoveryStep(
        SWITCH_ALIAS, f"move {alias} {moved}to {new_name} (write index) in one atomic call",
        {"alias": alias, "actions": actions}, (alias_check, _usable(new_name, "it will serve"))))
    notes: list[str] = []
    if emergency:
        notes.append(f"what {alias} serves now is not read: it is kept as it is, write-blocked")
    else:
        extra, changed = assessment.counts.extra, assessment.counts.changed
        kept = ", ".join(serving) or "the current index"
        if extra is None or changed is None:
            notes.append(f"how many documents in {kept} are newer than the backup is unknown; "
                         f"they stay readable in {kept}")
        else:
            notes.append(f"{extra + changed:,} document(s) in {kept} are newer than the backup "
                         f"({extra:,} added, {changed:,} changed since); they stay readable "
                         f"in {kept}")
    notes.append(f"{alias} serves the backup taken {backup.taken_at or 'at an unknown time'}; "
                 "writes made since then are not in it")
    summary = (f"{'emergency-restore' if emergency else 'restore'} {alias} from snapshot "
               f"{backup.repository}/{backup.name} as {new_name} and point the alias at it")
    return RecoveryPlan(method, alias, summary, tuple(steps), tuple(notes), new_name, ())


def _plan_move(assessment: Assessment, method: Method) -> RecoveryPlan:
    alias = assessment.alias
    rollback = method == Method.ROLLBACK
    target = assessment.old_index if rollback else assessment.new_index
    if target is None:
        which, flag = ("old", "ROLLBACK") if rollback else ("new", "COMPLETE_SWITCH")
        raise BadInput(f"{flag} of {alias} needs the {which} index and the assessment found none",
                       hint="restore from a backup instead: --method FULL_RESTORE")
    if not rollback:
        _check_new_is_complete(assessment, target)
    serving = sorted(assessment.serving)
    if serving == [target]:
        return RecoveryPlan(method, alias, f"{alias} already points at {target} only", ())
    alias_check = _alias_check(assessment)
    actions: list[JSON] = [{"remove": {"index": index, "alias": alias}}
                           for index in serving if index != target]
    actions.append({"add": {"index": target, "alias": alias, "is_write_index": True}})
    others = [index for index in serving if index != target]
    moved = f"from {', '.join(others)} " if others else ""
    steps = (
        RecoveryStep(ALLOW_WRITES, f"lift any write block on {target} (it takes the writes next)",
                     {"index": target},
                     (alias_check, _usable(target, "the alias will point at it"))),
        RecoveryStep(SWITCH_ALIAS,
                     f"move {alias} {moved}to {target} (write index) in one atomic call",
                     {"alias": alias, "actions": actions},
                     (alias_check, _usable(target, "the alias will point at it"))),
    )
    notes: list[str] = []
    if others:
        notes.append(f"{', '.join(others)} is kept as it is"
                     + ("" if rollback else ", for rollback"))
    stranded = _switch_figure(assessment, "extra")
    if rollback and stranded:
        notes.append(f"{stranded:,} document(s) exist only in {assessment.new_index} (written "
                     f"there since the switch began); they stay there, copy them to {target} "
                     "afterwards")
    verb = "roll" if rollback else "switch"
    summary = f"{verb} {alias} {'back ' if rollback else ''}to {target}"
    return RecoveryPlan(method, alias, summary, steps, tuple(notes))


def _switch_figure(assessment: Assessment, key: str) -> int | None:
    """A figure of the older-against-newer diff of a half-done switch, when it ran."""
    switch = assessment.evidence.get("switch_comparison")
    if not isinstance(switch, dict) or switch.get("error") or switch.get(key) is None:
        return None
    return int(switch[key])


def _readable_in_evidence(assessment: Assessment, index: str) -> bool:
    for facts in assessment.evidence.get("indices") or []:
        if isinstance(facts, dict) and facts.get("name") == index:
            return facts.get("status") == "open" and facts.get("health") != "red"
    return False  # not among the indices: gone


def _check_new_is_complete(assessment: Assessment, new: str) -> None:
    """Refuse to serve ``new`` alone unless the assessment found nothing missing in it.

    Missing is measured against the older index when the switch's diff ran, else against
    the backup. When neither is known, switching is allowed only if the older index cannot
    serve anyway (gone, closed or red): there is nothing better to point the alias at.
    """
    alias, old = assessment.alias, assessment.old_index
    missing = _switch_figure(assessment, "missing")
    against = f"the older index {old}"
    if missing is None and assessment.current_index == new:
        missing, against = assessment.counts.missing, "the backup"
    if missing is None:
        if old is not None and _readable_in_evidence(assessment, old):
            raise CheckFailed(f"the assessment did not find out whether {new} holds every "
                              f"document of {old}",
                              hint=f"run `indexshift assess {alias}` again, or roll back "
                                   "(--method ROLLBACK)")
        return
    if against == "the backup":
        missing = max(missing, len(assessment.missing_ids))
    if missing > 0:
        raise CheckFailed(f"{new} lacks {missing:,} document(s) of {against}; switching to "
                          "it would serve them missing",
                          hint="roll back (--method ROLLBACK), or copy them first (--method "
                               "SELECTIVE_REINDEX)")


def plan_recovery(assessment: Assessment, method: Method | None = None, *,
                  include_changed: bool = False, now: datetime | None = None) -> RecoveryPlan:
    """The steps that carry out ``method`` (default: the assessment's recommendation). Pure.

    Raises BadInput, naming what is missing, when the method does not fit the assessment, and
    CheckFailed when the method is one no tool can carry out (disaster recovery, a mapping that
    needs a migration).
    """
    chosen = method or assessment.recommendation.method
    when = stamp(now or datetime.now(UTC))
    alias = assessment.alias
    if chosen in _REFUSED:
        raise CheckFailed(_REFUSED[chosen].format(alias=alias))
    if chosen in (Method.NO_ACTION, Method.NO_ROLLBACK):
        why = (assessment.recommendation.reason
               if assessment.recommendation.method == chosen else
               "no recovery needed" if chosen == Method.NO_ACTION else
               "no valid backup to roll back to, and what the alias serves is usable")
        return RecoveryPlan(chosen, alias, f"nothing to do for {alias}: {why}", ())
    if chosen == Method.SELECTIVE_REINDEX:
        return _plan_selective(assessment, include_changed, when)
    if chosen in (Method.FULL_RESTORE, Method.EMERGENCY_RESTORE):
        return _plan_restore(assessment, chosen, when)
    if chosen in (Method.ROLLBACK, Method.COMPLETE_SWITCH):
        return _plan_move(assessment, chosen)
    raise BadInput(f"unknown recovery method {chosen!r}",
                   hint=f"use one of {', '.join(m.value for m in Method)}")


# -- preconditions (judged purely on facts read right before a step) --------------------------


def check_precondition(pre: Precondition, facts: Mapping[str, Any]) -> str | None:
    """What is wrong (one phrase), or None when the precondition holds on these facts.

    ``facts`` per kind: alias_targets → ``targets`` (index → alias properties);
    index_usable → ``row`` (its ``_cat/indices`` row, None when absent); index_absent →
    ``exists``; snapshot_ready → ``snapshot`` (a SnapshotInfo, None when absent).
    """
    details = pre.details
    if pre.kind == ALIAS_TARGETS:
        targets: Mapping[str, Any] = facts.get("targets") or {}
        expected = set(details["indices"])
        if set(targets) != expected:
            now = ", ".join(sorted(targets)) or "no index"
            before = ", ".join(sorted(expected)) or "no index"
            return f"{details['alias']} now points at {now}, not at {before}"
        write = details.get("write_index")
        if write and len(targets) > 1 and not (targets.get(write) or {}).get("is_write_index"):
            return f"{write} is no longer the write index of {details['alias']}"
        return None
    if pre.kind == INDEX_USABLE:
        row = facts.get("row")
        index = details["index"]
        if row is None:
            return f"{index} does not exist"
        if str(row.get("status")) != "open":
            return f"{index} is closed"
        if str(row.get("health")) == "red":
            return f"{index} is red (a primary shard is unassigned)"
        return None
    if pre.kind == INDEX_ABSENT:
        return f"{details['index']} already exists" if facts.get("exists") else None
    if pre.kind == SNAPSHOT_READY:
        info = facts.get("snapshot")
        name = f"{details['repository']}/{details['snapshot']}"
        if not isinstance(info, SnapshotInfo):
            return f"snapshot {name} is no longer in the repository"
        if not info.succeeded:
            return f"snapshot {name} is {info.state} with {info.shards_failed} failed shard(s)"
        if details["index"] not in info.indices:
            return f"snapshot {name} does not hold {details['index']}"
        return None
    return f"unknown precondition {pre.kind!r}"


def _cat_row(cluster: Cluster, index: str) -> JSON | None:
    try:
        rows = cluster.indices(index)
    except NotFound:
        return None
    return next((row for row in rows if row.get("index") == index), None)


def _facts(cluster: Cluster, pre: Precondition) -> JSON:
    details = pre.details
    if pre.kind == ALIAS_TARGETS:
        return {"targets": cluster.alias_targets(details["alias"])}
    if pre.kind == INDEX_USABLE:
        return {"row": _cat_row(cluster, details["index"])}
    if pre.kind == INDEX_ABSENT:
        name = details["index"]
        return {"exists": cluster.index_exists(name) or bool(cluster.alias_targets(name))}
    if pre.kind == SNAPSHOT_READY:
        try:
            found = cluster.snapshots(details["repository"], details["snapshot"])
        except NotFound:
            found = []
        info = next((SnapshotInfo.from_api(entry, details["repository"]) for entry in found
                     if entry.get("snapshot") == details["snapshot"]), None)
        return {"snapshot": info}
    return {}


def _check(cluster: Cluster, plan: RecoveryPlan, step: RecoveryStep) -> None:
    for pre in step.preconditions:
        problem = check_precondition(pre, _facts(cluster, pre))
        if problem is None:
            continue
        if pre.kind == ALIAS_TARGETS:
            raise CheckFailed(f"the cluster changed since the assessment: {problem}",
                              hint=f"run `indexshift assess {plan.alias}` again")
        raise CheckFailed(f"{problem}, so the step {step.kind} was not run",
                          hint=f"run `indexshift assess {plan.alias}` again")


# -- running a plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepOutcome:
    kind: str
    description: str
    ms: float
    details: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"kind": self.kind, "description": self.description, "ms": round(self.ms, 1),
                "details": self.details}


@dataclass(frozen=True)
class RecoveryResult:
    method: Method
    alias: str
    steps: tuple[StepOutcome, ...]
    restored_index: str | None
    serving: tuple[str, ...]  # what the alias points at afterwards
    copied: int  # documents written by selective copies
    kept_existing: int  # documents a create-only copy found already there
    verified_missing: int | None  # copied ids still absent at the check (None: no check)
    removed_temporary: tuple[str, ...]
    total_ms: float

    def to_json(self) -> JSON:
        return {"method": self.method.value, "alias": self.alias,
                "steps": [s.to_json() for s in self.steps],
                "restored_index": self.restored_index, "serving": list(self.serving),
                "copied": self.copied, "kept_existing": self.kept_existing,
                "verified_missing": self.verified_missing,
                "removed_temporary": list(self.removed_temporary),
                "total_ms": round(self.total_ms, 1)}


@dataclass
class _Run:
    """What execute() changed so far: enough to undo the parts that must not outlive a failure."""

    created: list[str] = field(default_factory=list)  # restored indices, temporary or not
    blocked: list[str] = field(default_factory=list)  # write blocks this run added
    switched: bool = False
    copied: int = 0
    kept: int = 0
    verified_missing: int | None = None


def _is_write_blocked(cluster: Cluster, index: str) -> bool:
    blocks = cluster.index_blocks(index)
    return blocks.get("write", False) or blocks.get("read_only", False)


def _run_step(cluster: Cluster, plan: RecoveryPlan, step: RecoveryStep, run: _Run) -> JSON:
    details = step.details
    if step.kind == RESTORE:
        name = str(details["new_name"])
        try:
            # Returns once every primary is active: the next step can count the index.
            primaries = restore_as(cluster, str(details["repository"]),
                                   str(details["snapshot"]), str(details["index"]), name,
                                   index_settings=details.get("index_settings"))
        except BadInput:
            raise  # refused before anything was created (the name may be someone else's)
        except BaseException:
            run.created.append(name)  # a restore that failed midway is removed too
            raise
        run.created.append(name)
        return {"index": name, **primaries.to_json()}
    if step.kind == VERIFY_RESTORED:
        index = str(details["index"])
        row = _cat_row(cluster, index)
        problem = check_precondition(_usable(index, "restored"), {"row": row})
        if problem:
            raise CheckFailed(f"the restored index is not usable: {problem}",
                              hint="see why with GET _cluster/allocation/explain")
        cluster.refresh(index)
        count = cluster.count(index)
        expected = details.get("expected_count")
        if expected is not None and count != expected:
            raise CheckFailed(f"{index} holds {count:,} documents, the backup {expected:,}",
                              hint="the snapshot is not the backup the assessment counted; "
                                   f"run `indexshift assess {plan.alias}` again")
        return {"index": index, "count": count, "health": row.get("health") if row else None}
    if step.kind == COPY:
        # Where _reindex is missing (a core-only Elasticsearch), _mget and _bulk copy.
        counted = copy_documents(
            cluster, str(details["source"]), str(details["dest"]), details["ids"],
            create_only=bool(details["create_only"]), use_reindex=None,
            hint="the mapping of the target may refuse the backup's documents",
            lacking_hint=f"run `indexshift assess {plan.alias}` again against this backup")
        run.copied += counted.written
        run.kept += counted.kept
        return {"written": counted.written, "kept_existing": counted.kept, "via": counted.via}
    if step.kind == REFRESH:
        cluster.refresh(str(details["index"]))
        return {}
    if step.kind == VERIFY_PRESENT:
        ids = list(details["ids"])
        absent = sorted(set(ids) - present_ids(cluster, str(details["index"]), ids))
        run.verified_missing = len(absent)
        if absent:
            raise CheckFailed(f"{len(absent):,} of the copied documents are still not in "
                              f"{details['index']} (first: {absent[0]!r})",
                              hint=f"run `indexshift assess {plan.alias}` to see what is left")
        return {"checked": len(ids), "missing": 0}
    if step.kind == DELETE_TEMPORARY:
        index = str(details["index"])
        if index in run.created and cluster.index_exists(index):
            cluster.delete_index(index)
            run.created.remove(index)
        return {"deleted": index}
    if step.kind == BLOCK_WRITES:
        how: JSON = {}
        for index in details["indices"]:
            row = _cat_row(cluster, index)
            if row is None:
                how[index] = "gone"
                continue
            if _is_write_blocked(cluster, index):
                how[index] = "already blocked"
                continue
            if row.get("status") == "open" and row.get("health") != "red":
                cluster.add_write_block(index)  # waits for writes in flight
                how[index] = "_block/write"
            else:
                # A closed or red index has no shard to take permits from: set the block in
                # its metadata.
                cluster.put_settings(index, {"index": {"blocks": {"write": True}}})
                how[index] = "index.blocks.write"
            run.blocked.append(index)
        return {"blocked": how}
    if step.kind == ALLOW_WRITES:
        index = str(details["index"])
        if _is_write_blocked(cluster, index):
            cluster.put_settings(index, {"index": {"blocks": {"write": False,
                                                             "read_only": False}}})
            return {"unblocked": index}
        return {"unblocked": None}
    if step.kind == SWITCH_ALIAS:
        actions = list(details["actions"])
        cluster.update_aliases(actions)
        run.switched = True
        expected = {a["add"]["index"] for a in actions if "add" in a}
        landed = set(cluster.alias_targets(plan.alias))
        if landed != expected:
            raise CheckFailed(f"after the switch {plan.alias} points at {sorted(landed)}, "
                              f"expected {sorted(expected)}",
                              hint=f"run `indexshift assess {plan.alias}`")
        return {"serving": sorted(landed)}
    raise BadInput(f"unknown recovery step {step.kind!r}")


def _clean_up(cluster: Cluster, plan: RecoveryPlan, run: _Run) -> list[str]:
    """Drop indices this run created and no alias serves; lift its blocks if the move failed."""
    removed: list[str] = []
    try:
        serving = set(cluster.alias_targets(plan.alias))
    except IndexshiftError as exc:
        log.warning("could not read alias %s to clean up (%s); left: %s", plan.alias, exc,
                    ", ".join(run.created) or "nothing")
        return removed
    for index in list(run.created):
        if index in serving:
            continue  # the alias serves it: it is the recovery's result, never removed
        try:
            if cluster.index_exists(index):
                cluster.delete_index(index)
            removed.append(index)
        except IndexshiftError as exc:
            log.warning("could not delete %s: %s; delete it by hand", index, exc)
    if not run.switched:
        # The alias still serves the blocked index: leave it as writable as it was.
        for index in run.blocked:
            if index in serving:
                try:
                    cluster.put_settings(index, {"index": {"blocks": {"write": False}}})
                except IndexshiftError as exc:
                    log.warning("could not lift the write block on %s: %s", index, exc)
    return removed


ProgressFn = Callable[[int, int, RecoveryStep], None]


def execute(cluster: Cluster, plan: RecoveryPlan, *,
            progress: ProgressFn | None = None) -> RecoveryResult:
    """Run the plan step by step, each after its preconditions are checked on the live cluster.

    ``progress`` hears (step number from 1, step count, step) before each step. Whatever
    happens, restored indices that the alias does not serve are deleted, and write blocks
    added before a switch that did not happen are lifted.
    """
    started = time.perf_counter()
    run = _Run()
    outcomes: list[StepOutcome] = []
    removed: list[str] = []
    try:
        for number, step in enumerate(plan.steps, start=1):
            if progress is not None:
                progress(number, len(plan.steps), step)
            step_started = time.perf_counter()
            _check(cluster, plan, step)
            details = _run_step(cluster, plan, step, run)
            outcomes.append(StepOutcome(step.kind, step.description,
                                        (time.perf_counter() - step_started) * 1000, details))
    finally:
        removed = _clean_up(cluster, plan, run)
    deleted_by_steps = [str(s.details["index"]) for s in plan.steps
                        if s.kind == DELETE_TEMPORARY]
    return RecoveryResult(
        method=plan.method, alias=plan.alias, steps=tuple(outcomes),
        restored_index=plan.restored_index,
        serving=tuple(sorted(cluster.alias_targets(plan.alias))) if plan.steps else (),
        copied=run.copied, kept_existing=run.kept, verified_missing=run.verified_missing,
        removed_temporary=tuple(dict.fromkeys(deleted_by_steps + removed)),
        total_ms=(time.perf_counter() - started) * 1000)


# -- the whole verb --------------------------------------------------------------------------


def recover(cluster: Cluster, alias: str, *, method: Method | None = None,
            backup: str | None = None, dry_run: bool = False, include_changed: bool = False,
            confirm: Callable[[RecoveryPlan], bool] | None = None,
            progress: ProgressFn | None = None) -> JSON:
    """Assess, plan, (dry-run stops here) confirm, execute, and assess again.

    ``backup`` is resolved as :func:`indexshift.assess.assess` does (a snapshot, or an
    index). A backup snapshot is restored aside once, as a hidden index without replicas:
    both assessments and a selective copy read that copy (``before.backup.restored_as``), and
    it is deleted at the end whatever happens. Returns ``{"plan", "result", "before",
    "after"}`` as JSON (``result`` and ``after`` None when nothing ran), plus ``dry_run``,
    ``confirmed`` (False when ``confirm`` declined), ``recovered``: whether the second
    assessment shows integrity level 1 with nothing missing, and ``notes`` (a copy that
    could not be deleted). An empty plan (nothing to do) asks for no confirmation and runs
    nothing.
    """
    evidence = assess_module.gather_evidence(cluster, alias, backup=backup)
    notes: list[str] = []
    with contextlib.ExitStack() as aside_scope:
        aside: str | None = None
        if evidence.backup is not None and assess_module.restores_snapshot(evidence):
            try:
                aside = aside_scope.enter_context(
                    assess_module.restored_backup(cluster, alias, evidence.backup, notes))
            except IndexshiftError as exc:
                evidence = replace(evidence, backup_problem=f"the backup could not be read: "
                                                            f"{exc.message}")
        report = _recover_with(cluster, evidence, aside, method=method, backup=backup,
                               dry_run=dry_run, include_changed=include_changed,
                               confirm=confirm, progress=progress)
    report["notes"] = notes  # filled when the copy aside could not be deleted
    return report


def _recover_with(cluster: Cluster, evidence: assess_module.Evidence, aside: str | None, *,
                  method: Method | None, backup: str | None, dry_run: bool,
                  include_changed: bool, confirm: Callable[[RecoveryPlan], bool] | None,
                  progress: ProgressFn | None) -> JSON:
    """recover() once the backup snapshot, if any, is restored aside as ``aside``."""
    alias = evidence.alias
    before = assess_module.assess_evidence(cluster, evidence, backup_copy=aside)
    plan = plan_recovery(before, method, include_changed=include_changed)
    report: JSON = {"plan": plan.to_json(), "result": None, "before": before.to_json(),
                    "after": None, "dry_run": dry_run, "confirmed": False, "recovered": None}
    if dry_run:
        return report
    if plan.empty:  # nothing to run: the first assessment is the last word
        report["recovered"] = before.integrity_level == 1 and before.counts.missing == 0
        return report
    if confirm is not None and not confirm(plan):
        return report
    report["confirmed"] = True
    result = execute(cluster, plan, progress=progress)
    report["result"] = result.to_json()
    later = assess_module.gather_evidence(cluster, alias,
                                          backup=after_backup(before, result, backup))
    # The backup is usually the same snapshot (after a full restore, the one the new index
    # came from): read the copy aside again rather than restore it once more.
    same = before.backup is not None and before.backup.same_backup(later.backup)
    after = assess_module.assess_evidence(cluster, later, backup_copy=aside if same else None)
    report.update(after=after.to_json(), recovered=after.integrity_level == 1
                  and after.counts.missing == 0)
    return report


def after_backup(before: Assessment, result: RecoveryResult, backup: str | None) -> str | None:
    """The backup to check the recovery against: the one given, unless it is an index the
    alias now serves (after a rollback to it), which cannot be its own backup."""
    if backup is not None and before.backup is not None and before.backup.kind == "index" \
            and before.backup.index in result.serving:
        return None
    return backup
