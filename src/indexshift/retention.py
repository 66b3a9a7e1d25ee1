"""After a run: the old index is kept, made read-only after N days, deleted after M days.

The plan is pure (runs, indices and aliases in; actions out). An index that any alias points
at is never deleted nor blocked, whatever its age: that is the precondition every delete here
checks, again, right before it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from indexshift.cluster import Cluster
from indexshift.errors import CheckFailed
from indexshift.journal import Phase, RunRecord, RunStatus, parse_iso_utc

Action = Literal["keep", "read_only", "delete"]
DEFAULT_READ_ONLY_DAYS = 4.0
DEFAULT_DELETE_DAYS = 8.0


@dataclass(frozen=True)
class RetentionStep:
    index: str
    alias: str
    run_id: str
    action: Action
    reason: str
    age_days: float

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "alias": self.alias, "run_id": self.run_id,
                "action": self.action, "reason": self.reason,
                "age_days": round(self.age_days, 2)}


def switched_at(run: RunRecord) -> datetime | None:
    for checkpoint in run.checkpoints:
        if checkpoint.get("phase") == str(Phase.ALIAS_SWITCHED):
            return parse_iso_utc(str(checkpoint["at"]))
    return None


def plan_retention(runs: list[RunRecord], existing: set[str], aliased: set[str],
                   read_only: set[str], now: datetime) -> list[RetentionStep]:
    """What to do with each completed run's old index, newest run first per index."""
    steps: list[RetentionStep] = []
    seen: set[str] = set()
    for run in runs:
        old = run.blue
        if run.status != RunStatus.COMPLETED or old is None or old in seen or old not in existing:
            continue
        seen.add(old)
        moved = switched_at(run)
        if moved is None:
            continue
        age = (now - moved) / timedelta(days=1)
        policy = run.copy_state.get("retention") or {}
        read_only_after = float(policy.get("read_only_after_days", DEFAULT_READ_ONLY_DAYS))
        delete_after = float(policy.get("delete_after_days", DEFAULT_DELETE_DAYS))
        if old in aliased:
            steps.append(RetentionStep(old, run.alias, run.run_id, "keep",
                                       "an alias points at it", age))
        elif age >= delete_after:
            steps.append(RetentionStep(old, run.alias, run.run_id, "delete",
                                       f"{age:.1f} days since the switch ≥ {delete_after:g}",
                                       age))
        elif age >= read_only_after and old not in read_only:
            steps.append(RetentionStep(old, run.alias, run.run_id, "read_only",
                                       f"{age:.1f} days since the switch ≥ {read_only_after:g}",
                                       age))
        else:
            left = delete_after - age
            steps.append(RetentionStep(old, run.alias, run.run_id, "keep",
                                       f"kept for rollback, {left:.1f} more days", age))
    return steps


def apply_step(cluster: Cluster, step: RetentionStep) -> None:
    """Carry out one step, checking again that no alias has come to point at the index."""
    if step.action == "keep":
        return
    holders = [alias for alias, targets in cluster.aliases().items() if step.index in targets]
    if holders:
        raise CheckFailed(f"{step.index} is now behind alias {', '.join(holders)}; not touched",
                          hint="run cleanup again to see the new plan")
    if step.action == "read_only":
        cluster.put_settings(step.index, {"index": {"blocks": {"read_only": True}}})
    else:
        cluster.delete_index(step.index)
