"""The command line: parse arguments, call one verb in ``command``, render the result.

Rich for people, ``--json`` for scripts. Errors print one line on stderr and exit with the
code of the error's class (see ``errors.ExitCode``); no traceback unless ``INDEXSHIFT_DEBUG``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from indexshift import __version__, command, gateway, gateway_client, migrator, sandbox
from indexshift.config import ConnectionConfig, resolve_connection
from indexshift.errors import BadInput, ExitCode, IndexshiftError

app = typer.Typer(
    name="indexshift",
    help="Safe, zero-downtime, recoverable index migrations for OpenSearch and Elasticsearch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sandbox_app = typer.Typer(help="A real local OpenSearch/Elasticsearch on loopback.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
snapshot_app = typer.Typer(help="Backups: emergency snapshot, list, verify, restore aside.",
                           no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
incident_app = typer.Typer(help="The incident timeline, kept in the cluster.",
                           no_args_is_help=True)
app.add_typer(incident_app, name="incident")
gateway_app = typer.Typer(help="The write-ahead gateway in front of a cluster.")
app.add_typer(gateway_app, name="gateway")
events_app = typer.Typer(help="The gateway's log as an immutable event archive.",
                         no_args_is_help=True)
app.add_typer(events_app, name="events")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")


def fails_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn indexshift errors into one line on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            if "url" in kwargs:
                options: dict[str, Any] = {name: kwargs.pop(name) for name in _CONNECTION_OPTIONS}
                kwargs["config"] = connection(**options)
            return func(*args, **kwargs)
        except IndexshiftError as exc:
            if os.environ.get("INDEXSHIFT_DEBUG"):
                raise
            err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    _with_connection_options(func, wrapper)
    return wrapper


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- shared options --------------------------------------------------------------------------

UrlOpt = Annotated[str | None, typer.Option("--url", help="Cluster URL (else INDEXSHIFT_URL, "
                                            "else the running sandbox).")]
UserOpt = Annotated[str | None, typer.Option("--username", "-u", help="Basic-auth user.")]
PasswordOpt = Annotated[str | None, typer.Option(
    "--password", help="Basic-auth password (prefer INDEXSHIFT_PASSWORD).")]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", help="API key (INDEXSHIFT_API_KEY).")]
CaOpt = Annotated[Path | None, typer.Option("--ca-bundle", help="CA bundle for TLS.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure",
                                           help="Skip TLS verification (throwaway clusters).")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Request timeout, seconds.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameOpt = Annotated[str, typer.Option("--name", help="Sandbox name (several can run at once).")]


# Every command that talks to a cluster takes the same connection options. They are declared
# once here and added to those commands' signatures by ``fails_cleanly``, which resolves them
# into the ``config`` parameter the command declares with the CONNECTION default.
CONNECTION: Any = None
_CONNECTION_OPTIONS: dict[str, tuple[Any, Any]] = {
    "url": (UrlOpt, None), "username": (UserOpt, None), "password": (PasswordOpt, None),
    "api_key": (ApiKeyOpt, None), "ca_bundle": (CaOpt, None), "insecure": (InsecureOpt, False),
    "timeout": (TimeoutOpt, None),
}


def _with_connection_options(func: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    signature = inspect.signature(func)
    if "config" not in signature.parameters:
        return
    # Resolved annotations (not the strings of postponed evaluation), so Typer sees the
    # Annotated options of the command's own parameters and of the connection ones alike.
    hints = typing.get_type_hints(func, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in signature.parameters.values() if p.name != "config"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=annotation)
               for name, (annotation, default) in _CONNECTION_OPTIONS.items()]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params, return_annotation=hints.get("return", None))
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}


def connection(url: str | None = None, username: str | None = None,
               password: str | None = None, api_key: str | None = None,
               ca_bundle: Path | None = None, insecure: bool = False,
               timeout: float | None = None) -> ConnectionConfig:
    return resolve_connection(
        url=url, username=username, password=password, api_key=api_key, ca_bundle=ca_bundle,
        insecure=insecure, timeout_s=timeout, sandbox_url=sandbox.running_url,
    )


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


_HEALTH_STYLE = {"green": "green", "yellow": "yellow", "red": "bold red"}


# -- info ------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def info(
    alias: Annotated[str | None, typer.Argument(help="Also show what this alias serves.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Engine, version, health, nodes, disk, indices and aliases of a cluster."""
    report = command.info(config, alias)
    if as_json:
        emit_json(report)
        return
    health = str(report["health"])
    out.print(f"[bold]{report['engine']} {report['version']}[/] at {report['url']} — "
              f"cluster [bold]{report['cluster_name']}[/] is "
              f"[{_HEALTH_STYLE.get(health, 'white')}]{health}[/]")
    disk = report["disk"]
    out.print(f"nodes: {report['nodes']['count']} ({', '.join(report['nodes']['names'])})   "
              f"shards: {report['shards']['active']} active, "
              f"{report['shards']['unassigned']} unassigned")
    out.print(f"disk: {_human_bytes(disk['used_bytes'])} used of "
              f"{_human_bytes(disk['total_bytes'])} ({disk['used_percent']}%)   "
              f"indices: {report['indices']}   aliases: {report['aliases']}")
    if "alias" in report:
        # One block per index rather than a table: field lists are long, terminals narrow.
        for row in report["alias"]["indices"]:
            health = str(row["health"])
            out.print(
                f"alias [bold]{report['alias']['name']}[/] → [bold]{row['index']}[/]"
                f"{' (write index)' if row['is_write_index'] else ''}: "
                f"[{_HEALTH_STYLE.get(health, 'white')}]{health}[/], {row['status']}, "
                f"{row['docs']:,} docs, {_human_bytes(row['size_bytes'])}, "
                f"{row['primaries']} primaries / {row['replicas']} replicas"
            )
            fields = ", ".join(f"{k}: {v}" for k, v in row["fields"].items())
            out.print(f"  fields: {fields}")


# -- sandbox ---------------------------------------------------------------------------------


def _render_sandbox(report: dict[str, Any]) -> None:
    health = report.get("health")
    out.print(f"sandbox [bold]{report['name']}[/]: {report['engine']} {report['version']} at "
              f"[bold]{report['url']}[/] — health "
              f"[{_HEALTH_STYLE.get(str(health), 'white')}]{health or 'unreachable'}[/]")
    for node in report["nodes"]:
        state = "running" if node["running"] else "[red]not running[/]"
        out.print(f"  {node['name']}: pid {node['pid']}, http {node['http_port']}, "
                  f"transport {node['transport_port']}, {state}")
    out.print(f"  data: {report['data_path']}   snapshots (path.repo): {report['snapshot_path']}")


@sandbox_app.command("up")
@fails_cleanly
def sandbox_up(
    engine: Annotated[str, typer.Option("--engine", help="opensearch or elasticsearch.")]
    = "opensearch",
    version: Annotated[str | None, typer.Option("--version", help="Engine version "
                                                "(default: newest known to run here).")] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="How many nodes.")] = 1,
    name: NameOpt = sandbox.DEFAULT_NAME,
    port: Annotated[int, typer.Option("--port", help="First HTTP port; 0 picks free ports.")]
    = sandbox.DEFAULT_HTTP_PORT,
    transport_port: Annotated[int | None, typer.Option("--transport-port",
                                                       help="First transport port.")] = None,
    heap: Annotated[str, typer.Option("--heap", help="JVM heap per node.")] = sandbox.DEFAULT_HEAP,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for yellow.")] = 240.0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch (once) and start a local cluster on loopback; prints its URL."""
    request = sandbox.UpRequest(
        engine=engine,  # type: ignore[arg-type]  # validated by find_release
        version=version, nodes=nodes, name=name, http_port=port,
        transport_port=transport_port, heap=heap, wait_s=wait,
    )
    report = command.sandbox_up(request, progress=lambda msg: err.print(f"[dim]{msg}[/]"))
    if as_json:
        emit_json(report)
        return
    _render_sandbox(report)
    out.print(report["url"])


@sandbox_app.command("down")
@fails_cleanly
def sandbox_down(
    name: NameOpt = sandbox.DEFAULT_NAME,
    wipe: Annotated[bool, typer.Option("--wipe", help="Also delete data and snapshots.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop exactly the processes this sandbox started."""
    report = command.sandbox_down(name, wipe=wipe)
    if as_json:
        emit_json(report)
        return
    if report["stopped"]:
        out.print(f"stopped {', '.join(report['stopped'])} of sandbox {name!r}"
                  + (" and wiped its data" if wipe else ""))
    else:
        out.print(f"sandbox {name!r} was not running" + (" (data wiped)" if wipe else ""))


@sandbox_app.command("status")
@fails_cleanly
def sandbox_status(name: NameOpt = sandbox.DEFAULT_NAME, as_json: JsonOpt = False) -> None:
    """Say what runs: nodes, pids, ports, health. Exit 1 when nothing runs."""
    report = command.sandbox_status(name)
    if as_json:
        emit_json(report)
    elif not report["nodes"]:
        out.print(f"sandbox {name!r} is not running")
    else:
        _render_sandbox(report)
    if not report["running"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@sandbox_app.command("logs")
@fails_cleanly
def sandbox_logs(
    name: NameOpt = sandbox.DEFAULT_NAME,
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The last lines of each node's log."""
    report = command.sandbox_logs(name, node, lines)
    if as_json:
        emit_json(report)
        return
    for entry in report["logs"]:
        out.print(f"[bold]== {entry['node']}: {entry['path']}[/]")
        for line in entry["lines"]:
            out.print(line, markup=False)


@sandbox_app.command("seed")
@fails_cleanly
def sandbox_seed(
    docs: Annotated[int, typer.Option("--docs", help="How many documents.")] = 10_000,
    alias: Annotated[str, typer.Option("--alias", help="Alias to create.")] = "file-index",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same docs).")] = 42,
    corpus: Annotated[Path, typer.Option("--corpus", help="Folder of real files to describe.")]
    = Path("/usr"),
    embedding_dims: Annotated[int, typer.Option("--embedding-dims",
                                                help="Add an embedding of this size.")] = 0,
    shards: Annotated[int, typer.Option("--shards", help="Primary shards.")] = 1,
    replicas: Annotated[int | None, typer.Option("--replicas", help="Replicas "
                                                 "(default 0 on one node, else 1).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Drop a previously seeded "
                                          "alias and its indices first.")] = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Create the runbook's file-index alias over realistic documents built from real files."""
    with Progress(TextColumn("seeding"), BarColumn(), TextColumn("{task.completed:,}/"
                  "{task.total:,} docs"), TimeRemainingColumn(), console=err,
                  disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("seed", total=docs)
        report = command.sandbox_seed(
            config, alias=alias, docs=docs, seed=seed, corpus=corpus,
            embedding_dims=embedding_dims, shards=shards, replicas=replicas, replace=replace,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    if as_json:
        emit_json(report)
        return
    out.print(f"seeded {report['docs']:,} documents into {report['index']} "
              f"(alias [bold]{report['alias']}[/]) in {report['seconds']}s — "
              f"[bold]{report['docs_per_second']:,} docs/s[/]")


# -- migrations ------------------------------------------------------------------------------

DirOpt = Annotated[Path, typer.Option("--dir", help="Migrations directory.")]
AliasArg = Annotated[str, typer.Argument(help="The alias the application uses.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before the switch.")]
OnlyAliasOpt = Annotated[str | None, typer.Option("--alias", help="Only this alias.")]
ToOpt = Annotated[int | None, typer.Option("--to", help="Stop at this version.")]


class DocsPerSecond(ProgressColumn):
    """The copy's speed as Rich measures it over recent updates."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:,.0f} docs/s" if speed else "– docs/s")


class RunRenderer:
    """Shows a run's events to a person: phases as lines, the copy as a live progress bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        if kind == "progress":
            self._progress(data["progress"])
            return
        self._close_bar()
        if kind == "phase":
            err.print(f"[bold cyan]{data['phase']}[/] {_phase_note(data.get('details') or {})}")
        elif kind == "preflight":
            for check in data["report"]["checks"]:
                mark = "[green]ok[/]" if check["passed"] else "[red]FAILED[/]"
                err.print(f"  {mark} {check['name']}: {check['detail']}", markup=True)
        elif kind == "validation":
            for check in data["report"]["checks"]:
                mark = "[green]ok[/]" if check["passed"] else "[red]FAILED[/]"
                err.print(f"  {mark} {check['name']}: {check['detail']}")
        elif kind == "cutover":
            paused = (f"writes held by the gateway {data['hold_ms']} ms" if "hold_ms" in data
                      else f"writes blocked {data['block_ms']} ms")
            err.print(f"  switched in one call: {paused}, "
                      f"alias call {data['switch_ms']} ms, {data['docs']:,} docs, final "
                      f"catch-up copied {data['copied']} and deleted {data['deleted']}")
        elif kind == "monitor":
            sample = data["sample"]
            err.print(f"  [dim]monitor {sample['at_s']:.0f}s: {sample['searches']} searches, "
                      f"{sample['errors']} errors, p95 {sample['p95_ms'] or 0:.1f} ms, "
                      f"{sample['doc_count']:,} docs[/]")
        elif kind in ("halted", "rolled_back", "postponed", "reattach", "resume",
                      "copy_missing", "completed"):
            err.print(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in data.items()
                                                 if k not in ("alias",)))

    def _progress(self, progress: dict[str, Any]) -> None:
        total = progress.get("total") or None
        done = (progress.get("created", 0) + progress.get("updated", 0)
                + progress.get("version_conflicts", 0))
        if self.bar is None:
            self.bar = Progress(TextColumn("copying"), BarColumn(),
                                TextColumn("{task.completed:,}/{task.total:,} docs"),
                                DocsPerSecond(),
                                TimeRemainingColumn(), console=err,
                                disable=not err.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task("copy", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def close(self) -> None:
        self._close_bar()


def _phase_note(details: dict[str, Any]) -> str:
    keep = {k: v for k, v in details.items() if k not in ("validation", "progress")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def _run_options(yes: bool, renderer: RunRenderer, **kwargs: Any) -> migrator.RunOptions:
    return migrator.RunOptions(
        yes=yes, on_event=renderer,
        confirm=lambda question: typer.confirm(question, default=False, err=True),
        **kwargs,
    )


def _render_run(report: dict[str, Any]) -> None:
    phase, status = report.get("phase"), report.get("status")
    out.print(f"run {report.get('run_id')} of [bold]{report.get('alias')}[/]: "
              f"{phase} ({status}) — {report.get('blue')} → {report.get('green')}"
              + (f"\n  {report['error']}" if report.get("error") else ""))


@app.command()
@fails_cleanly
def new(
    name: Annotated[str, typer.Argument(help="What the migration does, e.g. file_type_keyword.")],
    alias: Annotated[str, typer.Option("--alias", help="The alias it migrates.")] = "file-index",
    directory: DirOpt = Path("migrations"),
) -> None:
    """Scaffold the next migration file."""
    report = command.new_migration(directory, name, alias)
    out.print(f"created {report['path']}")


@app.command()
@fails_cleanly
def plan(
    directory: DirOpt = Path("migrations"),
    alias: OnlyAliasOpt = None,
    to: ToOpt = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Print every step `migrate` would take now; changes nothing."""
    report = command.plan(config, directory, alias, to)
    if as_json:
        emit_json(report)
        return
    for entry in report["aliases"]:
        out.print(f"[bold]{entry['alias']}[/] serves {entry['serving']} "
                  f"({entry['docs']:,} docs)")
        if entry["unfinished_run"]:
            out.print(f"  [yellow]unfinished run {entry['unfinished_run']}: resume or roll "
                      "it back first[/]")
        if not entry["migrations"]:
            out.print("  up to date: nothing to do")
        for migration in entry["migrations"]:
            out.print(f"  v{migration['version']} {migration['name']} → {migration['green']}")
            for step in migration["steps"]:
                out.print(f"    {step['phase']:<16} {step['action']}")


@app.command()
@fails_cleanly
def migrate(
    directory: DirOpt = Path("migrations"),
    alias: OnlyAliasOpt = None,
    to: ToOpt = None,
    yes: YesOpt = False,
    postpone_cutover: Annotated[bool, typer.Option(
        "--postpone-cutover", help="Stop after validation; switch with `cutover`.")] = False,
    break_lock: Annotated[bool, typer.Option(
        "--break-lock", help="Take over a lock whose holder is gone.")] = False,
    repository: Annotated[str | None, typer.Option(
        "--repository", help="Snapshot repository for the backup.")] = None,
    hooks_dir: Annotated[Path | None, typer.Option("--hooks", help="Hooks directory.")] = None,
    gateway_url: Annotated[str | None, typer.Option(
        "--gateway", help="The write-ahead gateway the application writes through: its log "
                          "replaces the write block at the switch.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Run pending migrations: backup, copy, validate, switch, monitor."""
    renderer = RunRenderer(quiet=as_json)
    try:
        report = command.migrate(config, directory, _run_options(
            yes, renderer, postpone_cutover=postpone_cutover, break_lock=break_lock,
            repository=repository, hooks_dir=hooks_dir, gateway_url=gateway_url),
            alias=alias, to_version=to)
    finally:
        renderer.close()
    if as_json:
        emit_json(report)
        return
    if not report["runs"]:
        out.print("up to date: nothing to migrate")
    for run in report["runs"]:
        _render_run(run)


@app.command()
@fails_cleanly
def resume(
    alias: AliasArg, directory: DirOpt = Path("migrations"), yes: YesOpt = False,
    break_lock: Annotated[bool, typer.Option("--break-lock")] = False,
    hooks_dir: Annotated[Path | None, typer.Option("--hooks", help="Hooks directory.")] = None,
    gateway_url: Annotated[str | None, typer.Option(
        "--gateway", help="The write-ahead gateway (default: the one the run recorded).")
    ] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Continue the alias's unfinished run from its last checkpoint."""
    renderer = RunRenderer(quiet=as_json)
    try:
        report = command.resume(config, directory, alias, _run_options(
            yes, renderer, break_lock=break_lock, hooks_dir=hooks_dir,
            gateway_url=gateway_url))
    finally:
        renderer.close()
    emit_json(report) if as_json else _render_run(report)


@app.command()
@fails_cleanly
def cutover(
    alias: AliasArg, directory: DirOpt = Path("migrations"), yes: YesOpt = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Switch the alias of a run that waits after validation (--postpone-cutover)."""
    renderer = RunRenderer(quiet=as_json)
    try:
        report = command.cutover_now(config, directory, alias, _run_options(yes, renderer))
    finally:
        renderer.close()
    emit_json(report) if as_json else _render_run(report)


@app.command()
@fails_cleanly
def status(
    alias: AliasArg,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Where the alias's latest run stands (phase, progress), from any shell."""
    report = command.status(config, alias)
    if as_json:
        emit_json(report)
        return
    _render_run(report)
    progress = report.get("progress") or {}
    out.print(f"  progress: {progress.get('percent', 0)}% of {progress.get('total', 0):,} docs;"
              f" serving: {', '.join(report['serving'])}")


@app.command()
@fails_cleanly
def throttle(
    alias: AliasArg,
    rps: Annotated[float, typer.Option("--rps", help="Documents per second; 0 = unlimited.")],
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Change the speed of a running copy."""
    report = command.throttle(config, alias, rps)
    emit_json(report) if as_json else out.print(
        f"copy task {report['task_id']} now at {rps:g} docs/s" if rps > 0 else "unthrottled")


@app.command()
@fails_cleanly
def rollback(
    alias: AliasArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
    catch_up: Annotated[bool, typer.Option(
        "--catch-up", help="Copy writes made since the switch back first.")] = False,
    yes: YesOpt = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Point the alias back at the old index in one atomic call."""
    if not dry_run and not yes:
        preview = command.rollback(config, alias, dry_run=True, catch_up=catch_up)
        err.print(f"plan: {preview['plan']}")
        if not typer.confirm("roll back?", default=False, err=True):
            raise typer.Exit(int(ExitCode.CHECK_FAILED))
    report = command.rollback(config, alias, dry_run=dry_run, catch_up=catch_up)
    if as_json:
        emit_json(report)
        return
    out.print(f"{'plan' if dry_run else 'done'}: {report['plan']}")


@app.command()
@fails_cleanly
def validate(
    alias: AliasArg, directory: DirOpt = Path("migrations"),
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Run the validation suite of the alias's latest run alone. Exit 1 when it fails."""
    report = command.validate(config, directory, alias)
    if as_json:
        emit_json(report)
    else:
        for check in report["checks"]:
            mark = "[green]ok[/]" if check["passed"] else "[red]FAILED[/]"
            out.print(f"{mark} {check['name']}: {check['detail']}")
    if not report["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command()
@fails_cleanly
def diff(
    index_a: Annotated[str, typer.Argument(help="Reference index (or alias).")],
    index_b: Annotated[str, typer.Argument(help="Index compared with it.")],
    ids_only: Annotated[bool, typer.Option("--ids-only", help="Compare ids, not content.")]
    = False,
    max_ids: Annotated[int, typer.Option("--max-ids", help="Ids listed per kind.")] = 1000,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Exact document difference: missing in B, extra in B, changed. Exit 1 when they differ."""
    report = command.diff(config, index_a, index_b, ids_only=ids_only, max_ids=max_ids)
    if as_json:
        emit_json(report)
    else:
        out.print(f"{index_a}: {report['count_a']:,} docs, {index_b}: {report['count_b']:,} docs"
                  f" — missing {report['missing_total']}, extra {report['extra_total']}, "
                  f"changed {report['changed_total']} ({report['seconds']}s)")
        for kind in ("missing", "extra", "changed"):
            for doc_id in report[kind][:20]:
                out.print(f"  {kind}: {doc_id}", markup=False)
    if not report["equal"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command()
@fails_cleanly
def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    snapshots_expire_days: Annotated[float | None, typer.Option(
        "--snapshots-expire-days", help="Also prune indexshift's backups older than this.")]
    = None,
    min_count: Annotated[int, typer.Option("--min-count", help="Backups always kept.")] = 3,
    max_count: Annotated[int, typer.Option("--max-count", help="Backups kept at most.")] = 10,
    repository: Annotated[str | None, typer.Option("--repository")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Retention: old indices read-only after N days, deleted after M; never an aliased one."""
    report = command.cleanup(config, dry_run=dry_run, repository=repository,
                             snapshot_expire_days=snapshots_expire_days,
                             snapshot_min_count=min_count, snapshot_max_count=max_count)
    if as_json:
        emit_json(report)
        return
    verb = "would" if dry_run else "did"
    for step in report["indices"]:
        out.print(f"{step['index']} ({step['alias']}): {step['action']} — {step['reason']}")
    for name in report["snapshots_deleted"]:
        out.print(f"{verb} delete snapshot {name}")
    if not report["indices"] and not report["snapshots_deleted"]:
        out.print("nothing to clean up")


RepositoryOpt = Annotated[str | None, typer.Option(
    "--repository", help="Snapshot repository (default: the only one registered).")]


def _snapshot_line(snapshot: dict[str, Any]) -> str:
    shards = snapshot["shards"]
    return (f"{snapshot['repository']}/{snapshot['name']}: {snapshot['state']}, "
            f"{shards['successful']}/{shards['total']} shards, {len(snapshot['indices'])} "
            f"index(es), started {snapshot['start_time']}")


@snapshot_app.command("emergency")
@fails_cleanly
def snapshot_emergency(
    repository: RepositoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Snapshot every index and the cluster state now, even if some shards are broken."""
    report = command.snapshot_emergency(config, repository=repository, dry_run=dry_run)
    if as_json:
        emit_json(report)
    elif dry_run:
        out.print(f"plan: {report['plan']}")
    else:
        out.print(_snapshot_line(report["snapshot"]), markup=False)
    if not dry_run and not report["succeeded"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@snapshot_app.command("list")
@fails_cleanly
def snapshot_list(
    repository: RepositoryOpt = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Every snapshot of every registered repository, newest first."""
    report = command.snapshot_list(config, repository=repository)
    if as_json:
        emit_json(report)
        return
    for snapshot in report["snapshots"]:
        out.print(_snapshot_line(snapshot), markup=False)
    if not report["snapshots"]:
        out.print(f"no snapshots in {', '.join(report['repositories']) or 'any repository'}")


@snapshot_app.command("verify")
@fails_cleanly
def snapshot_verify(
    snapshot: Annotated[str, typer.Argument(help="Snapshot name.")],
    index: Annotated[str | None, typer.Option("--index", help="Only this index.")] = None,
    expected_count: Annotated[int | None, typer.Option(
        "--expected-count", help="Documents the index must hold.")] = None,
    repository: RepositoryOpt = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Prove a snapshot is a complete backup: state, shards, a restore aside and its count."""
    report = command.snapshot_verify(config, snapshot, index=index, repository=repository,
                                     expected_count=expected_count)
    if as_json:
        emit_json(report)
    else:
        for verdict in report["indices"]:
            for check in verdict["checks"]:
                mark = "[green]ok[/]" if check["passed"] else "[red]FAILED[/]"
                out.print(f"{mark} {verdict['index']}: {check['name']}: {check['detail']}")
    if not report["passed"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@snapshot_app.command("restore")
@fails_cleanly
def snapshot_restore(
    snapshot: Annotated[str, typer.Argument(help="Snapshot name.")],
    index: Annotated[str, typer.Argument(help="Index in the snapshot.")],
    new_name: Annotated[str, typer.Option("--as", help="New index name (must not exist).")],
    repository: RepositoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Restore one index under a new name. Never over an existing index; no alias moves."""
    report = command.snapshot_restore(config, snapshot, index, new_name,
                                      repository=repository, dry_run=dry_run)
    if as_json:
        emit_json(report)
    elif dry_run:
        out.print(f"plan: {report['plan']}")
    else:
        out.print(f"restored {index} as {report['index']}: {report['docs']:,} docs "
                  f"in {report['seconds']}s")


def _moment(text: str | None, option: str) -> datetime | None:
    """An ISO-8601 time from the command line; without a zone it is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{option} {text!r} is not a time",
                       hint="use ISO-8601, e.g. 2026-11-26T03:12:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
@fails_cleanly
def evidence(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to put the bundle in.")]
    = Path("."),
    alias: Annotated[str | None, typer.Option("--alias", help="Focus mappings and settings "
                                              "on this alias's indices.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Capture indices, aliases, health, tasks, snapshots, mappings, the journal and logs."""
    report = command.evidence(config, out_dir, alias=alias)
    if as_json:
        emit_json(report)
    else:
        out.print(f"evidence in {report['path']} ({len(report['files'])} files, "
                      "owner-only; credentials redacted)")
        for problem in report["errors"]:
            err.print(f"could not capture: {problem}", markup=False)
    if report["errors"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


@app.command()
@fails_cleanly
def halt(
    alias: AliasArg,
    freeze_writes: Annotated[bool, typer.Option(
        "--freeze-writes", help="Also block writes on the index the alias serves.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the halt.")]
    = "halted by operator",
    release: Annotated[bool, typer.Option("--release", help="Lift an operator's halt.")]
    = False,
    unfreeze_writes: Annotated[bool, typer.Option(
        "--unfreeze-writes", help="With --release: lift the write block too.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Stop every indexshift task on the alias and open its breaker so no run advances."""
    report = command.halt(config, alias, freeze_writes=freeze_writes, reason=reason,
                          dry_run=dry_run, release=release, unfreeze_writes=unfreeze_writes)
    if as_json:
        emit_json(report)
    else:
        _render_halt(report, dry_run=dry_run, release=release)
    if report.get("errors"):
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _render_halt(report: dict[str, Any], *, dry_run: bool, release: bool) -> None:
    verb = "would" if dry_run else "did"
    if release:
        out.print(f"{verb} close the breaker of run {report['close_breaker'] or '-'}; "
                  f"unblock writes on {', '.join(report['unblock_writes']) or 'nothing'}")
        return
    run = report.get("run") or {}
    out.print(f"{verb} open the breaker of run {run.get('run_id', '-')}"
              if report["open_breaker"] else "no run to stop")
    # A plan lists what it would do; a finished halt, what it did and how that went.
    for task in report["cancel_tasks"]:
        state = "" if dry_run else (" (stopped)" if task.get("stopped") else " (STILL RUNNING)")
        out.print(f"{verb} cancel task {task['task_id']} → {task.get('destination')}{state}",
                  markup=False)
    for index in report["block_writes"]:
        out.print(f"{verb} block writes on {index}")
    for note in report.get("notes", []):
        out.print(f"note: {note}", markup=False)
    for problem in report.get("errors", []):
        err.print(f"error: {problem}", markup=False)


def _render_incident(view: dict[str, Any]) -> None:
    out.print(f"{view['incident_id']} [{view['severity']}] {view['alias']}: "
                  f"{view['status']} — {view['summary']}", markup=False)
    for entry in view.get("timeline", []):
        out.print(f"  {entry.get('at')}  {entry.get('kind', '')}: {entry.get('text', '')}",
                      markup=False)


@incident_app.command("start")
@fails_cleanly
def incident_start(
    alias: AliasArg,
    summary: Annotated[str, typer.Option("--summary", help="What is wrong, in a line.")],
    severity: Annotated[str, typer.Option("--severity", help="P0, P1 or P2.")] = "P1",
    failed_at: Annotated[str | None, typer.Option(
        "--failed-at", help="When the failure began (ISO-8601; default now).")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Open an incident: its timeline starts now and lives in the cluster."""
    view = command.incident_start(config, alias=alias, severity=severity, summary=summary,
                                  failed_at=_moment(failed_at, "--failed-at"))
    emit_json(view) if as_json else _render_incident(view)


@incident_app.command("note")
@fails_cleanly
def incident_note(
    incident_id: Annotated[str, typer.Argument(help="Incident id.")],
    text: Annotated[str, typer.Argument(help="What happened or was decided.")],
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Add a line to an incident's timeline."""
    view = command.incident_note(config, incident_id, text)
    emit_json(view) if as_json else _render_incident(view)


@incident_app.command("resolve")
@fails_cleanly
def incident_resolve(
    incident_id: Annotated[str, typer.Argument(help="Incident id.")],
    docs_lost: Annotated[int, typer.Option("--docs-lost", help="Documents lost for good.")],
    summary: Annotated[str, typer.Option("--summary", help="How it ended.")] = "resolved",
    downtime_s: Annotated[float, typer.Option("--downtime-s",
                                              help="Unplanned downtime, seconds.")] = 0.0,
    rollback: Annotated[bool | None, typer.Option(
        "--rollback/--no-rollback", help="Whether a rollback was attempted.")] = None,
    rollback_ok: Annotated[bool | None, typer.Option(
        "--rollback-ok/--rollback-failed", help="Whether that rollback worked.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Close an incident with what it cost (feeds `indexshift report`)."""
    view = command.incident_resolve(config, incident_id, docs_lost=docs_lost,
                                    downtime_s=downtime_s, rollback=rollback,
                                    rollback_ok=rollback_ok, summary=summary)
    emit_json(view) if as_json else _render_incident(view)


@incident_app.command("list")
@fails_cleanly
def incident_list(
    alias: Annotated[str | None, typer.Option("--alias")] = None,
    status: Annotated[str | None, typer.Option("--status", help="OPEN or RESOLVED.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Incidents, newest first."""
    report = command.incident_list(config, alias=alias, status=status)
    if as_json:
        emit_json(report)
        return
    for view in report["incidents"]:
        out.print(f"{view['incident_id']} [{view['severity']}] {view['alias']}: "
                      f"{view['status']} — {view['summary']}", markup=False)
    if not report["incidents"]:
        out.print("no incidents")


@incident_app.command("show")
@fails_cleanly
def incident_show(
    incident_id: Annotated[str, typer.Argument(help="Incident id.")],
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """One incident and its timeline."""
    view = command.incident_show(config, incident_id)
    emit_json(view) if as_json else _render_incident(view)


@app.command()
@fails_cleanly
def report(
    since: Annotated[str | None, typer.Option(
        "--since", help="Start of the period (ISO-8601; default: the first record).")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """The runbook's success metrics: success rate, MTTD, MTTR, docs lost, rollbacks, downtime."""
    data = command.report(config, since=_moment(since, "--since"))
    if as_json:
        emit_json(data)
        return
    for name, metric in data["metrics"].items():
        value = ("no data" if metric["value"] is None
                 else f"{metric['value']:.4g} {metric['unit']}")
        mark = {True: "[green]met[/]", False: "[red]MISSED[/]", None: "[dim]-[/]"}[metric["met"]]
        out.print(f"{mark} {name.replace('_', ' ')}: {value} (target {metric['target']}; "
                      f"{metric['basis']})")


BackupOpt = Annotated[str | None, typer.Option(
    "--backup", help="The backup to compare with and recover from: a snapshot ([repo:]name) "
                     "or an index (default: the newest SUCCESS snapshot holding the alias's "
                     "current or a previous versioned index).")]
_RISK_STYLE = {"low": "green", "medium": "yellow", "high": "dark_orange", "critical": "bold red"}


def _render_assessment(report: dict[str, Any]) -> None:
    recommendation = report["recommendation"]
    level = report["integrity_level"]
    out.print(Text.assemble(
        (f"{report['state']}", "bold"), " — risk ",
        (report["risk"], _RISK_STYLE.get(report["risk"], "")),
        f" — integrity level {level if level is not None else 'unknown (no backup)'}",
        " — recommended: ", (recommendation["method"], "bold")))
    out.print(f"why: {recommendation['reason']}", markup=False)
    out.print(f"state: {report['action']}", markup=False)
    counts = report["counts"]
    out.print(f"serving: {', '.join(report['serving']) or 'nothing'}; docs "
              f"{_count(counts['current'])}, backup {_count(counts['backup'])}, "
              f"missing {_count(counts['missing'])}, extra {_count(counts['extra'])}, "
              f"changed {_count(counts['changed'])}", markup=False)
    backup = report["backup"]
    out.print("backup: " + (f"{backup['kind']} {backup['name']} ({backup['state']}, "
                            f"taken {backup['taken_at']})" if backup else "none found"),
              markup=False)
    for step in report["decision_path"]:
        out.print(f"  {step['question']} → {step['answer']}", markup=False)


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


@app.command()
@fails_cleanly
def assess(
    alias: AliasArg,
    backup: BackupOpt = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Migrations directory: check mappings against its spec.")] = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Where a migration stands, whether data was lost, and the safest way back.

    Reads only (a snapshot backup is restored aside for the comparison and dropped again).
    Exit 0 when nothing needs doing, 1 when the recommendation is an action.
    """
    report = command.assess(config, alias, backup=backup, directory=directory)
    if as_json:
        emit_json(report)
    else:
        _render_assessment(report)
    if report["recommendation"]["method"] not in ("NO_ACTION", "NO_ROLLBACK"):
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _render_recovery_plan(plan: dict[str, Any]) -> None:
    out.print(Text.assemble(("plan: ", "bold"), (plan["method"], "bold"), f" on {plan['alias']}"
                            f" — {plan['summary']}"))
    for number, step in enumerate(plan["steps"], 1):
        out.print(f"  {number}. {step['description']}", markup=False)
        for pre in step["preconditions"]:
            out.print(f"     requires: {pre['description']}", markup=False)
    for note in plan["notes"]:
        out.print(f"  note: {note}", markup=False)


@app.command()
@fails_cleanly
def recover(
    alias: AliasArg,
    method: Annotated[str | None, typer.Option(
        "--method", help="SELECTIVE_REINDEX, FULL_RESTORE, EMERGENCY_RESTORE, ROLLBACK or "
                         "COMPLETE_SWITCH (default: what assess recommends).")] = None,
    backup: BackupOpt = None,
    include_changed: Annotated[bool, typer.Option(
        "--include-changed", help="Selective copy: also overwrite documents whose content "
                                  "differs from the backup.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Carry out the plan without asking.")]
    = False,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Carry out a recovery: plan first, then execute, then assess again.

    Exit 0 when the alias ends at integrity level 1 with nothing missing (or for a dry run),
    1 otherwise.
    """
    def confirm(plan: dict[str, Any]) -> bool:
        if not as_json:
            _render_recovery_plan(plan)
        if yes:
            return True
        return typer.confirm("carry out this plan?", default=False, err=True)

    progress = _quiet_progress if as_json else (lambda line: err.print(line, markup=False))
    report = command.recover(config, alias, method=method, backup=backup, dry_run=dry_run,
                             include_changed=include_changed, confirm=confirm,
                             progress=progress)
    if as_json:
        emit_json(report)
    else:
        if dry_run or report["plan"]["empty"]:
            _render_recovery_plan(report["plan"])
        result, after = report["result"], report["after"]
        if result is not None:
            out.print(f"done in {result['total_ms'] / 1000:.1f}s; the alias serves "
                      f"{', '.join(result['serving'])}", markup=False)
        if after is not None:
            out.print("after: ", end="")
            _render_assessment(after)
    if dry_run:
        return
    if not report["confirmed"] and not report["plan"]["empty"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
    if not report["recovered"]:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _quiet_progress(_: str) -> None:
    return None


GatewayUrlOpt = Annotated[str, typer.Option("--gateway", help="The running gateway's URL.")]


@gateway_app.callback(invoke_without_command=True)
@fails_cleanly
def gateway_serve(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", help="host:port to serve on.")]
    = "127.0.0.1:9201",
    upstream: Annotated[str | None, typer.Option("--upstream", help="The cluster's URL.")]
    = None,
    wal: Annotated[str | None, typer.Option(
        "--wal", help="Write-ahead log: a folder, or a postgresql://user@host:port/db URL "
                      "(one log shared by every gateway given it).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="With a postgresql:// --wal: this gateway's own state folder (its "
                            "mode); default /var/lib/indexshift/gateway-HOST_PORT (root) or "
                            "~/.local/state/indexshift/...")] = None,
    on_wal_failure: Annotated[str, typer.Option(
        "--on-wal-failure", help="refuse (default): a write the log cannot take is refused; "
                                 "forward: pass it on unlogged.")] = "refuse",
    fallback_index: Annotated[str | None, typer.Option(
        "--fallback-index", help="In read-only mode, serve reads from this index.")] = None,
    fallback_for: Annotated[str | None, typer.Option(
        "--fallback-for", help="Only reads of this alias or index use the fallback.")] = None,
    write_hold: Annotated[float, typer.Option(
        "--write-hold", help="Seconds a write waits for a failing upstream before 503.")] = 5.0,
    insecure: InsecureOpt = False,
    replay_batch_docs: Annotated[int, typer.Option("--replay-batch-docs")] = 1000,
    replay_concurrency: Annotated[int, typer.Option("--replay-concurrency")] = 2,
) -> None:
    """Serve: every write is logged durably before it is forwarded; reads pass through.

    Replay credentials come from INDEXSHIFT_GATEWAY_REPLAY_AUTHORIZATION (an Authorization
    header value); they are never written to the log.
    """
    if ctx.invoked_subcommand is not None:
        return
    if upstream is None or wal is None:
        raise BadInput("the gateway needs --upstream URL and --wal DIR",
                       hint="e.g. indexshift gateway --upstream http://127.0.0.1:9200 "
                            "--wal /var/lib/indexshift/wal")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gateway.serve(listen, upstream, wal, state_dir=state_dir,
                  on_wal_failure=cast(gateway.WalFailurePolicy, on_wal_failure),
                  fallback_index=fallback_index, fallback_for=fallback_for,
                  write_hold_s=write_hold, verify_tls=not insecure,
                  replay_batch_docs=replay_batch_docs, replay_concurrency=replay_concurrency,
                  replay_authorization=os.environ.get("INDEXSHIFT_GATEWAY_REPLAY_AUTHORIZATION"),
                  announce=lambda url: print(f"listening on {url}", flush=True))


@gateway_app.command("mode")
@fails_cleanly
def gateway_mode(
    mode: Annotated[str, typer.Argument(help="read-only (writes queued, 202) or normal.")],
    gateway_url: GatewayUrlOpt = "http://127.0.0.1:9201",
) -> None:
    """Switch the gateway between normal and read-only (emergency) mode."""
    emit_json(gateway_client.set_mode(gateway_url, mode))


@gateway_app.command("status")
@fails_cleanly
def gateway_status(gateway_url: GatewayUrlOpt = "http://127.0.0.1:9201") -> None:
    """The gateway's mode, log positions, queue and upstream state, as JSON."""
    emit_json(gateway_client.gateway_status(gateway_url))


@gateway_app.command("rollout")
@fails_cleanly
def gateway_rollout(
    alias: AliasArg,
    blue: Annotated[str | None, typer.Option("--blue", help="The index serving now.")] = None,
    green: Annotated[str | None, typer.Option("--green", help="The new index.")] = None,
    share: Annotated[float | None, typer.Option(
        "--share", help="Percent of the alias's reads sent to green (0-100).")] = None,
    steps: Annotated[str | None, typer.Option(
        "--steps", help="Shares to climb through while green is healthy, e.g. 1,10,100.")]
    = None,
    step_seconds: Annotated[float | None, typer.Option(
        "--step-seconds", help="Seconds of healthy reads on one step before the next.")]
    = None,
    max_error_rate_delta: Annotated[float | None, typer.Option(
        "--max-error-rate-delta", help="Roll back when green's error rate exceeds blue's by "
                                       "more than this (0-1; default 0.02).")] = None,
    max_p95_ratio: Annotated[float | None, typer.Option(
        "--max-p95-ratio", help="Roll back when green's p95 is more than this times blue's "
                                "(default 2).")] = None,
    min_samples: Annotated[int | None, typer.Option(
        "--min-samples", help="Green reads in the window before judging (default 50).")]
    = None,
    window: Annotated[float | None, typer.Option(
        "--window", help="Sliding window, seconds (default 60).")] = None,
    stop: Annotated[bool, typer.Option(
        "--stop", help="End the rollout: reads reach the alias again.")] = False,
    gateway_url: GatewayUrlOpt = "http://127.0.0.1:9201",
) -> None:
    """Send a share of the alias's reads to green, the rest to blue; back to blue when green
    errs or slows down. Without --blue/--green/--share: show the rollout."""
    if stop:
        emit_json(gateway_client.stop_rollout(gateway_url, alias))
        return
    if blue is None and green is None and share is None and steps is None:
        emit_json(gateway_client.rollout_status(gateway_url, alias))
        return
    if blue is None or green is None:
        raise BadInput("a rollout needs --blue and --green",
                       hint=f"e.g. indexshift gateway rollout {alias} --blue INDEX --green "
                            f"INDEX --share 1")
    thresholds = {name: value for name, value in (
        ("max_error_rate_delta", max_error_rate_delta), ("max_p95_ratio", max_p95_ratio),
        ("min_samples", min_samples), ("window_s", window)) if value is not None}
    emit_json(gateway_client.start_rollout(gateway_url, alias, blue, green, share,
                                           steps=steps or (), step_seconds=step_seconds,
                                           thresholds=thresholds))


@events_app.command("archive")
@fails_cleanly
def events_archive(
    wal: Annotated[Path, typer.Option("--wal", help="The gateway's log folder.")],
    to: Annotated[Path, typer.Option("--to", help="The archive folder.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy every closed log segment into the archive, read-only, listed with its SHA-256."""
    report = command.events_archive(wal, to)
    if as_json:
        emit_json(report)
        return
    out.print(f"archived {len(report['archived'])} segment(s), "
              f"{len(report['already_archived'])} already there; "
              f"{report['segments_in_archive']} in {report['archive_dir']}")


@app.command()
@fails_cleanly
def rebuild(
    alias: AliasArg,
    from_events: Annotated[list[Path], typer.Option(
        "--from-events", help="Archive and/or live log folder (repeat for both).")],
    until: Annotated[str | None, typer.Option(
        "--until", help="Apply events up to this time (ISO-8601, inclusive).")] = None,
    target: Annotated[str | None, typer.Option(
        "--as", help="Name of the new index (default <alias>-rebuilt-<time>).")] = None,
    mappings_from: Annotated[str | None, typer.Option(
        "--mappings-from", help="Index whose mappings and settings the new index takes.")]
    = None,
    config: ConnectionConfig = CONNECTION, as_json: JsonOpt = False,
) -> None:
    """Rebuild the alias's documents from the logged events into a NEW index (the alias
    does not move; compare with `indexshift diff`)."""
    report = command.rebuild(config, alias, from_events, until=until, target=target,
                             mappings_from=mappings_from)
    if as_json:
        emit_json(report)
        return
    out.print(f"rebuilt {report['target']}: {report['docs_written']:,} docs from "
              f"{report['events_applied']:,} events ({report['events_read']:,} read"
              + (f", up to {report['until']}" if report["until"] else "") + ")", markup=False)


@app.command()
def version() -> None:
    """Print indexshift's version."""
    out.print(__version__)


def main() -> None:
    app()
