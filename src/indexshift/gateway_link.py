"""The migrator's side of the write-ahead gateway.

A run told a gateway URL records the gateway's log position when its copy starts; after the
copy it replays the writes logged since then into green; at the switch it has the gateway hold
writes (they wait, logged, instead of failing), drains the log tail into green, moves the alias
in one ``_aliases`` call and releases them; during the monitoring window the gateway mirrors
every write on the alias to blue, so a rollback loses nothing.

Everything goes through the gateway's admin API (``/_indexshift/gateway/...``), never through
its files: the gateway may run on another machine.

How a replay stays idempotent and never writes older data over newer: the log tail is reduced
to the last operation of each document id, in sequence order, and each such document is then
made equal in green to what blue holds *now* (copied through the migration's transform, or
deleted when blue no longer has it). Blue holds the result of every logged write applied in log
order, because the gateway forwarded them there; a logged body alone could not reproduce a
partial or scripted update, nor skip the transform. Blue's current state is never older than
the tail being replayed, so replaying a tail twice, or a tail that overlaps a later one, changes
nothing; the last round runs while the gateway holds writes, when blue no longer moves.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from indexshift import copier, cutover
from indexshift.cluster import JSON, Cluster
from indexshift.diff import diff_indices
from indexshift.errors import CheckFailed, IndexshiftError
from indexshift.gateway_client import gateway_call, gateway_status
from indexshift.gateway_protocol import RequestKind, WriteOp, classify, decode_body, split_bulk
from indexshift.spec import MigrationSpec

LOG_PAGE = 5000
HOLD_TIMEOUT_S = 30.0  # the gateway releases held writes by itself after this
DRAIN_TIMEOUT_S = 10.0  # writes logged before the hold must be applied within this
SWITCH_MARGIN_S = 2.0  # switch only while the hold has at least this long left to run
# Outcomes of logged writes that changed nothing upstream.
UNAPPLIED = frozenset({"rejected", "abandoned"})


# -- the log tail (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedOp:
    """One document operation of a logged write (a bulk holds several)."""

    seq: int
    op: str  # index, create, update, delete
    index: str | None
    doc_id: str | None  # None: the cluster chose the id


def _record_header(record: JSON, name: str) -> str | None:
    return next((str(v) for k, v in record.get("headers") or [] if str(k).lower() == name),
                None)


def ops_of_record(record: JSON) -> list[LoggedOp]:
    """The document operations of one logged write, in order (``ValueError`` for a bulk body
    that cannot be read)."""
    seq = int(record["seq"])
    classified = classify(str(record["method"]), str(record["path"]))
    if classified.kind != RequestKind.WRITE or classified.op is None:
        return []
    if classified.op != WriteOp.BULK:
        return [LoggedOp(seq, classified.op.value, classified.index, classified.doc_id)]
    body = decode_body(base64.b64decode(record.get("body_b64") or ""),
                       _record_header(record, "content-encoding"))
    return [LoggedOp(seq, item.op, item.index or classified.index, item.doc_id)
            for item in split_bulk(body)]


@dataclass(frozen=True)
class TailReduction:
    last_ops: dict[str, LoggedOp]  # per document id its last operation, in that op's order
    through: int  # every record up to here is final (applied or refused) and reduced
    without_id: int  # writes whose id the cluster chose: the log does not know it
    unapplied: int  # records upstream refused: they changed nothing
    elsewhere: int  # operations on other indices


def reduce_tail(records: Iterable[JSON], targets: Collection[str], after: int) -> TailReduction:
    """Reduce logged writes to the last operation per document id of ``targets``.

    ``through`` stops before the first record whose outcome is not known yet: it may still
    reach blue, so the next round reads it again.
    """
    last: dict[str, LoggedOp] = {}
    through = after
    waiting = False
    without_id = unapplied = elsewhere = 0
    for record in sorted(records, key=lambda r: int(r["seq"])):
        outcome = record.get("outcome")
        if outcome is None:
            waiting = True
        elif not waiting:
            through = int(record["seq"])
        if outcome in UNAPPLIED:
            unapplied += 1
            continue
        try:
            ops = ops_of_record(record)
        except (ValueError, OSError, EOFError) as exc:
            raise CheckFailed(f"logged write seq {record['seq']} cannot be read ({exc})",
                              hint="inspect it with `indexshift gateway status` and the log"
                              ) from exc
        for op in ops:
            if op.index not in targets:
                elsewhere += 1
            elif op.doc_id is None:
                without_id += 1
            else:
                last.pop(op.doc_id, None)  # re-inserted: the order is that of the last op
                last[op.doc_id] = op
    return TailReduction(last, through, without_id, unapplied, elsewhere)


# -- talking to the gateway ------------------------------------------------------------------


def log_position(gateway_url: str) -> int:
    """The sequence number of the last write the gateway logged, once the gateway has shown
    that it can serve its log back (before a run depends on it)."""
    position = int(gateway_status(gateway_url)["wal"]["last_seq"])
    gateway_call(gateway_url, "GET", f"/log?after={position}&limit=1")
    return position


def read_log(gateway_url: str, after: int, until: int | None = None) -> list[JSON]:
    """Every logged write with ``after < seq <= until``, in order, page by page."""
    records: list[JSON] = []
    while True:
        query = f"/log?after={after}&limit={LOG_PAGE}" + (f"&until={until}" if until else "")
        page = gateway_call(gateway_url, "GET", query, timeout=120)
        records.extend(page["records"])
        if not page.get("more") or not page["records"]:
            return records
        after = int(page["next_after"])


def hold_writes(gateway_url: str, timeout_s: float = HOLD_TIMEOUT_S,
                drain_timeout_s: float = DRAIN_TIMEOUT_S) -> JSON:
    """Have the gateway hold writes; returns once every write logged before is applied."""
    return gateway_call(gateway_url, "PUT", "/hold",
                         {"timeout_s": timeout_s, "drain_timeout_s": drain_timeout_s},
                         timeout=drain_timeout_s + 10)


def hold_state(gateway_url: str) -> JSON:
    return gateway_call(gateway_url, "GET", "/hold")


def release_writes(gateway_url: str, hold_id: str) -> JSON:
    return gateway_call(gateway_url, "DELETE", f"/hold?hold_id={hold_id}")


def start_mirror(gateway_url: str, alias: str, index: str) -> JSON:
    return gateway_call(gateway_url, "PUT", "/mirror", {"alias": alias, "index": index})


def mirror_state(gateway_url: str) -> JSON:
    return gateway_call(gateway_url, "GET", "/mirror")


def stop_mirror(gateway_url: str) -> JSON:
    return gateway_call(gateway_url, "DELETE", "/mirror")


# -- replaying into green --------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayResult:
    after: int
    through: int
    records: int
    ids: int
    copied: int
    deleted: int
    without_id: int

    def to_json(self) -> JSON:
        return {"after": self.after, "through": self.through, "records": self.records,
                "ids": self.ids, "copied": self.copied, "deleted": self.deleted,
                "without_id": self.without_id}


def replay_into_green(cluster: Cluster, gateway_url: str, *, alias: str, blue: str, green: str,
                      spec: MigrationSpec, pipeline: str | None, after: int,
                      until: int | None = None, refresh: bool = True) -> ReplayResult:
    """Bring every document the gateway logged a write for since ``after`` (on the alias or
    on blue by name) to its current state in blue, in green (see the module's docstring).
    ``refresh=False`` leaves green's refresh to the caller."""
    records = read_log(gateway_url, after, until)
    reduction = reduce_tail(records, {alias, blue}, after)
    ids = list(reduction.last_ops)
    copied = deleted = 0
    script = copier.transform_script(spec)
    if ids and script is None and pipeline is None:
        copied, deleted = sync_documents(cluster, blue, green, ids, refresh=refresh)
    elif ids:
        in_blue = copier.present_ids(cluster, blue, ids)
        to_copy = [doc_id for doc_id in ids if doc_id in in_blue]
        gone = [doc_id for doc_id in ids if doc_id not in in_blue]
        if to_copy:
            cluster.refresh(blue)  # the transform runs in _reindex, which reads by search
            copied = copier.copy_ids(cluster, blue, green, to_copy, spec, pipeline)
        to_delete = sorted(copier.present_ids(cluster, green, gone)) if gone else []
        if to_delete:
            deleted = copier.delete_ids(cluster, green, to_delete)
    return ReplayResult(after, reduction.through, len(records), len(ids), copied, deleted,
                        reduction.without_id)


def sync_documents(cluster: Cluster, blue: str, green: str, ids: list[str], *,
                   refresh: bool) -> tuple[int, int]:
    """Without a transform: make these documents in green what they are in blue, with one
    real-time ``_mget`` and one ``_bulk`` per chunk (no refresh of blue, which matters while
    writes are held). Returns (documents written, deletes sent)."""
    written = deleted = 0
    for chunk in copier.chunks(ids, 1000):
        operations: list[JSON] = []
        for doc in cluster.mget(blue, chunk):
            meta: JSON = {"_index": green, "_id": doc["_id"]}
            if doc.get("_routing") is not None:
                meta["routing"] = doc["_routing"]
            if doc.get("found"):
                operations += [{"index": meta}, doc["_source"]]
                written += 1
            else:
                operations.append({"delete": meta})  # gone from blue: gone from green
                deleted += 1
        result = cluster.bulk(operations)
        if result.failed:
            raise CheckFailed(f"replaying the gateway's log into {green} failed for "
                              f"{result.failed} documents: {result.first_error}",
                              hint=f"compare the mappings of {blue} and {green}")
    if refresh:
        cluster.refresh(green)
    return written, deleted


# -- the switch and its reverse under a hold -------------------------------------------------


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _hold(gateway_url: str, what: str) -> JSON:
    try:
        return hold_writes(gateway_url)
    except IndexshiftError as exc:
        raise CheckFailed(f"the gateway could not hold writes for the {what}: {exc.message}; "
                          f"nothing was switched",
                          hint="see `indexshift gateway status`; retry when its queue is "
                               "empty") from exc


def _require_hold(gateway_url: str, held: JSON) -> None:
    state = hold_state(gateway_url)
    if not state.get("active") or state.get("hold_id") != held["hold_id"] or \
            float(state.get("remaining_s", 0)) < SWITCH_MARGIN_S:
        raise CheckFailed(f"the gateway's hold {held['hold_id']} ended (or nearly) before the "
                          "switch; nothing was switched",
                          hint="retry; if it recurs, look for a slow cluster or a gateway "
                               "restart")


def switch_under_hold(cluster: Cluster, gateway_url: str, *, alias: str, blue: str,
                      green: str, spec: MigrationSpec, pipeline: str | None,
                      seq_no_mark: int, replayed_through: int | None) -> dict[str, Any]:
    """The cut-over through a gateway: no write block, writes wait instead of failing.

    Most of the log tail is replayed before the hold, with a sequence-number catch-up for
    writes that reached blue without the gateway, so that little is left while writes wait.
    Under the hold: the rest of the tail up to the hold's fence (every write before it is
    applied to blue), a sequence-number catch-up only when that tail holds documents whose id
    the cluster chose, the count check (and an id diff when counts differ), the mirror to blue
    switched on, the alias moved, then the release. Writes that bypass the gateway while
    writes are held are seen by the count check only: send every write through the gateway,
    or migrate without it (the write block then covers everyone).
    """
    after = log_position(gateway_url) if replayed_through is None else replayed_through
    early = replay_into_green(cluster, gateway_url, alias=alias, blue=blue, green=green,
                              spec=spec, pipeline=pipeline, after=after)
    _, mark = copier.catch_up(cluster, blue, green, spec, seq_no_mark, pipeline)
    plan = cutover.plan_switch(alias, blue, green, cluster.alias_targets(alias))
    started = time.perf_counter()
    held = _hold(gateway_url, "switch")
    steps = {"drain": _ms(started)}
    released: JSON = {}
    try:
        replay = replay_into_green(cluster, gateway_url, alias=alias, blue=blue, green=green,
                                   spec=spec, pipeline=pipeline, after=early.through,
                                   until=int(held["fence_seq"]), refresh=False)
        steps["replay"] = _ms(started) - sum(steps.values())
        caught_up = 0
        if replay.without_id:
            # Documents whose id the cluster chose are not named in the log: found by their
            # sequence numbers in blue.
            caught_up, _ = copier.catch_up(cluster, blue, green, spec, mark, pipeline)
            steps["catch_up"] = _ms(started) - sum(steps.values())
        cluster.refresh(blue)
        cluster.refresh(green)
        blue_count, green_count = cluster.count(blue), cluster.count(green)
        fixed = deleted = 0
        if blue_count != green_count:
            result = diff_indices(cluster, blue, green, ids_only=True, max_ids=None)
            fixed = copier.copy_ids(cluster, blue, green, result.missing, spec, pipeline)
            deleted = copier.delete_ids(cluster, green, result.extra)
            green_count = cluster.count(green)
            if green_count != blue_count:
                raise CheckFailed(f"{green} has {green_count} documents after the log replay, "
                                  f"{blue} {blue_count}: not switching")
        steps["count_check"] = _ms(started) - sum(steps.values())
        _require_hold(gateway_url, held)
        start_mirror(gateway_url, alias, blue)
        try:
            switched = cutover.apply(cluster, plan)
        except BaseException:
            with contextlib.suppress(IndexshiftError):
                stop_mirror(gateway_url)
            raise
        steps["switch"] = _ms(started) - sum(steps.values())
    finally:
        with contextlib.suppress(IndexshiftError):
            released = release_writes(gateway_url, str(held["hold_id"]))
    hold_ms = _ms(started)
    return {"hold_ms": round(hold_ms, 1), "switch_ms": round(switched.took_ms, 1),
            "hold_steps_ms": {name: round(value, 1) for name, value in steps.items()},
            "drain_ms": held.get("drain_ms"), "fence_seq": held["fence_seq"],
            "held_writes": released.get("held_writes"), "hold_expired": released.get("expired"),
            "replayed": replay.to_json(), "replayed_before_hold": early.to_json(),
            "final_copied": replay.copied + caught_up + fixed,
            "final_deleted": replay.deleted + deleted, "docs": blue_count,
            "replayed_through": int(held["fence_seq"]),
            "green_seq_no_mark": copier.seq_no_mark(cluster, green)}


def mirrors(gateway_url: str | None, alias: str, blue: str) -> JSON | None:
    """The gateway's mirror of ``alias`` to ``blue``, or None (also when it does not answer)."""
    if gateway_url is None:
        return None
    try:
        state = mirror_state(gateway_url)
    except IndexshiftError:
        return None
    active = bool(state.get("active")) and state.get("alias") == alias and \
        state.get("index") == blue
    return state if active else None


def mirror_covers(gateway_url: str | None, alias: str, blue: str) -> bool:
    """Whether the gateway mirrors writes on ``alias`` to ``blue`` with none lost so far."""
    state = mirrors(gateway_url, alias, blue)
    return state is not None and not state.get("failed")


def rollback_under_hold(cluster: Cluster, gateway_url: str, plan: cutover.SwitchPlan, *,
                        alias: str, blue: str) -> dict[str, Any]:
    """Point the alias back at blue while the gateway holds writes: every write made since the
    switch was mirrored to blue, so once those before the hold are applied (and mirrored)
    blue has them all; then the mirror stops and the held writes go to blue."""
    started = time.perf_counter()
    held = _hold(gateway_url, "rollback")
    released: JSON = {}
    try:
        mirror = mirror_state(gateway_url)
        if not mirror.get("active") or mirror.get("failed"):
            raise CheckFailed(f"{mirror.get('failed', 0)} write(s) since the switch could not "
                              f"be mirrored to {blue} ({mirror.get('last_error')}); not rolling "
                              "back without them",
                              hint="pass --catch-up to copy them back into the old index")
        _require_hold(gateway_url, held)
        switched = cutover.apply(cluster, plan)
        stop_mirror(gateway_url)
    finally:
        with contextlib.suppress(IndexshiftError):
            released = release_writes(gateway_url, str(held["hold_id"]))
    return {"hold_ms": round((time.perf_counter() - started) * 1000, 1),
            "switch_ms": round(switched.took_ms, 1), "mirrored": mirror.get("mirrored"),
            "held_writes": released.get("held_writes"), "alias": alias}
