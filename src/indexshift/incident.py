"""The first five minutes of an incident, and the numbers that say how incidents go.

* **Evidence**: one private, timestamped folder with what the cluster looked like (indices,
  aliases, health, tasks, snapshots, mappings, settings), the journal's runs and leases, the
  local run trail and the sandbox's node logs. Every capture is independent: one that fails is
  recorded in the manifest and the others go on. Credentials are scrubbed from every file.
* **Halt**: stop the damage. Open the run's breaker in the journal (a compare-and-set, so the
  process driving the run loses its next checkpoint write and the migrator refuses to resume
  until an operator releases it), cancel the copy tasks writing into the alias's versioned
  indices, and optionally block writes on what the alias serves.
* **Incident timeline**: incidents are documents of kind ``incident`` in the journal index,
  beside runs and leases, so every operator sees the same timeline. Created create-only,
  changed by compare-and-set like every journal record.
* **Success metrics**: the runbook's targets (success rate, MTTD, MTTR, documents lost,
  rollback success, unplanned downtime) computed from runs and incidents.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from indexshift import sandbox
from indexshift.cluster import JSON, Cluster
from indexshift.config import ConnectionConfig
from indexshift.errors import BadInput, CheckFailed, Conflict, IndexshiftError, NotFound
from indexshift.journal import (
    Journal,
    RunRecord,
    RunStatus,
    Versioned,
    iso_utc,
    new_run_id,
    parse_iso_utc,
    this_holder,
    utc_now,
)
from indexshift.migrator import HALTED_BY_OPERATOR, operator_halt
from indexshift.spec import parse_versioned_index

REDACTED = "***"
EVIDENCE_PREFIX = "indexshift-evidence-"
LOG_TAIL_BYTES = 2 * 1024 * 1024
HALT_WAIT_S = 15.0
CAS_ATTEMPTS = 5
FINISHED = (RunStatus.COMPLETED, RunStatus.ROLLED_BACK, RunStatus.FAILED)


def _as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, to the millisecond, as the journal stores times."""
    if moment.tzinfo is None:
        raise BadInput(f"the time {moment.isoformat()} has no time zone",
                       hint="give times in UTC, e.g. 2026-11-23T10:15:00Z")
    return parse_iso_utc(iso_utc(moment))


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def _who() -> str:
    holder = this_holder()
    return f"{holder['user']}@{holder['host']}"


# -- redaction -------------------------------------------------------------------------------

_SENSITIVE_WORDS = ("password", "passwd", "passphrase", "secret", "api_key", "apikey",
                    "api-key", "access_key", "accesskey", "token", "credential",
                    "private_key", "authorization")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:'\"<>]+:[^\s/@'\"<>]*@")
_AUTH_HEADER = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?\s*(?:basic|bearer|apikey|api-key)\s+)"
    r"[A-Za-z0-9+/=._~-]+")
_KEY_VALUE = re.compile(
    r"""(?i)(["']?[\w.-]*(?:password|passwd|passphrase|secret|api[_-]?key|access[_-]?key"""
    r"""|token|credential)[\w.-]*["']?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;&}\]"']+)""")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_literals(config: ConnectionConfig) -> list[str]:
    """Every form in which the config's secrets could show up in captured text.

    The password and API key as given, URL-encoded and JSON-escaped, and the base64 of
    ``user:password`` (a Basic header) and of the API key; longest first, so a longer form is
    replaced before a shorter one inside it.
    """
    raw: list[str] = []
    password = config.password.get_secret_value() if config.password else ""
    api_key = config.api_key.get_secret_value() if config.api_key else ""
    if password:
        raw.append(password)
        raw.append(_b64(f"{config.username or ''}:{password}"))
    if api_key:
        raw.extend((api_key, _b64(api_key)))
    forms: set[str] = set()
    for secret in raw:
        forms.update({secret, secret.rstrip("="), quote(secret, safe=""),
                      json.dumps(secret)[1:-1]})
    return sorted((form for form in forms if form), key=lambda form: (-len(form), form))


def redact_url(url: str) -> str:
    """The URL without any ``user:pass@``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scrub_text(text: str, literals: Sequence[str] = ()) -> str:
    """Text with known secrets, URL credentials, auth headers and password-like values masked."""
    for literal in literals:
        text = text.replace(literal, REDACTED)
    text = _URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}@", text)
    text = _AUTH_HEADER.sub(rf"\g<1>{REDACTED}", text)
    return _KEY_VALUE.sub(rf'\g<1>"{REDACTED}"', text)


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SENSITIVE_WORDS)


def scrub_json(value: Any, *, sensitive: bool = False) -> Any:
    """A copy of ``value`` with the values of password-like keys masked (booleans kept)."""
    if isinstance(value, dict):
        return {key: scrub_json(item, sensitive=sensitive or is_sensitive_key(str(key)))
                for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_json(item, sensitive=sensitive) for item in value]
    if sensitive and value is not None and not isinstance(value, bool):
        return REDACTED
    return value


def render_scrubbed(content: Any, literals: Sequence[str] = ()) -> str:
    """What goes into an evidence file: text as is, anything else as indented JSON; scrubbed."""
    text = content if isinstance(content, str) else json.dumps(
        scrub_json(content), indent=2, sort_keys=True, default=str)
    return scrub_text(text, literals)


# -- evidence --------------------------------------------------------------------------------


def evidence_folder_name(now: datetime) -> str:
    """``indexshift-evidence-20261123T101500Z``."""
    return f"{EVIDENCE_PREFIX}{_as_utc(now):%Y%m%dT%H%M%SZ}"


def same_endpoint(url_a: str, url_b: str) -> bool:
    """Whether two URLs reach the same HTTP endpoint (loopback names are one host)."""
    loopback = {"localhost", "127.0.0.1", "::1"}

    def key(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        default = 443 if parts.scheme == "https" else 80
        return (parts.scheme.lower(), "loopback" if host in loopback else host,
                parts.port or default)

    try:
        return key(url_a) == key(url_b)
    except ValueError:
        return False


def running_sandboxes_at(url: str, root: Path | None = None) -> list[sandbox.SandboxState]:
    """The local sandboxes serving ``url`` with at least one node alive."""
    base = root or sandbox.sandbox_root()
    found: list[sandbox.SandboxState] = []
    if not base.is_dir():
        return found
    for folder in sorted(base.iterdir()):
        state_file = folder / sandbox.STATE_FILE
        if not state_file.is_file():
            continue
        try:
            state = sandbox.SandboxState.from_json(json.loads(state_file.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a half-written or foreign file: not a sandbox we can read
        if not same_endpoint(state.url, url):
            continue
        if any(sandbox.process_group_alive(node.pid) for node in state.nodes):
            found.append(state)
    return found


def read_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a file as text (a log's end is where an incident is)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        data = handle.read()
    text = data.decode(errors="replace")
    if size > max_bytes:
        text = f"[... first {size - max_bytes} bytes left out ...]\n" + text
    return text


@dataclass
class _Bundle:
    """The evidence folder being written: private files, and what went in or failed."""

    root: Path
    literals: list[str]
    files: list[JSON] = field(default_factory=list)
    errors: list[JSON] = field(default_factory=list)

    def write(self, relative: str, content: Any, what: str) -> None:
        path = self.root / relative
        _private_dirs(self.root, path.parent)
        data = render_scrubbed(content, self.literals).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files.append({"file": relative, "what": what, "bytes": len(data)})

    def capture(self, relative: str, what: str, produce: Callable[[], Any]) -> None:
        try:
            content = produce()
            self.write(relative, content, what)
        except Exception as exc:  # one capture failing must not cost the others
            self.errors.append({"file": relative, "what": what,
                                "error": scrub_text(_one_line(exc), self.literals)})


def _private_dirs(root: Path, folder: Path) -> None:
    missing: list[Path] = []
    current = folder
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        path.chmod(0o700)


def _make_evidence_folder(out_dir: Path, now: datetime) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"{out_dir} is not a directory; pass a folder for the evidence")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = evidence_folder_name(now)
    for attempt in range(100):
        path = out_dir / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        path.chmod(0o700)  # whatever the umask
        return path
    raise CheckFailed(f"{out_dir} already holds 100 evidence folders for {base}",
                      hint="pass another --out folder")


def alias_indices(cluster: Cluster, alias: str) -> list[str]:
    """What the alias serves plus every versioned index of it (blue, green, leftovers)."""
    names = set(cluster.alias_targets(alias))
    for row in cluster.indices(f"{alias}-v*"):
        name = str(row.get("index"))
        if parse_versioned_index(alias, name) is not None:
            names.add(name)
    return sorted(names)


def _journal_docs(cluster: Cluster, journal: Journal, kind: str,
                  alias: str | None) -> list[JSON]:
    filters: list[JSON] = [{"term": {"kind": kind}}]
    if alias is not None:
        filters.append({"term": {"alias": alias}})
    body: JSON = {"query": {"bool": {"filter": filters}}, "size": 1000}
    result = cluster.search(journal.index, body)
    return [{"_id": hit.get("_id"), **hit.get("_source", {})}
            for hit in result.get("hits", {}).get("hits", [])]


def _file_part(name: str) -> str:
    """A name safe as one path component (sandbox and node names come from a state file)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _read_text(path: Path) -> str:
    return path.read_text(errors="replace")


def _local_run_files(local_dir: Path, alias: str | None) -> list[Path]:
    if not local_dir.is_dir():
        return []
    chosen = []
    for path in sorted(local_dir.glob("*.jsonl")):
        if alias is not None:
            try:
                with path.open() as handle:
                    first = json.loads(handle.readline() or "{}")
            except (OSError, ValueError):
                first = {}
            if first.get("alias") not in (None, alias):
                continue
        chosen.append(path)
    return chosen


def collect_evidence(cluster: Cluster, config: ConnectionConfig, out_dir: Path, *,
                     alias: str | None = None, now: datetime | None = None,
                     journal: Journal | None = None,
                     sandbox_root: Path | None = None) -> JSON:
    """Capture the cluster's state into a private timestamped folder inside ``out_dir``.

    Returns ``{path, files, errors}``; the folder's ``manifest.json`` says the same plus the
    cluster, engine and time. Nothing in it holds the password or API key.
    """
    moment = _as_utc(now or utc_now())
    the_journal = journal or Journal(cluster)
    folder = _make_evidence_folder(out_dir, moment)
    bundle = _Bundle(folder, secret_literals(config))

    bundle.capture("cat-indices.txt", "_cat/indices?v", lambda: cluster.cat(
        "indices", v=True, expand_wildcards="all", s="index"))
    bundle.capture("cat-aliases.txt", "_cat/aliases?v", lambda: cluster.cat(
        "aliases", v=True, s="alias"))
    bundle.capture("cluster-health.json", "cluster health", cluster.health)
    bundle.capture("tasks.json", "tasks (detailed)", lambda: cluster.tasks(actions=None))
    _capture_snapshots(bundle, cluster)

    scope: list[str] | None = None
    if alias is not None:
        try:
            scope = alias_indices(cluster, alias)
            if not scope:
                raise NotFound(f"alias {alias} has no index and no versioned index")
        except IndexshiftError as exc:
            for name in ("mappings.json", "settings.json"):
                bundle.errors.append({"file": name, "what": f"{name[:-5]} of {alias}",
                                      "error": scrub_text(_one_line(exc), bundle.literals)})
    if alias is None or scope:
        target = ",".join(scope) if scope else "_all"
        bundle.capture("mappings.json", "mappings",
                       lambda: cluster.mapping(target, include_hidden=True))
        bundle.capture("settings.json", "index settings",
                       lambda: cluster.settings(target, include_hidden=True))
    bundle.capture("cluster-settings.json", "cluster settings",
                   lambda: cluster.cluster_settings(include_defaults=False))

    journal_present: bool | None = None
    try:
        journal_present = cluster.index_exists(the_journal.index)
    except IndexshiftError as exc:
        bundle.errors.append({"file": "journal-*.json", "what": "journal",
                              "error": _one_line(exc)})
    if journal_present:
        for kind, name in (("run", "runs"), ("lease", "leases"), (INCIDENT_KIND, "incidents")):
            bundle.capture(f"journal-{name}.json", f"journal {name}",
                           partial(_journal_docs, cluster, the_journal, kind, alias))

    for path in _local_run_files(the_journal.local_dir, alias):
        bundle.capture(f"local-runs/{path.name}", f"local run log {path}",
                       partial(_read_text, path))

    sandboxes: list[str] = []
    try:
        states = running_sandboxes_at(config.url, sandbox_root)
    except OSError as exc:
        states = []
        bundle.errors.append({"file": "sandbox-logs/", "what": "sandbox logs",
                              "error": _one_line(exc)})
    for state in states:
        sandboxes.append(state.name)
        cluster_name = f"indexshift-sandbox-{state.name}"
        for node in state.nodes:
            paths = {sandbox.main_log(node, cluster_name), Path(node.console_log)}
            for path in sorted(paths):
                where = f"{_file_part(state.name)}/{_file_part(node.name)}/{path.name}"
                bundle.capture(f"sandbox-logs/{where}",
                               f"log {path}", partial(read_tail, path))

    manifest: JSON = {
        "created_at": iso_utc(moment),
        "cluster": {"url": redact_url(config.url), "engine": cluster.engine.engine,
                    "version": cluster.engine.version,
                    "cluster_name": cluster.root.get("cluster_name")},
        "connection": config.redacted(),
        "alias": alias,
        "alias_indices": scope,
        "journal": {"index": the_journal.index, "present": journal_present,
                    "local_dir": str(the_journal.local_dir)},
        "sandboxes": sandboxes,
        "files": list(bundle.files),
        "errors": list(bundle.errors),
    }
    bundle.write("manifest.json", manifest, "this manifest")
    return {"path": str(folder), "files": [f["file"] for f in bundle.files],
            "errors": list(bundle.errors)}


def _capture_snapshots(bundle: _Bundle, cluster: Cluster) -> None:
    try:
        repositories = cluster.snapshot_repositories()
    except Exception as exc:
        bundle.errors.append({"file": "snapshot-repositories.json",
                              "what": "snapshot repositories", "error": _one_line(exc)})
        return
    bundle.write("snapshot-repositories.json", repositories, "snapshot repositories")
    for name in sorted(repositories):
        bundle.capture(f"snapshots/{name}.json", f"snapshots in {name}",
                       partial(cluster.snapshots, name))


# -- halt ------------------------------------------------------------------------------------

_REINDEX_DESTINATION = re.compile(r" to \[([^\]]+)\]")


def reindex_destination(description: str) -> str | None:
    """The destination index in a reindex task's description (``reindex from [a] to [b]``)."""
    found = _REINDEX_DESTINATION.findall(description)
    return str(found[-1]) if found else None


def reindex_tasks_into(tasks_body: JSON, alias: str) -> list[JSON]:
    """Top-level reindex tasks from ``GET _tasks`` whose destination is ``<alias>-v<N>...``.

    Slice tasks (those with a parent) are left out: cancelling the parent cancels them.
    """
    found: list[JSON] = []
    for node in (tasks_body.get("nodes") or {}).values():
        for task_id, task in (node.get("tasks") or {}).items():
            if task.get("parent_task_id") or "reindex" not in str(task.get("action", "")):
                continue
            destination = reindex_destination(str(task.get("description") or ""))
            if destination is None or parse_versioned_index(alias, destination) is None:
                continue
            found.append({"task_id": str(task_id), "destination": destination,
                          "description": str(task.get("description") or ""),
                          "cancelled": bool(task.get("cancelled"))})
    return sorted(found, key=lambda row: row["task_id"])


def require_known_alias(cluster: Cluster, journal: Journal, alias: str) -> tuple[
        dict[str, JSON], Versioned[RunRecord] | None]:
    """The alias's targets and latest run; BadInput when the cluster knows neither."""
    if not alias or alias.startswith(("-", "_")) or any(c in alias for c in ' ,*?"<>|/\\'):
        raise BadInput(f"bad alias name {alias!r}")
    targets = cluster.alias_targets(alias)
    latest = journal.latest_run(alias)
    if not targets and latest is None:
        if cluster.index_exists(alias):
            raise BadInput(f"{alias!r} is a concrete index, not an alias",
                           hint="indexshift manages aliases; see the README on adopting one")
        raise BadInput(f"alias {alias!r} does not exist and has no run in the journal",
                       hint="list aliases with `indexshift info`")
    return targets, latest


@dataclass(frozen=True)
class HaltPlan:
    """What a halt will do, decided before anything is done."""

    alias: str
    reason: str
    run: RunRecord | None
    open_breaker: bool
    tasks: list[JSON]
    freeze: list[str]
    notes: list[str]

    def to_json(self) -> JSON:
        run = self.run
        return {
            "alias": self.alias, "reason": self.reason,
            "run": None if run is None else {"run_id": run.run_id, "phase": str(run.phase),
                                             "status": str(run.status)},
            "open_breaker": self.open_breaker,
            "cancel_tasks": list(self.tasks),
            "block_writes": list(self.freeze),
            "notes": list(self.notes),
        }


def plan_halt(alias: str, run: RunRecord | None, journal_task: JSON | None,
              found_tasks: Sequence[JSON], targets: Iterable[str], *, freeze_writes: bool,
              reason: str) -> HaltPlan:
    """Decide the halt: which breaker to open, which tasks to cancel, which indices to block.

    ``journal_task`` is the run's own copy task as the cluster reports it (``GET _tasks/<id>``),
    None when the run has none or the cluster has forgotten it.
    """
    notes: list[str] = []
    open_breaker = False
    if run is None:
        notes.append(f"no run recorded for {alias}: no breaker to open")
    elif run.status in FINISHED:
        notes.append(f"run {run.run_id} is {run.status}: nothing to stop")
    elif operator_halt(run) is not None:
        open_breaker = True
        notes.append(f"run {run.run_id} is already halted by an operator; reason updated")
    else:
        open_breaker = True
    tasks: dict[str, JSON] = {}
    if run is not None and run.task_id and journal_task is not None and \
            not journal_task.get("completed"):
        description = str((journal_task.get("task") or {}).get("description") or "")
        tasks[run.task_id] = {"task_id": run.task_id, "source": "journal",
                              "destination": reindex_destination(description),
                              "description": description}
    elif run is not None and run.task_id and run.status not in FINISHED:
        notes.append(f"the run's copy task {run.task_id} is no longer running")
    for row in found_tasks:
        tasks.setdefault(str(row["task_id"]), {
            "task_id": str(row["task_id"]), "source": "found",
            "destination": row.get("destination"), "description": row.get("description")})
    freeze = sorted(targets) if freeze_writes else []
    if freeze_writes and not freeze:
        notes.append(f"alias {alias} points at no index: no write to block")
    return HaltPlan(alias, reason, run, open_breaker, sorted(tasks.values(),
                                                           key=lambda t: t["task_id"]),
                    freeze, notes)


def _read_task(cluster: Cluster, task_id: str) -> JSON | None:
    try:
        return cluster.task(task_id)
    except NotFound:
        return None


def _open_breaker(journal: Journal, alias: str, run_id: str, reason: str) -> RunRecord | None:
    """Open the run's breaker by compare-and-set, re-reading when another writer got there."""
    for _ in range(CAS_ATTEMPTS):
        current = journal.get_run(run_id)
        if current is None or current.value.status in FINISHED:
            return None if current is None else current.value
        breaker = {"open": True, "reason": reason, "at": iso_utc(utc_now()),
                   "by": HALTED_BY_OPERATOR, "operator": _who()}
        try:
            done = journal.advance(current, status=RunStatus.HALTED, error=reason,
                                   breaker=breaker,
                                   details={"halted_by": _who(), "reason": reason})
        except Conflict:
            continue  # the run's own process moved it on meanwhile: read it again
        return done.value
    raise Conflict(f"run {run_id} of {alias} kept changing while the halt tried to open its "
                   "breaker", hint=f"run `indexshift halt {alias}` again")


def _wait_stopped(cluster: Cluster, task_ids: Sequence[str], wait_s: float) -> set[str]:
    """The tasks among ``task_ids`` that have stopped within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    stopped: set[str] = set()
    while True:
        for task_id in task_ids:
            if task_id in stopped:
                continue
            try:
                task = _read_task(cluster, task_id)
            except IndexshiftError:
                continue
            if task is None or task.get("completed"):
                stopped.add(task_id)
        if len(stopped) == len(task_ids) or time.monotonic() >= deadline:
            return stopped
        time.sleep(0.2)


def halt(cluster: Cluster, alias: str, *, freeze_writes: bool = False,
         reason: str = "halted by operator", dry_run: bool = False,
         journal: Journal | None = None, wait_s: float = HALT_WAIT_S) -> JSON:
    """Stop everything indexshift does on ``alias``, and optionally writes to it.

    Order: the breaker first (the run cannot record another step, nor be resumed), then the
    copy tasks (the driving process sees its task end and stops at its next write), then the
    write block. Each step is tried even when an earlier one failed; ``errors`` says which.

    A dry run and a real one answer with the same keys: ``cancel_tasks`` (a real run adds
    ``cancelled`` and ``stopped`` to each task) and ``block_writes`` (in a real run, the
    indices it did block).
    """
    journal = journal or Journal(cluster)
    if not reason.strip():
        raise BadInput("a halt needs a reason", hint="pass --reason TEXT")
    targets, latest = require_known_alias(cluster, journal, alias)
    run = latest.value if latest is not None else None
    errors: list[str] = []
    # A task listing the cluster refuses must not keep the breaker shut: go on without it.
    journal_task = None
    if run is not None and run.task_id and run.status not in FINISHED:
        try:
            journal_task = _read_task(cluster, run.task_id)
        except IndexshiftError as exc:
            errors.append(f"read task {run.task_id}: {_one_line(exc)}")
    found: list[JSON] = []
    try:
        found = reindex_tasks_into(cluster.tasks(actions="*reindex", detailed=True), alias)
    except IndexshiftError as exc:
        errors.append(f"list reindex tasks: {_one_line(exc)}")
    plan = plan_halt(alias, run, journal_task, found, targets, freeze_writes=freeze_writes,
                     reason=reason)
    report: JSON = {**plan.to_json(), "dry_run": dry_run}
    if dry_run:
        return {**report, "errors": errors}
    breaker: JSON | None = None
    if plan.open_breaker and run is not None:
        try:
            halted = _open_breaker(journal, alias, run.run_id, reason)
            if halted is not None:
                breaker = dict(halted.breaker)
                report["run"] = {"run_id": halted.run_id, "phase": str(halted.phase),
                                 "status": str(halted.status)}
        except IndexshiftError as exc:
            errors.append(f"breaker: {_one_line(exc)}")
    report["breaker"] = breaker
    cancelled: list[str] = []
    for task in plan.tasks:
        try:
            cluster.cancel_task(task["task_id"])
            cancelled.append(task["task_id"])
        except NotFound:
            cancelled.append(task["task_id"])  # finished between the listing and now
        except IndexshiftError as exc:
            errors.append(f"cancel {task['task_id']}: {_one_line(exc)}")
    stopped = _wait_stopped(cluster, cancelled, wait_s) if cancelled else set()
    report["cancel_tasks"] = [{**task, "cancelled": task["task_id"] in cancelled,
                               "stopped": task["task_id"] in stopped} for task in plan.tasks]
    for task_id in cancelled:
        if task_id not in stopped:
            errors.append(f"task {task_id} was cancelled but still runs after {wait_s:g}s")
    blocked: list[str] = []
    for index in plan.freeze:
        try:
            cluster.add_write_block(index)
            blocked.append(index)
        except IndexshiftError as exc:
            errors.append(f"block writes on {index}: {_one_line(exc)}")
    report["block_writes"] = blocked
    report["errors"] = errors
    report["ok"] = not errors
    return report


def _write_blocked(cluster: Cluster, index: str) -> bool:
    return cluster.index_blocks(index).get("write", False)


def release_halt(cluster: Cluster, alias: str, *, unfreeze_writes: bool = False,
                 dry_run: bool = False, journal: Journal | None = None) -> JSON:
    """Undo a halt: close the operator's breaker (the run stays HALTED, for ``resume``) and,
    with ``unfreeze_writes``, lift the write block on what the alias serves."""
    journal = journal or Journal(cluster)
    targets, latest = require_known_alias(cluster, journal, alias)
    run = latest.value if latest is not None else None
    close = run is not None and operator_halt(run) is not None
    unblock = [index for index in sorted(targets) if _write_blocked(cluster, index)] \
        if unfreeze_writes else []
    if not close and not unblock:
        raise CheckFailed(f"alias {alias} has no operator's halt to release"
                          + (" and no write block" if unfreeze_writes else ""),
                          hint=f"see `indexshift status {alias}`")
    report: JSON = {"alias": alias, "dry_run": dry_run,
                    "close_breaker": run.run_id if close and run is not None else None,
                    "unblock_writes": unblock}
    if dry_run:
        return report
    if close and latest is not None:
        current: Versioned[RunRecord] | None = latest
        for _ in range(CAS_ATTEMPTS):
            if current is None or operator_halt(current.value) is None:
                break
            try:
                journal.advance(current, breaker={"open": False, "reason": None, "at": None,
                                                  "released_by": _who(),
                                                  "released_at": iso_utc(utc_now())},
                                details={"released_by": _who()})
                break
            except Conflict:
                current = journal.get_run(current.value.run_id)
        else:
            raise Conflict(f"the run of {alias} kept changing while the release tried to "
                           "close its breaker", hint="try again")
    for index in unblock:
        cluster.remove_write_block(index)
    return report


# -- incidents -------------------------------------------------------------------------------

INCIDENT_KIND = "incident"
SEVERITIES = ("P0", "P1", "P2")


class IncidentStatus(StrEnum):
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


class Incident(BaseModel):
    """One incident and its timeline, as stored in the journal index."""

    model_config = ConfigDict(extra="allow", frozen=True)

    incident_id: str
    alias: str
    severity: str
    summary: str
    status: IncidentStatus = IncidentStatus.OPEN
    run_id: str | None = None
    failed_at: str
    detected_at: str
    resolved_at: str | None = None
    updated_at: str
    declared_by: str = Field(default_factory=_who)
    timeline: list[dict[str, Any]] = Field(default_factory=list)
    resolution: dict[str, Any] | None = None

    def to_json(self) -> JSON:
        return self.model_dump(mode="json")


def incident_doc_id(incident_id: str) -> str:
    return f"incident:{incident_id}"


def incident_to_source(incident: Incident) -> JSON:
    # ``started_at`` is the journal's indexed date: incidents sort and filter by detection.
    return {"kind": INCIDENT_KIND, **incident.to_json(), "started_at": incident.detected_at}


def incident_from_source(source: JSON) -> Incident:
    return Incident.model_validate({k: v for k, v in source.items()
                                    if k not in ("kind", "started_at")})


def new_incident_id(now: datetime, rand: str | None = None) -> str:
    return "inc-" + new_run_id(now, rand or secrets.token_hex(4))


def normalize_severity(severity: str) -> str:
    value = severity.strip().upper()
    if value not in SEVERITIES:
        raise BadInput(f"unknown severity {severity!r}", hint="use P0, P1 or P2")
    return value


def new_incident(*, alias: str, severity: str, summary: str, now: datetime,
                 failed_at: datetime | None = None, run_id: str | None = None,
                 incident_id: str | None = None, by: str | None = None) -> Incident:
    """A fresh OPEN incident detected at ``now``; the failure happened at ``failed_at``."""
    if not summary.strip():
        raise BadInput("an incident needs a summary", hint="say in one line what is broken")
    detected = _as_utc(now)
    failed = _as_utc(failed_at) if failed_at is not None else detected
    if failed > detected:
        raise BadInput(f"the failure time {iso_utc(failed)} is after the detection "
                       f"{iso_utc(detected)}", hint="give --failed-at in the past (UTC)")
    who = by or _who()
    timeline: list[JSON] = [
        {"at": iso_utc(failed), "event": "failed", "text": "the failure happened"},
        {"at": iso_utc(detected), "event": "declared", "by": who,
         "text": f"{normalize_severity(severity)}: {summary.strip()}"},
    ]
    return Incident(incident_id=incident_id or new_incident_id(detected), alias=alias,
                    severity=normalize_severity(severity), summary=summary.strip(),
                    run_id=run_id, failed_at=iso_utc(failed), detected_at=iso_utc(detected),
                    updated_at=iso_utc(detected), declared_by=who, timeline=timeline)


def note_incident(incident: Incident, text: str, *, now: datetime,
                  by: str | None = None) -> Incident:
    if not text.strip():
        raise BadInput("an empty note says nothing", hint="pass the note's text")
    entry = {"at": iso_utc(now), "event": "note", "by": by or _who(), "text": text.strip()}
    return incident.model_copy(update={"timeline": [*incident.timeline, entry],
                                       "updated_at": iso_utc(now)})


def resolve_incident(incident: Incident, *, now: datetime, docs_lost: int,
                     downtime_s: float = 0.0, rollback: bool | None = None,
                     rollback_ok: bool | None = None, summary: str,
                     by: str | None = None) -> Incident:
    """The incident closed with its outcome; refused when already resolved or inconsistent."""
    if incident.status == IncidentStatus.RESOLVED:
        raise CheckFailed(f"incident {incident.incident_id} was resolved at "
                          f"{incident.resolved_at}", hint="add a note instead")
    if docs_lost < 0:
        raise BadInput(f"documents lost must be 0 or more, got {docs_lost}")
    if downtime_s < 0:
        raise BadInput(f"downtime must be 0 or more seconds, got {downtime_s:g}")
    if rollback is False and rollback_ok is not None:
        raise BadInput("a rollback outcome was given for an incident without a rollback",
                       hint="pass --rollback with --rollback-ok/--rollback-failed")
    if rollback_ok is not None:
        rollback = True
    if not summary.strip():
        raise BadInput("a resolution needs a summary", hint="say in one line what fixed it")
    resolved = _as_utc(now)
    if resolved < parse_iso_utc(incident.detected_at):
        raise BadInput(f"the resolution time {iso_utc(resolved)} is before the detection "
                       f"{incident.detected_at}")
    outcome = {"docs_lost": int(docs_lost), "downtime_s": float(downtime_s),
               "rollback": rollback, "rollback_ok": rollback_ok, "summary": summary.strip()}
    entry = {"at": iso_utc(resolved), "event": "resolved", "by": by or _who(),
             "text": summary.strip(), "outcome": outcome}
    return incident.model_copy(update={
        "status": IncidentStatus.RESOLVED, "resolved_at": iso_utc(resolved),
        "updated_at": iso_utc(resolved), "resolution": outcome,
        "timeline": [*incident.timeline, entry]})


def incident_view(incident: Incident) -> JSON:
    """The incident as data, with its detection and resolution times worked out."""
    detected = parse_iso_utc(incident.detected_at)
    view = incident.to_json()
    view["timeline"] = sorted(incident.timeline, key=lambda entry: str(entry.get("at")))
    view["time_to_detect_s"] = (detected - parse_iso_utc(incident.failed_at)).total_seconds()
    view["time_to_resolve_s"] = None if incident.resolved_at is None else (
        parse_iso_utc(incident.resolved_at) - detected).total_seconds()
    return view


def incident_start(cluster: Cluster, *, alias: str, severity: str, summary: str,
                   failed_at: datetime | None = None, now: datetime | None = None,
                   run_id: str | None = None, journal: Journal | None = None) -> JSON:
    """Declare an incident on ``alias``; linked to its latest run unless ``run_id`` is given."""
    journal = journal or Journal(cluster)
    moment = now or utc_now()
    _, latest = require_known_alias(cluster, journal, alias)
    incident = new_incident(alias=alias, severity=severity, summary=summary, now=moment,
                            failed_at=failed_at,
                            run_id=run_id or (latest.value.run_id if latest else None))
    journal.ensure_index()
    cluster.put_doc(journal.index, incident_doc_id(incident.incident_id),
                    incident_to_source(incident), create_only=True, refresh=True)
    return {"id": incident.incident_id, "detected_at": incident.detected_at,
            **incident_view(incident)}


def _get_incident(cluster: Cluster, journal: Journal,
                  incident_id: str) -> Versioned[Incident]:
    try:
        body = cluster.get_doc(journal.index, incident_doc_id(incident_id))
    except NotFound:
        body = None
    if body is None:
        raise BadInput(f"no incident {incident_id!r}",
                       hint="list them with `indexshift incident list`")
    return Versioned(incident_from_source(body["_source"]), int(body["_seq_no"]),
                     int(body["_primary_term"]))


def _update_incident(cluster: Cluster, journal: Journal, incident_id: str,
                     change: Callable[[Incident], Incident]) -> Incident:
    for _ in range(CAS_ATTEMPTS):
        current = _get_incident(cluster, journal, incident_id)
        changed = change(current.value)
        try:
            cluster.put_doc(journal.index, incident_doc_id(incident_id),
                            incident_to_source(changed), if_seq_no=current.seq_no,
                            if_primary_term=current.primary_term, refresh=True)
        except Conflict:
            continue  # someone else noted at the same moment: read again, apply again
        return changed
    raise Conflict(f"incident {incident_id} kept changing while we tried to update it",
                   hint="try again")


def incident_note(cluster: Cluster, incident_id: str, text: str, now: datetime | None = None,
                  *, journal: Journal | None = None) -> JSON:
    """Add a line to the incident's timeline."""
    journal = journal or Journal(cluster)
    moment = now or utc_now()
    done = _update_incident(cluster, journal, incident_id,
                            lambda incident: note_incident(incident, text, now=moment))
    return incident_view(done)


def incident_resolve(cluster: Cluster, incident_id: str, *, docs_lost: int,
                     downtime_s: float = 0.0, rollback: bool | None = None,
                     rollback_ok: bool | None = None, summary: str,
                     now: datetime | None = None, journal: Journal | None = None) -> JSON:
    """Close the incident with its outcome (documents lost, downtime, rollback and result)."""
    journal = journal or Journal(cluster)
    moment = now or utc_now()
    done = _update_incident(cluster, journal, incident_id, lambda incident: resolve_incident(
        incident, now=moment, docs_lost=docs_lost, downtime_s=downtime_s, rollback=rollback,
        rollback_ok=rollback_ok, summary=summary))
    return incident_view(done)


def _search_incidents(cluster: Cluster, journal: Journal, *, alias: str | None = None,
                      status: IncidentStatus | None = None, since: datetime | None = None,
                      limit: int = 50) -> list[Incident]:
    filters: list[JSON] = [{"term": {"kind": INCIDENT_KIND}}]
    if alias is not None:
        filters.append({"term": {"alias": alias}})
    if status is not None:
        filters.append({"term": {"status": str(status)}})
    if since is not None:
        filters.append({"range": {"started_at": {"gte": iso_utc(since)}}})
    body: JSON = {"query": {"bool": {"filter": filters}}, "size": limit,
                  "sort": [{"started_at": "desc"}]}
    try:
        result = cluster.search(journal.index, body)
    except NotFound:
        return []  # no journal yet: no incidents
    return [incident_from_source(hit["_source"])
            for hit in result.get("hits", {}).get("hits", [])]


def incident_list(cluster: Cluster, *, alias: str | None = None, status: str | None = None,
                  limit: int = 50, journal: Journal | None = None) -> list[JSON]:
    """Incidents newest first (by detection), of one alias or all, open or resolved or both."""
    if not 1 <= limit <= 10_000:
        raise BadInput(f"limit must be 1..10000, got {limit}")
    wanted = None
    if status is not None:
        try:
            wanted = IncidentStatus(status.strip().upper())
        except ValueError as exc:
            raise BadInput(f"unknown incident status {status!r}",
                           hint="use open or resolved") from exc
    found = _search_incidents(cluster, journal or Journal(cluster), alias=alias,
                              status=wanted, limit=limit)
    return [incident_view(incident) for incident in found]


def incident_show(cluster: Cluster, incident_id: str, *,
                  journal: Journal | None = None) -> JSON:
    return incident_view(_get_incident(cluster, journal or Journal(cluster),
                                       incident_id).value)


# -- success metrics -------------------------------------------------------------------------

TARGET_SUCCESS_RATE_PCT = 99.0
TARGET_MTTD_S = 300.0
TARGET_MTTR_S = 1800.0
TARGET_DOCS_LOST = 0
TARGET_ROLLBACK_RATE_PCT = 100.0
TARGET_DOWNTIME_PCT = 0.1


def rate_pct(successes: int, attempts: int) -> float | None:
    """``successes`` as a percentage of ``attempts``; None when there were none."""
    return None if attempts <= 0 else 100.0 * successes / attempts


def mean(values: Sequence[float]) -> float | None:
    return None if not values else sum(values) / len(values)


def mean_interval_s(pairs: Iterable[tuple[datetime, datetime]]) -> float | None:
    """The mean of ``end - start`` in seconds over the pairs; None when there are none."""
    return mean([(end - start).total_seconds() for start, end in pairs])


def downtime_pct(downtime_s: float, period_s: float | None) -> float | None:
    if period_s is None or period_s <= 0:
        return None
    return 100.0 * downtime_s / period_s


def rollback_outcomes(runs: Sequence[RunRecord], incidents: Sequence[Incident]) -> list[bool]:
    """One True/False per rollback attempt.

    An incident that says whether its rollback worked is the operator's verdict; a run that
    ended ROLLED_BACK counts as a successful rollback unless an incident linked to it already
    gave one (so one rollback is never counted twice).
    """
    outcomes: list[bool] = []
    judged_runs: set[str] = set()
    for incident in incidents:
        resolution = incident.resolution or {}
        if resolution.get("rollback") and resolution.get("rollback_ok") is not None:
            outcomes.append(bool(resolution["rollback_ok"]))
            if incident.run_id:
                judged_runs.add(incident.run_id)
    outcomes.extend(True for run in runs
                    if run.status == RunStatus.ROLLED_BACK and run.run_id not in judged_runs)
    return outcomes


def _metric(value: float | None, unit: str, target: str, met: bool | None,
            basis: str, **extra: Any) -> JSON:
    return {"value": value, "unit": unit,
            "target": target, "met": met, "basis": basis, **extra}


def _within(moment: datetime, since: datetime | None, until: datetime) -> bool:
    return (since is None or moment >= since) and moment <= until


def compute_success_metrics(runs: Sequence[RunRecord], incidents: Sequence[Incident], *,
                            since: datetime | None, now: datetime) -> JSON:
    """The runbook's success metrics over runs started and incidents detected in the period.

    ``met`` is None for a metric without data. The period for downtime runs from ``since``
    (or the earliest run start or failure on record) to ``now``.
    """
    until = _as_utc(now)
    start = _as_utc(since) if since is not None else None
    runs = [r for r in runs if _within(parse_iso_utc(r.started_at), start, until)]
    incidents = [i for i in incidents if _within(parse_iso_utc(i.detected_at), start, until)]
    resolved = [i for i in incidents if i.status == IncidentStatus.RESOLVED and i.resolution]

    completed = sum(1 for r in runs if r.status == RunStatus.COMPLETED)
    finished = [r for r in runs if r.status in FINISHED]
    success = rate_pct(completed, len(finished))

    mttd = mean_interval_s((parse_iso_utc(i.failed_at), parse_iso_utc(i.detected_at))
                           for i in incidents)
    mttr = mean_interval_s((parse_iso_utc(i.detected_at), parse_iso_utc(str(i.resolved_at)))
                           for i in resolved)
    lost = [int((i.resolution or {}).get("docs_lost", 0)) for i in resolved]
    outcomes = rollback_outcomes(runs, resolved)
    rollback = rate_pct(sum(outcomes), len(outcomes))

    period_start = start
    if period_start is None:
        moments = [parse_iso_utc(r.started_at) for r in runs] + \
                  [parse_iso_utc(i.failed_at) for i in incidents]
        period_start = min(moments) if moments else None
    period_s = None
    if period_start is not None and (runs or incidents):
        period_s = (until - period_start).total_seconds()
    down_s = sum(float((i.resolution or {}).get("downtime_s", 0.0)) for i in resolved)
    downtime = downtime_pct(down_s, period_s)

    def met(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    return {
        "since": iso_utc(start) if start else None,
        "until": iso_utc(until),
        "period_s": period_s,
        "runs": {"total": len(runs), "completed": completed,
                 "rolled_back": sum(1 for r in runs if r.status == RunStatus.ROLLED_BACK),
                 "failed": sum(1 for r in runs if r.status == RunStatus.FAILED),
                 "unfinished": len(runs) - len(finished)},
        "incidents": {"total": len(incidents), "open": len(incidents) - len(resolved),
                      "resolved": len(resolved)},
        "metrics": {
            "migration_success_rate": _metric(
                success, "%", f"> {TARGET_SUCCESS_RATE_PCT:g} %",
                met(success, lambda v: v > TARGET_SUCCESS_RATE_PCT),
                f"{completed} completed of {len(finished)} finished runs"),
            "mean_time_to_detect": _metric(
                mttd, "s", f"< {TARGET_MTTD_S / 60:g} min",
                met(mttd, lambda v: v < TARGET_MTTD_S),
                f"failure to detection over {len(incidents)} incidents"),
            "mean_time_to_resolve": _metric(
                mttr, "s", f"< {TARGET_MTTR_S / 60:g} min",
                met(mttr, lambda v: v < TARGET_MTTR_S),
                f"detection to resolution over {len(resolved)} resolved incidents"),
            "docs_lost_per_incident": _metric(
                mean(lost), "documents", f"{TARGET_DOCS_LOST} documents",
                None if not lost else sum(lost) == TARGET_DOCS_LOST,
                f"{sum(lost)} documents lost over {len(lost)} resolved incidents",
                total=sum(lost), max=max(lost) if lost else None),
            "rollback_success_rate": _metric(
                rollback, "%", f"{TARGET_ROLLBACK_RATE_PCT:g} %",
                met(rollback, lambda v: v >= TARGET_ROLLBACK_RATE_PCT),
                f"{sum(outcomes)} successful of {len(outcomes)} rollbacks"),
            "unplanned_downtime": _metric(
                downtime, "%", f"< {TARGET_DOWNTIME_PCT:g} %",
                met(downtime, lambda v: v < TARGET_DOWNTIME_PCT),
                f"{down_s:g} s of downtime in {len(resolved)} resolved incidents over "
                + (f"{period_s:.0f} s" if period_s is not None else "no period"),
                downtime_s=down_s),
        },
    }


def success_report(cluster: Cluster, *, since: datetime | None = None,
                   now: datetime | None = None, journal: Journal | None = None) -> JSON:
    """The runbook's success metrics from the journal's runs and incidents."""
    journal = journal or Journal(cluster)
    moment = now or utc_now()
    if since is not None and _as_utc(since) > _as_utc(moment):
        raise BadInput(f"--since {iso_utc(since)} is in the future")
    runs = journal.runs(limit=10_000)
    incidents = _search_incidents(cluster, journal, since=since, limit=10_000)
    return compute_success_metrics(runs, incidents, since=since, now=moment)
