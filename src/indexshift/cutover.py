"""The alias switch and its reverse, each one atomic ``_aliases`` call.

Planning is pure (alias targets in, actions out) so every precondition is tested without a
node and ``--dry-run`` prints exactly what would be sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from indexshift.cluster import Cluster
from indexshift.errors import BadInput, CheckFailed

AliasActions = list[dict[str, Any]]


@dataclass(frozen=True)
class SwitchPlan:
    alias: str
    actions: AliasActions
    note: str

    @property
    def noop(self) -> bool:
        return not self.actions


def plan_switch(alias: str, blue: str, green: str, targets: dict[str, Any]) -> SwitchPlan:
    """Point ``alias`` at ``green`` (the write index) instead of ``blue``.

    Accepts the alias on blue alone, on both (a half switch is completed), or already on green
    alone (nothing to do). Anything else means someone else moved the alias: refuse.
    """
    current = set(targets)
    if current == {green}:
        return SwitchPlan(alias, [], f"{alias} already points at {green}")
    if current in ({blue}, {blue, green}):
        return SwitchPlan(alias, [
            {"remove": {"index": blue, "alias": alias}},
            {"add": {"index": green, "alias": alias, "is_write_index": True}},
        ], f"move {alias} from {blue} to {green}")
    found = ", ".join(sorted(current)) or "nothing"
    raise CheckFailed(
        f"alias {alias} points at {found}, not at {blue} as this run expects",
        hint="someone else changed it; run `indexshift assess` before going on",
    )


def plan_rollback(alias: str, blue: str, green: str, targets: dict[str, Any], *,
                  blue_exists: bool, writes_since_switch: int) -> SwitchPlan:
    """Point ``alias`` back at ``blue``; refuse when that would lose data or cannot work."""
    if not blue_exists:
        raise CheckFailed(
            f"cannot roll {alias} back: {blue} no longer exists",
            hint="restore it from its snapshot instead (`indexshift snapshot restore`)",
        )
    if writes_since_switch > 0:
        raise CheckFailed(
            f"cannot roll {alias} back: {green} took {writes_since_switch} write(s) since the "
            f"switch that {blue} does not have",
            hint="pass --catch-up to copy them back into the old index first",
        )
    current = set(targets)
    if current == {blue}:
        return SwitchPlan(alias, [], f"{alias} already points at {blue}")
    if current in ({green}, {blue, green}):
        return SwitchPlan(alias, [
            {"remove": {"index": green, "alias": alias}},
            {"add": {"index": blue, "alias": alias, "is_write_index": True}},
        ], f"move {alias} back from {green} to {blue}")
    found = ", ".join(sorted(current)) or "nothing"
    raise CheckFailed(f"alias {alias} points at {found}, neither {blue} nor {green}",
                      hint="run `indexshift assess` to see what happened")


@dataclass(frozen=True)
class SwitchResult:
    plan: SwitchPlan
    took_ms: float


def apply(cluster: Cluster, plan: SwitchPlan) -> SwitchResult:
    """Send the plan as one atomic call and check the alias landed where planned."""
    if plan.noop:
        return SwitchResult(plan, 0.0)
    started = time.perf_counter()
    cluster.update_aliases(plan.actions)
    took = (time.perf_counter() - started) * 1000
    expected = {a["add"]["index"] for a in plan.actions if "add" in a}
    landed = set(cluster.alias_targets(plan.alias))
    if landed != expected:
        raise CheckFailed(f"after the switch {plan.alias} points at {sorted(landed)}, "
                          f"expected {sorted(expected)}")
    return SwitchResult(plan, took)


def require_alias(cluster: Cluster, alias: str) -> dict[str, Any]:
    targets = cluster.alias_targets(alias)
    if not targets:
        raise BadInput(f"alias {alias!r} does not exist",
                       hint="list aliases with `indexshift info`")
    return targets
