"""The validation suite: every check green must pass before the alias moves to it.

Five checks, as the runbook lists them: document count, content (an exact diff or a seeded
random sample), schema (required fields and types), search (canaries answer with enough hits),
and performance (green's canary p95 against a limit and against blue's). A check that cannot
run fails with the reason; nothing here raises for a cluster error, so the report always holds
all five checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from indexshift.canary import CanaryReport, combine, run_canaries
from indexshift.cluster import Cluster
from indexshift.errors import IndexshiftError
from indexshift.spec import Validation

# A fixed seed makes the sample the same on every run of a migration, so a failure can be
# looked at again with the same documents.
SAMPLE_SEED = 20261123
# Searches return at most index.max_result_window hits (10,000 by default) in one page.
MAX_SAMPLE = 10_000
MGET_BATCH = 1_000
# Blue's p95 is floored at this many ms before the ratio: latencies of a few ms are noise from
# the machine (a busy core, a GC pause), not the index — a 1 ms blue would fail a 2.5 ms green
# at ratio 2. A green that is really slower (a field no longer indexed, a costlier analyzer)
# shows in tens of ms, far above the floor; the absolute limit still applies below it.
BLUE_P95_FLOOR_MS = 5.0
EXAMPLES = 5


class DiffSummary(Protocol):
    """What the validator needs from an exact diff of two indices."""

    @property
    def missing_total(self) -> int: ...

    @property
    def extra_total(self) -> int: ...

    @property
    def changed_total(self) -> int: ...


DiffFunction = Callable[[str, str], DiffSummary]


@dataclass(frozen=True)
class ValidationCheck:
    name: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "numbers": dict(self.numbers)}


@dataclass(frozen=True)
class ValidationReport:
    blue: str
    green: str
    checks: tuple[ValidationCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[ValidationCheck]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> ValidationCheck:
        for found in self.checks:
            if found.name == name:
                return found
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"blue": self.blue, "green": self.green, "passed": self.passed,
                "checks": [c.to_json() for c in self.checks]}


# -- pure checks ---------------------------------------------------------------------------------


def count_check(blue_count: int, green_count: int, tolerance: int) -> ValidationCheck:
    difference = abs(green_count - blue_count)
    numbers = {"blue": blue_count, "green": green_count, "difference": difference,
               "tolerance": tolerance}
    head = f"green has {green_count:,} docs, blue {blue_count:,}"
    if difference <= tolerance:
        return ValidationCheck("count", True, f"{head}: within the tolerance {tolerance:,}",
                               numbers)
    return ValidationCheck(
        "count", False,
        f"{head}: off by {difference:,}, {difference - tolerance:,} more than the tolerance "
        f"{tolerance:,}",
        numbers,
    )


def diff_check(summary: DiffSummary, *, compare_content: bool = True) -> ValidationCheck:
    """The content check from an exact diff: nothing missing, extra or (if compared) changed."""
    missing, extra, changed = summary.missing_total, summary.extra_total, summary.changed_total
    numbers = {"mode": "exact", "missing": missing, "extra": extra, "changed": changed,
               "compare_content": compare_content}
    problems = [f"{missing:,} missing in green" if missing else "",
                f"{extra:,} extra in green" if extra else "",
                f"{changed:,} changed" if changed and compare_content else ""]
    found = [p for p in problems if p]
    what = "ids and sources" if compare_content else "ids (the transform changes sources)"
    if not found:
        return ValidationCheck("content", True, f"exact diff of {what}: identical", numbers)
    return ValidationCheck("content", False, f"exact diff of {what}: {', '.join(found)}",
                           numbers)


def canonical(source: Any) -> str:
    """A document source as JSON with sorted keys, so key order never counts as a change."""
    return json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sample_check(blue_docs: Mapping[str, Any], green_docs: Mapping[str, Any | None], *,
                 blue_total: int, compare_content: bool = True,
                 capped_from: int | None = None) -> ValidationCheck:
    """The content check from a sample: ``green_docs`` maps each sampled id to its source in
    green, or None when green lacks it."""
    missing = sorted(i for i in blue_docs if green_docs.get(i) is None)
    changed = sorted(
        i for i in blue_docs
        if green_docs.get(i) is not None and canonical(blue_docs[i]) != canonical(green_docs[i])
    ) if compare_content else []
    sampled = len(blue_docs)
    numbers: dict[str, Any] = {"mode": "sample", "sampled": sampled, "blue_total": blue_total,
                               "missing": len(missing), "changed": len(changed),
                               "compare_content": compare_content}
    what = "ids and sources" if compare_content else "ids (the transform changes sources)"
    head = f"sampled {sampled:,} of {blue_total:,} blue docs, compared {what}"
    if capped_from is not None:
        head += f" (asked for {capped_from:,}; one search returns at most {MAX_SAMPLE:,})"
    if not missing and not changed:
        return ValidationCheck("content", True, f"{head}: identical", numbers)
    problems = []
    if missing:
        problems.append(f"{len(missing):,} missing in green (e.g. {_examples(missing)})")
    if changed:
        problems.append(f"{len(changed):,} differ (e.g. {_examples(changed)})")
    numbers["missing_ids"] = missing[:EXAMPLES]
    numbers["changed_ids"] = changed[:EXAMPLES]
    return ValidationCheck("content", False, f"{head}: {', '.join(problems)}", numbers)


def _examples(ids: Sequence[str]) -> str:
    return ", ".join(ids[:EXAMPLES]) + (", ..." if len(ids) > EXAMPLES else "")


def _field_type(node: Mapping[str, Any]) -> str:
    # An object field has "properties" and no "type" in its mapping.
    return str(node.get("type", "object"))


def missing_or_wrong_fields(mapping: Mapping[str, Any], required: Mapping[str, str]) -> list[str]:
    """What in ``mapping`` (an index's ``mappings``) fails ``required`` (field → type).

    Dotted paths go through object ``properties`` and multi-field ``fields``
    (``file_name.raw``). Returns one line per problem, each naming the field.
    """
    problems: list[str] = []
    for path, expected in required.items():
        node: Mapping[str, Any] | None = {"properties": mapping.get("properties") or {}}
        for part in path.split("."):
            assert node is not None
            children = dict(node.get("fields") or {})
            children.update(node.get("properties") or {})
            child = children.get(part)
            node = child if isinstance(child, Mapping) else None
            if node is None:
                break
        if node is None:
            problems.append(f"{path} is missing (expected {expected})")
        elif _field_type(node) != expected:
            problems.append(f"{path} is {_field_type(node)}, expected {expected}")
    return problems


def schema_check(mapping: Mapping[str, Any], required: Mapping[str, str]) -> ValidationCheck:
    problems = missing_or_wrong_fields(mapping, required)
    numbers = {"required": len(required), "problems": len(problems)}
    if problems:
        return ValidationCheck("schema", False, "green's mapping: " + "; ".join(problems),
                               numbers)
    detail = (f"green's mapping has all {len(required)} required fields with their types"
              if required else "no required fields in the spec")
    return ValidationCheck("schema", True, detail, numbers)


def search_check(green: CanaryReport) -> ValidationCheck:
    numbers = {"canaries": len(green.results), "failed": len(green.failed()),
               "error_rate": green.error_rate,
               "hits": {r.name: r.hits for r in green.results}}
    if green.ok:
        return ValidationCheck(
            "search", True,
            f"all {len(green.results)} canaries answered on green with enough hits", numbers)
    problems = []
    for result in green.failed():
        if result.errors:
            problems.append(f"{result.name} failed {len(result.errors)} of {result.searches} "
                            f"searches ({result.errors[0]})")
        elif result.partial_searches:
            problems.append(f"{result.name} had {result.shard_failures} failed shards")
        else:
            problems.append(f"{result.name} found {result.hits or 0:,} hits, needs "
                            f"{result.min_hits:,}")
    return ValidationCheck("search", False, "; ".join(problems), numbers)


def performance_check(green_p95: float | None, blue_p95: float | None,
                      validation: Validation) -> ValidationCheck:
    limit = validation.latency_p95_ms
    numbers: dict[str, Any] = {
        "green_p95_ms": green_p95, "blue_p95_ms": blue_p95, "limit_ms": limit,
        "ratio_max": validation.latency_ratio_max, "runs": validation.latency_runs,
    }
    if green_p95 is None:
        return ValidationCheck("performance", False,
                               "no canary search succeeded on green: no latency to compare",
                               numbers)
    problems = []
    if green_p95 > limit:
        problems.append(f"green's p95 {green_p95:.1f} ms is above the limit {limit:g} ms")
    if blue_p95 is not None:
        baseline = max(blue_p95, BLUE_P95_FLOOR_MS)
        ratio = green_p95 / baseline
        numbers["ratio"] = round(ratio, 3)
        if ratio > validation.latency_ratio_max:
            problems.append(
                f"green's p95 {green_p95:.1f} ms is {ratio:.1f}x blue's {blue_p95:.1f} ms "
                f"(floored at {BLUE_P95_FLOOR_MS:g} ms), above {validation.latency_ratio_max:g}x")
    if problems:
        return ValidationCheck("performance", False, "; ".join(problems), numbers)
    blue_text = f"blue {blue_p95:.1f} ms" if blue_p95 is not None else "blue unmeasured"
    return ValidationCheck(
        "performance", True,
        f"green p95 {green_p95:.1f} ms ({blue_text}) within {limit:g} ms and "
        f"{validation.latency_ratio_max:g}x blue", numbers)


def remeasured(first: ValidationCheck, second: ValidationCheck) -> ValidationCheck:
    """Judge latency on a second measurement after a first one failed: only a green that is
    slow both times fails, and the report keeps the first figures so the spike stays visible."""
    numbers = dict(second.numbers)
    numbers["first_measurement"] = dict(first.numbers)
    if second.passed:
        detail = f"{second.detail} (re-measured after: {first.detail})"
    else:
        detail = f"{second.detail} (measured twice; first: {first.detail})"
    return ValidationCheck(second.name, second.passed, detail, numbers)


def _failed(name: str, exc: IndexshiftError) -> ValidationCheck:
    return ValidationCheck(name, False, f"could not run: {exc}", {"error": str(exc)})


# -- checks that read the cluster -----------------------------------------------------------


def _count(cluster: Cluster, blue: str, green: str, validation: Validation) -> ValidationCheck:
    cluster.refresh(blue)
    cluster.refresh(green)
    return count_check(cluster.count(blue), cluster.count(green), validation.count_tolerance)


def sample_blue(cluster: Cluster, blue: str, size: int) -> dict[str, Any]:
    """``size`` documents of blue picked at random with a fixed seed: id → source."""
    body = {
        "size": size,
        "_source": True,
        "query": {"function_score": {
            "query": {"match_all": {}},
            # _seq_no is the documented field for seeded scores (ids have no doc values).
            "random_score": {"seed": SAMPLE_SEED, "field": "_seq_no"},
            "boost_mode": "replace",
        }},
    }
    answer = cluster.search(blue, body)
    return {str(hit["_id"]): hit.get("_source") for hit in answer["hits"]["hits"]}


def fetch_ids(cluster: Cluster, index: str, ids: Sequence[str]) -> dict[str, Any | None]:
    """id → source in ``index`` (None when absent), by ``_mget`` in batches."""
    found: dict[str, Any | None] = {}
    for start in range(0, len(ids), MGET_BATCH):
        for doc in cluster.mget(index, ids[start:start + MGET_BATCH]):
            found[str(doc["_id"])] = doc.get("_source") if doc.get("found") else None
    return found


def _content(cluster: Cluster, blue: str, green: str, validation: Validation,
             diff: DiffFunction | None, compare_content: bool) -> ValidationCheck:
    if validation.sample_size is None:
        if diff is None:
            return ValidationCheck(
                "content", False,
                "the spec asks for an exact comparison (no sample_size) but no diff was given",
                {"mode": "exact"})
        return diff_check(diff(blue, green), compare_content=compare_content)
    size = min(validation.sample_size, MAX_SAMPLE)
    blue_docs = sample_blue(cluster, blue, size)
    green_docs = fetch_ids(cluster, green, list(blue_docs))
    return sample_check(blue_docs, green_docs, blue_total=cluster.count(blue),
                        compare_content=compare_content,
                        capped_from=validation.sample_size if size < validation.sample_size
                        else None)


def _schema(cluster: Cluster, green: str, validation: Validation) -> ValidationCheck:
    body = cluster.mapping(green)
    # Keyed by the concrete index name, even when ``green`` is an alias.
    entry: dict[str, Any] = next(iter(body.values()), {})
    return schema_check(entry.get("mappings") or {}, validation.required_fields)


def measure_side_by_side(cluster: Cluster, blue: str, green: str,
                         validation: Validation) -> tuple[CanaryReport, CanaryReport]:
    """Canaries on blue and green, one run each in turn, ``latency_runs`` times.

    Taking turns exposes both indices to the same moments of load on the cluster, so a busy
    second cannot make only one of them look slow. One untimed round first warms the caches
    of both, as the application's traffic does.
    """
    canaries = validation.canaries
    run_canaries(cluster, blue, canaries)
    run_canaries(cluster, green, canaries)
    blue_rounds: list[CanaryReport] = []
    green_rounds: list[CanaryReport] = []
    for _ in range(validation.latency_runs):
        blue_rounds.append(run_canaries(cluster, blue, canaries))
        green_rounds.append(run_canaries(cluster, green, canaries))
    return combine(blue_rounds), combine(green_rounds)


def validate(cluster: Cluster, blue: str, green: str, validation: Validation, *,
             diff: DiffFunction | None = None,
             compare_content: bool = True) -> ValidationReport:
    """Run the five checks of green against blue. ``compare_content=False`` compares ids
    only, for a migration whose transform changes the documents on purpose."""
    checks: list[ValidationCheck] = []

    def attempt(name: str, run: Callable[[], ValidationCheck]) -> None:
        try:
            checks.append(run())
        except IndexshiftError as exc:
            checks.append(_failed(name, exc))

    attempt("count", lambda: _count(cluster, blue, green, validation))
    attempt("content", lambda: _content(cluster, blue, green, validation, diff,
                                        compare_content))
    attempt("schema", lambda: _schema(cluster, green, validation))
    try:
        blue_report, green_report = measure_side_by_side(cluster, blue, green, validation)
    except IndexshiftError as exc:  # run_canaries records search errors; this is the rest
        checks.extend([_failed("search", exc), _failed("performance", exc)])
    else:
        checks.append(search_check(green_report))
        performance = performance_check(green_report.p95_ms, blue_report.p95_ms, validation)
        if not performance.passed and green_report.p95_ms is not None:
            # A slow index stays slow; a busy second on a shared machine does not. One more
            # side-by-side round tells them apart before the migration halts on latency.
            try:
                blue_again, green_again = measure_side_by_side(cluster, blue, green, validation)
            except IndexshiftError:
                pass
            else:
                performance = remeasured(performance, performance_check(
                    green_again.p95_ms, blue_again.p95_ms, validation))
        checks.append(performance)
    return ValidationReport(blue=blue, green=green, checks=tuple(checks))


def with_writes_in_flight(report: ValidationReport, in_flight: int) -> ValidationReport:
    """Re-judge the count check allowing for writes that reached blue during validation.

    They are caught up exactly under the write block at the switch, so they are no reason to
    refuse it; the detail says how many were allowed for.
    """
    if in_flight <= 0:
        return report
    checks = []
    for check in report.checks:
        if check.name == "count" and not check.passed and "blue" in check.numbers:
            numbers = check.numbers
            again = count_check(int(numbers["blue"]), int(numbers["green"]),
                                int(numbers["tolerance"]) + in_flight)
            checks.append(ValidationCheck(
                "count", again.passed,
                f"{again.detail} (with {in_flight:,} writes in flight, caught up at the switch)",
                {**again.numbers, "in_flight": in_flight}))
            continue
        checks.append(check)
    return ValidationReport(blue=report.blue, green=report.green, checks=tuple(checks))
