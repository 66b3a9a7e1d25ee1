"""Progressive read rollout: a share of an alias's reads goes to green, the rest to blue.

The operator names an alias, its blue index (serving now) and its green index (the new one),
and a share of reads for green (1 % → 10 % → 100 %, by hand or on a schedule). The gateway
rewrites each data read on the alias (search, count, get, msearch, …) to one of the two
indices, times it, and feeds what happened back here. Green's error rate and p95 latency over
a sliding window are compared with blue's; when green is worse than the thresholds allow,
every read goes back to blue and the reason is kept for the operator.

Everything here is pure (data in, data out): the gateway calls :func:`route_read` for each
read, hands :func:`evaluate` the samples it kept, and applies the state it gets back.

Limits, precisely: only reads whose *path* names the alias are rolled out; a cluster-level
``/_msearch`` or ``/_mget`` whose body names the alias reaches the alias (blue) as usual. A
``200`` answer with failed shards counts as a success.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote

from indexshift.errors import BadInput

JSON = dict[str, Any]

# Routing resolution: a share is honoured to 0.01 %.
ROUTING_BUCKETS: Final = 10_000
# A client that wants its session to stay on one side sends this header (or the search
# ``preference`` parameter, which already means "same shards for the same session").
SESSION_HEADER: Final = "X-Indexshift-Session"
TARGET_HEADER: Final = "X-Indexshift-Read-Target"  # on answers: which index served the read

# Data reads that a rollout moves (endpoint → methods). Anything else on the alias (index
# management, by-query writes, the bare index metadata) keeps its path: a ``DELETE`` or a
# mapping change must never be redirected to a physical index by a rollout.
_SEARCH_METHODS: Final = frozenset({"GET", "HEAD", "POST"})
_DOC_METHODS: Final = frozenset({"GET", "HEAD"})
ROLLED_OUT_ENDPOINTS: Final[Mapping[str, frozenset[str]]] = {
    "_search": _SEARCH_METHODS,
    "_count": _SEARCH_METHODS,
    "_msearch": _SEARCH_METHODS,
    "_mget": _SEARCH_METHODS,
    "_explain": _SEARCH_METHODS,
    "_field_caps": _SEARCH_METHODS,
    "_validate": _SEARCH_METHODS,
    "_termvectors": _SEARCH_METHODS,
    "_mtermvectors": _SEARCH_METHODS,
    "_terms_enum": _SEARCH_METHODS,
    "_doc": _DOC_METHODS,
    "_source": _DOC_METHODS,
}
# Endpoints whose 404 is an answer ("no such document"), not a failure of the index.
_NOT_FOUND_IS_AN_ANSWER: Final = frozenset({"_doc", "_source", "_explain", "_termvectors"})


class Target(StrEnum):
    BLUE = "blue"
    GREEN = "green"


class Phase(StrEnum):
    ACTIVE = "active"  # the share of reads goes to green
    ROLLED_BACK = "rolled_back"  # green crossed a threshold: every read goes to blue


# -- what the operator asks for ----------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """When green is worse enough than blue to send every read back to blue."""

    max_error_rate_delta: float = 0.02  # green's error rate minus blue's, 0..1
    max_p95_ratio: float = 2.0  # green's p95 over blue's (floored at p95_floor_s)
    min_samples: int = 50  # green reads in the window before green is judged at all
    window_s: float = 60.0  # the sliding window the rates and p95s are computed over
    # A few ms of difference on a fast index is noise, not a slower index: blue's p95 is
    # floored before the ratio so that 0.4 ms against 1.1 ms does not roll back.
    p95_floor_s: float = 0.005

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate_delta <= 1:
            raise BadInput(f"max_error_rate_delta must be between 0 and 1, "
                           f"got {self.max_error_rate_delta}")
        if not self.max_p95_ratio >= 1:
            raise BadInput(f"max_p95_ratio must be at least 1, got {self.max_p95_ratio}")
        if self.min_samples < 1:
            raise BadInput(f"min_samples must be at least 1, got {self.min_samples}")
        if not self.window_s > 0 or not self.p95_floor_s >= 0:
            raise BadInput("window_s must be positive and p95_floor_s not negative")

    def to_json(self) -> JSON:
        return {"max_error_rate_delta": self.max_error_rate_delta,
                "max_p95_ratio": self.max_p95_ratio, "min_samples": self.min_samples,
                "window_s": self.window_s, "p95_floor_s": self.p95_floor_s}


@dataclass(frozen=True)
class RolloutSpec:
    """A rollout as asked: ``share`` percent of the alias's reads to ``green``; with ``steps``,
    the share climbs through them, one every ``step_seconds``, while green stays healthy."""

    alias: str
    blue: str
    green: str
    share: float
    steps: tuple[float, ...] = ()
    step_seconds: float = 60.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        for role, name in (("alias", self.alias), ("blue", self.blue), ("green", self.green)):
            if not name or name.startswith(("_", "-", "+")) or any(c in name for c in ",*/ "):
                raise BadInput(f"{role} {name!r} is not an index or alias name")
        if len({self.alias, self.blue, self.green}) != 3:
            raise BadInput("alias, blue and green must be three different names")
        if not 0 <= self.share <= 100 or math.isnan(self.share):
            raise BadInput(f"share is a percentage between 0 and 100, got {self.share}")
        if any(not 0 < s <= 100 for s in self.steps):
            raise BadInput(f"steps are percentages above 0 and up to 100, got {self.steps}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise BadInput(f"steps must increase, got {list(self.steps)}")
        if not self.step_seconds > 0:
            raise BadInput(f"step_seconds must be positive, got {self.step_seconds}")

    def to_json(self) -> JSON:
        return {"alias": self.alias, "blue": self.blue, "green": self.green,
                "share": self.share, "steps": list(self.steps),
                "step_seconds": self.step_seconds, "thresholds": self.thresholds.to_json()}


def _number(body: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{key} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise BadInput(f"{key} must be a number, got {value!r}") from None


def spec_from_json(body: object) -> RolloutSpec:
    """The rollout a ``POST /_indexshift/gateway/rollout`` body asks for (BadInput if not one).

    ``{"alias", "blue", "green", "share"?, "steps"?, "step_seconds"?, "thresholds"?}``; with
    steps and no share, the rollout starts at the first step.
    """
    if not isinstance(body, dict):
        raise BadInput("a rollout is a JSON object with alias, blue, green and share")
    names: dict[str, str] = {}
    for key in ("alias", "blue", "green"):
        value = body.get(key)
        if not isinstance(value, str):
            raise BadInput(f"the rollout needs {key} (a name), got {value!r}")
        names[key] = value
    raw_steps = body.get("steps") or []
    if isinstance(raw_steps, str):
        raw_steps = [part for part in raw_steps.split(",") if part.strip()]
    if not isinstance(raw_steps, list):
        raise BadInput(f"steps must be a list of percentages, got {raw_steps!r}")
    steps = tuple(_number({"each step": s}, "each step", None) or 0.0 for s in raw_steps)
    share = _number(body, "share", steps[0] if steps else None)
    if share is None:
        raise BadInput("the rollout needs share (percent of reads to green) or steps")
    step_seconds = _number(body, "step_seconds", 60.0)
    raw_thresholds = body.get("thresholds") or {}
    if not isinstance(raw_thresholds, dict):
        raise BadInput(f"thresholds must be an object, got {raw_thresholds!r}")
    known = Thresholds.__dataclass_fields__
    unknown = sorted(set(raw_thresholds) - set(known))
    if unknown:
        raise BadInput(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(known)}")
    defaults = Thresholds()

    def given(key: str) -> float:
        value = _number(raw_thresholds, key, None)
        return float(getattr(defaults, key)) if value is None else value

    min_samples = given("min_samples")
    if not min_samples.is_integer():
        raise BadInput(f"min_samples must be a whole number, got {min_samples}")
    thresholds = Thresholds(max_error_rate_delta=given("max_error_rate_delta"),
                            max_p95_ratio=given("max_p95_ratio"),
                            min_samples=int(min_samples), window_s=given("window_s"),
                            p95_floor_s=given("p95_floor_s"))
    return RolloutSpec(alias=names["alias"], blue=names["blue"], green=names["green"],
                       share=share, steps=steps,
                       step_seconds=60.0 if step_seconds is None else step_seconds,
                       thresholds=thresholds)


# -- routing one read --------------------------------------------------------------------------


def routing_key(query: str, session_header: str | None) -> str | None:
    """What keeps one client's reads on one side: its session header, else the search
    ``preference`` (unless it is one of the engine's own ``_local``-style values)."""
    if session_header:
        return session_header
    for name, value in parse_qsl(query, keep_blank_values=True) if query else ():
        if name == "preference" and value and not value.startswith("_"):
            return value
    return None


def bucket_of(alias: str, key: str) -> int:
    """The key's fixed bucket in ``[0, ROUTING_BUCKETS)``. A read goes to green when its bucket
    is below the share, so as the share grows the sessions already on green stay there."""
    digest = hashlib.blake2b(f"{alias}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ROUTING_BUCKETS


def choose_target(share: float, alias: str, key: str | None, draw: float) -> Target:
    """Blue or green for one read. With a key the choice is a hash of it (a session sees one
    index, so its paging and scores stay consistent); without one it is ``draw`` (uniform in
    [0, 1), the caller's random number), which spreads anonymous reads at exactly the share."""
    if share <= 0:
        return Target.BLUE
    if share >= 100:
        return Target.GREEN
    point = bucket_of(alias, key) if key is not None else int(draw * ROUTING_BUCKETS)
    return Target.GREEN if point < share * ROUTING_BUCKETS / 100 else Target.BLUE


def _segments(path: str) -> list[str]:
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def read_endpoint(method: str, path: str) -> tuple[list[str], str] | None:
    """The target names (decoded) and the endpoint of a data read a rollout may move, or None
    (cluster-level APIs, index management, anything not a data read)."""
    parts = _segments(path)
    if len(parts) < 2 or parts[0].startswith("_"):
        return None
    endpoint = parts[1]
    if method.upper() not in ROLLED_OUT_ENDPOINTS.get(endpoint, frozenset()):
        return None
    return unquote(parts[0]).split(","), endpoint


def rewrite_target(path: str, alias: str, index: str) -> str:
    """The path with ``alias`` replaced by ``index`` in its target (other targets kept)."""
    parts = _segments(path)
    names = [index if name == alias else name for name in unquote(parts[0]).split(",")]
    first = ",".join(quote(name, safe="*") for name in names)
    return "/" + "/".join([first, *parts[1:]])


def is_error(status: int, endpoint: str) -> bool:
    """Whether an answer counts against the index that gave it. 4xx counts: a query green's
    mapping cannot run, a closed or missing green, answer 400/404; a document that is not
    there is an answer, not a failure."""
    if status == 404 and endpoint in _NOT_FOUND_IS_AN_ANSWER:
        return False
    return status >= 400


# -- judging green -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadSample:
    at: float  # monotonic seconds
    target: Target
    seconds: float
    error: bool


@dataclass(frozen=True)
class WindowStats:
    reads: int
    errors: int
    p95_s: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.reads if self.reads else 0.0

    def to_json(self) -> JSON:
        return {"reads": self.reads, "errors": self.errors,
                "error_rate": round(self.error_rate, 4),
                "p95_ms": None if self.p95_s is None else round(self.p95_s * 1000, 3)}


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def window_stats(samples: Iterable[ReadSample], target: Target, since: float) -> WindowStats:
    """Reads, errors and p95 latency of ``target`` for samples taken at ``since`` or later.
    Latency is taken over successful reads only: a fast failure must not make green look
    quick."""
    reads = errors = 0
    latencies: list[float] = []
    for sample in samples:
        if sample.target is not target or sample.at < since:
            continue
        reads += 1
        if sample.error:
            errors += 1
        else:
            latencies.append(sample.seconds)
    return WindowStats(reads, errors, percentile(latencies, 0.95))


class Cause(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY = "latency"


@dataclass(frozen=True)
class Verdict:
    healthy: bool | None  # None: too few green reads to say
    cause: Cause | None = None
    reason: str = ""


def judge(blue: WindowStats, green: WindowStats, thresholds: Thresholds,
          blue_p95_baseline: float | None) -> Verdict:
    """Whether green is healthy compared with blue.

    Blue's own figures are used when it served enough reads in the window; otherwise (a share
    near 100 %) green's error rate is compared with zero and its p95 with ``blue_p95_baseline``,
    the last p95 blue showed with enough reads (no latency judgement without one).
    """
    if green.reads < thresholds.min_samples:
        return Verdict(None, reason=f"{green.reads} of {thresholds.min_samples} green reads "
                                    f"needed to judge")
    blue_known = blue.reads >= thresholds.min_samples
    blue_rate = blue.error_rate if blue_known else 0.0
    delta = green.error_rate - blue_rate
    if delta > thresholds.max_error_rate_delta:
        return Verdict(False, Cause.ERROR_RATE,
                       f"green's error rate {green.error_rate:.1%} ({green.errors} of "
                       f"{green.reads}) exceeds blue's {blue_rate:.1%} by more than "
                       f"{thresholds.max_error_rate_delta:.1%}")
    baseline = blue.p95_s if blue_known and blue.p95_s is not None else blue_p95_baseline
    if baseline is not None and green.p95_s is not None:
        floored = max(baseline, thresholds.p95_floor_s)
        if green.p95_s > thresholds.max_p95_ratio * floored:
            return Verdict(False, Cause.LATENCY,
                           f"green's p95 {green.p95_s * 1000:.1f} ms is more than "
                           f"{thresholds.max_p95_ratio:g}x blue's {floored * 1000:.1f} ms")
    return Verdict(True, reason="green within thresholds"
                   + ("" if baseline is not None else " (no blue latency to compare yet)"))


# -- the rollout over time ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShareChange:
    elapsed_s: float  # since the rollout began
    share: float
    why: str

    def to_json(self) -> JSON:
        return {"elapsed_s": round(self.elapsed_s, 3), "share": self.share, "why": self.why}


@dataclass(frozen=True)
class RolloutState:
    spec: RolloutSpec
    phase: Phase
    share: float  # the share of reads green gets now (0 once rolled back)
    started_at: float  # monotonic
    step_started_at: float  # when the share last changed
    cause: Cause | None = None
    reason: str | None = None
    blue_p95_baseline: float | None = None
    verdict: Verdict | None = None
    history: tuple[ShareChange, ...] = ()

    @property
    def scheduled(self) -> bool:
        return bool(self.spec.steps)

    def next_step(self) -> float | None:
        return next((step for step in self.spec.steps if step > self.share), None)


def begin(spec: RolloutSpec, now: float, previous: RolloutState | None = None) -> RolloutState:
    """A rollout starting now. A new share for the same blue and green while the rollout is
    active continues it (history, baseline, and the samples the caller keeps); anything else
    starts afresh."""
    if (previous is not None and previous.phase is Phase.ACTIVE
            and (previous.spec.blue, previous.spec.green) == (spec.blue, spec.green)):
        change = ShareChange(now - previous.started_at, spec.share, "set by the operator")
        return replace(previous, spec=spec, share=spec.share, step_started_at=now,
                       verdict=None, history=(*previous.history, change))
    return RolloutState(spec, Phase.ACTIVE, spec.share, now, now,
                        history=(ShareChange(0.0, spec.share, "set by the operator"),))


def continues(previous: RolloutState | None, current: RolloutState) -> bool:
    """Whether ``current`` carries on ``previous`` (so the samples taken so far still count)."""
    return previous is not None and current.started_at == previous.started_at


def evaluate(state: RolloutState, samples: Iterable[ReadSample], now: float) -> RolloutState:
    """The rollout after looking at the window: rolled back when green crosses a threshold,
    one step up when the schedule says so and green was judged healthy in this step."""
    if state.phase is not Phase.ACTIVE:
        return state
    kept = list(samples)
    since = now - state.spec.thresholds.window_s
    blue = window_stats(kept, Target.BLUE, since)
    green = window_stats(kept, Target.GREEN, since)
    thresholds = state.spec.thresholds
    baseline = state.blue_p95_baseline
    if blue.reads >= thresholds.min_samples and blue.p95_s is not None:
        baseline = blue.p95_s
    verdict = judge(blue, green, thresholds, baseline)
    state = replace(state, verdict=verdict, blue_p95_baseline=baseline)
    if verdict.healthy is False:
        return replace(state, phase=Phase.ROLLED_BACK, share=0.0, step_started_at=now,
                       cause=verdict.cause, reason=verdict.reason,
                       history=(*state.history,
                                ShareChange(now - state.started_at, 0.0,
                                            f"rolled back: {verdict.reason}")))
    step = state.next_step()
    if step is None or verdict.healthy is not True or \
            now - state.step_started_at < state.spec.step_seconds:
        return state
    # Green must have been judged on reads of this very step, not only on earlier ones.
    this_step = window_stats(kept, Target.GREEN, state.step_started_at)
    if this_step.reads < thresholds.min_samples:
        return state
    return replace(state, share=step, step_started_at=now,
                   history=(*state.history,
                            ShareChange(now - state.started_at, step,
                                        f"stepped up after {state.spec.step_seconds:g} s "
                                        f"healthy")))


def state_to_json(state: RolloutState, samples: Iterable[ReadSample], now: float) -> JSON:
    """What ``gateway status`` shows of one rollout."""
    kept = list(samples)
    since = now - state.spec.thresholds.window_s
    verdict = state.verdict
    return {
        **state.spec.to_json(),
        "phase": state.phase.value,
        "share": state.share,
        "next_step": state.next_step() if state.phase is Phase.ACTIVE else None,
        "elapsed_s": round(now - state.started_at, 3),
        "step_elapsed_s": round(now - state.step_started_at, 3),
        "rolled_back": state.phase is Phase.ROLLED_BACK,
        "cause": None if state.cause is None else state.cause.value,
        "reason": state.reason,
        "verdict": None if verdict is None else {
            "healthy": verdict.healthy,
            "cause": None if verdict.cause is None else verdict.cause.value,
            "reason": verdict.reason},
        "window": {"blue": window_stats(kept, Target.BLUE, since).to_json(),
                   "green": window_stats(kept, Target.GREEN, since).to_json()},
        "blue_p95_baseline_ms": (None if state.blue_p95_baseline is None
                                 else round(state.blue_p95_baseline * 1000, 3)),
        "history": [change.to_json() for change in state.history],
    }
